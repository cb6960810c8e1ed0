"""aiogram routers, one per concern; `get_routers()` wires them in order."""

from __future__ import annotations

from aiogram import Router


def get_routers() -> list[Router]:
    from handlers import (
        admin,
        admin_status,
        join_requests,
        joins,
        leads,
        membership,
        privacy,
        stay,
    )

    return [
        # First: it only notes an admin's change of status and passes the update on
        # (the joins router after it may see a join or a leave in the same update).
        admin_status.make_router(),
        joins.make_router(),
        join_requests.make_router(),
        membership.make_router(),
        privacy.make_router(),
        stay.make_router(),
        leads.make_router(),
        admin.make_router(),
    ]
