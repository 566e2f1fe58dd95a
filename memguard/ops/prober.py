"""The one probe read that ends a hold: fleet-wide lock, 150 ms budget, no retries.

Only the prober (scheduled by beat) probes; the request path never does. The lock is taken
and released by Lua scripts that check its owner, and the result is applied only if the
lock and the record are still the ones the probe started from (a probe that outlived its
lock, or raced an operator's force, changes nothing).

An application whose reads are not Zep SDK calls gives its own probe: a callable taking
the timeout in seconds that raises on failure (``memguard.install(app, probe=...)``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from memguard.config.settings import Settings
from memguard.domain.classify import classify
from memguard.domain.guards import Probe
from memguard.domain.record import Status
from memguard.request.zep import ZepReader
from memguard.store.index import due_guards, indexed_guards
from memguard.store.state import State

PROBE_THREAD_ID = "memguard-probe"
MIN_LOCK_MS = 2_000



def lock_ms(probe_timeout_ms: int) -> int:
    """Long enough to cover a probe, short enough that a killed prober is replaced quickly."""
    return max(MIN_LOCK_MS, 10 * probe_timeout_ms)


def zep_probe(reader: ZepReader) -> Probe:
    """memguard's own probe: read the probe thread's context with memguard's Zep reader."""
    return lambda timeout_s: reader.read_context(PROBE_THREAD_ID, timeout_s)


def probe_once(state: State, settings: Settings, read: Probe, by: dict[str, Any], *,
               scheduled: bool = True) -> dict[str, Any]:
    """Probe Zep if a hold has expired; returns what happened (result: idle/held/busy/...).
    A ``scheduled`` probe (beat's tick) also renews the prober's heartbeat."""
    claim, token = state.claim_probe(lock_ms(settings.probe_timeout_ms), heartbeat=scheduled)
    if claim.status is Status.CORRUPT:
        return {"result": "corrupt_removed"}
    if claim.status is not Status.CLAIMED:
        out: dict[str, Any] = {"result": claim.status.value}
        if claim.record is not None or claim.due is not None:
            out["until"] = claim.record.until if claim.record is not None else claim.due
        return out

    started = time.perf_counter()
    error = ""
    try:
        read(settings.probe_timeout_s)
        ok = True
    except Exception as exc:
        verdict = classify(exc)
        ok = verdict.status == 404  # Zep answered: the probe thread simply does not exist
        error = "" if ok else f"{verdict.reason}:{type(exc).__name__}"
    t = state.finish_probe(token, claim, success=ok, started=started, error=error, by=by)
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    out = {"result": t.status.probe_result, "duration_ms": duration_ms, "error": error}
    if t.record is not None:
        out["until"] = t.record.until
    return out


DUE_PER_TICK = 1_000  # named guards probed at most per tick (the rest on the next)
PROBE_WORKERS = 16  # named guards probed at once: a slow probe delays no other past its budget
Prepared = tuple[State, Settings, Probe]


def probe_due(default: State, prepare: Callable[[str], Prepared | None], by: dict[str, Any],
              *, limit: int = DUE_PER_TICK,
              deliver: Callable[[State, Settings], object] | None = None) -> dict[str, dict[str, Any]]:
    """Probe every named guard whose hold has ended, from the fleet's index of hold ends: each
    under its own lock, several at once. ``prepare`` gives a guard's store, settings and probe,
    or None for a name this process does not know (another prober may; it stays indexed). A
    guard found healthy leaves the index once ``deliver`` (its webhooks) has announced its
    transitions; one found held is indexed at its hold's end. ``deliver`` also runs for every
    guard still held, so that a hold is announced when it begins, not when it ends."""
    due = due_guards(default, limit)
    from concurrent.futures import ThreadPoolExecutor

    def one(name: str) -> dict[str, Any]:
        prepared = prepare(name)
        if prepared is None:
            return {"result": "undeclared"}
        state, settings, read = prepared
        out = probe_once(state, settings, read, by, scheduled=False)
        if deliver is not None:
            deliver(state, settings)
        if "until" in out:  # still held, or a ramp or an experiment still running
            state.index(out["until"])
        elif out["result"] in ("idle", "corrupt_removed"):
            state.index(None)
        return out

    def announce(name: str) -> dict[str, Any]:
        prepared = prepare(name)
        if prepared is not None and deliver is not None:
            deliver(prepared[0], prepared[1])
        return {}

    def guarded(action: Callable[[str], dict[str, Any]], name: str) -> dict[str, Any]:
        try:
            return action(name)
        except Exception as exc:  # one guard's trouble is its own: the others are probed
            return {"result": "error", "error": type(exc).__name__}

    probing = set(due)
    held = [name for name in indexed_guards(default, limit) if name not in probing] if deliver else []
    if not due and not held:
        return {}
    workers = min(PROBE_WORKERS, len(due) + len(held))
    with ThreadPoolExecutor(workers, thread_name_prefix="memguard-probe") as pool:
        results = dict(zip(due, pool.map(lambda n: guarded(one, n), due), strict=True))
        list(pool.map(lambda n: guarded(announce, n), held))
    return results
