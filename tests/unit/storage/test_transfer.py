"""migrate-to-postgres' copy order (the copy itself: tests/e2e/test_e2e_migrate.py)."""

from __future__ import annotations

import pytest

from storage.transfer import TransferError, copy_order


def test_parents_come_before_their_children() -> None:
    references = {
        "outbox": {"joins"},
        "joins": {"channels", "invite_links"},
        "invite_links": {"channels", "visits"},
        "visits": set(),
        "channels": set(),
        "leaves": set(),
    }
    assert copy_order(references) == [
        "channels",
        "leaves",
        "visits",
        "invite_links",
        "joins",
        "outbox",
    ]


def test_a_cycle_is_refused() -> None:
    with pytest.raises(TransferError, match="cycle"):
        copy_order({"a": {"b"}, "b": {"a"}})
