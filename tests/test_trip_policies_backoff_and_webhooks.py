"""The design's enhancements: latency trip, probe backoff, rate limits, dry run, webhooks."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import REGISTRY

from memguard import flags, process, service
from memguard.config.settings import Settings
from memguard.domain import events
from memguard.drill.localstack import wait_for
from memguard.store.keys import LATENCY_KEY, NOTIFY_CURSOR_KEY
from memguard.store.state import State

from .conftest import API_KEY, probe_ticks, wait_caught_up, wait_past

CLIENTS = ["zep-python", "zep-cloud"]


def of(kind, seen):
    return [e for e in seen if isinstance(e, kind)]


def sample(name: str, **labels: str) -> float:
    """The default guard's series (the one these tests drive)."""
    return REGISTRY.get_sample_value(name, {"guard": "default", **labels}) or 0.0


# -- latency trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_slow_reads_trip_the_latency_trigger(configure, stub, client, redis_db):
    rt = configure(zep_client=client, read_timeout_ms=2000, latency_threshold_ms=300, latency_min_reads=5)
    stub.set_fault("slow", delay_ms=400)
    for _ in range(4):
        assert service.fetch_thread_context("t")[1]["used"] is True
    rt.meter.flush()
    assert flags.get_forced_mode() is None, "4 reads are fewer than MEMORY_LATENCY_MIN_READS"
    service.fetch_thread_context("t")
    rt.meter.flush()
    wait_caught_up(redis_db, LATENCY_KEY)
    service.fetch_thread_context("t")
    rt.meter.flush()
    record = flags.get_forced_mode()
    assert record is not None and record["reason"] == "latency"
    assert service.fetch_thread_context("t")[1]["source"] == "write_only_forced"


def test_latency_trip_is_fleet_wide_and_needs_a_slow_median(configure, stub, redis_db):
    rt = configure(read_timeout_ms=2000, latency_threshold_ms=300, latency_min_reads=5)
    other = State(redis_db, rt.settings, process.hooks)  # another process's batch, through the same script
    other.record_latencies([(0, 3, 1)], {"via": "test"})
    wait_caught_up(redis_db, LATENCY_KEY)
    stub.set_fault("slow", delay_ms=400)
    for _ in range(2):
        service.fetch_thread_context("t")
    rt.meter.flush()  # 5 reads, 3 slow: the median is slow
    assert flags.get_forced_mode()["reason"] == "latency"
    flags.clear_forced_mode()  # a clear also empties the latency window
    stub.set_fault("ok")
    for _ in range(10):
        service.fetch_thread_context("t")
    rt.meter.flush()
    assert flags.get_forced_mode() is None


def test_latency_trip_is_off_by_default(configure, stub):
    rt = configure(read_timeout_ms=2000)
    assert rt.meter is None
    stub.set_fault("slow", delay_ms=400)
    for _ in range(6):
        service.fetch_thread_context("t")
    assert flags.get_forced_mode() is None, "no meter, so nothing is flushed later either"


# -- probe backoff ------------------------------------------------------------------------------


def test_failed_probes_double_the_hold_up_to_the_cap_and_success_resets(configure, stub):
    rt = configure(hold_seconds=1, hold_max_seconds=3)
    flags.force_write_only("manual_ops", ttl_seconds=1)
    stub.set_fault("503")
    holds = []
    for _ in range(3):
        wait_past(flags.get_forced_mode()["until"], "the hold's end")
        assert rt.ops.probe({"via": "test"})["result"] == "failed"
        record = flags.get_forced_mode()
        holds.append((record["holds"], record["hold_seconds"]))
    assert [h for h, _ in holds] == [2, 3, 4]
    assert 1.8 <= holds[0][1] <= 2.0  # 1 s doubled, less up to 10 % jitter
    assert 2.7 <= holds[1][1] <= 3.0  # 4 s capped at 3
    assert 2.7 <= holds[2][1] <= 3.0
    st = json.loads(json.dumps(process.get().ops.status({"via": "test"})))
    assert st["holds"] == 4 and st["hold_seconds"] == holds[2][1] and st["next_probe_at"] == st["until"]
    stub.set_fault("ok")
    wait_past(flags.get_forced_mode()["until"], "the hold's end")
    assert rt.ops.probe({"via": "test"})["result"] == "success"
    stub.set_fault("401")
    service.fetch_thread_context("t")
    record = flags.get_forced_mode()
    assert record["holds"] == 1 and record["hold_seconds"] == 1


# -- rate limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_429_with_retry_after_seconds_forces_for_that_long(configure, stub, client):
    configure(zep_client=client)
    stub.set_fault("429_retry", delay_ms=7000)
    context, meta = service.fetch_thread_context("t")
    assert context is None and meta["reason"] == "rate_limited"
    record = flags.get_forced_mode()
    assert record["reason"] == "rate_limited" and record["hold_seconds"] == 7


def test_429_retry_after_date_is_capped_and_plain_429_triggers_nothing(configure, stub):
    configure(hold_seconds=10, hold_max_seconds=20)
    stub.set_fault("429")
    before = sample("memory_zep_context_failures_total", reason="rate_limited")
    assert service.fetch_thread_context("t")[1]["reason"] == "rate_limited"
    assert flags.get_forced_mode() is None
    assert sample("memory_zep_context_failures_total", reason="rate_limited") == before + 1
    stub.set_fault("429_retry_date", delay_ms=60_000)
    service.fetch_thread_context("t")
    record = flags.get_forced_mode()
    assert record["reason"] == "rate_limited" and record["hold_seconds"] == 20


# -- dry run ------------------------------------------------------------------------------------


def test_dry_run_counts_logs_and_meters_what_it_would_have_forced(configure, stub, recorded, capsys,
                                                                   redis_db):
    from memguard.observe import logs

    configure(disable_auto_downgrade=True, read_timeout_ms=2000, latency_threshold_ms=300,
              latency_min_reads=1)
    process.get().meters.stop()  # the batches are sent below, when the test says: one verdict each
    logs.configure(stream=None)
    before = {r: sample("memory_zep_would_downgrade_total", reason=r)
              for r in ("auth", "consecutive_failures", "latency")}
    stub.set_fault("401")
    service.fetch_thread_context("t")
    stub.set_fault("503")
    for _ in range(3):
        service.fetch_thread_context("t")

    process.get().meter.flush()
    flags.clear_forced_mode()  # empties the latency window: the fast reads above leave it
    stub.set_fault("slow", delay_ms=350)
    service.fetch_thread_context("t")
    process.get().meter.flush()
    wait_caught_up(redis_db, LATENCY_KEY)
    service.fetch_thread_context("t")
    process.get().meter.flush()
    assert flags.get_forced_mode() is None
    assert [w.reason for w in of(events.WouldForce, recorded)] == ["auth", "consecutive_failures", "latency"]
    for reason in before:
        assert sample("memory_zep_would_downgrade_total", reason=reason) == before[reason] + 1
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if "memory_mode_would_force" in ln]
    assert [ln["reason"] for ln in lines] == ["auth", "consecutive_failures", "latency"]
    # Operators can still force.
    assert flags.force_write_only("manual_ops", 60)["reason"] == "manual_ops"


# -- webhooks -----------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on loopback that fails its first POST, and processes its second but
    answers it only after memguard's 2 s timeout: the ambiguous case."""

    def __init__(self) -> None:
        self.accepted: list[tuple[str, dict, str]] = []
        self.attempts = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.attempts += 1
                    attempt = outer.attempts
                if attempt == 1:
                    self.send_response(500)
                    self.end_headers()
                    return
                with outer.lock:
                    outer.accepted.append((self.path, body, self.headers.get("Idempotency-Key", "")))
                if attempt == 2:
                    time.sleep(3)  # processed, but the sender gave up waiting after 2 s

                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def copies(self, path: str) -> dict[str, list[tuple[str, str, str]]]:
        """Each message id received at ``path``: its (kind, reason, Idempotency-Key) per copy."""
        with self.lock:
            out: dict[str, list[tuple[str, str, str]]] = {}
            for p, body, key in self.accepted:
                if p == path:
                    details = body.get("memguard") or body["payload"]["custom_details"]
                    out.setdefault(details["id"], []).append((details["kind"], details["reason"], key))
            return out

    def kinds(self, path: str) -> list[tuple[str, str]]:
        """What a receiver that drops repeated ids has seen, in order."""
        return [(kind, reason) for (kind, reason, _), *_ in self.copies(path).values()]


def test_webhooks_once_per_transition_with_two_workers_and_two_beats(stack):
    receiver = Receiver()
    env = {"MEMORY_DOWNGRADE_HOLD_SECONDS": "2", "MEMORY_NOTIFY_STUCK_SECONDS": "3",
           "MEMORY_WEBHOOK_URLS": f"{receiver.url}/slack,pagerduty={receiver.url}/pd#rk-test"}
    workers = [stack.spawn("worker", name, "-P", "solo", **env) for name in ("w1", "w2")]
    for name in ("b1", "b2"):
        stack.spawn("beat", name, **env)
    stack.use(MEMORY_DOWNGRADE_HOLD_SECONDS=2)
    cursor_set = lambda: stack.server.client().exists(NOTIFY_CURSOR_KEY)  # noqa: E731
    wait_for(cursor_set, 20, "a first probe tick to set the notification cursor")
    stack.stub.set_fault("503")
    flags.force_write_only("manual_ops", ttl_seconds=2)
    wait_for(lambda: {("stuck", "manual_ops"), ("stuck", "probe_failed")} & set(receiver.kinds("/slack")),
             20, "the stuck notice")
    stack.stub.set_fault("ok")
    wait_for(lambda: any(k == "restore" for k, _ in receiver.kinds("/slack")), 20, "the restore notice")
    ticks = sum(probe_ticks(w) for w in workers)
    wait_for(lambda: sum(probe_ticks(w) for w in workers) >= ticks + 3, 20,
             "three more probe ticks: anything sent twice would have been sent by then")
    slack = receiver.kinds("/slack")
    assert slack[0] == ("downgrade", "manual_ops")
    assert slack.count(("downgrade", "probe_failed")) >= 1
    assert sorted(set(slack)) == sorted(slack), f"a transition was announced twice: {slack}"
    assert [k for k, _ in slack].count("stuck") == 1
    assert [k for k, _ in slack].count("restore") == 1
    assert receiver.kinds("/pd") == slack, "both receivers got every message once"
    # The stalled POST was processed and sent again: the same message, id and Idempotency-Key.
    repeated = [c for c in receiver.copies("/slack").values() if len(c) > 1]
    assert len(repeated) == 1 and len(set(repeated[0])) == 1, receiver.copies("/slack")
    assert all(len(set(c)) == 1 and c[0][2] for c in receiver.copies("/pd").values())
    with receiver.lock:
        bodies = json.dumps([b for _, b, _ in receiver.accepted])
        pd = [b for p, b, _ in receiver.accepted if p == "/pd"]
    assert receiver.attempts == len(receiver.accepted) + 1, "the failed POST was retried"
    assert {b["routing_key"] for b in pd} == {"rk-test"}
    assert [b["event_action"] for b in pd][-1] == "resolve"
    assert API_KEY not in bodies and "redis://" not in bodies


def test_webhook_urls_are_checked_and_never_shown():
    from memguard.config.settings import SettingsError

    with pytest.raises(SettingsError) as err:
        Settings.from_env({"MEMORY_WEBHOOK_URLS": "teams=https://hooks.example/T0/secret-path"})
    assert "secret-path" not in str(err.value) and "MEMORY_WEBHOOK_URLS" in str(err.value)


# -- quorum policy ------------------------------------------------------------------------------


def _host(redis_db, settings: Settings, name: str) -> State:
    """Another process, on another host (MEMGUARD_INSTANCE), through the same scripts."""
    from dataclasses import replace

    return State(redis_db, replace(settings, instance=name), process.hooks)


def test_quorum_needs_failures_from_enough_hosts(configure, redis_db):
    rt = configure(quorum_hosts=2)
    a, b = _host(redis_db, rt.settings, "host-a"), _host(redis_db, rt.settings, "host-b")
    results = [a.record_failure({"via": "test"}) for _ in range(5)]
    assert [t.status.value for t in results] == ["counted", "counted", "quorum", "quorum", "quorum"]
    assert flags.get_forced_mode() is None, "one host alone cannot downgrade the fleet"
    t = b.record_failure({"via": "test"})
    assert t.status.value == "forced" and t.fail_count == 6
    # Another host's force reaches this process's view through the channel: within the bound, not at once.
    wait_for(lambda: (flags.get_forced_mode() or {}).get("reason") == "consecutive_failures", 2,
             "host-b's force seen here")


def test_auth_quorum_is_optional(configure, stub, redis_db):
    rt = configure(quorum_hosts=2, quorum_auth=True)
    stub.set_fault("401")
    service.fetch_thread_context("t")  # this host: one of two
    assert flags.get_forced_mode() is None
    other = _host(redis_db, rt.settings, "host-b")
    assert other.force("auth", 300, {"via": "test"}, auto=True, quorum=2).status.value == "forced"
    flags.clear_forced_mode()
    rt = configure(quorum_hosts=2)  # quorum for counted failures only: auth trips at once
    service.fetch_thread_context("t")
    assert flags.get_forced_mode()["reason"] == "auth"


def _fail_as(url: str, instance: str, failures: int) -> None:

    env = {"REDIS_URL": url, "ZEP_API_KEY": "x", "MEMORY_QUORUM_HOSTS": "2", "MEMGUARD_INSTANCE": instance}
    process.configure(Settings.from_env(env), watch=False)
    for _ in range(failures):
        flags.increment_consecutive_failures()


def test_quorum_with_processes_of_different_instances(redis_server, redis_db):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    for instance, failures, forced in (("worker-a", 5, False), ("worker-a", 2, False), ("worker-b", 1, True)):
        p = ctx.Process(target=_fail_as, args=(redis_server.url, instance, failures))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert (redis_db.get(flags.FORCED_MODE_KEY) is not None) is forced, instance
    assert set(redis_db.smembers("mem:read:failing_hosts")) == {"worker-a", "worker-b"}
