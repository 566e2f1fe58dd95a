"""A process's named guards without Redis: which views it keeps, which it lets go, and when it
tells its watcher. The store is real but never called (no read is made here); the watcher is a
stand-in that records the views it is given."""

from __future__ import annotations

from typing import Any

import redis

from memguard.config.settings import Settings
from memguard.domain import events
from memguard.domain.guards import Registry
from memguard.request.meter import Meters
from memguard.request.units import Units
from memguard.request.view import View
from memguard.store.state import State

from .fakes import record


class Watcher:
    def __init__(self) -> None:
        self.given: list[list[Any]] = []
        self.tick = lambda: None

    def set_views(self, views: list[Any]) -> None:
        self.given.append(list(views))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def named(bound: int = 3, idle_s: float = 600.0) -> tuple[Units, Watcher, Clock, list[events.Event]]:
    registry = Registry()
    registry.declare("zep")
    registry.declare("zep-t.*", parent="zep")
    registry.declare("solo.*")
    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    hooks = events.Hooks()
    seen: list[events.Event] = []
    hooks.subscribe(seen.append)
    state = State(redis.Redis(port=1), settings, hooks)
    watcher, clock = Watcher(), Clock()
    guards = Units(registry, settings, state, hooks, Meters(autostart=False), bound=bound, idle_s=idle_s,
                   clock=clock)
    guards.follow(watcher)  # type: ignore[arg-type]
    return guards, watcher, clock, seen


def test_the_least_recently_read_view_goes_past_the_bound():
    guards, watcher, clock, _ = named(bound=3)
    for name in ("solo.a", "solo.b", "solo.c"):
        guards.guard(name)
        clock.now += 1
    guards.guard("solo.a")  # read again: now the most recent
    guards.guard("solo.d")
    assert list(guards.units) == ["solo.c", "solo.a", "solo.d"]
    assert len(watcher.given[-1]) == 1 + 3, "the watcher follows the default's and the views kept, only those"


def test_a_forced_view_that_is_read_is_kept_and_a_parent_outlives_its_children():
    guards, _, clock, seen = named(bound=3)
    guards.guard("zep-t.a")  # builds the parent "zep" first
    forced = guards.guard("solo.forced")
    assert forced is not None
    forced.view.current = View(record(), clock.now + 60, 0.0)  # type: ignore[union-attr]
    guards.guard("solo.x")
    assert list(guards.units) == ["zep", "solo.forced", "solo.x"], "zep-t.a went, not its parent"
    guards.guard("solo.y")
    assert list(guards.units) == ["solo.forced", "solo.x", "solo.y"], "a parent with no child may go"
    clock.now += 601  # forced, but not read for the idle time: it goes with the other idle views
    guards.guard("solo.z")
    assert list(guards.units) == ["solo.z"]
    assert not [e for e in seen if isinstance(e, events.GuardTrouble)]


def test_when_every_view_is_kept_the_oldest_goes_anyway_and_is_told():
    guards, _, clock, seen = named(bound=2)
    for name in ("solo.a", "solo.b"):
        guard = guards.guard(name)
        guard.view.current = View(record(), clock.now + 60, 0.0)  # type: ignore[union-attr]
    guards.guard("solo.c")
    assert list(guards.units) == ["solo.b", "solo.c"], "the oldest, never the one being read"
    assert [e.kind for e in seen if isinstance(e, events.GuardTrouble)] == ["view_bound"]


def test_views_not_read_for_the_idle_time_expire_and_the_watcher_is_told_once():
    guards, watcher, clock, _ = named(bound=10, idle_s=60)
    guards.guard("solo.a")
    guards.guard("solo.b")
    told = len(watcher.given)
    clock.now += 30
    guards.guard("solo.b")
    clock.now += 40
    guards.expire()
    assert list(guards.units) == ["solo.b"] and len(watcher.given) == told + 1
    guards.expire()
    assert len(watcher.given) == told + 1, "nothing expired: the watcher is not told again"


def test_an_undeclared_name_gets_no_view_and_is_told_once():
    guards, watcher, _, seen = named()
    assert guards.guard("other.x") is None and guards.guard("other.x") is None
    assert guards.for_read(["not", "text"])[1] == "<list>"
    assert guards.units == {} and watcher.given == []
    assert [e.detail for e in seen if isinstance(e, events.GuardTrouble)] == ["other.x", "<list>"]
