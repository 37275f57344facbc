"""The only place that imports drivers. Adapters fit the ports in services/ports.py structurally."""
