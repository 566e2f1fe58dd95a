"""Where a watcher's view is when views follow replicas (``MEMGUARD_VIEW_URLS``).

A view on a replica hears the primary's messages after the replica applied them. Three things
keep it honest, none of them a command of its own on the primary:

- **which server**: a start drawn at random (a fleet spreads evenly), moved on by one at each
  failure (a dead replica, one silent past the liveness bound, one that lags);
- **lag**: each heartbeat's primary time (``store/lua/heartbeat.lua``) and each notice's ``now``,
  against the primary's clock as the last re-read (on the primary) found it;
- **the fleet's size**: the primary counts none of these subscribers, so each view counts its
  server's when it connects, and once more a while later (a fleet that connects at once counts
  few the first time).
"""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any

import redis

# A view leaves a server whose messages arrive this much later than the primary sent them.
MAX_LAG_S = 1.0
RECOUNT_S = (5.0, 15.0)  # when a view connects once more to count the fleet again


class Placement:
    """One watcher's server, lag and count state (only used when ``on_replicas``)."""

    def __init__(self, on_replicas: bool) -> None:
        self.on_replicas = on_replicas
        self._start, self._turn = random.randrange(1 << 30), 0
        self.server = "primary"  # the server the view is connected to now
        self.offset: float | None = None  # the primary's clock less this process's monotonic one
        self.recount_at = math.inf
        self._recounting = False

    @property
    def index(self) -> int:
        """Which of the view servers to connect to now."""
        return self._start + self._turn

    def moved(self) -> None:
        """The connection failed: the next server."""
        self._turn += 1

    def counted(self) -> None:
        """A count was made on connecting: a first one is made again later."""
        if self._recounting:
            self._recounting = False
        else:
            self.recount_at = time.monotonic() + random.uniform(*RECOUNT_S)

    def recount(self) -> None:
        """The recount is due: the connection ends as planned, and the next one counts."""
        self.recount_at, self._recounting = math.inf, True

    def clock(self, primary_now: float) -> None:
        """The primary's time, just read from it."""
        self.offset = primary_now - time.monotonic()

    def check_lag(self, primary_time: float | None) -> None:
        """A message the primary sent at ``primary_time`` arrived now: more than MAX_LAG_S late
        ends the connection (the next server)."""
        if primary_time is None or self.offset is None or not self.on_replicas:
            return
        lag = time.monotonic() + self.offset - primary_time
        if lag > MAX_LAG_S:
            raise redis.ConnectionError(f"the view's server {self.server} lags the primary by {lag:.1f} s")


def seconds(text: Any) -> float | None:
    """The heartbeat's primary time (``<seconds>.<micros>``)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def notice_time(notice: Any) -> float | None:
    """A transition notice's primary time (its ``now``, ms), if it has one."""
    try:
        return float(json.loads(notice)["now"]) / 1000.0
    except (TypeError, ValueError, KeyError):
        return None
