"""The clarion command."""
