"""The request-path guard against a real Redis and the real Zep clients talking to the stub."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client import REGISTRY

from memguard import flags, process, service
from memguard.domain import events
from memguard.domain.modes import EffectiveMode
from memguard.drill.localstack import wait_for
from memguard.ops.prober import PROBE_THREAD_ID, probe_once
from memguard.store.keys import CONSECUTIVE_FAILURES_KEY, FORCED_MODE_KEY, PROBE_LOCK_KEY

from .conftest import wait_past

CLIENTS = ["zep-python", "zep-cloud"]


def sample(name: str, **labels: str) -> float:
    """The default guard's series (the one these tests drive)."""
    return REGISTRY.get_sample_value(name, {"guard": "default", **labels}) or 0.0


def of(kind, seen):
    return [e for e in seen if isinstance(e, kind)]


@pytest.mark.parametrize("client", CLIENTS)
def test_auth_failure_downgrades_at_once(configure, stub, recorded, client):
    configure(zep_client=client)
    before = sample("memory_zep_downgrades_total", reason="auth")
    stub.set_fault("401")
    context, meta = service.fetch_thread_context("t-1")
    assert context is None
    assert meta["used"] is False and meta["reason"] == "auth" and meta["status"] == 401
    record = flags.get_forced_mode()
    assert record is not None and record["reason"] == "auth" and record["mode"] == "write_only"
    assert flags.effective_mode() is EffectiveMode.WRITE_ONLY
    assert sample("memory_zep_downgrades_total", reason="auth") == before + 1
    forced = of(events.ModeForced, recorded)
    assert [(e.prev_mode, e.next_mode, e.reason) for e in forced] == [("read_write", "write_only", "auth")]

    stub.set_fault("ok")
    reads = stub.stats()["reads"]
    context, meta = service.fetch_thread_context("t-1")
    assert context is None
    assert meta == {"used": False, "source": "write_only_forced", "reason": "auth",
                    "until": record["until"]}
    assert stub.stats()["reads"] == reads


@pytest.mark.parametrize("client", CLIENTS)
def test_three_timeouts_downgrade(configure, stub, recorded, client):
    configure(zep_client=client, read_timeout_ms=100)
    stub.set_fault("slow", delay_ms=1000)
    metas = [service.fetch_thread_context("t-2")[1] for _ in range(3)]
    assert [m["reason"] for m in metas] == ["timeout"] * 3
    record = flags.get_forced_mode()
    assert record is not None and record["reason"] == "consecutive_failures"
    forced = of(events.ModeForced, recorded)
    assert len(forced) == 1 and forced[0].fail_count == 3
    assert [e.fail_count for e in of(events.FailureRecorded, recorded)] == [1, 2, 3]


@pytest.mark.parametrize("fault,reason,triggers", [
    ("403", "auth", "force"),
    ("408", "timeout", "count"),
    ("500", "http_5xx", "count"),
    ("500_text", "http_5xx", "count"),
    ("503", "http_5xx", "count"),
    ("503_text", "http_5xx", "count"),
    ("reset", "connection", "count"),
    ("429", "rate_limited", "ignore"),
    ("404", "http_4xx", "ignore"),
    ("bad_json", "bad_payload", "ignore"),
])
@pytest.mark.parametrize("client", CLIENTS)
def test_fault_classification(configure, stub, recorded, client, fault, reason, triggers):
    configure(zep_client=client)
    stub.set_fault(fault)
    before = sample("memory_zep_context_failures_total", reason=reason)
    context, meta = service.fetch_thread_context("t-3")
    assert context is None and meta["reason"] == reason
    assert of(events.FailureRecorded, recorded)[0].action == triggers
    assert sample("memory_zep_context_failures_total", reason=reason) == before + 1
    assert stub.stats()["reads"] == 1, "client retries must be off"


def test_success_resets_the_count(configure, stub, redis_db):
    configure(read_timeout_ms=100)
    stub.set_fault("503")
    for _ in range(2):
        service.fetch_thread_context("t-4")
    assert int(redis_db.get(CONSECUTIVE_FAILURES_KEY)) == 2
    stub.set_fault("ok")
    assert service.fetch_thread_context("t-4")[0] == "context for t-4"
    assert redis_db.get(CONSECUTIVE_FAILURES_KEY) is None
    stub.set_fault("503")
    for _ in range(2):
        service.fetch_thread_context("t-4")
    assert flags.get_forced_mode() is None


def test_count_window_is_on_the_redis_clock(configure, redis_db):
    configure(window_seconds=1)
    assert flags.increment_consecutive_failures() == 1
    ttl = redis_db.pttl(CONSECUTIVE_FAILURES_KEY)
    assert 0 < ttl <= 1000
    wait_for(lambda: not redis_db.exists(CONSECUTIVE_FAILURES_KEY), 3, "the window to expire in Redis")
    assert flags.increment_consecutive_failures() == 1


def test_probe_success_restores(configure, stub, recorded):
    rt = configure(hold_seconds=1)
    stub.set_fault("401")
    service.fetch_thread_context("t-5")
    assert rt.ops.probe({"via": "test"})["result"] == "held"
    stub.set_fault("ok")
    wait_past(flags.get_forced_mode()["until"], "the hold's end")
    # Past the hold, reads stay blocked until the probe succeeds.
    assert service.fetch_thread_context("t-5")[1]["source"] == "write_only_forced"
    result = rt.ops.probe({"via": "test"})
    assert result["result"] == "success"
    assert stub.reads_of(PROBE_THREAD_ID) == 1
    assert flags.get_forced_mode() is None
    assert service.fetch_thread_context("t-5")[0] == "context for t-5"
    restored = of(events.ModeRestored, recorded)
    assert [(e.mode, e.reason) for e in restored] == [("read_write", "probe_success")]
    assert rt.ops.probe({"via": "test"})["result"] == "idle"


def test_probe_failure_holds_again(configure, stub, recorded):
    rt = configure(hold_seconds=1)
    flags.force_write_only("manual_ops", ttl_seconds=1)
    stub.set_fault("hang")
    wait_past(flags.get_forced_mode()["until"], "the hold's end")
    started = time.monotonic()
    result = rt.ops.probe({"via": "test"})
    assert time.monotonic() - started < 1.0, "the probe must respect its 150 ms budget"
    assert result["result"] == "failed"
    record = flags.get_forced_mode()
    assert record["reason"] == "probe_failed" and record["holds"] == 2
    assert [e.reason for e in of(events.ModeForced, recorded)] == ["manual_ops", "probe_failed"]


def test_forced_reads_never_reach_zep(configure, stub):
    configure()
    flags.force_write_only("manual_ops", ttl_seconds=60)
    for i in range(200):
        context, meta = service.fetch_thread_context(f"t-{i}")
        assert context is None and meta["source"] == "write_only_forced"
    assert stub.stats()["reads"] == 0


def test_automatic_trigger_never_shortens_an_ops_hold(configure, stub):
    rt = configure()
    ops_record = flags.force_write_only("manual_ops", ttl_seconds=3600)
    # Reads are blocked, so drive the triggers the way late in-flight reads would: enough
    # failures to force on their own, and a 401's force.
    for _ in range(3):
        flags.increment_consecutive_failures()
    t = rt.state.force("auth", rt.settings.hold_seconds, {"via": "auto"}, auto=True)
    assert t.status.value == "held"
    rt_record = flags.get_forced_mode()
    assert rt_record["until"] == ops_record["until"] and rt_record["reason"] == "manual_ops"


def test_ops_force_overwrites(configure):
    configure()
    first = flags.force_write_only("manual_ops", ttl_seconds=3600)
    kept = flags.force_write_only("zep_maintenance", ttl_seconds=60)  # shorter: the hour stays
    assert kept["reason"] == "manual_ops" and kept["until"] == first["until"]
    longer = flags.force_write_only("zep_maintenance", ttl_seconds=7200)  # longer: replaces
    assert longer["reason"] == "zep_maintenance" and longer["until"] > first["until"]
    second = flags.force_write_only("zep_maintenance", ttl_seconds=60, replace=True)
    assert second["reason"] == "zep_maintenance" and second["until"] < first["until"]
    assert flags.clear_forced_mode() is True
    assert flags.get_forced_mode() is None


def test_base_mode_off_is_never_raised(configure):
    configure(flag_zep_write=False)
    flags.force_write_only("manual_ops", ttl_seconds=60)
    assert flags.base_mode() is EffectiveMode.OFF
    assert flags.effective_mode() is EffectiveMode.OFF


def test_read_flag_off_skips_zep(configure, stub):
    configure(flag_zep_read=False)
    assert flags.effective_mode() is EffectiveMode.WRITE_ONLY
    assert service.fetch_thread_context("t")[1]["source"] == "read_disabled"
    assert stub.stats()["reads"] == 0


def test_unprobed_hold_lapses_after_grace(configure, stub, recorded):
    configure(probe_grace_seconds=1)
    until = flags.force_write_only("manual_ops", ttl_seconds=1)["until"]
    assert service.fetch_thread_context("t")[1]["source"] == "write_only_forced"
    wait_for(lambda: service.fetch_thread_context("t")[0] == "context for t", 5, "the hold to lapse")
    assert time.time() >= until + 1, "lapsed only after the hold and its grace"
    assert [e.reason for e in of(events.ModeRestored, recorded)] == ["lapsed"]


def test_disable_auto_downgrade_counts_but_never_forces(configure, stub, recorded):
    configure(disable_auto_downgrade=True)
    stub.set_fault("401")
    service.fetch_thread_context("t")
    stub.set_fault("503")
    for _ in range(4):
        service.fetch_thread_context("t")
    assert flags.get_forced_mode() is None
    assert [e.fail_count for e in of(events.FailureRecorded, recorded) if e.action == "count"] == [1, 2, 3, 4]
    assert [e.reason for e in of(events.WouldForce, recorded)] == ["auth", "consecutive_failures",
                                                                   "consecutive_failures"]


def test_corrupt_record_is_survived(configure, stub, redis_db, recorded):
    configure()
    redis_db.set(FORCED_MODE_KEY, "{not json")
    deadline = time.monotonic() + 3
    while not of(events.GuardTrouble, recorded) and time.monotonic() < deadline:
        context, meta = service.fetch_thread_context("t")
        assert context == "context for t" and meta["used"] is True
        time.sleep(0.05)
    assert flags.get_forced_mode() is None
    assert any(e.kind == "corrupt_state" for e in of(events.GuardTrouble, recorded))
    # An operator force replaces the corrupt value.
    flags.force_write_only("manual_ops", ttl_seconds=60)
    assert json.loads(redis_db.get(FORCED_MODE_KEY))["reason"] == "manual_ops"


def test_wrong_type_in_counter_is_repaired(configure, stub, redis_db, recorded):
    configure()
    redis_db.hset(CONSECUTIVE_FAILURES_KEY, "x", "1")
    stub.set_fault("503")
    context, meta = service.fetch_thread_context("t")
    assert context is None and meta["reason"] == "http_5xx"
    assert redis_db.get(CONSECUTIVE_FAILURES_KEY) == "1"
    assert any(e.kind == "corrupt_state" and e.op == "record_failure" and "held a hash" in e.detail
               for e in of(events.GuardTrouble, recorded))


def test_force_from_elsewhere_is_seen_and_a_broken_channel_fails_safe(configure, stub, redis_db):
    configure()
    assert service.fetch_thread_context("t")[1]["used"] is True
    # Another process forces (here: its script run from a separate client).
    from memguard.config.settings import Settings
    from memguard.store.state import State

    other = State(redis_db, Settings(ramp_seconds=0), process.hooks)
    other.force("manual_ops", 60, {"via": "test"}, auto=False)
    deadline = time.monotonic() + 5
    while service.fetch_thread_context("t")[1]["used"] and time.monotonic() < deadline:
        time.sleep(0.001)
    assert service.fetch_thread_context("t")[1]["source"] == "write_only_forced"
    other.clear({"via": "test"})
    wait_for(lambda: service.fetch_thread_context("t")[1]["used"], 5, "the clear from elsewhere")
    # Kill the subscription and change the state behind its back (no publish).
    redis_db.client_kill_filter(_type="pubsub")
    redis_db.set(FORCED_MODE_KEY, json.dumps({"mode": "write_only", "reason": "manual_ops",
                                              "until": time.time() + 60, "forced_at": time.time()}))
    wait_for(lambda: service.fetch_thread_context("t")[1]["source"] == "write_only_forced", 5,
             "the write behind the broken channel's back")


def test_a_probe_that_outlived_its_lock_changes_nothing(configure, stub, redis_db, recorded):
    rt = configure()
    until = flags.force_write_only("manual_ops", ttl_seconds=1)["until"]
    wait_past(until, "the hold's end")

    def slow_probe(timeout_s: float) -> None:
        # Meanwhile the lock expired and another prober took it.
        redis_db.set(PROBE_LOCK_KEY, "another-probers-token", px=2000)

    result = probe_once(rt.state, rt.settings, slow_probe, {"via": "test"})
    assert result["result"] == "lost", result
    assert flags.get_forced_mode()["until"] == until, "the record is the other prober's to change"
    assert redis_db.get(PROBE_LOCK_KEY) == "another-probers-token", "another prober's lock is kept"
    assert not [e for e in recorded if isinstance(e, events.ModeRestored)]


def test_a_probe_that_raced_an_operator_force_changes_nothing(configure, stub, redis_db):
    rt = configure()
    flags.force_write_only("manual_ops", ttl_seconds=1)
    wait_past(flags.get_forced_mode()["until"], "the hold's end")
    result = probe_once(rt.state, rt.settings,
                        lambda timeout_s: flags.force_write_only("zep_maintenance", ttl_seconds=600),
                        {"via": "test"})
    assert result["result"] == "superseded", result
    assert flags.get_forced_mode()["reason"] == "zep_maintenance"
    assert not redis_db.exists(PROBE_LOCK_KEY), "the probe released its own lock"


@pytest.mark.parametrize("json_logs", [False, True])
def test_a_megabyte_thread_id_against_a_failing_zep_returns_within_a_second(configure, stub, recorded,
                                                                            json_logs, capsys):
    import logging
    import sys

    import memguard
    from memguard.observe import logs

    configure()
    if json_logs:
        logs.configure(stream=sys.stdout)
    else:
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True)
    huge = "t" * 1_000_000

    @memguard.guarded
    def own_read(thread_id: str) -> str:
        raise TimeoutError(f"no answer for thread {thread_id}")  # the id in the error, as clients do

    stub.set_fault("503")
    for read in (service.fetch_thread_context, own_read):
        started = time.monotonic()
        context, meta = read(huge)
        took = time.monotonic() - started
        assert context is None and meta["used"] is False and took < 1.0, (read, took)
    failures = of(events.FailureRecorded, recorded)
    assert len(failures) == 2 and all(len(f.thread_id) < 250 and len(f.error) < 350 for f in failures)
    out = capsys.readouterr().out
    assert "zep_read_failed" in out and max(len(ln) for ln in out.splitlines()) < 2_000
