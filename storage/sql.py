"""SQL text shared by the storage modules."""

from __future__ import annotations


def marks(count: int) -> str:
    """`?, ?, ?` for `count` values: the placeholders of an `IN (…)` list."""
    return ", ".join("?" * count)


def rows_of_marks(rows: int, width: int) -> str:
    """`(?, ?), (?, ?)` for `rows` rows of `width` values: a multi-row VALUES list."""
    row = f"({marks(width)})"
    return ", ".join([row] * rows)
