"""SQL text shared by the storage modules."""

from __future__ import annotations


def marks(count: int) -> str:
    """`?, ?, ?` for `count` values: the placeholders of an `IN (…)` list."""
    return ", ".join("?" * count)
