"""The fleet-wide downgrade state in Redis, and the one object that changes it.

Every transition is one Lua script, registered once and run atomically on the server, so
that N workers failing together produce exactly one downgrade and no failure is lost. Time
comes from the Redis server's clock (``TIME``) so workers with skewed clocks still agree.
Each script that changes the record or the counter publishes a notice with the new values
on ``CHANGES_CHANNEL`` in the same round trip; that is what keeps in-process views fresh
without a read per process (see ``memguard.watch``).

``State`` is the only writer: it runs the script, hands its notice to the local view, and emits
the event (``memguard.events``) that metrics, logs and other hooks subscribe to. Guard,
prober, flags, tasks and CLI call it and never finish a transition by hand.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from memguard import events
from memguard.asyncredis import AsyncRedis
from memguard.modes import EffectiveMode, base_mode_of, combine
from memguard.settings import Settings
from memguard.steps import ReadSnapshot, Script, Step, Steps
from memguard.steps import run as run_steps

T = TypeVar("T")

FORCED_MODE_KEY = "mem:mode:forced:v1"
CONSECUTIVE_FAILURES_KEY = "mem:read:consec_failures"
PROBE_LOCK_KEY = "mem:probe:lock"
PROBE_HEARTBEAT_KEY = "mem:probe:heartbeat"
AUDIT_KEY = "mem:audit"
NOTIFY_CURSOR_KEY = "mem:notify:cursor"
NOTIFY_STUCK_KEY = "mem:notify:stuck"
AUDIT_MAXLEN = 10_000
VERSION_KEY = "mem:state:version"
LATENCY_KEY = "mem:read:latency"
OUTCOMES_KEY = "mem:read:outcomes"
FAILING_HOSTS_KEY = "mem:read:failing_hosts"
AUTH_HOSTS_KEY = "mem:read:auth_failing_hosts"
WINDOW_SLOTS = 6  # the latency and outcome windows are summed in this many time slots
LATENCY_SLOW_RATIO = 0.5  # more than half the reads slow: the median is slow
NOTIFY_LOCK_KEY = "mem:notify:lock"
CHANGES_CHANNEL = "mem:mode:changes"
# The prober's heartbeat outlives this many probe intervals: its absence means no prober.
HEARTBEAT_INTERVALS = 12

# Every script gets the same keys: KEYS = forced, counter, version, probe lock, probe
# heartbeat, latency, failing hosts, auth-failing hosts; ARGV[1] = the change channel, then
# the script's own arguments. A script that changes the record or the counter ends with
# notify(): it bumps the version and publishes (and returns) a notice carrying the new
# values, so every process's view applies the change without reading Redis (memguard.watch).
_PRELUDE = """
local FORCED, COUNTER, VERSION, LOCK, BEAT, LATENCY = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local FAILING_HOSTS, AUTH_HOSTS, OUTCOMES = KEYS[7], KEYS[8], KEYS[9]
-- The quorum policy: note this host, and say whether enough distinct hosts are in the set.
local function quorum_met(set, quorum, instance, window_ms)
  if quorum <= 1 then return true end
  redis.call('SADD', set, instance)
  if redis.call('PTTL', set) < 0 then redis.call('PEXPIRE', set, window_ms) end
  return redis.call('SCARD', set) >= quorum
end
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
-- The notice: forced = the new record ('' when removed), count/ttl = the counter, when changed.
local function notify(change)
  change.v = redis.call('INCR', VERSION)
  change.now = now_ms()
  local notice = cjson.encode(change)
  redis.call('PUBLISH', ARGV[1], notice)
  return notice
end
local function write_record(now, reason, hold_ms, grace_ms, by, prev)
  local holds, since = 1, now / 1000
  if prev and reason == 'probe_failed' then
    holds = (tonumber(prev.holds) or 1) + 1
    since = tonumber(prev.since) or tonumber(prev.forced_at) or since
  end
  local rec = {mode = 'write_only', reason = reason, forced_at = now / 1000, since = since,
               hold_seconds = hold_ms / 1000, lapse_at = (now + hold_ms + grace_ms) / 1000,
               holds = holds, by = cjson.decode(by), id = redis.sha1hex(now .. by .. reason)}
  rec['until'] = (now + hold_ms) / 1000
  local raw = cjson.encode(rec)
  -- Safety net only: readers or the prober normally end the record (and log it) first.
  redis.call('SET', FORCED, raw, 'PXAT', now + hold_ms + 2 * grace_ms)
  return raw
end
"""

# ARGV: channel, reason, hold_ms, grace_ms, by(json), auto(1/0), quorum, instance, window_ms.
# -> {"held", current, "", ""} (auto and a record exists) | {"quorum", "", "", ""} (fewer
#    hosts than the quorum have seen it in the window) | {"forced", new, previous or "", notice}
_FORCE = """
local raw = redis.call('GET', FORCED)
local prev = decode(raw)
if ARGV[6] == '1' and prev then return {'held', raw, '', ''} end
if not quorum_met(AUTH_HOSTS, tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])) then
  return {'quorum', '', '', ''}
end
local new = write_record(now_ms(), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], prev)
return {'forced', new, raw or '', notify({forced = new})}
"""

# ARGV: channel, window_ms, threshold, hold_ms, grace_ms, by, auto, quorum, instance.
# -> {status, count, record or "", repaired ("1" or ""), previous or "", notice};
#    status: "counted" (below threshold), "quorum" (at the threshold, from too few hosts),
#    "held" (a record exists), "disabled", "forced"
_RECORD_FAILURE = """
local repaired = ''
local count = redis.pcall('INCR', COUNTER)
if type(count) == 'table' then
  redis.call('DEL', COUNTER)
  count = redis.call('INCR', COUNTER)
  repaired = '1'
end
if count == 1 or redis.call('PTTL', COUNTER) < 0 then redis.call('PEXPIRE', COUNTER, ARGV[2]) end
local change = {count = count, ttl = redis.call('PTTL', COUNTER)}
local enough = quorum_met(FAILING_HOSTS, tonumber(ARGV[8]), ARGV[9], change.ttl)
local status, raw, previous = 'counted', '', ''
if count >= tonumber(ARGV[3]) and not enough then
  status = 'quorum'
elseif count >= tonumber(ARGV[3]) then
  raw = redis.call('GET', FORCED)
  if decode(raw) then
    status = 'held'
  elseif ARGV[7] ~= '1' then
    status, raw = 'disabled', ''
  else
    previous = raw or ''
    raw = write_record(now_ms(), 'consecutive_failures', tonumber(ARGV[4]), tonumber(ARGV[5]),
                       ARGV[6], nil)
    change.forced, status = raw, 'forced'
  end
end
return {status, count, raw or '', repaired, previous, notify(change)}
"""

# ARGV: channel. -> {1, notice} if there was a count, else {0, ""}
_RESET_FAILURES = """
if redis.call('DEL', COUNTER) == 0 then return {0, ''} end
redis.call('DEL', FAILING_HOSTS)
return {1, notify({count = 0, ttl = -2})}
"""

# ARGV: channel. -> {removed record or "", notice or ""}
_CLEAR = """
local raw = redis.call('GET', FORCED)
redis.call('DEL', LATENCY, FAILING_HOSTS, AUTH_HOSTS, OUTCOMES)
if redis.call('DEL', FORCED, COUNTER) == 0 then return {'', ''} end
return {raw or '', notify({forced = '', count = 0, ttl = -2})}
"""

# ARGV: channel, grace_ms. Ends an expired hold nobody probed in time.
# -> {removed record, notice}, or {"", ""} (none, or not yet past hold plus grace)
_LAPSE = """
local raw = redis.call('GET', FORCED)
local rec = decode(raw)
if not rec or now_ms() < lapse_ms(rec, tonumber(ARGV[2])) then return {'', ''} end
redis.call('DEL', FORCED)
return {raw, notify({forced = ''})}
"""

# ARGV: channel, reads, bad reads, window_ms, min_reads, hold_ms, grace_ms, by, auto, slot_ms,
# ratio, reason, window key (6: the latency window, 9: the outcome window).
# Adds a process's batch to a fleet-wide sliding window (a hash of per-slot counts) and
# forces ``reason`` when the window holds at least min_reads reads and more than ``ratio`` of
# them were bad: slow reads for the latency trip (ratio 0.5: the median is slow), failed
# reads for the failure-rate policy.
# -> {status, reads, bad, record or "", previous or "", notice or ""};
#    status: "counted", "held" (a record exists), "disabled", "forced"
_WINDOW_TRIP = """
local WINDOW = KEYS[tonumber(ARGV[13])]
local now = now_ms()
local slot_ms, window_ms = tonumber(ARGV[10]), tonumber(ARGV[4])
local slot = math.floor(now / slot_ms)
redis.call('HINCRBY', WINDOW, slot .. ':t', ARGV[2])
redis.call('HINCRBY', WINDOW, slot .. ':b', ARGV[3])
redis.call('PEXPIRE', WINDOW, window_ms + 2 * slot_ms)
local oldest = math.floor((now - window_ms) / slot_ms)
local reads, bad = 0, 0
local fields = redis.call('HGETALL', WINDOW)
for i = 1, #fields, 2 do
  local s, kind = string.match(fields[i], '^(%d+):(%a)$')
  if s == nil or tonumber(s) < oldest then
    redis.call('HDEL', WINDOW, fields[i])
  elseif kind == 't' then
    reads = reads + tonumber(fields[i + 1])
  else
    bad = bad + tonumber(fields[i + 1])
  end
end
if reads < tonumber(ARGV[5]) or bad <= reads * tonumber(ARGV[11]) then
  return {'counted', reads, bad, '', '', ''}
end
local raw = redis.call('GET', FORCED)
if decode(raw) then return {'held', reads, bad, raw, '', ''} end
if ARGV[9] ~= '1' then return {'disabled', reads, bad, '', '', ''} end
local new = write_record(now, ARGV[12], tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], nil)
return {'forced', reads, bad, new, raw or '', notify({forced = new})}
"""

# KEYS: audit stream, notify cursor, stuck marker. ARGV: max entries, stuck episode ("" if
# none is stuck). Hands each transition to exactly one caller fleet-wide: the cursor moves
# past what is returned in the same step. The first call starts at the end of the stream.
# -> {stuck (1 if this caller should announce the episode, else 0), id1, fields1, id2, ...}
_NOTIFY_CLAIM = """
local cursor = redis.call('GET', KEYS[2])
local out = {0}
if ARGV[2] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[2] then
  redis.call('SET', KEYS[3], ARGV[2], 'EX', 7 * 86400)
  out[1] = 1
end
if not cursor then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  redis.call('SET', KEYS[2], last[1] and last[1][1] or '0-0')
  return out
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. cursor, '+', 'COUNT', ARGV[1])
for _, e in ipairs(entries) do
  table.insert(out, e[1])
  table.insert(out, e[2])
  cursor = e[1]
end
redis.call('SET', KEYS[2], cursor)
return out
"""

# ARGV: channel, token, lock_ms, heartbeat_ms. Every tick also renews the prober's
# heartbeat (read by the metrics: no heartbeat, no prober).
# -> {"idle", "", "", ""} | {"corrupt", raw, "", notice} (removed) | {"held", raw, "", ""}
#    | {"busy", raw, "", ""} | {"claimed", raw, id, ""}
_PROBE_CLAIM = """
local now = now_ms()
redis.call('SET', BEAT, now, 'PX', ARGV[4])
local raw = redis.call('GET', FORCED)
if not raw then return {'idle', '', '', ''} end
local rec = decode(raw)
if rec == false then
  redis.call('DEL', FORCED)
  return {'corrupt', raw, '', notify({forced = ''})}
end
if now < rec['until'] * 1000 then return {'held', raw, '', ''} end
if redis.call('SET', LOCK, ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {'claimed', raw, ident(rec), ''}
end
return {'busy', raw, '', ''}
"""

# ARGV: channel, token, id, success(1/0), hold_ms, grace_ms, by, cap_ms, jitter (0.9..1).
# A failed probe doubles the hold of the one before (300 -> 600 -> 1200 s ...) up to the
# cap, less up to 10 % so fleets sharing a Zep do not probe in step.
# -> {"lost", "", "", ""} | {"superseded", raw, "", ""} | {"restored", raw, "", notice}
#    | {"reforced", new, previous, notice}
_PROBE_FINISH = """
if redis.call('GET', LOCK) ~= ARGV[2] then return {'lost', '', '', ''} end
redis.call('DEL', LOCK)
local raw = redis.call('GET', FORCED)
local rec = decode(raw)
if not rec or ident(rec) ~= ARGV[3] then return {'superseded', raw or '', '', ''} end
if ARGV[4] == '1' then
  redis.call('DEL', FORCED, COUNTER, LATENCY, FAILING_HOSTS, AUTH_HOSTS, OUTCOMES)
  return {'restored', raw, '', notify({forced = '', count = 0, ttl = -2})}
end
local hold = math.min(tonumber(ARGV[8]), tonumber(ARGV[5]) * 2 ^ (tonumber(rec.holds) or 1))
hold = math.floor(hold * tonumber(ARGV[9]))
local new = write_record(now_ms(), 'probe_failed', hold, tonumber(ARGV[6]), ARGV[7], rec)
return {'reforced', new, raw, notify({forced = new})}
"""


class Status(enum.StrEnum):
    """What a transition script did (the first element of its reply)."""

    FORCED = "forced"  # a record was written
    HELD = "held"  # a record already holds (automatic trigger) or the hold has not ended (probe)
    COUNTED = "counted"  # a failure was counted below the threshold
    QUORUM = "quorum"  # a trigger was met, but by fewer hosts than MEMORY_QUORUM_HOSTS
    DISABLED = "disabled"  # the threshold was reached with DISABLE_AUTO_DOWNGRADE set
    CLEARED = "cleared"  # an operator removed the record
    LAPSED = "lapsed"  # an expired hold nobody probed within the grace period was ended
    IDLE = "idle"  # nothing to do: no record
    CORRUPT = "corrupt"  # an unreadable record was found and removed
    CLAIMED = "claimed"  # this prober holds the probe lock
    BUSY = "busy"  # another prober holds it
    LOST = "lost"  # the probe outlived its lock: its result was dropped
    SUPERSEDED = "superseded"  # the record changed during the probe: its result was dropped
    RESTORED = "restored"  # the probe succeeded and the record was removed
    REFORCED = "reforced"  # the probe failed and the fleet holds again

    @property
    def probe_result(self) -> str:
        """The ``result`` label of a finished probe: success, failed, lost or superseded."""
        return {"restored": "success", "reforced": "failed"}.get(self.value, self.value)


@dataclass(frozen=True)
class Keys:
    """memguard's key names: the constants above on one server; on a Redis Cluster the same
    names with ``{mem}:`` for ``mem:``, so that every script's keys share one hash slot."""

    forced: str = FORCED_MODE_KEY
    counter: str = CONSECUTIVE_FAILURES_KEY
    version: str = VERSION_KEY
    lock: str = PROBE_LOCK_KEY
    heartbeat: str = PROBE_HEARTBEAT_KEY
    latency: str = LATENCY_KEY
    failing_hosts: str = FAILING_HOSTS_KEY
    auth_hosts: str = AUTH_HOSTS_KEY
    audit: str = AUDIT_KEY
    notify_cursor: str = NOTIFY_CURSOR_KEY
    notify_stuck: str = NOTIFY_STUCK_KEY
    notify_lock: str = NOTIFY_LOCK_KEY
    outcomes: str = OUTCOMES_KEY

    @classmethod
    def under(cls, prefix: str) -> Keys:
        return cls(*(prefix + f.default.removeprefix("mem:") for f in dataclasses.fields(cls)))

    @property
    def prefix(self) -> str:
        return self.forced.removesuffix("mode:forced:v1")

    @property
    def for_scripts(self) -> list[str]:
        """The transition scripts' KEYS, in the order the prelude names them."""
        return [self.forced, self.counter, self.version, self.lock, self.heartbeat, self.latency,
                self.failing_hosts, self.auth_hosts, self.outcomes]


class CorruptRecord(ValueError):
    """A memguard key holds a value memguard did not write."""


@dataclass(frozen=True)
class ForcedRecord:
    """The forced-mode record as stored in Redis (times are Redis epoch seconds).

    Records in the original format (``mode``, ``reason``, ``until``, ``forced_at`` only) are
    read as well: the other fields have defaults.
    """

    mode: str
    reason: str
    until: float
    forced_at: float
    lapse_at: float | None
    holds: int
    by: dict[str, Any]
    since: float  # when this run of holds began (a failed probe's re-force keeps it)

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
                since=float(data.get("since", forced_at)),
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
            "hold_seconds": round(self.until - self.forced_at, 3),
            "since": self.since,
            "by": self.by,
        }


@dataclass(frozen=True)
class Snapshot:
    """One round trip's read of the state, with the Redis clock then. Plain reads, not one
    atomic step: the version tells a view whether a notice has overtaken it."""

    record: ForcedRecord | None
    corrupt: str | None
    fail_count: int
    fail_ttl_ms: int
    redis_now: float
    probe_heartbeat: float | None = None  # Redis time of the prober's last tick, if recent
    version: int = 0  # of the last notice sent (writes that bypass the scripts do not bump it)
    record_ttl_ms: int = -2  # the record key's own expiry (-1: none), e.g. a hand SET ... EX


@dataclass(frozen=True)
class Transition:
    """What a script did: its status, the record it left and the one it replaced."""

    status: Status
    record: ForcedRecord | None = None
    previous: ForcedRecord | None = None
    fail_count: int = 0
    ident: str = ""


def _record(raw: str | None) -> ForcedRecord | None:
    if not raw:
        return None
    try:
        return ForcedRecord.parse(raw)
    except CorruptRecord:
        return None


class State:
    """Every change to the forced record, the failure counter and the probe lock.

    Each method is one script run; on a change it hands the script's notice to ``on_change``
    (this process's view applies it at once) and emits the event. Redis errors are raised:
    the caller decides whether to fail open (the request path) or report (operators).
    """

    def __init__(self, client: redis.Redis, settings: Settings, *,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.settings = settings
        self.base = base_mode_of(settings)
        self.on_change = on_change or (lambda notice: None)
        self.grace_ms = settings.probe_grace_seconds * 1000
        self.keys = Keys.under(settings.redis_target.key_prefix)
        self.channel = CHANGES_CHANNEL
        self._notify_claim = client.register_script(_NOTIFY_CLAIM)
        sources = {name: _PRELUDE + body for name, body in (
            ("force", _FORCE), ("record_failure", _RECORD_FAILURE), ("reset", _RESET_FAILURES),
            ("clear", _CLEAR), ("lapse", _LAPSE), ("claim", _PROBE_CLAIM), ("finish", _PROBE_FINISH),
            ("window", _WINDOW_TRIP))}
        self._scripts = {name: client.register_script(source) for name, source in sources.items()}
        self.async_redis = AsyncRedis(self, sources)

    # -- performing steps (memguard.steps): blocking here, asyncio in AsyncRedis -----------

    def run(self, steps: Steps[T]) -> T:
        return run_steps(steps, self.perform)

    def perform(self, step: Step) -> Any:
        if isinstance(step, Script):
            return self._scripts[step.name](keys=self.keys.for_scripts, args=[self.channel, *step.args])
        if isinstance(step, ReadSnapshot):
            pipe = self._keys_node().pipeline(transaction=False)
            self.snapshot_commands(pipe)
            return pipe.execute()
        raise TypeError(f"State cannot perform {step!r}")

    async def aperform(self, step: Step) -> Any:
        return await self.async_redis.perform(step)

    def reconnect(self) -> None:
        """The master moved: drop every connection; the next command asks for the new one."""
        self.client.connection_pool.disconnect()
        self.async_redis.reset()

    def _run(self, script: str, *args: Any) -> list[Any]:
        return self.run(self._script(script, *args))

    def _script(self, script: str, *args: Any) -> Steps[list[Any]]:
        """Run one transition script; its last reply element is the notice of what changed."""
        reply = yield Script(script, args)
        if reply[-1]:
            self.on_change(reply[-1])
        return reply

    # -- reads ----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return self.run(self.snapshot_steps())

    def snapshot_steps(self) -> Steps[Snapshot]:
        """One round trip of plain reads (no Lua: a script costs an idle Redis ~70 µs of CPU)."""
        (raw, count, beat, version), ttl, record_ttl, (secs, micros) = yield ReadSnapshot()
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
        heartbeat = int(beat) / 1000.0 if beat and beat.isdigit() else None
        return Snapshot(record, corrupt, fail_count, int(ttl), secs + micros // 1000 / 1000.0, heartbeat,
                        int(version) if version and version.isdigit() else 0, int(record_ttl))

    def snapshot_commands(self, pipe: Any) -> None:
        k = self.keys
        pipe.mget(k.forced, k.counter, k.heartbeat, k.version)
        pipe.pttl(k.counter)
        pipe.pttl(k.forced)
        pipe.time()

    def _keys_node(self) -> redis.Redis:
        """The client to pipeline plain reads on: on a Cluster, the node owning memguard's slot
        (a cluster pipeline refuses MGET and TIME)."""
        if self.settings.redis_target.kind == "cluster":
            return self.client.get_node_from_key(self.keys.forced).redis_connection
        return self.client

    def mode(self, record: ForcedRecord | None) -> EffectiveMode:
        return combine(self.base, record is not None)

    # -- transitions ----------------------------------------------------------------------

    def force(self, reason: str, hold_seconds: int, by: dict[str, Any], *, auto: bool,
              quorum: int = 0) -> Transition:
        return self.run(self.force_steps(reason, hold_seconds, by, auto=auto, quorum=quorum))

    def force_steps(self, reason: str, hold_seconds: int, by: dict[str, Any], *, auto: bool,
                    quorum: int = 0) -> Steps[Transition]:
        """Write a record; an automatic trigger never replaces (or shortens) an existing one,
        does nothing under DISABLE_AUTO_DOWNGRADE, and with ``quorum`` > 1 waits until that
        many hosts (MEMGUARD_INSTANCE) have asked within the failure window."""
        if auto and self.settings.disable_auto_downgrade:
            events.emit(events.WouldForce(reason, hold_seconds))
            return Transition(Status.DISABLED)
        s = self.settings
        status, raw, previous, _ = yield from self._script(
            "force", reason, hold_seconds * 1000, self.grace_ms, json.dumps(by), int(auto), quorum,
            s.instance, s.window_seconds * 1000)
        if status in (Status.HELD, Status.QUORUM):
            return Transition(Status(status), record=_record(raw))
        t = Transition(Status.FORCED, record=_record(raw), previous=_record(previous))
        self._forced(t)
        return t

    def record_failure(self, by: dict[str, Any]) -> Transition:
        return self.run(self.record_failure_steps(by))

    def record_failure_steps(self, by: dict[str, Any]) -> Steps[Transition]:
        """Count one failure fleet-wide and, at the threshold, force: one round trip."""
        s = self.settings
        status, count, raw, repaired, previous, _ = yield from self._script(
            "record_failure", s.window_seconds * 1000, s.threshold, s.hold_seconds * 1000, self.grace_ms,
            json.dumps(by), int(not s.disable_auto_downgrade), s.quorum_hosts, s.instance)
        t = Transition(Status(status), record=_record(raw), previous=_record(previous),
                       fail_count=int(count))
        if repaired:
            events.emit(events.GuardTrouble("corrupt_state", "count", "failure counter was not an integer"))
        if t.status is Status.FORCED:
            self._forced(t)
        elif t.status is Status.DISABLED:
            events.emit(events.WouldForce("consecutive_failures", s.hold_seconds, int(count)))
        return t

    def record_latencies(self, reads: int, slow: int, by: dict[str, Any]) -> Transition:
        """Add a batch of read latencies to the fleet's window; force when its median is slow."""
        s = self.settings
        return self._window_trip("latency", 6, reads, slow, s.latency_window_seconds, s.latency_min_reads,
                                 LATENCY_SLOW_RATIO, by)

    def record_outcomes(self, reads: int, failed: int, by: dict[str, Any]) -> Transition:
        """Add a batch of read outcomes to the fleet's window (the failure-rate policy); force
        when more than MEMORY_FAILURE_RATE_THRESHOLD of its reads failed."""
        s = self.settings
        return self._window_trip("failure_rate", 9, reads, failed, s.failure_rate_window_seconds,
                                 s.failure_rate_min_reads, s.failure_rate_threshold, by)

    def _window_trip(self, reason: str, key_index: int, reads: int, bad: int, window_seconds: int,
                     min_reads: int, ratio: float, by: dict[str, Any]) -> Transition:
        s = self.settings
        window_ms = window_seconds * 1000
        status, _, _, raw, previous, _ = self._run(
            "window", reads, bad, window_ms, min_reads, s.hold_seconds * 1000, self.grace_ms, json.dumps(by),
            int(not s.disable_auto_downgrade), max(1, window_ms // WINDOW_SLOTS), repr(ratio), reason,
            key_index)
        t = Transition(Status(status), record=_record(raw), previous=_record(previous))
        if t.status is Status.FORCED:
            self._forced(t)
        elif t.status is Status.DISABLED:
            events.emit(events.WouldForce(reason, s.hold_seconds))
        return t

    def claim_notifications(self, stuck_episode: str, limit: int = 50) -> tuple[bool, list[dict[str, str]]]:
        """The audit entries no caller has taken yet (each goes to exactly one caller), and
        whether this caller should announce ``stuck_episode``."""
        k = self.keys
        stuck, *flat = self._notify_claim(keys=[k.audit, k.notify_cursor, k.notify_stuck],
                                          args=[limit, stuck_episode])
        entries = []
        for entry_id, fields in zip(flat[::2], flat[1::2], strict=True):
            entries.append({"id": entry_id, **dict(zip(fields[::2], fields[1::2], strict=True))})
        return bool(stuck), entries

    def reset_failures(self) -> bool:
        return self.run(self.reset_failures_steps())

    def reset_failures_steps(self) -> Steps[bool]:
        """End the failure window (a read succeeded); True if there was a count."""
        return bool((yield from self._script("reset"))[0])

    def clear(self, by: dict[str, Any]) -> Transition:
        """Remove the record and the failure count now (an operator's clear)."""
        previous = _record(self._run("clear")[0])
        if previous is None:
            return Transition(Status.IDLE)
        events.emit(events.ModeRestored(self.base.value, "manual_clear", previous.reason, by))
        return Transition(Status.CLEARED, previous=previous)

    def lapse(self, by: dict[str, Any]) -> Transition:
        return self.run(self.lapse_steps(by))

    def lapse_steps(self, by: dict[str, Any]) -> Steps[Transition]:
        """End a record whose hold plus grace has passed on the Redis clock."""
        previous = _record((yield from self._script("lapse", self.grace_ms))[0])
        if previous is None:
            return Transition(Status.IDLE)
        events.emit(events.ModeRestored(self.base.value, "lapsed", previous.reason, by))
        return Transition(Status.LAPSED, previous=previous)

    def claim_probe(self, lock_ms: int) -> tuple[Transition, str]:
        """Take the fleet-wide probe lock if a hold has expired; returns the lock token."""
        token = secrets.token_hex(16)
        heartbeat_ms = int(HEARTBEAT_INTERVALS * self.settings.probe_interval_seconds * 1000)
        status, raw, ident, _ = self._run("claim", token, lock_ms, heartbeat_ms)
        if status == Status.CORRUPT:
            events.emit(events.GuardTrouble("corrupt_state", "probe", "forced record removed"))
            return Transition(Status.CORRUPT), token
        return Transition(Status(status), record=_record(raw), ident=ident), token

    def finish_probe(self, token: str, claim: Transition, *, success: bool, started: float,
                     error: str, by: dict[str, Any]) -> Transition:
        """Apply a probe's result, unless the lock or the record changed meanwhile."""
        s = self.settings
        jitter = random.uniform(0.9, 1.0)
        status, raw, previous, _ = self._run("finish", token, claim.ident, int(success),
                                             s.hold_seconds * 1000, self.grace_ms, json.dumps(by),
                                             s.hold_cap_seconds * 1000, repr(jitter))
        duration = time.perf_counter() - started
        if status == Status.REFORCED:
            t = Transition(Status.REFORCED, record=_record(raw), previous=_record(previous))
        elif status == Status.RESTORED:
            t = Transition(Status.RESTORED, previous=_record(raw))
        else:
            t = Transition(Status(status), record=_record(raw))
        events.emit(events.ProbeFinished(t.status.probe_result, duration, error))
        if t.status is Status.RESTORED and t.previous is not None:
            events.emit(events.ModeRestored(self.base.value, "probe_success", t.previous.reason, by))
        elif t.status is Status.REFORCED:
            self._forced(t)
        return t

    def _forced(self, t: Transition) -> None:
        record = t.record
        if record is None:
            return
        events.emit(events.ModeForced(
            prev_mode=self.mode(t.previous).value,
            next_mode=self.mode(record).value,
            reason=record.reason,
            hold_seconds=record.until - record.forced_at,
            until=record.until,
            holds=record.holds,
            fail_count=t.fail_count or None,
            by=record.by,
        ))
