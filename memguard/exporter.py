"""memguard's /metrics from a process: the fleet's state read from Redis at scrape time, by the
process's store (``memguard.process``), and the counters its events fed."""

from __future__ import annotations

from typing import Any

from memguard import process
from memguard.store.state import State


def current_state() -> State:
    """The process's store, for a metrics scrape (resolved at scrape time)."""
    return process.get().state


def held_guards() -> list[tuple[str, str, State]]:
    """The named guards held or recovering, for a metrics scrape (``GuardOps.held``)."""
    return process.get().guards.held()


def serve_metrics(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve memguard's /metrics from this process, in a background thread."""
    from memguard.observe import metrics

    return metrics.serve(port, current_state, addr, held_guards)


def metrics_wsgi_app() -> Any:
    """A WSGI app serving memguard's /metrics, to mount in Flask or another WSGI app."""
    from memguard.observe import metrics

    return metrics.make_wsgi_app(current_state, held_guards)
