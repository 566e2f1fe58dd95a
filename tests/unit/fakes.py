"""A fake at the store boundary: the guard's decisions run against it without Redis.

Its steps are generators that yield nothing: they record the call and return (or raise) what
the test set, the way ``State``'s steps return what the Lua scripts replied.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from memguard.domain.chaos import Chaos, LocalChaos, parse_fault
from memguard.domain.modes import EffectiveMode, combine
from memguard.domain.ramp import LocalRamp, Ramp
from memguard.domain.record import ForcedRecord, Status
from memguard.domain.snapshot import Snapshot, Transition
from memguard.request.watch import View
from memguard.store.steps import Step, Steps


def record(reason: str = "manual_ops", left_s: float = 60.0, lapse_in_s: float | None = None) -> ForcedRecord:
    now = time.time()
    lapse_at = None if lapse_in_s is None else now + lapse_in_s
    return ForcedRecord("write_only", reason, now + left_s, now, lapse_at, 1, {"via": "test"}, now)


class FakeStore:
    def __init__(self, base: EffectiveMode = EffectiveMode.READ_WRITE, *,
                 snapshot_record: ForcedRecord | None = None, down: bool = False, count: int = 1,
                 faults: dict[str, Exception] | None = None) -> None:
        self.base = base
        self.snapshot_record = snapshot_record
        self.down = down
        self.count = count
        self.faults = faults or {}  # step name -> what it raises: a bug, an unexpected reply
        self.calls: list[tuple[Any, ...]] = []

    def mode(self, record: ForcedRecord | None) -> EffectiveMode:
        return combine(self.base, record is not None)

    def perform(self, step: Step) -> Any:
        raise AssertionError(f"the fake's steps never yield, got {step!r}")

    async def aperform(self, step: Step) -> Any:
        raise AssertionError(f"the fake's steps never yield, got {step!r}")

    def _answer(self, call: tuple[Any, ...], result: Any) -> Any:
        self.calls.append(call)
        if call[0] in self.faults:
            raise self.faults[call[0]]
        if self.down:
            raise redis.ConnectionError("the fake store is down")
        return result

    def snapshot_steps(self) -> Steps[Snapshot]:
        snap = Snapshot(self.snapshot_record, None, 0, -2, time.time())
        return self._answer(("snapshot",), snap)
        yield  # a generator, like the real steps

    def lapse_steps(self, by: dict[str, Any]) -> Steps[Transition]:
        return self._answer(("lapse",), Transition(Status.LAPSED, previous=self.snapshot_record))
        yield

    def reset_failures_steps(self) -> Steps[bool]:
        return self._answer(("reset",), True)
        yield

    def record_failure_steps(self, by: dict[str, Any]) -> Steps[Transition]:
        return self._answer(("count",), Transition(Status.COUNTED, fail_count=self.count))
        yield

    def force_steps(self, reason: str, hold_seconds: int, by: dict[str, Any], *, auto: bool,
                    quorum: int = 0) -> Steps[Transition]:
        call = ("force", reason, hold_seconds, auto, quorum)
        return self._answer(call, Transition(Status.FORCED, record=record(reason, hold_seconds)))
        yield

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


class FakeView:
    """The watcher's view: ``current`` is what it can say now (None: nothing)."""

    def __init__(self, record: ForcedRecord | None = None, *, valid_s: float = 60.0,
                 failures_for_s: float = 0.0, ramp: LocalRamp | None = None,
                 chaos: LocalChaos | None = None) -> None:
        now = time.monotonic()
        failures_until = now + failures_for_s if failures_for_s else 0.0
        self.current: View | None = View(record, now + valid_s, failures_until, ramp, chaos)


def ramp(seconds: float = 30.0, elapsed: float = 0.0, min_percent: float = 10.0, aggression: float = 1.0,
         ramp_id: str = "r1") -> Ramp:
    """A ramp record that started ``elapsed`` seconds ago (on this machine's clock)."""
    return Ramp(ramp_id, time.time() - elapsed, seconds, min_percent, aggression, 1, time.time() - 600,
                "probe_success", "auth")


def local_ramp(**kw: Any) -> LocalRamp:
    r = ramp(**kw)
    return LocalRamp.at(r, time.time(), time.monotonic())


def local_chaos(fault: str = "error:503", percent: float = 30.0, seconds: float = 600.0, elapsed: float = 0.0,
                trip: bool = False, chaos_id: str = "c1") -> LocalChaos:
    """An experiment that started ``elapsed`` seconds ago (on this machine's clock)."""
    c = Chaos(chaos_id, parse_fault(fault), percent, time.time() - elapsed, seconds, trip, {"via": "test"})
    return LocalChaos.at(c, time.time(), time.monotonic())


class FakeMeter:
    def __init__(self) -> None:
        self.reads: list[tuple[float, bool]] = []

    def record(self, seconds: float, failed: bool) -> None:
        self.reads.append((seconds, failed))
