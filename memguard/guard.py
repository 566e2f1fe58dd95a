"""The request-path guard: block reads while forced, record failures, force on triggers.

The healthy path touches no Redis: the forced flag comes from the watcher's in-process view
and a success only resets the failure counter when the fleet may have one. When Redis
itself is unreachable the guard fails open: reads go on, the caller never sees a Redis
error, and a short local back-off keeps every read from paying a connect timeout.
State changes are made by ``State``; the guard only decides when to ask for them.

Blocking and asyncio reads share this one implementation (``memguard.steps``): ``call`` and
``acall`` drive the same steps, with the blocking Redis client or ``redis.asyncio``.
"""

from __future__ import annotations

import inspect
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from memguard import events, steps, zep
from memguard.classify import Action, Verdict, classify
from memguard.modes import EffectiveMode
from memguard.settings import Settings
from memguard.state import ForcedRecord, State
from memguard.steps import Steps
from memguard.watch import Watcher

if TYPE_CHECKING:
    from memguard.meter import ReadMeter

REDIS_BACKOFF_S = 1.0
OVERHEAD_SAMPLE_EVERY = 16

R = TypeVar("R")
Meta = dict[str, Any]


def origin(via: str, **extra: Any) -> dict[str, Any]:
    """Who changed the state: kept in the record and in the log line."""
    return {"via": via, "host": socket.gethostname(), "pid": os.getpid(), **extra}


class Guard:
    def __init__(self, settings: Settings, state: State, watcher: Watcher | None = None,
                 meter: ReadMeter | None = None) -> None:
        self.settings = settings
        self.state = state
        self.watcher = watcher
        self.meter = meter
        self.base = state.base
        self._down_until = 0.0
        self._reads = 0

    # -- the state as this process sees it ------------------------------------------------

    def forced(self) -> ForcedRecord | None:
        """The active forced record, or None; from the in-process view while it is valid."""
        return steps.run(self._forced_steps(), self.state.perform)

    def _forced_steps(self) -> Steps[ForcedRecord | None]:
        view = self.watcher.current if self.watcher is not None else None
        if view is not None and time.monotonic() < view.valid_until:
            return view.record
        if time.monotonic() < self._down_until:
            return None
        try:
            snap = yield from self.state.snapshot_steps()
            if snap.corrupt is not None:
                events.emit(events.GuardTrouble("corrupt_state", "check", snap.corrupt[:120]))
            record = snap.record
            if record is None or snap.redis_now < record.lapse_time(self.settings.probe_grace_seconds):
                return record
            yield from self.state.lapse_steps(origin("lapse"))
        except redis.RedisError as exc:
            self._redis_down("check", exc)
        return None

    def effective_mode(self) -> EffectiveMode:
        return self.state.mode(self.forced())

    # -- guarded reads --------------------------------------------------------------------

    def call(self, thread_id: str, fn: Callable[..., R], args: Sequence[Any] = (),
             kwargs: Mapping[str, Any] | None = None, budget_s: float | None = None) -> tuple[R | None, Meta]:
        """Run one read under the guard; never raises what the read or Redis raised.

        A read that returns but overran ``budget_s`` gives the caller its value and counts
        as a ``timeout`` failure: a Zep that answers in 2 s is degraded, not healthy.
        """
        return steps.run(self._call_steps(thread_id, fn, args, kwargs, budget_s), self._perform)

    async def acall(self, thread_id: str, fn: Callable[..., Awaitable[R]], args: Sequence[Any] = (),
                    kwargs: Mapping[str, Any] | None = None,
                    budget_s: float | None = None) -> tuple[R | None, Meta]:
        """``call`` for a coroutine function, on this event loop: the same steps, awaited."""
        return await steps.arun(self._call_steps(thread_id, fn, args, kwargs, budget_s), self._aperform)

    def _perform(self, step: steps.Step) -> Any:
        if isinstance(step, steps.Read):
            return step.fn(*step.args, **step.kwargs)
        return self.state.perform(step)

    async def _aperform(self, step: steps.Step) -> Any:
        if isinstance(step, steps.Read):
            result = step.fn(*step.args, **step.kwargs)
            return await result if inspect.isawaitable(result) else result
        return await self.state.aperform(step)

    def _call_steps(self, thread_id: str, fn: Callable[..., Any], args: Sequence[Any],
                    kwargs: Mapping[str, Any] | None, budget_s: float | None) -> Steps[tuple[Any, Meta]]:
        started = time.perf_counter()
        if self.base is not EffectiveMode.READ_WRITE:
            return None, {"used": False, "source": "read_disabled", "mode": self.base.value}
        record = yield from self._forced_steps()
        if record is not None:
            events.emit(events.ReadBlocked(thread_id, record.reason, record.until))
            return None, {"used": False, "source": "write_only_forced", "reason": record.reason,
                          "until": record.until}
        zep.forget_status()
        called = time.perf_counter()
        try:
            value = yield steps.Read(fn, args, kwargs or {})
        except Exception as exc:
            took = time.perf_counter() - called
            verdict = yield from self._failure_steps(exc, thread_id)
            if self.meter is not None:
                self.meter.record(took, failed=verdict.action is not Action.IGNORE)
            return None, {"used": False, "source": "zep_error", "reason": verdict.reason,
                          "status": verdict.status, "error": type(exc).__name__}
        resumed = time.perf_counter()
        took = resumed - called
        overran = budget_s is not None and took > budget_s
        if self.meter is not None:
            self.meter.record(took, failed=overran)
        if overran:
            yield from self._count_steps(Verdict(Action.COUNT, "timeout"), thread_id, "budget_overrun")
            return value, {"used": True, "source": "zep", "overran_ms": round(took * 1000, 1)}
        yield from self._success_steps()
        self._reads += 1
        if self._reads % OVERHEAD_SAMPLE_EVERY == 0:
            events.emit(events.ReadFinished(True, called - started + time.perf_counter() - resumed))
        return value, {"used": True, "source": "zep"}

    # -- outcomes -------------------------------------------------------------------------

    def record_success(self) -> None:
        steps.run(self._success_steps(), self.state.perform)

    def _success_steps(self) -> Steps[None]:
        """Reset the fleet's failure count, but only write when there may be one."""
        if self.settings.failure_rate_on:
            return  # no consecutive count to reset: the meter counted the read
        now = time.monotonic()
        view = self.watcher.current if self.watcher is not None else None
        if view is not None and now < view.valid_until and now >= view.failures_until:
            return
        if now < self._down_until:
            return
        try:
            yield from self.state.reset_failures_steps()
        except redis.RedisError as exc:
            self._redis_down("reset", exc)

    def record_failure(self, exc: BaseException, thread_id: str | None = None) -> Verdict:
        return steps.run(self._failure_steps(exc, thread_id), self.state.perform)

    def _failure_steps(self, exc: BaseException, thread_id: str | None) -> Steps[Verdict]:
        verdict = classify(exc, zep.last_response())
        error = type(exc).__name__
        if verdict.action is Action.COUNT:
            yield from self._count_steps(verdict, thread_id, error)
            return verdict
        events.emit(events.FailureRecorded(verdict.reason, verdict.action.value, verdict.status,
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
        return verdict

    def _count_steps(self, verdict: Verdict, thread_id: str | None, error: str) -> Steps[None]:
        """A failure that counts: towards the consecutive trigger, or (failure-rate policy on)
        only in the meter, which the caller feeds."""
        count = None
        if not self.settings.failure_rate_on and time.monotonic() >= self._down_until:
            try:
                count = (yield from self.state.record_failure_steps(origin("auto"))).fail_count
            except redis.RedisError as exc:
                self._redis_down("count", exc)
        events.emit(events.FailureRecorded(verdict.reason, verdict.action.value, verdict.status,
                                           thread_id, count, error))

    def _redis_down(self, op: str, exc: BaseException) -> None:
        self._down_until = time.monotonic() + REDIS_BACKOFF_S
        events.emit(events.GuardTrouble("redis_error", op, f"{type(exc).__name__}: {exc}"[:200]))
