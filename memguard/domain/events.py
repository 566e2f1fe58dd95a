"""What happened, as small frozen dataclasses handed to the subscribers of a ``Hooks``.

The guard core only emits these; metrics, logs, the audit trail and anything else (tests,
the drill) subscribe. A subscriber that raises never breaks a read: it is skipped, and the
other subscribers hear of it as an ``internal`` ``GuardTrouble`` (counted and logged). The
process's one ``Hooks`` is made by ``memguard.process`` and handed to every object that emits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def origin(via: str, **extra: Any) -> dict[str, Any]:
    """Who changed the state: kept in the record, the audit trail and the log line."""
    return {"via": via, "host": socket.gethostname(), "pid": os.getpid(), **extra}


# Caller- and operator-supplied text (a thread id, a reason, an exception's message) is cut to
# these lengths in every event, so no log line, audit entry or status line grows with it.
TEXT_CHARS = 200
ERROR_CHARS = 300


def bounded(text: str, limit: int = TEXT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…(+{len(text) - limit} chars)"


def bounded_value(value: Any) -> Any:
    """An argument as an event may keep it: short text and numbers as they are, anything else
    (long text, containers, objects) as a cut ``repr``."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, str):
        return bounded(value)
    return bounded(repr(value) if not isinstance(value, list | dict | tuple) or len(value) < 50
                   else f"<{type(value).__name__} of {len(value)} items>")


@dataclass(frozen=True, kw_only=True)
class Named:
    """Which guard an event is of (``memguard.domain.guards``): ``default`` unless a named
    guard's hooks (``GuardHooks``) emitted it."""

    guard: str = "default"  # the guard's own name
    family: str = "default"  # its declared name or pattern: the metrics' label, never a tenant's name
    named: bool = False  # a named guard's (its logs and audit entries name it), set by GuardHooks


@dataclass(frozen=True)
class ModeForced(Named):
    prev_mode: str
    next_mode: str
    reason: str
    hold_seconds: float
    until: float
    holds: int = 1
    fail_count: int | None = None
    by: dict[str, Any] | None = None
    trigger: str | None = None  # ramp_failed: the trigger that tripped during the ramp
    operator: bool = False  # an operator's force (the tasks, the CLI, the flags API), not a trigger


@dataclass(frozen=True)
class WouldForce(Named):
    """DISABLE_AUTO_DOWNGRADE is set: this trigger would have forced write_only."""

    reason: str
    hold_seconds: float
    fail_count: int | None = None


@dataclass(frozen=True)
class ModeRestored(Named):
    mode: str
    reason: str  # probe_success, manual_clear, lapsed
    previous_reason: str
    by: dict[str, Any] | None = None
    ramp_seconds: float = 0.0  # > 0: reads return through a recovery ramp this long; 0: all at once


@dataclass(frozen=True)
class RampCompleted(Named):
    """A recovery ramp ran its course: every read goes to Zep, and the back-off starts again."""

    previous_reason: str  # the hold's reason
    holds: int
    seconds: float


@dataclass(frozen=True)
class ReadBlocked(Named):
    """A read answered without Zep: the fleet is forced (the record's reason), or the read's
    conversation is not yet admitted by the recovery ramp (reason ``ramp``, until its end)."""

    thread_id: str
    reason: str
    until: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "thread_id", bounded(self.thread_id))


@dataclass(frozen=True)
class FailureRecorded(Named):
    reason: str  # auth, timeout, connection, http_5xx, rate_limited, http_4xx, bad_payload, ...
    action: str  # force, count, ignore
    status: int | None
    thread_id: str | None
    fail_count: int | None = None
    error: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "thread_id", None if self.thread_id is None else bounded(self.thread_id))
        object.__setattr__(self, "error", bounded(self.error, ERROR_CHARS))


@dataclass(frozen=True)
class ProbeFinished(Named):
    result: str  # success, failed, lost, superseded
    duration_seconds: float
    error: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "error", bounded(self.error, ERROR_CHARS))


@dataclass(frozen=True)
class ReadUnguarded(Named):
    """``reads`` reads went to Zep without a guard: the state could not be read (Redis
    unreachable, refused, TLS-rejected) or memguard's own check failed. Counted, not logged: the
    ``GuardTrouble`` that caused it is."""

    reads: int = 1


@dataclass(frozen=True)
class ChaosInjected(Named):
    """A read picked by a game day's experiment got its fault (``memguard.domain.chaos``): kind
    timeout, error, latency or auth. Counted, not logged: the experiment's start and end are."""

    fault: str


@dataclass(frozen=True)
class ChaosChanged(Named):
    """A game day's experiment started, was stopped (by an operator's stop, force or clear, or by
    a new one) or ended at its end (``change``: started, stopped, ended)."""

    change: str
    fault: str
    percent: float
    seconds: float
    experiment: str  # its id
    by: dict[str, Any] | None = None  # who started or stopped it
    ended_by: str = ""  # stopped: chaos_stop, force, clear or chaos_start (a new experiment)


@dataclass(frozen=True)
class ReadFinished(Named):
    """A read that went to Zep and returned; overhead is what the guard itself added."""

    overhead_seconds: float


@dataclass(frozen=True)
class OperatorAction(Named):
    """An operator asked for something (force, clear, probe, status): accepted or refused."""

    action: str
    accepted: bool
    errors: tuple[str, ...] = ()
    by: dict[str, Any] | None = None
    arguments: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "errors", tuple(bounded(e, ERROR_CHARS) for e in self.errors[:10]))
        if self.arguments is not None:
            object.__setattr__(self, "arguments", {bounded(str(k)): bounded_value(v)
                                                   for k, v in list(self.arguments.items())[:10]})


@dataclass(frozen=True)
class GuardTrouble(Named):
    """The guard's own parts misbehaved: Redis errors, corrupt keys, lost events."""

    kind: str  # redis_error, corrupt_state, config_error, webhook_failed, master_switch, internal
    op: str
    detail: str = ""
    error_type: str = ""  # an internal fault's exception type (its detail starts with it too)

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", bounded(self.detail, ERROR_CHARS))
        object.__setattr__(self, "error_type", bounded(self.error_type))


INTERNAL = "internal"


def internal(op: str, fault: BaseException, where: str = "") -> GuardTrouble:
    """A fault of memguard's own (a bug, a missing file, an unexpected reply) during ``op``. Its
    detail starts with the exception's type; the message is bounded, and one that cannot be
    made into text is named as such."""
    try:
        message = str(fault)[:ERROR_CHARS]
    except Exception:
        message = "<message unavailable>"
    place = f" in {where}" if where else ""
    name = type(fault).__name__
    return GuardTrouble(INTERNAL, op, f"{name}{place}: {message}", name)


Event = (ModeForced | WouldForce | ModeRestored | RampCompleted | ReadBlocked | FailureRecorded
         | ProbeFinished | ReadUnguarded | ReadFinished | OperatorAction | GuardTrouble | ChaosInjected
         | ChaosChanged)
Subscriber = Callable[[Event], None]


class GuardHooks:
    """A named guard's hooks: its events, marked with its name, go to the process's subscribers."""

    def __init__(self, hooks: Hooks, guard: str, family: str) -> None:
        self.hooks = hooks
        self.guard = guard
        self.family = family

    def subscribe(self, fn: Subscriber) -> Subscriber:
        return self.hooks.subscribe(fn)

    def unsubscribe(self, fn: Subscriber) -> None:
        self.hooks.unsubscribe(fn)

    def emit(self, event: Event) -> None:
        self.hooks.emit(dataclasses.replace(event, guard=self.guard, family=self.family, named=True))


class Hooks:
    """The subscribers of one process: every event goes to each, in subscription order."""

    def __init__(self) -> None:
        self._subscribers: tuple[Subscriber, ...] = ()
        self._lock = threading.Lock()

    def subscribe(self, fn: Subscriber) -> Subscriber:
        """Register ``fn`` for every event (idempotent); usable as a decorator."""
        with self._lock:
            if fn not in self._subscribers:
                self._subscribers = (*self._subscribers, fn)
        return fn

    def unsubscribe(self, fn: Subscriber) -> None:
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s != fn)

    def emit(self, event: Event) -> None:
        for fn in self._subscribers:
            try:
                fn(event)
            except Exception as exc:  # a broken hook must never break a read
                self._report(fn, event, exc)

    def _report(self, broken: Subscriber, event: Event, exc: Exception) -> None:
        """Tell the other subscribers (logs, metrics) that ``broken`` raised; a failure while
        handling such a report is not reported again."""
        if isinstance(event, GuardTrouble) and event.kind == INTERNAL:
            return
        trouble = internal("subscriber", exc, getattr(broken, "__qualname__", type(broken).__name__))
        for fn in self._subscribers:
            if fn is not broken:
                with contextlib.suppress(Exception):
                    fn(trouble)
