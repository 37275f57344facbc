"""Sans-I/O protocols: build what goes on the wire, classify what comes back.

No sockets, no clock, no asyncio.
"""
