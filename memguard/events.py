"""What happened, as small frozen dataclasses handed to subscribers.

The guard core only emits these; metrics, logs and anything else (webhooks, tests) subscribe.
A subscriber that raises never breaks a read: it is reported on stderr and skipped.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModeForced:
    prev_mode: str
    next_mode: str
    reason: str
    hold_seconds: float
    until: float
    holds: int = 1
    fail_count: int | None = None
    by: dict[str, Any] | None = None


@dataclass(frozen=True)
class WouldForce:
    """DISABLE_AUTO_DOWNGRADE is set: this trigger would have forced write_only."""

    reason: str
    hold_seconds: float
    fail_count: int | None = None


@dataclass(frozen=True)
class ModeRestored:
    mode: str
    reason: str  # probe_success, manual_clear, lapsed
    previous_reason: str
    by: dict[str, Any] | None = None


@dataclass(frozen=True)
class ReadBlocked:
    thread_id: str
    reason: str
    until: float


@dataclass(frozen=True)
class FailureRecorded:
    reason: str  # auth, timeout, connection, http_5xx, rate_limited, http_4xx, bad_payload, ...
    action: str  # force, count, ignore
    status: int | None
    thread_id: str | None
    fail_count: int | None = None
    error: str = ""


@dataclass(frozen=True)
class ProbeFinished:
    result: str  # success, failed, lost, superseded
    duration_seconds: float
    error: str = ""


@dataclass(frozen=True)
class ReadFinished:
    """A read that went to Zep; overhead is what the guard itself added."""

    ok: bool
    overhead_seconds: float


@dataclass(frozen=True)
class OperatorAction:
    """An operator asked for something (force, clear, probe, status): accepted or refused."""

    action: str
    accepted: bool
    errors: tuple[str, ...] = ()
    by: dict[str, Any] | None = None
    arguments: dict[str, Any] | None = None


@dataclass(frozen=True)
class GuardTrouble:
    """The guard's own parts misbehaved: Redis errors, corrupt keys, lost events."""

    kind: str  # redis_error, corrupt_state, config_error, webhook_failed, master_switch
    op: str
    detail: str = ""


Event = (ModeForced | WouldForce | ModeRestored | ReadBlocked | FailureRecorded | ProbeFinished | ReadFinished
         | OperatorAction | GuardTrouble)
Subscriber = Callable[[Event], None]

_subscribers: list[Subscriber] = []
_lock = threading.Lock()


def subscribe(fn: Subscriber) -> Subscriber:
    """Register ``fn`` for every event (idempotent); usable as a decorator."""
    with _lock:
        if fn not in _subscribers:
            _subscribers.append(fn)
    return fn


def unsubscribe(fn: Subscriber) -> None:
    with _lock:
        if fn in _subscribers:
            _subscribers.remove(fn)


def emit(event: Event) -> None:
    for fn in tuple(_subscribers):
        try:
            fn(event)
        except Exception as exc:  # a broken hook must never break a read
            print(f"memguard: event subscriber {fn!r} failed: {exc!r}", file=sys.stderr)
