"""The rules every external key (user ids, group keys, category keys) follows."""

from __future__ import annotations

MAX_KEY_LENGTH = 255  # fits an index on every engine and any producer's ids (UUIDs, emails, paths)


def is_valid_key(value: str) -> bool:
    """A key is 1 to 255 characters with no control character and no surrounding blanks.

    Control characters would let a key forge log lines (CWE-117) or confuse terminals.
    """
    return (
        0 < len(value) <= MAX_KEY_LENGTH
        and value == value.strip()
        and all(ch.isprintable() for ch in value)
    )


def unique_in_order(values: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """`values` with repeats dropped, first occurrence kept."""
    return tuple(dict.fromkeys(values))
