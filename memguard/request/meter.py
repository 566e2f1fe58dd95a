"""The windowed triggers' local side: count reads in process, send them only when they matter.

Two policies judge the fleet's reads over a sliding window rather than one at a time: the
latency trip (``MEMORY_LATENCY_THRESHOLD_MS``: the median read is slow) and the failure-rate
policy (``MEMORY_FAILURE_RATE_THRESHOLD``: too large a share of reads failed). A read only
bumps a counter under a lock (no Redis). The counts are kept per time bucket, so that when
they are sent, each lands in the window slot of its own time; the window's script decides.

- A batch holding a failure or a slow read is sent within a second (``FLUSH_S``).
- Healthy counts only matter as the denominator of a window that holds bad reads. So while the
  fleet's windows hold none, a process keeps its healthy counts (a window's worth, older ones
  dropped) and sends nothing: a healthy fleet costs Redis no command for the policies.
- The first bad reads in a window make its script tell the fleet once (a ``hot <window>``
  message on memguard's channel, renewed every half window while bad reads remain). Each
  process then sends what it kept within a second, and from then on once a slot (a sixth of
  the window, at most ``HEALTHY_FLUSH_MAX_S``, the window's own accuracy). The script judges a
  window only ``state.CATCHUP_MS`` (2 s) after the fleet was first told, when those counts are in.
- A process whose view is not live (no watcher, or reconnecting) cannot hear the message and
  sends once a slot, as if told.
- A process that sent bad reads the script did not judge yet (``waiting``) calls it again, with
  no counts, when the catch-up is over: a burst of bad reads followed by silence is judged
  within a few seconds, not only when some later read is sent.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import redis

from memguard.config.settings import Settings
from memguard.domain import events
from memguard.domain.events import origin
from memguard.request.view import GuardView
from memguard.store.background import Background
from memguard.store.keys import LATENCY_WINDOW, OUTCOMES_WINDOW
from memguard.store.state import CATCHUP_MS, WINDOW_SLOTS, Counts, State

FLUSH_S = 1.0
HEALTHY_FLUSH_MAX_S = 10.0
RECHECK_S = CATCHUP_MS / 1000 + 0.2  # after a batch the script kept waiting: its verdict is due


@dataclass(frozen=True)
class Window:
    """One policy's fleet window, as the meter sees it."""

    name: str  # the Keys field and the name in the script's "hot" message
    seconds: float
    slow: bool  # bad reads are the slow ones (latency), else the failed ones (outcomes)

    @property
    def slot_s(self) -> float:
        return self.seconds / WINDOW_SLOTS


class ReadMeter:
    """One guard's windowed counts (its ``view`` hears the fleet's "hot" messages); ``Meters``
    sends them when due."""

    def __init__(self, state: State, settings: Settings, hooks: events.Hooks,
                 view: GuardView | None = None) -> None:
        self.state = state
        self.hooks = hooks
        self.view = view
        self.slow_s = settings.latency_threshold_ms / 1000.0 if settings.latency_threshold_ms else None
        self.windows = [w for w, on in ((Window(LATENCY_WINDOW, settings.latency_window_seconds, True),
                                         self.slow_s is not None),
                                        (Window(OUTCOMES_WINDOW, settings.failure_rate_window_seconds, False),
                                         settings.failure_rate_on)) if on]
        self.healthy_flush_s = max(FLUSH_S, min([HEALTHY_FLUSH_MAX_S, *(w.slot_s for w in self.windows)]))
        self.bucket_s = self.healthy_flush_s
        self.keep_s = max((w.seconds for w in self.windows), default=0.0)
        self._lock = threading.Lock()
        self._buckets: dict[int, list[int]] = {}  # int(monotonic // bucket_s): [reads, slow, failed]
        self._urgent = False
        self._flushed_at = time.monotonic()
        self._recheck_at: dict[str, float] = {}  # window -> when to ask for the verdict on our bad reads

    def record(self, seconds: float, failed: bool) -> None:
        slow = self.slow_s is not None and seconds > self.slow_s
        index = int(time.monotonic() // self.bucket_s)
        with self._lock:
            bucket = self._buckets.get(index)
            if bucket is None:
                bucket = self._buckets[index] = [0, 0, 0]
            bucket[0] += 1
            bucket[1] += slow
            bucket[2] += failed
            self._urgent = self._urgent or slow or failed

    def due(self, now: float) -> bool:
        """Send now? At once for a failure or a slow read; within a second of the fleet being
        told a window holds bad reads; then once a slot while it does; else never (the counts
        are kept, a window's worth)."""
        with self._lock:
            if self._urgent or any(at <= now for at in self._recheck_at.values()):
                return True
            oldest = int((now - self.keep_s) // self.bucket_s)
            for index in [i for i in self._buckets if i < oldest]:
                del self._buckets[index]
            if not self._buckets:
                return False
        told = self._told()
        if told is None:  # the view cannot hear the message: as if told
            return now - self._flushed_at >= self.healthy_flush_s
        heard = [told.get(w.name, -math.inf) for w in self.windows]
        if any(at > self._flushed_at for at in heard):
            return True
        hot = any(now - at < w.seconds + w.slot_s for w, at in zip(self.windows, heard, strict=True))
        return hot and now - self._flushed_at >= self.healthy_flush_s

    def _told(self) -> dict[str, float] | None:
        """When this process heard each window's "hot" message (monotonic); None if it cannot."""
        if self.view is None or self.view.current is None:
            return None
        return self.view.told

    def flush_steps(self, now: float) -> Generator[Any, Any, None]:
        """Send every kept count, each window's in its own slots (one script per window)."""
        self._flushed_at = now
        with self._lock:
            buckets, self._buckets, self._urgent = self._buckets, {}, False
        by = origin("auto")
        for window in self.windows:
            counts = self.counts(window, buckets, now)
            recheck = self._recheck_at.get(window.name, math.inf) <= now
            if counts or recheck:  # no counts: only the verdict on the bad reads sent before
                self._recheck_at.pop(window.name, None)
                if window.slow:
                    t = yield from self.state.record_latencies_steps(counts, by)
                else:
                    t = yield from self.state.record_outcomes_steps(counts, by)
                if t.waiting and (recheck or any(bad for _, _, bad in counts)):
                    self._recheck_at[window.name] = now + RECHECK_S

    def counts(self, window: Window, buckets: dict[int, list[int]], now: float) -> Counts:
        """``buckets`` as the window's script takes them: (age in ms, reads, bad reads), one
        entry per window slot, none older than the window."""
        slot_ms = window.slot_s * 1000
        slots: dict[int, list[int]] = {}
        for index, (reads, slow, failed) in buckets.items():
            age_ms = max(0, int((now - (index + 0.5) * self.bucket_s) * 1000))
            if age_ms < window.seconds * 1000:
                entry = slots.setdefault(int(age_ms // slot_ms), [age_ms, 0, 0])
                entry[0] = min(entry[0], age_ms)
                entry[1] += reads
                entry[2] += slow if window.slow else failed
        return [(age, reads, bad) for age, reads, bad in slots.values() if reads]

    def flush(self) -> None:
        try:
            self.state.run(self.flush_steps(time.monotonic()))
        except redis.RedisError as exc:
            self.hooks.emit(events.GuardTrouble("redis_error", "meter", f"{type(exc).__name__}: {exc}"[:200]))


class Meters(Background):
    """One thread for every guard's read meter in the process: each sends its counts when due,
    started with the first meter and idle without any."""

    THREAD_NAME = "memguard-meter"

    def __init__(self, *, autostart: bool = True) -> None:
        super().__init__()
        self.meters: tuple[ReadMeter, ...] = ()
        self._lock = threading.Lock()
        self.autostart = autostart  # False: a one-shot command's (it starts no thread)

    def add(self, meter: ReadMeter) -> None:
        with self._lock:
            self.meters = (*self.meters, meter)
            if self._thread is None and self.autostart:
                self.start()

    def remove(self, meter: ReadMeter) -> None:
        with self._lock:
            self.meters = tuple(m for m in self.meters if m is not meter)

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_S):
            for meter in self.meters:
                try:
                    if meter.due(time.monotonic()):
                        meter.flush()
                except Exception as fault:  # a bug of memguard's own: told, the others go on
                    meter.hooks.emit(events.internal("meter", fault))
