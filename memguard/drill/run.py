"""``memguard drill``: the runbook's three drills, end to end, with a live timeline.

Locally it starts and stops its own stack: a private redis-server, the Zep stub, a real
Celery worker and a real beat with RedBeat, and a short hold. With ``--redis-url`` and
``--zep-url`` it runs the same drills against a canary's Redis and Zep instead (the canary's
own worker and beat do the probing): the auth drill reads with a deliberately wrong key and
the failure drill reads from a local stub that hangs.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from celery import Celery

from memguard import process, service
from memguard.config.settings import Settings, SettingsError, masked_url
from memguard.domain import events
from memguard.domain.events import origin
from memguard.drill import gameday
from memguard.drill.localstack import CeleryProcess, RedisServer, stack_env
from memguard.drill.zepstub import ZepStub
from memguard.integrations.celery_settings import celery_transport
from memguard.ops.prober import PROBE_THREAD_ID

DRILL_KEY = "drill-key-not-a-secret"
HOLD_SECONDS = 5
RAMP_SECONDS = 6  # the local stack's recovery ramp: short, and long enough to watch it rise


class Timeline:
    """Prints timestamped lines a person can follow, from any thread."""

    def __init__(self, out: Any = None) -> None:
        self.t0 = time.monotonic()
        self.out = out or sys.stdout
        self.lock = threading.Lock()

    def say(self, text: str) -> None:
        with self.lock:
            stamp = time.strftime("%H:%M:%S")
            print(f"{stamp} +{time.monotonic() - self.t0:6.2f}s  {text}", file=self.out, flush=True)


@dataclass
class DrillResult:
    name: str
    ok: bool
    detail: str


def _status() -> dict[str, Any]:
    return process.get().ops.status(origin("drill"))


class _Watch(threading.Thread):
    """Polls the fleet status and the stub's probe count; prints each change."""

    def __init__(self, timeline: Timeline, stub: ZepStub | None) -> None:
        super().__init__(name="drill-watch", daemon=True)
        self.timeline, self.stub = timeline, stub
        self.stop = threading.Event()
        self.probes = 0

    def run(self) -> None:
        last = None
        while not self.stop.wait(0.1):
            try:
                st = _status()
            except Exception as exc:
                self.timeline.say(f"status unavailable: {exc}")
                continue
            view = (st["mode"], st.get("reason"), st.get("phase"))
            if view != last:
                extra = f" reason={st['reason']} phase={st['phase']} seconds_left={st['seconds_left']}" \
                    if st["forced"] else ""
                self.timeline.say(f"fleet mode -> {st['mode']}{extra} fail_count={st['fail_count']}")
                last = view
            if self.stub is not None:
                probes = self.stub.reads_of(PROBE_THREAD_ID)
                if probes != self.probes:
                    self.timeline.say(f"probe read reached Zep (probe #{probes})")
                    self.probes = probes


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def _metric_line(tl: Timeline) -> None:
    from prometheus_client import REGISTRY

    def val(name: str, **labels: str) -> int:
        return int(REGISTRY.get_sample_value(name, labels) or 0)

    tl.say("metrics (this process): "
           f"downgrades{{auth}}={val('memory_zep_downgrades_total', reason='auth')} "
           f"downgrades{{consecutive_failures}}="
           f"{val('memory_zep_downgrades_total', reason='consecutive_failures')} "
           f"failures{{timeout}}={val('memory_zep_context_failures_total', reason='timeout')} "
           f"blocked={val('memory_zep_reads_blocked_total', reason='auth')}")


def _on_event(tl: Timeline) -> Callable[[events.Event], None]:
    def show(e: events.Event) -> None:
        if isinstance(e, events.ModeForced):
            tl.say(f"event memory_mode_forced {e.prev_mode}->{e.next_mode} reason={e.reason} "
                   f"hold={e.hold_seconds:.0f}s")
        elif isinstance(e, events.FailureRecorded):
            tl.say(f"event read failed reason={e.reason} status={e.status} fail_count={e.fail_count}")
        elif isinstance(e, events.ModeRestored):
            ramp = f" (recovery ramp of {e.ramp_seconds:g} s starts)" if e.ramp_seconds else ""
            tl.say(f"event memory_mode_restored mode={e.mode} reason={e.reason}{ramp}")

    return show


def auth_drill(tl: Timeline, set_fault: Callable[[str], None], sender: Celery) -> DrillResult:
    tl.say("== auth drill: Zep answers 401 -> whole fleet write_only at once, reason auth")
    set_fault("401")
    ctx, meta = service.fetch_thread_context("drill-thread")
    tl.say(f"read -> context={ctx!r} meta={meta}")
    st = _status()
    ok = st["forced"] and st.get("reason") == "auth"
    ctx, meta = service.fetch_thread_context("drill-thread")
    tl.say(f"next read -> source={meta.get('source')} (no call to Zep)")
    ok = ok and meta.get("source") == "write_only_forced"
    set_fault("ok")
    # At once, not through the recovery ramp: the next drill needs every read to reach Zep.
    cleared = sender.send_task("memguard.clear", kwargs={"ramp": False}).get(timeout=20)
    tl.say(f"operator clear through Celery (memguard.clear, ramp=False: no recovery ramp) -> {cleared}")
    ok = ok and _wait(lambda: not _status()["forced"], 5)
    _metric_line(tl)
    return DrillResult("auth", ok, f"forced reason={st.get('reason')}")


def failure_drill(tl: Timeline, set_fault: Callable[[str], None], threshold: int) -> DrillResult:
    tl.say(f"== failure drill: Zep times out -> {threshold} reads -> write_only, reason consecutive_failures")
    set_fault("hang")
    for i in range(threshold):
        _, meta = service.fetch_thread_context("drill-thread")
        tl.say(f"read {i + 1} -> source={meta.get('source')} reason={meta.get('reason')}")
    st = _status()
    ok = st["forced"] and st.get("reason") == "consecutive_failures"
    _metric_line(tl)
    return DrillResult("failure", ok, f"forced reason={st.get('reason')} fail_count={st['fail_count']}")


RAMP_READS_PER_SECOND = 40  # distinct conversations read each second of the ramp


def _ramp_second(tl: Timeline, second: int, zep_reads: Callable[[], int] | None) -> tuple[float, float]:
    """One second of reads of distinct conversations during the ramp: the fleet's share (status)
    and the share this process admitted, printed with what reached Zep."""
    share = (_status().get("ramp") or {}).get("share_percent", 100.0)
    before = zep_reads() if zep_reads else 0
    admitted = 0
    started = time.monotonic()
    for i in range(RAMP_READS_PER_SECOND):
        admitted += service.fetch_thread_context(f"drill-conv-{second}-{i}")[1].get("used") is True
        time.sleep(max(0.0, started + (i + 1) / RAMP_READS_PER_SECOND - time.monotonic()))
    reached = f", {zep_reads() - before} reached the Zep stub" if zep_reads else ""
    tl.say(f"ramp: fleet share {share:5.1f} %, admitted {admitted:2d} of {RAMP_READS_PER_SECOND} "
           f"conversations{reached}")
    return share, 100.0 * admitted / RAMP_READS_PER_SECOND


def recovery_drill(tl: Timeline, set_fault: Callable[[str], None], hold: float, interval: float,
                   probes: Callable[[], int] | None,
                   zep_reads: Callable[[], int] | None = None) -> DrillResult:
    tl.say("== recovery drill: Zep healthy again -> after the hold the beat-driven probe restores, "
           "through the recovery ramp")
    set_fault("ok")
    before = probes() if probes else 0
    st = _status()
    if not st["forced"]:
        return DrillResult("recovery", False, "nothing to recover from: the fleet is not forced")
    tl.say(f"holding for {st['seconds_left']}s; reads stay blocked until the probe succeeds")
    restored = _wait(lambda: not _status()["forced"], hold + 4 * interval + 10)
    ramp = _status().get("ramp")
    shares: list[tuple[float, float]] = []
    if restored and ramp:
        tl.say(f"recovery ramp: {ramp['seconds']:g} s from {ramp['min_percent']:g} % "
               f"(aggression {ramp['aggression']:g}); each read decides by its conversation")
        second = 0
        while _status().get("ramp") and second < ramp["seconds"] + 2 * interval + 5:
            shares.append(_ramp_second(tl, second, zep_reads))
            second += 1
    ctx, meta = service.fetch_thread_context("drill-thread")
    tl.say(f"read after recovery -> context={ctx!r} source={meta.get('source')}")
    n = (probes() - before) if probes else None
    rising = not ramp or (len(shares) >= 2 and shares[-1][1] > shares[0][1])
    ok = restored and rising and meta.get("used") is True and (n is None or n == 1)
    _metric_line(tl)
    detail = f"restored={restored} probe reads={n}"
    if ramp:
        detail += f" ramp admitted {shares[0][1]:.0f} % -> {shares[-1][1]:.0f} %" if shares else " (no ramp)"
    return DrillResult("recovery", ok, detail)


def _canary_sender(settings: Settings) -> Celery:
    """A Celery client for the canary's tasks: its broker as the ready app would find it
    (CELERY_BROKER_URL, else REDIS_URL, in kombu's sentinel form for a Sentinel URL)."""
    try:
        transport = celery_transport(settings.redis_url, os.environ)
    except ValueError as exc:  # a Cluster cannot be the broker
        raise SettingsError(f"invalid configuration: REDIS_URL: {exc}") from None
    sender = Celery(broker=transport["broker_url"], backend=transport["result_backend"])
    sender.conf.update(transport)
    return sender


def run(redis_url: str | None = None, zep_url: str | None = None, zep_key: str | None = None,
        hold: int = HOLD_SECONDS, out: Any = None, logdir: str | None = None,
        ramp: int = RAMP_SECONDS, chaos: bool = False) -> int:
    tl = Timeline(out)
    interval = 1.0
    show = _on_event(tl)
    process.hooks.subscribe(show)
    procs: list[CeleryProcess] = []
    stack: list[Any] = []
    try:
        if redis_url:
            settings = Settings.from_env({**os.environ, "REDIS_URL": redis_url})
            real_zep = replace(settings, zep_api_url=zep_url or settings.zep_api_url,
                               zep_api_key=zep_key or settings.zep_api_key, chaos="allow" if chaos else "off")
            hang_stub = ZepStub().start()
            stack.append(hang_stub)
            hold = real_zep.hold_seconds
            interval = real_zep.probe_interval_seconds
            tl.say(f"canary drill: Redis {masked_url(redis_url)}, Zep {real_zep.zep_api_url} "
                   "(probing by the canary's beat)")

            def set_fault(fault: str) -> None:
                if fault == "401":
                    process.configure(replace(real_zep, zep_api_key=DRILL_KEY))
                elif fault == "hang":
                    hang_stub.set_fault("hang")
                    process.configure(replace(real_zep, zep_api_url=hang_stub.url))
                else:
                    process.configure(real_zep)

            process.configure(real_zep)
            probes = zep_reads = reads_of = None
            sender = _canary_sender(settings)
            threshold = real_zep.threshold
        else:
            redis_server = RedisServer().start()
            stack.append(redis_server)
            key = zep_key or DRILL_KEY
            stub = ZepStub(api_key=key).start()
            stack.append(stub)
            tl.say(f"local stack: redis-server {redis_server.url}, Zep stub {stub.url}, hold {hold}s")
            env = stack_env(redis_server.url, stub.url, key,
                            MEMORY_DOWNGRADE_HOLD_SECONDS=str(hold), MEMORY_RECOVERY_RAMP_SECONDS=str(ramp),
                            MEMORY_DOWNGRADE_PROBE_INTERVAL_SECONDS=str(interval),
                            MEMORY_ZEP_READ_TIMEOUT_MS="200")
            os.environ.update({k: env[k] for k in ("REDIS_URL", "ZEP_API_URL", "ZEP_API_KEY")})
            logdir = logdir or tempfile.mkdtemp(prefix="memguard-drill-")
            # The ready app (-A memguard) from the directory holding this memguard, whatever
            # this process's working directory is.
            root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
            worker = CeleryProcess("worker", env, logdir, "drill-worker", "-P", "prefork", "-c", "2",
                                   cwd=root)
            beat = CeleryProcess("beat", env, logdir, "drill-beat", cwd=root)
            procs += [worker, beat]
            tl.say("starting a Celery worker (prefork, 2 children) and beat (RedBeat) ...")
            worker.start()
            beat.start()
            tl.say(f"worker and beat up (logs in {logdir})")
            process.configure(replace(Settings.from_env(env), chaos="allow" if chaos else "off"))
            set_fault, reads_of = stub.set_fault, stub.reads_of

            def probes() -> int:
                return stub.reads_of(PROBE_THREAD_ID)

            def zep_reads() -> int:
                return sum(stub.stats()["reads_by_thread"].values())

            sender = Celery(broker=redis_server.url, backend=redis_server.url)
            threshold = process.get().settings.threshold
            watch = _Watch(tl, stub)
            watch.start()
            stack.append(watch)

        results = [
            auth_drill(tl, set_fault, sender),
            failure_drill(tl, set_fault, threshold),
            recovery_drill(tl, set_fault, hold, interval, probes, zep_reads),
        ]
        if chaos:
            ok, detail = gameday.chaos_drill(tl.say, sender, reads_of)
            results.append(DrillResult("chaos", ok, detail))
    finally:
        process.hooks.unsubscribe(show)
        for p in procs:
            p.stop()
        for item in reversed(stack):
            if isinstance(item, _Watch):
                item.stop.set()
                item.join(2)
            elif isinstance(item, RedisServer):
                process.get().close()
                item.close()
            else:
                item.stop()
    for r in results:
        print(f"{'PASS' if r.ok else 'FAIL'}  {r.name} drill: {r.detail}", flush=True)
    failed = [r.name for r in results if not r.ok]
    summary = f"{len(failed)} failed ({', '.join(failed)})" if failed else "all passed"
    print(f"drills: {summary}", flush=True)
    return 1 if failed else 0
