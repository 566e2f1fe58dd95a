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
import math
import random
import socket
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from memguard.config.target import connection_name, keepalive_options
from memguard.domain import events
from memguard.request.placement import Placement, notice_time, seconds
from memguard.request.view import GuardView, View
from memguard.store.background import Background
from memguard.store.keys import CHANGES_CHANNEL, CLOCK_CHANNEL, WINDOWS
from memguard.store.state import State
from memguard.store.steps import ReadSnapshot, Script, Step, Via, via
from memguard.store.steps import run as run_steps

__all__ = ["GuardView", "View", "Watcher"]

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
EXPLAIN_DRAIN = 16  # messages already there that are taken first, when that wait is over
# How long the digest of the values last explained (and their version) is kept: while neither
# changes, no later asker publishes them again (each message reaches the whole fleet).
EXPLAIN_LOCK_MS = 60_000
HOT = "hot "  # + a window's name: the window holds bad reads (store/lua/window_trip.lua)
# Named guards' views join and leave by a planned reconnect (new tracking prefixes and channels
# cannot be added to a subscribed RESP2 connection): at most one per this many seconds.
REPLAN_EVERY_S = 1.0
VIEW_OPTIONS: dict[str, Any] = {"decode_responses": True, "protocol": 2}  # RESP2, text


@dataclass(frozen=True)
class Listen:
    """Wait up to ``timeout`` seconds for one pushed message; the reply is it, or ``QUIET``."""

    timeout: float


@dataclass(frozen=True)
class Send:
    """Send ``command`` on the watcher's own connection; the reply is its answer, or with
    ``replies`` the list of that many answers (a SUBSCRIBE answers once per channel)."""

    command: tuple[Any, ...]
    replies: int | None = None


QUIET = object()  # no message within the wait
RESYNC = object()  # what a message may ask for: a re-read of the state
EXPLAIN_IT = object()  # ... or an explanation of a change no notice explained
WatchStep = Listen | ReadSnapshot | Script | Via  # Script: the heartbeat or an explanation (store/lua/)


class Watcher(Background):
    """One daemon thread per process holding the tracked, subscribed connection.

    It feeds the views it is given (every guard's this process reads; without ``views``, one
    view of ``state``). ``state`` is the store it connects through: its channel carries the
    liveness heartbeat whatever views it feeds."""

    THREAD_NAME = "memguard-watch"

    def __init__(self, state: State, grace_seconds: float, hooks: events.Hooks,
                 views: Sequence[GuardView] | None = None) -> None:
        super().__init__()
        self.state = state
        self.hooks = hooks
        self._index((GuardView(state, grace_seconds, hooks),) if views is None else tuple(views))
        self._liveness_until = 0.0
        self._conn: redis.Connection | None = None
        self._replan_at = math.inf  # when the views set by ``set_views`` are to be followed
        self._replanned = 0.0
        self._planned = False  # the connection is being dropped to follow new views
        self.tick: Callable[[], None] = lambda: None  # called at each slow re-read (named guards' expiry)
        self.placement = Placement(state.settings.view_servers is not None)  # views on replicas

    def clear_views(self) -> None:
        """Every view says nothing until the next re-read: the connection is gone or going."""
        for view in self.views:
            view.current = None

    def set_views(self, views: Sequence[GuardView]) -> None:
        """Follow these views from now on (named guards joining or leaving): a planned
        reconnect, at most once per ``REPLAN_EVERY_S``, tracks their keys and channels. A view
        that stays keeps its state through it; one that leaves says nothing from now on."""
        views = tuple(views)
        for view in set(self.views) - set(views):
            view.current = None
        self._index(views)
        self._replan_at = max(time.monotonic(), self._replanned + REPLAN_EVERY_S)
        if self._replan_at <= time.monotonic() and self._conn is not None:
            self._planned = True
            self.reconnect()

    def _index(self, views: tuple[GuardView, ...]) -> None:
        self.views = views
        self._by_channel = {v.channel: v for v in views}
        self._by_key = {key: v for v in views for key in v.view_keys}

    def stop(self) -> None:
        self._stop.set()
        self.clear_views()  # before the join: no read trusts a view that is going away
        self.reconnect()  # wakes the thread, blocked reading until the next thing due
        super().stop()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def reconnect(self) -> None:
        """Drop the connection now (the master moved): only the socket is shut here; the thread,
        blocked reading it, reconnects, re-enables tracking and re-reads at once."""
        sock = getattr(self._conn, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def wait_ready(self, timeout: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(v.current is not None for v in self.views):
                return True
            time.sleep(0.005)
        return False

    # -- the connection ---------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._follow()
                backoff = 0.1
            except (redis.RedisError, OSError) as exc:
                if self.lost(exc):
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 2.0)

    def lost(self, exc: BaseException) -> bool:
        """The connection ended with ``exc``: True when the driver waits its back-off; False to
        reconnect now, quietly (new views, a recount), or not at all (stopped)."""
        if self.take_planned():
            return False
        self.clear_views()
        if self._stop.is_set():
            return False  # stop() shut the socket: not a Redis error
        self.placement.moved()  # a view on replicas tries the next server
        self.hooks.emit(events.GuardTrouble("redis_error", "watch", type(exc).__name__))
        return True

    def handshake(self, client_id: Any) -> list[tuple[Any, ...]]:
        """The commands that make a connection this watcher's: tracking of the views' keys,
        redirected to the connection itself, and the channels (RESP2)."""
        prefixes = [arg for key in self._by_key for arg in ("PREFIX", key)]
        clock = [CLOCK_CHANNEL] if self.placement.on_replicas else []
        channels = dict.fromkeys([INVALIDATE_CHANNEL, CHANGES_CHANNEL, *clock, *self._by_channel])
        return [("CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", *prefixes),
                ("SUBSCRIBE", *channels)]

    @staticmethod
    def check_handshake(replies: list[Any]) -> None:
        """The replies to ``handshake``'s commands: OK, then one ``subscribe`` per channel."""
        if replies[0] not in ("OK", b"OK"):
            raise redis.ConnectionError("CLIENT TRACKING was refused")
        for reply in replies[1:]:
            if not reply or reply[0] not in ("subscribe", b"subscribe"):
                raise redis.ConnectionError(f"unexpected subscribe reply {reply!r}")

    def connect_steps(self, servers: int | None) -> Generator[Send, Any, None]:
        """The handshake as steps; on replicas (``servers`` of them), this one's subscribers first."""
        if servers is not None:
            numsub = yield Send(("PUBSUB", "NUMSUB", CHANGES_CHANNEL))
            self.spread(int(numsub[1]), servers)
        tracking, subscribe = self.handshake((yield Send(("CLIENT", "ID"))))
        replies = [(yield Send(tracking))]
        replies += (yield Send(subscribe, replies=len(subscribe) - 1))
        self.check_handshake(replies)

    def following(self) -> None:
        """A connection is being made for these views: no replan due until ``set_views``."""
        self._replan_at, self._replanned = math.inf, time.monotonic()

    def followed(self) -> None:
        """The connection ended: the views lapse, unless it was planned (it re-reads at once)."""
        if not self._planned:
            self.clear_views()
        self._conn = None

    def _connect(self) -> redis.Connection:
        # RESP2: subscribe replies and tracking messages come back as plain replies.
        options: dict[str, Any] = dict(
            VIEW_OPTIONS, client_name=connection_name("view"), socket_timeout=1.0,
            socket_connect_timeout=1.0, socket_keepalive=True, socket_keepalive_options=keepalive_options())
        servers, of = self.state.settings.view_servers, None
        if servers is None:
            conn = self.state.settings.redis_target.connection(**options)
        else:
            self.placement.server, of, conn = servers.connection(self.placement.index, **options)
        conn.connect()

        def send(step: Send) -> Any:
            conn.send_command(*step.command)
            if step.replies is None:
                return conn.read_response()
            return [conn.read_response() for _ in range(step.replies)]

        run_steps(self.connect_steps(of), send)
        return conn

    def _follow(self) -> None:
        """Drive ``follow_steps`` on a blocking connection (this thread)."""
        self.following()
        conn = self._conn = self._connect()

        def perform(step: WatchStep) -> Any:
            if isinstance(step, Listen):
                return conn.read_response() if conn.can_read(timeout=step.timeout) else QUIET
            return self.state.perform(step, quiet=True)

        try:
            run_steps(self.follow_steps(), perform)
        finally:
            self.followed()
            with contextlib.suppress(redis.RedisError, OSError):
                conn.disconnect()

    def take_planned(self) -> bool:
        """Whether the connection ended as planned (new views, a recount): then reconnect now,
        quietly."""
        planned, self._planned = self._planned and not self._stop.is_set(), False
        return planned

    def spread(self, subscribers: int, servers: int) -> None:
        """The fleet's size for the explanation's askers (``GuardView.explain_wait``) when the
        views are spread over ``servers``: the primary's ``PUBSUB NUMSUB`` counts none of them,
        so it is this server's (read before subscribing) times the servers."""
        for view in self.views:
            view.fleet_floor = (subscribers + 1) * servers
        self.placement.counted()

    def _on(self, view: GuardView, steps: Generator[Step, Any, Any]) -> Generator[WatchStep, Any, Any]:
        """``steps`` of ``view``, each performed by its guard's store."""
        return (yield from steps if view.state is self.state else via(view.state, steps))

    def follow_steps(self) -> Generator[WatchStep, Any, None]:
        """What a live connection does, without doing the I/O itself: re-read, then take each
        pushed message, send the heartbeat when the channel has been quiet, re-read now and
        then, and end (raising) when nothing arrived within the liveness bound. The thread's
        driver (``_follow``) and the asyncio one (``memguard.drill.awatch``) run this same code."""
        for view in self.views:
            view.forget_version()
        self._alive()
        resync_at = heartbeat_at = math.inf
        idle_s = self.state.settings.command_idle_seconds

        def listen(timeout: float) -> Generator[WatchStep, Any, Any]:
            """Wait for a message; an idle process keeps only this connection meanwhile."""
            if idle_s:
                self.state.close_idle(idle_s)
            return (yield Listen(timeout))
        explain_at: dict[GuardView, float] = {}
        drain = False  # before asking, take what has already arrived (the view waited for it)

        def resync(views: Sequence[GuardView]) -> Generator[WatchStep, Any, None]:
            """Re-read, and the next slow re-read is a while from now. The read covers a change
            still waiting for its explanation: this view no longer asks for one."""
            nonlocal resync_at
            for view in views:
                snap = yield from self._on(view, view.resync_steps())
                self.placement.clock(snap.redis_now)  # read from the primary
                explain_at.pop(view, None)
            if len(views) == len(self.views):
                resync_at = self._next_resync()

        yield from resync(self.views)
        heartbeat_at = self._next_heartbeat()

        def take(message: Any) -> Generator[WatchStep, Any, None]:
            """One pushed message: the connection is alive; apply it, and re-read or schedule
            an explanation when it asks for one."""
            nonlocal heartbeat_at, drain
            self._alive()
            heartbeat_at = self._next_heartbeat()
            action, view = self._handle(message)
            if action is RESYNC:
                yield from resync(self.views)
            elif action is EXPLAIN_IT and view is not None and view not in explain_at:
                wait = view.explain_wait()
                explain_at[view], drain = time.monotonic() + wait, drain or wait > 0
            for waiting in [v for v in explain_at if not v.unexplained]:  # explained meanwhile
                del explain_at[waiting]

        while not self._stop.is_set():
            # Sleep until a message or the next thing due: a quiet view wakes once a round.
            due = min(heartbeat_at, resync_at, self._liveness_until, self._replan_at,
                      self.placement.recount_at, *explain_at.values(),
                      *(v.current.valid_until for v in self.views if v.current is not None))
            message = yield from listen(max(0.001, due - time.monotonic()))
            if message is not QUIET:
                yield from take(message)
            stale = [v for v in self.views if v.stale]
            if stale:
                yield from resync(stale)
            now = time.monotonic()
            if drain and any(now >= at for at in explain_at.values()):  # waited: explained yet?
                # First what has already arrived: most often another view's explanation.
                drain = False
                for _ in range(EXPLAIN_DRAIN):
                    message = yield from listen(0.001)
                    if message is QUIET:
                        break
                    yield from take(message)
                    if not any(now >= at for at in explain_at.values()):
                        break
            for view in [v for v, at in explain_at.items() if now >= at]:  # still not: ask
                del explain_at[view]
                reply = yield from self._on(view, iter_script(
                    "explain", {"channel": view.channel, "ttl_ms": EXPLAIN_LOCK_MS}))
                # Not taken, and nothing newer was: the version went back (or is unreadable).
                if not view.apply_explanation(reply.get("snapshot")) and view.unexplained:
                    yield from resync([view])
            if now >= heartbeat_at:  # quiet for a while: offer the round's heartbeat
                with contextlib.suppress(redis.RedisError):  # a failed one leaves this view be
                    yield Script("heartbeat", {"channel": CHANGES_CHANNEL, "ttl_ms": HEARTBEAT_LOCK_MS,
                                               "clock": CLOCK_CHANNEL})
                heartbeat_at = self._next_heartbeat()
            if now >= resync_at:
                yield from resync(self.views)
                self.tick()
            if now >= self._replan_at:
                self._planned = True
                raise redis.ConnectionError("following new views")
            if now >= self.placement.recount_at:
                self.placement.recount()
                self._planned = True
                raise redis.ConnectionError("counting the fleet on replicas again")
            if now >= self._liveness_until:
                raise redis.ConnectionError("no message within the liveness bound")
            for view in self.views:
                if view.current is not None and now >= view.current.valid_until:
                    view.republish()

    def _handle(self, message: Any) -> tuple[object | None, GuardView | None]:
        """Apply one pushed message; ``RESYNC`` when the state must be re-read, ``EXPLAIN_IT``
        (with the view) when a change no notice explains must be explained."""
        if not isinstance(message, list) or len(message) < 3 or message[0] != "message":
            return None, None
        channel, data = message[1], message[2]
        if channel == CLOCK_CHANNEL:
            self.placement.check_lag(seconds(data))
            return None, None
        if channel != INVALIDATE_CHANNEL:
            view = self._by_channel.get(channel)
            if view is None or data == HEARTBEAT:
                return None, None  # the default channel's heartbeat, for a watcher of named guards
            if data.startswith(EXPLAIN):
                view.apply_explanation(data[len(EXPLAIN):])
            elif data.startswith(HOT):
                if data[len(HOT):] in WINDOWS:
                    view.told = {**view.told, data[len(HOT):]: time.monotonic()}
            else:
                if self.placement.on_replicas:
                    self.placement.check_lag(notice_time(data))
                view.apply_notice(data, from_channel=True)
            return None, None
        if data is None:  # FLUSHALL / FLUSHDB: everything is gone, the version too
            return RESYNC, None
        changed: dict[GuardView, set[str]] = {}
        for key in data:
            if (view := self._by_key.get(key)) is not None:
                changed.setdefault(view, set()).add(key)
        asking = [view for view, keys in changed.items() if view.tracked(keys)]
        if len(asking) > 1:  # one at a time: the others wait for the slow re-read's cover
            return RESYNC, None
        return (EXPLAIN_IT, asking[0]) if asking else (None, None)

    def _alive(self) -> None:
        self._liveness_until = time.monotonic() + LIVENESS_S
        for view in self.views:
            view.liveness_until = self._liveness_until
            view.republish()

    @staticmethod
    def _next_resync() -> float:
        return time.monotonic() + random.uniform(*RESYNC_S)

    @staticmethod
    def _next_heartbeat() -> float:
        return time.monotonic() + random.uniform(*HEARTBEAT_AFTER_S)


def iter_script(name: str, args: dict[str, Any]) -> Generator[Step, Any, Any]:
    """One script as steps: its reply."""
    return (yield Script(name, args))
