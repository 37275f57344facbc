"""The WebSocket gateway."""
