"""The fleet's status from one snapshot: the arithmetic the status command, the metrics and
the notifications all show, written once so that they cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass

from memguard.domain.chaos import Chaos
from memguard.domain.modes import EffectiveMode, combine
from memguard.domain.ramp import Ramp
from memguard.domain.record import ForcedRecord
from memguard.domain.snapshot import Snapshot


@dataclass(frozen=True)
class FleetStatus:
    """What a snapshot means at its own Redis time (all durations in seconds, never negative)."""

    mode: EffectiveMode
    record: ForcedRecord | None
    redis_now: float
    fail_count: int
    probe_heartbeat: float | None
    grace_seconds: float
    ramp: Ramp | None = None  # a recovery ramp still running (None once it has run its course)
    chaos: Chaos | None = None  # a game day's experiment still running

    @classmethod
    def of(cls, snap: Snapshot, base: EffectiveMode, grace_seconds: float) -> FleetStatus:
        ramp = snap.ramp if snap.ramp is not None and snap.redis_now < snap.ramp.end else None
        chaos = snap.chaos if snap.chaos is not None and snap.redis_now < snap.chaos.end else None
        return cls(combine(base, snap.record is not None), snap.record, snap.redis_now, snap.fail_count,
                   snap.probe_heartbeat, grace_seconds, ramp, chaos)

    @property
    def ramp_share(self) -> float:
        """The share of conversations the ramp admits now: 1 with no ramp running, 0 while forced."""
        if self.record is not None:
            return 0.0
        return self.ramp.share(self.redis_now) if self.ramp is not None else 1.0

    @property
    def forced(self) -> bool:
        return self.record is not None

    @property
    def hold_seconds(self) -> float:
        """The current hold's length (0 when not forced)."""
        return self.record.until - self.record.forced_at if self.record else 0.0

    @property
    def holds(self) -> int:
        """Holds in a row (1 + failed probes); 0 when not forced."""
        return self.record.holds if self.record else 0

    @property
    def seconds_left(self) -> float:
        """Left in the hold (0 when not forced or awaiting the probe)."""
        return max(0.0, self.record.until - self.redis_now) if self.record else 0.0

    @property
    def expired_seconds(self) -> float:
        """Since the hold ended without a probe result (0 when held or not forced)."""
        return max(0.0, self.redis_now - self.record.until) if self.record else 0.0

    @property
    def phase(self) -> str | None:
        """``held`` until the hold ends, then ``awaiting_probe``; None when not forced."""
        if self.record is None:
            return None
        return "held" if self.redis_now < self.record.until else "awaiting_probe"

    @property
    def lapses_in(self) -> float:
        """Until the record lapses if no probe acts (0 when not forced)."""
        if self.record is None:
            return 0.0
        return max(0.0, self.record.lapse_time(self.grace_seconds) - self.redis_now)

    @property
    def stuck_seconds(self) -> float:
        """How long this run of holds has lasted (failed probes keep ``since``)."""
        return max(0.0, self.redis_now - self.record.since) if self.record else 0.0

    @property
    def prober_age(self) -> float | None:
        """Seconds since the prober's last tick; None when no prober ticked recently."""
        if self.probe_heartbeat is None:
            return None
        return max(0.0, self.redis_now - self.probe_heartbeat)
