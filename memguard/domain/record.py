"""The forced record, what a transition did, and one read of the state: plain values.

The reasons are listed here once: metrics create their series from these lists, and the
command line lists them in its help.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

# Reasons memguard itself forces with (an operator may give any other, such as manual_ops).
AUTO_REASONS = ("auth", "consecutive_failures", "latency", "rate_limited", "failure_rate")
DOWNGRADE_REASONS = (*AUTO_REASONS, "probe_failed", "manual_ops")
RESTORE_REASONS = ("probe_success", "manual_clear", "lapsed")
PROBE_RESULTS = ("success", "failed", "lost", "superseded")


class Status(enum.StrEnum):
    """What a transition script did (the first element of its reply)."""

    FORCED = "forced"  # a record was written
    HELD = "held"  # a record already holds (automatic trigger) or the hold has not ended (probe)
    COUNTED = "counted"  # a failure was counted below the threshold
    QUORUM = "quorum"  # a trigger was met, but by fewer hosts than MEMORY_QUORUM_HOSTS
    DISABLED = "disabled"  # the threshold was reached with DISABLE_AUTO_DOWNGRADE set
    CLEARED = "cleared"  # an operator removed the record
    LAPSED = "lapsed"  # an expired hold nobody probed within the grace period was ended
    IDLE = "idle"  # nothing to do: no record
    CORRUPT = "corrupt"  # an unreadable record was found and removed
    CLAIMED = "claimed"  # this prober holds the probe lock
    BUSY = "busy"  # another prober holds it
    LOST = "lost"  # the probe outlived its lock: its result was dropped
    SUPERSEDED = "superseded"  # the record changed during the probe: its result was dropped
    RESTORED = "restored"  # the probe succeeded and the record was removed
    REFORCED = "reforced"  # the probe failed and the fleet holds again

    @property
    def probe_result(self) -> str:
        """The ``result`` label of a finished probe: success, failed, lost or superseded."""
        return {"restored": "success", "reforced": "failed"}.get(self.value, self.value)


class CorruptRecord(ValueError):
    """A memguard key holds a value memguard did not write."""


@dataclass(frozen=True)
class ForcedRecord:
    """The forced-mode record as stored in Redis (times are Redis epoch seconds).

    Records in the original format (``mode``, ``reason``, ``until``, ``forced_at`` only) are
    read as well: the other fields have defaults.
    """

    mode: str
    reason: str
    until: float
    forced_at: float
    lapse_at: float | None
    holds: int
    by: dict[str, Any]
    since: float  # when this run of holds began (a failed probe's re-force keeps it)

    @classmethod
    def parse(cls, raw: str) -> ForcedRecord:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("mode") != "write_only":
                raise CorruptRecord(f"not a write_only record: {raw[:80]!r}")
            until = float(data["until"])
            forced_at = float(data.get("forced_at", until))
            lapse_at = data.get("lapse_at")
            return cls(
                mode="write_only",
                reason=str(data.get("reason", "unknown")),
                until=until,
                forced_at=forced_at,
                lapse_at=None if lapse_at is None else float(lapse_at),
                holds=int(data.get("holds", 1)),
                by=data.get("by") if isinstance(data.get("by"), dict) else {},
                since=float(data.get("since", forced_at)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, CorruptRecord):
                raise
            raise CorruptRecord(f"unreadable forced record: {raw[:80]!r}") from exc

    def lapse_time(self, grace_seconds: float) -> float:
        return self.lapse_at if self.lapse_at is not None else self.until + grace_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "until": self.until,
            "forced_at": self.forced_at,
            "lapse_at": self.lapse_at,
            "holds": self.holds,
            "hold_seconds": round(self.until - self.forced_at, 3),
            "since": self.since,
            "by": self.by,
        }


@dataclass(frozen=True)
class Snapshot:
    """One round trip's read of the state, with the Redis clock then. Plain reads, not one
    atomic step: the version tells a view whether a notice has overtaken it."""

    record: ForcedRecord | None
    corrupt: str | None
    fail_count: int
    fail_ttl_ms: int
    redis_now: float
    probe_heartbeat: float | None = None  # Redis time of the prober's last tick, if recent
    version: int = 0  # of the last notice sent (writes that bypass the scripts do not bump it)
    record_ttl_ms: int = -2  # the record key's own expiry (-1: none), e.g. a hand SET ... EX


@dataclass(frozen=True)
class Transition:
    """What a script did: its status, the record it left and the one it replaced."""

    status: Status
    record: ForcedRecord | None = None
    previous: ForcedRecord | None = None
    fail_count: int = 0
    ident: str = ""


def parse_record(raw: str | None) -> ForcedRecord | None:
    """The record in ``raw``, or None when there is none or it is unreadable."""
    if not raw:
        return None
    try:
        return ForcedRecord.parse(raw)
    except CorruptRecord:
        return None


