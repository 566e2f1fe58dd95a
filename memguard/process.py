"""The one place that builds a process's memguard objects and wires them together.

``build`` makes them in order, each given what it needs: settings → subscribers (logs,
metrics) → store → view → guard → read meter → the audit trail → notifications and operator
actions. Below this module nothing looks up a global: every object holds what it was given.

The entry points (``memguard.service``, ``memguard.flags``, the Celery tasks, the command line,
Django's app) call ``get()`` when they run, never at import: the first guarded read,
``configure()`` or ``install()`` builds the process. Celery prefork children and gunicorn
workers fork after that: the child drops the parent's objects (its watcher thread does not
exist there) and builds its own on its first read, so a function decorated at import time is
as cheap in a child as in the parent.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from memguard.config.settings import Settings
from memguard.domain import events
from memguard.observe import logs
from memguard.ops.actions import Operations
from memguard.ops.audit import AuditTrail
from memguard.ops.notify import Notifier
from memguard.ops.prober import zep_probe
from memguard.request.guard import Guard
from memguard.request.meter import ReadMeter
from memguard.request.watch import Watcher
from memguard.request.zep import Readers
from memguard.store.failover import SwitchListener
from memguard.store.state import State

# The process's subscribers: logs and metrics from the first build on, tests and the drill too.
# It outlives a ``configure()``, so a subscriber stays subscribed when the objects are rebuilt.
hooks = events.Hooks()


def redis_client(settings: Settings) -> redis.Redis:
    """A client with short timeouts: a slow Redis must not slow the request path."""
    timeout = settings.redis_timeout_ms / 1000.0
    return settings.redis_target.client(
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry_on_timeout=False,
    )


@dataclass
class Process:
    """A process's memguard: everything ``build`` made, for the entry points to use."""

    settings: Settings
    state: State
    watcher: Watcher
    guard: Guard
    audit: AuditTrail
    notifier: Notifier
    ops: Operations
    readers: Readers
    meter: ReadMeter | None = None
    switches: SwitchListener | None = None

    def close(self) -> None:
        self.state.hooks.unsubscribe(self.audit.on_event)
        if self.switches is not None:
            self.switches.stop()
        self.watcher.stop()
        if self.meter is not None:
            self.meter.stop()


def build(settings: Settings, *, watch: bool = True, hooks: events.Hooks = hooks,
          count_metrics: bool = True) -> Process:
    """Build and wire one process's objects; ``watch=False`` starts no thread (one-shot commands).

    ``hooks`` is the process's own unless a benchmark or test brings its own. A one-shot command
    keeps no metrics (``count_metrics=False``): nothing would scrape them, and prometheus-client
    is then never imported."""
    # Logs and metrics first: a fault building the rest (a missing script file) is then
    # counted and logged like any other.
    hooks.subscribe(logs.on_event)
    if count_metrics:
        from memguard.observe import metrics

        hooks.subscribe(metrics.on_event)
    client = redis_client(settings)
    state = State(client, settings, hooks)
    watcher = Watcher(state, settings.probe_grace_seconds, hooks)
    state.on_change = watcher.apply_notice
    windowed = settings.latency_threshold_ms or settings.failure_rate_on
    meter = ReadMeter(state, settings, hooks, watcher) if windowed else None
    guard = Guard(settings, state, hooks, watcher, meter)
    audit = AuditTrail(client, state.keys.audit, hooks)
    hooks.subscribe(audit.on_event)
    switches = None
    if settings.redis_target.kind == "sentinel":

        def on_switch() -> None:
            state.reconnect()  # the next command asks the sentinels
            watcher.reconnect()

        switches = SwitchListener(settings.redis_target, on_switch, hooks)
    readers = Readers(settings)  # memguard's own Zep reads, made on first use
    ops = Operations(state, settings, hooks, lambda: zep_probe(readers.reader))
    proc = Process(settings, state, watcher, guard, audit, Notifier(state, settings, hooks), ops, readers,
                   meter, switches)
    if watch:
        for thread in (watcher, meter, switches):
            if thread is not None:
                thread.start()
    return proc


_lock = threading.Lock()
_current: Process | None = None
_settings: Settings | None = None  # kept across a fork so the child rebuilds the same
_fork_hook_registered = False
_loader: Callable[[], Settings] = Settings.from_env


def load_settings() -> Settings:
    """The settings when none are given: the environment, unless an integration (Django's
    ``memguard.contrib.django``) set another source with ``set_settings_loader``."""
    return _loader()


def set_settings_loader(loader: Callable[[], Settings]) -> None:
    global _loader
    _loader = loader


def get() -> Process:
    """The process's objects, built on first use (from the environment unless configured).

    Raises ``SettingsError`` naming the variable when the configuration is bad.
    """
    proc = _current
    if proc is not None:
        return proc
    with _lock:
        if _current is None:
            _install(_settings or load_settings())
        assert _current is not None
        return _current


def settings() -> Settings:
    """The settings this process's objects are, or would be, built from."""
    proc = _current
    return proc.settings if proc is not None else (_settings or load_settings())


def current() -> Process | None:
    """The process's objects if built, without building them (never blocks)."""
    return _current


def configure(settings: Settings | None = None, *, watch: bool = True, count_metrics: bool = True) -> Process:
    """Replace the process's objects (tests, drills, applications with their own settings)."""
    global _settings
    with _lock:
        if _current is not None:
            _current.close()
        _settings = settings or load_settings()
        return _install(_settings, watch=watch, count_metrics=count_metrics)


def _install(settings: Settings, *, watch: bool = True, count_metrics: bool = True) -> Process:
    global _current, _fork_hook_registered
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_registered = True
    _current = build(settings, watch=watch, count_metrics=count_metrics)
    return _current


def _after_fork_in_child() -> None:
    """Forget the parent's objects; the child's first read builds its own (no work in the hook)."""
    global _current, _settings, _lock
    if _current is not None:
        _settings = _current.settings
        _current.state.hooks.unsubscribe(_current.audit.on_event)
    _current = None
    _lock = threading.Lock()  # the parent may have held it while forking


def current_state() -> State:
    """The process's store, for a metrics scrape (resolved at scrape time)."""
    return get().state


def serve_metrics(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve memguard's /metrics from this process, in a background thread."""
    from memguard.observe import metrics

    return metrics.serve(port, current_state, addr)


def metrics_wsgi_app() -> Any:
    """A WSGI app serving memguard's /metrics, to mount in Flask or another WSGI app."""
    from memguard.observe import metrics

    return metrics.make_wsgi_app(current_state)
