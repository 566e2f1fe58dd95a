"""The process's memguard objects, built once from the settings and rebuilt after a fork.

Celery prefork children and gunicorn workers fork after import: the child gets a fresh
watcher thread and Redis connections, never the parent's.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import redis

from memguard import events
from memguard.guard import Guard
from memguard.settings import Settings
from memguard.state import State
from memguard.watch import Watcher
from memguard.zep import ZepReader, make_reader


def redis_client(settings: Settings, socket_timeout_s: float | None = None) -> redis.Redis:
    """A client with short timeouts: a slow Redis must not slow the request path."""
    timeout = settings.redis_timeout_ms / 1000.0
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=socket_timeout_s or timeout,
        retry_on_timeout=False,
    )


@dataclass
class Runtime:
    settings: Settings
    guard: Guard
    watcher: Watcher
    _reader: ZepReader | None = field(default=None, repr=False)

    @property
    def state(self) -> State:
        return self.guard.state

    @property
    def reader(self) -> ZepReader:
        if self._reader is None:
            self._reader = make_reader(self.settings)
        return self._reader

    def close(self) -> None:
        self.watcher.stop()


_lock = threading.Lock()
_runtime: Runtime | None = None


def build(settings: Settings, *, watch: bool = True) -> Runtime:
    state = State(redis_client(settings), grace_seconds=settings.probe_grace_seconds)
    watcher = Watcher(state, redis_client(settings, socket_timeout_s=1.0), settings.probe_grace_seconds)
    if watch:
        watcher.start()
    return Runtime(settings, Guard(settings, state, watcher), watcher)


def get() -> Runtime:
    """The process-wide runtime, built from the environment on first use."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _install_default_hooks()
                _runtime = build(Settings.from_env())
    return _runtime


def configure(settings: Settings | None = None, *, watch: bool = True) -> Runtime:
    """Replace the process-wide runtime (tests, drills, applications with their own settings)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
        _install_default_hooks()
        _runtime = build(settings or Settings.from_env(), watch=watch)
        return _runtime


def _install_default_hooks() -> None:
    from memguard import logs, metrics

    events.subscribe(logs.on_event)
    events.subscribe(metrics.on_event)


def _after_fork_in_child() -> None:
    global _runtime
    if _runtime is not None:
        _runtime = build(_runtime.settings)


os.register_at_fork(after_in_child=_after_fork_in_child)
