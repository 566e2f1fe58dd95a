"""Any value, of any Redis type, at any memguard key (a hand ``redis-cli`` write, an old tool, a bad
day): reads fail open, every transition, read, status and operator action works over it within a
second, the next change repairs it, and the scripts and the Python code judge a record by one
rule. Property-based (Hypothesis), against the real redis-server and the real Zep client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memguard import flags, service
from memguard.domain.chaos import chaos_problem, parse_chaos
from memguard.domain.events import origin
from memguard.domain.ramp import parse_ramp, ramp_problem
from memguard.domain.record import Status, parse_record, record_problem
from memguard.drill.localstack import wait_for
from memguard.integrations.cli_text import json_safe
from memguard.ops import audit, notify
from memguard.store.keys import KEY_TYPES, Keys

# The process's watcher thread draws its heartbeat jitter from `random` while Hypothesis draws
# examples; Hypothesis mistakes that for a strategy using `random`.
# Its repr of these (large, composed) strategies is long, and only a note.
pytestmark = [pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
              pytest.mark.filterwarnings("ignore:Generating overly large repr")]

KEYS = Keys()
BY = {"via": "test"}
NOW = time.time()  # the Redis clock on this machine; every bound below keeps minutes of margin

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=6)
numbers = st.one_of(st.floats(NOW - 10_000, NOW + 80_000), st.integers(0, 2**62))
FIELDS = {
    "mode": st.one_of(st.just("write_only"), json_values),
    "until": st.one_of(st.floats(NOW - 10_000, NOW + 80_000), st.floats(NOW + 90_000, NOW + 1e9),
                       json_values),
    "reason": st.one_of(st.text(max_size=80), st.text(min_size=201, max_size=220), json_values),
    "holds": st.one_of(st.integers(-2, 5), st.floats(0, 5), json_values),
    "by": st.one_of(st.dictionaries(st.text(max_size=5), scalars, max_size=2), json_values),
    **{name: st.one_of(numbers, json_values) for name in ("forced_at", "lapse_at", "since", "hold_seconds")},
    "id": st.one_of(st.text(max_size=10), json_values),
}
records = st.fixed_dictionaries({}, optional=FIELDS)
valid_records = st.fixed_dictionaries(
    {"mode": st.just("write_only"), "until": st.floats(NOW - 10_000, NOW + 80_000)},
    optional={"reason": st.text(max_size=50), "holds": st.integers(1, 9), "forced_at": numbers,
              "by": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)})
# A valid record with exactly one field changed to anything: where the two rules could part.
one_field_off = st.tuples(valid_records, st.sampled_from(sorted(FIELDS)).flatmap(
    lambda name: FIELDS[name].map(lambda value: (name, value)))).map(lambda r: {**r[0], r[1][0]: r[1][1]})
# Ramp records: running ones started in the last 100 s and last at least 3000 s, complete ones
# ended over 1000 s ago, so no ramp ends while a test runs.
RAMP_FIELDS = {
    "id": st.one_of(st.text(min_size=1, max_size=64), st.text(min_size=65, max_size=70), json_values),
    "start": st.one_of(st.floats(NOW - 100, NOW - 1), st.floats(NOW - 10_000, NOW - 5_000),
                       st.floats(NOW + 100, NOW + 1e6), json_values),
    "seconds": st.one_of(st.floats(3_000, 3_600), st.floats(3_601, 1e9), st.just(0), json_values),
    "min_percent": st.one_of(st.floats(0, 100), st.floats(100.5, 1e6), st.floats(-1e6, -0.5), json_values),
    "aggression": st.one_of(st.floats(0.1, 10), st.floats(10.5, 1e6), st.floats(-5, 0.09), json_values),
    "holds": st.one_of(st.integers(-2, 5), st.floats(0, 5), json_values),
    "since": st.one_of(numbers, json_values),
    "reason": st.one_of(st.text(max_size=80), st.text(min_size=201, max_size=220), json_values),
    "previous_reason": st.one_of(st.text(max_size=80), json_values),
}
ramps = st.fixed_dictionaries({}, optional=RAMP_FIELDS)
valid_ramps = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=20), "start": st.floats(NOW - 100, NOW - 1),
     "seconds": st.floats(3_000, 3_600), "min_percent": st.floats(0, 100), "aggression": st.floats(0.1, 10)},
    optional={"holds": st.integers(1, 9), "reason": st.text(max_size=50), "since": numbers})
one_ramp_field_off = st.tuples(valid_ramps, st.sampled_from(sorted(RAMP_FIELDS)).flatmap(
    lambda name: RAMP_FIELDS[name].map(lambda value: (name, value)))).map(
    lambda r: {**r[0], r[1][0]: r[1][1]})
# Experiments (game days): running ones started in the last 100 s and last at least 3000 s, ended
# ones ended over 1000 s ago.
CHAOS_FIELDS = {
    "id": RAMP_FIELDS["id"],
    "fault": st.one_of(st.sampled_from(["timeout", "auth", "error:503", "error:599", "latency:1ms",
                                        "latency:60000ms", "latency:60001ms", "error:404", "TIMEOUT", " auth",
                                        "latency:0300ms"]), json_values),
    "percent": st.one_of(st.floats(0.01, 100), st.floats(100.01, 1e6), st.floats(-1e6, 0), json_values),
    "start": RAMP_FIELDS["start"],
    "seconds": st.one_of(st.floats(3_000, 3_600), st.floats(3_601, 1e9), st.floats(0, 4.99), json_values),
    "trip": st.one_of(st.booleans(), json_values),
    "by": st.one_of(st.dictionaries(st.text(max_size=5), scalars, max_size=2), json_values),
}
chaos_records = st.fixed_dictionaries({}, optional=CHAOS_FIELDS)
valid_chaos = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=20), "fault": st.sampled_from(["timeout", "auth", "error:503",
                                                                      "latency:300ms"]),
     "percent": st.floats(0.01, 100), "start": st.floats(NOW - 100, NOW - 1),
     "seconds": st.floats(3_000, 3_600)},
    optional={"trip": st.booleans(),
              "by": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)})
one_chaos_field_off = st.tuples(valid_chaos, st.sampled_from(sorted(CHAOS_FIELDS)).flatmap(
    lambda name: CHAOS_FIELDS[name].map(lambda value: (name, value)))).map(
    lambda r: {**r[0], r[1][0]: r[1][1]})
strings = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["0", "1", "-5", "99999999999999999999", "NaN", "1e400", "xyz", "0-0", "1-1", "{}"]),
    json_values.map(json.dumps),
    records.map(json.dumps),
    st.one_of(ramps, valid_ramps).map(json.dumps),
    st.one_of(chaos_records, valid_chaos).map(json.dumps),
)
texts = st.text(min_size=1, max_size=8)
redis_values = st.one_of(
    st.none(),
    st.tuples(st.just("string"), strings),
    st.tuples(st.just("hash"), st.dictionaries(texts, st.text(max_size=8), min_size=1, max_size=3)),
    st.tuples(st.just("list"), st.lists(st.text(max_size=8), min_size=1, max_size=3)),
    st.tuples(st.just("set"), st.sets(texts, min_size=1, max_size=3)),
    st.tuples(st.just("zset"), st.dictionaries(texts, st.floats(-1e6, 1e6), min_size=1, max_size=3)),
    st.tuples(st.just("stream"), st.dictionaries(texts, st.text(max_size=8), min_size=1, max_size=3)),
)
# The notify lock is taken only by a webhook delivery, the heartbeat lock only by a quiet
# watcher, the explain lock only by an explanation: their repairs have their own tests below.
# The index of hold ends is only named guards' (tests/test_named_guards.py holds it to the same).
OWN_TESTS = ("notify_lock", "heartbeat_lock", "explain_lock", "holds")
USED_KEYS = sorted(k for k in KEY_TYPES if k not in OWN_TESTS)


def write(client: Any, key: str, value: tuple[str, Any] | None) -> None:
    if value is None:
        return
    kind, data = value
    if kind == "string":
        client.set(key, data)
    elif kind == "hash":
        client.hset(key, mapping=data)
    elif kind == "list":
        client.rpush(key, *data)
    elif kind == "set":
        client.sadd(key, *data)
    elif kind == "zset":
        client.zadd(key, data)
    else:
        client.xadd(key, data)


def quick(action: Callable[[], Any], what: str) -> Any:
    """Run ``action``: it must return (no exception) within a second."""
    started = time.monotonic()
    result = action()
    assert time.monotonic() - started < 1.0, f"{what} took {time.monotonic() - started:.2f}s"
    return result


@pytest.fixture
def process_for_properties(configure, stub):
    return configure(read_timeout_ms=200, window_seconds=60, chaos="allow")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(values=st.fixed_dictionaries({field: redis_values for field in USED_KEYS}))
def test_any_value_at_any_key_fails_open_and_is_repaired_by_the_next_change(process_for_properties, stub,
                                                                             redis_db, values):
    rt = process_for_properties
    stub.set_fault("ok")
    setup = redis_db.pipeline(transaction=True)  # at once: the live view reacts to each write
    setup.flushall()
    for field, value in values.items():
        write(setup, getattr(KEYS, field), value)
    setup.execute()
    by = origin("test")

    # Reads and the read-only tools work whatever is there.
    for read in (lambda: service.fetch_thread_context("t"),
                 lambda: asyncio.run(service.afetch_thread_context("t"))):
        _, meta = quick(read, "a read")
        assert meta["source"] in ("zep", "write_only_forced", "ramp_held", "chaos"), meta
    status = quick(lambda: rt.ops.status(by), "status")
    json.dumps(json_safe(status), allow_nan=False)
    if values["forced"] is not None and status["forced"] is False:
        assert KEYS.forced in status.get("state_problems", ""), "a value that is no record is named"
    if values["ramp"] is not None and "ramp" not in status and not status["forced"]:
        ramp_value = values["ramp"][1] if values["ramp"][0] == "string" else None
        parsed = parse_ramp(ramp_value) if ramp_value is not None else None
        complete = parsed is not None and parsed.end < time.time()
        assert complete or KEYS.ramp in status.get("state_problems", ""), "a value that is no ramp is named"
    quick(lambda: audit.history(redis_db, KEYS.audit, 50), "history")
    quick(lambda: notify.claim(rt.state, "episode"), "the notification claim")
    quick(lambda: rt.state.record_latencies([(0, 3, 0)], by), "the latency window")
    quick(lambda: rt.state.record_outcomes([(0, 3, 0)], by), "the outcome window")
    quick(lambda: rt.ops.probe(by, probe=lambda timeout_s: None, scheduled=True), "a probe")
    quick(lambda: rt.state.lapse(by), "the lapse of an unprobed hold")
    quick(rt.state.reset_failures, "a success's reset")
    assert quick(flags.increment_consecutive_failures, "counting a failure") >= 1

    # Operators are never locked out: force forces and clear clears, whatever was there.
    forced = quick(lambda: rt.ops.force(by, reason="manual_ops", ttl_seconds=60, replace=True), "force")
    assert forced["forced"] is True and flags.get_forced_mode() is not None
    assert not redis_db.exists(KEYS.chaos), "an operator's force ends any experiment, or removes what is none"
    assert service.fetch_thread_context("t")[1]["source"] == "write_only_forced"
    quick(lambda: rt.ops.clear(by), "clear")
    assert flags.get_forced_mode() is None
    assert service.fetch_thread_context("t")[1]["source"] == "zep"

    # Automatic forcing works again: three failed reads force the fleet.
    stub.set_fault("503")
    for _ in range(3):
        quick(lambda: service.fetch_thread_context("t"), "a failing read")
    assert (flags.get_forced_mode() or {}).get("reason") == "consecutive_failures"
    quick(lambda: rt.ops.clear(by), "clear")

    # No key is left unusable: each holds memguard's type (or nothing), and status sees no problem.
    for field in USED_KEYS:
        assert redis_db.type(getattr(KEYS, field)) in ("none", KEY_TYPES[field]), field
    assert "state_problems" not in rt.ops.status(by)


def _lone_surrogate(value: object) -> bool:
    """The value's text holds a lone surrogate (which memguard refuses); a pair is a character."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=st.one_of(records, valid_records, one_field_off))
@example(record={"mode": "write_only", "until": 4e9, "reason": "manual_ops"})  # ends in 2096: no record
@example(record={"mode": "write_only", "until": NOW + 600, "reason": "\ud800"})  # cjson refuses the escape
def test_the_scripts_and_python_judge_a_record_by_one_rule(process_for_properties, redis_db, record):
    """An automatic trigger keeps a valid record (held) and replaces anything else (forced): the
    Lua verdict. ``record_problem`` is the Python one. They agree on every record."""
    rt = process_for_properties
    redis_db.set(KEYS.forced, json.dumps(record))
    # Python's verdict as memguard reads a record: parsed from the same JSON text.
    python_valid = parse_record(json.dumps(record), time.time()) is not None
    assert python_valid == (record_problem(json.loads(json.dumps(record)), time.time()) is None
                            and not _lone_surrogate(record))
    t = rt.state.force("auth", 300, BY, auto=True)
    assert (t.status is Status.HELD) == python_valid, (record, t.status)
    assert python_valid or t.status is Status.FORCED


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ramp=st.one_of(ramps, valid_ramps, one_ramp_field_off))
@example(ramp={"id": "r", "start": NOW + 60, "seconds": 3_600, "min_percent": 10, "aggression": 1})
@example(ramp={"id": "\ud800", "start": NOW - 10, "seconds": 3_600, "min_percent": 10, "aggression": 1})
def test_the_scripts_and_python_judge_a_ramp_by_one_rule(process_for_properties, redis_db, ramp):
    """A trigger during a running ramp is its failure (reason ramp_failed): the Lua verdict that
    the ramp is valid and running. ``ramp_problem`` and its end are the Python one. They agree,
    and the reads agree with them: a ramp that is no ramp holds no read back."""
    rt = process_for_properties
    redis_db.delete(KEYS.forced)  # the last example's force
    wait_for(lambda: (view := rt.view.current) is not None and view.record is None, 2, "the view")
    redis_db.set(KEYS.ramp, json.dumps(ramp))
    parsed = parse_ramp(json.dumps(ramp), time.time())
    running = parsed is not None and time.time() < parsed.end
    assert (parsed is not None) == (ramp_problem(json.loads(json.dumps(ramp)), time.time()) is None
                                    and not _lone_surrogate(ramp))
    if not running:
        sources = {service.fetch_thread_context(f"t{i}")[1]["source"] for i in range(20)}
        assert sources == {"zep"}, (ramp, sources)
    t = rt.state.force("auth", 300, BY, auto=True)
    assert t.record is not None and (t.record.reason == "ramp_failed") == running, (ramp, t.record)
    assert not redis_db.exists(KEYS.ramp), "the new hold ends the ramp"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chaos=st.one_of(chaos_records, valid_chaos, one_chaos_field_off))
@example(chaos={"id": "e", "fault": "timeout", "percent": 10, "start": NOW + 60, "seconds": 600})
@example(chaos={"id": "\ud800", "fault": "timeout", "percent": 10, "start": NOW - 10, "seconds": 3_600})
def test_the_scripts_and_python_judge_an_experiment_by_one_rule(process_for_properties, redis_db, chaos):
    """The prober's tick keeps a valid running experiment and removes anything else (an
    experiment past its end, or no experiment): the Lua verdict. ``chaos_problem`` and its end
    are the Python one. They agree, and the reads agree with them."""
    rt = process_for_properties
    redis_db.delete(KEYS.forced, KEYS.chaos)
    wait_for(lambda: (view := rt.view.current) is not None and view.chaos is None, 2, "the view")
    redis_db.set(KEYS.chaos, json.dumps(chaos))
    parsed = parse_chaos(json.dumps(chaos), time.time())
    assert (parsed is not None) == (chaos_problem(json.loads(json.dumps(chaos)), time.time()) is None
                                    and not _lone_surrogate(chaos))
    running = parsed is not None and time.time() < parsed.end
    if not running:
        sources = {service.fetch_thread_context(f"t{i}")[1]["source"] for i in range(20)}
        assert sources == {"zep"}, (chaos, sources)
    rt.ops.probe(BY, probe=lambda timeout_s: None, scheduled=True)
    assert bool(redis_db.exists(KEYS.chaos)) == running, (chaos, running)


def test_the_heartbeat_works_over_any_value_at_its_lock(configure, redis_db):
    rt = configure()
    redis_db.hset(KEYS.heartbeat_lock, "x", "1")
    args = {"channel": "mem:mode:changes", "ttl_ms": 3500, "clock": "mem:mode:clock"}
    assert rt.state.call("heartbeat", **args)["sent"] is True
    assert redis_db.type(KEYS.heartbeat_lock) == "string" and 0 < redis_db.pttl(KEYS.heartbeat_lock) <= 3500
    again = rt.state.call("heartbeat", **args)
    assert again["sent"] is False, "one heartbeat per round"


def test_an_explanation_works_over_any_value_at_its_lock_and_names_a_wrong_typed_record(configure, redis_db):
    rt = configure()
    rt.watcher.stop()  # this test's calls are the only ones

    def explain() -> dict:
        return rt.state.call("explain", channel="mem:mode:changes", ttl_ms=150)

    for junk in (lambda: redis_db.hset(KEYS.explain_lock, "x", "1"),
                 lambda: redis_db.set(KEYS.explain_lock, "x"),  # never expires
                 lambda: redis_db.xadd(KEYS.explain_lock, {"x": "1"})):
        redis_db.delete(KEYS.explain_lock)
        junk()
        reply = explain()
        assert reply["sent"] is True and rt.state.explanation(reply["snapshot"]) is not None
        assert redis_db.type(KEYS.explain_lock) == "string" and 0 < redis_db.pttl(KEYS.explain_lock) <= 150
        assert explain()["sent"] is False, "the same values are published once"
    redis_db.hset(KEYS.forced, "x", "1")
    reply = explain()
    snap = rt.state.explanation(reply["snapshot"])
    assert reply["sent"] is True and snap is not None and snap.record is None
    assert f"{KEYS.forced} holds a hash" in (snap.corrupt or ""), snap
    assert redis_db.type(KEYS.forced) == "hash", "an explanation reads: a transition repairs"


def test_the_same_values_are_explained_again_after_a_transition_came_between(configure, redis_db):
    """An operator's hand DEL, a trip, the same hand DEL again: the fleet last heard the trip's
    notice, so the second DEL's values must be published though they match the first's."""
    rt = configure()
    rt.watcher.stop()  # this test's calls are the only ones

    def explain() -> dict:
        return rt.state.call("explain", channel="mem:mode:changes", ttl_ms=60_000)

    redis_db.delete(KEYS.forced)
    first = explain()
    assert first["sent"] is True
    again = explain()
    assert again["sent"] is False, "the same values, nothing between: published once"
    assert rt.state.explanation(again["snapshot"]).version == rt.state.explanation(first["snapshot"]).version
    rt.state.force("test", 60, {"via": "test"}, auto=False)
    redis_db.delete(KEYS.forced)
    after = explain()
    assert after["sent"] is True, "a transition came between: the fleet holds its values"
    assert rt.state.explanation(after["snapshot"]).version > rt.state.explanation(first["snapshot"]).version


def test_a_notify_lock_memguard_did_not_take_is_replaced(configure, redis_db, recorded):
    from memguard.config.settings import Settings
    from memguard.domain import events

    rt = configure()
    redis_db.hset(KEYS.notify_lock, "x", "1")  # another type: never acquirable, never expiring
    notifier = notify.Notifier(rt.state, Settings(redis_url=rt.settings.redis_url,
                                                  webhook_urls=(("slack", "http://127.0.0.1:9/x"),)),
                               rt.state.hooks)
    lock = rt.state.client.lock(KEYS.notify_lock, timeout=5)
    assert not lock.acquire(blocking=False)
    assert notifier._repair_lock(lock), "replaced and taken"
    assert redis_db.type(KEYS.notify_lock) == "string" and redis_db.pttl(KEYS.notify_lock) > 0
    assert any(isinstance(e, events.GuardTrouble) and e.op == "notify" for e in recorded)
    other = rt.state.client.lock(KEYS.notify_lock, timeout=5)
    assert not notifier._repair_lock(other), "a live lock of memguard's is left alone"
