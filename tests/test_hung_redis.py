"""A hung Redis (SIGSTOP, CLIENT PAUSE WRITE) never hangs the reads: at most one read per
back-off interval waits for the Redis timeout, and the view comes back when Redis does."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import statistics
import time
from collections.abc import Iterator

import pytest
import redis

from memguard import process, service
from memguard.config.settings import Settings
from memguard.domain import events
from memguard.drill.localstack import RedisServer, wait_for
from memguard.store.state import State

from .conftest import make_settings
from .test_propagation_to_every_view import BOUND_MS

REDIS_TIMEOUT_MS = 50

# The promises, as the README writes them: not read back from the code, so that a change to the
# code's constant turns these red.
LIVENESS_BOUND_S = 5.0  # no view serves a state older than 5 s
BACKOFF_S = 1.0  # at most one read per 1 s back-off waits for the Redis timeout


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server this test may stop: never the session's shared one."""
    with RedisServer() as server:
        yield server
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)


def other_state(server: RedisServer) -> State:
    """Another writer's store: its own client, patient enough to outlast a pause."""
    client = redis.Redis(port=server.port, decode_responses=True, socket_timeout=10)
    return State(client, Settings(redis_url=server.url), events.Hooks())


def read_for(seconds: float) -> list[float]:
    """Guarded reads back to back (10 ms apart) for ``seconds``; each read's duration in s."""
    durations = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        context, meta = service.fetch_thread_context("t")
        durations.append(time.perf_counter() - started)
        assert context == "context for t" and meta["used"] is True, meta
        time.sleep(0.01)
    return durations


def redis_timeouts(recorded: list[events.Event]) -> int:
    """Reads that asked Redis and gave up (the watcher's own reconnects are not reads)."""
    return sum(1 for e in recorded if isinstance(e, events.GuardTrouble) and e.kind == "redis_error"
               and e.op != "watch")


def test_reads_go_on_under_a_stopped_redis_and_the_view_comes_back(own_redis, stub, recorded):
    rt = process.configure(make_settings(own_redis.url, stub, redis_timeout_ms=REDIS_TIMEOUT_MS))
    try:
        assert rt.watcher.wait_ready(5)
        healthy = statistics.median(read_for(0.5))
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            # The liveness bound: no view serves a state older than 5 s (the README's figure).
            wait_for(lambda: (v := rt.view.current) is None or time.monotonic() >= v.valid_until,
                     LIVENESS_BOUND_S + 1, "the view to lapse under SIGSTOP", interval=0.01)
            lapsed = time.monotonic() - stopped
            reading = time.monotonic()
            before = redis_timeouts(recorded)
            durations = read_for(4)
            timeouts = redis_timeouts(recorded) - before
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        waited = time.monotonic() - reading
        print(f"view lapsed {lapsed:.2f}s after SIGSTOP")
        assert lapsed <= LIVENESS_BOUND_S + 0.1
        typical = statistics.median(durations)
        print(f"{len(durations)} reads in {waited:.1f}s of SIGSTOP: {timeouts} waited for the Redis "
              f"timeout (max read {max(durations) * 1000:.0f} ms); p50 {typical * 1000:.1f} ms, "
              f"healthy p50 {healthy * 1000:.1f} ms")
        # Once the view lapses, one read per back-off interval tries Redis and times out: counted
        # from the guard's own events, so a loaded machine's slow reads cannot blur it.
        assert 1 <= timeouts <= waited / BACKOFF_S + 2, timeouts
        assert len(durations) >= 10 * timeouts, "most reads skip Redis during the back-off"
        assert max(durations) < 2.0, "no read hangs"
        assert typical <= 2 * healthy + 0.005, "the typical read costs what a healthy one does"

        # Redis is back: the view returns, and another writer's force is seen within the bound.
        wait_for(lambda: rt.view.current is not None, 10, "the view after SIGCONT")
        other = other_state(own_redis)
        forced_at = time.perf_counter()
        other.force("manual_ops", 60, {"via": "test"}, auto=False)
        wait_for(lambda: rt.guard.forced() is not None, 5, "the force after SIGCONT", interval=0.0005)
        seen_ms = (time.perf_counter() - forced_at) * 1000
        print(f"force seen {seen_ms:.1f} ms after SIGCONT's first write")
        assert seen_ms <= BOUND_MS
        assert service.fetch_thread_context("t")[1]["source"] == "write_only_forced"
    finally:
        rt.close()


def _force_when_writes_resume(url: str, port: int, out) -> None:
    server = RedisServer.__new__(RedisServer)
    server.port = port
    other_state(server).force("manual_ops", 60, {"via": "test"}, auto=False)  # blocks while paused
    out.send(time.perf_counter())


def test_a_force_blocked_by_client_pause_write_is_seen_when_it_lands(own_redis, stub):
    rt = process.configure(make_settings(own_redis.url, stub, redis_timeout_ms=REDIS_TIMEOUT_MS))
    try:
        assert rt.watcher.wait_ready(5)
        pause_ms = 3000
        own_redis.client().execute_command("CLIENT", "PAUSE", str(pause_ms), "WRITE")
        paused = time.perf_counter()
        parent, child = mp.get_context("fork").Pipe()
        forcer = mp.get_context("fork").Process(target=_force_when_writes_resume,
                                                 args=(own_redis.url, own_redis.port, child))
        forcer.start()
        # Reads go on while the force waits: the view lapses (no heartbeat gets through), and
        # reads then ask Redis, which still answers reads: not forced yet.
        durations = read_for(pause_ms / 1000 - 0.5)
        assert rt.guard.forced() is None
        assert max(durations) < 2.0, "no read hangs"
        wait_for(lambda: rt.guard.forced() is not None, 10, "the force once writes resume", interval=0.0005)
        seen = time.perf_counter()
        landed = parent.recv()
        forcer.join(10)
        # The force committed when Redis let writes through again (its pause ends on Redis's own
        # cron, up to ~100 ms after the nominal end) and returned at ``landed``: seen within the
        # bound of that moment (a reader may even see it before the writer hears back).
        seen_ms = (seen - landed) * 1000
        print(f"force seen {seen_ms:.1f} ms after its call returned, {(landed - paused) * 1000:.0f} ms "
              "after the pause began")
        assert landed >= paused + pause_ms / 1000 - 0.05, "the force did not wait for the pause"
        assert seen_ms <= BOUND_MS
        assert service.fetch_thread_context("t")[1]["source"] == "write_only_forced"
    finally:
        rt.close()
