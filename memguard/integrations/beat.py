"""A RedBeat scheduler that rides through Redis blips instead of exiting.

RedBeat's own scheduler exits on the first Redis connection error, or when its lock expired
during a pause (a Redis restart, a failover): every standby beat exits the same way, and the
fleet is left without a prober until something restarts them. This one keeps running:

- a tick that cannot reach Redis schedules nothing and tries again after the loop interval;
- a beat starting while Redis is away starts anyway: the static schedule is written when it
  takes the lock;
- a beat that does not hold the lock (a standby, or one whose lock lapsed) tries to take it,
  without blocking, on every tick, and schedules only while it holds it: never two active
  schedulers, since taking the lock is one atomic ``SET NX``;
- on taking the lock it writes the static schedule again, so a Redis that lost its data
  (restarted without persistence) gets the probe's entry back;
- the lock it holds names it (``memguard:beat:<host>:<pid>@<ms>``, ``memguard.ops.beatlock``), so
  ``memguard status`` can say which beat schedules and for how long.

    celery -A myapp beat -S memguard.beat.Scheduler

``memguard.install`` makes it the app's default scheduler. Running beat under a supervisor
that restarts it stays good advice: this covers Redis, not the beat process itself.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, RedBeatScheduler, get_redis
from redis.exceptions import LockError

from memguard.config.target import connection_name
from memguard.ops import beatlock

logger = logging.getLogger("memguard.beat")


class Scheduler(RedBeatScheduler):
    """RedBeat, with the lock taken on any tick that finds it free and Redis errors survived.

    Only public RedBeat methods are overridden: ``tick`` wraps RedBeat's own (which extends the
    lock it holds, then sends what is due) and ``close``'s lock handling is RedBeat's.
    """

    lock: Any  # RedBeat's: its redis-py Lock while this beat holds it, else None

    def tick(self, min: Any = min, **kwargs: Any) -> float:
        try:
            if self.lock_key and self.lock is None and not self._take_lock():
                return self.max_interval  # a standby: the lock is someone else's
            if self.lock is not None and not self._named():
                self._name_lock()
            return super().tick(min=min, **kwargs)
        except LockError:
            logger.warning("beat: lost the lock (it expired while Redis was away); taking it again")
            self.lock = None
            return self.max_interval
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("beat: Redis unreachable (%s); scheduling resumes when it is back",
                           type(exc).__name__)
            return self.max_interval

    def setup_schedule(self) -> None:
        """RedBeat writes the static schedule at start-up; with Redis away, the lock's taker does."""
        try:
            super().setup_schedule()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("beat: Redis unreachable (%s) at start-up; the schedule is written when the "
                           "lock is taken", type(exc).__name__)

    def _named(self) -> bool:
        token = self.lock.local.token
        return isinstance(token, bytes) and token.startswith(beatlock.PREFIX.encode())

    def _name_lock(self) -> None:
        """Give the lock this beat holds its name (RedBeat took it with a random token); the
        lock's expiry and owner are unchanged, and a lock lost meanwhile is left alone."""
        client = get_redis(self.app)
        token = client.register_script(beatlock.RENAME)(
            keys=[self.lock_key], args=[self.lock.local.token, connection_name("beat")])
        if token is not None:
            self.lock.local.token = token if isinstance(token, bytes) else str(token).encode()

    def _take_lock(self) -> bool:
        """Take the RedBeat lock without blocking, as RedBeat's start-up does; True if taken."""
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        if not lock.acquire(blocking=False):
            return False
        # A Redis that lost its data gets the static entries back. A failure here reaches tick
        # and the lock, held by no one, expires: the next taker writes them.
        super().setup_schedule()
        logger.info("beat: Acquired lock")
        self.lock = lock
        return True
