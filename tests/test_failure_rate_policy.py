"""The failure-rate policy: force on the share of failed reads fleet-wide, not on 3 in a row."""

from __future__ import annotations

import time

import pytest

from memguard import flags, process, service
from memguard.store.keys import CONSECUTIVE_FAILURES_KEY, OUTCOMES_KEY
from memguard.store.state import State

from .conftest import make_settings, wait_caught_up, wait_for

RATE = {"failure_rate_threshold": 0.1, "failure_rate_min_reads": 20, "failure_rate_window_seconds": 60}


def reads(stub, n: int, fault: str = "ok") -> None:
    stub.set_fault(fault)
    for _ in range(n):
        service.fetch_thread_context("user-1")
    stub.set_fault("ok")


def evalsha_calls(redis_db) -> int:
    return int(redis_db.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.mark.parametrize("policy", ["consecutive", "failure_rate"])
def test_three_failures_among_many_successes_trip_only_the_consecutive_policy(configure, stub, policy):
    rt = configure(**(RATE if policy == "failure_rate" else {}))
    reads(stub, 200)
    reads(stub, 3, "503")
    reads(stub, 10)
    if rt.meter is not None:
        rt.meter.flush()
    forced = flags.get_forced_mode()
    if policy == "consecutive":
        assert forced is not None and forced["reason"] == "consecutive_failures"
    else:
        assert forced is None, "3 failures in 213 reads is 1.4%, under the 10% threshold"


def test_an_outage_trips_the_failure_rate_and_auth_still_trips_at_once(configure, stub, redis_db):
    rt = configure(**RATE)
    rt.meters.stop()  # no flush once a second: the batch is flushed below, when the test says
    reads(stub, 200)
    reads(stub, 30, "503")  # 30 of 230: 13% > 10%
    assert flags.get_forced_mode() is None, "nothing is decided before the batch is flushed"
    assert redis_db.get(CONSECUTIVE_FAILURES_KEY) is None, "the consecutive counter is not used"
    rt.meter.flush()
    assert flags.get_forced_mode() is None, "judged only once the fleet's kept counts are in"
    wait_caught_up(redis_db, OUTCOMES_KEY)
    reads(stub, 1)
    rt.meter.flush()  # 30 of 231: 13% > 10%
    assert flags.get_forced_mode()["reason"] == "failure_rate"

    flags.clear_forced_mode()  # a clear empties the outcome window too
    assert not redis_db.exists(OUTCOMES_KEY)
    reads(stub, 1, "401")
    assert flags.get_forced_mode()["reason"] == "auth"


def test_the_healthy_path_writes_nothing_and_a_batch_is_one_script(configure, stub, redis_db):
    rt = configure(**RATE)
    rt.meters.stop()  # no flush once a second during the count: the batch is flushed below
    reads(stub, 1)
    rt.meter.flush()  # loads the script (a first EVALSHA answers NOSCRIPT and is sent again)
    before = evalsha_calls(redis_db)
    reads(stub, 300)
    assert evalsha_calls(redis_db) == before, "healthy reads only count in process"
    rt.meter.flush()
    assert evalsha_calls(redis_db) == before + 1
    window = {k: int(v) for k, v in redis_db.hgetall(OUTCOMES_KEY).items()}
    assert sum(v for k, v in window.items() if k.endswith(":t")) == 301, window
    assert sum(v for k, v in window.items() if not k.endswith(":t")) == 0, window


def test_min_reads_and_the_ratio_are_fleet_wide(redis_db, redis_server, stub):
    """Two processes' batches: neither alone has MEMORY_FAILURE_RATE_MIN_READS reads."""
    a, b = (State(redis_db, make_settings(redis_server.url, stub, **RATE), process.hooks) for _ in range(2))
    assert a.record_outcomes([(0, 15, 9)], {"via": "test"}).status == "counted"
    assert b.record_outcomes([(0, 15, 9)], {"via": "test"}).status == "counted", "not before the catch-up"
    wait_caught_up(redis_db, OUTCOMES_KEY)
    t = b.record_outcomes([(0, 1, 0)], {"via": "test"})
    assert t.status == "forced" and t.record.reason == "failure_rate"


def test_a_healthy_fleet_sends_no_counts_and_sends_them_all_once_told_of_a_failure(configure, stub, redis_db):
    """Healthy counts are kept in process (no command); the first failure tells the fleet, and
    every process then sends what it kept, each count in the slot of its own time."""
    rt = configure(failure_rate_threshold=0.5, failure_rate_min_reads=20, failure_rate_window_seconds=6)
    assert rt.meter.healthy_flush_s == 1.0  # a 1 s slot: before, a healthy batch went every second
    other = State(redis_db, rt.settings, process.hooks)
    reads(stub, 1)
    rt.meter.flush()  # loads the script
    redis_db.delete(OUTCOMES_KEY)
    before = evalsha_calls(redis_db)
    started = time.monotonic()
    while time.monotonic() - started < 2.5:  # over two slots, healthy, with the meter's thread on
        reads(stub, 10)
    assert evalsha_calls(redis_db) == before, "a healthy process sends nothing"
    kept = rt.meter.counts(rt.meter.windows[0], rt.meter._buckets, time.monotonic())
    assert sum(c[1] for c in kept) >= 20
    assert other.record_outcomes([(0, 1, 1)], {"via": "test"}).status == "counted"  # another process fails
    wait_for(lambda: "outcomes" in rt.view.told, 2, "the hot message")
    wait_for(lambda: sum(int(v) for k, v in redis_db.hgetall(OUTCOMES_KEY).items() if k.endswith(":t")) > 1,
             3, "the kept counts")
    window = redis_db.hgetall(OUTCOMES_KEY)
    slots = {k.split(":")[0] for k in window if k.endswith(":t")}
    assert sum(int(v) for k, v in window.items() if k.endswith(":t")) == 1 + sum(c[1] for c in kept)
    assert len(slots) >= 3, f"each count in the slot of its own time: {window}"


def test_bad_failure_rate_settings_are_named():
    from memguard.config.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="MEMORY_FAILURE_RATE_THRESHOLD"):
        Settings.from_env({"MEMORY_FAILURE_RATE_THRESHOLD": "50%"})
    with pytest.raises(SettingsError, match="MEMORY_FAILURE_RATE_THRESHOLD"):
        Settings.from_env({"MEMORY_FAILURE_RATE_THRESHOLD": "1.5"})
