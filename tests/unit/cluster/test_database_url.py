"""A PostgreSQL URL as the tools check and print it: the password never shown."""

from __future__ import annotations

import pytest

from bot.cluster.database_url import check, masked, passwords, scrub, with_connect_timeout


def test_the_password_is_masked_wherever_it_is() -> None:
    url = "postgresql://bridge:p%40ss@db.internal:5433/joinbridge?sslmode=require"
    assert masked(url) == "postgresql://bridge:***@db.internal:5433/joinbridge?sslmode=require"
    assert masked("postgres://u@h/d?password=xyz") == "postgres://u@h/d?password=***"
    assert passwords(url) == ["p@ss"]
    assert scrub("auth failed for p@ss", url) == "auth failed for ***"
    assert check(url)["port"] == "5433"


def test_a_bad_url_is_said_without_its_password() -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        check("mysql://root:hunter2@db/x")
    with pytest.raises(ValueError, match="port 'x'"):
        check("postgresql://u:hunter2@h:x/db")


def test_a_connect_timeout_is_added_once() -> None:
    assert with_connect_timeout("postgresql://h/d", 5) == "postgresql://h/d?connect_timeout=5"
    assert (
        with_connect_timeout("postgresql://h/d?a=b", 5) == "postgresql://h/d?a=b&connect_timeout=5"
    )
    assert with_connect_timeout("postgresql://h/d?connect_timeout=2", 5).endswith("=2")
