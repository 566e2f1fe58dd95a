"""``memguard doctor``: a deployment checked before it matters, one line per check.

Each check answers ``ok``, ``warn`` or ``fail`` with its name and what to do. It runs as the
process's own Redis user: a check that needs more than memguard's least-privilege user may run
(``INFO`` and ``CONFIG`` are ``@dangerous``) says it could not tell, and why, as a ``warn``. It
changes nothing: the commands it tries write only scratch keys under memguard's own prefix (and
RedBeat's), which it deletes, and its probe read never changes the mode.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urldefrag, urlsplit

import redis

from memguard.config.settings import Settings, masked_url
from memguard.domain import events
from memguard.domain.classify import classify
from memguard.domain.fleet import FleetStatus
from memguard.ops import beatlock
from memguard.ops.prober import Probe
from memguard.store.state import State

OK, WARN, FAIL = "ok", "warn", "fail"
CLOCK_SKEW_S = 1.0
WEBHOOK_TIMEOUT_S = 3.0
SCRATCH_MS = 60_000  # a scratch key outlives a doctor killed before its DEL by a minute at most
EVICTING = ("allkeys-lru", "allkeys-lfu", "allkeys-random")


@dataclass(frozen=True)
class Check:
    verdict: str  # ok, warn, fail
    name: str
    detail: str  # what was found; for warn and fail, the fix

    def line(self) -> str:
        return f"{self.verdict:<4} {self.name:<11} {self.detail}"

    def as_dict(self) -> dict[str, str]:
        return {"verdict": self.verdict, "check": self.name, "detail": self.detail}


@dataclass(frozen=True)
class Deployment:
    """What the doctor looks at: the process's store and settings, the probe ``install`` gave
    (None: memguard's own Zep read, ``zep_probe``), the app's RedBeat lock key and prefix, and the
    declared named guards with whether each has a probe of its own."""

    state: State
    settings: Settings
    probe: Callable[[], Probe]
    lock_key: str | None
    redbeat_prefix: str | None  # when RedBeat keeps its keys on REDIS_URL: checked for permissions
    named: Sequence[tuple[str, bool]] = ()
    by: dict[str, Any] = field(default_factory=dict)
    lock_client: Any = None  # where the lock is (RedBeat's own Redis); None: the store's


Explain = Callable[[redis.RedisError], str]  # a Redis error told apart in one line (cli_text)


def run(d: Deployment, hooks: events.Hooks, explain: Explain) -> list[Check]:
    """Every check, in order; the Redis checks only once Redis answers."""
    first = reachable(d, explain)
    checks = [first]
    if first.verdict != FAIL:
        checks += [permissions(d, explain), beat(d, explain), clock(d.state), eviction(d.state)]
    checks += [probe(d, hooks), *webhooks(d.settings), *settings_checks(d.settings), named(d)]
    return checks


def reachable(d: Deployment, explain: Explain) -> Check:
    url = d.settings.redis_url
    user = urlsplit(url.split(",")[0]).username or "default"
    try:
        hello = _raw(d.state, "HELLO")
    except redis.RedisError as exc:
        return Check(FAIL, "redis", explain(exc))
    tls = d.settings.redis_target.tls
    if not (d.settings.redis_target.ssl or url.startswith("rediss")):
        how = "plain TCP"
    elif str(tls.get("ssl_cert_reqs", "required")).lower() in ("none", "0"):
        return Check(WARN, "redis", f"TLS to {masked_url(url)} is not verified (ssl_cert_reqs=none): set "
                                    "ssl_ca_certs and drop ssl_cert_reqs=none in REDIS_URL")
    else:
        how = "TLS verified"
    version = hello.get("version", "?") if isinstance(hello, dict) else "?"
    return Check(OK, "redis", f"{masked_url(url)} as {user}, {how}, Redis {version}")


def _raw(state: State, *command: str) -> Any:
    """One command on a connection of its own (``HELLO`` must not change a pooled one's protocol)."""
    conn = _pool(state.client).make_connection()
    try:
        conn.connect()
        conn.send_command(*command)
        return conn.read_response()
    finally:
        conn.disconnect()


def _pool(client: Any) -> Any:
    pool = getattr(client, "connection_pool", None)
    return pool if pool is not None else client.get_default_node().redis_connection.connection_pool


def _commands(state: State, prefix: str | None) -> Iterator[tuple[str, ...]]:
    """Every command memguard sends, each on a scratch key or channel of its own names."""
    keys = state.keys
    tag = uuid.uuid4().hex[:8]
    scratch, counter = f"{keys.prefix}doctor:{tag}", f"{keys.prefix}doctor:{tag}:n"
    stream, zset = f"{keys.prefix}doctor:{tag}:s", f"{keys.prefix}doctor:{tag}:z"
    px = str(SCRATCH_MS)
    yield from (("SET", scratch, "1", "PX", px), ("GET", scratch), ("MGET", scratch, counter),
                ("PTTL", scratch), ("TYPE", scratch), ("INCR", counter), ("PEXPIRE", counter, px),
                ("XADD", stream, "MAXLEN", "~", "10", "*", "doctor", "1"), ("PEXPIRE", stream, px),
                ("XREVRANGE", stream, "+", "-", "COUNT", "1"), ("ZADD", zset, "1", "doctor"),
                ("PEXPIRE", zset, px), ("ZRANGEBYSCORE", zset, "-inf", "+inf"),
                ("EVAL", "return redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])", "1", scratch, px),
                ("PUBLISH", f"{keys.channel.rsplit(':', 2)[0]}:doctor", "a test; ignore it"),
                ("PUBSUB", "NUMSUB", keys.channel), ("TIME",), ("CLIENT", "ID"),
                ("DEL", scratch, counter, stream, zset))
    if prefix is not None:  # the beat's RedBeat: its schedule (a sorted set), entries (hashes), lock
        beat, beat_z = f"{prefix}doctor:{tag}", f"{prefix}doctor:{tag}:z"
        yield from (("SET", beat, "1", "NX", "PX", px), ("GET", beat), ("HSET", f"{beat}:h", "f", "1"),
                    ("PEXPIRE", f"{beat}:h", px), ("HGET", f"{beat}:h", "f"), ("ZADD", beat_z, "1", "e"),
                    ("PEXPIRE", beat_z, px), ("ZRANGEBYSCORE", beat_z, "-inf", "+inf"),
                    ("EVAL", "return redis.call('PEXPIRE', KEYS[1], ARGV[1])", "1", beat, px),
                    ("DEL", beat, f"{beat}:h", beat_z))


def permissions(d: Deployment, explain: Explain) -> Check:
    """``ACL DRYRUN`` where this user may run it; otherwise each command tried for real."""
    client = d.state.client
    commands = list(_commands(d.state, d.redbeat_prefix))
    channels = (d.state.keys.channel, "__redis__:invalidate")
    denied: list[str] = []
    try:
        user = client.execute_command("ACL", "WHOAMI")
        user = user.decode() if isinstance(user, bytes) else str(user)
        for command in [*commands, *(("SUBSCRIBE", ch) for ch in channels)]:
            answer = client.execute_command("ACL", "DRYRUN", user, *command)
            if str(answer.decode() if isinstance(answer, bytes) else answer) != "OK":
                denied.append(_label(command))
        how = "ACL DRYRUN"
    except redis.ResponseError:  # NOPERM (memguard's own user), or no ACL DRYRUN (Redis < 7)
        denied, how = _tried(d.state, commands, channels), "each command tried on a scratch key"
    except redis.RedisError as exc:
        return Check(FAIL, "permissions", explain(exc))
    if denied:
        return Check(FAIL, "permissions",
                     f"this user may not run {', '.join(denied[:8])}: create it from the rules memguard acl "
                     "prints (--app for your app's RedBeat prefix)")
    return Check(OK, "permissions", f"every command memguard sends is permitted ({how}, "
                                    f"{len(commands) + len(channels)} commands)")


def _tried(state: State, commands: list[tuple[str, ...]], channels: Sequence[str]) -> list[str]:
    denied = []
    for command in commands:
        try:
            state.client.execute_command(*command)
        except redis.ResponseError as exc:
            if _noperm(exc):
                denied.append(_label(command))
    for channel in channels:
        pubsub = state.client.pubsub()
        try:
            pubsub.subscribe(channel)
            pubsub.get_message(timeout=1.0)  # the confirmation, or the refusal
        except redis.ResponseError as exc:
            if _noperm(exc):
                denied.append(f"SUBSCRIBE {channel}")
        finally:
            pubsub.close()
    conn = _pool(state.client).make_connection()
    try:  # as a view does: tracking redirected to the connection itself
        conn.connect()
        conn.send_command("CLIENT", "ID")
        cid = conn.read_response()
        conn.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", cid, "BCAST", "PREFIX", state.keys.prefix)
        conn.read_response()
    except redis.ResponseError as exc:
        if _noperm(exc):
            denied.append("CLIENT TRACKING")
    finally:
        conn.disconnect()
    return denied


def _label(command: tuple[str, ...]) -> str:
    """A denied command as the fix needs it: ``GET <key>``, ``CLIENT TRACKING``, ``EVAL``."""
    return "EVAL" if command[0] == "EVAL" else " ".join(command[:2])


def _noperm(exc: redis.ResponseError) -> bool:
    return isinstance(exc, redis.exceptions.NoPermissionError) or str(exc).lower().startswith("noperm")


def beat(d: Deployment, explain: Explain) -> Check:
    state = d.state
    try:
        snap = state.snapshot()
        fleet = FleetStatus.of(snap, state.base, d.settings.probe_grace_seconds)
        locks = d.lock_client or state.client
        lock = beatlock.read(locks, d.lock_key, snap.redis_now) if d.lock_key else None
    except redis.RedisError as exc:
        return Check(WARN, "beat", f"could not tell: {explain(exc)}")
    if lock is not None and not lock.held:
        return Check(FAIL, "beat",
            f"no beat holds {lock.key}: no hold would end by a probe; run celery beat "
            "for this app (memguard.install makes memguard.beat.Scheduler its scheduler)")
    holder = "the beat lock not read (off, or not on a plain Redis)" if lock is None else \
        lock.line().split(":", 1)[1].strip()
    if fleet.prober_age is None:
        return Check(FAIL, "beat",
            f"{holder}, but no probe tick within 12 probe intervals: no hold would end "
            "by a probe; is a worker consuming memguard.probe?")
    return Check(OK, "beat", f"{holder}; last probe tick {fleet.prober_age:.0f} s ago")


def probe(d: Deployment, hooks: events.Hooks) -> Check:
    """One real probe read within the probe budget; the mode is never touched."""
    budget = d.settings.probe_timeout_s
    try:
        read = d.probe()  # built first (memguard's Zep client): only the read is timed
    except Exception as exc:
        return Check(FAIL, "probe", f"cannot be made: {str(exc)[:200] or type(exc).__name__}")
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            read(budget)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    started = time.perf_counter()
    thread = threading.Thread(target=attempt, name="memguard-doctor-probe", daemon=True)
    thread.start()
    thread.join(budget * 4 + 1)  # a probe that ignores its timeout still ends the doctor
    took = time.perf_counter() - started
    error = outcome[0] if outcome else TimeoutError(f"no answer in {took:.1f} s")
    verdict = classify(error) if isinstance(error, Exception) else None
    answered = error is None or (verdict is not None and verdict.status == 404)  # 404: Zep answered
    in_time = took <= budget * 1.5  # the client's own timeout, give or take a scheduler's tick
    hooks.emit(events.OperatorAction("doctor_probe", True, by=d.by, arguments={
        "result": "success" if answered and in_time else "failed", "duration_ms": round(took * 1000, 1)}))
    ms = f"{took * 1000:.0f} ms of {budget * 1000:.0f}"
    if answered and in_time:
        return Check(OK, "probe", f"answered in {ms}" + (" (404: Zep answered)" if error else ""))
    why = "answered too late" if answered else \
        f"{verdict.reason if verdict else 'error'}: {type(error).__name__}"
    return Check(FAIL, "probe",
                 f"{why} after {ms}: a hold would never end by a probe; check ZEP_API_URL and ZEP_API_KEY "
                 "(or the probe given to memguard.install)")


def webhooks(settings: Settings) -> list[Check]:
    """A test body each receiver can ignore (PagerDuty: a resolve of a key no incident has)."""
    if not settings.webhook_urls:
        return []
    import httpx

    out = []
    with httpx.Client(timeout=WEBHOOK_TIMEOUT_S) as client:
        for fmt, url in settings.webhook_urls:
            shown = f"{fmt} {urlsplit(url).scheme}://{urlsplit(url).hostname}/…"  # a path can be the secret
            if fmt == "pagerduty":
                target, key = urldefrag(url)
                body: dict[str, Any] = {"routing_key": key, "event_action": "resolve",
                                        "dedup_key": "memguard-doctor-test"}
            else:
                target, body = url, {"text": "memguard doctor: a test message; ignore it",
                                     "memguard": {"kind": "test", "reason": "doctor"}}
            try:
                status = client.post(target, json=body).status_code
            except Exception as exc:
                out.append(Check(WARN, "webhook", f"{shown} did not answer ({type(exc).__name__}): check "
                                                  "MEMORY_WEBHOOK_URLS"))
                continue
            out.append(Check(OK, "webhook", f"{shown} answered {status} to a test body") if status < 300 else
                       Check(WARN, "webhook", f"{shown} answered HTTP {status} to a test body: check the URL "
                                              "in MEMORY_WEBHOOK_URLS"))
    return out


def clock(state: State) -> Check:
    before = time.time()
    secs, micros = state.client.time()
    after = time.time()
    skew = (before + after) / 2 - (secs + micros / 1e6)
    if abs(skew) > CLOCK_SKEW_S:
        return Check(WARN, "clock",
            f"this host's clock is {skew:+.1f} s from Redis's: memguard times holds by "
            "Redis's clock, but logs and the CLI's durations use this host's; fix NTP")
    return Check(OK, "clock", f"within {abs(skew) * 1000:.0f} ms of Redis's")


def eviction(state: State) -> Check:
    policy = None
    for ask in (lambda: state.client.info("memory").get("maxmemory_policy"),
                lambda: state.client.config_get("maxmemory-policy").get("maxmemory-policy")):
        try:
            policy = ask()
            break
        except redis.ResponseError:
            continue
    if policy is None:
        return Check(WARN, "eviction",
            "could not tell: this user may not run INFO or CONFIG GET (@dangerous); "
            "ask the server's admin for maxmemory-policy: under allkeys-* a full "
            "Redis can evict the forced record")
    if policy in EVICTING:
        return Check(WARN, "eviction",
            f"maxmemory-policy {policy}: a full Redis can evict the forced record "
            "(the fleet would read Zep during a hold); use volatile-* or noeviction, "
            "or a Redis of memguard's own")
    return Check(OK, "eviction", f"maxmemory-policy {policy}")


def settings_checks(s: Settings) -> list[Check]:
    out = []
    if s.disable_auto_downgrade:
        out.append(Check(WARN, "settings", "DISABLE_AUTO_DOWNGRADE is on (the dry run): triggers are logged, "
                                           "nothing is forced; unset it when the dry run is over"))
    if s.probe_grace_seconds < 2 * s.probe_interval_seconds:
        out.append(Check(WARN, "settings",
            f"MEMORY_DOWNGRADE_PROBE_GRACE_SECONDS ({s.probe_grace_seconds:g}) is "
            "under two probe intervals: a hold can lapse before a probe acts; "
            "raise it or lower MEMORY_DOWNGRADE_PROBE_INTERVAL_SECONDS"))
    if s.probe_timeout_ms > s.read_timeout_ms:
        out.append(Check(WARN, "settings",
            f"MEMORY_DOWNGRADE_PROBE_TIMEOUT_MS ({s.probe_timeout_ms}) is above "
            f"MEMORY_ZEP_READ_TIMEOUT_MS ({s.read_timeout_ms}): a probe may pass "
            "where reads time out"))
    return out or [Check(OK, "settings", f"in range (hold {s.hold_seconds} s, threshold {s.threshold}, probe "
                                         f"every {s.probe_interval_seconds:g} s)")]


def named(d: Deployment) -> Check:
    bare = [name for name, has_probe in d.named if not has_probe]
    if bare:
        return Check(WARN, "guards",
            f"{', '.join(bare[:8])} {'has' if len(bare) == 1 else 'have'} no probe of "
            "its own and probe with memguard's Zep read: give memguard.declare(probe=) "
            "or memguard.install(probes=)")
    return Check(OK, "guards", f"{len(d.named)} named guard(s) declared, each with its probe" if d.named
                 else "no named guard declared")


def worst(checks: Sequence[Check]) -> int:
    """The exit code: 1 on any fail."""
    return 1 if any(c.verdict == FAIL for c in checks) else 0

