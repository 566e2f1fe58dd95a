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

import importlib.util
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from memguard.config.settings import Settings, SettingsError
from memguard.config.target import connection_name
from memguard.declared import registry
from memguard.domain import events, guards
from memguard.domain.guards import DEFAULT, NamedProbe
from memguard.named import NamedGuards
from memguard.observe import logs
from memguard.ops.actions import Operations, OperatorError
from memguard.ops.audit import AuditTrail
from memguard.ops.notify import Notifier
from memguard.ops.prober import Prepared, Probe, probe_due, zep_probe
from memguard.request.guard import Guard
from memguard.request.meter import ReadMeter
from memguard.request.watch import Watcher
from memguard.request.zep import Readers
from memguard.store.failover import SwitchListener
from memguard.store.index import indexed_guards
from memguard.store.keys import Keys
from memguard.store.state import State

if TYPE_CHECKING:  # imported only when OpenTelemetry is fed (``_opentelemetry``)
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
    state: State
    watcher: Watcher
    guard: Guard
    audit: AuditTrail
    notifier: Notifier
    ops: Operations
    readers: Readers
    named: NamedGuards
    meter: ReadMeter | None = None
    switches: SwitchListener | None = None
    telemetry: Telemetry | None = None  # OpenTelemetry's instruments and tracer, when fed

    def annotate(self, meta: Mapping[str, Any], guard: str) -> None:
        """Put a read's outcome on the caller's span (OpenTelemetry, when fed)."""
        if self.telemetry is not None:
            self.telemetry.annotate(meta, guard)

    def ops_for(self, guard: object = DEFAULT, probes: Mapping[str, NamedProbe] | None = None) -> Operations:
        """The operator actions on one guard (its probe: ``probe_of``). A valid name this process
        has not declared is acted on with the default's settings (an operator's CLI knows no
        application's declarations); an invalid one is refused."""
        if guard == DEFAULT:
            return self.ops
        problem = guards.name_problem(guard)
        if problem is not None:
            raise OperatorError(problem)
        assert isinstance(guard, str)
        resolved = self.named.registry.resolve(guard) or guards.Resolved(guard, guard, None, None, {})
        state, settings, guard_hooks = self.named.store(resolved)
        return Operations(state, settings, guard_hooks,  # type: ignore[arg-type]
                          lambda: self.probe_of(resolved, probes))

    def probe_of(self, resolved: guards.Resolved, probes: Mapping[str, NamedProbe] | None = None) -> Probe:
        """A named guard's probe: the one ``install`` was given (``probes``, by name or pattern),
        its declaration's, else memguard's own Zep read."""
        given = probes or {}
        fn = given.get(resolved.name) or given.get(resolved.label) or resolved.probe
        if fn is None:
            return zep_probe(self.readers.reader)
        return lambda timeout_s: fn(resolved.name, timeout_s)

    def probe_due(self, by: dict[str, Any], probes: Mapping[str, NamedProbe] | None = None) -> dict[str, Any]:
        """Probe the named guards whose holds have ended (beat's tick, after the default's)."""

        def prepare(name: str) -> Prepared | None:
            resolved = self.named.registry.resolve(name)
            if resolved is None:
                return None
            state, settings, _ = self.named.store(resolved)
            return state, settings, self.probe_of(resolved, probes)

        def deliver(state: State, settings: Settings) -> int:
            return Notifier(state, settings, state.hooks).deliver()  # nothing without webhooks

        return probe_due(self.state, prepare, by, deliver=deliver if self.settings.webhook_urls else None)

    def close(self) -> None:
        self.named.close()
        if self.telemetry is not None:
            self.state.hooks.unsubscribe(self.telemetry.on_event)
            self.telemetry.stop()
        self.state.hooks.unsubscribe(self.audit.on_event)
        if self.switches is not None:
            self.switches.stop()
        self.watcher.stop()
        if self.meter is not None:
            self.meter.stop()


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
    otel = _opentelemetry(settings) if count_metrics else None
    telemetry = otel.start(current_state, held_guards) if otel is not None else None
    if telemetry is not None:
        hooks.subscribe(telemetry.on_event)
    client = redis_client(settings, "cmd" if watch else "cli")
    state = State(client, settings, hooks)
    watcher = Watcher(state, settings.probe_grace_seconds, hooks)
    state.on_change = watcher.apply_notice
    windowed = settings.latency_threshold_ms or settings.failure_rate_on
    meter = ReadMeter(state, settings, hooks, watcher) if windowed else None
    guard = Guard(settings, state, hooks, watcher, meter)
    audit = AuditTrail(client, state.keys.audit, hooks,
                       key_of=lambda guard: Keys.for_guard(guard, state.keys.prefix).audit)
    hooks.subscribe(audit.on_event)
    switches = None
    if settings.redis_target.kind == "sentinel":

        def on_switch() -> None:
            state.reconnect()  # the next command asks the sentinels
            watcher.reconnect()

        switches = SwitchListener(settings.redis_target, on_switch, hooks)
    readers = Readers(settings)  # memguard's own Zep reads, made on first use
    ops = Operations(state, settings, hooks, lambda: zep_probe(readers.reader))
    named = NamedGuards(registry, settings, state, guard, watcher, hooks)
    proc = Process(settings, state, watcher, guard, audit, Notifier(state, settings, hooks), ops, readers,
                   named, meter, switches, telemetry)
    if watch:
        for thread in (watcher, meter, switches):
            if thread is not None:
                thread.start()
    return proc


def _opentelemetry(settings: Settings) -> Any:
    """``memguard.observe.otel`` when OpenTelemetry is to be fed: ``MEMGUARD_OTEL=auto`` (the
    default) when ``opentelemetry-api`` is installed, ``on`` always (a SettingsError without it),
    ``off`` never. Without it nothing of OpenTelemetry's is imported."""
    if settings.otel == "off" or (settings.otel == "auto" and not _installed("opentelemetry")):
        return None
    try:
        from memguard.observe import otel
    except ImportError as exc:
        if settings.otel == "on":
            raise SettingsError(f"MEMGUARD_OTEL=on: OpenTelemetry cannot be imported ({exc}); "
                                "install memguard[otel]") from None
        return None
    return otel


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


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


def held_guards() -> list[tuple[str, str, State]]:
    """The named guards held or recovering that this process has declared, for a metrics scrape:
    (declared name or pattern, name, store). A guard it does not know is left to the exporters
    that do: it has no label of bounded cardinality here."""
    proc = get()
    out = []
    for name in indexed_guards(proc.state, limit=100):
        resolved = proc.named.registry.resolve(name)
        if resolved is not None:
            out.append((resolved.label, name, proc.named.store(resolved)[0]))
    return out


def serve_metrics(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve memguard's /metrics from this process, in a background thread."""
    from memguard.observe import metrics

    return metrics.serve(port, current_state, addr, held_guards)


def metrics_wsgi_app() -> Any:
    """A WSGI app serving memguard's /metrics, to mount in Flask or another WSGI app."""
    from memguard.observe import metrics

    return metrics.make_wsgi_app(current_state, held_guards)
