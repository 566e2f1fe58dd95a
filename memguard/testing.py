"""memguard's pytest plugin: exercise your application's degraded path in your own tests.

Installed with memguard (``pip install 'memguard-zep[testing]'`` brings pytest) and loaded by pytest
through its ``pytest11`` entry point; it does nothing until a test asks for one of its fixtures:

- ``memguard_guard``: the test's own guard state, on a Redis of the tests' own (never the one
  ``REDIS_URL`` names): ``.force(reason="auth", guard="default")``, ``.clear(ramp=False)``,
  ``.ramp(share)``, ``.status()``. Guarded reads in the test's process (blocking and asyncio,
  ``@memguard.guarded``, ``fetch_thread_context``, named guards, a Celery task run by
  ``celery.contrib.pytest``'s in-process worker) see each change when the call returns.
- ``memguard_zep``: a Zep-compatible server that both Zep SDKs and plain httpx reach, failing on
  demand: ``.fault("401")``, ``"403"``, ``"429"`` (with Retry-After), ``"500"``, ``"503"``,
  ``"slow"``, ``"hang"``, ``"reset"``, ``"bad_json"``, ``"ok"``. With ``memguard_guard``,
  memguard's own reads go to it.
- ``memguard_events``: memguard's events during the test, with ``.forced(reason=...)``,
  ``.restored()``, ``.blocked()`` and ``.failures()``.

The Redis is a private ``redis-server`` the plugin starts for the session (it must be
installed), or the one ``--memguard-redis-url`` names: memguard's keys there are deleted before
each test, so give it a Redis (or a database) of the tests' own. The guard state runs memguard's
own Lua scripts: there is no second implementation to drift from the real one.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

API_KEY = "memguard-testing-key"
SETTLE_S = 2.0  # a change reaches this process's view within a few ms; this is the deadline
_ALIASES = {"429": "429_retry", "5xx": "503", "timeout": "hang"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("memguard").addoption(
        "--memguard-redis-url", default=None,
        help="a Redis for memguard's fixtures alone (memguard's keys there are deleted before each "
             "test); default: a private redis-server started for the session")


@pytest.fixture(scope="session")
def memguard_redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The Redis the fixtures use: ``--memguard-redis-url``, else a private redis-server."""
    given = request.config.getoption("--memguard-redis-url")
    if given:
        yield given
        return
    if shutil.which("redis-server") is None:
        pytest.fail("memguard's fixtures need a Redis: install redis-server (apt-get install redis-server, "
                    "brew install redis) or pass --memguard-redis-url", pytrace=False)
    from memguard.drill.localstack import RedisServer

    with RedisServer() as server:
        yield server.url


class Zep:
    """The Zep-compatible server of one test: ``url``, ``api_key``, ``fault(...)``."""

    def __init__(self, stub: Any) -> None:
        self.stub = stub
        self.url: str = stub.url
        self.api_key = API_KEY

    def fault(self, name: str | int, delay_ms: int = 0) -> None:
        """Fail every request from now on (``"ok"`` heals it); ``delay_ms`` for ``"slow"``."""
        self.stub.set_fault(_ALIASES.get(str(name), str(name)), delay_ms)

    def reads_of(self, thread_id: str) -> int:
        """How many reads of ``thread_id`` reached this server."""
        return int(self.stub.reads_of(thread_id))

    def stats(self) -> dict[str, Any]:
        return dict(self.stub.stats())


@pytest.fixture
def memguard_zep() -> Iterator[Zep]:
    from memguard.drill.zepstub import ZepStub

    with ZepStub(api_key=API_KEY) as stub:
        yield Zep(stub)


class Guard:
    """The test's guard state; each change is seen by this process's reads when the call returns."""

    def __init__(self, proc: Any) -> None:
        self.process = proc
        self.by = {"via": "test"}

    def force(self, reason: str = "auth", guard: str = "default", ttl_seconds: int = 300) -> dict[str, Any]:
        """Force ``guard`` to write_only, as a trip of ``reason`` would (the hold replaces any)."""
        out: dict[str, Any] = self.process.ops_for(guard).force(
            self.by, reason=reason, ttl_seconds=ttl_seconds, replace=True)
        self._settle(guard, lambda v: v.record is not None and v.record.reason == reason)
        return out

    def clear(self, ramp: bool = False, guard: str = "default") -> dict[str, Any]:
        """End the hold: every read at once, or (``ramp=True``) through the configured ramp."""
        out: dict[str, Any] = self.process.ops_for(guard).clear(self.by, ramp=ramp)
        self._settle(guard, lambda v: v.record is None and (ramp or v.ramp is None))
        return out

    def ramp(self, share: float, guard: str = "default") -> None:
        """Put ``guard`` in a recovery ramp that admits ``share`` (0 to 1) of conversations for
        the rest of the test (an hour's ramp at its flattest curve)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be between 0 and 1, got {share!r}")
        from memguard.store.state import State

        state = self.process.ops_for(guard).state
        flat = dataclasses.replace(state.settings, ramp_seconds=3600, ramp_min_percent=share * 100,
                                   ramp_aggression=0.1)
        if state.snapshot().record is None:
            self.force("manual_ops", guard)
        State(state.client, flat, state.hooks, keys=state.keys, shared=self.process.state,
              guard=state.guard).clear(self.by, ramp=True)
        self._settle(guard, lambda v: v.record is None and v.ramp is not None)

    def status(self, guard: str = "default") -> dict[str, Any]:
        """What ``memguard status`` shows, as a dict."""
        return dict(self.process.ops_for(guard).status(self.by))

    def _settle(self, guard: str, seen: Callable[[Any], bool]) -> None:
        """Wait (with a deadline) until the guard's view in this process shows the change; a
        guard this process has not read yet reads Redis on its first read."""
        unit = self.process.units.unit(guard)
        deadline = time.monotonic() + SETTLE_S
        while unit is not None and not ((v := unit.view.current) is not None and seen(v)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"memguard_guard: the change to {guard!r} did not reach this process")
            time.sleep(0.001)


@pytest.fixture
def memguard_guard(request: pytest.FixtureRequest, memguard_redis_url: str,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Guard]:
    from memguard import process
    from memguard.config.settings import Settings

    _wipe(memguard_redis_url)
    monkeypatch.setenv("REDIS_URL", memguard_redis_url)  # a rebuild (a fork, a worker) finds it too
    if "memguard_zep" in request.fixturenames:  # memguard's own reads go to the test's Zep
        zep: Zep = request.getfixturevalue("memguard_zep")
        monkeypatch.setenv("ZEP_API_URL", zep.url)
        monkeypatch.setenv("ZEP_API_KEY", zep.api_key)
    proc = process.configure(Settings.from_env())  # the environment, with the test's Redis and Zep
    if not proc.watcher.wait_ready(5):
        raise TimeoutError(f"memguard_guard: no view of {memguard_redis_url} within 5 s")
    try:
        yield Guard(proc)
    finally:
        process.release()


def _wipe(url: str) -> None:
    """Delete memguard's keys there: each test starts from no state."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        for pattern in ("mem:*", "{mem}:*", "{mem:g:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


class Events(list[Any]):
    """memguard's events in the test, oldest first, with finders by kind."""

    def of(self, kind: type, **fields: Any) -> list[Any]:
        return [e for e in self if isinstance(e, kind) and all(getattr(e, k) == v for k, v in fields.items())]

    def forced(self, **fields: Any) -> list[Any]:
        from memguard.domain import events

        return self.of(events.ModeForced, **fields)

    def restored(self, **fields: Any) -> list[Any]:
        from memguard.domain import events

        return self.of(events.ModeRestored, **fields)

    def blocked(self, **fields: Any) -> list[Any]:
        from memguard.domain import events

        return self.of(events.ReadBlocked, **fields)

    def failures(self, **fields: Any) -> list[Any]:
        from memguard.domain import events

        return self.of(events.FailureRecorded, **fields)


@pytest.fixture
def memguard_events() -> Iterator[Events]:
    from memguard import process

    seen = Events()
    process.hooks.subscribe(seen.append)
    try:
        yield seen
    finally:
        process.hooks.unsubscribe(seen.append)
