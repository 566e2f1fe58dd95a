"""The request-path guard: block reads while forced, record failures, force on triggers.

The healthy path touches no Redis: the forced flag comes from the watcher's in-process view
and a success only resets the failure counter when the fleet may have one. When Redis
itself is unreachable the guard fails open: reads go on, the caller never sees a Redis
error, and a short local back-off keeps every read from paying a connect timeout.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import redis

from memguard import events
from memguard.classify import Action, Verdict, classify
from memguard.modes import EffectiveMode, base_mode_of, combine
from memguard.settings import Settings
from memguard.state import ForcedRecord, State, Transition
from memguard.watch import Watcher
from memguard.zep import last_status

REDIS_BACKOFF_S = 1.0
OVERHEAD_SAMPLE_EVERY = 16

P = ParamSpec("P")
R = TypeVar("R")
Meta = dict[str, Any]


def origin(via: str, **extra: Any) -> dict[str, Any]:
    """Who changed the state: kept in the record and in the log line."""
    return {"via": via, "host": socket.gethostname(), "pid": os.getpid(), **extra}


class Guard:
    def __init__(self, settings: Settings, state: State, watcher: Watcher | None = None) -> None:
        self.settings = settings
        self.state = state
        self.watcher = watcher
        self.base = base_mode_of(settings)
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
            lapsed = self.state.lapse()
        except redis.RedisError as exc:
            self._redis_down("check", exc)
            return None
        if lapsed is not None:
            events.emit(events.ModeRestored(self.base.value, "lapsed", lapsed.reason, origin("lapse")))
        return None

    def effective_mode(self) -> EffectiveMode:
        return combine(self.base, self.forced() is not None)

    # -- guarded reads --------------------------------------------------------------------

    def call(self, thread_id: str, fn: Callable[..., R], *args: Any, **kwargs: Any) -> tuple[R | None, Meta]:
        """Run one Zep read under the guard; never raises what the read or Redis raised."""
        started = time.perf_counter()
        if self.base is not EffectiveMode.READ_WRITE:
            return None, {"used": False, "source": "read_disabled", "mode": self.base.value}
        record = self.forced()
        if record is not None:
            events.emit(events.ReadBlocked(thread_id, record.reason, record.until))
            return None, {"used": False, "source": "write_only_forced", "reason": record.reason,
                          "until": record.until}
        overhead = time.perf_counter() - started
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            verdict = self.record_failure(exc, thread_id)
            return None, {"used": False, "source": "zep_error", "reason": verdict.reason,
                          "status": verdict.status, "error": type(exc).__name__}
        resumed = time.perf_counter()
        self.record_success()
        self._reads += 1
        if self._reads % OVERHEAD_SAMPLE_EVERY == 0:
            overhead += time.perf_counter() - resumed
            events.emit(events.ReadFinished(True, overhead))
        return value, {"used": True, "source": "zep"}

    def guarded(self, fn: Callable[P, R]) -> Callable[..., tuple[R | None, Meta]]:
        """Decorate an application's own read ``fn(thread_id, ...)``: it returns (value | None, meta)."""

        @functools.wraps(fn)
        def wrapper(thread_id: str, *args: Any, **kwargs: Any) -> tuple[R | None, Meta]:
            return self.call(thread_id, fn, thread_id, *args, **kwargs)

        return wrapper

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
        verdict = classify(exc, last_status())
        error = type(exc).__name__
        if verdict.action is Action.COUNT:
            self._count(verdict, thread_id, error)
            return verdict
        events.emit(events.FailureRecorded(verdict.reason, verdict.action.value, verdict.status,
                                           thread_id, error=error))
        if verdict.action is Action.FORCE:
            self.force(verdict.reason, self.settings.hold_seconds, origin("auto"), auto=True)
        return verdict

    def _count(self, verdict: Verdict, thread_id: str | None, error: str) -> None:
        count = None
        if time.monotonic() >= self._down_until:
            try:
                count = self.count_failure(origin("auto")).fail_count
            except redis.RedisError as exc:
                self._redis_down("count", exc)
        events.emit(events.FailureRecorded(verdict.reason, verdict.action.value, verdict.status,
                                           thread_id, count, error))

    def count_failure(self, by: dict[str, Any]) -> Transition:
        """Count one failure fleet-wide, forcing at the threshold, in one round trip."""
        s = self.settings
        transition = self.state.record_failure(
            window_seconds=s.window_seconds, threshold=s.threshold, hold_seconds=s.hold_seconds,
            by=by, auto=not s.disable_auto_downgrade,
        )
        if transition.repaired:
            events.emit(events.GuardTrouble("corrupt_state", "count", "failure counter was not an integer"))
        if transition.status == "forced":
            self.invalidate_view()
            events.emit(self.forced_event(transition, fail_count=transition.fail_count))
        elif transition.status == "disabled":
            events.emit(events.GuardTrouble("auto_downgrade_disabled", "count",
                                            f"fail_count={transition.fail_count}"))
        return transition

    # -- transitions shared by the request path, the prober and operators ------------------

    def force(self, reason: str, hold_seconds: int, by: dict[str, Any], *, auto: bool) -> Transition | None:
        """Force write_only fleet-wide; automatic triggers respect DISABLE_AUTO_DOWNGRADE."""
        if auto and self.settings.disable_auto_downgrade:
            events.emit(events.GuardTrouble("auto_downgrade_disabled", "force", reason))
            return None
        try:
            transition = self.state.force(reason, hold_seconds, by, auto=auto)
        except redis.RedisError as exc:
            if not auto:
                raise
            self._redis_down("force", exc)
            return None
        self.invalidate_view()
        if transition.status == "forced":
            events.emit(self.forced_event(transition))
        return transition

    def forced_event(self, t: Transition, fail_count: int | None = None) -> events.ModeForced:
        record = t.record
        assert record is not None
        return events.ModeForced(
            prev_mode=combine(self.base, t.previous is not None).value,
            next_mode=combine(self.base, True).value,
            reason=record.reason,
            hold_seconds=record.until - record.forced_at,
            until=record.until,
            holds=record.holds,
            fail_count=fail_count,
            by=record.by,
        )

    def clear(self, by: dict[str, Any], reason: str = "manual_clear") -> ForcedRecord | None:
        previous = self.state.clear()
        self.invalidate_view()
        if previous is not None:
            events.emit(events.ModeRestored(self.base.value, reason, previous.reason, by))
        return previous

    def invalidate_view(self) -> None:
        """Read our own writes: until the watcher re-reads, go to Redis."""
        if self.watcher is not None:
            self.watcher.current = None

    def _redis_down(self, op: str, exc: BaseException) -> None:
        self._down_until = time.monotonic() + REDIS_BACKOFF_S
        events.emit(events.GuardTrouble("redis_error", op, f"{type(exc).__name__}: {exc}"[:200]))
