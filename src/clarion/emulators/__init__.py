"""Local stand-ins for the push and email providers, written from the vendor specs alone.

Nothing here imports ``clarion.wire``, ``clarion.adapters``, ``clarion.services`` or
``clarion.domain`` (enforced by import-linter): a misreading of a spec in a client must not be
mirrored by its emulator. See docs/emulators.md.
"""
