"""aiogram routers, one per concern; `get_routers()` wires them in order."""

from __future__ import annotations

from aiogram import Router


def get_routers() -> list[Router]:
    from handlers import joins, membership

    return [joins.make_router(), membership.make_router()]
