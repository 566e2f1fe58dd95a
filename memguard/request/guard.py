"""The request-path guard: block reads while forced, record failures, force on triggers.

The healthy path touches no Redis: the forced flag comes from the watcher's in-process view
and a success only resets the failure counter when the fleet may have one. When Redis
itself is unreachable the guard fails open: reads go on, the caller never sees a Redis
error, and a short local back-off keeps every read from paying a connect timeout.
State changes are made by the store (``memguard.store.state.State``, or any object with the
``Store`` methods: the unit tests use a fake); the guard only decides when to ask for them.

Blocking and asyncio reads share one implementation: ``call`` and ``acall`` are the same few
lines, one calling and one awaiting, around shared decisions (a test holds them to one text
but for ``await``); every Redis step (a failure, a force, a reset) is a generator of
``memguard.store.steps`` that ``call`` drives with the blocking client and ``acall`` with
``redis.asyncio``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import redis

from memguard.config.settings import Settings
from memguard.domain import events
from memguard.domain.chaos import Injection, LocalChaos
from memguard.domain.classify import Action, Verdict, classify, error_meta, of_fault
from memguard.domain.events import origin
from memguard.domain.modes import EffectiveMode
from memguard.domain.ramp import LocalRamp
from memguard.domain.record import ForcedRecord
from memguard.domain.snapshot import Snapshot, Transition
from memguard.store import steps
from memguard.store.steps import Step, Steps

REDIS_BACKOFF_S = 1.0
UNKNOWN = object()  # the view cannot say: Redis must be asked
OVERHEAD_SAMPLE_EVERY = 16
UNGUARDED_EVERY_S = 1.0  # unguarded reads are told in one event at most this often

R = TypeVar("R")
Meta = dict[str, Any]


class Store(Protocol):
    """What the guard asks of the store: steps to drive, and their blocking and asyncio performers."""

    base: EffectiveMode

    def perform(self, step: Step) -> Any: ...

    async def aperform(self, step: Step) -> Any: ...

    def mode(self, record: ForcedRecord | None) -> EffectiveMode: ...

    def snapshot_steps(self) -> Steps[Snapshot]: ...

    def lapse_steps(self, by: dict[str, Any]) -> Steps[Transition]: ...

    def reset_failures_steps(self) -> Steps[bool]: ...

    def record_failure_steps(self, by: dict[str, Any]) -> Steps[Transition]: ...

    def force_steps(self, reason: str, hold_seconds: int, by: dict[str, Any], *, auto: bool,
                    quorum: int = 0) -> Steps[Transition]: ...


class View(Protocol):
    """The in-process view (``memguard.request.watch.Watcher``): None while it cannot say."""

    @property
    def current(self) -> Any: ...


@dataclass(frozen=True)
class Gate:
    """What decides a read when the view cannot: the forced record, the ramp and the experiment,
    read from Redis (the view's ``View`` has the same fields)."""

    record: ForcedRecord | None
    ramp: LocalRamp | None
    chaos: LocalChaos | None = None


OPEN = Gate(None, None)  # Redis cannot say: the read fails open, unguarded (and counted so)
NONE = Gate(None, None)  # Redis says: no record, no ramp


class Meter(Protocol):
    def record(self, seconds: float, failed: bool) -> None: ...


class Guard:
    """One guard's request path: ``default``'s, or a named guard's (``name``), which may have a
    ``parent``: its reads are blocked while the parent is forced too, and the failures an outage
    causes (timeouts, 5xx, slow reads) count toward the parent, while a 401/403 forces the guard."""

    def __init__(self, settings: Settings, state: Store, hooks: events.Hooks | events.GuardHooks,
                 view: View | None = None, meter: Meter | None = None, *, name: str = "default",
                 parent: Guard | None = None, tagged: bool = False) -> None:
        self.settings = settings
        self.state = state
        self.hooks = hooks
        self.view = view
        self.name = name
        self.parent = parent
        self.tagged = tagged  # a named guard's: its blocked reads' meta names it
        self.meter: Meter | None = meter if parent is None else parent.meter
        self.base = state.base
        self._down_until = 0.0
        self._reads = 0
        self._unguarded_n = 0  # unguarded reads not yet told (``_unguarded``)
        self._unguarded_at = 0.0
        self._rate_on = settings.failure_rate_on
        self._chaos_on = settings.chaos == "allow"  # this process takes part in experiments

    # -- the state as this process sees it ------------------------------------------------

    def forced(self) -> ForcedRecord | None:
        """The active forced record, or None; from the in-process view while it is valid."""
        gate = self._viewed()
        if gate is UNKNOWN:
            gate = steps.run(self._gate_from_redis(), self.state.perform)
        return gate.record

    def _viewed(self) -> Any:
        """The view (its record and ramp) while it is valid, else ``UNKNOWN``."""
        view = self.view.current if self.view is not None else None
        if view is not None and time.monotonic() < view.valid_until:
            return view
        return UNKNOWN

    def _gate_from_redis(self) -> Steps[Gate]:
        if time.monotonic() < self._down_until:
            return OPEN
        try:
            snap = yield from self.state.snapshot_steps()
            if snap.corrupt is not None:
                self.hooks.emit(events.GuardTrouble("corrupt_state", "check", snap.corrupt[:120]))
            record, ramp, mono = snap.record, snap.ramp, time.monotonic()
            local = None if ramp is None else LocalRamp.at(ramp, snap.redis_now, mono)
            chaos = None if snap.chaos is None else LocalChaos.at(snap.chaos, snap.redis_now, mono)
            if record is None or snap.redis_now < record.lapse_time(self.settings.probe_grace_seconds):
                return Gate(record, local, chaos)
            lapsed = yield from self.state.lapse_steps(origin("lapse"))
            if lapsed.ramp is not None:
                return Gate(None, LocalRamp.at(lapsed.ramp, lapsed.ramp.start, time.monotonic()), chaos)
            return NONE if chaos is None else Gate(None, None, chaos)
        except redis.RedisError as exc:
            self._redis_down("check", exc)
        return OPEN

    def effective_mode(self) -> EffectiveMode:
        return self.state.mode(self.forced())

    # -- guarded reads --------------------------------------------------------------------

    def call(self, thread_id: str, fn: Callable[..., R], args: Sequence[Any] = (),
             kwargs: Mapping[str, Any] | None = None, budget_s: float | None = None) -> tuple[R | None, Meta]:
        """Run one read under the guard; never raises what the read, Redis or memguard raised.

        A read that returns but overran ``budget_s`` gives the caller its value and counts
        as a ``timeout`` failure: a Zep that answers in 2 s is degraded, not healthy. A fault
        of memguard's own before the read lets the read run unguarded; one after it keeps the
        read's outcome. Either way ``meta["guard_error"]`` names the fault's type.
        """
        started, chaos = time.perf_counter(), None
        try:
            if self.base is not EffectiveMode.READ_WRITE:
                return None, self._read_disabled()
            gate = self._viewed()  # the healthy path: no Redis, no steps to drive
            if gate is UNKNOWN:
                gate = steps.run(self._gate_from_redis(), self.state.perform)
            if gate is OPEN:
                self._unguarded()
            elif self._unguarded_n:  # guarded again: the last unguarded reads are told now
                self._tell_unguarded()
            if gate.record is not None:
                return None, self._blocked(thread_id, gate.record)
            if gate.ramp is not None and (held := self._ramp_held(thread_id, gate.ramp)) is not None:
                return None, held
            if self.parent is not None and (held := steps.run(self._parent_admits(thread_id),
                                                               self.state.perform)) is not None:
                return None, held
            if self._chaos_on and gate.chaos is not None:
                chaos = self._injection(thread_id, gate.chaos, budget_s)
        except Exception as fault:
            bypass = self._fault("check", fault)
            self._unguarded()
        else:
            bypass = {}
        if chaos is not None:
            time.sleep(chaos.delay)
            if chaos.answers:
                return None, steps.run(self._injected(chaos, thread_id), self.state.perform)
            bypass = {**bypass, "chaos": chaos.fault.text}
        called = time.perf_counter() - (chaos.counted if chaos is not None else 0.0)
        try:
            value = fn(*args, **(kwargs or {}))
        except Exception as exc:
            try:
                meta = steps.run(self._failed(exc, thread_id, called), self.state.perform)
            except Exception as fault:
                return None, self._failed_unrecorded(exc, fault)
            return None, {**meta, **bypass}
        try:
            meta, then = self._returned(thread_id, started, called, budget_s)
            if then is not None:
                steps.run(then, self.state.perform)
        except Exception as fault:
            meta = {"used": True, "source": "zep", **self._fault("success", fault)}
        return value, {**meta, **bypass}

    async def acall(self, thread_id: str, fn: Callable[..., Awaitable[R]], args: Sequence[Any] = (),
                    kwargs: Mapping[str, Any] | None = None,
                    budget_s: float | None = None) -> tuple[R | None, Meta]:
        """``call`` for a coroutine function: the same decisions, with the read and any Redis
        step awaited (``redis.asyncio``)."""
        started, chaos = time.perf_counter(), None
        try:
            if self.base is not EffectiveMode.READ_WRITE:
                return None, self._read_disabled()
            gate = self._viewed()
            if gate is UNKNOWN:
                gate = await steps.arun(self._gate_from_redis(), self.state.aperform)
            if gate is OPEN:
                self._unguarded()
            elif self._unguarded_n:  # guarded again: the last unguarded reads are told now
                self._tell_unguarded()
            if gate.record is not None:
                return None, self._blocked(thread_id, gate.record)
            if gate.ramp is not None and (held := self._ramp_held(thread_id, gate.ramp)) is not None:
                return None, held
            if self.parent is not None and (held := await steps.arun(self._parent_admits(thread_id),
                                                                     self.state.aperform)) is not None:
                return None, held
            if self._chaos_on and gate.chaos is not None:
                chaos = self._injection(thread_id, gate.chaos, budget_s)
        except Exception as fault:
            bypass = self._fault("check", fault)
            self._unguarded()
        else:
            bypass = {}
        if chaos is not None:
            await asyncio.sleep(chaos.delay)
            if chaos.answers:
                return None, await steps.arun(self._injected(chaos, thread_id), self.state.aperform)
            bypass = {**bypass, "chaos": chaos.fault.text}
        called = time.perf_counter() - (chaos.counted if chaos is not None else 0.0)
        try:
            value = await fn(*args, **(kwargs or {}))
        except Exception as exc:
            try:
                meta = await steps.arun(self._failed(exc, thread_id, called), self.state.aperform)
            except Exception as fault:
                return None, self._failed_unrecorded(exc, fault)
            return None, {**meta, **bypass}
        try:
            meta, then = self._returned(thread_id, started, called, budget_s)
            if then is not None:
                await steps.arun(then, self.state.aperform)
        except Exception as fault:
            meta = {"used": True, "source": "zep", **self._fault("success", fault)}
        return value, {**meta, **bypass}

    def _injection(self, thread_id: str, chaos: LocalChaos, budget_s: float | None) -> Injection | None:
        """What the experiment does to this read, or None: the read is not picked."""
        fault = chaos.picked(thread_id if isinstance(thread_id, str) else str(thread_id), time.monotonic())
        if fault is None:
            return None
        self.hooks.emit(events.ChaosInjected(fault.kind))
        return Injection.of(fault, budget_s if budget_s is not None else self.settings.read_timeout_s,
                            chaos.chaos.trip)

    def _injected(self, chaos: Injection, thread_id: str) -> Steps[Meta]:
        """An injected fault's answer: what the real fault would give, from source ``chaos``;
        counted toward a trip only when the experiment says so (``--trip``)."""
        verdict = of_fault(chaos.status)
        meta = {"used": False, "source": "chaos", "reason": verdict.reason, "status": verdict.status,
                "error": "chaos", "chaos": chaos.fault.text, **({"guard": self.name} if self.tagged else {})}
        try:
            if chaos.trip:
                if self.meter is not None:
                    self.meter.record(chaos.counted, failed=True)
                yield from self._verdict_steps(verdict, str(thread_id), "chaos")
        except Exception as fault:
            return {**meta, **self._fault("chaos", fault)}
        return meta

    def _parent_admits(self, thread_id: str) -> Steps[Meta | None]:
        """None when the parent lets the read go on; else the blocked read's meta (the parent's
        record or its recovery ramp), naming the parent."""
        parent = self.parent
        assert parent is not None
        gate = parent._viewed()
        if gate is UNKNOWN:
            gate = yield from steps.via(parent.state, parent._gate_from_redis())
        held = parent._blocked(thread_id, gate.record) if gate.record is not None else \
            parent._ramp_held(thread_id, gate.ramp) if gate.ramp is not None else None
        return None if held is None else {**held, "guard": parent.name}

    def _fault(self, op: str, fault: Exception) -> Meta:
        """A fault of memguard's own on a read: counted and logged (``GuardTrouble`` of kind
        ``internal``); the meta the caller gets names its type."""
        with contextlib.suppress(Exception):
            self.hooks.emit(events.internal(op, fault))
        return {"guard_error": type(fault).__name__}

    def _unguarded(self) -> None:
        """This read goes to Zep with no guard: counted (``memory_zep_reads_unguarded_total``),
        told at most once per ``UNGUARDED_EVERY_S`` so that an outage's reads stay cheap."""
        self._unguarded_n += 1
        if time.monotonic() >= self._unguarded_at:
            self._tell_unguarded()

    def _tell_unguarded(self) -> None:
        n, self._unguarded_n = self._unguarded_n, 0
        self._unguarded_at = time.monotonic() + UNGUARDED_EVERY_S
        with contextlib.suppress(Exception):
            self.hooks.emit(events.ReadUnguarded(n))

    def _failed_unrecorded(self, exc: Exception, fault: Exception) -> Meta:
        """The read failed and memguard could not record it: the read's outcome, and the fault."""
        return {**error_meta(exc), **self._fault("failure", fault)}

    def _read_disabled(self) -> Meta:
        return {"used": False, "source": "read_disabled", "mode": self.base.value}

    def _ramp_held(self, thread_id: str, ramp: LocalRamp) -> Meta | None:
        """None when the ramp admits this conversation now; else the held read's meta."""
        share = ramp.held(thread_id if isinstance(thread_id, str) else str(thread_id), time.monotonic())
        if share is None:
            return None
        self.hooks.emit(events.ReadBlocked(str(thread_id), "ramp", ramp.ramp.end))
        meta = {"used": False, "source": "ramp_held", "share": round(share, 4), "until": ramp.ramp.end}
        return {**meta, "guard": self.name} if self.tagged else meta

    def _blocked(self, thread_id: str, record: ForcedRecord) -> Meta:
        self.hooks.emit(events.ReadBlocked(thread_id, record.reason, record.until))
        meta = {"used": False, "source": "write_only_forced", "reason": record.reason, "until": record.until}
        return {**meta, "guard": self.name} if self.tagged else meta

    def _failed(self, exc: Exception, thread_id: str, called: float) -> Steps[Meta]:
        took = time.perf_counter() - called
        verdict = yield from self._failure_steps(exc, thread_id)
        if self.meter is not None:
            self.meter.record(took, failed=verdict.action is not Action.IGNORE)
        return error_meta(exc, verdict)

    def _returned(self, thread_id: str, started: float, called: float,
                  budget_s: float | None) -> tuple[Meta, Steps[None] | None]:
        """A read returned: its meta, and the Redis steps still to run (usually none)."""
        resumed = time.perf_counter()
        took = resumed - called
        overran = budget_s is not None and took > budget_s
        if self.meter is not None:
            self.meter.record(took, overran)
        if overran:
            then = self._count_toward(Verdict(Action.COUNT, "timeout"), thread_id, "budget_overrun")
            return {"used": True, "source": "zep", "overran_ms": round(took * 1000, 1)}, then
        self._reads += 1
        if self._reads % OVERHEAD_SAMPLE_EVERY == 0:
            self.hooks.emit(events.ReadFinished(called - started + time.perf_counter() - resumed))
        if self.parent is not None:  # the parent holds the failures this guard's reads count
            parent = self.parent
            return {"used": True, "source": "zep"}, \
                steps.via(parent.state, parent._reset_steps()) if parent._may_have_failures() else None
        return {"used": True, "source": "zep"}, self._reset_steps() if self._may_have_failures() else None

    # -- outcomes -------------------------------------------------------------------------

    def _may_have_failures(self) -> bool:
        if self._rate_on:
            return False  # no consecutive count to reset: the meter counted the read
        now = time.monotonic()
        view = self.view.current if self.view is not None else None
        if view is not None and now < view.valid_until and now >= view.failures_until:
            return False
        return now >= self._down_until

    def _reset_steps(self) -> Steps[None]:
        try:
            yield from self.state.reset_failures_steps()
        except redis.RedisError as exc:
            self._redis_down("reset", exc)

    def _failure_steps(self, exc: BaseException, thread_id: str | None) -> Steps[Verdict]:
        verdict = classify(exc)
        yield from self._verdict_steps(verdict, thread_id, type(exc).__name__)
        return verdict

    def _verdict_steps(self, verdict: Verdict, thread_id: str | None, error: str) -> Steps[None]:
        """A failed read's verdict acted on: counted, or a force (a 401/403, a 429's Retry-After)."""
        if verdict.action is Action.COUNT:
            yield from self._count_toward(verdict, thread_id, error)
            return
        self.hooks.emit(events.FailureRecorded(verdict.reason, verdict.action.value, verdict.status,
                                           thread_id, error=error))
        if verdict.action is Action.FORCE:
            hold = self.settings.hold_seconds
            if verdict.hold_seconds is not None:  # a 429's Retry-After, within the cap
                hold = max(1, min(round(verdict.hold_seconds), self.settings.hold_cap_seconds))
            s = self.settings
            quorum = s.quorum_hosts if verdict.reason == "auth" and s.quorum_auth else 0
            by = origin("auto")
            try:
                yield from self.state.force_steps(verdict.reason, hold, by, auto=True, quorum=quorum)
            except redis.RedisError as err:
                self._redis_down("force", err)

    def _count_toward(self, verdict: Verdict, thread_id: str | None, error: str) -> Steps[None]:
        """Count a failure: toward the parent when there is one (an outage is the parent's)."""
        if self.parent is None:
            return (yield from self._count_steps(verdict, thread_id, error))
        return (yield from steps.via(self.parent.state, self.parent._count_steps(verdict, thread_id, error)))

    def _count_steps(self, verdict: Verdict, thread_id: str | None, error: str) -> Steps[None]:
        """A failure that counts: towards the consecutive trigger, or (failure-rate policy on)
        only in the meter, which the caller feeds."""
        count = None
        if not self._rate_on and time.monotonic() >= self._down_until:
            try:
                count = (yield from self.state.record_failure_steps(origin("auto"))).fail_count
            except redis.RedisError as exc:
                self._redis_down("count", exc)
        self.hooks.emit(events.FailureRecorded(verdict.reason, verdict.action.value, verdict.status,
                                           thread_id, count, error))

    def _redis_down(self, op: str, exc: BaseException) -> None:
        self._down_until = time.monotonic() + REDIS_BACKOFF_S
        self.hooks.emit(events.GuardTrouble("redis_error", op, f"{type(exc).__name__}: {exc}"[:200]))
