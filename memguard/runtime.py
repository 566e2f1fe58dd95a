"""The process's memguard objects, built on first use and rebuilt after a fork.

Nothing is built at import: the first guarded read, ``configure()`` or ``install()`` builds
the runtime. Celery prefork children and gunicorn workers fork after that: the child drops
the parent's objects (its watcher thread does not exist there) and builds its own on its
first read, so a function decorated at import time is as cheap in a child as in the parent.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from memguard import events
from memguard.failover import SwitchListener
from memguard.guard import Guard
from memguard.meter import ReadMeter
from memguard.settings import Settings
from memguard.state import State
from memguard.watch import Watcher
from memguard.zep import AsyncZepReader, ZepReader, make_async_reader, make_reader


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
class Runtime:
    settings: Settings
    guard: Guard
    watcher: Watcher
    meter: ReadMeter | None = None
    switches: SwitchListener | None = None
    _reader: ZepReader | None = field(default=None, repr=False)
    _areaders: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncZepReader] = field(
        default_factory=weakref.WeakKeyDictionary, repr=False)

    @property
    def state(self) -> State:
        return self.guard.state

    @property
    def reader(self) -> ZepReader:
        """memguard's own Zep reader; raises SettingsError when it cannot be built."""
        if self._reader is None:
            self._reader = make_reader(self.settings)
        return self._reader

    def areader(self) -> AsyncZepReader:
        """memguard's asyncio Zep reader for the running event loop (its httpx client is the loop's)."""
        loop = asyncio.get_running_loop()
        reader = self._areaders.get(loop)
        if reader is None:
            reader = self._areaders[loop] = make_async_reader(self.settings)
        return reader

    def close(self) -> None:
        if self.switches is not None:
            self.switches.stop()
        self.watcher.stop()
        if self.meter is not None:
            self.meter.stop()


_lock = threading.Lock()
_runtime: Runtime | None = None
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


def build(settings: Settings, *, watch: bool = True) -> Runtime:
    state = State(redis_client(settings), settings)
    watcher = Watcher(state, settings.probe_grace_seconds)
    state.on_change = watcher.apply_notice
    windowed = settings.latency_threshold_ms or settings.failure_rate_on
    meter = ReadMeter(state, settings) if windowed else None
    switches = None
    if settings.redis_target.kind == "sentinel":

        def on_switch() -> None:
            state.reconnect()  # the next command asks the sentinels
            watcher.reconnect()

        switches = SwitchListener(settings.redis_target, on_switch)
    if watch:
        watcher.start()
        if meter is not None:
            meter.start()
        if switches is not None:
            switches.start()
    return Runtime(settings, Guard(settings, state, watcher, meter), watcher, meter, switches)


def get() -> Runtime:
    """The process-wide runtime, built on first use (from the environment unless configured).

    Raises ``SettingsError`` naming the variable when the configuration is bad.
    """
    rt = _runtime
    if rt is not None:
        return rt
    with _lock:
        if _runtime is None:
            _subscribe_hooks()
            _install(_settings or load_settings())
        assert _runtime is not None
        return _runtime


def configure(settings: Settings | None = None, *, watch: bool = True) -> Runtime:
    """Replace the process-wide runtime (tests, drills, applications with their own settings)."""
    global _settings
    with _lock:
        if _runtime is not None:
            _runtime.close()
        _subscribe_hooks()
        _settings = settings or load_settings()
        return _install(_settings, watch=watch)


def _subscribe_hooks() -> None:
    """Logs, metrics and the audit trail hear every event from the first use on."""
    from memguard import audit, logs, metrics

    events.subscribe(logs.on_event)
    events.subscribe(metrics.on_event)
    events.subscribe(audit.on_event)


def _install(settings: Settings, *, watch: bool = True) -> Runtime:
    global _runtime, _fork_hook_registered
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_registered = True
    _runtime = build(settings, watch=watch)
    return _runtime


def _after_fork_in_child() -> None:
    """Forget the parent's runtime; the child's first read builds its own (no work in the hook)."""
    global _runtime, _settings, _lock
    if _runtime is not None:
        _settings = _runtime.settings
    _runtime = None
    _lock = threading.Lock()  # the parent may have held it while forking
