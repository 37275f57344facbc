"""Use cases. They declare what they need in ports.py and never import an adapter."""
