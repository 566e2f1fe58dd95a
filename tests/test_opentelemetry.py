"""memguard in an application's OpenTelemetry: the same counts as Prometheus, the fleet's mode
as an observable gauge, and each guarded read's outcome on the request's span.

The SDK's in-memory metric reader and span exporter stand in for the application's exporters;
memguard, Redis, the Zep stub and the real Zep client are all real. The providers are set once
per process (OpenTelemetry's rule), after memguard may already have made its instruments: they
are the API's proxies, which is how an application that configures OpenTelemetry late works.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from memguard import exporter, flags, service
from memguard.observe import counted, metrics, otel

from .conftest import wait_past


@pytest.fixture(scope="module")
def sdk() -> SimpleNamespace:
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    otel_metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    trace.set_tracer_provider(tracer_provider)
    return SimpleNamespace(reader=reader, spans=spans, tracer=trace.get_tracer("the-application"))


def otel_points(reader: InMemoryMetricReader) -> dict[tuple[str, frozenset], float]:
    """Every memguard data point now: (instrument, attributes) → value (a histogram's count)."""
    out: dict[tuple[str, frozenset], float] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            if scope.scope.name != otel.SCOPE:
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    out[(metric.name, frozenset(point.attributes.items()))] = \
                        point.count if value is None else value
    return out


def prometheus_counts() -> dict[tuple[str, frozenset], float]:
    """memguard's Prometheus counters now, keyed as ``otel_points`` keys the same counts."""
    out = {}
    for key, counter in metrics.COUNTERS.items():
        name = otel.INSTRUMENTS[key][0]
        for family in counter.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[(name, frozenset(sample.labels.items()))] = sample.value
    return out


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def attributes_of(spans: InMemorySpanExporter, name: str) -> dict:
    [span] = [s for s in spans.get_finished_spans() if s.name == name]
    return dict(span.attributes)


def test_a_401_a_failure_burst_and_a_probe_count_alike_in_opentelemetry_and_prometheus(sdk, configure, stub):
    rt = configure(hold_seconds=1, hold_max_seconds=1)
    assert rt.annotate is not None, "OpenTelemetry is installed: memguard feeds it (MEMGUARD_OTEL=auto)"
    otel_before, prom_before = otel_points(sdk.reader), prometheus_counts()
    sdk.spans.clear()

    with sdk.tracer.start_as_current_span("healthy"):
        assert service.fetch_thread_context("t-1")[0] is not None
    stub.set_fault("401")
    with sdk.tracer.start_as_current_span("unauthorized"):
        assert service.fetch_thread_context("t-1")[1]["source"] == "zep_error"
    with sdk.tracer.start_as_current_span("while-forced"):
        assert service.fetch_thread_context("t-1")[1]["source"] == "write_only_forced"

    # Only the application's spans so far: memguard made none, and put its part on each.
    names = sorted(s.name for s in sdk.spans.get_finished_spans())
    assert names == ["healthy", "unauthorized", "while-forced"]
    assert attributes_of(sdk.spans, "healthy") == {"memguard.source": "zep", "memguard.guard": "default"}
    assert attributes_of(sdk.spans, "unauthorized") == {
        "memguard.source": "zep_error", "memguard.guard": "default", "memguard.reason": "auth"}
    assert attributes_of(sdk.spans, "while-forced") == {
        "memguard.source": "write_only_forced", "memguard.guard": "default", "memguard.reason": "auth"}
    [forced] = next(s for s in sdk.spans.get_finished_spans() if s.name == "unauthorized").events
    assert forced.name == "memguard.mode_forced"
    assert forced.attributes["memguard.reason"] == "auth"
    assert forced.attributes["memguard.next_mode"] == "write_only"

    # The mode gauge is read from Redis at collection, as the Prometheus collector reads it.
    modes = {dict(k[1])["mode"]: v for k, v in otel_points(sdk.reader).items() if k[0] == "memguard.mode"}
    assert modes == {"read_write": 0, "write_only": 1, "off": 0}
    collector = metrics.FleetStateCollector(exporter.current_state)
    prom = {s.labels["mode"]: s.value for family in collector.collect()
            if family.name == "memory_mode_gauge" for s in family.samples}
    assert prom == modes

    stub.set_fault("ok")
    wait_past(flags.get_forced_mode()["until"], "the hold's end")
    assert rt.ops.probe({"via": "test"})["result"] == "success"
    assert attributes_of(sdk.spans, otel.PROBE_SPAN)["memguard.result"] == "success"
    restored = attributes_of(sdk.spans, "memguard.mode_restored")  # no span was current: its own
    assert restored["memguard.reason"] == "probe_success"

    stub.set_fault("500")
    for _ in range(3):
        service.fetch_thread_context("t-2")
    assert flags.get_forced_mode()["reason"] == "consecutive_failures"

    counts = delta(otel_points(sdk.reader), otel_before)
    expected = {
        ("memguard.zep.downgrades", frozenset({("reason", "auth"), ("guard", "default")})): 1,
        ("memguard.zep.downgrades", frozenset({("reason", "consecutive_failures"), ("guard", "default")})): 1,
        ("memguard.zep.context.failures", frozenset({("reason", "auth"), ("guard", "default")})): 1,
        ("memguard.zep.context.failures", frozenset({("reason", "http_5xx"), ("guard", "default")})): 3,
        ("memguard.zep.reads.blocked", frozenset({("reason", "auth"), ("guard", "default")})): 1,
        ("memguard.zep.probes", frozenset({("result", "success"), ("guard", "default")})): 1,
        ("memguard.mode.restored", frozenset({("reason", "probe_success"), ("guard", "default")})): 1,
    }
    counters = {k: v for k, v in counts.items() if k[0] in {name for name, _, _ in otel.INSTRUMENTS.values()}}
    assert counters == expected
    assert delta(prometheus_counts(), prom_before) == expected


def test_instruments_follow_the_semantic_conventions_naming_rules():
    names = [name for name, _, _ in otel.INSTRUMENTS.values()] + [otel.OVERHEAD[0], otel.MODE[0]]
    for name in names:
        assert name.startswith("memguard.") and name == name.lower() and not name.endswith("_total"), name
    units = [unit for _, unit, _ in otel.INSTRUMENTS.values()]
    assert all(u.startswith("{") and u.endswith("}") for u in units), units
    assert otel.OVERHEAD[1] == "s" and otel.MODE[1] == "1"
    assert set(otel.INSTRUMENTS) == set(counted.LABELS) == set(metrics.COUNTERS)


def test_a_fault_putting_the_outcome_on_the_span_reaches_no_caller(sdk, configure, recorded):
    rt = configure()

    def broken(meta, guard):
        raise RuntimeError("annotate broke")

    rt.telemetry.annotate = broken
    with sdk.tracer.start_as_current_span("request"):
        value, meta = service.fetch_thread_context("t-3")
    assert value is not None and meta["source"] == "zep"
    [trouble] = [e for e in recorded if getattr(e, "op", None) == "annotate"]
    assert trouble.kind == "internal" and "annotate broke" in trouble.detail


def test_memguard_otel_off_feeds_opentelemetry_nothing_and_prometheus_as_before(sdk, configure, stub):
    configure()  # a process fed OpenTelemetry, then rebuilt with it off: nothing stays subscribed
    rt = configure(otel="off")
    assert rt.telemetry is None
    otel_before, prom_before = otel_points(sdk.reader), prometheus_counts()
    sdk.spans.clear()
    stub.set_fault("401")
    with sdk.tracer.start_as_current_span("request"):
        assert service.fetch_thread_context("t-4")[1]["reason"] == "auth"
    assert delta(otel_points(sdk.reader), otel_before) == {}
    assert delta(prometheus_counts(), prom_before)
    [span] = sdk.spans.get_finished_spans()
    assert dict(span.attributes) == {} and not span.events
