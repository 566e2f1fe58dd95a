"""Who holds the beat lock: RedBeat's key, as ``memguard status`` and ``memguard doctor`` read it.

RedBeat's lock value is a random token, which says nothing to an operator. memguard's scheduler
(``memguard.beat``) renames the token of the lock it holds to ``memguard:beat:<host>:<pid>@<ms>``
(the Redis time it took the lock), so the holder and how long it has held the lock can be read
off the key. A beat of RedBeat's own scheduler, or of an earlier memguard, keeps a random token:
it is shown as held by an unnamed beat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

PREFIX = "memguard:beat:"
READY_APP_PREFIX = "memguard:redbeat:"  # the ready app's redbeat_key_prefix (memguard.celeryconfig)
_NAMED = re.compile(r"memguard:beat:(?P<host>[A-Za-z0-9._-]{1,200}):(?P<pid>\d{1,10})@(?P<since>\d{1,16})")

# Renames the lock's token only while it is still the one this beat holds, keeping its expiry.
# KEYS[1] the lock; ARGV[1] the current token, ARGV[2] the new token's prefix (host and pid).
# Returns the new token, or false when the lock is not this beat's any more.
RENAME = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local t = redis.call('TIME')
local token = ARGV[2] .. '@' .. tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('SET', KEYS[1], token, 'KEEPTTL')
return token
"""


@dataclass(frozen=True)
class BeatKeys:
    """Where an app's RedBeat keeps its keys: the lock's key (None: the app turned the lock off),
    the prefix, and whether that is on REDIS_URL (``memguard.install`` points RedBeat there; a
    Cluster's RedBeat stays on the broker's Redis)."""

    lock_key: str | None
    prefix: str
    on_redis_url: bool
    elsewhere: str | None = None  # RedBeat's own Redis (redis:// or rediss://) when not on REDIS_URL


@dataclass(frozen=True)
class BeatLock:
    key: str
    held: bool
    holder: str | None = None  # host:pid, when a memguard scheduler holds it
    held_seconds: float | None = None
    expires_in: float | None = None

    def line(self) -> str:
        """``beat lock: <key> held by <host:pid> for N s``, or what stands instead."""
        if not self.held:
            return (f"beat lock:   {self.key} not held: no beat is scheduling the probe "
                    "(is celery beat running, with memguard.install on its app?)")
        expiry = f", renewed within {self.expires_in:.0f} s" if self.expires_in is not None else ""
        if self.holder is None:
            return (f"beat lock:   {self.key} held by an unnamed beat (RedBeat's own scheduler or an "
                    f"earlier memguard){expiry}")
        return f"beat lock:   {self.key} held by {self.holder} for {self.held_seconds:.0f} s{expiry}"

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "held": self.held, "holder": self.holder, "held_seconds": self.held_seconds,
                "expires_in": self.expires_in}


def read(client: Any, key: str, now: float) -> BeatLock:
    """The lock at ``key`` (``now``: Redis time, epoch seconds), read with two plain commands."""
    pipe = client.pipeline(transaction=False)
    pipe.get(key)
    pipe.pttl(key)
    raw, pttl = pipe.execute()
    if raw is None:
        return BeatLock(key, held=False)
    token = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    expires = pttl / 1000 if isinstance(pttl, int) and pttl >= 0 else None
    m = _NAMED.fullmatch(token[:300])
    if m is None:
        return BeatLock(key, held=True, expires_in=expires)
    since = int(m["since"]) / 1000
    return BeatLock(key, held=True, holder=f"{m['host']}:{m['pid']}",
                    held_seconds=max(0.0, now - since), expires_in=expires)

