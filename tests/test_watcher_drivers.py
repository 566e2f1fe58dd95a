"""The watcher's protocol through both of its drivers, the thread's and the asyncio one, on a real
Redis: views joining by ``set_views`` are followed after one planned reconnect, the view already
followed keeps its state through it, and the connection then stays (no reconnect per follow)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from memguard.domain import events
from memguard.drill import awatch
from memguard.drill.localstack import wait_for
from memguard.request.view import GuardView
from memguard.request.watch import REPLAN_EVERY_S, Watcher
from memguard.store.keys import Keys
from memguard.store.state import State

from .conftest import make_settings


def thread_driver(watcher: Watcher) -> Iterator[None]:
    watcher.start()
    yield
    watcher.stop()


def asyncio_driver(watcher: Watcher) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    task = loop.create_task(awatch.run(watcher))

    def drive() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)
        loop.close()

    runner = threading.Thread(target=drive, daemon=True)
    runner.start()
    yield
    watcher._stop.set()
    loop.call_soon_threadsafe(task.cancel)
    runner.join(5)


def view_connections(admin: redis.Redis) -> list[int]:
    return sorted(int(c["id"]) for c in admin.client_list() if c["name"].startswith("memguard:view:"))


@pytest.mark.parametrize("drive", [thread_driver, asyncio_driver], ids=["thread", "asyncio"])
def test_set_views_follows_new_views_after_one_planned_reconnect(drive, redis_db, redis_server, stub):
    settings = make_settings(redis_server.url, stub)
    hooks = events.Hooks()
    grace = settings.probe_grace_seconds
    state = State(redis.Redis.from_url(redis_server.url, decode_responses=True), settings, hooks)
    default = GuardView(state, grace, hooks)
    state.on_change = default.apply_notice
    named_hooks = events.GuardHooks(hooks, "vectordb", "vectordb")
    named_state = State(state.client, settings, named_hooks,  # type: ignore[arg-type]
                        keys=Keys.for_guard("vectordb", state.keys.prefix), shared=state, guard="vectordb")
    named = GuardView(named_state, grace, named_hooks)  # type: ignore[arg-type]
    named_state.on_change = named.apply_notice
    watcher = Watcher(state, grace, hooks, views=[default])
    driving = drive(watcher)
    next(driving)
    try:
        wait_for(lambda: default.current is not None, 5, "the default view")
        first = view_connections(redis_db)
        assert len(first) == 1
        lapsed = 0
        watcher.set_views([default, named])
        deadline = time.monotonic() + 5
        while named.current is None:  # the default view is sampled all through the replan
            assert time.monotonic() < deadline, "the named view was never followed"
            lapsed += default.current is None
            time.sleep(0.0005)
        assert lapsed == 0, "a planned reconnect keeps the views that stay"
        second = view_connections(redis_db)
        assert len(second) == 1 and second != first, "one planned reconnect"
        # The connection stays: several replan intervals pass without another reconnect.
        quiet_until = time.monotonic() + 3 * REPLAN_EVERY_S
        while time.monotonic() < quiet_until:
            assert view_connections(redis_db) == second, "reconnected again"
            time.sleep(0.05)
        named_state.force("manual_ops", 60, {"via": "test"}, auto=False)
        wait_for(lambda: (v := named.current) is not None and v.record is not None, 2,
                 "the named guard's force seen on the new connection")
        assert default.current is not None and default.current.record is None
    finally:
        next(driving, None)
