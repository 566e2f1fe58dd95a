"""The recovery ramp end to end, against the real redis-server, the Zep stub and, for the curve,
eight separate processes: the fleet admits a growing, agreed share of conversations after a
hold, a failure during the ramp holds again with the back-off growing, and the operator sees
and steers all of it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import replace

import pytest

from memguard import flags, process, service
from memguard.domain import events
from memguard.domain.events import origin
from memguard.domain.ramp import share
from memguard.drill.localstack import stack_env
from memguard.ops import audit, notify
from memguard.ops.actions import OperatorError
from memguard.ops.prober import PROBE_THREAD_ID
from memguard.store.state import State

from .conftest import API_KEY, ROOT, wait_for

BY = {"via": "test"}
EARLIER_RELEASE = "406e277"  # the main before the ramp (0.2.0)
RAMP_S = 10
READER = """
import json, sys, time
from memguard import process, service
name, duration, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
ids = [f"{name}-{i}" for i in range(200)] + [f"common-{i}" for i in range(10)]
assert process.get().watcher.wait_ready(5)
print("ready", flush=True)
reads, start, i = [], time.monotonic(), 0
while time.monotonic() - start < duration:
    thread = ids[i % len(ids)]
    reads.append((time.time(), thread, service.fetch_thread_context(thread)[1]["source"]))
    i += 1
    time.sleep(max(0.0, start + i / rate - time.monotonic()))
print(json.dumps(reads), flush=True)
"""


@pytest.mark.alone  # eight busy processes and the stub answering them: the others' deadlines would suffer
def test_eight_processes_follow_the_curve_agree_and_never_take_an_admission_back(configure, redis_server,
                                                                                 stub):
    rt = configure(ramp_seconds=RAMP_S)
    rt.ops.force(BY, reason="manual_ops", ttl_seconds=600)
    env = stack_env(redis_server.url, stub.url, API_KEY, MEMORY_RECOVERY_RAMP_SECONDS=str(RAMP_S))
    procs = [subprocess.Popen([sys.executable, "-c", READER, f"p{k}", str(RAMP_S + 4), "60"], env=env,
                              stdout=subprocess.PIPE, text=True) for k in range(8)]
    samples: list[tuple[float, int]] = []  # (time, reads the stub has answered, the probe's aside)
    done = threading.Event()

    def count_stub() -> None:
        while not done.wait(0.05):
            answered = stub.stats()["reads_by_thread"]
            samples.append((time.time(), sum(answered.values()) - answered.get(PROBE_THREAD_ID, 0)))

    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        counter = threading.Thread(target=count_stub, daemon=True)
        counter.start()
        assert rt.ops.clear(BY)["ramp_seconds"] == RAMP_S
        start = rt.ops.status(BY)["ramp"]["start"]
        runs = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
    finally:
        done.set()
        for p in procs:
            p.kill()
            p.wait(5)
    reads = [(t, proc, thread, source) for proc, run in enumerate(runs) for t, thread, source in run]
    assert {source for *_, source in reads} <= {"write_only_forced", "ramp_held", "zep"}

    def expected(k: int) -> float:  # the curve's mean over second k of the ramp
        return sum(share(k + i / 100, RAMP_S, 10, 1.0) for i in range(100)) / 100

    def stub_count(at: float) -> int:
        return min(samples, key=lambda s: abs(s[0] - at))[1]

    table = []
    for k in range(1, RAMP_S):
        window = [source for t, _, _, source in reads if start + k <= t < start + k + 1]
        reported = sum(s == "zep" for s in window) / len(window)
        answered = (stub_count(start + k + 1) - stub_count(start + k)) / len(window)
        table.append((k, round(expected(k), 2), round(reported, 2), round(answered, 2)))
    print("second, curve, admitted as reported, as the stub counted:", table)
    for k, curve, reported, answered in table:
        # Within 10 points, on the table's two decimals (0.45 - 0.35 is 0.1 there, not 0.1000...03).
        assert round(abs(reported - curve), 2) <= 0.10 and round(abs(answered - curve), 2) <= 0.10, \
            (k, curve, reported, answered)

    # Admitted at t in one process: admitted at any later time in every process (a 50 ms margin
    # for the processes' clocks, each mapped from the Redis clock when its view heard the ramp).
    first_admitted: dict[str, float] = {}
    for t, _, thread, source in sorted(reads):
        if source == "zep" and t >= start:
            first_admitted.setdefault(thread, t)
    taken_back = [(thread, t, proc) for t, proc, thread, source in reads
                  if source == "ramp_held" and thread in first_admitted and t > first_admitted[thread] + 0.05]
    assert not taken_back, taken_back[:5]
    common = {thread for *_, thread, _ in reads if thread.startswith("common-")}
    assert len({proc for _, proc, thread, _ in reads if thread in common}) == 8


def _burst(stub, fault: str, failures: int) -> float:
    """Read distinct conversations until ``failures`` of them failed at Zep (the ramp holds
    the rest back); the seconds from the first failure to the fleet being forced."""
    stub.set_fault(fault)
    failed, first, i = 0, None, 0
    while failed < failures:
        i += 1
        meta = service.fetch_thread_context(f"burst-{time.monotonic_ns()}-{i}")[1]
        if meta["source"] == "zep_error":
            failed += 1
            first = first or time.monotonic()
        assert meta["source"] in ("zep_error", "ramp_held"), meta
    wait_for(lambda: flags.get_forced_mode() is not None, 1, "the fleet to be forced again")
    stub.set_fault("ok")
    assert first is not None
    return time.monotonic() - first


def test_a_failure_during_the_ramp_forces_again_at_once_and_the_back_off_grows_until_a_ramp_completes(
        configure, stub, redis_db):
    rt = configure(ramp_seconds=30, hold_seconds=1, hold_max_seconds=60)
    stub.set_fault("503")
    for _ in range(3):
        service.fetch_thread_context("t")
    stub.set_fault("ok")
    assert flags.get_forced_mode()["holds"] == 1
    probes = stub.reads_of(PROBE_THREAD_ID)
    for holds in (2, 3):
        wait_for(lambda: rt.ops.probe(BY, probe=None)["result"] == "success", 10, "the probe to succeed")
        assert stub.reads_of(PROBE_THREAD_ID) == probes + 1, "one probe per hold"
        probes += 1
        ramp = rt.ops.status(BY)["ramp"]
        assert ramp["holds"] == holds - 1 and ramp["reason"] == "probe_success"
        took = _burst(stub, "503", 3)
        forced = flags.get_forced_mode()
        assert took < 1.0, f"forced {took:.2f} s after the first failure"
        assert (forced["reason"], forced["trigger"]) == ("ramp_failed", "consecutive_failures")
        assert forced["holds"] == holds
        assert 2 ** (holds - 1) * 0.9 <= forced["hold_seconds"] <= 2 ** (holds - 1), "backed off like a probe"
        assert not redis_db.exists(rt.state.keys.ramp), "the new hold ended the ramp"
    # An auth failure during a ramp is a ramp failure too; a completed ramp resets the back-off.
    wait_for(lambda: rt.ops.probe(BY)["result"] == "success", 15, "the probe to succeed")
    stub.set_fault("401")
    while service.fetch_thread_context(f"a-{time.monotonic_ns()}")[1]["source"] == "ramp_held":
        pass
    assert (flags.get_forced_mode()["trigger"], flags.get_forced_mode()["holds"]) == ("auth", 4)
    stub.set_fault("ok")
    # A ramp that has run its course (a second long, from another process's clear) is no
    # half-open state any more: the next trip starts the back-off again.
    State(rt.state.client, replace(rt.settings, ramp_seconds=1), process.hooks).clear(BY)
    assert rt.ops.status(BY)["ramp"]["holds"] == 4
    time.sleep(1.05)
    stub.set_fault("401")
    service.fetch_thread_context("t")
    assert (flags.get_forced_mode()["reason"], flags.get_forced_mode()["holds"]) == ("auth", 1)
    entries = [e["event"] for e in audit.history(redis_db, rt.state.keys.audit, 50)]
    assert entries.count("restored") == 3 and "manual_clear" in entries


def test_a_ramp_completes_once_fleet_wide_and_webhooks_tell_its_start_from_its_end(configure, stub, redis_db):
    rt = configure(ramp_seconds=3)
    notify.claim(rt.state, "")  # the cursor starts at the end of the trail
    rt.ops.force(BY, reason="manual_ops", ttl_seconds=60)
    cleared = rt.ops.clear(BY)
    assert cleared["cleared"] and cleared["ramp_seconds"] == 3
    started = notify.messages(rt.state, rt.settings)
    assert [m["kind"] for m in started] == ["downgrade", "recovering"]
    assert "a 3 s ramp admits a growing share of conversations" in started[1]["text"], started[1]["text"]
    left = rt.ops.status(BY)["ramp"]["seconds_left"]
    assert rt.ops.probe(BY, scheduled=True)["result"] == "idle"
    assert redis_db.exists(rt.state.keys.ramp), "not before its end"
    time.sleep(left + 0.05)
    ticks = [rt.ops.probe(BY, scheduled=True) for _ in range(3)]
    assert all(t["result"] == "idle" for t in ticks) and not redis_db.exists(rt.state.keys.ramp)
    restore = notify.messages(rt.state, rt.settings)
    assert [m["kind"] for m in restore] == ["restore"] and "ramp completed" in restore[0]["text"]
    assert notify.messages(rt.state, rt.settings) == [], "each exactly once"
    lines = [audit.describe(e) for e in audit.history(redis_db, rt.state.keys.audit, 10)]
    assert any("manual_clear (was manual_ops), recovery ramp of 3s started" in line for line in lines), lines
    assert sum("recovery ramp completed" in line for line in lines) == 1, lines
    _, meta = service.fetch_thread_context("any")
    assert meta["source"] == "zep"


@pytest.mark.parametrize("junk", [
    "not json", json.dumps({"id": "x", "start": 1e12, "seconds": 30, "min_percent": 10, "aggression": 1}),
    json.dumps({"id": "x", "start": 1, "seconds": 0, "min_percent": 10, "aggression": 1}), json.dumps([1, 2]),
])
def test_a_corrupt_ramp_fails_open_is_named_and_repaired(configure, stub, redis_db, junk):
    rt = configure(ramp_seconds=30)
    rt.ops.force(BY, reason="manual_ops", ttl_seconds=60)
    rt.ops.clear(BY)
    assert any(service.fetch_thread_context(f"t{i}")[1]["source"] == "ramp_held" for i in range(50))
    redis_db.set(rt.state.keys.ramp, junk)
    wait_for(lambda: all(service.fetch_thread_context(f"t{i}")[1]["source"] == "zep" for i in range(50)), 2,
             "every read to go to Zep over a ramp record memguard did not write")
    status = rt.ops.status(BY)
    assert "ramp" not in status and rt.state.keys.ramp in status["state_problems"]
    rt.ops.probe(BY, scheduled=True)  # beat's next tick removes it
    assert not redis_db.exists(rt.state.keys.ramp) and "state_problems" not in rt.ops.status(BY)


def test_with_the_ramp_off_a_restore_is_at_once_as_before(configure, stub, redis_db):
    rt = configure(ramp_seconds=0, hold_seconds=1)
    stub.set_fault("401")
    service.fetch_thread_context("t")
    stub.set_fault("ok")
    wait_for(lambda: rt.ops.probe(BY)["result"] == "success", 10, "the probe to succeed")
    assert not redis_db.exists(rt.state.keys.ramp) and "ramp" not in rt.ops.status(BY)
    assert all(service.fetch_thread_context(f"t{i}")[1]["source"] == "zep" for i in range(50))


def test_the_operator_sees_the_ramp_and_can_end_it(configure, stub, redis_server, redis_db):
    configure(ramp_seconds=30)
    env = {"REDIS_URL": redis_server.url, "ZEP_API_KEY": API_KEY, "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "memguard", *args], env=env, capture_output=True,
                              text=True, timeout=60)

    assert cli("force").returncode == 0
    cleared = cli("clear")
    assert cleared.stdout.startswith("cleared: reads return to Zep through a 30 s recovery ramp"), \
        cleared.stdout
    status = cli("status").stdout.splitlines()
    line = next(s for s in status if s.startswith("recovering:"))
    assert " % of reads admitted, " in line, line
    assert " s of 30 left (after manual_clear; the hold was manual_ops" in line, line
    as_json = json.loads(cli("status", "--json").stdout)["ramp"]
    assert 10 <= as_json["share_percent"] < 20 and as_json["seconds"] == 30
    again = cli("clear")  # nothing forced: the ramp runs on
    assert again.stdout.startswith("nothing to clear: the fleet was not forced"), again.stdout
    assert json.loads(cli("status", "--json").stdout)["ramp"]["id"] == as_json["id"]
    assert "ramp_completed" not in cli("history").stdout
    ended = cli("clear", "--no-ramp")
    assert ended.stdout.startswith("ended the recovery ramp: every read goes to Zep again"), ended.stdout
    wait_for(lambda: service.fetch_thread_context("x")[1]["source"] == "zep", 2, "reads at 100 %")
    assert all(service.fetch_thread_context(f"t{i}")[1]["source"] == "zep" for i in range(50))
    cli("force")
    assert cli("clear", "--no-ramp").stdout.startswith("cleared: reads go to Zep again")
    assert not redis_db.exists("mem:mode:ramp")
    assert flags.clear_forced_mode(origin("test"), ramp=False) is False, "nothing to clear"
    with pytest.raises(OperatorError, match="ramp must be true or false"):
        process.get().ops.clear(BY, ramp="no")


def test_a_process_of_an_earlier_release_reads_at_full_rate_during_a_ramp(configure, stub, redis_server,
                                                                         tmp_path):
    """Rolling upgrades: the release before the ramp ignores its record and reads every conversation."""
    rt = configure(ramp_seconds=60)
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "archive", EARLIER_RELEASE, "memguard"], capture_output=True, check=True,
                             cwd=ROOT)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    rt.ops.force(BY, reason="manual_ops", ttl_seconds=60)
    rt.ops.clear(BY)
    held_here = sum(service.fetch_thread_context(f"t{i}")[1]["source"] == "ramp_held" for i in range(100))
    assert held_here > 60
    program = ("import json; from memguard import service; "
               "print(json.dumps([service.fetch_thread_context(f't{i}')[1]['source'] for i in range(100)]))")
    env = {**stack_env(redis_server.url, stub.url, API_KEY), "PYTHONPATH": str(old)}
    run = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert set(json.loads(run.stdout)) == {"zep"}
    counts = defaultdict(int)
    for i in range(100):
        counts[service.fetch_thread_context(f"t{i}")[1]["source"]] += 1
    assert counts["ramp_held"] == held_here, "the earlier release changed nothing for this one"


def test_a_hold_that_lapsed_unprobed_ends_in_a_ramp_too(configure, stub, redis_db):
    rt = configure(ramp_seconds=30, probe_grace_seconds=1)
    rt.ops.force(BY, reason="manual_ops", ttl_seconds=1)
    # No prober: past the hold and its grace, the next read ends the record, and the ramp begins.
    wait_for(lambda: service.fetch_thread_context("t")[1]["source"] != "write_only_forced", 5, "the lapse")
    ramp = rt.ops.status(BY)["ramp"]
    assert (ramp["reason"], ramp["previous_reason"]) == ("lapsed", "manual_ops")
    sources = {service.fetch_thread_context(f"t{i}")[1]["source"] for i in range(100)}
    assert sources == {"zep", "ramp_held"}
    lapsed = [e for e in audit.history(redis_db, rt.state.keys.audit, 10) if e["event"] == "lapsed"]
    assert len(lapsed) == 1 and lapsed[0]["ramp_seconds"] == 30


def test_a_failure_rate_trip_during_a_ramp_is_judged_at_once(configure, stub):
    rt = configure(ramp_seconds=30, failure_rate_threshold=0.1, failure_rate_min_reads=5)
    rt.meters.stop()  # the batch is sent below, when the test says
    rt.ops.force(BY, reason="manual_ops", ttl_seconds=60)
    rt.ops.clear(BY)
    stub.set_fault("503")
    failed = 0
    while failed < 6:
        failed += service.fetch_thread_context(f"c-{time.monotonic_ns()}")[1]["source"] == "zep_error"
    stub.set_fault("ok")
    rt.meter.flush()  # one batch, its window turning hot now: no 2 s catch-up inside a ramp
    forced = flags.get_forced_mode()
    assert forced is not None and (forced["reason"], forced["trigger"]) == ("ramp_failed", "failure_rate")


def test_the_tasks_clear_through_a_ramp_or_at_once_and_status_shows_it(stack):
    stack.spawn("worker", "ramp-tasks", "-P", "solo", MEMORY_RECOVERY_RAMP_SECONDS="30")

    def call(name: str, **kwargs: object) -> dict:
        return stack.sender.send_task(name, kwargs=kwargs).get(timeout=20)

    call("memguard.force", reason="manual_ops", ttl_seconds=60)
    cleared = call("memguard.clear")
    assert cleared["cleared"] and cleared["ramp_seconds"] == 30
    ramp = call("memguard.status")["ramp"]
    assert ramp["reason"] == "manual_clear" and 10 <= ramp["share_percent"] < 20 and ramp["seconds"] == 30
    ended = call("memguard.clear", ramp=False)
    assert ended["ramp_ended"] is True and "ramp" not in call("memguard.status")
    with pytest.raises(OperatorError, match="ramp must be true or false"):
        call("memguard.clear", ramp="yes")


def test_a_foreign_publish_on_the_channel_is_named_and_the_view_lives_on(configure, stub, redis_db,
                                                                         recorded):
    rt = configure(ramp_seconds=30)
    for junk in ('{"v": 5, "ramp": 7, "now": 1}', '{"v": 5, "forced": ""}', '[1, 2]',
                 '{"v": 5, "count": "x"}', '{"v": "x"}', "not json"):
        redis_db.publish("mem:mode:changes", junk)
    wait_for(lambda: sum(e.op == "notice" for e in recorded if isinstance(e, events.GuardTrouble)) >= 6, 2,
             "each to be named")
    rt.ops.force(BY, reason="manual_ops", ttl_seconds=60)
    other = State(redis_db, replace(rt.settings, ramp_seconds=0), process.hooks)
    other.clear(BY)  # another process's clear, seen through the view that heard the junk
    wait_for(lambda: service.fetch_thread_context("t")[1]["source"] == "zep", 2, "the clear to be seen")
    assert rt.view.current is not None, "the view is live"
