"""The failure-rate policy: force on the share of failed reads fleet-wide, not on 3 in a row."""

from __future__ import annotations

import pytest

from memguard import flags, process, service
from memguard.store.keys import CONSECUTIVE_FAILURES_KEY, OUTCOMES_KEY
from memguard.store.state import State

from .conftest import make_settings

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
    rt.meter.stop()  # no flush once a second: the batch is flushed below, when the test says
    reads(stub, 200)
    reads(stub, 30, "503")  # 30 of 230: 13% > 10%
    assert flags.get_forced_mode() is None, "nothing is decided before the batch is flushed"
    assert redis_db.get(CONSECUTIVE_FAILURES_KEY) is None, "the consecutive counter is not used"
    rt.meter.flush()
    assert flags.get_forced_mode()["reason"] == "failure_rate"

    flags.clear_forced_mode()  # a clear empties the outcome window too
    assert not redis_db.exists(OUTCOMES_KEY)
    reads(stub, 1, "401")
    assert flags.get_forced_mode()["reason"] == "auth"


def test_the_healthy_path_writes_nothing_and_a_batch_is_one_script(configure, stub, redis_db):
    rt = configure(**RATE)
    rt.meter.stop()  # no flush once a second during the count: the batch is flushed below
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
    assert a.record_outcomes(15, 9, {"via": "test"}).status == "counted"
    t = b.record_outcomes(15, 9, {"via": "test"})
    assert t.status == "forced" and t.record.reason == "failure_rate"


def test_bad_failure_rate_settings_are_named():
    from memguard.config.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="MEMORY_FAILURE_RATE_THRESHOLD"):
        Settings.from_env({"MEMORY_FAILURE_RATE_THRESHOLD": "50%"})
    with pytest.raises(SettingsError, match="MEMORY_FAILURE_RATE_THRESHOLD"):
        Settings.from_env({"MEMORY_FAILURE_RATE_THRESHOLD": "1.5"})
