"""Operator actions (force, clear, status, probe) with their input checks.

Celery's ``celery call`` sends any keyword names and values unchecked, so every operator
entry point (tasks, command line) goes through these checks; a refused call raises
``OperatorError`` naming every problem at once and changes nothing.
"""

from __future__ import annotations

from typing import Any

from memguard import audit, events, runtime
from memguard.guard import origin
from memguard.prober import Probe, probe_once

# An operator's force (``memguard.force``, ``memguard force``) holds this long by default.
# The flags API keeps the seed's ``force_write_only(reason, ttl_seconds=300)``.
OPERATOR_HOLD_SECONDS = 600
MAX_TTL_SECONDS = 86_400
MAX_REASON_LEN = 64
FORCE_KEYS = frozenset({"reason", "ttl_seconds"})
Positional = tuple[Any, ...]  # what `celery call -a` sent: always refused, named with the rest


class OperatorError(ValueError):
    """An operator's request was refused; nothing was changed."""

    def __init__(self, *problems: str) -> None:
        # One string argument, so Celery's result backend can rebuild it from its message.
        super().__init__("; ".join(problems))


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


def _accept(action: str, by: dict[str, Any] | None, kwargs: dict[str, Any], problems: list[str],
            positional: Positional = ()) -> None:
    """Refuse with every problem named (and recorded with who asked), or record the acceptance."""
    runtime.get()  # the audit trail and the logs hear the outcome
    if positional:
        problems = [f"positional arguments are not accepted, got {list(positional)!r}; use --kwargs",
                    *problems]
    event = events.OperatorAction(action, not problems, tuple(problems), by, dict(kwargs))
    if problems:
        events.emit(event)
        raise OperatorError(*problems)
    if action != "probe":  # beat's ticks are not operator actions; their results are recorded
        events.emit(event)


def force(by: dict[str, Any] | None = None, positional: Positional = (), **kwargs: Any) -> dict[str, Any]:
    by = by or origin("ops")
    reason = kwargs.get("reason", "manual_ops")
    ttl = kwargs.get("ttl_seconds", OPERATOR_HOLD_SECONDS)
    _accept("force", by, kwargs, key_problems(kwargs, FORCE_KEYS) + force_problems(reason, ttl), positional)
    t = runtime.get().state.force(reason.strip(), ttl, by, auto=False)
    assert t.record is not None
    return {"forced": True, **t.record.as_dict()}


def clear(by: dict[str, Any] | None = None, positional: Positional = (), **kwargs: Any) -> dict[str, Any]:
    by = by or origin("ops")
    _accept("clear", by, kwargs, key_problems(kwargs, frozenset()), positional)
    t = runtime.get().state.clear(by)
    return {"cleared": t.previous is not None,
            "previous_reason": t.previous.reason if t.previous else None}


def status(by: dict[str, Any] | None = None, positional: Positional = (), **kwargs: Any) -> dict[str, Any]:
    _accept("status", by, kwargs, key_problems(kwargs, frozenset()), positional)
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
        "prober_seen_seconds_ago": None if snap.probe_heartbeat is None
        else round(max(0.0, snap.redis_now - snap.probe_heartbeat), 1),
        "last_operator_action": audit.last_operator_action(rt.state.client, key=rt.state.keys.audit),
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
            hold_seconds=round(record.until - record.forced_at, 3),
            next_probe_at=record.until,
            by=record.by,
        )
    return out


def probe(by: dict[str, Any] | None = None, probe: Probe | None = None, positional: Positional = (),
          **kwargs: Any) -> dict[str, Any]:
    _accept("probe", by, kwargs, key_problems(kwargs, frozenset()), positional)
    return probe_once(runtime.get(), by, probe)
