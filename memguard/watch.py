"""A process-local view of the fleet state, kept fresh by Redis pub/sub.

Every script that changes the forced record publishes on the change channel in the same
round trip, so a subscriber hears of a force within a millisecond or so. The watcher thread
re-reads the state on each notice and pings the subscription; the view carries a deadline
(``valid_until``) past which the guard must not trust it. If the channel breaks, stalls or
the process forks, the view lapses and the guard falls back to reading Redis on each read:
fail safe, never stale.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import redis

from memguard import events
from memguard.state import ForcedRecord, State

PING_INTERVAL_S = 0.5
LIVENESS_S = 2.0
# Writes that bypass the scripts (a hand-typed SET, a key expiring) publish nothing:
# re-read at this interval so they are seen too.
RESYNC_S = 1.0


@dataclass(frozen=True)
class View:
    record: ForcedRecord | None
    valid_until: float  # monotonic; past it the view says nothing
    failures_until: float  # monotonic; before it the failure counter may be non-zero


class Watcher:
    """One daemon thread per process holding the subscription."""

    def __init__(self, state: State, client: redis.Redis, grace_seconds: float) -> None:
        self.state = state
        self.client = client
        self.grace_seconds = grace_seconds
        self.current: View | None = None
        self._liveness_until = 0.0
        self._record_lapse_mono = float("inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_corrupt: str | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="memguard-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.current = None
        if self._thread is not None:
            self._thread.join(timeout=2)

    def invalidate(self) -> None:
        """This process just changed the state: distrust the view until the watcher re-reads."""
        self.current = None

    def wait_ready(self, timeout: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.current is not None:
                return True
            time.sleep(0.005)
        return False

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._follow()
                backoff = 0.1
            except (redis.RedisError, OSError) as exc:
                self.current = None
                events.emit(events.GuardTrouble("redis_error", "watch", type(exc).__name__))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _follow(self) -> None:
        pubsub = self.client.pubsub()
        try:
            pubsub.subscribe(self.state.channel)
            confirmed = pubsub.get_message(timeout=1.0)
            if not confirmed or confirmed["type"] != "subscribe":
                raise redis.ConnectionError("no subscribe confirmation")
            self._alive()
            self._refresh()
            last_ping = last_sync = time.monotonic()
            while not self._stop.is_set():
                msg = pubsub.get_message(timeout=0.1)
                now = time.monotonic()
                if msg is not None:
                    self._alive()
                    if msg["type"] == "message":
                        self.current = None  # distrust the old view until re-read
                        self._refresh()
                        last_sync = now
                if now - last_sync >= RESYNC_S:
                    self._refresh()
                    last_sync = now
                if now - last_ping >= PING_INTERVAL_S:
                    pubsub.ping("memguard")
                    last_ping = now
                if now > self._liveness_until:
                    raise redis.ConnectionError("change channel silent past liveness bound")
        finally:
            self.current = None
            with contextlib.suppress(redis.RedisError):
                pubsub.close()

    def _alive(self) -> None:
        self._liveness_until = time.monotonic() + LIVENESS_S
        view = self.current
        if view is not None:
            self.current = View(view.record, self._deadline(view.record), view.failures_until)

    def _deadline(self, record: ForcedRecord | None) -> float:
        deadline = self._liveness_until
        if record is not None:
            deadline = min(deadline, self._record_lapse_mono)
        return deadline

    def _refresh(self) -> None:
        snap = self.state.snapshot()
        mono = time.monotonic()
        if snap.corrupt is not None and snap.corrupt != self._last_corrupt:
            events.emit(events.GuardTrouble("corrupt_state", "watch", snap.corrupt[:120]))
        self._last_corrupt = snap.corrupt
        record = snap.record
        if record is not None:
            self._record_lapse_mono = mono + record.lapse_time(self.grace_seconds) - snap.redis_now
        failures_until = 0.0
        if snap.fail_count or snap.fail_ttl_ms > 0:
            ttl = snap.fail_ttl_ms / 1000 if snap.fail_ttl_ms > 0 else float("inf")
            failures_until = mono + ttl
        self.current = View(record, self._deadline(record), failures_until)
