"""Bus adapters, one module per technology."""
