"""Prometheus metrics: counters fed by events, fleet state read from Redis at scrape time.

Counters and the overhead histogram work in prometheus-client's multiprocess mode (set
``PROMETHEUS_MULTIPROC_DIR`` before start), so prefork children add up. The mode gauge is
not set by whichever process last saw a change: a collector reads the authoritative Redis
record on every scrape, so every exporter shows the fleet's current mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from memguard.domain import events
from memguard.domain.chaos import FAULT_KINDS
from memguard.domain.classify import FAILURE_REASONS
from memguard.domain.fleet import FleetStatus
from memguard.domain.guards import DEFAULT
from memguard.domain.modes import EffectiveMode
from memguard.domain.record import AUTO_REASONS, AUTOMATIC_DOWNGRADES, PROBE_RESULTS, RESTORE_REASONS
from memguard.observe import counted
from memguard.observe.counted import NamedSource, StateSource

RAMP_RESULTS = ("started", "completed", "failed")

DOWNGRADES = Counter("memory_zep_downgrades_total", "Automatic fleet downgrades to write_only, by reason "
                     "(an operator's force is in memory_operator_actions_total)", ["reason", "guard"])
WOULD = Counter("memory_zep_would_downgrade_total", "Downgrades DISABLE_AUTO_DOWNGRADE prevented "
                "(dry run), by reason", ["reason", "guard"])
FAILURES = Counter("memory_zep_context_failures_total", "Failed Zep context reads, by reason",
                   ["reason", "guard"])
PROBES = Counter("memory_zep_probes_total", "Probe reads after a hold, by result", ["result", "guard"])
BLOCKED = Counter("memory_zep_reads_blocked_total", "Reads answered 'no context' while forced",
                  ["reason", "guard"])
RESTORED = Counter("memory_mode_restored_total", "Forced records ended, by reason "
                   "(probe_success, manual_clear, lapsed)", ["reason", "guard"])
RAMPS = Counter("memory_recovery_ramps_total", "Recovery ramps after a hold, by result (started, completed, "
                "failed: a trip during the ramp forced the fleet again)", ["result", "guard"])
TROUBLE = Counter("memory_guard_errors_total", "The guard's own trouble: Redis errors, corrupt "
                  "state, internal faults the reads failed open on", ["kind", "op", "guard"])
OPERATOR = Counter("memory_operator_actions_total", "Operators' forces and clears (the tasks, the CLI, "
                   "the flags API), by result (accepted, refused)", ["action", "result", "guard"])
UNGUARDED = Counter("memory_zep_reads_unguarded_total", "Reads that went to Zep unguarded because the "
                    "state could not be read (Redis unreachable, refused, TLS-rejected) or the check failed",
                    ["guard"])
CHAOS = Counter("memory_chaos_injected_total", "Reads a game day's experiment gave its fault, by kind "
                "(timeout, error, latency, auth)", ["fault", "guard"])
COUNTERS = {"downgrades": DOWNGRADES, "would_downgrade": WOULD, "failures": FAILURES, "probes": PROBES,
            "blocked": BLOCKED, "restored": RESTORED, "ramps": RAMPS, "errors": TROUBLE,
            "operator_actions": OPERATOR, "unguarded": UNGUARDED, "chaos_injected": CHAOS}
OVERHEAD = Histogram("memory_guard_overhead_seconds", "Time the guard adds to a read (sampled)",
                     ["guard"], buckets=(1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2))


def start_series(guard: str) -> None:
    """A guard's series at 0 from the start, so increase() sees its first downgrade. The
    default's at import; a named guard's when the process is built with its declaration."""
    for counter, labels in ((DOWNGRADES, AUTOMATIC_DOWNGRADES), (WOULD, AUTO_REASONS),
                            (FAILURES, FAILURE_REASONS), (PROBES, PROBE_RESULTS), (RESTORED, RESTORE_REASONS),
                            (RAMPS, RAMP_RESULTS), (BLOCKED, ("ramp",))):
        for label in labels:
            counter.labels(label, guard)
    for action in counted.OPERATOR_ACTIONS:
        for result in counted.OPERATOR_RESULTS:
            OPERATOR.labels(action, result, guard)
    UNGUARDED.labels(guard)
    for kind in FAULT_KINDS:
        CHAOS.labels(kind, guard)
    TROUBLE.labels("redis_error", "check", guard)
    TROUBLE.labels("internal", "check", guard)


start_series(DEFAULT)


def on_event(event: events.Event) -> None:
    """Count an event (``counted.counts``); sample the overhead of a read that went to Zep."""
    if isinstance(event, events.ReadFinished):
        OVERHEAD.labels(counted.guard_of(event)).observe(event.overhead_seconds)
        return
    for counter, labels, amount in counted.counts(event):
        COUNTERS[counter].labels(**labels).inc(amount)


class FleetStateCollector(Collector):
    """Reads the fleet state at scrape time: one Redis round trip per scrape for the guard
    ``default``, and one per named guard held or recovering (``named``: its declared name or
    pattern, its name and its store). Each series carries ``guard`` (the declared name or pattern)
    and ``name`` (the guard's own: a tenant's only while that tenant's guard is not healthy)."""

    def __init__(self, source: StateSource, named: NamedSource | None = None) -> None:
        self.source = source
        self.named = named

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("memory_guard_state_up", STATE_UP, labels=GUARD_LABELS)
        guards = counted.fleet(self.source, self.named)
        up.add_metric([DEFAULT, DEFAULT], 0 if guards is None else 1)
        yield up
        if guards is None:  # what it knows: no heartbeat could be read, so no prober is seen
            yield _gauge("memory_prober_up", PROBER_UP, 0)
            return
        fleet = guards[0][2]
        mode = GaugeMetricFamily("memory_mode_gauge", MODE, labels=["mode", *GUARD_LABELS])
        for label, name, each in guards:
            for m in EffectiveMode:
                mode.add_metric([m.value, label, name], 1 if m is each.mode else 0)
        yield mode
        for metric, documentation, value in GAUGES:
            gauge = GaugeMetricFamily(metric, documentation, labels=GUARD_LABELS)
            for label, name, each in guards:
                gauge.add_metric([label, name], value(each))
            yield gauge
        age = fleet.prober_age
        yield _gauge("memory_prober_up", PROBER_UP, 0 if age is None else 1)
        if age is not None:
            yield _gauge("memory_prober_heartbeat_age_seconds", HEARTBEAT_AGE, age)


GUARD_LABELS = ["guard", "name"]
STATE_UP = "1 if the fleet state could be read from Redis"
MODE = "1 for the fleet's current effective mode"
HEARTBEAT_AGE = "Seconds since the last probe tick"
PROBER_UP = ("1 while the prober's heartbeat is fresh (a probe tick within the last 12 probe intervals), "
             "0 when no prober is running or the heartbeat cannot be read")
GAUGES: tuple[tuple[str, str, Callable[[FleetStatus], float]], ...] = (
    ("memory_mode_hold_seconds", "The current hold's length (it doubles after each failed probe, up to "
     "MEMORY_DOWNGRADE_HOLD_MAX_SECONDS)", lambda f: f.hold_seconds),
    ("memory_mode_holds", "Holds in a row (1 + failed probes); 0 when not forced", lambda f: f.holds),
    ("memory_mode_hold_seconds_left", "Seconds left in the hold (0 when not forced or awaiting the probe)",
     lambda f: f.seconds_left),
    ("memory_mode_hold_expired_seconds", "Seconds since the hold ended without a probe result (0 when held "
     "or not forced)", lambda f: f.expired_seconds),
    ("memory_zep_consecutive_failures", "The fleet's failure count", lambda f: f.fail_count),
    ("memory_recovery_ramp_share", "Share of conversations whose reads go to Zep: the recovery ramp's share "
     "while one runs, 1 with none, 0 while forced", lambda f: f.ramp_share),
    ("memory_recovery_ramp_seconds_left", "Seconds left in the recovery ramp (0 with none)",
     lambda f: f.ramp.seconds_left(f.redis_now) if f.ramp and not f.forced else 0.0),
    ("memory_chaos_share", "Share of conversations a game day's experiment picks while one runs (memguard "
     "chaos start), 0 with none: the dashboard marks it",
     lambda f: f.chaos.percent / 100 if f.chaos else 0.0),
)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation)
    gauge.add_metric([], value)
    return gauge


_default_registered = False


def registry(source: StateSource, named: NamedSource | None = None) -> CollectorRegistry:
    """The registry to serve: multiprocess-aware when PROMETHEUS_MULTIPROC_DIR is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        reg.register(FleetStateCollector(source, named))
        return reg
    global _default_registered
    if not _default_registered:
        REGISTRY.register(FleetStateCollector(source, named))
        _default_registered = True
    return REGISTRY


def serve(port: int, source: StateSource, addr: str = "0.0.0.0", named: NamedSource | None = None) -> Any:
    """Start the /metrics HTTP server in a background thread (inside a worker or web app)."""
    server, _thread = start_http_server(port, addr=addr, registry=registry(source, named))
    return server


def make_wsgi_app(source: StateSource, named: NamedSource | None = None) -> Any:
    """A WSGI app serving /metrics, to mount in Django or Flask."""
    from prometheus_client import make_wsgi_app as _make

    return _make(registry(source, named))


def mark_process_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
