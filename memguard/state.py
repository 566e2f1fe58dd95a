"""The fleet-wide downgrade state in Redis.

Every transition is one Lua script, registered once and run atomically on the server, so
that N workers failing together produce exactly one downgrade and no failure is lost. Time
comes from the Redis server's clock (``TIME``) so workers with skewed clocks still agree.
Each script that changes the forced record publishes on ``CHANGES_CHANNEL`` in the same
round trip; that is what keeps in-process views fresh (see ``memguard.watch``).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import redis

FORCED_MODE_KEY = "mem:mode:forced:v1"
CONSECUTIVE_FAILURES_KEY = "mem:read:consec_failures"
PROBE_LOCK_KEY = "mem:probe:lock"
CHANGES_CHANNEL = "mem:mode:changes"

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- nil: no record; false: a value memguard cannot read; else the record.
local function decode(raw)
  if not raw then return nil end
  local ok, rec = pcall(cjson.decode, raw)
  if ok and type(rec) == 'table' and rec.mode == 'write_only'
     and type(rec['until']) == 'number' then
    return rec
  end
  return false
end
local function ident(rec)
  if type(rec.id) == 'string' then return rec.id end
  return tostring(rec.forced_at) .. ':' .. tostring(rec['until'])
end
local function lapse_ms(rec, grace_ms)
  if type(rec.lapse_at) == 'number' then return rec.lapse_at * 1000 end
  return rec['until'] * 1000 + grace_ms
end
local function force(key, now, reason, hold_ms, grace_ms, by, prev, channel)
  local holds = 1
  if prev and reason == 'probe_failed' then holds = (tonumber(prev.holds) or 1) + 1 end
  local rec = {mode = 'write_only', reason = reason, forced_at = now / 1000,
               hold_seconds = hold_ms / 1000, lapse_at = (now + hold_ms + grace_ms) / 1000,
               holds = holds, by = cjson.decode(by), id = redis.sha1hex(now .. by .. reason)}
  rec['until'] = (now + hold_ms) / 1000
  local raw = cjson.encode(rec)
  -- Safety net only: readers or the prober normally end the record (and log it) first.
  redis.call('SET', key, raw, 'PXAT', now + hold_ms + 2 * grace_ms)
  redis.call('PUBLISH', channel, 'forced')
  return raw
end
"""

# KEYS: forced. ARGV: reason, hold_ms, grace_ms, by(json), auto(1/0), channel.
_FORCE = """
local now = now_ms()
local raw = redis.call('GET', KEYS[1])
local prev = decode(raw)
if ARGV[5] == '1' and prev then return {'held', raw} end
local new = force(KEYS[1], now, ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], prev, ARGV[6])
return {'forced', new, raw or ''}
"""

# KEYS: counter, forced. ARGV: window_ms, threshold, hold_ms, grace_ms, by, auto, channel.
_RECORD_FAILURE = """
local repaired = ''
local count = redis.pcall('INCR', KEYS[1])
if type(count) == 'table' then
  redis.call('DEL', KEYS[1])
  count = redis.call('INCR', KEYS[1])
  repaired = 'repaired'
end
if count == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('PUBLISH', ARGV[7], 'failures')
end
if count < tonumber(ARGV[2]) then return {count, 'counted', '', repaired} end
local raw = redis.call('GET', KEYS[2])
local prev = decode(raw)
if prev then return {count, 'held', raw, repaired} end
if ARGV[6] ~= '1' then return {count, 'disabled', '', repaired} end
local new = force(KEYS[2], now_ms(), 'consecutive_failures', tonumber(ARGV[3]),
                  tonumber(ARGV[4]), ARGV[5], nil, ARGV[7])
return {count, 'forced', new, repaired, raw or ''}
"""

# KEYS: counter. ARGV: channel.
_RESET_FAILURES = """
local n = redis.call('DEL', KEYS[1])
if n > 0 then redis.call('PUBLISH', ARGV[1], 'reset') end
return n
"""

# KEYS: forced, counter. ARGV: channel.
_CLEAR = """
local raw = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
if raw then redis.call('PUBLISH', ARGV[1], 'cleared') end
return raw or ''
"""

# KEYS: forced, counter. Returns the record, the counter, its ttl and the server time.
_SNAPSHOT = """
local raw = redis.call('GET', KEYS[1])
local count = redis.pcall('GET', KEYS[2])
if type(count) == 'table' then count = '?' end
return {raw or '', count or '', redis.call('PTTL', KEYS[2]), tostring(now_ms())}
"""

# KEYS: forced. ARGV: grace_ms, channel. Ends an expired hold nobody probed in time.
_LAPSE = """
local raw = redis.call('GET', KEYS[1])
local rec = decode(raw)
if not rec or now_ms() < lapse_ms(rec, tonumber(ARGV[1])) then return '' end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], 'lapsed')
return raw
"""

# KEYS: forced, lock. ARGV: token, lock_ms, channel.
_PROBE_CLAIM = """
local now = now_ms()
local raw = redis.call('GET', KEYS[1])
if not raw then return {'idle'} end
local rec = decode(raw)
if rec == false then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], 'cleared')
  return {'corrupt', raw}
end
if now < rec['until'] * 1000 then return {'held', raw} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'claimed', raw, ident(rec)}
end
return {'busy', raw}
"""

# KEYS: forced, lock, counter. ARGV: token, id, success(1/0), hold_ms, grace_ms, by, channel.
_PROBE_FINISH = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {'lost', ''} end
redis.call('DEL', KEYS[2])
local raw = redis.call('GET', KEYS[1])
local rec = decode(raw)
if not rec or ident(rec) ~= ARGV[2] then return {'superseded', raw or ''} end
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('PUBLISH', ARGV[7], 'cleared')
  return {'restored', raw}
end
local new = force(KEYS[1], now_ms(), 'probe_failed', tonumber(ARGV[4]), tonumber(ARGV[5]),
                  ARGV[6], rec, ARGV[7])
return {'reforced', new, raw}
"""


class CorruptRecord(ValueError):
    """A memguard key holds a value memguard did not write."""


@dataclass(frozen=True)
class ForcedRecord:
    """The forced-mode record as stored in Redis (times are Redis epoch seconds)."""

    mode: str
    reason: str
    until: float
    forced_at: float
    lapse_at: float | None
    holds: int
    by: dict[str, Any]

    @classmethod
    def parse(cls, raw: str) -> ForcedRecord:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("mode") != "write_only":
                raise CorruptRecord(f"not a write_only record: {raw[:80]!r}")
            until = float(data["until"])
            forced_at = float(data.get("forced_at", until))
            lapse_at = data.get("lapse_at")
            return cls(
                mode="write_only",
                reason=str(data.get("reason", "unknown")),
                until=until,
                forced_at=forced_at,
                lapse_at=None if lapse_at is None else float(lapse_at),
                holds=int(data.get("holds", 1)),
                by=data.get("by") if isinstance(data.get("by"), dict) else {},
            )
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, CorruptRecord):
                raise
            raise CorruptRecord(f"unreadable forced record: {raw[:80]!r}") from exc

    def lapse_time(self, grace_seconds: float) -> float:
        return self.lapse_at if self.lapse_at is not None else self.until + grace_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "until": self.until,
            "forced_at": self.forced_at,
            "lapse_at": self.lapse_at,
            "holds": self.holds,
            "by": self.by,
        }


@dataclass(frozen=True)
class Snapshot:
    """One consistent read of the state, with the Redis clock at that moment."""

    record: ForcedRecord | None
    corrupt: str | None
    fail_count: int
    fail_ttl_ms: int
    redis_now: float


@dataclass(frozen=True)
class Transition:
    """What a script did: its status, the record it left and the one it replaced."""

    status: str
    record: ForcedRecord | None = None
    previous: ForcedRecord | None = None
    fail_count: int = 0
    repaired: bool = False
    ident: str = ""


def _record(raw: str | None) -> ForcedRecord | None:
    if not raw:
        return None
    try:
        return ForcedRecord.parse(raw)
    except CorruptRecord:
        return None


class State:
    """Atomic operations on the forced record, the failure counter and the probe lock."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        grace_seconds: int = 60,
        forced_key: str = FORCED_MODE_KEY,
        counter_key: str = CONSECUTIVE_FAILURES_KEY,
        lock_key: str = PROBE_LOCK_KEY,
        channel: str = CHANGES_CHANNEL,
    ) -> None:
        self.client = client
        self.grace_ms = grace_seconds * 1000
        self.forced_key = forced_key
        self.counter_key = counter_key
        self.lock_key = lock_key
        self.channel = channel
        reg = client.register_script
        self._force = reg(_PRELUDE + _FORCE)
        self._record_failure = reg(_PRELUDE + _RECORD_FAILURE)
        self._reset = reg(_RESET_FAILURES)
        self._clear = reg(_CLEAR)
        self._snapshot = reg(_PRELUDE + _SNAPSHOT)
        self._lapse = reg(_PRELUDE + _LAPSE)
        self._claim = reg(_PRELUDE + _PROBE_CLAIM)
        self._finish = reg(_PRELUDE + _PROBE_FINISH)

    def snapshot(self) -> Snapshot:
        raw, count, ttl, now = self._snapshot(keys=[self.forced_key, self.counter_key])
        corrupt = None
        record = None
        if raw:
            try:
                record = ForcedRecord.parse(raw)
            except CorruptRecord:
                corrupt = raw
        try:
            fail_count = int(count) if count else 0
        except ValueError:
            fail_count = 0
        return Snapshot(record, corrupt, fail_count, int(ttl), int(now) / 1000.0)

    def force(self, reason: str, hold_seconds: int, by: dict[str, Any], *, auto: bool) -> Transition:
        """Write a record; an automatic trigger never replaces (or shortens) an existing one."""
        res = self._force(
            keys=[self.forced_key],
            args=[reason, hold_seconds * 1000, self.grace_ms, json.dumps(by), int(auto), self.channel],
        )
        if res[0] == "held":
            return Transition("held", record=_record(res[1]))
        return Transition("forced", record=_record(res[1]), previous=_record(res[2]))

    def record_failure(
        self, *, window_seconds: int, threshold: int, hold_seconds: int, by: dict[str, Any], auto: bool
    ) -> Transition:
        """Count one failure and, at the threshold, force: one round trip."""
        res = self._record_failure(
            keys=[self.counter_key, self.forced_key],
            args=[
                window_seconds * 1000,
                threshold,
                hold_seconds * 1000,
                self.grace_ms,
                json.dumps(by),
                int(auto),
                self.channel,
            ],
        )
        count, status, raw, repaired = res[0], res[1], res[2], res[3]
        previous = _record(res[4]) if len(res) > 4 else None
        return Transition(
            status, record=_record(raw), previous=previous, fail_count=int(count), repaired=bool(repaired)
        )

    def reset_failures(self) -> bool:
        return bool(self._reset(keys=[self.counter_key], args=[self.channel]))

    def clear(self) -> ForcedRecord | None:
        """Remove the record (and the failure count); returns what was removed."""
        return _record(self._clear(keys=[self.forced_key, self.counter_key], args=[self.channel]))

    def lapse(self) -> ForcedRecord | None:
        """End a record whose hold plus grace has passed on the Redis clock; returns it."""
        return _record(self._lapse(keys=[self.forced_key], args=[self.grace_ms, self.channel]))

    def claim_probe(self, lock_ms: int) -> tuple[Transition, str]:
        """Take the fleet-wide probe lock if a hold has expired; returns the lock token."""
        token = secrets.token_hex(16)
        res = self._claim(keys=[self.forced_key, self.lock_key], args=[token, lock_ms, self.channel])
        status = res[0]
        raw = res[1] if len(res) > 1 else ""
        if status == "corrupt":
            return Transition("corrupt"), token
        return Transition(status, record=_record(raw), ident=res[2] if len(res) > 2 else ""), token

    def finish_probe(
        self, token: str, ident: str, *, success: bool, hold_seconds: int, by: dict[str, Any]
    ) -> Transition:
        """Apply a probe's result, unless the lock or the record changed meanwhile."""
        res = self._finish(
            keys=[self.forced_key, self.lock_key, self.counter_key],
            args=[token, ident, int(success), hold_seconds * 1000, self.grace_ms, json.dumps(by),
                  self.channel],
        )
        status = res[0]
        if status == "reforced":
            return Transition(status, record=_record(res[1]), previous=_record(res[2]))
        if status == "restored":
            return Transition(status, previous=_record(res[1]))
        return Transition(status, record=_record(res[1]))
