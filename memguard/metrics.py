"""Prometheus metrics: counters fed by events, fleet state read from Redis at scrape time.

Counters and the overhead histogram work in prometheus-client's multiprocess mode (set
``PROMETHEUS_MULTIPROC_DIR`` before start), so prefork children add up. The mode gauge is
not set by whichever process last saw a change: a collector reads the authoritative Redis
record on every scrape, so every exporter shows the fleet's current mode.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from memguard import events
from memguard.modes import EffectiveMode

DOWNGRADES = Counter("memory_zep_downgrades_total", "Fleet downgrades to write_only, by reason",
                     ["reason"])
WOULD = Counter("memory_zep_would_downgrade_total", "Downgrades DISABLE_AUTO_DOWNGRADE prevented "
                "(dry run), by reason", ["reason"])
FAILURES = Counter("memory_zep_context_failures_total", "Failed Zep context reads, by reason",
                   ["reason"])
PROBES = Counter("memory_zep_probes_total", "Probe reads after a hold, by result", ["result"])
BLOCKED = Counter("memory_zep_reads_blocked_total", "Reads answered 'no context' while forced",
                  ["reason"])
RESTORED = Counter("memory_mode_restored_total", "Forced records ended, by reason "
                   "(probe_success, manual_clear, lapsed)", ["reason"])
TROUBLE = Counter("memory_guard_errors_total", "The guard's own trouble: Redis errors, corrupt "
                  "state", ["kind", "op"])
OVERHEAD = Histogram("memory_guard_overhead_seconds", "Time the guard adds to a read (sampled)",
                     buckets=(1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2))

# Series exist at 0 from the start, so increase() sees the first downgrade of a process.
for _reason in ("auth", "consecutive_failures", "probe_failed", "manual_ops", "latency", "rate_limited",
                "failure_rate"):
    DOWNGRADES.labels(_reason)
for _reason in ("auth", "consecutive_failures", "latency", "rate_limited", "failure_rate"):
    WOULD.labels(_reason)
for _reason in ("auth", "timeout", "connection", "http_5xx", "rate_limited", "http_4xx", "bad_payload"):
    FAILURES.labels(_reason)
for _result in ("success", "failed"):
    PROBES.labels(_result)
for _reason in ("probe_success", "manual_clear", "lapsed"):
    RESTORED.labels(_reason)
TROUBLE.labels("redis_error", "check")


def on_event(event: events.Event) -> None:
    if isinstance(event, events.ReadFinished):
        OVERHEAD.observe(event.overhead_seconds)
    elif isinstance(event, events.ReadBlocked):
        BLOCKED.labels(event.reason).inc()
    elif isinstance(event, events.FailureRecorded):
        FAILURES.labels(event.reason).inc()
    elif isinstance(event, events.ModeForced):
        DOWNGRADES.labels(event.reason).inc()
    elif isinstance(event, events.WouldForce):
        WOULD.labels(event.reason).inc()
    elif isinstance(event, events.ModeRestored):
        RESTORED.labels(event.reason).inc()
    elif isinstance(event, events.ProbeFinished):
        PROBES.labels(event.result).inc()
    elif isinstance(event, events.GuardTrouble):
        TROUBLE.labels(event.kind, event.op).inc()


class FleetStateCollector(Collector):
    """Reads the forced record at scrape time: one Redis round trip per scrape."""

    def collect(self) -> Iterator[Metric]:
        from memguard import runtime

        up = GaugeMetricFamily("memory_guard_state_up", "1 if the fleet state could be read from Redis")
        try:
            rt = runtime.get()
            snap = rt.state.snapshot()
        except Exception:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        record = snap.record
        current = rt.state.mode(record)
        mode = GaugeMetricFamily("memory_mode_gauge", "1 for the fleet's current effective mode",
                                 labels=["mode"])
        for m in EffectiveMode:
            mode.add_metric([m.value], 1 if m is current else 0)
        yield mode
        hold = GaugeMetricFamily("memory_mode_hold_seconds", "The current hold's length (it doubles "
                                 "after each failed probe, up to MEMORY_DOWNGRADE_HOLD_MAX_SECONDS)")
        hold.add_metric([], record.until - record.forced_at if record else 0.0)
        yield hold
        holds = GaugeMetricFamily("memory_mode_holds", "Holds in a row (1 + failed probes); 0 when "
                                  "not forced")
        holds.add_metric([], record.holds if record else 0)
        yield holds
        left = GaugeMetricFamily("memory_mode_hold_seconds_left", "Seconds left in the hold "
                                 "(0 when not forced or awaiting the probe)")
        left.add_metric([], max(0.0, record.until - snap.redis_now) if record else 0.0)
        yield left
        expired = GaugeMetricFamily("memory_mode_hold_expired_seconds", "Seconds since the hold "
                                    "ended without a probe result (0 when held or not forced)")
        expired.add_metric([], max(0.0, snap.redis_now - record.until) if record else 0.0)
        yield expired
        count = GaugeMetricFamily("memory_zep_consecutive_failures", "The fleet's failure count")
        count.add_metric([], snap.fail_count)
        yield count
        prober = GaugeMetricFamily("memory_prober_up", "1 while the prober's heartbeat is fresh (a probe "
                                   "tick within the last 12 probe intervals), 0 when no prober is running")
        prober.add_metric([], 0 if snap.probe_heartbeat is None else 1)
        yield prober
        if snap.probe_heartbeat is not None:
            age = GaugeMetricFamily("memory_prober_heartbeat_age_seconds",
                                    "Seconds since the last probe tick")
            age.add_metric([], max(0.0, snap.redis_now - snap.probe_heartbeat))
            yield age


_default_registered = False


def registry() -> CollectorRegistry:
    """The registry to serve: multiprocess-aware when PROMETHEUS_MULTIPROC_DIR is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        reg.register(FleetStateCollector())
        return reg
    global _default_registered
    if not _default_registered:
        REGISTRY.register(FleetStateCollector())
        _default_registered = True
    return REGISTRY


def serve(port: int, addr: str = "0.0.0.0") -> Any:
    """Start the /metrics HTTP server in a background thread (inside a worker or web app)."""
    server, _thread = start_http_server(port, addr=addr, registry=registry())
    return server


def make_wsgi_app() -> Any:
    """A WSGI app serving /metrics, to mount in Django or Flask."""
    from prometheus_client import make_wsgi_app as _make

    return _make(registry())


def mark_process_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def serve_forever(port: int, addr: str = "0.0.0.0") -> None:
    serve(port, addr)
    while True:
        time.sleep(3600)
