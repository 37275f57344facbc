"""Pure rules of Clarion: no I/O, no asyncio, no clock. Time comes in as a value."""
