"""Sentinel: a primary, a replica and three sentinels; ``SENTINEL FAILOVER`` under reads,
with a worker and two beats of the ready app all following the master (its broker included)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from memguard import flags, process, service
from memguard.config.settings import Settings
from memguard.domain import events
from memguard.drill.localstack import CeleryProcess, SentinelGroup, stack_env, wait_for
from memguard.ops.prober import PROBE_THREAD_ID
from memguard.store.keys import FORCED_MODE_KEY

from .conftest import API_KEY, ROOT, probe_ticks
from .test_propagation_to_every_view import BOUND_MS, original_record, reader_process

HOLD = {"MEMORY_DOWNGRADE_HOLD_SECONDS": "1", "MEMORY_DOWNGRADE_HOLD_MAX_SECONDS": "1",
        "MEMORY_DOWNGRADE_PROBE_INTERVAL_SECONDS": "0.5"}


@pytest.fixture
def sentinel_stack(tmp_path, stub, monkeypatch):
    monkeypatch.chdir(ROOT)
    with SentinelGroup() as group:
        env = stack_env(group.url, stub.url, API_KEY, PYTHONPATH=str(ROOT), **HOLD)
        procs = [CeleryProcess("worker", env, str(tmp_path), "w", "-P", "solo"),
                 CeleryProcess("beat", env, str(tmp_path), "b1"),
                 CeleryProcess("beat", env, str(tmp_path), "b2")]
        try:
            for p in procs:
                p.start()
            rt = process.configure(Settings.from_env(env))
            assert rt.watcher.wait_ready(5)
            yield group, procs, rt
        finally:
            for p in procs:
                p.stop()
            process.get().close()


class Reads(threading.Thread):
    """Guarded reads in a loop, as a request path would make them."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.count = 0
        self.exceptions: list[BaseException] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                service.fetch_thread_context("user-1")
            except BaseException as exc:  # counting whatever reaches a caller
                self.exceptions.append(exc)
            self.count += 1
            time.sleep(0.002)


def probed_once(stub, worker, before: int) -> None:
    wait_for(lambda: flags.get_forced_mode() is None, 15, "the probe to restore")
    ticks = probe_ticks(worker)
    wait_for(lambda: probe_ticks(worker) >= ticks + 2, 15, "two more probe ticks")
    assert stub.reads_of(PROBE_THREAD_ID) == before + 1


def test_failover_under_reads_loses_nothing_and_everything_follows_the_master(sentinel_stack, stub,
                                                                               recorded):
    group, procs, rt = sentinel_stack
    reads = Reads()
    reads.start()
    with reader_process(group.url) as seen:
        before = stub.reads_of(PROBE_THREAD_ID)
        flags.force_write_only("manual_ops", ttl_seconds=1)
        probed_once(stub, procs[0], before)  # the beats and the worker probe before the failover

        # A force replicated before the failover survives it.
        flags.force_write_only("manual_ops", ttl_seconds=60)
        assert rt.state.client.execute_command("WAIT", 1, 2000) == 1
        old = group.master_port()
        new = group.failover()
        assert new != old
        new_master = next(s for s in (group.primary, group.replica) if s.port == new).client()
        assert new_master.get(FORCED_MODE_KEY) is not None
        # Every watcher hears +switch-master, reconnects and re-reads.
        switches = lambda: [e.detail for e in recorded  # noqa: E731
                            if isinstance(e, events.GuardTrouble) and e.kind == "master_switch"]
        wait_for(switches, 10, "this process to hear +switch-master")
        wait_for(lambda: (v := rt.view.current) is not None and v.record is not None, 10,
                 "this process's view on the new master")
        seen.live()
        assert rt.guard.forced() is not None
        seen(True, lambda: None)  # the other process's view (not a read per request) still holds it
        assert switches() == [f"127.0.0.1:{old} -> 127.0.0.1:{new}"]

        # After the failover: a clear, a hand write (seen through tracking) and a force reach
        # the other process within the bound, and the next hold is probed exactly once.
        assert seen(False, lambda: flags.clear_forced_mode() and None) <= BOUND_MS
        hand_set = lambda: new_master.set(FORCED_MODE_KEY, original_record(), ex=60) and None  # noqa: E731
        assert seen(True, hand_set) <= BOUND_MS
        assert seen(False, lambda: new_master.delete(FORCED_MODE_KEY) and None) <= BOUND_MS
        before = stub.reads_of(PROBE_THREAD_ID)
        assert seen(True, lambda: flags.force_write_only("manual_ops", ttl_seconds=1) and None) <= BOUND_MS
        probed_once(stub, procs[0], before)
    reads.halt.set()
    reads.join(5)
    assert reads.exceptions == []
    assert reads.count > 500
    assert all(p.alive() for p in procs), [p.output()[-1500:] for p in procs if not p.alive()]
    assert rt.state.client.connection_pool.get_master_address()[1] == new
    # The operator's CLI follows the master too.
    env = stack_env(group.url, stub.url, API_KEY, **HOLD)
    forced = subprocess.run([sys.executable, "-m", "memguard", "force", "--ttl", "60"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert forced.returncode == 0, forced.stderr
    assert new_master.get(FORCED_MODE_KEY) is not None
    status = subprocess.run([sys.executable, "-m", "memguard", "status"], env=env, capture_output=True,
                            text=True, timeout=30)
    assert status.stdout.startswith("mode:        write_only"), status.stdout


def test_primary_killed_under_reads_the_fleet_follows_the_promoted_replica(stub, recorded):
    """A real outage: kill -9 of the primary. The sentinels promote the replica after
    down-after-milliseconds (1 s here); reads fail open meanwhile and never raise."""
    with SentinelGroup() as group:
        rt = process.configure(Settings(redis_url=group.url, zep_api_url=stub.url, zep_api_key=API_KEY))
        try:
            assert rt.watcher.wait_ready(5)
            reads = Reads()
            reads.start()
            with reader_process(group.url) as seen:
                old = group.master_port()
                killed = next(s for s in (group.primary, group.replica) if s.port == old)
                killed.proc.kill()
                killed.proc.wait(10)
                wait_for(lambda: group.master_port() != old, 30, "the sentinels to promote the replica")
                new = group.master_port()
                promoted = next(s for s in (group.primary, group.replica) if s.port == new)
                wait_for(lambda: promoted.client().role()[0] == "master", 20, "the replica to take writes")
                wait_for(lambda: rt.view.current is not None, 10, "the watcher on the new master")
                seen.live()
                assert seen(True, lambda: flags.force_write_only("manual_ops", 60) and None) <= BOUND_MS
                assert promoted.client().get(FORCED_MODE_KEY) is not None
                assert seen(False, lambda: flags.clear_forced_mode() and None) <= BOUND_MS
            reads.halt.set()
            reads.join(5)
            assert reads.exceptions == []
            assert reads.count > 100
            assert any(isinstance(e, events.GuardTrouble) and e.kind == "master_switch" for e in recorded)
        finally:
            rt.close()
