"""Background work: the outbox relay and the routing consumer."""
