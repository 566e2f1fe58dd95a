"""Operator actions (force, clear, status, probe) with their input checks: the one path every
entry point takes (the flags API, the tasks, the command line, Django's command).

Celery's ``celery call`` sends any keyword names and values unchecked, so every action goes
through these checks; a refused call raises ``OperatorError`` naming every problem at once and
changes nothing. Every accepted force and clear, and every refusal, is an ``OperatorAction``
event: the audit trail and the logs hear it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from memguard.config.settings import Settings
from memguard.domain import chaos, events
from memguard.domain.fleet import FleetStatus
from memguard.domain.record import Status, shown
from memguard.ops import audit
from memguard.ops.prober import Probe, probe_once
from memguard.store.state import State

# An operator's force (``memguard.force``, ``memguard force``) holds this long by default;
# the flags API keeps the seed's ``force_write_only(reason, ttl_seconds=300)``.
OPERATOR_HOLD_SECONDS = 600
MAX_TTL_SECONDS = 86_400
MAX_REASON_LEN = 64
FORCE_KEYS = frozenset({"reason", "ttl_seconds", "replace"})
CHAOS_KEYS = frozenset({"fault", "share", "duration", "trip"})
T = TypeVar("T")
Positional = tuple[Any, ...]  # what `celery call -a` sent: always refused, named with the rest


class OperatorError(ValueError):
    """An operator's request was refused; nothing was changed."""

    def __init__(self, *problems: str) -> None:
        # One string argument, so Celery's result backend can rebuild it from its message.
        super().__init__("; ".join(problems))


def force_problems(reason: Any, ttl_seconds: Any, replace: Any = False) -> list[str]:
    """Every problem with a force's arguments (empty when they are good)."""
    problems = []
    if not isinstance(reason, str) or not reason.strip():
        problems.append(f"reason must be a non-empty string, got {shown(reason)}")
    elif len(reason.strip()) > MAX_REASON_LEN:
        problems.append(f"reason must be at most {MAX_REASON_LEN} characters, got {len(reason.strip())}")
    elif not reason.isprintable() or not reason.isascii():
        problems.append(f"reason must be printable ASCII, got {shown(reason)}")
    if replace not in (True, False):
        problems.append(f"replace must be true or false, got {shown(replace)}")
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        problems.append(f"ttl_seconds must be a whole number of seconds, got {shown(ttl_seconds)}")
    elif not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        problems.append(f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}, got {ttl_seconds}")
    return problems


def key_problems(kwargs: dict[str, Any], allowed: frozenset[str]) -> list[str]:
    unknown = sorted(shown(k, 40) if not isinstance(k, str) or len(k) > 40 else k
                     for k in list(set(kwargs) - allowed)[:10])
    if not unknown:
        return []
    # Every action also takes ``guard`` (the tasks and the CLI choose the guard before the action).
    return [f"unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed | {'guard'}))}"]


def _parsed(kwargs: dict[str, Any], name: str, parse: Callable[[Any], T], problems: list[str]) -> T | None:
    """``kwargs[name]`` parsed, or None with the problem added."""
    if name not in kwargs:
        problems.append(f"{name} is required")
        return None
    try:
        return parse(kwargs[name])
    except ValueError as exc:
        problems.append(str(exc))
        return None


class Operations:
    """force, clear, status and probe for one process, each checked, evented and audited."""

    def __init__(self, state: State, settings: Settings, hooks: events.Hooks,
                 default_probe: Callable[[], Probe]) -> None:
        self.state = state
        self.settings = settings
        self.hooks = hooks
        self.default_probe = default_probe  # memguard's own Zep read, built when first needed

    def force(self, by: dict[str, Any], positional: Positional = (), **kwargs: Any) -> dict[str, Any]:
        reason = kwargs.get("reason", "manual_ops")
        ttl = kwargs.get("ttl_seconds", OPERATOR_HOLD_SECONDS)
        replace = kwargs.get("replace", False)
        problems = key_problems(kwargs, FORCE_KEYS) + force_problems(reason, ttl, replace)
        self._accept("force", by, kwargs, problems, positional)
        t = self.state.force(reason.strip(), ttl, by, auto=False, replace=replace is True)
        assert t.record is not None
        if t.status is Status.KEPT:  # the answer says the longer hold stays, and how to shorten it
            return {"forced": False, "kept": True, **t.record.as_dict()}
        return {"forced": True, "kept": False, "chaos_ended": t.chaos_ended, **t.record.as_dict()}

    def clear(self, by: dict[str, Any], positional: Positional = (), **kwargs: Any) -> dict[str, Any]:
        """End the hold: reads return through the recovery ramp, or (``ramp=False``) at once,
        which also ends a ramp in progress."""
        ramp = kwargs.get("ramp", True)
        problems = key_problems(kwargs, frozenset({"ramp"}))
        if ramp not in (True, False):
            problems.append(f"ramp must be true or false, got {shown(ramp)}")
        self._accept("clear", by, kwargs, problems, positional)
        t = self.state.clear(by, ramp=ramp is True)
        return {"cleared": t.previous is not None,
                "previous_reason": t.previous.reason if t.previous else None,
                "ramp_seconds": t.ramp.seconds if t.ramp else 0,
                "ramp_ended": t.previous is None and t.status is Status.CLEARED,
                "chaos_ended": t.chaos_ended}

    def chaos_start(self, by: dict[str, Any], positional: Positional = (), **kwargs: Any) -> dict[str, Any]:
        """Start a game day's experiment (``memguard.domain.chaos``): kwargs fault, share (30% or
        30), duration (90s, 10m, 1h), trip (false: injected faults do not count toward a trip)."""
        problems = key_problems(kwargs, CHAOS_KEYS)
        fault = _parsed(kwargs, "fault", chaos.parse_fault, problems)
        share = _parsed(kwargs, "share", chaos.parse_share, problems)
        seconds = _parsed(kwargs, "duration", chaos.parse_duration, problems)
        if kwargs.get("trip", False) not in (True, False):
            problems.append(f"trip must be true or false, got {shown(kwargs['trip'])}")
        self._accept("chaos_start", by, kwargs, problems, positional)
        assert fault is not None and share is not None and seconds is not None
        started = self.state.chaos_start(fault.text, share, seconds, kwargs.get("trip") is True, by)
        return {"started": True, **started.as_dict(started.start)}

    def chaos_stop(self, by: dict[str, Any], positional: Positional = (), **kwargs: Any) -> dict[str, Any]:
        """End the experiment in every process now."""
        self._accept("chaos_stop", by, kwargs, key_problems(kwargs, frozenset()), positional)
        stopped = self.state.chaos_stop(by)
        return {"stopped": stopped is not None, **({} if stopped is None else {
            "id": stopped.id, "fault": stopped.fault.text, "share_percent": stopped.percent})}

    def status(self, by: dict[str, Any], positional: Positional = (), **kwargs: Any) -> dict[str, Any]:
        self._accept("status", by, kwargs, key_problems(kwargs, frozenset()), positional)
        snap = self.state.snapshot()
        fleet = FleetStatus.of(snap, self.state.base, self.settings.probe_grace_seconds)
        age = fleet.prober_age
        out: dict[str, Any] = {
            "mode": fleet.mode.value,
            "base_mode": self.state.base.value,
            "forced": fleet.forced,
            "fail_count": fleet.fail_count,
            "threshold": self.settings.threshold,
            "redis_time": fleet.redis_now,
            "prober_seen_seconds_ago": None if age is None else round(age, 1),
            # memguard processes whose view follows this server (the change channel's subscribers)
            "watchers": snap.fleet,
            "last_operator_action": audit.last_operator_action(self.state.plain, self.state.keys.audit),
        }
        if fleet.ramp is not None and fleet.record is None:
            out["ramp"] = fleet.ramp.as_dict(fleet.redis_now)
        if fleet.chaos is not None:
            out["chaos"] = fleet.chaos.as_dict(fleet.redis_now)
        problems = [snap.corrupt] if snap.corrupt is not None else []
        audit_type = self.state.plain.kind(self.state.keys.audit)
        if audit_type not in ("none", "stream"):
            problems.append(f"{self.state.keys.audit} holds a {audit_type}, not a stream")
        if problems:
            out["state_problems"] = "; ".join(problems)
            self.hooks.emit(events.GuardTrouble("corrupt_state", "status", out["state_problems"]))
        record = fleet.record
        if record is not None:
            out.update(
                reason=record.reason,
                until=record.until,
                forced_at=record.forced_at,
                seconds_left=round(fleet.seconds_left, 1),
                phase=fleet.phase,
                lapses_in=round(fleet.lapses_in, 1),
                holds=fleet.holds,
                hold_seconds=round(fleet.hold_seconds, 3),
                next_probe_at=record.until,
                by=record.by,
            )
        return out

    def summary(self) -> dict[str, Any]:
        """One guard's state in a line's worth of fields (``memguard guards``, ``status --all``):
        a read-only snapshot, not an operator action."""
        fleet = FleetStatus.of(self.state.snapshot(), self.state.base, self.settings.probe_grace_seconds)
        state = "forced" if fleet.forced else "recovering" if fleet.ramp is not None else \
            "counting" if fleet.fail_count else "healthy"
        out: dict[str, Any] = {"state": state, "mode": fleet.mode.value, "fail_count": fleet.fail_count}
        if fleet.record is not None:
            out.update(reason=fleet.record.reason, until=fleet.record.until, holds=fleet.holds)
        elif fleet.ramp is not None:
            out.update(share_percent=round(fleet.ramp_share * 100, 1), until=fleet.ramp.end)
        if fleet.chaos is not None:
            out["chaos"] = fleet.chaos.as_dict(fleet.redis_now)
        return out

    def probe(self, by: dict[str, Any], probe: Probe | None = None, positional: Positional = (),
              **kwargs: Any) -> dict[str, Any]:
        """Probe now if a hold has expired. Only beat's ticks (``scheduled=True``, set by its entry)
        renew the prober's heartbeat: a manual probe is reported as manual, not as the beat."""
        problems = key_problems(kwargs, frozenset({"scheduled"}))
        if kwargs.get("scheduled", False) not in (True, False):
            problems.append(f"scheduled must be true or false, got {shown(kwargs['scheduled'])}")
        self._accept("probe", by, kwargs, problems, positional)
        scheduled = kwargs.get("scheduled") is True
        result = probe_once(self.state, self.settings, probe or self.default_probe(), by, scheduled=scheduled)
        return {**result, "manual": not scheduled}

    def _accept(self, action: str, by: dict[str, Any], kwargs: dict[str, Any], problems: list[str],
                positional: Positional = ()) -> None:
        """Refuse with every problem named (and recorded with who asked), or record the acceptance."""
        if positional:
            problems = [f"positional arguments are not accepted, got {shown(list(positional))}; use --kwargs",
                        *problems]
        event = events.OperatorAction(action, not problems, tuple(problems), by, dict(kwargs))
        if problems:
            self.hooks.emit(event)
            raise OperatorError(*problems)
        if action != "probe":  # beat's ticks are not operator actions; their results are recorded
            self.hooks.emit(event)
