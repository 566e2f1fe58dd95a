"""Every guard a process reads, each built by one factory (``Units._unit``): its store, view,
read meter and request path.

The guard ``default`` is built at once: every process reads it. A declared guard
(``memguard.declare``) costs a process nothing until a read names it. Its first read builds its
unit the same way, and the process's watcher follows its keys and channel from then on. The
named units are bounded (``bound``, least recently read first) and expire after
``idle_s`` without a read, so that names taken from requests cannot grow a process without end.
A guard that is forced is kept while it is read: forgetting it would let its next read call the
dependency again, then read Redis before it learnt of the hold. A name nobody declared never gets
a unit or a key: its read goes to the guard ``default``, and the name is told once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from memguard.config.settings import Settings
from memguard.domain import events
from memguard.domain.guards import DEFAULT, DEFAULT_GUARD, Registry, Resolved
from memguard.request.guard import Guard
from memguard.request.meter import Meters, ReadMeter
from memguard.request.view import GuardView
from memguard.request.watch import Watcher
from memguard.store.keys import Keys
from memguard.store.state import State

BOUND = 256  # named guards' views one process follows at most
IDLE_S = 600.0  # a named guard's view is let go after this long without a read
EXPIRE_EVERY_S = 10.0  # idle units are looked for at most this often on the read path
TOLD_UNKNOWN = 1024  # undeclared names told once each, at most this many


@dataclass
class Unit:
    """One guard in this process: its store, its view and its request path."""

    resolved: Resolved
    state: State
    view: GuardView
    guard: Guard
    last_read: float
    meter: ReadMeter | None = None  # its own windows' (a guard with no parent and a windowed policy)


class Units:
    """The guards this process reads: ``default`` always, the named ones while read (``units``,
    least recently read first). The one place that knows the default guard's name."""

    def __init__(self, registry: Registry, settings: Settings, state: State, hooks: events.Hooks,
                 meters: Meters, *, bound: int = BOUND, idle_s: float = IDLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.settings = settings
        self.state = state  # the default guard's store: the client, and the fleet's index
        self.hooks = hooks
        self.meters = meters
        self.bound = bound
        self.idle_s = idle_s
        self.clock = clock
        self.units: OrderedDict[str, Unit] = OrderedDict()  # named guards, least recently read first
        self._lock = threading.Lock()
        self._expired_at = clock()
        self._told: set[str] = set()
        self.watcher: Watcher | None = None
        self.own = self._unit(DEFAULT_GUARD, None, clock())
        self.default = self.own.guard

    def follow(self, watcher: Watcher) -> None:
        """``watcher`` follows every unit's view from now on."""
        self.watcher = watcher
        watcher.tick = self.expire

    def unit(self, name: str) -> Unit | None:
        """The unit of ``name`` if this process has built it (never builds one)."""
        return self.own if name == DEFAULT else self.units.get(name)

    def guard(self, name: str) -> Guard | None:
        """The guard a read names; None when the name is not declared (told once per name)."""
        if name == DEFAULT:
            return self.default
        now = self.clock()
        unit = self.units.get(name)
        if unit is not None:
            unit.last_read = now
            if unit.guard.parent is not None and unit.guard.parent is not self.default:
                self._touch(unit.resolved.parent, now)
            with self._lock, contextlib.suppress(KeyError):
                self.units.move_to_end(name)
        else:
            resolved = self.registry.resolve(name)
            if resolved is None:
                self._unknown(name)
                return None
            unit = self._add(resolved, now)
        if now - self._expired_at >= EXPIRE_EVERY_S:
            self.expire()
        return unit.guard

    def for_read(self, name: object) -> tuple[Guard, str | None]:
        """The guard a read names, or the default with what was wrong with the name (a name not
        declared, or not text: a guard function's bad answer)."""
        if isinstance(name, str):
            guard = self.guard(name)
            return (guard, None) if guard is not None else (self.default, name[:80])
        problem = f"<{type(name).__name__}>"
        self._unknown(problem)
        return self.default, problem

    def _touch(self, name: str | None, now: float) -> None:
        unit = self.units.get(name or "")
        if unit is not None:
            unit.last_read = now
            with self._lock, contextlib.suppress(KeyError):
                self.units.move_to_end(unit.resolved.name)

    def _add(self, resolved: Resolved, now: float) -> Unit:
        # The parent is declared before its family (or is the default): never None.
        parent = self.guard(resolved.parent) if resolved.parent is not None else None
        with self._lock:
            unit = self.units.get(resolved.name)
            if unit is None:
                unit = self.units[resolved.name] = self._unit(resolved, parent, now)
                self._evict(now)
            views = self.views()
        if self.watcher is not None:
            self.watcher.set_views(views)
        return unit

    def _unit(self, resolved: Resolved, parent: Guard | None, now: float) -> Unit:
        """Every guard's unit, the default's included: its store, view, meter and guard."""
        state, settings, hooks = self.store(resolved)
        view = GuardView(state, settings.probe_grace_seconds, hooks)  # type: ignore[arg-type]
        state.on_change = view.apply_notice
        meter = None
        if parent is None and (settings.latency_threshold_ms or settings.failure_rate_on):
            # Its own windows, judged by its own meter (its view hears their "hot" messages),
            # sent by the one thread that drives every meter.
            meter = ReadMeter(state, settings, hooks, view)  # type: ignore[arg-type]
            self.meters.add(meter)
        elif parent is not None and parent.meter is None:
            # Its failures count toward a parent that judges no window: the consecutive count.
            settings = dataclasses.replace(settings, failure_rate_threshold=0.0, latency_threshold_ms=0)
        guard = Guard(settings, state, hooks, view, meter, name=resolved.name, parent=parent,
                      tagged=resolved.name != DEFAULT)
        return Unit(resolved, state, view, guard, now, meter)

    def store(self, resolved: Resolved) -> tuple[State, Settings, events.Hooks | events.GuardHooks]:
        """A guard's store, settings and hooks, without a view (operators' actions too): the
        default's are the process's own; a named guard's its own keys under the default's."""
        if resolved.name == DEFAULT:
            return self.state, self.settings, self.hooks
        settings = dataclasses.replace(self.settings, **resolved.overrides)
        hooks = events.GuardHooks(self.hooks, resolved.name, resolved.label)
        keys = Keys.for_guard(resolved.name, self.state.keys.prefix)
        state = State(self.state.client, settings, hooks, keys=keys,  # type: ignore[arg-type]
                      shared=self.state, guard=resolved.name)
        return state, settings, hooks

    def _evict(self, now: float) -> None:
        """Over the bound: the least recently read unit that is neither forced while read nor a
        parent of another goes (never the one just added, which is being read); when every one
        is kept, the oldest goes anyway (told), so the bound holds."""
        while len(self.units) > self.bound:
            parents = {u.resolved.parent for u in self.units.values()}
            older = list(self.units.items())[:-1]
            victim = next((n for n, u in older if n not in parents and not self._kept(u, now)), None)
            if victim is None:
                victim = older[0][0]
                self.hooks.emit(events.GuardTrouble("view_bound", "named", f"every view is kept; {victim}"))
            self._drop(victim)

    def _drop(self, name: str) -> None:
        unit = self.units.pop(name)
        if unit.meter is not None:
            self.meters.remove(unit.meter)

    def _kept(self, unit: Unit, now: float) -> bool:
        view = unit.view.current
        return view is not None and view.record is not None and now - unit.last_read < self.idle_s

    def views(self) -> list[GuardView]:
        """Every unit's view: the watcher follows these."""
        return [self.own.view, *(u.view for u in self.units.values())]

    def expire(self) -> None:
        """Let go of the units not read for ``idle_s`` (the watcher's slow re-read calls this too)."""
        now = self.clock()
        self._expired_at = now
        with self._lock:
            idle = [n for n, u in self.units.items() if now - u.last_read >= self.idle_s]
            if not idle:
                return
            for name in idle:
                self._drop(name)
            views = self.views()
        if self.watcher is not None:
            self.watcher.set_views(views)

    def _unknown(self, name: str) -> None:
        shown = name[:80]
        if shown in self._told or len(self._told) >= TOLD_UNKNOWN:
            return
        self._told.add(shown)
        self.hooks.emit(events.GuardTrouble("unknown_guard", "read", shown))

