"""Operator actions (force, clear, status, probe) with their input checks.

Celery's ``celery call`` sends any keyword names and values unchecked, so every operator
entry point (tasks, command line) goes through these checks; a refused call raises
``OperatorError`` naming every problem at once and changes nothing.
"""

from __future__ import annotations

from typing import Any

from memguard import runtime
from memguard.guard import origin
from memguard.prober import Probe, probe_once

# An operator's force (``memguard.force``, ``memguard force``) holds this long by default.
# The flags API keeps the seed's ``force_write_only(reason, ttl_seconds=300)``.
OPERATOR_HOLD_SECONDS = 600
MAX_TTL_SECONDS = 86_400
MAX_REASON_LEN = 64
FORCE_KEYS = frozenset({"reason", "ttl_seconds"})


class OperatorError(ValueError):
    """An operator's request was refused; nothing was changed."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def force_problems(reason: Any, ttl_seconds: Any) -> list[str]:
    """Every problem with a force's arguments (empty when they are good)."""
    problems = []
    if not isinstance(reason, str) or not reason.strip():
        problems.append(f"reason must be a non-empty string, got {reason!r}")
    elif len(reason.strip()) > MAX_REASON_LEN:
        problems.append(f"reason must be at most {MAX_REASON_LEN} characters, got {len(reason.strip())}")
    elif not reason.isprintable() or not reason.isascii():
        problems.append(f"reason must be printable ASCII, got {reason!r}")
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        problems.append(f"ttl_seconds must be a whole number of seconds, got {ttl_seconds!r}")
    elif not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        problems.append(f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}, got {ttl_seconds}")
    return problems


def check_force_args(reason: Any, ttl_seconds: Any) -> tuple[str, int]:
    problems = force_problems(reason, ttl_seconds)
    if problems:
        raise OperatorError(*problems)
    return reason.strip(), ttl_seconds


def key_problems(kwargs: dict[str, Any], allowed: frozenset[str]) -> list[str]:
    unknown = sorted(set(kwargs) - allowed)
    if not unknown:
        return []
    return [f"unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed)) or 'none'}"]


def check_keys(kwargs: dict[str, Any], allowed: frozenset[str]) -> None:
    problems = key_problems(kwargs, allowed)
    if problems:
        raise OperatorError(*problems)


def force(by: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    reason = kwargs.get("reason", "manual_ops")
    ttl = kwargs.get("ttl_seconds", OPERATOR_HOLD_SECONDS)
    problems = key_problems(kwargs, FORCE_KEYS) + force_problems(reason, ttl)
    if problems:
        raise OperatorError(*problems)
    t = runtime.get().state.force(reason.strip(), ttl, by or origin("ops"), auto=False)
    assert t.record is not None
    return {"forced": True, **t.record.as_dict()}


def clear(by: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    check_keys(kwargs, frozenset())
    t = runtime.get().state.clear(by or origin("ops"))
    return {"cleared": t.previous is not None,
            "previous_reason": t.previous.reason if t.previous else None}


def status(by: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    check_keys(kwargs, frozenset())
    rt = runtime.get()
    snap = rt.state.snapshot()
    record = snap.record
    out: dict[str, Any] = {
        "mode": rt.state.mode(record).value,
        "base_mode": rt.state.base.value,
        "forced": record is not None,
        "fail_count": snap.fail_count,
        "threshold": rt.settings.threshold,
        "redis_time": snap.redis_now,
    }
    if snap.corrupt is not None:
        out["corrupt_record"] = snap.corrupt[:120]
    if record is not None:
        lapse = record.lapse_time(rt.settings.probe_grace_seconds)
        out.update(
            reason=record.reason,
            until=record.until,
            forced_at=record.forced_at,
            seconds_left=round(max(0.0, record.until - snap.redis_now), 1),
            phase="held" if snap.redis_now < record.until else "awaiting_probe",
            lapses_in=round(max(0.0, lapse - snap.redis_now), 1),
            holds=record.holds,
            by=record.by,
        )
    return out


def probe(by: dict[str, Any] | None = None, probe: Probe | None = None, **kwargs: Any) -> dict[str, Any]:
    check_keys(kwargs, frozenset())
    return probe_once(runtime.get(), by, probe)
