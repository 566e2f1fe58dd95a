"""What the command line prints for people: UTC times with a rounded duration, who acted, and
a Redis error told apart with the setting to check. ``--json`` output goes through
``json_safe`` instead: numbers stay numbers and nothing non-finite is ever printed."""

from __future__ import annotations

import math
from typing import Any

import redis

from memguard.config.settings import masked_url
from memguard.config.target import tls_failure
from memguard.domain.words import by_text, duration, iso


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float as None, so ``json.dumps`` never writes NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def status_lines(st: dict[str, Any], now: float) -> list[str]:
    lines = [f"mode:        {st['mode']} (base {st['base_mode']})"]
    if st["forced"]:
        left = duration(st["until"] - now)
        lines += [f"forced:      yes, reason {st['reason']}, {by_text(st.get('by'))}",
                  f"until:       {iso(st['until'])} ({left} left, phase {st['phase']}, "
                  f"hold #{st['holds']} of {duration(st['hold_seconds'])})",
                  f"lapses in:   {duration(st['lapses_in'])} if no probe acts"]
    else:
        lines.append("forced:      no")
    ramp = st.get("ramp")
    if ramp:
        lines.append(f"recovering:  {ramp['share_percent']:.0f} % of reads admitted, "
                     f"{ramp['seconds_left']:.0f} s of {ramp['seconds']:g} left (after {ramp['reason']}; "
                     f"the hold was {ramp['previous_reason']}, hold #{ramp['holds']})")
    if st.get("chaos"):
        lines.append(f"chaos:       {chaos_text(st['chaos'])}")
    count, threshold = st["fail_count"], st["threshold"]
    if count >= threshold:  # a trip, not "4 of 3"
        outcome = "which forced the fleet" if st["forced"] else \
            "but nothing is forced (DISABLE_AUTO_DOWNGRADE or MEMORY_QUORUM_HOSTS held it back)"
        lines.append(f"failures:    {count} in the current window: the threshold ({threshold}) was reached, "
                     f"{outcome}")
    else:
        lines.append(f"failures:    {count} of {threshold} in the current window")
    seen = st["prober_seen_seconds_ago"]
    lines.append("prober:      " + ("no probe tick seen recently: is celery beat running?" if seen is None
                                    else f"last tick {duration(seen)} ago"))
    last = st["last_operator_action"]
    if last is not None:
        outcome = last.get("outcome", "?")
        lines.append(f"last op:     {last.get('action', '?')} {outcome} at {iso(last['time'])} "
                     f"({duration(now - last['time'])} ago), {by_text(last.get('by'))}")
    if st.get("state_problems"):
        lines.append(f"WARNING:     {st['state_problems']} (read as no record; the next change replaces it)")
    return lines


def watchers_line(count: int, where: str, *, from_env: bool, on_replicas: bool) -> str:
    """How many memguard processes follow this Redis; with none, that this may be the wrong one."""
    if on_replicas:
        return "watchers:    counted on the replicas (MEMGUARD_VIEW_URLS): the views follow those"
    if count > 0:
        who = "process follows" if count == 1 else "processes follow"
        return f"watchers:    {count} memguard {who} this Redis"
    named = f"REDIS_URL is {where}" if from_env else f"REDIS_URL is not set: this read the default {where}"
    return f"watchers:    none: no memguard process follows this Redis; is it the fleet's? {named}"


def guards_lines(rows: list[dict[str, Any]], now: float, heading: str = "") -> list[str]:
    """One line per guard: its name, state and, when held or recovering, until when."""
    lines = [heading] if heading else []
    if not rows:
        return [*lines, "  (none)"]
    for row in rows:
        detail = ""
        if row["state"] == "forced":
            left = duration(row["until"] - now)
            detail = f", reason {row['reason']} until {iso(row['until'])} ({left} left)"
        elif row["state"] == "recovering":
            detail = f", {row['share_percent']:.0f} % of reads admitted until {iso(row['until'])}"
        elif row["fail_count"]:
            detail = f", {row['fail_count']} failures counted"
        if row.get("chaos"):
            detail += f"; chaos: {chaos_text(row['chaos'])}"
        lines.append(f"  {row['guard']:<32} {row['state']}{detail}")
    return lines


def chaos_text(c: dict[str, Any]) -> str:
    """A running experiment in one line, with its time left."""
    return (f"{c['fault']} on {c['share_percent']:g}% of conversations, {duration(c['seconds_left'])} left "
            f"(experiment {c['id'][:12]}, {'counts toward a trip' if c['trip'] else 'no trip'}; "
            "injected only where MEMGUARD_CHAOS=allow)")


def chaos_lines(res: dict[str, Any]) -> list[str]:
    if "started" in res:
        return [f"chaos started: {chaos_text(res)}", "ended by: memguard chaos stop, any force or clear, "
                f"or its end at {iso(res['end'])}"]
    if not res["stopped"]:
        return ["no chaos experiment was running"]
    return [f"chaos stopped: {res['fault']} on {res['share_percent']:g}% of conversations "
            f"(experiment {res['id'][:12]}); every process reads normally within a second"]


ENDED_CHAOS = "and ended the chaos experiment that was running"


def force_lines(res: dict[str, Any], now: float) -> list[str]:
    left = f"{iso(res['until'])} ({duration(res['until'] - now)} left)"
    ended = [ENDED_CHAOS] if res.get("chaos_ended") else []
    if res["kept"]:
        return [f"kept the longer hold in place: reason {res['reason']} until {left}; "
                "add --replace to shorten it"]
    return [f"forced write_only fleet-wide: reason {res['reason']} until {left}", *ended]


def clear_lines(res: dict[str, Any]) -> list[str]:
    return [*_cleared(res), *([ENDED_CHAOS] if res.get("chaos_ended") else [])]


def _cleared(res: dict[str, Any]) -> list[str]:
    if res.get("ramp_ended"):
        return ["ended the recovery ramp: every read goes to Zep again"]
    if not res["cleared"]:
        return [] if res.get("chaos_ended") else ["nothing to clear: the fleet was not forced"]
    if res.get("ramp_seconds"):
        return [f"cleared: reads return to Zep through a {res['ramp_seconds']:g} s recovery ramp "
                f"(the hold was {res['previous_reason']}; --no-ramp restores every read at once)"]
    return [f"cleared: reads go to Zep again (the hold was {res['previous_reason']})"]


PROBE_MEANINGS = {
    "idle": "no hold to probe", "held": "the hold has not ended yet", "busy": "another prober is probing",
    "success": "Zep answered: the fleet reads again", "failed": "Zep did not answer: the fleet holds again",
    "lost": "the probe outlived its lock: its result was dropped",
    "superseded": "the record changed during the probe: its result was dropped",
    "corrupt_removed": "an unreadable record was removed",
}


def probe_lines(res: dict[str, Any]) -> list[str]:
    kind = "manual probe" if res.get("manual") else "probe"
    meaning = PROBE_MEANINGS.get(res["result"], res["result"])
    tail = f" in {res['duration_ms']} ms" if res.get("duration_ms") is not None else ""
    return [f"{kind}: {res['result']} ({meaning}){tail}"]


AUTH_WORDS = ("wrongpass", "noauth", "invalid password", "invalid username-password")


def redis_error(exc: redis.RedisError, url: str, timeout_s: float) -> str:
    """One line: what failed, told apart, and the setting to check. The URL's password is masked."""
    where = masked_url(url)
    text = str(exc).lower()
    name = type(exc).__name__
    tls = tls_failure(exc)
    if tls is not None:
        return (f"TLS verification failed at {where}: {tls} (check ssl_ca_certs, ssl_certfile and "
                "ssl_keyfile in REDIS_URL, and that its host is the certificate's)")
    if text.startswith("noperm") or name == "NoPermissionError":  # the ACL user lacks a permission
        detail = str(exc).splitlines()[0][:200] if str(exc) else name
        return f"permission denied at {where} (NOPERM): {detail} (memguard acl prints the rules)"
    if isinstance(exc, redis.AuthenticationError) or any(w in text for w in AUTH_WORDS):
        return f"authentication failed at {where}: check the user and password in REDIS_URL"
    if "db index is out of range" in text:
        return f"{where} has no such database: check the number after the host in REDIS_URL"
    if name in ("MasterNotFoundError", "SlaveNotFoundError"):
        return (f"no Sentinel in {where} answered for its master: check the sentinels and the service "
                "name in REDIS_URL")
    if "cluster" in name.lower() or "cluster" in text:
        return f"the Redis Cluster at {where} is unreachable or not ready: check its nodes in REDIS_URL"
    if isinstance(exc, redis.TimeoutError) or "timed out" in text:
        return (f"{where} did not answer within {timeout_s:g} s: check the host and port in REDIS_URL "
                "and the network")
    if "refused" in text:
        return f"connection refused at {where}: is redis-server running there? check REDIS_URL"
    if "name or service not known" in text or "nodename nor servname" in text or "resolution" in text:
        return f"cannot resolve the host of {where}: check REDIS_URL"
    return f"cannot reach Redis at {where}: {name}"
