"""Ways in: HTTP API, WebSocket gateway, worker, CLI. They reach adapters only through bootstrap."""
