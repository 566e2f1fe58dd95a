"""The forced record, what a transition did, and one read of the state: plain values.

The reasons are listed here once: metrics create their series from these lists, and the
command line lists them in its help.

The validity rule of a record is here and, word for word, in the scripts' prelude
(``store/lua/prelude.lua``, ``decode``): a JSON object with ``mode`` "write_only", a finite
number ``until`` at most ``LONGEST_AHEAD_S`` ahead of the Redis clock, and optional fields of
their own types (``null`` counts as absent): numbers finite, ``holds`` a whole number >= 1,
``reason`` and ``trigger`` strings of at most ``MAX_REASON_BYTES``, ``by`` an object, ``id`` a
string.
Anything else is no record: reads fail open, status names the problem, and the next transition
replaces it.
"""

from __future__ import annotations

import enum
import json
import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard, TypeVar

# The longest hold memguard writes (a day: the operators' and the backoff cap's limit), plus
# clock skew between hosts. A record ending later was not written by memguard.
T = TypeVar("T")
LONGEST_AHEAD_S = 86_400 + 5
MAX_REASON_BYTES = 200  # UTF-8; longer than any reason memguard or an operator may give
_NUMBERS = ("forced_at", "lapse_at", "since", "hold_seconds")

# Reasons memguard itself forces with (an operator may give any other, such as manual_ops).
AUTO_REASONS = ("auth", "consecutive_failures", "latency", "rate_limited", "failure_rate")
# ramp_failed: a trip during a recovery ramp (memguard.domain.ramp); the record's ``trigger`` says which.
DOWNGRADE_REASONS = (*AUTO_REASONS, "probe_failed", "ramp_failed", "manual_ops")
# What memory_zep_downgrades_total counts: automatic downgrades only (an operator's force is
# counted by memory_operator_actions_total, so a planned force pages nothing).
AUTOMATIC_DOWNGRADES = (*AUTO_REASONS, "probe_failed", "ramp_failed")
RESTORE_REASONS = ("probe_success", "manual_clear", "lapsed")
PROBE_RESULTS = ("success", "failed", "lost", "superseded")


class Status(enum.StrEnum):
    """What a transition script did (the first element of its reply)."""

    FORCED = "forced"  # a record was written
    HELD = "held"  # a record already holds (automatic trigger) or the hold has not ended (probe)
    KEPT = "kept"  # an operator's force left a longer hold in place (no replace asked)
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


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def shown(value: Any, limit: int = 60) -> str:
    """A value as an operator may see it: its repr, cut to ``limit`` characters, in time that
    does not grow with the value (a 1 MB string or a list of a million items)."""
    text = repr(value[: limit + 1]) if isinstance(value, str | bytes) else _REPR.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def valid(raw: str, now: float | None, rule: Callable[[Any, float | None], str | None]) -> Any:
    """``raw`` decoded as the scripts' cjson reads it (text holding a lone surrogate escape,
    which cjson refuses, is no JSON either) and held to ``rule``. Raises ``CorruptRecord``
    saying what is wrong."""
    try:
        data = json.loads(raw)
        json.dumps(data, ensure_ascii=False).encode()  # UnicodeEncodeError on a lone surrogate
    except (ValueError, TypeError, RecursionError):
        raise CorruptRecord(f"not JSON: {shown(raw)}") from None
    problem = rule(data, now)
    if problem is not None:
        raise CorruptRecord(problem)
    return data


def optional_problem(data: dict[str, Any], numbers: tuple[str, ...], texts: tuple[str, ...]) -> str | None:
    """The optional fields both records share the rule for (``null`` counts as absent): finite
    ``numbers``, ``holds`` a whole number >= 1, ``texts`` of at most ``MAX_REASON_BYTES``."""
    for name in numbers:
        if data.get(name) is not None and not finite(data[name]):
            return f"{name} is not a finite number: {shown(data[name])}"
    holds = data.get("holds")
    if holds is not None and not (finite(holds) and holds >= 1 and holds == int(holds)):
        return f"holds is not a whole number >= 1: {shown(holds)}"
    for name in texts:
        text = data.get(name)
        if text is not None and not (isinstance(text, str)
                                     and len(text.encode("utf-8", "surrogatepass")) <= MAX_REASON_BYTES):
            return f"{name} is not a string of at most {MAX_REASON_BYTES} bytes: {shown(text)}"
    return None


def record_problem(data: Any, now: float | None) -> str | None:
    """Why ``data`` (a decoded record) is not valid, or None. ``now``: the Redis clock, for the
    ``until`` bound (None for a record a script has just written)."""
    if not isinstance(data, dict):
        return f"not a JSON object: {shown(data)}"
    if data.get("mode") != "write_only":
        return f"mode is not 'write_only': {shown(data.get('mode'))}"
    until = data.get("until")
    if not finite(until):
        return f"until is not a finite number: {shown(until)}"
    if now is not None and isinstance(until, int | float) and until > now + LONGEST_AHEAD_S:
        return f"until is {until - now:.0f} s ahead, past the longest hold ({LONGEST_AHEAD_S} s)"
    problem = optional_problem(data, _NUMBERS, ("reason", "trigger"))
    if problem is not None:
        return problem
    # An empty array passes as an empty object: Lua's cjson cannot tell the two apart.
    if data.get("by") is not None and not (isinstance(data["by"], dict) or data["by"] == []):
        return f"by is not an object: {shown(data['by'])}"
    if data.get("id") is not None and not isinstance(data["id"], str):
        return f"id is not a string: {shown(data['id'])}"
    return None


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
    trigger: str | None = None  # a ramp_failed record's triggering reason

    @classmethod
    def parse(cls, raw: str, now: float | None = None) -> ForcedRecord:
        """The record in ``raw``; raises ``CorruptRecord`` saying what is wrong."""
        data = valid(raw, now, record_problem)
        until = float(data["until"])
        forced_at = float(data.get("forced_at") if data.get("forced_at") is not None else until)
        lapse_at = data.get("lapse_at")
        return cls(
            mode="write_only",
            reason=data.get("reason") or "unknown",
            until=until,
            forced_at=forced_at,
            lapse_at=None if lapse_at is None else float(lapse_at),
            holds=int(data.get("holds") or 1),
            by=data.get("by") or {},
            since=float(data.get("since") if data.get("since") is not None else forced_at),
            trigger=data.get("trigger"),
        )

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
            **({"trigger": self.trigger} if self.trigger else {}),
        }


def parsed_or_none(parse: Callable[[str, float | None], T], raw: str | None, now: float | None) -> T | None:
    """``parse(raw, now)``, or None when there is no ``raw`` or it is not valid (``CorruptRecord``)."""
    if not raw:
        return None
    try:
        return parse(raw, now)
    except CorruptRecord:
        return None


def parse_record(raw: str | None, now: float | None = None) -> ForcedRecord | None:
    """The record in ``raw``, or None when there is none or it is not valid."""
    return parsed_or_none(ForcedRecord.parse, raw, now)


