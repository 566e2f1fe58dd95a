"""Soak: prefork Celery workers doing guarded reads at a steady rate while Zep and Redis misbehave.

    python bench/soak.py [--minutes M] [--sentinel] [--json]        (./run soak)

Starts its own redis-server, Zep stub, a prefork worker of this module's Celery app (it
has ``memguard.install``) and a beat. Three pool children read thread context every 20 ms
and record what they saw (a fourth takes the probe ticks). The stub cycles healthy -> 401 ->
healthy -> timeouts -> healthy, and Redis is killed and restarted once in the first phase.
With ``--sentinel`` memguard, the broker and RedBeat use a Sentinel-managed primary and
replica instead, and the first phase has a ``SENTINEL FAILOVER`` where the restart was.
At the end it prints a summary from what the readers recorded, what the stub counted and
memguard's audit trail.

A read is counted as having seen a wrong mode only if the fleet was in the other mode during
the whole read, widened by the promised propagation bound (``PROPAGATION_S``) before it and
the audit trail's own lag (``AUDIT_LAG_S``: its entry is written just after the change) after
it. The target is zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery

import memguard
from memguard.config.target import Target
from memguard.integrations.celery_settings import celery_broker
from memguard.store.keys import AUDIT_KEY

READ_EVERY_S = 0.02
RESULTS_KEY = "soak:reads"
PROPAGATION_S = 0.1
AUDIT_LAG_S = 0.05

def _broker(url: str) -> Celery:
    broker, options = celery_broker(Target.parse(url))
    celery = Celery("soak", broker=broker)
    celery.conf.broker_transport_options = options
    return celery


app = _broker(os.environ.get("SOAK_BROKER_URL", "redis://127.0.0.1:6379/15"))
app.conf.worker_prefetch_multiplier = 1
memguard.install(app)


@app.task(name="soak.read_for")
def read_for(seconds: float) -> None:
    """Read every 20 ms for ``seconds``; record (start, end, forced seen, source) and exceptions."""
    rows: list[str] = []
    exceptions = 0
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        started = time.time()
        n += 1
        try:  # many conversations: after each hold, the recovery ramp admits a growing share
            _, meta = memguard.fetch_thread_context(f"soak-thread-{n % 64}")
            rows.append(f"{started:.4f} {time.time():.4f} {int(meta['source'] == 'write_only_forced')} "
                        f"{meta['source']}")
        except Exception:  # the contract says this never happens: count it if it does
            exceptions += 1
        time.sleep(max(0.0, READ_EVERY_S - (time.time() - started)))
    results = redis.Redis.from_url(os.environ["SOAK_RESULTS_URL"])
    results.rpush(RESULTS_KEY, json.dumps({"pid": os.getpid(), "rows": rows, "exceptions": exceptions}))


def _forced_intervals(history: list[dict[str, Any]], end: float) -> list[tuple[float, float, str]]:
    """(start, end, reason) of every forced stretch, from the audit trail (Redis clock)."""
    out, start, reason = [], None, ""
    for item in history:
        if item["event"] == "forced" and start is None:
            start, reason = item["time"], item.get("reason", "")
        elif item["event"] in ("restored", "lapsed", "manual_clear") and start is not None:
            out.append((start, item["time"], reason))
            start = None
    if start is not None:
        out.append((start, end, reason))
    return out


def summarise(per_process: list[dict[str, Any]], history: list[dict[str, Any]], injected: int,
              outages: list[tuple[str, float, float]], end: float, stub_probes: int) -> dict[str, Any]:
    forced = _forced_intervals(history, end)

    def fleet_forced(t: float) -> bool:
        return any(a <= t < b for a, b, _ in forced)

    # A read that disagrees with the fleet's mode is as wrong as it is far from the nearest
    # change (the audit trail's times are taken just after each change's script).
    changes = [t for a, b, _ in forced for t in (a, b)]
    longest_wrong = 0.0
    reads = counted = wrong = held = 0
    for proc in per_process:
        for row in proc["rows"]:
            start_s, end_s, seen_s, source = row.split(" ")
            t, t_end, seen = float(start_s), float(end_s), seen_s == "1"
            reads += 1
            counted += source == "zep_error"
            held += source == "ramp_held"
            a, b = t - PROPAGATION_S, t_end + AUDIT_LAG_S
            either = any(a <= c <= b for c in changes)  # the mode changed during the read
            if not either and seen != fleet_forced(t):
                wrong += 1
                longest_wrong = max(longest_wrong, min((abs(t - c) for c in changes), default=0.0))
    downgrades = []
    for name, a, b in outages:
        downgrades.append({"outage": name, "downgrades": sum(
            1 for item in history if item["event"] == "forced" and a <= item["time"] <= b + 1
            and item.get("reason") in ("auth", "consecutive_failures"))})
    holds = [item for item in history if item["event"] == "forced"]
    probes = [item for item in history if item["event"] == "probe"]
    probes_per_hold = []
    for i, hold in enumerate(holds):
        nxt = holds[i + 1]["time"] if i + 1 < len(holds) else end
        probes_per_hold.append(sum(1 for p in probes if hold["time"] < p["time"] <= nxt))
    return {
        "processes": len(per_process),
        "reads": reads,
        "held_by_ramp": held,
        "failures_counted": counted,
        "failures_injected": injected,
        "downgrades_per_outage": downgrades,
        "probes_per_hold_expiry": probes_per_hold,
        "holds": len(holds),
        "probe_reads_at_stub": stub_probes,
        "exceptions_to_callers": sum(p["exceptions"] for p in per_process),
        "wrong_mode_reads": wrong,
        "longest_wrong_mode_s": round(longest_wrong, 3),
        "forced_stretches": [(round(b - a, 1), r) for a, b, r in forced],
    }


def _zep_reads(stub: Any) -> int:
    """Reads that reached the stub from readers (the prober's excluded)."""
    return stub.stats()["reads"] - stub.reads_of("memguard-probe")


def run(minutes: float, logdir: str | None = None, sentinel: bool = False) -> dict[str, Any]:
    from memguard.drill.localstack import CeleryProcess, RedisServer, SentinelGroup, stack_env, wait_for
    from memguard.drill.zepstub import ZepStub
    from memguard.ops import audit

    phase = max(6.0, minutes * 60 / 5)
    key = "soak-key"
    logdir = logdir or tempfile.mkdtemp(prefix="memguard-soak-")
    with (SentinelGroup() if sentinel else RedisServer()) as server, RedisServer() as results_server, \
            ZepStub(api_key=key) as stub:
        env = stack_env(server.url, stub.url, key, SOAK_BROKER_URL=server.url,
                        SOAK_RESULTS_URL=results_server.url, PYTHONPATH=str(Path(__file__).parent),
                        MEMORY_DOWNGRADE_HOLD_SECONDS="2", MEMORY_DOWNGRADE_HOLD_MAX_SECONDS="2",
                        MEMORY_DOWNGRADE_PROBE_INTERVAL_SECONDS="0.5", MEMORY_ZEP_READ_TIMEOUT_MS="100",
                        MEMORY_RECOVERY_RAMP_SECONDS="2")  # a ramp over well before the next outage
        # Three children read; the fourth is free for beat's probe ticks.
        worker = CeleryProcess("worker", env, logdir, "soak-worker", "-P", "prefork", "-c", "4", "-O", "fair",
                               app="soak")
        beat = CeleryProcess("beat", env, logdir, "soak-beat", app="soak")
        worker.start()
        beat.start()
        try:
            sender = _broker(server.url)
            total = 5 * phase + 2
            for _ in range(3):
                sender.send_task("soak.read_for", args=[total])
            t0 = time.time()
            outages = []
            # Healthy, with a Redis restart (kill -9, a second down, its data gone) or a
            # Sentinel failover in the middle.
            time.sleep(phase / 2)
            if isinstance(server, SentinelGroup):
                server.failover()
            else:
                server.proc.kill()
                server.proc.wait(10)
                time.sleep(1)
                server.start()
            time.sleep(max(0.0, t0 + phase - time.time()))
            for name, fault in (("auth (401)", "401"), ("timeouts", "hang")):
                before = _zep_reads(stub)
                start = time.time()
                stub.set_fault(fault)
                time.sleep(phase)
                stub.set_fault("ok")
                outages.append((name, start, time.time(), _zep_reads(stub) - before))
                time.sleep(phase)  # healthy again: the next probe restores
            results = results_server.client()
            wait_for(lambda: results.llen(RESULTS_KEY) == 3, total + 30, "the readers to finish")
            per_process = [json.loads(r) for r in results.lrange(RESULTS_KEY, 0, -1)]
            history = audit.history(Target.parse(server.url).client(decode_responses=True), AUDIT_KEY, 10_000)
            out = summarise(per_process, history, sum(o[3] for o in outages),
                            [(n, a, b) for n, a, b, _ in outages], time.time(),
                            stub.reads_of("memguard-probe"))
            out["phase_seconds"] = phase
            out["redis"] = "sentinel failover" if sentinel else "restart"
            out["beat_alive"] = beat.proc is not None and beat.proc.poll() is None
            out["worker_alive"] = worker.proc is not None and worker.proc.poll() is None
            return out
        finally:
            beat.stop()
            worker.stop()


def report(res: dict[str, Any]) -> None:
    print(f"soak: {res['processes']} prefork children reading every {READ_EVERY_S * 1000:.0f} ms, "
          f"phases of {res['phase_seconds']:.0f} s (healthy + Redis {res['redis']}, 401, healthy, "
          "timeouts, healthy)")
    rows = [
        ("reads", res["reads"], ""),
        ("reads held by a recovery ramp", res["held_by_ramp"], ""),
        ("failures counted / injected", f"{res['failures_counted']} / {res['failures_injected']}", "equal"),
        *((f"downgrades in outage '{d['outage']}'", d["downgrades"], "1")
          for d in res["downgrades_per_outage"]),
        ("probes per hold expiry", ",".join(map(str, res["probes_per_hold_expiry"])), "1 each"),
        ("probe reads at the stub / holds", f"{res['probe_reads_at_stub']} / {res['holds']}", "equal"),
        ("exceptions to callers", res["exceptions_to_callers"], "0"),
        ("reads that saw a wrong mode", res["wrong_mode_reads"], "0"),
        ("longest wrong-mode read (s)", res["longest_wrong_mode_s"], "small"),
        ("beat / worker alive at the end", f"{res['beat_alive']} / {res['worker_alive']}", "True / True"),
    ]
    for name, value, target in rows:
        print(f"  {name:38} {value!s:>14}   target {target}" if target else f"  {name:38} {value!s:>14}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--sentinel", action="store_true", help="a Sentinel failover instead of a restart")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.minutes, sentinel=args.sentinel)
    print(json.dumps(res, indent=2)) if args.json else report(res)
    sys.exit(0 if res["exceptions_to_callers"] == 0 else 1)


if __name__ == "__main__":
    main()
