"""Operator actions (force, clear, status, probe) with their input checks.

Celery's ``celery call`` sends any keyword names and values unchecked, so every entry
point (tasks, command line, flags API) goes through these checks; a refused call raises
``OperatorError`` naming what is wrong and changes nothing.
"""

from __future__ import annotations

from typing import Any

from memguard import runtime
from memguard.guard import origin
from memguard.modes import combine
from memguard.prober import probe_once

MAX_TTL_SECONDS = 86_400
MAX_REASON_LEN = 64
FORCE_KEYS = frozenset({"reason", "ttl_seconds"})


class OperatorError(ValueError):
    """An operator's request was refused; nothing was changed."""


def check_force_args(reason: Any, ttl_seconds: Any) -> tuple[str, int]:
    if not isinstance(reason, str) or not reason.strip():
        raise OperatorError(f"reason must be a non-empty string, got {reason!r}")
    reason = reason.strip()
    if len(reason) > MAX_REASON_LEN:
        raise OperatorError(f"reason must be at most {MAX_REASON_LEN} characters, got {len(reason)}")
    if not reason.isprintable() or not reason.isascii():
        raise OperatorError(f"reason must be printable ASCII, got {reason!r}")
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise OperatorError(f"ttl_seconds must be a whole number of seconds, got {ttl_seconds!r}")
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise OperatorError(f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}, got {ttl_seconds}")
    return reason, ttl_seconds


def check_keys(kwargs: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise OperatorError(f"unknown argument(s) {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(allowed)) or 'none'}")


def force(by: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    check_keys(kwargs, FORCE_KEYS)
    reason, ttl = check_force_args(kwargs.get("reason", "manual_ops"), kwargs.get("ttl_seconds", 600))
    transition = runtime.get().guard.force(reason, ttl, by or origin("ops"), auto=False)
    assert transition is not None and transition.record is not None
    return {"forced": True, **transition.record.as_dict()}


def clear(by: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    check_keys(kwargs, frozenset())
    previous = runtime.get().guard.clear(by or origin("ops"))
    return {"cleared": previous is not None, "previous_reason": previous.reason if previous else None}


def status(**kwargs: Any) -> dict[str, Any]:
    check_keys(kwargs, frozenset())
    rt = runtime.get()
    snap = rt.state.snapshot()
    record = snap.record
    out: dict[str, Any] = {
        "mode": combine(rt.guard.base, record is not None).value,
        "base_mode": rt.guard.base.value,
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


def probe(by: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    check_keys(kwargs, frozenset())
    return probe_once(runtime.get(), by)
