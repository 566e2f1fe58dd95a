"""A fault of memguard's own (a bug, an unexpected reply, a broken subscriber) never reaches the
caller of a guarded read: the read runs or keeps its outcome, the meta names the fault, and the
fault is reported as an ``internal`` ``GuardTrouble``. Both the blocking and the asyncio path."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from memguard.domain import events
from memguard.observe import logs

from .fakes import FakeStore, FakeView
from .test_guard_decisions import http_error, make, ok, raising


def internal(seen: list[events.Event]) -> list[tuple[str, str]]:
    return [(e.op, e.detail.split(":")[0]) for e in seen
            if isinstance(e, events.GuardTrouble) and e.kind == "internal"]


class BrokenView:
    @property
    def current(self) -> Any:
        raise RuntimeError("the view is broken")


def unknown_view() -> FakeView:
    view = FakeView()
    view.current = None  # the guard must ask the store
    return view


def call(guard, fn, how: str):
    if how == "sync":
        return guard.call("t1", fn, ("t1",))

    async def afn(thread_id: str) -> Any:
        return fn(thread_id)

    return asyncio.run(guard.acall("t1", afn, ("t1",)))


PATHS = ("sync", "async")


@pytest.mark.parametrize("how", PATHS)
def test_an_unexpected_reply_while_checking_lets_the_read_run_and_names_the_fault(how):
    store = FakeStore(faults={"snapshot": KeyError("mode")})
    guard, _, seen = make(store, unknown_view())
    value, meta = call(guard, ok, how)
    assert value == "context of t1"
    assert meta["used"] is True and meta["source"] == "zep" and meta["guard_error"] == "KeyError"
    assert internal(seen) == [("check", "KeyError")]


@pytest.mark.parametrize("how", PATHS)
def test_a_broken_view_lets_the_read_run(how):
    guard, _, seen = make(view=BrokenView())
    value, meta = call(guard, ok, how)
    assert value == "context of t1" and meta["guard_error"] == "RuntimeError"
    # After the read the broken view is asked again (may a failure count be reset?): counted too.
    assert internal(seen) == [("check", "RuntimeError"), ("success", "RuntimeError")]


@pytest.mark.parametrize("how", PATHS)
def test_a_read_that_runs_unguarded_still_has_its_failure_classified_and_recorded(how):
    store = FakeStore(faults={"snapshot": ValueError("bad reply")})
    guard, store, _ = make(store, unknown_view())
    value, meta = call(guard, raising(http_error(503)), how)
    assert value is None
    assert meta["source"] == "zep_error" and meta["reason"] == "http_5xx"
    assert meta["guard_error"] == "ValueError"
    assert "count" in store.names()  # recorded towards the trigger, as a guarded read's would be


@pytest.mark.parametrize("how", PATHS)
def test_a_fault_recording_a_failure_keeps_the_failure_and_names_the_fault(how):
    guard, _, seen = make(FakeStore(faults={"count": TypeError("unexpected reply")}))
    value, meta = call(guard, raising(httpx.ConnectTimeout("slow")), how)
    assert value is None
    assert meta["source"] == "zep_error" and meta["reason"] == "timeout"
    assert meta["guard_error"] == "TypeError"
    assert internal(seen) == [("failure", "TypeError")]


@pytest.mark.parametrize("how", PATHS)
def test_a_fault_after_a_successful_read_keeps_the_value(how):
    view = unknown_view()  # the success then resets the failure count in the store
    guard, _, seen = make(FakeStore(faults={"reset": AttributeError("no such field")}), view)
    value, meta = call(guard, ok, how)
    assert value == "context of t1" and meta["source"] == "zep" and meta["guard_error"] == "AttributeError"
    assert ("success", "AttributeError") in internal(seen)


@pytest.mark.parametrize("how", PATHS)
def test_the_callers_own_exception_keeps_todays_contract(how):
    guard, store, seen = make()
    value, meta = call(guard, raising(http_error(401)), how)
    assert value is None and meta["reason"] == "auth" and "guard_error" not in meta
    assert store.names() == ["force"] and internal(seen) == []


@pytest.mark.parametrize("how", PATHS)
def test_a_subscriber_that_raises_is_reported_to_the_others_and_the_read_goes_on(how):
    guard, _, seen = make(view=FakeView())

    def broken_metric(event: events.Event) -> None:
        raise ValueError("a broken metric")

    guard.hooks.subscribe(broken_metric)
    value, meta = call(guard, raising(http_error(503)), how)
    assert value is None and meta["reason"] == "http_5xx" and "guard_error" not in meta
    assert ("subscriber", f"ValueError in {broken_metric.__qualname__}") in internal(seen)


def test_an_internal_fault_is_logged_at_error_once_per_op_and_type(caplog):
    caplog.set_level("DEBUG", logger="memguard")
    logs._internal_logged.clear()
    for _ in range(3):
        logs.on_event(events.internal("check", KeyError("x" * 10_000)))
    logs.on_event(events.internal("check", ValueError("other")))
    lines = [r for r in caplog.records if r.getMessage().startswith("memguard_internal_error")]
    assert [r.levelname for r in lines] == ["ERROR", "ERROR"]
    assert "error_type=KeyError" in lines[0].getMessage() and len(lines[0].getMessage()) < 600


def test_an_exception_whose_message_cannot_be_made_is_still_reported():
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    assert events.internal("check", Weird()).detail == "Weird: <message unavailable>"
