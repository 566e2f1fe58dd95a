"""The audit trail: every transition, probe result and operator action, in a capped Redis stream.

A subscriber like metrics and logs (``AuditTrail.on_event``): it turns events into stream
entries (``mem:audit``, about the last 10,000 kept). Entry ids carry the Redis clock, so the
trail is in one order fleet-wide. ``memguard history`` reads it; an operator sees there within
a second whether a ``celery call`` was accepted or refused, with no result backend needed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import redis

from memguard.domain import events
from memguard.domain.words import by_text, duration, iso
from memguard.store.plain import Plain

AUDIT_MAXLEN = 10_000
# What ended an experiment early (``ChaosChanged.ended_by``), as a person reads it.
ENDED_BY = {"chaos_stop": "memguard chaos stop", "force": "an operator's force",
            "clear": "an operator's clear", "chaos_start": "a new experiment"}
RECORDED = (events.ModeForced, events.ModeRestored, events.RampCompleted, events.ProbeFinished,
            events.OperatorAction, events.ChaosChanged)


def entry(event: events.Event) -> dict[str, str] | None:
    """The stream fields for an event, or None for events the trail does not keep."""
    if isinstance(event, events.ModeForced):
        fields: dict[str, Any] = {"event": "forced", "reason": event.reason, "prev_mode": event.prev_mode,
                                  "until": event.until, "hold_seconds": event.hold_seconds,
                                  "holds": event.holds, "by": event.by, "trigger": event.trigger}
    elif isinstance(event, events.ModeRestored):
        fields = {"event": event.reason if event.reason != "probe_success" else "restored",
                  "reason": event.reason, "previous_reason": event.previous_reason, "by": event.by,
                  "ramp_seconds": event.ramp_seconds or None}
    elif isinstance(event, events.RampCompleted):
        fields = {"event": "ramp_completed", "previous_reason": event.previous_reason, "holds": event.holds,
                  "ramp_seconds": event.seconds}
    elif isinstance(event, events.ProbeFinished):
        fields = {"event": "probe", "result": event.result,
                  "duration_ms": round(event.duration_seconds * 1000, 1), "error": event.error}
    elif isinstance(event, events.ChaosChanged):
        fields = {"event": f"chaos_{event.change}", "fault": event.fault, "percent": event.percent,
                  "seconds": event.seconds, "experiment": event.experiment, "by": event.by,
                  "ended_by": event.ended_by or None}
    elif isinstance(event, events.OperatorAction):
        if event.accepted and event.action == "status":
            return None  # reading is not an action worth a trail entry
        fields = {"event": "operator", "action": event.action,
                  "outcome": "accepted" if event.accepted else "refused",
                  "errors": list(event.errors), "arguments": event.arguments, "by": event.by}
    else:
        return None
    return {k: v if isinstance(v, str) else json.dumps(v, default=str)
            for k, v in fields.items() if v is not None}


class AuditTrail:
    """Appends the events worth keeping to the stream at ``key``; a named guard's to its own
    stream (``key_of(guard)``), with a ``guard`` field."""

    def __init__(self, plain: Plain, key: str, hooks: events.Hooks,
                 key_of: Callable[[str], str] | None = None) -> None:
        self.plain = plain
        self.key = key
        self.hooks = hooks
        self.key_of = key_of

    def on_event(self, event: events.Event) -> None:
        if not isinstance(event, RECORDED):
            return
        fields = entry(event)
        if fields is None:
            return
        key = self.key
        if event.named:
            if self.key_of is None:
                return
            key = self.key_of(event.guard)
            fields = {"guard": event.guard, **fields}
        self._add(key, fields)

    def _add(self, key: str, fields: dict[str, str]) -> None:
        stream_fields: dict[Any, Any] = dict(fields)
        try:
            self.plain.append(key, stream_fields, AUDIT_MAXLEN)
        except redis.ResponseError as exc:  # a value memguard did not write (WRONGTYPE): replace it
            self.hooks.emit(events.GuardTrouble("corrupt_state", "audit", f"{key}: {exc}"[:200]))
            with contextlib.suppress(redis.RedisError):
                self.plain.remove(key)
                self.plain.append(key, stream_fields, AUDIT_MAXLEN)
        except redis.RedisError as exc:
            self.hooks.emit(events.GuardTrouble("redis_error", "audit", f"{type(exc).__name__}: {exc}"[:200]))


def history(source: Plain | redis.Redis, key: str, count: int = 20) -> list[dict[str, Any]]:
    """The newest ``count`` entries, oldest first, with their Redis time, from the store (or a
    client of its own that decodes responses: the soak and the tests). A key that is not a
    stream reads as no entries: the next recorded event replaces it."""
    try:
        rows: list[tuple[str, dict[str, str]]] = source.newest(key, count) if isinstance(source, Plain) \
            else source.xrevrange(key, count=count)  # type: ignore[assignment]
    except redis.ResponseError:
        return []
    out = []
    for entry_id, fields in reversed(rows):
        item: dict[str, Any] = {"id": entry_id, "time": int(entry_id.split("-")[0]) / 1000.0}
        for k, v in fields.items():
            try:
                item[k] = json.loads(v)
            except ValueError:
                item[k] = v
        out.append(item)
    return out


def last_operator_action(source: Plain | redis.Redis, key: str, scan: int = 500) -> dict[str, Any] | None:
    """The newest operator entry among the last ``scan`` entries."""
    for item in reversed(history(source, key, scan)):
        if item.get("event") == "operator":
            return item
    return None


def describe(item: dict[str, Any]) -> str:
    """One line for a person."""
    stamp = iso(item["time"])
    who = f" by {by_text(item.get('by'))}" if item.get("by") else ""
    kind = item.get("event")
    if kind == "operator":
        errors = "; ".join(item.get("errors") or [])
        what = f"operator {item.get('action')} {item.get('outcome')}"
        if item.get("arguments"):
            what += f" {json.dumps(item['arguments'])}"
        if errors:
            what += f": {errors}"
    elif kind == "forced":
        hold = item.get("hold_seconds")
        what = f"forced write_only reason={item.get('reason')} " \
               f"hold={duration(hold) if isinstance(hold, int | float) else hold} holds={item.get('holds')}"
        if item.get("trigger"):
            what += f" (recovery ramp failed: {item['trigger']})"
    elif kind == "ramp_completed":
        what = "recovery ramp completed: every read goes to Zep " \
               f"(the hold was {item.get('previous_reason')}, holds={item.get('holds')})"
    elif kind in ("chaos_started", "chaos_stopped", "chaos_ended"):
        seconds = item.get("seconds")
        what = f"chaos {kind.removeprefix('chaos_')}: {item.get('fault')} on {item.get('percent')}% of " \
               f"conversations for {duration(seconds) if isinstance(seconds, int | float) else seconds} " \
               f"(experiment {str(item.get('experiment'))[:12]})"
        if kind == "chaos_stopped" and item.get("ended_by") not in (None, "chaos_stop"):
            what += f" by {ENDED_BY.get(str(item.get('ended_by')), item.get('ended_by'))}"
        if kind == "chaos_ended":
            what += ", its time was up"
            who = f" (started by {by_text(item.get('by'))})" if item.get("by") else ""
    elif kind == "probe":
        what = f"probe {item.get('result')} in {item.get('duration_ms')} ms" + \
               (f" ({item['error']})" if item.get("error") else "")
    else:
        what = f"{kind} (was {item.get('previous_reason')})"
        ramp = item.get("ramp_seconds")
        if ramp:
            what += f", recovery ramp of {duration(ramp) if isinstance(ramp, int | float) else ramp} started"
    return f"{stamp}  {what}{who}"
