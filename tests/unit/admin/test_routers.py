"""Every router filter and handler runs in the event loop.

aiogram runs a plain (non-async) callable, a magic `F` filter included, in a
worker thread: one thread hop per update per filter, which cost ingest a
sixth of its throughput before the filters became `Filter` subclasses.
"""

from __future__ import annotations

from aiogram import Router
from aiogram.dispatcher.event.handler import CallableObject

from handlers import get_routers


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
