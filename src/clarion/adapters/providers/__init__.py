"""Provider transports: thin asyncio shells over the sans-I/O modules in `clarion.wire`."""
