"""Redis Cluster: memguard's keys share one hash slot, and the atomic counter and the
propagation tests pass on a three-master cluster made by ``redis-cli --cluster create``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from redis.cluster import key_slot

from memguard import flags, process, service
from memguard.config.settings import Settings
from memguard.domain import events
from memguard.domain.declared import registry
from memguard.drill.localstack import CeleryProcess, ClusterGroup, free_port, stack_env, wait_for
from memguard.ops.prober import PROBE_THREAD_ID
from memguard.store.keys import FORCED_MODE_KEY, Keys

from .conftest import API_KEY, ROOT, make_settings, probe_ticks
from .test_many_processes_and_redis_outage import FAILURES_EACH, PROCS, fail_together
from .test_propagation_to_every_view import BOUND_MS, original_record, reader_process

CLUSTER_KEYS = Keys.under("{mem}:")


@pytest.fixture(scope="module")
def cluster():
    with ClusterGroup() as c:
        yield c


@pytest.fixture
def fresh(cluster):
    cluster.flushall()
    yield cluster
    cluster.flushall()


def owner_port(cluster: ClusterGroup) -> int:
    client = Settings(redis_url=cluster.url).redis_target.client(decode_responses=True)
    try:
        return client.get_node_from_key(CLUSTER_KEYS.forced).port
    finally:
        client.close()


def cli(cluster: ClusterGroup, *args: str) -> None:
    """redis-cli in cluster mode (-c follows MOVED), like an operator's hand write."""
    subprocess.run(["redis-cli", "-c", "-p", str(cluster.nodes[0].port), *args], check=True,
                   capture_output=True, timeout=10)


def test_every_key_shares_one_slot_on_a_cluster_and_keeps_its_name_on_one_server():
    cluster_keys = vars(CLUSTER_KEYS).values()
    assert len({key_slot(k.encode()) for k in cluster_keys}) == 1
    assert all(k.startswith("{mem}:") for k in cluster_keys)
    assert Keys().forced == FORCED_MODE_KEY == "mem:mode:forced:v1"
    assert Settings(redis_url="redis+cluster://127.0.0.1:7000").redis_target.key_prefix == "{mem}:"


def test_cluster_eight_processes_fifty_failures_each_one_downgrade(fresh):
    downgrades = fail_together(fresh.url)
    owner = next(n for n in fresh.nodes if n.port == owner_port(fresh)).client()
    assert int(owner.get(CLUSTER_KEYS.counter)) == PROCS * FAILURES_EACH
    assert sum(downgrades) == 1
    assert owner.get(CLUSTER_KEYS.forced) is not None


def test_cluster_any_writer_is_seen_by_another_process_within_100ms(fresh):
    rt = process.configure(Settings(redis_url=fresh.url, zep_api_key="x"))
    try:
        assert rt.watcher.wait_ready(5)
        owner = str(owner_port(fresh))
        writes = {
            "force": (True, lambda: flags.force_write_only("manual_ops", 60)),
            "clear": (False, lambda: flags.clear_forced_mode()),
            "SET": (True, lambda: cli(fresh, "SET", CLUSTER_KEYS.forced, original_record(), "EX", "60")),
            "DEL": (False, lambda: cli(fresh, "DEL", CLUSTER_KEYS.forced)),
            "force again": (True, lambda: flags.force_write_only("manual_ops", 60)),
            "FLUSHALL": (False, lambda: subprocess.run(["redis-cli", "-p", owner, "FLUSHALL"], check=True,
                                                       capture_output=True)),
        }
        results: dict[str, list[float]] = {name: [] for name in writes}
        with reader_process(fresh.url) as seen:
            for _ in range(5):
                for name, (want, write) in writes.items():
                    results[name].append(seen(want, lambda write=write: write() and None))
    finally:
        rt.close()
    worst = {k: round(max(v), 1) for k, v in results.items()}
    print(f"cluster propagation max ms over 5 trials: {worst}")
    assert all(w <= BOUND_MS for w in worst.values()), worst


def test_cluster_with_celery_on_a_plain_redis_probes_once_and_the_cli_reads_it(fresh, stub, redis_server,
                                                                              redis_db, tmp_path):
    """The supported combination: memguard's state on the cluster, broker and RedBeat on a plain Redis."""
    env = stack_env(fresh.url, stub.url, API_KEY, PYTHONPATH=str(ROOT), CELERY_BROKER_URL=redis_server.url,
                    MEMORY_DOWNGRADE_PROBE_INTERVAL_SECONDS="0.5")
    procs = [CeleryProcess("worker", env, str(tmp_path), "w", "-P", "solo", cwd=str(ROOT)),
             CeleryProcess("beat", env, str(tmp_path), "b", cwd=str(ROOT))]
    try:
        for p in procs:
            p.start()
        forced = subprocess.run([sys.executable, "-m", "memguard", "force", "--ttl", "1"], env=env,
                                capture_output=True, text=True, timeout=30)
        assert forced.returncode == 0, forced.stderr
        wait_for(lambda: stub.reads_of(PROBE_THREAD_ID) == 1, 15, "the probe on the cluster")
        status = subprocess.run([sys.executable, "-m", "memguard", "status"], env=env,
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith("mode:        read_write"), status.stdout
        ticks = probe_ticks(procs[0])
        wait_for(lambda: probe_ticks(procs[0]) >= ticks + 2, 15, "two more probe ticks")
        assert stub.reads_of(PROBE_THREAD_ID) == 1, "one probe read for the hold"
        assert redis_db.keys("memguard:redbeat:*"), "RedBeat keeps its schedule on the plain Redis"
        assert all(p.alive() for p in procs)
    finally:
        for p in procs:
            p.stop()


def test_a_cluster_that_is_down_fails_open_and_the_cli_says_so_in_one_line(stub, recorded):
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    rt = process.configure(make_settings(url, stub))
    try:
        context, meta = service.fetch_thread_context("t")
        assert (context, meta["source"]) == ("context for t", "zep")
        assert any(isinstance(e, events.GuardTrouble) and e.kind == "redis_error" for e in recorded)
    finally:
        rt.close()
    out = subprocess.run([sys.executable, "-m", "memguard", "status"], capture_output=True, text=True,
                         env={**stack_env(url, stub.url, API_KEY)}, timeout=30)
    assert out.returncode == 3 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "the Redis Cluster at redis+cluster://" in out.stderr
    assert "check its nodes in REDIS_URL" in out.stderr


def test_a_named_guard_on_a_cluster_keeps_its_keys_in_one_slot_and_its_force_reaches_a_reader(fresh):
    registry.declare("zep-t.*", hold_seconds=60)
    settings = Settings(redis_url=fresh.url, zep_api_key="x", ramp_seconds=0)
    rt = process.configure(settings)
    operator = process.build(settings, watch=False, hooks=events.Hooks(), count_metrics=False)
    try:
        assert rt.watcher.wait_ready(5)
        guard = rt.units.guard("zep-t.acme")
        assert guard is not None and guard.call("t", lambda: "ctx")[1]["source"] == "zep"
        wait_for(lambda: guard.view.current is not None, 5, "the tenant's view followed")  # type: ignore[union-attr]
        operator.ops_for("zep-t.acme").force({"via": "test"}, reason="manual_ops", ttl_seconds=60)
        wait_for(lambda: guard.call("t", lambda: "ctx")[1]["source"] == "write_only_forced", 2,
                 "the force seen by the reader")
        client = settings.redis_target.client(decode_responses=True)
        try:
            keys = [k for k in client.scan_iter("*zep-t.acme*") if k != "{mem}:guards:holds"]
            assert keys and {key_slot(k.encode()) for k in keys} == {key_slot(b"{mem:g:zep-t.acme}")}
            assert client.zscore("{mem}:guards:holds", "zep-t.acme") is not None
        finally:
            client.close()
    finally:
        operator.close()
        rt.close()
        registry.__init__()  # type: ignore[misc]
