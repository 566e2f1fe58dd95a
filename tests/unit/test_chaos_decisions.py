"""A game day's experiment decided without I/O: what operators may ask for (bounded, checked by
name), which reads it picks, and what a picked read answers. The real-Redis tests
(tests/test_chaos_experiments.py) hold the same behaviour across processes."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from memguard.config.settings import Settings, SettingsError
from memguard.domain import events
from memguard.domain.chaos import (
    Injection,
    chaos_problem,
    parse_chaos,
    parse_duration,
    parse_fault,
    parse_share,
)
from memguard.request.guard import Guard

from .fakes import FakeMeter, FakeStore, FakeView, local_chaos

ALLOW = Settings(zep_api_key="x", chaos="allow")
VALID = {"id": "e" * 40, "fault": "error:503", "percent": 10, "start": 1_796_000_000.0, "seconds": 600,
         "trip": False, "by": {"via": "test"}}


def guard(settings: Settings = ALLOW, **view: object) -> tuple[Guard, FakeStore, list[events.Event]]:
    store, hooks, seen = FakeStore(), events.Hooks(), []
    hooks.subscribe(seen.append)
    return Guard(settings, store, hooks, FakeView(**view), FakeMeter()), store, seen  # type: ignore[arg-type]


@pytest.mark.parametrize(("raw", "text", "kind", "status", "delay"), [
    ("timeout", "timeout", "timeout", None, 0), ("auth", "auth", "auth", 401, 0),
    ("error:503", "error:503", "error", 503, 0), (" Error:500 ", "error:500", "error", 500, 0),
    ("latency:300ms", "latency:300ms", "latency", None, 300),
    ("latency:60000ms", "latency:60000ms", "latency", None, 60000)])
def test_the_four_faults_read_as_written(raw, text, kind, status, delay):
    fault = parse_fault(raw)
    assert (fault.text, fault.kind, fault.status, fault.delay_ms) == (text, kind, status, delay)


@pytest.mark.parametrize("raw", ["", "error", "error:404", "error:5031", "latency:0ms", "latency:60001ms",
                                 "latency:300", "latency:0300ms", "error:5\u0660\u0663", "timeout" * 5, 503,
                                 None])
def test_a_fault_that_is_not_one_of_the_four_is_refused_by_name(raw):
    with pytest.raises(ValueError, match=r"fault (must be one of timeout|latency must be 1 to 60000)"):
        parse_fault(raw)


@pytest.mark.parametrize(("raw", "percent"), [("30%", 30.0), ("30", 30.0), (30, 30.0), (12.5, 12.5),
                                              ("100%", 100.0), (" 0.5% ", 0.5)])
def test_a_share_is_a_percentage_with_or_without_its_sign(raw, percent):
    assert parse_share(raw) == percent


@pytest.mark.parametrize("raw", ["0", "0%", "101", "-5", "1e2", "30%%", "thirty", True, None, "9" * 10_000])
def test_a_share_outside_0_to_100_is_refused(raw):
    with pytest.raises(ValueError, match="share must be a percentage"):
        parse_share(raw)


@pytest.mark.parametrize(("raw", "seconds"), [("90s", 90), ("10m", 600), ("1h", 3600), ("5s", 5), (120, 120),
                                              ("60M", 3600)])
def test_a_duration_reads_in_seconds_minutes_or_hours(raw, seconds):
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["4s", "61m", "2h", "0s", "10", "1d", "1h30m", "", True, 3601, "9" * 10_000])
def test_a_duration_under_5_s_or_over_1_h_is_refused(raw):
    with pytest.raises(ValueError, match="duration must be 5 s to 1 h"):
        parse_duration(raw)


def test_every_check_runs_in_time_that_does_not_grow_with_the_input():
    huge = "latency:" + "9" * 1_000_000 + "ms"
    started = time.perf_counter()
    for parse in (parse_fault, parse_share, parse_duration):
        with pytest.raises(ValueError):
            parse(huge)
    assert time.perf_counter() - started < 0.05  # refused unread: no regex runs over a megabyte


@pytest.mark.parametrize(("field", "value"), [
    ("id", ""), ("id", "x" * 65), ("fault", "error:404"), ("fault", "TIMEOUT"), ("fault", 5),
    ("percent", 0), ("percent", 100.5), ("percent", True), ("start", "now"), ("start", 1_796_000_000.0 + 60),
    ("seconds", 4), ("seconds", 3601), ("trip", "yes"), ("by", "me"), ("by", [1])])
def test_an_experiment_record_that_breaks_the_rule_is_no_experiment(field, value):
    record = {**VALID, field: value}
    assert chaos_problem(record, 1_796_000_000.0) is not None
    assert parse_chaos(json.dumps(record), 1_796_000_000.0) is None


def test_a_valid_experiment_record_reads_back():
    chaos = parse_chaos(json.dumps(VALID), 1_796_000_000.0)
    assert chaos is not None and chaos.end == 1_796_000_600.0 and chaos.fault.status == 503


def test_about_the_share_of_conversations_is_picked_and_the_same_ones_every_time():
    c = local_chaos(percent=30)
    ids = [f"conversation-{i}" for i in range(4000)]
    picked = {i for i in ids if c.picked(i, time.monotonic()) is not None}
    assert 0.27 < len(picked) / len(ids) < 0.33
    again = local_chaos(percent=30)  # another process learning of the same experiment
    assert picked == {i for i in ids if again.picked(i, time.monotonic()) is not None}
    other = local_chaos(percent=30, chaos_id="c2")
    assert picked != {i for i in ids if other.picked(i, time.monotonic()) is not None}, "another id"


def test_past_its_end_an_experiment_picks_no_read():
    c = local_chaos(percent=100, seconds=10, elapsed=11)
    assert all(c.picked(f"t{i}", time.monotonic()) is None for i in range(100))


def test_an_error_fault_answers_as_the_real_503_would_without_calling_zep_or_redis():
    g, store, seen = guard(chaos=local_chaos("error:503", percent=100))
    calls = []
    value, meta = g.call("t", lambda: calls.append(1))
    assert value is None and calls == []
    assert meta == {"used": False, "source": "chaos", "reason": "http_5xx", "status": 503, "error": "chaos",
                    "chaos": "error:503"}
    assert store.calls == [], "not counted toward a trip by default"
    assert [e.fault for e in seen if isinstance(e, events.ChaosInjected)] == ["error"]
    assert not [e for e in seen if isinstance(e, events.FailureRecorded)]


def test_an_auth_fault_with_trip_forces_as_a_401_would():
    g, store, _ = guard(chaos=local_chaos("auth", percent=100, trip=True))
    meta = g.call("t", lambda: "ctx")[1]
    assert (meta["source"], meta["reason"], meta["status"]) == ("chaos", "auth", 401)
    assert store.names() == ["force"] and store.calls[0][1:4] == ("auth", 300, True)
    assert g.meter.reads == [(0.0, True)]  # type: ignore[union-attr]


def test_a_timeout_fault_waits_the_read_budget_and_with_trip_counts_as_a_timeout():
    g, store, seen = guard(chaos=local_chaos("timeout", percent=100, trip=True))
    started = time.perf_counter()
    meta = g.call("t", lambda: "ctx", budget_s=0.05)[1]
    assert time.perf_counter() - started >= 0.05
    assert (meta["source"], meta["reason"], meta["status"]) == ("chaos", "timeout", None)
    assert store.names() == ["count"]
    assert [e.reason for e in seen if isinstance(e, events.FailureRecorded)] == ["timeout"]


def test_a_latency_fault_delays_the_read_then_reads_zep_and_says_so():
    g, _, _ = guard(chaos=local_chaos("latency:30ms", percent=100))
    started = time.perf_counter()
    value, meta = g.call("t", lambda: "ctx", budget_s=1.0)
    assert time.perf_counter() - started >= 0.03
    assert value == "ctx" and meta["source"] == "zep" and meta["chaos"] == "latency:30ms"
    assert g.meter.reads[0][0] < 0.03, "without trip, the meter does not see the delay"  # type: ignore[union-attr]


def test_a_latency_fault_with_trip_is_a_slow_read_the_budget_and_the_meter_see():
    g, _, _ = guard(chaos=local_chaos("latency:30ms", percent=100, trip=True))
    value, meta = g.call("t", lambda: "ctx", budget_s=0.02)
    assert value is None and meta["source"] == "chaos" and meta["reason"] == "timeout", \
        "longer than the budget: it times out at the budget, as a slow Zep would"
    value, meta = g.call("t", lambda: "ctx", budget_s=0.2)
    assert value == "ctx" and g.meter.reads[-1][0] >= 0.03  # type: ignore[union-attr]


def test_a_process_that_did_not_opt_in_ignores_the_experiment():
    g, _, seen = guard(Settings(zep_api_key="x"), chaos=local_chaos("error:503", percent=100))
    assert all(g.call(f"t{i}", lambda: "ctx") == ("ctx", {"used": True, "source": "zep"}) for i in range(50))
    assert not [e for e in seen if isinstance(e, events.ChaosInjected)]


def test_asyncio_reads_get_the_same_faults():
    g, _, _ = guard(chaos=local_chaos("latency:20ms", percent=100))

    async def read() -> str:
        return "ctx"

    value, meta = asyncio.run(g.acall("t", read, budget_s=1.0))
    assert value == "ctx" and meta["chaos"] == "latency:20ms"
    g, _, _ = guard(chaos=local_chaos("error:502", percent=100))
    assert asyncio.run(g.acall("t", read))[1]["status"] == 502


def test_a_forced_fleet_blocks_before_any_fault_is_injected():
    from .fakes import record
    g, _, seen = guard(record=record(), chaos=local_chaos("error:503", percent=100))
    assert g.call("t", lambda: "ctx")[1]["source"] == "write_only_forced"
    assert not [e for e in seen if isinstance(e, events.ChaosInjected)]


def test_the_setting_takes_allow_or_off_and_refuses_the_rest_by_name():
    assert Settings.from_env({"MEMGUARD_CHAOS": "allow"}).chaos == "allow"
    assert Settings.from_env({}).chaos == "off"
    with pytest.raises(SettingsError, match="MEMGUARD_CHAOS"):
        Settings.from_env({"MEMGUARD_CHAOS": "yes"})


def test_an_injection_is_the_real_fault_on_a_read_with_its_budget():
    fault = parse_fault("latency:300ms")
    assert Injection.of(fault, 1.0, False) == Injection(fault, 0.3, False, None, False)
    assert Injection.of(fault, 0.25, True) == Injection(fault, 0.25, True, None, True)
    assert Injection.of(parse_fault("auth"), 0.25, False).status == 401
