"""Metrics from a prefork worker's exporter, and JSON logs without secrets."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from memguard import flags
from memguard.drill.localstack import free_port, wait_for

from .conftest import API_KEY


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def mode(value: str) -> tuple[str, tuple]:
    """The default guard's mode series."""
    return "memory_mode_gauge", (("guard", "default"), ("mode", value), ("name", "default"))


def counter(name: str, **label: str) -> tuple[str, tuple]:
    """One of the default guard's counters."""
    return name, (("guard", "default"), *label.items())


def test_prefork_exporter_shows_fleet_mode_and_summed_counters(stack, tmp_path):
    port = free_port()
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    worker = stack.spawn("worker", "metrics", "-P", "prefork", "-c", "2",
                         MEMGUARD_METRICS_PORT=str(port), PROMETHEUS_MULTIPROC_DIR=str(mp_dir))
    stack.use()
    wait_for(lambda: _up(port), 10, "the worker's exporter")
    before = scrape(port)
    assert before[mode("read_write")] == 1
    assert before[mode("write_only")] == 0

    force = {"reason": "manual_ops", "ttl_seconds": 60}
    for _ in range(2):
        stack.sender.send_task("memguard.force", kwargs=force).get(timeout=20)
        stack.sender.send_task("memguard.clear").get(timeout=20)
    stack.sender.send_task("memguard.force", kwargs=force).get(timeout=20)
    after = scrape(port)
    assert after[mode("write_only")] == 1
    assert after[mode("read_write")] == 0
    # An operator's forces are operator actions, not downgrades: no page for a planned force.
    assert after[("memory_operator_actions_total", (("action", "force"), ("guard", "default"),
                                                    ("result", "accepted")))] == 3
    assert counter("memory_zep_downgrades_total", reason="manual_ops") not in after
    assert after[counter("memory_mode_restored_total", reason="manual_clear")] == 2
    assert after[("memory_mode_hold_seconds_left", (("guard", "default"), ("name", "default")))] > 50
    # A clear made outside the worker shows too: the gauge reads Redis, not process memory.
    flags.clear_forced_mode()
    assert scrape(port)[mode("read_write")] == 1

    # Recovery by the beat-driven probe, run in a pool child, flips the gauge back as well.
    stack.spawn("beat", "metrics-beat")
    short = {"reason": "manual_ops", "ttl_seconds": 1}
    stack.sender.send_task("memguard.force", kwargs=short).get(timeout=20)
    assert scrape(port)[mode("write_only")] == 1
    wait_for(lambda: flags.get_forced_mode() is None, 15, "the probe to restore")
    recovered = scrape(port)
    assert recovered[mode("read_write")] == 1
    assert recovered[mode("write_only")] == 0
    assert recovered[counter("memory_zep_probes_total", result="success")] == 1
    assert recovered[counter("memory_mode_restored_total", reason="probe_success")] == 1
    assert recovered[("memory_operator_actions_total", (("action", "force"), ("guard", "default"),
                                                        ("result", "accepted")))] == 4
    worker_log = worker.output()
    lines = [ln for ln in worker_log.splitlines() if ln.strip()]
    assert lines, "the worker logged nothing"
    for ln in lines:
        record = json.loads(ln)  # every line is one JSON object, Celery's own included
        assert "event" in record and "level" in record
    assert any(json.loads(ln).get("task_name") == "memguard.force" for ln in lines)
    forced = [json.loads(ln) for ln in lines if '"memory_mode_forced"' in ln]
    assert forced and {"prev_mode", "next_mode", "reason", "hold_seconds", "until"} <= forced[0].keys()
    assert API_KEY not in worker_log


SECRET = "pa55-Zq7#/?x"  # the characters that end a URL's userinfo in a careless pattern


@pytest.mark.parametrize("variable,value", [
    ("ZEP_API_KEY", SECRET),
    ("MEMORY_WEBHOOK_URLS", f"https://hooks.example/services/T0/{SECRET}"),
    ("REDIS_URL", f"redis://:{SECRET}@redis.internal:6379/0"),
    ("CELERY_BROKER_URL", f"amqp://app:{SECRET}@rabbit.internal:5672//"),
    ("CELERY_RESULT_BACKEND", f"redis://:{SECRET}@results.internal:6379/1"),
])
def test_redaction_removes_each_configured_secret_wherever_it_appears(variable, value, monkeypatch, capsys):
    """A secret quoted bare (an exception's text, a thread id) is caught by value, not by its shape."""
    from memguard.observe import logs

    monkeypatch.setenv(variable, value)
    logs.configure(stream=None)
    logs.emit(logging.WARNING, "zep_read_failed", error=f"upstream said {SECRET} was wrong", thread_id=SECRET)
    out = capsys.readouterr().out
    assert SECRET not in out and "pa55-Zq7" not in out, out
    assert out.count("[REDACTED]") >= 2, out


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("field,value", [("token", "s3cr3t-Zq"), ("authorization", "Api-Key s3cr3t-Zq")])
def test_redaction_drops_secret_fields(field, value, capsys):
    from memguard.observe import logs

    logs.configure(stream=None)
    logs.emit(logging.WARNING, "probe", **{field: value}, url="redis://:s3cr3t-Zq@host:6379/0",
                     note="header Api-Key s3cr3t-Zq sent")
    out = capsys.readouterr().out
    assert "s3cr3t-Zq" not in out and "[REDACTED]" in out


@pytest.mark.timeout(20)  # a quadratic scrub of a megabyte would take hours: fail, do not wait
@pytest.mark.parametrize("shape", ["word", "schemes", "colons", "bearer", "urls"])
def test_redaction_is_linear_on_a_megabyte(shape):
    """The old pattern took 1.15 s for 16,000 characters and grew with their square; this one
    reads the text once. Generous bound for a loaded machine; the README has the figures."""
    from memguard.observe.logs import _scrub

    text = {"word": "a" * 1_000_000, "schemes": "x://" * 250_000, "colons": "x://a:" * 170_000,
            "bearer": "Bearer " * 150_000, "urls": ("redis://u:" + "p" * 600 + "@h ") * 1600}[shape]
    started = time.perf_counter()
    _scrub(text, ["planted-secret"])
    took = time.perf_counter() - started
    print(f"{shape}: {len(text):,} characters scrubbed in {took * 1000:.1f} ms")
    assert took < 1.0


@pytest.mark.parametrize("password", ["p#ss/x?y", "a@b:c", "pl%ain"])
def test_a_password_with_any_characters_is_never_printed(password, monkeypatch, capsys):
    from urllib.parse import quote

    from memguard.config.settings import Settings, SettingsError, masked_url
    from memguard.observe import logs

    encoded = f"redis://:{quote(password, safe='')}@127.0.0.1:1/0"
    raw = f"redis://:{password}@127.0.0.1:1/0"
    for url in (encoded, raw):
        assert password not in masked_url(url) and quote(password, safe="") not in masked_url(url)
        try:
            Settings.from_env({"REDIS_URL": url, "MEMORY_DOWNGRADE_THRESHOLD": "x"})
        except SettingsError as exc:
            assert password not in str(exc) and quote(password, safe="") not in str(exc)
    monkeypatch.setenv("REDIS_URL", encoded)
    logs.configure(stream=None)
    logs.emit(logging.WARNING, "memguard_redis_error", detail=f"cannot connect to {raw} or {encoded}")
    out = capsys.readouterr().out
    assert password not in out and quote(password, safe="") not in out, out
