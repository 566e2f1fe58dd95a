"""The figures the README and docs/settings.md promise, and the names memguard's contract fixes, written here
as the documents write them. A test that read them back from the code would move with a bug:
these do not. Each runs memguard with its defaults (no setting given) against the real
redis-server and the Zep stub, and looks at Redis through a plain redis-py client, as an
operator's script or an older tool would."""

from __future__ import annotations

import json
import time

import pytest
import redis

from memguard import process, service
from memguard.config.settings import Settings

from .conftest import API_KEY, wait_for

# The contract's names (docs/store.md, docs/reference.md), kept exactly: operators' scripts, alerts and
# older code use them.
FORCED_KEY = "mem:mode:forced:v1"
FAILURES_KEY = "mem:read:consec_failures"
CHANGES_CHANNEL = "mem:mode:changes"  # the README and docs/store.md: where every change is told
# The README's and docs/settings.md's figures.
THRESHOLD = 3  # 3 timeouts/5xx ...
WINDOW_S = 60  # ... within 60 s
HOLD_S = 300  # the hold, 5 minutes
HOLD_CAP_S = 3600  # the back-off's cap
PROBE_BUDGET_S = 0.150  # the probe's 150 ms


@pytest.fixture
def defaults(redis_server, redis_db, stub):
    """A process with memguard's defaults (only where Redis and Zep are), on an empty Redis."""
    rt = process.configure(Settings(redis_url=redis_server.url, zep_api_url=stub.url, zep_api_key=API_KEY))
    assert rt.watcher.wait_ready(5)
    yield rt
    rt.close()


@pytest.fixture
def plain(redis_server) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)


def _source(thread: str = "t") -> str:
    return service.fetch_thread_context(thread)[1]["source"]


def test_three_failures_within_60_s_force_a_300_s_hold_under_the_design_names(defaults, stub, plain):
    changes = plain.pubsub()
    changes.subscribe(CHANGES_CHANNEL)
    assert changes.get_message(timeout=2)["type"] == "subscribe"
    stub.set_fault("503")
    for n in range(1, THRESHOLD):
        assert _source() == "zep_error"
        assert plain.get(FAILURES_KEY) == str(n) and plain.get(FORCED_KEY) is None
    assert WINDOW_S * 1000 - 5000 < plain.pttl(FAILURES_KEY) <= WINDOW_S * 1000
    assert _source() == "zep_error"
    record = json.loads(plain.get(FORCED_KEY))
    assert (record["mode"], record["reason"]) == ("write_only", "consecutive_failures")
    assert record["until"] - record["forced_at"] == pytest.approx(HOLD_S, abs=0.01)
    told = [m for m in iter(lambda: changes.get_message(timeout=1), None) if m["type"] == "message"]
    assert any(json.loads(m["data"]).get("forced") for m in told), "the force was told on the channel"
    assert _source() == "write_only_forced"

    # What an operator's script writes by hand, memguard honours; what it deletes, memguard forgets.
    plain.delete(FORCED_KEY)
    wait_for(lambda: _source() != "write_only_forced", 1, "the hand DEL to be seen")
    now = time.time()
    plain.set(FORCED_KEY, json.dumps({"mode": "write_only", "reason": "manual_ops", "until": now + 60,
                                      "forced_at": now}))
    wait_for(lambda: _source() == "write_only_forced", 1, "the hand SET to be seen")
    plain.delete(FORCED_KEY, FAILURES_KEY)
    wait_for(lambda: _source() != "write_only_forced", 1, "the hand DEL to be seen")

    # A 401 forces at once, for the same hold.
    stub.set_fault("401")
    assert _source() == "zep_error"
    record = json.loads(plain.get(FORCED_KEY))
    assert record["reason"] == "auth"
    assert record["until"] - record["forced_at"] == pytest.approx(HOLD_S, abs=0.01)


def test_the_probe_has_150_ms_and_failed_probes_double_the_hold_up_to_3600_s(defaults, stub, plain):
    def hand_record(holds: int) -> None:
        now = time.time()
        plain.set(FORCED_KEY, json.dumps({"mode": "write_only", "reason": "consecutive_failures",
                                          "until": now - 1, "forced_at": now - 301, "holds": holds}))

    hand_record(1)
    stub.set_fault("slow", delay_ms=int(PROBE_BUDGET_S * 1000) + 250)  # answers, but too late
    result = defaults.ops.probe({"via": "test"})
    assert result["result"] == "failed" and "timeout" in result["error"], result
    assert result["duration_ms"] < PROBE_BUDGET_S * 1000 + 200, "the probe gave up at its budget"
    record = json.loads(plain.get(FORCED_KEY))
    assert (record["reason"], record["holds"]) == ("probe_failed", 2)
    assert 0.9 * 2 * HOLD_S <= record["until"] - record["forced_at"] <= 2 * HOLD_S  # less up to 10 % jitter

    hand_record(5)  # 300 s doubled five times is 9600 s: capped
    defaults.ops.probe({"via": "test"})
    record = json.loads(plain.get(FORCED_KEY))
    assert 0.9 * HOLD_CAP_S <= record["until"] - record["forced_at"] <= HOLD_CAP_S

    hand_record(1)
    stub.set_fault("slow", delay_ms=int(PROBE_BUDGET_S * 1000) - 100)  # within the budget
    assert defaults.ops.probe({"via": "test"})["result"] == "success"
    assert plain.get(FORCED_KEY) is None


CATCHUP_S = 2.0  # docs/settings.md: a window's first bad reads are judged 2 s after the fleet was told


def test_a_windows_first_bad_reads_are_judged_2_s_after_the_fleet_was_told(defaults, plain):
    by = {"via": "test"}
    first = defaults.state.record_outcomes([(0, 30, 30)], by)  # 30 of 30 reads failed
    told = time.monotonic()
    assert first.waiting and plain.get(FORCED_KEY) is None
    time.sleep(max(0.0, told + CATCHUP_S - 0.4 - time.monotonic()))
    assert defaults.state.record_outcomes([], by).waiting, "still catching up 1.6 s after"
    time.sleep(max(0.0, told + CATCHUP_S + 0.2 - time.monotonic()))
    judged = defaults.state.record_outcomes([], by)
    assert not judged.waiting and json.loads(plain.get(FORCED_KEY))["reason"] == "failure_rate"
