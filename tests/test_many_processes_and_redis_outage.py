"""Many processes at once, and Redis going away under the guard."""

from __future__ import annotations

import multiprocessing as mp
import time

from memguard import flags, process, service
from memguard.config.settings import Settings
from memguard.domain import events
from memguard.drill.localstack import RedisServer
from memguard.store.keys import CONSECUTIVE_FAILURES_KEY, FORCED_MODE_KEY

from .conftest import make_settings

PROCS = 8
FAILURES_EACH = 50


def _fail_many(redis_url: str, start, out) -> None:
    rt = process.configure(Settings(redis_url=redis_url, zep_api_key="x"), watch=False)
    forced = []
    process.hooks.subscribe(lambda e: forced.append(e) if isinstance(e, events.ModeForced) else None)
    start.wait(60)  # every process is built: they all begin at once
    for _ in range(FAILURES_EACH):
        flags.increment_consecutive_failures()
    out.put(len(forced))
    rt.close()


def fail_together(redis_url: str) -> list[int]:
    """PROCS processes record FAILURES_EACH failures each, all at once: downgrades each saw."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(PROCS + 1), ctx.Queue()
    procs = [ctx.Process(target=_fail_many, args=(redis_url, start, out)) for _ in range(PROCS)]
    for p in procs:
        p.start()
    start.wait(60)
    downgrades = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    return downgrades


def test_eight_processes_fifty_failures_each_one_downgrade(redis_server, redis_db):
    downgrades = fail_together(redis_server.url)
    assert int(redis_db.get(CONSECUTIVE_FAILURES_KEY)) == PROCS * FAILURES_EACH
    assert sum(downgrades) == 1
    assert redis_db.get(FORCED_MODE_KEY) is not None


def test_redis_stopped_mid_run_fails_open_and_recovers(stub, recorded):
    with RedisServer() as server:
        rt = process.configure(make_settings(server.url, stub))
        try:
            assert rt.watcher.wait_ready()
            assert service.fetch_thread_context("t")[0] == "context for t"
            server.stop()
            started = time.perf_counter()
            results = [service.fetch_thread_context("t") for _ in range(200)]
            elapsed = time.perf_counter() - started
            assert all(ctx == "context for t" for ctx, _ in results)
            assert any(e.kind == "redis_error" for e in recorded if isinstance(e, events.GuardTrouble))
            # Failures while Redis is down are reported, not raised.
            stub.set_fault("503")
            assert service.fetch_thread_context("t")[1]["reason"] == "http_5xx"
            stub.set_fault("ok")
            assert elapsed < 200 * 0.05, "reads must not each pay a Redis connect timeout"

            server.start()
            server.client().set(FORCED_MODE_KEY, '{"mode": "write_only", "reason": "manual_ops", '
                                f'"until": {time.time() + 60}, "forced_at": {time.time()}}}')
            deadline = time.monotonic() + 10
            while service.fetch_thread_context("t")[1]["used"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert service.fetch_thread_context("t")[1]["source"] == "write_only_forced"
        finally:
            rt.close()
