"""memguard: keeps Zep memory reads from dragging an application down when Zep degrades.

The public surface::

    memguard.install(app, probe=None, probes=None)   # an existing Celery app: tasks, beat entry, checks
    @memguard.guarded / @memguard.guarded(timeout_ms=300)   # guard your own read fn(thread_id, ...),
                                                            # def or async def
    memguard.declare("vectordb", probe=None, parent=None, **settings)   # a named guard, or a family
    @memguard.guarded(guard="vectordb")        # ... guarding another dependency (or guard=fn(*args))
    memguard.fetch_thread_context(thread_id)   # memguard's own Zep read -> (context | None, meta)
    await memguard.afetch_thread_context(thread_id)   # the same on an asyncio event loop
    await memguard.awarm_up()                  # optional, at start-up: build before the first read
    memguard.flags                             # modes and the forced record (the seed's API)
    memguard.serve_metrics(port)               # /metrics from this process, in a thread
    memguard.metrics_wsgi_app()                # /metrics to mount in a WSGI app
    memguard.__version__

Importing it changes nothing in the application and loads nothing else: each name is
imported when first used (Celery with ``install``, a Zep SDK with memguard's own reader,
prometheus-client with the first guarded read), so a process that never uses Celery never
pays for it.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memguard import flags
    from memguard.domain.declared import declare
    from memguard.exporter import metrics_wsgi_app, serve_metrics
    from memguard.integrations.tasks import install
    from memguard.service import Meta, fetch_thread_context, guarded

__version__ = "0.2.0"  # the one place: pyproject.toml reads it, ``memguard --version`` prints it

__all__ = ["__version__", "afetch_thread_context", "awarm_up", "declare", "fetch_thread_context", "flags",
           "guarded", "install", "metrics_wsgi_app", "serve_metrics"]

_WHERE = {
    "install": "memguard.integrations.tasks",
    "declare": "memguard.domain.declared",
    "guarded": "memguard.service",
    "fetch_thread_context": "memguard.service",
    "serve_metrics": "memguard.exporter",
    "metrics_wsgi_app": "memguard.exporter",
}


async def _service() -> ModuleType:
    """memguard.service, imported in a worker thread the first time: an event loop never waits
    for an import (the rest is built off the loop by the service itself)."""
    module = sys.modules.get("memguard.service")
    if module is None:
        import asyncio

        module = await asyncio.to_thread(importlib.import_module, "memguard.service")
    return module


async def afetch_thread_context(thread_id: str) -> tuple[str | None, Meta]:
    """``fetch_thread_context`` for asyncio code (see ``memguard.service.afetch_thread_context``)."""
    return await (await _service()).afetch_thread_context(thread_id)


async def awarm_up() -> None:
    """Optional, at start-up: build memguard and this loop's Zep reader off the loop."""
    await (await _service()).awarm_up()


def __getattr__(name: str) -> Any:
    if name == "flags":
        return importlib.import_module("memguard.flags")
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'memguard' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
