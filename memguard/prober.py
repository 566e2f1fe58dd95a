"""The one probe read that ends a hold: fleet-wide lock, 150 ms budget, no retries.

Only the prober (scheduled by beat) probes; the request path never does. The lock is taken
and released by Lua scripts that check its owner, and the result is applied only if the
lock and the record are still the ones the probe started from (a probe that outlived its
lock, or raced an operator's force, changes nothing).
"""

from __future__ import annotations

import time
from typing import Any

from memguard import events
from memguard.classify import classify
from memguard.guard import origin
from memguard.runtime import Runtime
from memguard.zep import last_status

PROBE_THREAD_ID = "memguard-probe"
MIN_LOCK_MS = 2_000


def lock_ms(probe_timeout_ms: int) -> int:
    """Long enough to cover a probe, short enough that a killed prober is replaced quickly."""
    return max(MIN_LOCK_MS, 10 * probe_timeout_ms)


def probe_once(rt: Runtime, by: dict[str, Any] | None = None) -> dict[str, Any]:
    """Probe Zep if a hold has expired; returns what happened (result: idle/held/busy/...)."""
    by = by or origin("probe")
    settings = rt.settings
    claim, token = rt.state.claim_probe(lock_ms(settings.probe_timeout_ms))
    if claim.status == "corrupt":
        rt.guard.invalidate_view()
        events.emit(events.GuardTrouble("corrupt_state", "probe", "forced record removed"))
        return {"result": "corrupt_removed"}
    if claim.status != "claimed":
        out: dict[str, Any] = {"result": claim.status}
        if claim.record is not None:
            out["until"] = claim.record.until
        return out

    started = time.perf_counter()
    error = ""
    try:
        rt.reader.read_context(PROBE_THREAD_ID, settings.probe_timeout_s)
        ok = True
    except Exception as exc:
        verdict = classify(exc, last_status())
        ok = verdict.status == 404  # Zep answered: the probe thread simply does not exist
        error = "" if ok else f"{verdict.reason}:{type(exc).__name__}"
    duration = time.perf_counter() - started

    t = rt.state.finish_probe(token, claim.ident, success=ok, hold_seconds=settings.hold_seconds, by=by)
    rt.guard.invalidate_view()
    result = {"restored": "success", "reforced": "failed"}.get(t.status, t.status)
    events.emit(events.ProbeFinished(result, duration, error))
    if t.status == "restored" and t.previous is not None:
        events.emit(events.ModeRestored(rt.guard.base.value, "probe_success", t.previous.reason, by))
    elif t.status == "reforced":
        events.emit(rt.guard.forced_event(t))
    out = {"result": result, "duration_ms": round(duration * 1000, 1), "error": error}
    if t.record is not None:
        out["until"] = t.record.until
    return out
