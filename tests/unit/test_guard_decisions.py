"""The guard's decisions against a fake store: which reads are blocked, counted, forced, and
when Redis is asked at all. Seconds to run; the real-Redis tests hold the same behaviour end
to end."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from memguard.config.settings import Settings
from memguard.domain import events
from memguard.domain.modes import EffectiveMode
from memguard.request.guard import Guard

from .fakes import FakeMeter, FakeStore, FakeView, record

SETTINGS = Settings(zep_api_key="x")


def http_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://zep.test/api/v2/sessions/t/memory")
    response = httpx.Response(status, request=request, headers=headers)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


def raising(exc: BaseException):
    def read(thread_id: str) -> str:
        raise exc

    return read


def ok(thread_id: str) -> str:
    return f"context of {thread_id}"


async def async_ok(thread_id: str) -> str:
    return f"context of {thread_id}"


def make(store: FakeStore | None = None, view: FakeView | None = None, settings: Settings = SETTINGS,
         meter: FakeMeter | None = None) -> tuple[Guard, FakeStore, list[events.Event]]:
    store = store or FakeStore()
    hooks = events.Hooks()
    seen: list[events.Event] = []
    hooks.subscribe(seen.append)
    return Guard(settings, store, hooks, view if view is not None else FakeView(), meter), store, seen


def test_healthy_read_with_a_live_view_asks_the_store_nothing():
    guard, store, _ = make()
    value, meta = guard.call("t1", ok, ("t1",))
    assert value == "context of t1" and meta == {"used": True, "source": "zep"}
    assert store.calls == []


def test_a_forced_view_blocks_the_read_without_calling_zep():
    guard, store, seen = make(view=FakeView(record("auth")))
    value, meta = guard.call("t1", raising(AssertionError("Zep was called")), ("t1",))
    assert value is None and meta["source"] == "write_only_forced" and meta["reason"] == "auth"
    assert store.calls == []
    assert [type(e) for e in seen] == [events.ReadBlocked]


def test_without_a_view_the_store_is_read_and_its_record_blocks():
    view = FakeView()
    view.current = None
    guard, store, _ = make(FakeStore(snapshot_record=record("consecutive_failures")), view)
    _, meta = guard.call("t1", ok, ("t1",))
    assert meta["source"] == "write_only_forced" and store.names() == ["snapshot"]


def test_a_record_past_its_lapse_time_is_ended_and_the_read_goes_on():
    view = FakeView()
    view.current = None
    guard, store, _ = make(FakeStore(snapshot_record=record(left_s=-120, lapse_in_s=-60)), view)
    value, _ = guard.call("t1", ok, ("t1",))
    assert value == "context of t1"
    # Without a view the guard cannot tell whether a failure count exists: the success resets it.
    assert store.names() == ["snapshot", "lapse", "reset"]


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_forces_at_once_with_the_configured_hold(status):
    guard, store, _ = make()
    value, meta = guard.call("t1", raising(http_error(status)), ("t1",))
    assert value is None and meta["reason"] == "auth" and meta["status"] == status
    assert store.calls == [("force", "auth", SETTINGS.hold_seconds, True, 0)]


def test_auth_quorum_is_passed_to_the_store_only_when_asked():
    settings = dataclasses.replace(SETTINGS, quorum_hosts=3, quorum_auth=True)
    guard, store, _ = make(settings=settings)
    guard.call("t1", raising(http_error(401)), ("t1",))
    assert store.calls == [("force", "auth", settings.hold_seconds, True, 3)]


@pytest.mark.parametrize("exc, reason", [
    (http_error(503), "http_5xx"),
    (http_error(408), "timeout"),
    (httpx.ReadTimeout("slow"), "timeout"),
    (httpx.ConnectError("refused"), "connection"),
])
def test_timeouts_5xx_and_refusals_are_counted_fleet_wide(exc, reason):
    guard, store, seen = make(FakeStore(count=2))
    _, meta = guard.call("t1", raising(exc), ("t1",))
    assert meta["reason"] == reason and store.names() == ["count"]
    failure = next(e for e in seen if isinstance(e, events.FailureRecorded))
    assert failure.fail_count == 2 and failure.action == "count"


@pytest.mark.parametrize("exc, reason", [
    (http_error(404), "http_4xx"), (http_error(429), "rate_limited"), (ValueError("bad json"), "bad_payload"),
    (RuntimeError("?"), "other")])
def test_other_failures_are_metrics_only(exc, reason):
    guard, store, seen = make()
    _, meta = guard.call("t1", raising(exc), ("t1",))
    assert meta["reason"] == reason and store.calls == []
    assert [e.action for e in seen if isinstance(e, events.FailureRecorded)] == ["ignore"]


def test_429_retry_after_forces_for_that_long_within_the_cap():
    guard, store, _ = make()
    guard.call("t1", raising(http_error(429, {"Retry-After": "120"})), ("t1",))
    guard.call("t1", raising(http_error(429, {"Retry-After": "999999"})), ("t1",))
    assert [c[2] for c in store.calls] == [120, SETTINGS.hold_cap_seconds]
    assert {c[1] for c in store.calls} == {"rate_limited"}


def test_a_read_over_its_budget_returns_its_value_and_counts_a_timeout():
    guard, store, seen = make()

    def slow(thread_id: str) -> str:
        import time

        time.sleep(0.03)
        return "late"

    value, meta = guard.call("t1", slow, ("t1",), budget_s=0.01)
    assert value == "late" and meta["used"] is True and meta["overran_ms"] >= 10
    assert store.names() == ["count"]
    assert [e.reason for e in seen if isinstance(e, events.FailureRecorded)] == ["timeout"]


def test_success_resets_the_count_only_while_the_view_says_there_may_be_one():
    guard, store, _ = make(view=FakeView(failures_for_s=30))
    guard.call("t1", ok, ("t1",))
    assert store.names() == ["reset"]
    guard, store, _ = make(view=FakeView(failures_for_s=0))
    guard.call("t1", ok, ("t1",))
    assert store.calls == []


def test_redis_down_fails_open_and_backs_off_for_a_second():
    view = FakeView()
    view.current = None
    guard, store, seen = make(FakeStore(down=True), view)
    for _ in range(5):
        value, _ = guard.call("t1", ok, ("t1",))
        assert value == "context of t1"
    assert store.names() == ["snapshot"]  # one attempt, then the back-off
    assert [e.kind for e in seen if isinstance(e, events.GuardTrouble)] == ["redis_error"]
    guard.call("t1", raising(http_error(503)), ("t1",))
    assert store.names() == ["snapshot"]  # nor is a failure counted during the back-off


def test_every_read_that_skips_the_guard_is_counted_unguarded_and_none_that_was_guarded(monkeypatch):
    from memguard.request import guard as guard_module

    monkeypatch.setattr(guard_module, "UNGUARDED_EVERY_S", 0.0)  # each read told at once
    view = FakeView()
    view.current = None
    guard, _, seen = make(FakeStore(down=True), view)
    for _ in range(3):  # the first asks Redis, the next two are in the back-off: all unguarded
        guard.call("t1", ok, ("t1",))
    asyncio.run(guard.acall("t1", async_ok, ("t1",)))
    broken, _, seen_broken = make(FakeStore(faults={"snapshot": KeyError("bug")}), view)
    broken.call("t1", ok, ("t1",))  # memguard's own check failed: unguarded too
    healthy, _, seen_healthy = make(FakeStore(), view)  # Redis answers: guarded
    healthy.call("t1", ok, ("t1",))
    live, _, seen_live = make()  # the view answers: guarded
    live.call("t1", ok, ("t1",))
    count = lambda evs: sum(e.reads for e in evs if isinstance(e, events.ReadUnguarded))  # noqa: E731
    assert (count(seen), count(seen_broken), count(seen_healthy), count(seen_live)) == (4, 1, 0, 0)


def test_an_outages_unguarded_reads_are_told_in_one_event_a_second_and_none_is_lost():
    view = FakeView()
    view.current = None
    guard, _, seen = make(FakeStore(down=True), view)
    for _ in range(50):
        guard.call("t1", ok, ("t1",))
    told = [e.reads for e in seen if isinstance(e, events.ReadUnguarded)]
    assert told == [1], "the first at once, the rest batched"
    guard.view = FakeView()  # Redis is back: the next guarded read tells the rest
    guard.call("t1", ok, ("t1",))
    told = [e.reads for e in seen if isinstance(e, events.ReadUnguarded)]
    assert told == [1, 49]


def test_failure_rate_policy_meters_failures_instead_of_counting():
    meter = FakeMeter()
    guard, store, _ = make(settings=dataclasses.replace(SETTINGS, failure_rate_threshold=0.5), meter=meter)
    guard.call("t1", raising(http_error(503)), ("t1",))
    guard.call("t1", ok, ("t1",))
    assert store.calls == []
    assert [failed for _, failed in meter.reads] == [True, False]


def test_reads_off_by_flag_never_call_zep():
    guard, store, _ = make(FakeStore(base=EffectiveMode.WRITE_ONLY))
    value, meta = guard.call("t1", raising(AssertionError("Zep was called")), ("t1",))
    assert value is None and meta == {"used": False, "source": "read_disabled", "mode": "write_only"}
    assert store.calls == []


def test_async_reads_take_the_same_decisions():
    guard, store, _ = make()

    async def failing(thread_id: str) -> str:
        raise http_error(401)

    async def fine(thread_id: str) -> str:
        return "ok"

    assert asyncio.run(guard.acall("t1", fine, ("t1",)))[0] == "ok"
    _, meta = asyncio.run(guard.acall("t1", failing, ("t1",)))
    assert meta["reason"] == "auth" and store.calls == [("force", "auth", SETTINGS.hold_seconds, True, 0)]


class _View:
    """What the meter reads of a watcher: whether it is live, and when it heard "hot"."""

    def __init__(self) -> None:
        self.current: object | None = object()
        self.told: dict[str, float] = {}


def _meter(view=None, **settings):
    from memguard.config.settings import Settings
    from memguard.domain.events import Hooks
    from memguard.request.meter import ReadMeter

    return ReadMeter(None, Settings(**settings), Hooks(), view)  # type: ignore[arg-type]


BOTH = {"failure_rate_threshold": 0.5, "failure_rate_window_seconds": 60, "latency_threshold_ms": 300,
        "latency_window_seconds": 30}


def test_a_healthy_meter_sends_nothing_until_the_fleet_is_told_of_bad_reads():
    import time

    view = _View()
    meter = _meter(view, **BOTH)
    assert meter.healthy_flush_s == 5.0  # a slot of the shorter window (30 s / 6)
    now = time.monotonic()
    for _ in range(50):
        meter.record(0.01, failed=False)
    assert not meter.due(now + 1) and not meter.due(now + 25), "healthy counts are kept, not sent"
    view.told = {"elsewhere": now + 26}
    assert not meter.due(now + 26.5), "only this process's windows count"
    view.told = {"outcomes": now + 26}
    assert meter.due(now + 26.5), "told: the kept counts go at once"
    meter._flushed_at = now + 26.5  # as a flush does
    meter.record(0.01, failed=False)
    assert not meter.due(now + 27) and meter.due(now + 31.6), "then once a slot while the window is hot"
    view.current, view.told = None, {}
    meter._flushed_at = now - 5.1
    assert meter.due(now), "a view that cannot hear: once a slot, as if told"


def test_a_failure_or_a_slow_read_is_sent_at_once():
    import time

    meter = _meter(_View(), **BOTH)
    meter.record(0.01, failed=True)
    assert meter.due(time.monotonic())
    slow = _meter(_View(), latency_threshold_ms=300)
    slow.record(0.5, failed=False)
    assert slow.due(time.monotonic())
    capped = _meter(failure_rate_threshold=0.5, failure_rate_window_seconds=600)
    assert capped.healthy_flush_s == 10.0


def test_kept_counts_go_to_the_slots_of_their_own_time_and_old_ones_are_dropped():
    import time

    meter = _meter(_View(), **BOTH)
    now = time.monotonic()
    # Wherever now falls in a 5 s bucket, each age stays in a 10 s outcome slot of its own.
    meter._buckets = {int((now - age) // meter.bucket_s): [10, 1, 2] for age in (1, 15, 24, 45, 70)}
    outcomes, latency = (next(w for w in meter.windows if w.name == n) for n in ("outcomes", "latency"))
    ages = sorted(c[0] for c in meter.counts(outcomes, meter._buckets, now))
    assert len(ages) == 4 and ages[0] < 5_000 and 40_000 < ages[-1] < 50_000, ages  # 70 s: past the window
    assert all(reads == 10 and bad == 2 for _, reads, bad in meter.counts(outcomes, meter._buckets, now))
    assert [bad for _, _, bad in meter.counts(latency, meter._buckets, now)] == [1, 1, 1]  # within 30 s
    assert not meter.due(now + 200) and meter._buckets == {}, "past the longest window: dropped"


def _watcher():
    """A watcher whose steps a test drives itself (its client never connects)."""
    import redis

    from memguard.request.watch import Watcher
    from memguard.store.state import State

    return Watcher(State(redis.Redis(port=1), SETTINGS, events.Hooks()), 5.0, events.Hooks())


def test_of_a_live_fleet_about_six_views_ask_for_an_explanation_at_once_and_a_lapsed_view_does():
    """A hand write is explained by a few views for the whole fleet: each asks at once with a
    chance of EXPLAIN_ASKERS in the fleet's size; the rest wait for the explanation first."""
    import math

    from memguard.request.watch import View

    watcher = _watcher().views[0]
    watcher.current, watcher.fleet = View(None, math.inf, 0.0), 10_000
    waits = [watcher.explain_wait() for _ in range(100_000)]  # ten fleets' worth: ~60 at once
    assert 25 <= sum(w == 0 for w in waits) <= 120, "about six of each 10,000 (the README's figure)"
    assert all(w == 0 or 0.25 <= w <= 0.5 for w in waits), "the rest wait 0.25-0.5 s (docs/store.md)"
    watcher.fleet = 6  # a fleet this small: every view asks
    assert {watcher.explain_wait() for _ in range(100)} == {0.0}
    watcher.fleet, watcher.current = 10_000, None  # lapsed: it serves no read, so it asks now
    assert watcher.explain_wait() == 0.0


def test_a_view_whose_re_read_covers_a_hand_write_does_not_ask_for_its_explanation(monkeypatch):
    """A slow re-read that lands while the view waits for another view's explanation has read
    the new values already: the view must not ask a second time (its ask would be wasted)."""
    import time

    from memguard.request import view, watch
    from memguard.store.steps import ReadSnapshot, Script

    monkeypatch.setattr(view, "EXPLAIN_WAIT_S", (0.05, 0.05))
    monkeypatch.setattr(watch, "RESYNC_S", (0.01, 0.01))
    watcher = _watcher()
    snapshot = [[None, None, None, "5", None, None], -2, -2, [1_796_000_000, 0],
                [("mem:mode:changes", 10**9)], "none", "none", "none", "none", "none"]
    steps = watcher.follow_steps()
    assert isinstance(next(steps), ReadSnapshot)
    step = steps.send(snapshot)  # a fleet this large: this view waits rather than asking at once
    assert isinstance(step, watch.Listen) and watcher.views[0].current is not None
    step = steps.send(["message", watch.INVALIDATE_CHANNEL, [watcher.state.keys.forced]])
    assert isinstance(step, watch.Listen), "waiting for an explanation"
    time.sleep(0.015)
    step = steps.send(watch.QUIET)  # the slow re-read is due now, before the explanation's wait ends
    assert isinstance(step, ReadSnapshot)
    monkeypatch.setattr(watch, "RESYNC_S", (100.0, 100.0))
    step = steps.send(snapshot)
    time.sleep(0.05)  # past the explanation's wait
    for _ in range(3):
        assert not isinstance(step, Script), f"asked after the re-read covered the change: {step}"
        step = steps.send(watch.QUIET)
