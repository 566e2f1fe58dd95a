"""One guard's in-process view: its forced record, failure count, recovery ramp and experiment.

A ``Watcher`` (``memguard.request.watch``) holds the connection and hands each view the messages
of its guard: the notices on the guard's change channel and the tracking messages of its keys.
The view applies them under its lock and publishes ``current``, valid while the connection is
live (``liveness_until``, the watcher's) and its record has not lapsed. The guard ``default`` has
one view per process; a named guard's view exists while the process reads that guard.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from memguard.domain import events
from memguard.domain.chaos import Chaos, LocalChaos, parse_chaos
from memguard.domain.ramp import LocalRamp, Ramp, parse_ramp
from memguard.domain.record import ForcedRecord, parse_record
from memguard.domain.snapshot import Snapshot
from memguard.store.state import State
from memguard.store.steps import Step

# About this many views of a live fleet ask for an explanation at once (each with a chance of
# EXPLAIN_ASKERS / the fleet's size); that none does is about as likely as e**-6 (0.25 %).
EXPLAIN_ASKERS = 6
# The rest wait this long (at random within it) for the explanation, and ask only if none came:
# longer than the fleet's own fan-out of it, which takes Redis ~10-15 µs a connection.
EXPLAIN_WAIT_S = (0.25, 0.5)
EXPLAINED_S = 1.0  # a notice explains the tracking messages that follow it (at once) this long


@dataclass(frozen=True)
class View:
    record: ForcedRecord | None
    valid_until: float  # monotonic; past it the view says nothing
    failures_until: float  # monotonic; before it the failure counter may be non-zero
    ramp: LocalRamp | None = None  # the recovery ramp, while one is in Redis
    chaos: LocalChaos | None = None  # a game day's experiment, while one is in Redis


class GuardView:
    """The state of one guard as this process sees it, fed by a watcher."""

    def __init__(self, state: State, grace_seconds: float, hooks: events.Hooks) -> None:
        self.state = state
        self.hooks = hooks
        self.grace_seconds = grace_seconds
        self.channel = state.channel
        self.view_keys = {state.keys.forced: "forced", state.keys.counter: "count", state.keys.ramp: "ramp",
                          state.keys.chaos: "chaos"}
        self.current: View | None = None
        self.liveness_until = 0.0  # the watcher's: the connection was live until then
        self.last_read = time.monotonic()  # the guard's last read of this view (named guards' LRU)
        self._lock = threading.Lock()
        self._record: ForcedRecord | None = None
        self._ramp: LocalRamp | None = None
        self._chaos: LocalChaos | None = None
        self._record_lapse_mono = float("inf")
        self._failures_until = 0.0
        self._version = -1
        # Keys a channel notice explained, until when: a script changing two keys sends two
        # tracking messages (one per prefix), each taking its own key.
        self._explained: dict[str, float] = {}
        self.unexplained = False  # a change awaits an explanation (store/lua/explain.lua)
        self.fleet = 1  # the guard's fleet size, from the last re-read or explanation
        self.fleet_floor = 0  # views spread over replicas: their estimate (Watcher.spread)
        self.stale = False  # the view missed this process's own write: re-read
        self._last_corrupt: str | None = None
        # When each window's "hot" message arrived (monotonic): the read meter sends its kept
        # healthy counts then, and once a slot while the window stays hot.
        self.told: dict[str, float] = {}

    def forget_version(self) -> None:
        """A new connection: whatever was applied before, the re-read decides."""
        with self._lock:
            self._version = -1

    def apply_notice(self, notice: str, *, from_channel: bool = False) -> None:
        """A transition's notice: from this process's own write (applied at once), or read
        from the channel, where it also explains the tracking message that follows it. One that
        is not memguard's (a hand PUBLISH) is named and changes nothing."""
        try:
            change = json.loads(notice)
            version, redis_now = int(change["v"]), float(change["now"]) / 1000.0
            count, ttl = (int(change["count"]), int(change["ttl"])) if "count" in change else (0, 0)
            if not all(isinstance(change.get(f), str | None) for f in ("forced", "ramp", "chaos")):
                raise TypeError("forced, ramp and chaos are text")
        except (ValueError, KeyError, TypeError):
            self.hooks.emit(events.GuardTrouble("corrupt_state", "notice", notice[:120]))
            return
        with self._lock:
            if from_channel:  # even when our own write applied it already
                until = time.monotonic() + EXPLAINED_S
                self._explained.update((k, until) for k, field in self.view_keys.items() if field in change)
            if version <= self._version:
                if not from_channel and version < self._version:
                    # This process's own write is older than what the view holds: the version
                    # went back (FLUSHALL, a repaired version). Stop trusting the view; re-read.
                    self.stale = True
                    self.current = None
                return  # already applied (our own write, seen again on the channel)
            self._version = version
            mono = time.monotonic()
            if "forced" in change:
                self._set_record(change["forced"] or None, redis_now, mono)
            if "count" in change:
                self._set_failures(count, ttl, mono)
            if "ramp" in change:
                self._set_ramp(parse_ramp(change["ramp"] or None), redis_now, mono)
            if "chaos" in change:
                self._set_chaos(parse_chaos(change["chaos"] or None, redis_now), redis_now, mono)
            self.publish()

    def apply_snapshot(self, snap: Snapshot) -> bool:
        """Apply a re-read unless a newer notice has been applied since it was taken."""
        with self._lock:
            if snap.version < self._version:
                return False
            self._version = snap.version
            self.fleet = snap.fleet or self.fleet
            mono = time.monotonic()
            if snap.corrupt is not None and snap.corrupt != self._last_corrupt:
                self.hooks.emit(events.GuardTrouble("corrupt_state", "watch", snap.corrupt[:120]))
            self._last_corrupt = snap.corrupt
            self._record = snap.record
            if snap.record is not None:
                self._record_lapse_mono = mono + snap.record.lapse_time(self.grace_seconds) - snap.redis_now
                if snap.record_ttl_ms > 0:  # Redis reports the expiry up to ~100 ms late: don't wait
                    self._record_lapse_mono = min(self._record_lapse_mono, mono + snap.record_ttl_ms / 1000)
            self._set_failures(snap.fail_count, snap.fail_ttl_ms, mono)
            self._set_ramp(snap.ramp, snap.redis_now, mono)
            self._set_chaos(snap.chaos, snap.redis_now, mono)
            self.publish()
            return True

    def _set_record(self, raw: str | None, redis_now: float, mono: float) -> None:
        self._record = parse_record(raw)
        if self._record is not None:
            self._record_lapse_mono = mono + self._record.lapse_time(self.grace_seconds) - redis_now

    def _set_ramp(self, ramp: Ramp | None, redis_now: float, mono: float) -> None:
        """The ramp on this process's clock, fixed while its id stays: so the share only grows."""
        if ramp is None or self._ramp is None or self._ramp.ramp.id != ramp.id:
            self._ramp = None if ramp is None else LocalRamp.at(ramp, redis_now, mono)

    def _set_chaos(self, chaos: Chaos | None, redis_now: float, mono: float) -> None:
        """The experiment on this process's clock, its end fixed while its id stays."""
        if chaos is None or self._chaos is None or self._chaos.chaos.id != chaos.id:
            self._chaos = None if chaos is None else LocalChaos.at(chaos, redis_now, mono)

    def _set_failures(self, count: int, ttl_ms: int, mono: float) -> None:
        if count <= 0 and ttl_ms <= 0:
            self._failures_until = 0.0
        else:
            self._failures_until = mono + ttl_ms / 1000.0 if ttl_ms > 0 else float("inf")

    def publish(self) -> None:
        """Expose the view, valid while the connection is live (and the record not lapsed).
        Called with the lock held."""
        if time.monotonic() >= self.liveness_until or self.stale:
            self.current = None
            return
        deadline = self.liveness_until
        if self._record is not None:
            deadline = min(deadline, self._record_lapse_mono)
        self.current = View(self._record, deadline, self._failures_until, self._ramp, self._chaos)

    def republish(self) -> None:
        if self.current is not None or self._version >= 0:
            with self._lock:
                self.publish()

    def tracked(self, changed: set[str]) -> bool:
        """Tracking says these keys of the view changed; True when a change no notice explains
        awaits an explanation."""
        with self._lock:
            now = time.monotonic()
            unexplained = {key for key in changed if self._explained.pop(key, 0.0) < now}
            if unexplained == {self.state.keys.counter} and now >= self._failures_until - 0.1:
                self._set_failures(0, -2, now)  # the failure window expired
                self.publish()
                return False
            self.unexplained = self.unexplained or bool(unexplained)
        return bool(unexplained)

    def apply_explanation(self, data: Any) -> bool:
        """Apply an ``explain`` snapshot (a message, or this view's own reply); True if the view
        now holds it or something newer."""
        snap = self.state.explanation(data) if isinstance(data, str) else None
        if snap is None or not self.apply_snapshot(snap):
            return False
        with self._lock:
            self.unexplained = False
        return True

    def explain_wait(self) -> float:
        """How long to wait for another view's explanation before asking: none for a view that
        has lapsed (its record's key expired: it serves no read) and for about EXPLAIN_ASKERS
        views of the fleet, chosen at random; EXPLAIN_WAIT_S for the rest."""
        view = self.current
        if view is None or time.monotonic() >= view.valid_until \
                or random.random() * max(self.fleet, self.fleet_floor) < EXPLAIN_ASKERS:
            return 0.0
        return random.uniform(*EXPLAIN_WAIT_S)

    def resync_steps(self) -> Generator[Step, Any, Snapshot]:
        """Re-read; a read overtaken by a newer notice is read again. A version that went
        backwards and stays there (FLUSHALL, a Redis restart) is taken as it is. The reply is
        the last read."""
        with self._lock:
            self.unexplained = self.stale = False  # the read below covers it
        for _ in range(3):
            snap = yield from self.state.snapshot_steps()
            if self.apply_snapshot(snap):
                return snap
        with self._lock:
            self._version = -1
        self.apply_snapshot(snap)
        return snap
