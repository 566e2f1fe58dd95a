"""Many views in one process: the fleet benchmark's holders and the propagation tests' crowd.

Each view is a ``memguard.request.watch.Watcher`` run by the asyncio driver
(``memguard.drill.awatch``), with its own connection and its own read meter: memguard's own
handshake, tracking, notices, heartbeat, liveness and meter schedule, as that many processes
would run them. A holder obeys its parent over a ``multiprocessing`` pipe:

- ``("reads", None | False | True)``: stop reading; read healthily; read with this holder's
  first view failing one read a tick (the windows stay hot);
- ``("see", want)``: answer ``"armed"``, then, once every view shows forced == ``want`` (or
  after 60 s), the ``perf_counter`` time each first did (``None``: never);
- ``("asked", None)``: how many times views asked for an explanation since the last such
  command, and the ``perf_counter`` time of the first (``None``: none did);
- ``("troubles", None)``: how many ``GuardTrouble`` events (a view that reconnected...) the
  views emitted since ready or the last such command;
- ``("counted", None)``: the smallest fleet size a view counted (views on replicas: each
  counts its server's subscribers when it connects, and once more a while later);
- ``None``: stop.

An observer (``observe``) is one view as an application holds it: its own process and thread.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, cast

import redis

from memguard.config.settings import Settings
from memguard.domain import events
from memguard.drill import awatch
from memguard.request.meter import FLUSH_S, ReadMeter
from memguard.request.watch import GuardView, Watcher
from memguard.store.state import State
from memguard.store.steps import Script, arun

OBSERVERS = 4
READS_PER_TICK = 2  # per view per meter tick; how many does not change what is sent


class TimedView(GuardView):
    """A view that notes when it first shows the state it is waiting for (no polling)."""

    want: bool | None = None
    seen: float | None = None

    def publish(self) -> None:
        super().publish()
        current = self.current
        if self.want is not None and self.seen is None and current is not None \
                and (current.record is not None) == self.want:
            self.seen = time.perf_counter()


def settings_for(url: str, view_urls: tuple[str, ...] = ()) -> Settings:
    """``view_urls``: the views follow these replicas (MEMGUARD_VIEW_URLS), not ``url``."""
    return Settings(redis_url=url, zep_api_key="x", redis_timeout_ms=5000, failure_rate_threshold=0.5,
                    view_urls=view_urls)


async def see(views: list[TimedView], want: bool, conn: Any) -> None:
    for view in views:
        view.want, view.seen = want, None
        if view.current is not None and (view.current.record is not None) == want:
            view.seen = time.perf_counter()
    conn.send("armed")
    deadline = time.monotonic() + 60
    while any(v.seen is None for v in views) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    conn.send([v.seen for v in views])
    for view in views:
        view.want = None


def hold(url: str, count: int, conn: Any, nice: int = 0, view_urls: tuple[str, ...] = ()) -> None:
    """A process holding ``count`` views (the target of a ``multiprocessing`` process), at CPU
    priority ``nice``: the fleet benchmark lowers it, as on one machine the holders would
    otherwise take the CPU the Redis server and the observers need, which in a fleet are on
    machines of their own."""
    os.nice(nice)
    asyncio.run(_hold(url, count, conn, view_urls))


async def _hold(url: str, count: int, conn: Any, view_urls: tuple[str, ...] = ()) -> None:
    """``count`` views in one process, each with its own read meter; obeys the parent."""
    settings = settings_for(url, view_urls)
    hooks = events.Hooks()
    state = State(redis.Redis.from_url(url, decode_responses=True), settings, hooks)
    gate = asyncio.Semaphore(32)  # re-reads at once per holder, as a few dozen processes' worth
    asked: list[float] = []  # when views asked for an explanation (store/lua/explain.lua)
    troubles: list[events.GuardTrouble] = []  # e.g. a view that reconnected
    hooks.subscribe(lambda e: troubles.append(e) if isinstance(e, events.GuardTrouble) else None)

    async def perform(step: Any) -> Any:
        if isinstance(step, Script) and step.name == "explain":
            asked.append(time.perf_counter())
        async with gate:
            return await state.aperform(step)

    grace = settings.probe_grace_seconds
    watchers = [Watcher(state, grace, hooks, views=[TimedView(state, grace, hooks)]) for _ in range(count)]
    views = [cast(TimedView, w.views[0]) for w in watchers]
    meters = [ReadMeter(state, settings, hooks, view) for view in views]
    tasks = []
    for i, watcher in enumerate(watchers):  # connect gradually, as a fleet starts: 100 at a time
        tasks.append(asyncio.create_task(awatch.run(watcher, perform)))
        if i % 100 == 99 or i == count - 1:
            while any(v.current is None for v in views[: i + 1]):
                await asyncio.sleep(0.02)
    troubles.clear()
    conn.send("ready")
    loop = asyncio.get_running_loop()
    reading: asyncio.Task[None] | None = None

    async def read(failing: bool) -> None:
        """Every view reads at a steady rate and runs its meter's schedule, as its thread would;
        ``failing``: this holder's first view fails one read a second (the windows turn hot)."""
        while True:
            now = time.monotonic()
            for i, meter in enumerate(meters):
                for _ in range(READS_PER_TICK):
                    meter.record(0.01, failed=failing and i == 0)
                if meter.due(now):
                    await arun(meter.flush_steps(now), perform)
            await asyncio.sleep(FLUSH_S)

    while (command := await loop.run_in_executor(None, conn.recv)) is not None:
        kind, arg = command
        if kind == "reads":  # None: stop; False: healthy; True: one failing view
            if reading is not None:
                reading.cancel()
            reading = None if arg is None else asyncio.create_task(read(arg))
            conn.send("ok")
        elif kind == "asked":
            conn.send((min(asked, default=None), len(asked)))
            asked.clear()
        elif kind == "troubles":
            conn.send(len(troubles))
            troubles.clear()
        elif kind == "counted":
            conn.send(min(v.fleet_floor for v in views))
        else:
            await see(views, arg, conn)
    for watcher in watchers:
        watcher.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def observe(url: str, conn: Any, view_urls: tuple[str, ...] = ()) -> None:
    """One view as an application process has it (its own thread and CPU), connected after the
    fleet: Redis sends it each message after every other subscriber's."""
    settings = settings_for(url, view_urls)
    state = State(redis.Redis.from_url(url, decode_responses=True), settings, events.Hooks())
    view = TimedView(state, settings.probe_grace_seconds, events.Hooks())
    watcher = Watcher(state, settings.probe_grace_seconds, events.Hooks(), views=[view])
    state.on_change = view.apply_notice
    watcher.start()
    conn.send("ready" if watcher.wait_ready(10) else "not ready")
    while (want := conn.recv()) is not None:
        asyncio.run(see([view], want, conn))
    watcher.stop()
