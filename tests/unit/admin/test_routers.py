"""Every router filter and handler runs in the event loop.

aiogram runs a plain (non-async) callable, a magic `F` filter included, in a
worker thread: one thread hop per update per filter, which cost ingest a
sixth of its throughput before the filters became `Filter` subclasses.
"""

from __future__ import annotations

import inspect
from typing import get_type_hints

from aiogram import Router
from aiogram.dispatcher.event.handler import CallableObject

from handlers import get_routers
from handlers.services import Services

# What aiogram itself gives a handler beside the event: the parsed command, the update.
FROM_AIOGRAM = {"command", "event_update"}


def _callables(router: Router) -> list[tuple[str, CallableObject]]:
    found: list[tuple[str, CallableObject]] = []
    for name, observer in router.observers.items():
        where = f"{router.name}.{name}"
        found += [(f"{where} router filter", f) for f in observer._handler.filters or []]
        for handler in observer.handlers:
            found.append((f"{router.name}.{name} handler {handler.callback!r}", handler))
            found += [(f"{router.name}.{name} filter", f) for f in handler.filters or []]
    for sub in router.sub_routers:
        found += _callables(sub)
    return found


def test_no_filter_or_handler_is_run_in_a_thread() -> None:
    found = [c for router in get_routers() for c in _callables(router)]
    assert len(found) > 10
    threaded = [where for where, obj in found if not obj.awaitable]
    assert threaded == []


def test_handlers_are_given_one_typed_services_object() -> None:
    """Beside the event and what aiogram parses, a handler asks for `services` only
    (bot/factory.py passes that one workflow data), typed, so a misspelt service
    is a type error rather than a missing keyword at the first update."""
    seen = 0
    for router in get_routers():
        for observer in router.observers.values():
            for handler in observer.handlers:
                callback = handler.callback
                _event, *wanted = inspect.signature(callback).parameters
                assert set(wanted) <= FROM_AIOGRAM | {"services"}, callback
                if "services" in wanted:
                    assert get_type_hints(callback)["services"] is Services, callback
                    seen += 1
    assert seen > 10
