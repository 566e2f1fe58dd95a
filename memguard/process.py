"""The one place that builds a process's memguard objects and wires them together.

``build`` makes them in order, each given what it needs: settings → subscribers (logs,
metrics) → the default guard's store → every guard's unit (``Units``: store, view, meter,
guard) → the watcher of their views → the audit trail → operator actions, probes and
notifications for any guard (``GuardOps``). Below this module nothing looks up a global:
every object holds what it was given.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from memguard.config.settings import Settings
from memguard.config.target import connection_name
from memguard.domain import events, guards
from memguard.domain.declared import registry
from memguard.domain.guards import DEFAULT
from memguard.observe import feeds, logs
from memguard.ops.actions import Operations
from memguard.ops.audit import AuditTrail
from memguard.ops.notify import Notifier
from memguard.ops.resolve import GuardOps
from memguard.request.guard import Guard
from memguard.request.meter import Meters, ReadMeter
from memguard.request.units import Units
from memguard.request.view import GuardView
from memguard.request.watch import Watcher
from memguard.request.zep import Readers
from memguard.store.failover import SwitchListener
from memguard.store.keys import Keys
from memguard.store.state import State

if TYPE_CHECKING:  # imported only when OpenTelemetry is fed (``feeds.opentelemetry``)
    from memguard.observe.otel import Telemetry

# The process's subscribers: logs and metrics from the first build on, tests and the drill too.
# It outlives a ``configure()``, so a subscriber stays subscribed when the objects are rebuilt.
hooks = events.Hooks()


def redis_client(settings: Settings, role: str = "cmd") -> redis.Redis:
    """A client with short timeouts: a slow Redis must not slow the request path. Its
    connections name themselves (``CLIENT LIST``: ``memguard:<role>:<host>:<pid>``)."""
    timeout = settings.redis_timeout_ms / 1000.0
    return settings.redis_target.client(
        client_name=connection_name(role),
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry_on_timeout=False,
    )


@dataclass
class Process:
    """A process's memguard: everything ``build`` made, for the entry points to use."""

    settings: Settings
    units: Units  # every guard it reads: the default's, and the named ones while read
    watcher: Watcher
    meters: Meters
    audit: AuditTrail
    guards: GuardOps  # operator actions, probes and notifications for any guard
    readers: Readers
    switches: SwitchListener | None = None
    telemetry: Telemetry | None = None  # OpenTelemetry's instruments and tracer, when fed

    @property
    def state(self) -> State:
        """The default guard's store (its client is the process's command connection)."""
        return self.units.state

    @property
    def guard(self) -> Guard:
        return self.units.default

    @property
    def view(self) -> GuardView:
        return self.units.own.view

    @property
    def meter(self) -> ReadMeter | None:
        return self.units.own.meter

    @property
    def ops(self) -> Operations:
        return self.guards.ops_for(DEFAULT)

    @property
    def notifier(self) -> Notifier:
        return self.guards.notifier(DEFAULT)

    def ops_for(self, guard: object = DEFAULT) -> Operations:
        return self.guards.ops_for(guard)

    def probe_due(self, by: dict[str, Any]) -> dict[str, Any]:
        return self.guards.probe_due(by)

    def annotate(self, meta: Mapping[str, Any], guard: str) -> None:
        """Put a read's outcome on the caller's span (OpenTelemetry, when fed)."""
        if self.telemetry is not None:
            self.telemetry.annotate(meta, guard)

    def close(self) -> None:
        if self.telemetry is not None:
            self.state.hooks.unsubscribe(self.telemetry.on_event)
            self.telemetry.stop()
        self.state.hooks.unsubscribe(self.audit.on_event)
        if self.switches is not None:
            self.switches.stop()
        self.watcher.stop()
        self.meters.stop()


def build(settings: Settings, *, watch: bool = True, hooks: events.Hooks = hooks,
          count_metrics: bool = True, registry: guards.Registry = registry) -> Process:
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
        for label in registry.labels():  # declared before the build (memguard.declare's rule)
            metrics.start_series(label)
    otel = feeds.opentelemetry(settings) if count_metrics else None
    telemetry = otel.start(lambda: get().state, lambda: get().guards.held()) if otel is not None else None
    if telemetry is not None:
        hooks.subscribe(telemetry.on_event)
    client = redis_client(settings, "cmd" if watch else "cli")
    state = State(client, settings, hooks)
    meters = Meters(autostart=watch)
    units = Units(registry, settings, state, hooks, meters)
    watcher = Watcher(state, settings.probe_grace_seconds, hooks, views=units.views())
    units.follow(watcher)
    audit = AuditTrail(state.plain, state.keys.audit, hooks,
                       key_of=lambda guard: Keys.for_guard(guard, state.keys.prefix).audit)
    hooks.subscribe(audit.on_event)
    switches = None
    if settings.redis_target.kind == "sentinel":

        def on_switch() -> None:
            state.reconnect()  # the next command asks the sentinels
            watcher.reconnect()

        switches = SwitchListener(settings.redis_target, on_switch, hooks)
    readers = Readers(settings)  # memguard's own Zep reads, made on first use
    proc = Process(settings, units, watcher, meters, audit, GuardOps(units, readers), readers, switches,
                   telemetry)
    if watch:
        for thread in (watcher, switches):
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


def release() -> None:
    """Close the process's objects and forget them (a test's teardown): the next use builds anew."""
    global _current, _settings
    with _lock:
        if _current is not None:
            _current.close()
        _current, _settings = None, None


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
