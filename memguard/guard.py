"""The request-path guard: block reads while forced, record failures, force on triggers.

The healthy path touches no Redis: the forced flag comes from the watcher's in-process view
and a success only resets the failure counter when the fleet may have one. When Redis
itself is unreachable the guard fails open: reads go on, the caller never sees a Redis
error, and a short local back-off keeps every read from paying a connect timeout.
State changes are made by ``State``; the guard only decides when to ask for them.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from memguard import events, zep
from memguard.classify import Action, Verdict, classify
from memguard.modes import EffectiveMode
from memguard.settings import Settings
from memguard.state import ForcedRecord, State
from memguard.watch import Watcher

if TYPE_CHECKING:
    from memguard.latency import LatencyMeter

REDIS_BACKOFF_S = 1.0
OVERHEAD_SAMPLE_EVERY = 16

R = TypeVar("R")
Meta = dict[str, Any]


def origin(via: str, **extra: Any) -> dict[str, Any]:
    """Who changed the state: kept in the record and in the log line."""
    return {"via": via, "host": socket.gethostname(), "pid": os.getpid(), **extra}


class Guard:
    def __init__(self, settings: Settings, state: State, watcher: Watcher | None = None,
                 latency: LatencyMeter | None = None) -> None:
        self.settings = settings
        self.state = state
        self.watcher = watcher
        self.latency = latency
        self.base = state.base
        self._down_until = 0.0
        self._reads = 0

    # -- the state as this process sees it ------------------------------------------------

    def forced(self) -> ForcedRecord | None:
        """The active forced record, or None; from the in-process view while it is valid."""
        view = self.watcher.current if self.watcher is not None else None
        if view is not None and time.monotonic() < view.valid_until:
            return view.record
        return self._forced_from_redis()

    def _forced_from_redis(self) -> ForcedRecord | None:
        if time.monotonic() < self._down_until:
            return None
        try:
            snap = self.state.snapshot()
            if snap.corrupt is not None:
                events.emit(events.GuardTrouble("corrupt_state", "check", snap.corrupt[:120]))
            record = snap.record
            if record is None or snap.redis_now < record.lapse_time(self.settings.probe_grace_seconds):
                return record
            self.state.lapse(origin("lapse"))
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
        started = time.perf_counter()
        if self.base is not EffectiveMode.READ_WRITE:
            return None, {"used": False, "source": "read_disabled", "mode": self.base.value}
        record = self.forced()
        if record is not None:
            events.emit(events.ReadBlocked(thread_id, record.reason, record.until))
            return None, {"used": False, "source": "write_only_forced", "reason": record.reason,
                          "until": record.until}
        zep.forget_status()
        called = time.perf_counter()
        try:
            value = fn(*args, **(kwargs or {}))
        except Exception as exc:
            if self.latency is not None:
                self.latency.record(time.perf_counter() - called)
            verdict = self.record_failure(exc, thread_id)
            return None, {"used": False, "source": "zep_error", "reason": verdict.reason,
                          "status": verdict.status, "error": type(exc).__name__}
        resumed = time.perf_counter()
        took = resumed - called
        if self.latency is not None:
            self.latency.record(took)
        if budget_s is not None and took > budget_s:
            self._count(Verdict(Action.COUNT, "timeout"), thread_id, "budget_overrun")
            return value, {"used": True, "source": "zep", "overran_ms": round(took * 1000, 1)}
        self.record_success()
        self._reads += 1
        if self._reads % OVERHEAD_SAMPLE_EVERY == 0:
            events.emit(events.ReadFinished(True, called - started + time.perf_counter() - resumed))
        return value, {"used": True, "source": "zep"}

    # -- outcomes -------------------------------------------------------------------------

    def record_success(self) -> None:
        """Reset the fleet's failure count, but only write when there may be one."""
        now = time.monotonic()
        view = self.watcher.current if self.watcher is not None else None
        if view is not None and now < view.valid_until and now >= view.failures_until:
            return
        if now < self._down_until:
            return
        try:
            self.state.reset_failures()
        except redis.RedisError as exc:
            self._redis_down("reset", exc)

    def record_failure(self, exc: BaseException, thread_id: str | None = None) -> Verdict:
        verdict = classify(exc, zep.last_response())
        error = type(exc).__name__
        if verdict.action is Action.COUNT:
            self._count(verdict, thread_id, error)
            return verdict
        events.emit(events.FailureRecorded(verdict.reason, verdict.action.value, verdict.status,
                                           thread_id, error=error))
        if verdict.action is Action.FORCE:
            hold = self.settings.hold_seconds
            if verdict.hold_seconds is not None:  # a 429's Retry-After, within the cap
                hold = max(1, min(round(verdict.hold_seconds), self.settings.hold_cap_seconds))
            s = self.settings
            quorum = s.quorum_hosts if verdict.reason == "auth" and s.quorum_auth else 0
            try:
                self.state.force(verdict.reason, hold, origin("auto"), auto=True, quorum=quorum)
            except redis.RedisError as err:
                self._redis_down("force", err)
        return verdict

    def _count(self, verdict: Verdict, thread_id: str | None, error: str) -> None:
        count = None
        if time.monotonic() >= self._down_until:
            try:
                count = self.state.record_failure(origin("auto")).fail_count
            except redis.RedisError as exc:
                self._redis_down("count", exc)
        events.emit(events.FailureRecorded(verdict.reason, verdict.action.value, verdict.status,
                                           thread_id, count, error))

    def _redis_down(self, op: str, exc: BaseException) -> None:
        self._down_until = time.monotonic() + REDIS_BACKOFF_S
        events.emit(events.GuardTrouble("redis_error", op, f"{type(exc).__name__}: {exc}"[:200]))
