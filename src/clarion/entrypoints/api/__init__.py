"""The producer and device HTTP API."""
