"""The latency trip's local side: count slow reads in process, flush them in batches.

A read only bumps two counters under a lock (no Redis); a daemon thread adds the batch to the
fleet's window once a second (``State.record_latencies``), and that script decides. Off, and
no thread, unless ``MEMORY_LATENCY_THRESHOLD_MS`` is set.
"""

from __future__ import annotations

import threading

import redis

from memguard import events
from memguard.guard import origin
from memguard.state import State

FLUSH_S = 1.0


class LatencyMeter:
    def __init__(self, state: State, threshold_ms: int) -> None:
        self.state = state
        self.threshold_s = threshold_ms / 1000.0
        self._lock = threading.Lock()
        self._reads = 0
        self._slow = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, seconds: float) -> None:
        with self._lock:
            self._reads += 1
            if seconds > self.threshold_s:
                self._slow += 1

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="memguard-latency", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def flush(self) -> None:
        with self._lock:
            reads, slow, self._reads, self._slow = self._reads, self._slow, 0, 0
        if not reads:
            return
        try:
            self.state.record_latencies(reads, slow, origin("auto"))
        except redis.RedisError as exc:
            events.emit(events.GuardTrouble("redis_error", "latency", f"{type(exc).__name__}: {exc}"[:200]))

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_S):
            self.flush()
