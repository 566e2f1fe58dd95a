"""OpenTelemetry beside Prometheus (``memguard-zep[otel]``): the same counts as instruments, the
fleet's mode as an observable gauge, and memguard's part of a request on the request's span.

Imported only when ``opentelemetry-api`` is installed (and ``MEMGUARD_OTEL`` is not ``off``):
``memguard.process`` decides. The instruments come from the global meter provider, a proxy
until the application sets its own, so memguard can be built before or after the application
configures OpenTelemetry; with no provider they record nothing.

- **Metrics** are counted from ``memguard.observe.counted``, the mapping Prometheus counts from,
  under names of the semantic conventions' form (dotted namespaces, no ``_total``, a unit).
- **Traces.** A guarded read inside a recording span adds ``memguard.source``,
  ``memguard.guard`` and (when there is one) ``memguard.reason`` to it. A transition (forced,
  restored, would force, ramp completed) is an event on the span it happened in, or a span of
  its own when there is none; a probe is a span of its own, as long as the probe took. The
  healthy read creates no span.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import metrics, trace

from memguard.domain import events
from memguard.domain.modes import EffectiveMode
from memguard.observe import counted
from memguard.observe.counted import NamedSource, StateSource

SCOPE = "memguard"
# counter → (instrument name, unit, description); the labels are counted.LABELS'
INSTRUMENTS: dict[str, tuple[str, str, str]] = {
    "downgrades": ("memguard.zep.downgrades", "{downgrade}", "Fleet downgrades to write_only, by reason"),
    "would_downgrade": ("memguard.zep.would_downgrade", "{downgrade}",
                        "Downgrades DISABLE_AUTO_DOWNGRADE prevented (dry run), by reason"),
    "failures": ("memguard.zep.context.failures", "{failure}", "Failed Zep context reads, by reason"),
    "probes": ("memguard.zep.probes", "{probe}", "Probe reads after a hold, by result"),
    "blocked": ("memguard.zep.reads.blocked", "{read}", "Reads answered 'no context' while forced"),
    "restored": ("memguard.mode.restored", "{restore}", "Forced records ended, by reason"),
    "ramps": ("memguard.recovery.ramps", "{ramp}", "Recovery ramps after a hold, by result"),
    "errors": ("memguard.guard.errors", "{error}", "The guard's own trouble the reads failed open on"),
    "operator_actions": ("memguard.operator.actions", "{action}",
                         "Operators' forces and clears (the tasks, the CLI, the flags API), by result"),
    "unguarded": ("memguard.zep.reads.unguarded", "{read}",
                  "Reads that went to Zep unguarded: the state could not be read"),
    "chaos_injected": ("memguard.chaos.injected", "{read}", "Reads a game day's experiment gave its fault"),
}
OVERHEAD = ("memguard.guard.overhead", "s", "Time the guard adds to a read (sampled)")
OVERHEAD_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2)  # Prometheus's
MODE = ("memguard.mode", "1", "1 for each guard's current effective mode (read from Redis at collection)")
TRANSITIONS: dict[type, str] = {
    events.ModeForced: "memguard.mode_forced",
    events.ModeRestored: "memguard.mode_restored",
    events.WouldForce: "memguard.mode_would_force",
    events.RampCompleted: "memguard.recovery_ramp_completed",
}
PROBE_SPAN = "memguard.probe"


class Telemetry:
    """The process's instruments and tracer, made once: a meter hands back an instrument
    already made under the same name, but warns, and ``configure()`` rebuilds the process."""

    def __init__(self) -> None:
        meter = metrics.get_meter(SCOPE)
        self.counters = {key: meter.create_counter(name, unit=unit, description=text)
                         for key, (name, unit, text) in INSTRUMENTS.items()}
        name, unit, text = OVERHEAD
        try:
            self.overhead = meter.create_histogram(name, unit=unit, description=text,
                                                   explicit_bucket_boundaries_advisory=list(OVERHEAD_BUCKETS))
        except TypeError:  # opentelemetry-api before 1.23 takes no advice
            self.overhead = meter.create_histogram(name, unit=unit, description=text)
        self.sources: tuple[StateSource, NamedSource | None] | None = None
        name, unit, text = MODE
        meter.create_observable_gauge(name, callbacks=[self._modes], unit=unit, description=text)
        self.tracer = trace.get_tracer(SCOPE)

    def stop(self) -> None:
        """The process is closed: its mode gauge reads nothing until ``start`` again."""
        self.sources = None

    def on_event(self, event: events.Event) -> None:
        """Count ``event`` as Prometheus does; put a transition or probe on the trace."""
        if isinstance(event, events.ReadFinished):
            self.overhead.record(event.overhead_seconds, {"guard": counted.guard_of(event)})
            return
        for counter, labels, amount in counted.counts(event):
            self.counters[counter].add(amount, labels)
        if isinstance(event, events.ProbeFinished):
            self._probe_span(event)
        elif (name := TRANSITIONS.get(type(event))) is not None:
            self._transition(name, event)

    @staticmethod
    def annotate(meta: Mapping[str, Any], guard: str) -> None:
        """Put a guarded read's outcome on the caller's span, if it records one; creates none."""
        span = trace.get_current_span()
        if not span.is_recording():
            return
        attributes = {"memguard.source": str(meta.get("source", "")),
                      "memguard.guard": str(meta.get("guard", guard))}
        reason = meta.get("reason")
        if reason:
            attributes["memguard.reason"] = str(reason)
        span.set_attributes(attributes)

    def _modes(self, _options: Any) -> Iterable[metrics.Observation]:
        """The mode gauge at collection time: one Redis round trip, as a Prometheus scrape."""
        if self.sources is None:
            return []
        guards = counted.fleet(*self.sources)
        if guards is None:
            return []
        return [metrics.Observation(1 if m is status.mode else 0,
                                    {"mode": m.value, "guard": label, "name": name})
                for label, name, status in guards for m in EffectiveMode]

    def _transition(self, name: str, event: events.Event) -> None:
        attributes = _attributes(event)
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(name, attributes)
        else:
            self.tracer.start_span(name, attributes=attributes).end()

    def _probe_span(self, event: events.ProbeFinished) -> None:
        end = time.time_ns()
        span = self.tracer.start_span(PROBE_SPAN, attributes=_attributes(event),
                                      start_time=end - int(event.duration_seconds * 1e9))
        span.end(end_time=end)


def _attributes(event: events.Event) -> dict[str, str | float | int]:
    """A transition's attributes: its guard and what the log line says of it (no tenant's
    data beyond the guard's name, which a span may carry: traces are sampled, not aggregated)."""
    out: dict[str, str | float | int] = {"memguard.guard": getattr(event, "guard", "default")}
    for field in ("reason", "prev_mode", "next_mode", "mode", "result", "previous_reason", "trigger"):
        value = getattr(event, field, None)
        if value:
            out[f"memguard.{field}"] = value
    for field in ("hold_seconds", "holds", "duration_seconds", "ramp_seconds"):
        value = getattr(event, field, None)
        if isinstance(value, int | float):
            out[f"memguard.{field}"] = value
    return out


_telemetry: Telemetry | None = None


def start(source: StateSource, named: NamedSource | None = None) -> Telemetry:
    """The process's telemetry, its mode gauge reading ``source`` (and ``named``) from now on."""
    global _telemetry
    if _telemetry is None:
        _telemetry = Telemetry()
    _telemetry.sources = (source, named)
    return _telemetry
