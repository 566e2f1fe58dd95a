"""Beat and workers ride through a Redis restart: no supervisor involved."""

from __future__ import annotations

import time

from memguard import flags
from memguard.drill.localstack import wait_for
from memguard.ops.prober import PROBE_THREAD_ID


def test_two_beats_survive_a_redis_restart_and_the_next_hold_is_probed_once(stack):
    extra = {"MEMORY_DOWNGRADE_HOLD_SECONDS": "1", "MEMORY_DOWNGRADE_HOLD_MAX_SECONDS": "1"}
    stack.spawn("worker", "w", "-P", "solo", **extra)
    beats = [stack.spawn("beat", name, **extra) for name in ("b1", "b2")]
    time.sleep(2)

    # kill -9 of redis-server, restarted on the same port a second later, its data gone.
    stack.server.proc.kill()
    stack.server.proc.wait(10)
    time.sleep(1)
    stack.server.start()
    restarted = time.monotonic()
    time.sleep(30)
    assert all(b.alive() for b in beats), [b.output()[-1500:] for b in beats if not b.alive()]
    active = [b for b in beats if b.output().count("Acquired lock") >= 1 and
              "Sending due task memguard-probe" in b.output().split("Redis unreachable")[-1]]
    assert active, "a beat took the lock again and schedules the probe"

    stack.use(**extra)
    before = stack.stub.reads_of(PROBE_THREAD_ID)
    flags.force_write_only("manual_ops", ttl_seconds=1)
    wait_for(lambda: flags.get_forced_mode() is None, 15, "the probe to restore after the restart")
    time.sleep(1.5)  # a second probe of the same hold would have run by now
    assert stack.stub.reads_of(PROBE_THREAD_ID) == before + 1
    assert time.monotonic() - restarted < 60
