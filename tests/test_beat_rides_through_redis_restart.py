"""Beat and workers ride through a Redis restart: no supervisor involved."""

from __future__ import annotations

import time

from memguard import flags
from memguard.drill.localstack import wait_for
from memguard.ops.prober import PROBE_THREAD_ID

from .conftest import probe_ticks


def test_two_beats_survive_a_redis_restart_and_the_next_hold_is_probed_once(stack):
    extra = {"MEMORY_DOWNGRADE_HOLD_SECONDS": "1", "MEMORY_DOWNGRADE_HOLD_MAX_SECONDS": "1"}
    worker = stack.spawn("worker", "w", "-P", "solo", **extra)
    beats = [stack.spawn("beat", name, **extra) for name in ("b1", "b2")]
    wait_for(lambda: probe_ticks(worker) >= 1, 20, "a first probe tick")

    # kill -9 of redis-server, restarted on the same port a second later, its data gone.
    stack.server.proc.kill()
    stack.server.proc.wait(10)
    time.sleep(1)
    stack.server.start()
    restarted = time.monotonic()

    def sent_since_restart(beat) -> int:
        return beat.output().split("Redis unreachable")[-1].count("Sending due task memguard-probe")

    # Ten ticks after the restart (past the 6 s lock timeout): a beat took the lock again and
    # kept it, and neither beat died on the way.
    wait_for(lambda: any(sent_since_restart(b) >= 10 for b in beats) or not all(b.alive() for b in beats),
             45, "a beat to schedule the probe again after the restart")
    assert all(b.alive() for b in beats), [b.output()[-1500:] for b in beats if not b.alive()]

    stack.use(**extra)
    before = stack.stub.reads_of(PROBE_THREAD_ID)
    flags.force_write_only("manual_ops", ttl_seconds=1)
    wait_for(lambda: flags.get_forced_mode() is None, 15, "the probe to restore after the restart")
    restored = probe_ticks(worker)
    wait_for(lambda: probe_ticks(worker) >= restored + 2, 15, "two more probe ticks after the restore")
    assert stack.stub.reads_of(PROBE_THREAD_ID) == before + 1, "one probe read for the hold"
    assert time.monotonic() - restarted < 60
