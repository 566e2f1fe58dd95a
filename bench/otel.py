"""What OpenTelemetry adds to a healthy guarded read (``./run bench``, one section).

A read decorated with ``memguard.guarded`` is timed three ways in one process against the same
Redis: ``MEMGUARD_OTEL=off``; fed, with the SDK's providers set and no span current; fed,
inside a recording span (the read's outcome goes on it). The figures are the extra µs per read
over ``off``, measured in this run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from memguard import process
from memguard.config.settings import Settings

Timer = Callable[[Callable[[], Any], int], list[float]]
Summary = Callable[[list[float], float], dict[str, float]]


def run(settings: Settings, read: Callable[[str], Any], n: int, timed: Timer, summary: Summary,
        base: float) -> dict[str, Any]:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    out: dict[str, Any] = {}
    process.configure(dataclasses.replace(settings, otel="off")).watcher.wait_ready()
    out["otel_off"] = summary(timed(lambda: read("t"), n), base)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    trace.set_tracer_provider(TracerProvider())
    process.configure(dataclasses.replace(settings, otel="on")).watcher.wait_ready()
    out["otel_no_span"] = summary(timed(lambda: read("t"), n), base)
    with trace.get_tracer("bench").start_as_current_span("request"):
        out["otel_in_span"] = summary(timed(lambda: read("t"), n), base)
    off = out["otel_off"]["p50_us"]
    out["extra_p50_us"] = {case: round(out[case]["p50_us"] - off, 3)
                           for case in ("otel_no_span", "otel_in_span")}
    process.configure(dataclasses.replace(settings, otel="off"))
    return out


def report(res: dict[str, Any]) -> None:
    print("OpenTelemetry, a decorated healthy read:")
    for key, label in (("otel_off", "MEMGUARD_OTEL=off"), ("otel_no_span", "fed, no span current"),
                       ("otel_in_span", "fed, inside a recording span")):
        extra = res["extra_p50_us"].get(key)
        more = "" if extra is None else f"  (+{extra} µs over off)"
        print(f"  {label:30} p50 {res[key]['p50_us']:7.2f} µs  p99 {res[key]['p99_us']:7.2f} µs{more}")
