"""A process-local view of the fleet state, kept fresh by the Redis server itself.

One connection per process, subscribed to two things:
- memguard's change channel: every transition script publishes a notice with the new values
  and a version, so a change costs the fleet one script run, not one read per process;
- Redis client tracking (``BCAST PREFIX``, redirected to this connection) of the view's own
  keys only: the forced record, the failure count and the recovery ramp. The server reports
  *any* change to them: a hand ``SET``/``DEL``, older code, an expiry, ``FLUSHALL``. A change
  no notice explains is explained once for the fleet: about six views, chosen at random by the
  fleet's size, ask ``store/lua/explain.lua`` at once; the first publishes what it read, and
  every other view applies that message (``FLUSHALL`` is re-read). The rest ask only if no
  explanation came within a quarter to half a second. Writes to memguard's other keys reach no
  watcher: every message to every watcher is a socket write on the Redis server.

The channel also carries the heartbeat and the window scripts' ``hot <window>`` (the read
meter then sends its kept healthy counts).

Liveness without polling: after about four quiet seconds, the process whose randomised timer
fires first takes a short lock and publishes a heartbeat (``store/lua/heartbeat.lua``); later
timers find the lock taken. A round costs Redis one message per process, never N². A view
silent for ``LIVENESS_S`` (5 s) lapses, and the guard reads Redis on each read instead (fail
safe, never stale) until the watcher has reconnected, re-enabled tracking and re-read the
state: no view ever serves a state older than 5 s. TCP keepalive notices a peer that died
without a word.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import socket
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import redis

from memguard.config.target import keepalive_options
from memguard.domain import events
from memguard.domain.ramp import LocalRamp, Ramp, parse_ramp
from memguard.domain.record import ForcedRecord, Snapshot, parse_record
from memguard.store.background import Background
from memguard.store.keys import CHANGES_CHANNEL, WINDOWS
from memguard.store.state import State
from memguard.store.steps import ReadSnapshot, Script
from memguard.store.steps import run as run_steps

LIVENESS_S = 5.0  # the documented bound: no view serves a state older than this
HEARTBEAT_AFTER_S = (4.0, 4.4)  # silence after which this process offers the heartbeat
HEARTBEAT_LOCK_MS = 3500  # one heartbeat per round fleet-wide: shorter than the quiet timer
# Tracking reports writes that bypass the scripts; this slow re-read (at a random point of the
# range: a fleet started at once does not re-read at once) bounds the one case it cannot tell
# apart, a foreign write to a key in the same instant as a script's (or within EXPLAINED_S).
RESYNC_S = (45.0, 75.0)
INVALIDATE_CHANNEL = "__redis__:invalidate"
HEARTBEAT = "heartbeat"
EXPLAIN = "explain "  # + a snapshot: store/lua/explain.lua
# About this many views of a live fleet ask for an explanation at once (each with a chance of
# EXPLAIN_ASKERS / the fleet's size); that none does is about as likely as e**-6 (0.25 %).
EXPLAIN_ASKERS = 6
# The rest wait this long (at random within it) for the explanation, and ask only if none came:
# longer than the fleet's own fan-out of it, which takes Redis ~10-15 µs a connection.
EXPLAIN_WAIT_S = (0.25, 0.5)
EXPLAIN_DRAIN = 16  # messages already there that are taken first, when that wait is over
# How long the digest of the values last explained (and their version) is kept: while neither
# changes, no later asker publishes them again (each message reaches the whole fleet).
EXPLAIN_LOCK_MS = 60_000
EXPLAINED_S = 1.0  # a notice explains the tracking messages that follow it (at once) this long
HOT = "hot "  # + a window's name: the window holds bad reads (store/lua/window_trip.lua)


@dataclass(frozen=True)
class Listen:
    """Wait up to ``timeout`` seconds for one pushed message; the reply is it, or ``QUIET``."""

    timeout: float


QUIET = object()  # no message within the wait
RESYNC = object()  # what a message may ask for: a re-read of the state
EXPLAIN_IT = object()  # ... or an explanation of a change no notice explained
WatchStep = Listen | ReadSnapshot | Script  # Script: the heartbeat or an explanation (store/lua/)


@dataclass(frozen=True)
class View:
    record: ForcedRecord | None
    valid_until: float  # monotonic; past it the view says nothing
    failures_until: float  # monotonic; before it the failure counter may be non-zero
    ramp: LocalRamp | None = None  # the recovery ramp, while one is in Redis


class Watcher(Background):
    """One daemon thread per process holding the tracked, subscribed connection."""

    THREAD_NAME = "memguard-watch"

    def __init__(self, state: State, grace_seconds: float, hooks: events.Hooks) -> None:
        super().__init__()
        self.state = state
        self.hooks = hooks
        self.view_keys = {state.keys.forced: "forced", state.keys.counter: "count", state.keys.ramp: "ramp"}
        self.grace_seconds = grace_seconds
        self.current: View | None = None
        self._lock = threading.Lock()
        self._record: ForcedRecord | None = None
        self._ramp: LocalRamp | None = None
        self._record_lapse_mono = float("inf")
        self._failures_until = 0.0
        self._version = -1
        # Keys a channel notice explained, until when: a script changing two keys sends two
        # tracking messages (one per prefix), each taking its own key.
        self._explained: dict[str, float] = {}
        self._unexplained = False  # a change awaits an explanation (store/lua/explain.lua)
        self._fleet = 1  # the fleet's size, from the last re-read or explanation
        self._stale = False  # the view missed this process's own write: re-read
        self._liveness_until = 0.0
        self._last_corrupt: str | None = None
        self._conn: redis.Connection | None = None
        # When each window's "hot" message arrived (monotonic): the read meter sends its kept
        # healthy counts then, and once a slot while the window stays hot.
        self.told: dict[str, float] = {}

    def stop(self) -> None:
        self._stop.set()
        self.current = None  # before the join: no read trusts a view that is going away
        self.reconnect()  # wakes the thread, blocked reading until the next thing due
        super().stop()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def reconnect(self) -> None:
        """Drop the connection now (the master moved): the thread reconnects, re-enables
        tracking and re-reads at once. Only the socket is shut here; the thread, blocked
        reading it, does the rest."""
        sock = getattr(self._conn, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def wait_ready(self, timeout: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.current is not None:
                return True
            time.sleep(0.005)
        return False

    # -- changes ----------------------------------------------------------------------------

    def apply_notice(self, notice: str, *, from_channel: bool = False) -> None:
        """A transition's notice: from this process's own write (applied at once), or read
        from the channel, where it also explains the tracking message that follows it. One that
        is not memguard's (a hand PUBLISH) is named and changes nothing."""
        try:
            change = json.loads(notice)
            version, redis_now = int(change["v"]), float(change["now"]) / 1000.0
            count, ttl = (int(change["count"]), int(change["ttl"])) if "count" in change else (0, 0)
            if not all(isinstance(change.get(f), str | None) for f in ("forced", "ramp")):
                raise TypeError("forced and ramp are text")
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
                    self._stale = True
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
            self._publish_view()

    def _apply_snapshot(self, snap: Snapshot) -> bool:
        """Apply a re-read unless a newer notice has been applied since it was taken."""
        with self._lock:
            if snap.version < self._version:
                return False
            self._version = snap.version
            self._fleet = snap.fleet or self._fleet
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
            self._publish_view()
            return True

    def _set_record(self, raw: str | None, redis_now: float, mono: float) -> None:
        self._record = parse_record(raw)
        if self._record is not None:
            self._record_lapse_mono = mono + self._record.lapse_time(self.grace_seconds) - redis_now

    def _set_ramp(self, ramp: Ramp | None, redis_now: float, mono: float) -> None:
        """The ramp on this process's clock, fixed while its id stays: so the share only grows."""
        if ramp is None or self._ramp is None or self._ramp.ramp.id != ramp.id:
            self._ramp = None if ramp is None else LocalRamp.at(ramp, redis_now, mono)

    def _set_failures(self, count: int, ttl_ms: int, mono: float) -> None:
        if count <= 0 and ttl_ms <= 0:
            self._failures_until = 0.0
        else:
            self._failures_until = mono + ttl_ms / 1000.0 if ttl_ms > 0 else float("inf")

    def _publish_view(self) -> None:
        """Expose the view, valid while the connection is live (and the record not lapsed)."""
        if time.monotonic() >= self._liveness_until or self._stale:
            self.current = None
            return
        deadline = self._liveness_until
        if self._record is not None:
            deadline = min(deadline, self._record_lapse_mono)
        self.current = View(self._record, deadline, self._failures_until, self._ramp)

    # -- the connection ---------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._follow()
                backoff = 0.1
            except (redis.RedisError, OSError) as exc:
                self.current = None
                if self._stop.is_set():
                    return  # stop() shut the socket: not a Redis error
                self.hooks.emit(events.GuardTrouble("redis_error", "watch", type(exc).__name__))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def handshake(self, client_id: Any) -> list[tuple[Any, ...]]:
        """The commands that make a connection this view's: tracking of the view's keys,
        redirected to the connection itself, and the two channels (RESP2)."""
        prefixes = [arg for key in self.view_keys for arg in ("PREFIX", key)]
        return [("CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", *prefixes),
                ("SUBSCRIBE", INVALIDATE_CHANNEL, CHANGES_CHANNEL)]

    @staticmethod
    def check_handshake(replies: list[Any]) -> None:
        """The replies to ``handshake``'s commands: OK, then one ``subscribe`` per channel."""
        if replies[0] not in ("OK", b"OK"):
            raise redis.ConnectionError("CLIENT TRACKING was refused")
        for reply in replies[1:]:
            if not reply or reply[0] not in ("subscribe", b"subscribe"):
                raise redis.ConnectionError(f"unexpected subscribe reply {reply!r}")

    def _connect(self) -> redis.Connection:
        # RESP2: subscribe replies and tracking messages come back as plain replies.
        conn = self.state.settings.redis_target.connection(
            decode_responses=True, socket_timeout=1.0, socket_connect_timeout=1.0,
            socket_keepalive=True, socket_keepalive_options=keepalive_options(), protocol=2)
        conn.connect()
        conn.send_command("CLIENT", "ID")
        tracking, subscribe = self.handshake(conn.read_response())
        conn.send_command(*tracking)
        replies = [conn.read_response()]
        conn.send_command(*subscribe)
        replies += [conn.read_response() for _ in range(2)]
        self.check_handshake(replies)
        return conn

    def _follow(self) -> None:
        """Drive ``follow_steps`` on a blocking connection (this thread)."""
        conn = self._conn = self._connect()

        def perform(step: WatchStep) -> Any:
            if isinstance(step, Listen):
                return conn.read_response() if conn.can_read(timeout=step.timeout) else QUIET
            return self.state.perform(step)

        try:
            run_steps(self.follow_steps(), perform)
        finally:
            self.current = None
            self._conn = None
            with contextlib.suppress(redis.RedisError, OSError):
                conn.disconnect()

    def follow_steps(self) -> Generator[WatchStep, Any, None]:
        """What a live connection does, without doing the I/O itself: re-read, then take each
        pushed message, send the heartbeat when the channel has been quiet, re-read now and
        then, and end (raising) when nothing arrived within the liveness bound. The thread's
        driver (``_follow``) and the asyncio one (``memguard.request.awatch``) run this same code."""
        with self._lock:
            self._version = -1  # whatever was applied before, the re-read below decides
        self._alive()
        resync_at = heartbeat_at = explain_at = math.inf
        drain = False  # before asking, take what has already arrived (the view waited for it)

        def resync() -> Generator[WatchStep, Any, None]:
            """Re-read, and the next slow re-read is a while from now. The read covers a change
            still waiting for its explanation: this view no longer asks for one."""
            nonlocal resync_at, explain_at
            yield from self._resync_steps()
            resync_at, explain_at = self._next_resync(), math.inf

        yield from resync()
        heartbeat_at = self._next_heartbeat()

        def take(message: Any) -> Generator[WatchStep, Any, None]:
            """One pushed message: the connection is alive; apply it, and re-read or schedule
            an explanation when it asks for one."""
            nonlocal heartbeat_at, explain_at, drain
            self._alive()
            heartbeat_at = self._next_heartbeat()
            action = self._handle(message)
            if action is RESYNC:
                yield from resync()
            elif action is EXPLAIN_IT and explain_at == math.inf:
                wait = self._explain_wait()
                explain_at, drain = time.monotonic() + wait, wait > 0
            if not self._unexplained:  # explained meanwhile, by another view's message
                explain_at = math.inf

        while not self._stop.is_set():
            # Sleep until a message or the next thing due: a quiet view wakes once a round.
            due = min(heartbeat_at, resync_at, self._liveness_until, explain_at)
            if self.current is not None:
                due = min(due, self.current.valid_until)
            message = yield Listen(max(0.001, due - time.monotonic()))
            if message is not QUIET:
                yield from take(message)
            if self._stale:
                yield from resync()
            now = time.monotonic()
            if now >= explain_at and drain:  # waited, and nobody explained the change yet?
                # First what has already arrived: most often another view's explanation.
                for _ in range(EXPLAIN_DRAIN):
                    message = yield Listen(0.001)
                    if message is QUIET:
                        break
                    yield from take(message)
                    if explain_at == math.inf:
                        break
            if now >= explain_at:  # still not: ask (or re-read)
                explain_at = math.inf
                reply = yield Script("explain", {"channel": CHANGES_CHANNEL, "ttl_ms": EXPLAIN_LOCK_MS})
                # Not taken, and nothing newer was: the version went back (or is unreadable).
                if not self._apply_explanation(reply.get("snapshot")) and self._unexplained:
                    yield from resync()
            if now >= heartbeat_at:  # quiet for a while: offer the round's heartbeat
                with contextlib.suppress(redis.RedisError):  # a failed one leaves this view be
                    yield Script("heartbeat", {"channel": CHANGES_CHANNEL, "ttl_ms": HEARTBEAT_LOCK_MS})
                heartbeat_at = self._next_heartbeat()
            if now >= resync_at:
                yield from resync()
            if now >= self._liveness_until:
                raise redis.ConnectionError("no message within the liveness bound")
            if self.current is not None and now >= self.current.valid_until:
                with self._lock:
                    self._publish_view()

    def _handle(self, message: Any) -> object | None:
        """Apply one pushed message; ``RESYNC`` when the state must be re-read, ``EXPLAIN_IT``
        when a change no notice explains must be explained."""
        if not isinstance(message, list) or len(message) < 3 or message[0] != "message":
            return None
        channel, data = message[1], message[2]
        if channel == CHANGES_CHANNEL:
            if data.startswith(EXPLAIN):
                self._apply_explanation(data[len(EXPLAIN):])
            elif data.startswith(HOT):
                if data[len(HOT):] in WINDOWS:
                    self.told = {**self.told, data[len(HOT):]: time.monotonic()}
            elif data != HEARTBEAT:
                self.apply_notice(data, from_channel=True)
            return None
        if data is None:  # FLUSHALL / FLUSHDB: everything is gone, the version too
            return RESYNC
        changed = self.view_keys.keys() & data
        with self._lock:
            now = time.monotonic()
            unexplained = {key for key in changed if self._explained.pop(key, 0.0) < now}
            if unexplained == {self.state.keys.counter} and time.monotonic() >= self._failures_until - 0.1:
                self._set_failures(0, -2, time.monotonic())  # the failure window expired
                self._publish_view()
                return None
            self._unexplained = self._unexplained or bool(unexplained)
        return EXPLAIN_IT if unexplained else None

    def _apply_explanation(self, data: Any) -> bool:
        """Apply an ``explain`` snapshot (a message, or this view's own reply); True if the view
        now holds it or something newer."""
        snap = self.state.explanation(data) if isinstance(data, str) else None
        if snap is None or not self._apply_snapshot(snap):
            return False
        with self._lock:
            self._unexplained = False
        return True

    def _explain_wait(self) -> float:
        """How long to wait for another view's explanation before asking: none for a view that
        has lapsed (its record's key expired: it serves no read) and for about EXPLAIN_ASKERS
        views of the fleet, chosen at random; EXPLAIN_WAIT_S for the rest."""
        view = self.current
        if view is None or time.monotonic() >= view.valid_until \
                or random.random() * self._fleet < EXPLAIN_ASKERS:
            return 0.0
        return random.uniform(*EXPLAIN_WAIT_S)

    def _resync_steps(self) -> Generator[WatchStep, Any, None]:
        """Re-read; a read overtaken by a newer notice is read again. A version that went
        backwards and stays there (FLUSHALL, a Redis restart) is taken as it is."""
        with self._lock:
            self._unexplained = self._stale = False  # the read below covers it
        for _ in range(3):
            snap = yield from self.state.snapshot_steps()
            if self._apply_snapshot(snap):
                return
        with self._lock:
            self._version = -1
        self._apply_snapshot(snap)

    def _alive(self) -> None:
        self._liveness_until = time.monotonic() + LIVENESS_S
        view = self.current
        if view is not None or self._version >= 0:
            with self._lock:
                self._publish_view()

    @staticmethod
    def _next_resync() -> float:
        return time.monotonic() + random.uniform(*RESYNC_S)

    @staticmethod
    def _next_heartbeat() -> float:
        return time.monotonic() + random.uniform(*HEARTBEAT_AFTER_S)
