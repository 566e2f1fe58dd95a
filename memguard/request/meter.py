"""The windowed triggers' local side: count reads in process, flush them in batches.

Two policies judge the fleet's reads over a sliding window rather than one at a time: the
latency trip (``MEMORY_LATENCY_THRESHOLD_MS``: the median read is slow) and the failure-rate
policy (``MEMORY_FAILURE_RATE_THRESHOLD``: too large a share of reads failed). A read only
bumps counters under a lock (no Redis); a daemon thread adds the batch to the fleet's windows,
one script per policy, and the script decides. A batch holding a failure or a slow read goes
within a second (a trip is as prompt as before); a healthy one waits up to a window slot (a
sixth of the window, at most ``HEALTHY_FLUSH_MAX_S``), which is the window's own accuracy: a
healthy fleet then costs Redis one script per process per slot, not per second. Off, and no
thread, unless one of them is set.
"""

from __future__ import annotations

import threading
import time

import redis

from memguard.config.settings import Settings
from memguard.domain import events
from memguard.domain.events import origin
from memguard.store.background import Background
from memguard.store.state import WINDOW_SLOTS, State

FLUSH_S = 1.0
HEALTHY_FLUSH_MAX_S = 10.0


class ReadMeter(Background):
    THREAD_NAME = "memguard-meter"

    def __init__(self, state: State, settings: Settings, hooks: events.Hooks) -> None:
        super().__init__()
        self.state = state
        self.hooks = hooks
        self.slow_s = settings.latency_threshold_ms / 1000.0 if settings.latency_threshold_ms else None
        self.outcomes = settings.failure_rate_on
        windows = [w for w, on in ((settings.latency_window_seconds, self.slow_s is not None),
                                   (settings.failure_rate_window_seconds, self.outcomes)) if on]
        self.healthy_flush_s = max(FLUSH_S, min([HEALTHY_FLUSH_MAX_S, *(w / WINDOW_SLOTS for w in windows)]))
        self._lock = threading.Lock()
        self._reads = self._slow = self._failed = 0
        self._flushed_at = time.monotonic()

    def record(self, seconds: float, failed: bool) -> None:
        with self._lock:
            self._reads += 1
            if self.slow_s is not None and seconds > self.slow_s:
                self._slow += 1
            if failed:
                self._failed += 1

    def flush(self) -> None:
        self._flushed_at = time.monotonic()
        with self._lock:
            reads, slow, failed = self._reads, self._slow, self._failed
            self._reads = self._slow = self._failed = 0
        if not reads:
            return
        try:
            if self.slow_s is not None:
                self.state.record_latencies(reads, slow, origin("auto"))
            if self.outcomes:
                self.state.record_outcomes(reads, failed, origin("auto"))
        except redis.RedisError as exc:
            self.hooks.emit(events.GuardTrouble("redis_error", "meter", f"{type(exc).__name__}: {exc}"[:200]))

    def due(self, now: float) -> bool:
        """Flush now? At once for a failure or a slow read, else once a slot."""
        with self._lock:
            urgent = self._slow > 0 or self._failed > 0
        return urgent or now - self._flushed_at >= self.healthy_flush_s

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_S):
            if self.due(time.monotonic()):
                self.flush()
