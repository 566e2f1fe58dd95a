"""The recovery ramp's decisions, without I/O: the curve, who is admitted, the record's validity
rule and what a held read answers. The real-Redis tests (tests/test_recovery_ramp.py) hold the
same behaviour across processes."""

from __future__ import annotations

import json
import time

import pytest

from memguard.config.settings import Settings, SettingsError
from memguard.domain import events
from memguard.domain.ramp import LocalRamp, Ramp, parse_ramp, position, ramp_problem, share
from memguard.request.guard import Guard

from .fakes import FakeStore, FakeView, local_ramp, ramp


def ok() -> str:
    return "context"


VALID = {"id": "a" * 40, "start": 1_796_000_000.0, "seconds": 30, "min_percent": 10, "aggression": 1.0}


def test_the_curve_is_envoys_slow_start():
    assert share(0, 30, 10, 1.0) == pytest.approx(0.10)  # starts at min_percent
    assert share(15, 30, 10, 1.0) == pytest.approx(0.50)  # linear with aggression 1
    assert share(3, 30, 10, 1.0) == pytest.approx(0.10)  # (3/30) = 0.1: the floor meets the line
    assert share(29.99, 30, 10, 1.0) == pytest.approx(0.9997, abs=1e-3)
    assert share(30, 30, 10, 1.0) == 1.0 and share(300, 30, 10, 1.0) == 1.0  # complete
    assert share(7.5, 30, 0, 2.0) == pytest.approx(0.5)  # (1/4) ** (1/2): more admitted early
    assert share(15, 30, 0, 0.5) == pytest.approx(0.25)  # (1/2) ** 2: fewer
    assert share(-5, 30, 10, 1.0) == pytest.approx(0.10)  # a clock a little behind the ramp's start


def test_a_conversation_once_admitted_stays_admitted_and_the_share_only_grows():
    r = local_ramp(seconds=10, elapsed=0)
    ids = [f"conversation-{i}" for i in range(500)]
    admitted: set[str] = set()
    for step in range(0, 110):
        mono = r.mono_start + step / 10
        now = {t for t in ids if r.held(t, mono) is None}
        assert admitted <= now, "an admitted conversation was held again"
        admitted = now
    assert admitted == set(ids)


def test_every_process_decides_the_same_and_a_new_ramp_picks_another_order():
    one, other = local_ramp(ramp_id="ramp-a"), local_ramp(ramp_id="ramp-a")
    ids = [f"t{i}" for i in range(2000)]
    at_12s = [(one.held(t, one.mono_start + 12), other.held(t, other.mono_start + 12)) for t in ids]
    assert all(a == b for a, b in at_12s)
    first = {t for t in ids if position(b"ramp-a", t) < 0.3}
    second = {t for t in ids if position(b"ramp-b", t) < 0.3}
    assert 0.25 < len(first) / len(ids) < 0.35, "positions are spread evenly"
    assert len(first & second) / len(first) < 0.45, "another ramp admits others first"


def test_a_reads_decision_is_its_conversations_position_under_the_share():
    r = local_ramp(seconds=10, ramp_id="ramp-c")
    for step in (0, 2.5, 5, 7.5, 9.9):
        now = r.share(r.mono_start + step)
        for i in range(300):
            admitted = r.held(f"c{i}", r.mono_start + step) is None
            assert admitted == (position(b"ramp-c", f"c{i}") < now), (step, i)


def test_held_reads_answer_no_context_with_the_share_and_never_call_zep():
    store = FakeStore()
    hooks = events.Hooks()
    seen: list[events.Event] = []
    hooks.subscribe(seen.append)
    guard = Guard(Settings(zep_api_key="x"), store, hooks, FakeView(ramp=local_ramp(seconds=30, elapsed=0)))
    answers = [guard.call(f"t{i}", ok) for i in range(400)]
    held = [meta for value, meta in answers if meta["source"] == "ramp_held"]
    used = [meta for value, meta in answers if meta["source"] == "zep"]
    assert 0.05 < len(used) / 400 < 0.16, "about 10 % admitted at the start"
    assert all(m["used"] is False and m["share"] == pytest.approx(0.1, abs=0.01) for m in held)
    assert [e.reason for e in seen if isinstance(e, events.ReadBlocked)] == ["ramp"] * len(held)
    assert store.calls == [], "no Redis round trip for the decision"


def test_past_its_end_a_ramp_admits_everyone():
    guard = Guard(Settings(zep_api_key="x"), FakeStore(), events.Hooks(),
                  FakeView(ramp=local_ramp(seconds=10, elapsed=11)))
    assert all(guard.call(f"t{i}", lambda: "c")[1]["source"] == "zep" for i in range(200))


@pytest.mark.parametrize(("field", "value"), [
    ("id", ""), ("id", "x" * 65), ("id", 5), ("start", "now"), ("start", float("inf")),
    ("start", 1_796_000_000.0 + 60), ("seconds", 0), ("seconds", 3601), ("seconds", None),
    ("min_percent", -1), ("min_percent", 101), ("aggression", 0.05), ("aggression", 11),
    ("holds", 0), ("holds", 1.5), ("since", "x"), ("reason", "r" * 201), ("previous_reason", 3),
])
def test_a_ramp_record_that_breaks_the_rule_is_no_ramp(field, value):
    data = {**VALID, field: value}
    assert ramp_problem(json.loads(json.dumps(data)), 1_796_000_000.0) is not None
    assert parse_ramp(json.dumps(data), 1_796_000_000.0) is None


def test_a_valid_ramp_record_reads_back():
    r = parse_ramp(json.dumps({**VALID, "holds": 3, "reason": "manual_clear"}), 1_796_000_010.0)
    assert isinstance(r, Ramp) and r.holds == 3 and r.reason == "manual_clear" and r.end == 1_796_000_030.0
    assert r.as_dict(1_796_000_010.0)["share_percent"] == pytest.approx(33.3, abs=0.1)
    assert ramp_problem(["not", "an", "object"], None) is not None


@pytest.mark.parametrize(("var", "raw"), [("MEMORY_RECOVERY_RAMP_SECONDS", "-1"),
                                          ("MEMORY_RECOVERY_RAMP_SECONDS", "3601"),
                                          ("MEMORY_RECOVERY_RAMP_MIN_PERCENT", "101"),
                                          ("MEMORY_RECOVERY_RAMP_MIN_PERCENT", "nan"),
                                          ("MEMORY_RECOVERY_RAMP_AGGRESSION", "0"),
                                          ("MEMORY_RECOVERY_RAMP_AGGRESSION", "11")])
def test_ramp_settings_out_of_range_are_refused_by_name(var, raw):
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: raw})


def test_ramp_settings_default_to_30_s_from_10_percent_and_0_turns_the_ramp_off():
    assert Settings().ramp == {"seconds": 30, "min_percent": 10.0, "aggression": 1.0}
    assert Settings.from_env({"MEMORY_RECOVERY_RAMP_SECONDS": "0"}).ramp is None


def test_a_local_ramp_keeps_the_redis_clocks_elapsed_time():
    r = ramp(seconds=20, elapsed=5)
    local = LocalRamp.at(r, time.time(), time.monotonic())
    assert local.share(time.monotonic()) == pytest.approx(0.25, abs=0.01)


def test_a_pagerduty_receiver_hears_a_ramp_start_as_acknowledge_and_its_end_as_resolve():
    from memguard.ops.notify import payload

    url = "https://events.pagerduty.com/v2/enqueue#routing-key"
    actions = {kind: payload("pagerduty", url, {"kind": kind, "reason": "r", "text": "t", "id": "1"})[1]
               for kind in ("downgrade", "recovering", "restore")}
    assert {k: v["event_action"] for k, v in actions.items()} == {
        "downgrade": "trigger", "recovering": "acknowledge", "restore": "resolve"}
    assert len({v["dedup_key"] for v in actions.values()}) == 1, "one incident"
