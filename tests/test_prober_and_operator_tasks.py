"""The prober and operator tasks with real Celery worker and beat processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from memguard import flags, service
from memguard.drill.localstack import wait_for
from memguard.drill.zepstub import ZepStub
from memguard.ops.prober import PROBE_THREAD_ID
from memguard.store.keys import PROBE_LOCK_KEY

from .conftest import ROOT


def probes(stub: ZepStub) -> int:
    return stub.reads_of(PROBE_THREAD_ID)


PLANTED_KEY = "planted-zep-key-7Qx2Lm"
# Celery's SIGTERM handler writes this straight to stdout, outside logging: not a log line.
CELERY_CONSOLE_NOTICE = re.compile(r"worker: (Warm|Cold) shutdown \(MainProcess\)")


def test_drill_passes_end_to_end_with_json_logs_and_no_secret(tmp_path):
    out = subprocess.run([sys.executable, "-m", "memguard", "drill", "--zep-key", PLANTED_KEY,
                          "--logdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("auth", "failure", "recovery"):
        assert f"PASS  {name} drill" in out.stdout
    assert "probe reads=1" in out.stdout
    assert "fleet mode -> read_write" in out.stdout

    # The terminal shows the timeline and verdicts only; the JSON lines are in files it names.
    assert out.stderr == "", out.stderr[-2000:]
    assert all(not ln.startswith("{") for ln in out.stdout.splitlines()), out.stdout
    assert out.stdout.splitlines()[-1] == (f"logs (JSON lines) in {tmp_path}: drill-beat.log, "
                                           "drill-worker.log, drill.log")
    # Every log line of the drill (its own, the worker's and the beat's) is one JSON object.
    logs = {p.name: p.read_text() for p in tmp_path.glob("*.log")}
    assert {"drill.log", "drill-worker.log", "drill-beat.log"} <= logs.keys()
    records = []
    for source, text in logs.items():
        assert PLANTED_KEY not in text, f"the Zep API key leaked into {source}"
        for line in filter(str.strip, text.splitlines()):
            if CELERY_CONSOLE_NOTICE.fullmatch(line):
                continue
            record = json.loads(line)
            assert {"event", "level", "timestamp"} <= record.keys(), (source, record)
            records.append(record)
    assert PLANTED_KEY not in out.stdout
    by_event: dict[str, list[dict]] = {}
    for r in records:
        by_event.setdefault(r["event"], []).append(r)
    documented = {
        "memory_mode_forced": {"prev_mode", "next_mode", "reason", "hold_seconds", "until"},
        "memory_mode_restored": {"mode", "reason"},
        "zep_auth_failure_auto_downgrade": set(),
        "zep_consecutive_failures_auto_downgrade": {"fail_count"},
    }
    for event, fields in documented.items():
        assert by_event.get(event), f"no {event} line in the drill's logs"
        assert all(fields <= r.keys() for r in by_event[event]), event
    assert {r["reason"] for r in by_event["memory_mode_forced"]} == {"auth", "consecutive_failures"}
    assert "probe_success" in {r["reason"] for r in by_event["memory_mode_restored"]}
    assert any(r.get("task_name") == "memguard.probe" for r in by_event["memory_mode_restored"])


def test_two_beats_two_workers_one_probe_per_expiry(stack):
    hold = 2
    stack.spawn("worker", "w1", "-P", "solo", MEMORY_DOWNGRADE_HOLD_SECONDS=str(hold))
    stack.spawn("worker", "w2", "-P", "prefork", "-c", "2", MEMORY_DOWNGRADE_HOLD_SECONDS=str(hold))
    stack.spawn("beat", "b1", MEMORY_DOWNGRADE_HOLD_SECONDS=str(hold))
    stack.spawn("beat", "b2", MEMORY_DOWNGRADE_HOLD_SECONDS=str(hold))
    stack.use(MEMORY_DOWNGRADE_HOLD_SECONDS=hold)
    stack.stub.set_fault("503")
    flags.force_write_only("manual_ops", ttl_seconds=hold)
    # Extra probe tasks racing the beat's own, as a second scheduler would send them.
    deadline = time.monotonic() + 3 * hold + 1.5
    while time.monotonic() < deadline:
        for _ in range(3):
            stack.sender.send_task("memguard.probe")
        time.sleep(0.25)
    record = flags.get_forced_mode()
    assert record["reason"] == "probe_failed"
    failed_probes = probes(stack.stub)
    assert failed_probes == record["holds"] - 1 >= 2
    stack.stub.set_fault("ok")
    wait_for(lambda: flags.get_forced_mode() is None, 3 * hold + 5, "the probe to restore")
    assert probes(stack.stub) == failed_probes + 1
    assert service.fetch_thread_context("t")[1]["used"] is True


def test_worker_killed_mid_probe_releases_by_expiry(stack):
    # A 400 ms probe budget gives a 4 s probe lock and a window to kill the worker in.
    extra = {"MEMORY_DOWNGRADE_PROBE_TIMEOUT_MS": "400", "MEMORY_DOWNGRADE_HOLD_SECONDS": "1"}
    worker = stack.spawn("worker", "victim", "-P", "solo", **extra)
    stack.spawn("beat", "b1", **extra)
    stack.use(MEMORY_DOWNGRADE_HOLD_SECONDS=1)
    stack.stub.set_fault("hang")
    flags.force_write_only("manual_ops", ttl_seconds=1)
    wait_for(lambda: probes(stack.stub) >= 1, 10, "a probe to reach the stub", interval=0.005)
    worker.kill()
    client = stack.server.client()
    assert client.exists(PROBE_LOCK_KEY) == 1
    stack.stub.set_fault("ok")
    stack.spawn("worker", "rescuer", "-P", "solo", **extra)
    wait_for(lambda: flags.get_forced_mode() is None, 15, "a later tick to probe and restore")
    assert client.exists(PROBE_LOCK_KEY) == 0
    assert probes(stack.stub) == 2


def _call(stack, kwargs: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "celery", "-A", "memguard", "call", "memguard.force",
                           "--kwargs", kwargs], cwd=ROOT, env=stack.env(), capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("kwargs,message", [
    ('{"bogus": 1}', "unknown argument(s) bogus"),
    ('{"reason": "manual_ops", "ttl_seconds": -5}', "ttl_seconds must be between"),
    ('{"reason": "manual_ops", "ttl_seconds": 1000000000}', "ttl_seconds must be between"),
    ('{"reason": "", "ttl_seconds": 60}', "reason must be a non-empty string"),
    ('{"reason": "manual_ops", "ttl_seconds": "600"}', "ttl_seconds must be a whole number"),
])
def test_celery_call_force_refuses_bad_input(stack, kwargs, message):
    stack.spawn("worker", "ops", "-P", "solo")
    stack.use()
    out = _call(stack, kwargs)
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip().splitlines()[-1]
    result = stack.sender.AsyncResult(task_id)
    with pytest.raises(Exception) as err:
        result.get(timeout=20)
    assert message in str(err.value)
    assert flags.get_forced_mode() is None


def test_celery_call_force_good_and_non_json(stack):
    stack.spawn("worker", "ops", "-P", "solo")
    stack.use()
    bad = _call(stack, "{reason: manual_ops")
    assert bad.returncode == 2 and "Invalid value" in bad.stderr
    assert flags.get_forced_mode() is None
    out = _call(stack, json.dumps({"reason": "manual_ops", "ttl_seconds": 600}))
    task_id = out.stdout.strip().splitlines()[-1]
    result = stack.sender.AsyncResult(task_id).get(timeout=20)
    assert result["forced"] is True and result["reason"] == "manual_ops"
    record = flags.get_forced_mode()
    assert record["reason"] == "manual_ops"
    assert record["until"] - record["forced_at"] == pytest.approx(600, abs=0.01)
    assert record["by"]["via"] == "task" and record["by"]["task_id"] == task_id
    status = stack.sender.send_task("memguard.status").get(timeout=20)
    assert status["mode"] == "write_only" and status["seconds_left"] > 590
    assert stack.sender.send_task("memguard.clear").get(timeout=20)["cleared"] is True
    wait_for(lambda: flags.get_forced_mode() is None, 2, "the worker's clear seen by this process's view")
