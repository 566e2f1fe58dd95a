"""Named guards through the public surface, against real Redis and the Zep stub: 200 tenants under
one parent (a 401 trips one tenant, an outage trips the parent once and runs one probe), the
bound on a process's views under request-supplied names, the fleet's index of hold ends, the
operator's tools per guard, and a process of the previous main beside this one."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memguard
from memguard import flags, process
from memguard.domain import events
from memguard.domain.declared import registry
from memguard.domain.guards import GuardError
from memguard.drill.localstack import stack_env, wait_for
from memguard.request.zep import Readers
from memguard.store.index import due_guards, indexed_guards

from .conftest import API_KEY, ROOT, make_settings, run_cli

BY = {"via": "test"}
PREVIOUS_MAIN = "d173fb4"  # main before named guards
HOLDS = "mem:guards:holds"


@pytest.fixture
def declared():
    """The process's declarations, emptied after the test (they outlive a configure())."""
    yield registry
    registry.__init__()  # type: ignore[misc]


def _tenant_read(redis_url: str, stub: Any, bad_tenant: str):
    good = Readers(make_settings(redis_url, stub)).reader
    bad = Readers(make_settings(redis_url, stub, zep_api_key="not-the-key")).reader

    @memguard.guarded(guard=lambda thread_id, *, tenant: f"zep-t.{tenant}")
    def read(thread_id: str, *, tenant: str) -> str | None:
        return (bad if tenant == bad_tenant else good).read_context(thread_id, 0.2)

    return read


def test_200_tenants_under_one_parent_a_401_trips_one_an_outage_trips_the_parent_once(
        declared, configure, stub, redis_server, redis_db, recorded):
    declared.declare("zep", hold_seconds=1)
    declared.declare("zep-t.*", parent="zep", hold_seconds=300)
    rt = configure()
    read = _tenant_read(redis_server.url, stub, "t13")
    tenants = [f"t{i}" for i in range(200)]
    assert {read("c", tenant=t)[1]["source"] for t in tenants if t != "t13"} == {"zep"}

    _, meta = read("c", tenant="t13")
    assert meta["reason"] == "auth"
    assert sorted(redis_db.scan_iter("*forced*")) == ["mem:g:zep-t.t13:mode:forced:v1"], "that tenant alone"
    until = json.loads(redis_db.get("mem:g:zep-t.t13:mode:forced:v1"))["until"]
    assert redis_db.zscore(HOLDS, "zep-t.t13") == int(until * 1000), "its hold end is indexed"
    _, meta = read("c", tenant="t13")
    assert (meta["source"], meta["guard"]) == ("write_only_forced", "zep-t.t13")
    assert sum(read("c", tenant=t)[1]["source"] == "zep" for t in tenants) == 199, "every other tenant reads"

    stub.set_fault("hang")
    for tenant in tenants[20:30]:
        read("c", tenant=tenant)
    forced = [(e.guard, e.reason) for e in recorded if isinstance(e, events.ModeForced)]
    assert forced == [("zep-t.t13", "auth"), ("zep", "consecutive_failures")], "the parent, once"
    assert sorted(redis_db.scan_iter("*forced*")) == ["mem:g:zep-t.t13:mode:forced:v1",
                                                      "mem:g:zep:mode:forced:v1"]
    assert not [k for k in redis_db.scan_iter("mem:g:zep-t.*") if not k.startswith("mem:g:zep-t.t13:")], \
        "the outage's failures are the parent's: no tenant keys"
    _, meta = read("c", tenant="t50")
    assert (meta["source"], meta["guard"]) == ("write_only_forced", "zep"), "blocked by its parent"
    assert not redis_db.exists("mem:mode:forced:v1"), "the default guard is not these tenants' parent"

    stub.set_fault("ok")
    wait_for(lambda: due_guards(rt.state, 10) == ["zep"], 5, "the parent's hold to end")
    with ThreadPoolExecutor(2) as pool:  # two beats' ticks at once: one probe
        list(pool.map(lambda _: rt.probe_due(BY), range(2)))
    wait_for(lambda: rt.probe_due(BY) is not None and redis_db.zscore(HOLDS, "zep") is None, 2,
             "healthy: a tick takes it out of the index")
    probes = [(e.guard, e.result) for e in recorded if isinstance(e, events.ProbeFinished)]
    assert probes == [("zep", "success")]
    assert redis_db.zscore(HOLDS, "zep") is None and redis_db.zscore(HOLDS, "zep-t.t13") is not None
    wait_for(lambda: read("c", tenant="t50")[1]["source"] == "zep", 2, "the parent restored")
    assert sum(read("c", tenant=t)[1]["source"] == "zep" for t in tenants) == 199
    _, meta = read("c", tenant="t13")
    assert (meta["source"], meta["guard"]) == ("write_only_forced", "zep-t.t13"), "the tenant's hold runs on"


def test_a_static_guard_must_be_declared_and_a_request_name_that_is_not_goes_to_default(
        declared, configure, stub, redis_db, recorded):
    with pytest.raises(GuardError, match="'vectordb' is not declared"):
        memguard.guarded(guard="vectordb")
    with pytest.raises(GuardError, match="must match"):
        memguard.guarded(guard="Vector DB")
    declared.declare("vectordb", hold_seconds=60)
    rt = configure()

    @memguard.guarded(guard="vectordb")
    def vector(thread_id: str) -> str:
        raise ConnectionError("down")

    for _ in range(3):
        assert vector("x")[1]["reason"] == "connection"
    assert redis_db.exists("mem:g:vectordb:mode:forced:v1") and not redis_db.exists("mem:mode:forced:v1")
    assert flags.get_forced_mode(guard="vectordb")["reason"] == "consecutive_failures"
    assert rt.guard.call("t", lambda: "ok")[1]["source"] == "zep", "the default guard reads on"

    @memguard.guarded(guard=lambda thread_id, tenant: tenant)
    def by_name(thread_id: str, tenant: Any) -> str:
        return "ok"

    for _ in range(3):
        value, meta = by_name("x", "nobody")
        assert (value, meta["unknown_guard"], meta["source"]) == ("ok", "nobody", "zep")
    assert by_name("x", 42)[1]["unknown_guard"] == "<int>"
    told = [e.detail for e in recorded if isinstance(e, events.GuardTrouble) and e.kind == "unknown_guard"]
    assert told == ["nobody", "<int>"], "once per name"
    assert not list(redis_db.scan_iter("*nobody*"))


def test_an_async_read_under_a_named_guard_and_its_parent(declared, configure, stub, redis_db):
    declared.declare("zep-t.*", parent="default")
    configure()
    fail: list[Exception] = []

    @memguard.guarded(guard=lambda thread_id, tenant: f"zep-t.{tenant}")
    async def read(thread_id: str, tenant: str) -> str:
        if fail:
            raise fail[0]
        return "ctx"

    async def reads() -> list[dict[str, Any]]:
        assert (await read("t", "acme"))[0] == "ctx"
        fail.append(TimeoutError("slow"))
        metas = [(await read("t", "acme"))[1] for _ in range(3)]
        fail.clear()
        return [*metas, (await read("t", "acme"))[1]]

    metas = asyncio.run(reads())
    assert [m["reason"] for m in metas[:3]] == ["timeout"] * 3
    assert redis_db.exists("mem:mode:forced:v1"), "the timeouts forced the parent"
    assert not list(redis_db.scan_iter("mem:g:zep-t.acme:*forced*"))
    assert (metas[3]["source"], metas[3]["guard"]) == ("write_only_forced", "default")


def test_a_named_guard_judges_its_own_failure_rate_and_one_under_a_meterless_parent_counts(
        declared, configure, stub, redis_db):
    declared.declare("vectordb", failure_rate_threshold=0.5, failure_rate_min_reads=4)
    declared.declare("zep-t.*", parent="default", failure_rate_threshold=0.5)
    rt = configure()  # the default guard has no windowed policy, so no meter
    failing: list[bool] = []

    @memguard.guarded(guard=lambda thread_id, name: name)
    def read(thread_id: str, name: str) -> str:
        if failing:
            raise ConnectionError("down")
        return "ok"

    read("t", "vectordb")
    view = rt.units.units["vectordb"].view
    wait_for(lambda: view.current is not None, 5, "the guard's view followed (it hears its windows)")
    read("t", "vectordb")
    failing.append(True)
    for _ in range(4):  # 4 of 6 reads failed: over the half
        assert read("t", "vectordb")[1]["reason"] == "connection"
    assert not redis_db.exists("mem:g:vectordb:read:consec_failures"), "no consecutive count: the window's"
    wait_for(lambda: redis_db.exists("mem:g:vectordb:mode:forced:v1"), 10, "the window's verdict")
    assert flags.get_forced_mode(guard="vectordb")["reason"] == "failure_rate"
    assert rt.units.units["vectordb"].meter is not None

    for _ in range(3):
        read("t", "zep-t.acme")
    assert flags.get_forced_mode()["reason"] == "consecutive_failures", "counted toward the parent"


def test_a_tenants_force_reaches_only_the_processes_that_read_that_tenant(declared, configure, stub, redis_db,
                                                                         redis_server):
    declared.declare("zep-t.*")
    rt = configure()
    other = process.build(make_settings(redis_server.url, stub), hooks=events.Hooks(), count_metrics=False)
    try:
        assert other.watcher.wait_ready(5)
        guard = rt.units.guard("zep-t.acme")
        assert guard is not None and guard.call("t", lambda: "ctx")[1]["source"] == "zep"
        wait_for(lambda: guard.view.current is not None, 5, "acme's view followed")  # type: ignore[union-attr]
        channels = ["mem:mode:changes", "mem:g:zep-t.acme:mode:changes", "mem:g:zep-t.globex:mode:changes"]
        assert dict(redis_db.pubsub_numsub(*channels)) == dict(zip(channels, (2, 1, 0), strict=True)), \
            "both follow the default; only the reader follows acme; nobody globex"
    finally:
        other.close()


def test_a_stream_of_100000_request_names_keeps_the_views_bounded_and_makes_no_keys(
        declared, configure, stub, redis_db):
    declared.declare("zep-t.*")
    rt = configure()
    rt.units.bound = 32

    @memguard.guarded(guard=lambda thread_id, tenant: tenant)
    def read(thread_id: str, tenant: str) -> str:
        return "ok"

    most = 0
    for i in range(100_000):
        name = f"zep-t.{i}" if i % 50 == 0 else f"tenant-{i}"  # 2,000 declared, 98,000 not
        assert read("c", name)[0] == "ok"
        most = max(most, len(rt.units.units))
    assert most == 32 and len(rt.watcher.views) <= 33, "the bound holds, default's view beside it"
    keys = list(redis_db.scan_iter("*tenant-*"))
    assert keys == [], "no keys for undeclared names"


def test_each_operator_tool_takes_a_guard_and_lists_the_guards(declared, configure, stub, redis_server,
                                                               redis_db):
    declared.declare("zep-t.*", hold_seconds=120)
    configure()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(redis_server.url, *args)

    forced = cli("force", "--guard", "zep-t.acme", "--ttl", "90")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith("guard:       zep-t.acme\nforced write_only"), forced.stdout
    assert redis_db.exists("mem:g:zep-t.acme:mode:forced:v1") and not redis_db.exists("mem:mode:forced:v1")
    listed = cli("guards", "--degraded").stdout.splitlines()
    assert listed[0].split()[:2] == ["zep-t.acme", "forced,"] and len(listed) == 2, listed
    assert cli("guards").stdout.splitlines()[0].split() == ["default", "healthy"]
    status = cli("status", "--all").stdout
    assert status.startswith("mode:        read_write") and "named guards not healthy:" in status
    assert "  zep-t.acme" in status and "reason manual_ops" in status
    guard_status = json.loads(cli("status", "--guard", "zep-t.acme", "--json").stdout)
    assert (guard_status["guard"], guard_status["forced"]) == ("zep-t.acme", True)
    history = cli("history", "--guard", "zep-t.acme", "--json").stdout.splitlines()
    assert json.loads(history[-1])["guard"] == "zep-t.acme"
    bad = cli("force", "--guard", "Zep T!")
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith("memguard: guard name 'Zep T!' must match"), bad.stderr
    assert "Traceback" not in bad.stderr
    cleared = cli("clear", "--guard", "zep-t.acme", "--no-ramp")
    assert cleared.stdout.splitlines()[1].startswith("cleared: reads go to Zep again"), cleared.stdout
    assert cli("guards", "--degraded").stdout.splitlines()[0] == "  (none)"
    assert flags.force_write_only("manual_ops", 60, guard="zep-t.acme")["reason"] == "manual_ops"
    assert flags.clear_forced_mode(guard="zep-t.acme", ramp=False) is True
    assert not redis_db.exists("mem:mode:forced:v1"), "the default guard was never touched"


def test_a_process_of_the_previous_main_and_this_one_share_the_default_guard(configure, stub, redis_server,
                                                                          redis_db, tmp_path):
    rt = configure()
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "archive", PREVIOUS_MAIN, "memguard"], capture_output=True, check=True,
                             cwd=ROOT)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    env = {**stack_env(redis_server.url, stub.url, API_KEY), "PYTHONPATH": str(old)}

    def old_process(program: str) -> Any:
        program = "import json; from memguard import flags, service; " + program
        run = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-2000:]
        return json.loads(run.stdout)

    old_process("print(json.dumps(flags.force_write_only('manual_ops', 60)))")
    wait_for(lambda: (v := rt.view.current) is not None and v.record is not None, 2, "the force seen here")
    assert memguard.fetch_thread_context("t")[1]["source"] == "write_only_forced"
    seen = old_process("print(json.dumps(service.fetch_thread_context('t')[1]['source']))")
    assert seen == "write_only_forced"
    assert flags.clear_forced_mode(ramp=False) is True
    assert old_process("print(json.dumps(service.fetch_thread_context('t')[1]['source']))") == "zep", \
        "this one's clear seen there"
    todays = {"mem:audit", "mem:state:version", "mem:mode:forced:v1", "mem:watch:heartbeat",
              "mem:read:consec_failures", "mem:probe:heartbeat", "mem:notify:cursor"}
    assert set(redis_db.scan_iter("mem:*")) <= todays, "the default guard's keys are today's"


def test_a_hundred_due_guards_are_probed_at_once_and_a_slow_probe_delays_none(declared, configure, stub,
                                                                               redis_db):
    others_done_first: list[bool] = []

    def probe(name: str, timeout_s: float) -> None:
        if name == "svc.000":  # hangs past its budget until every other guard is restored (or 10 s)
            others = [f"mem:g:svc.{i:03d}:mode:forced:v1" for i in range(1, 100)]
            deadline = time.monotonic() + 10
            while redis_db.exists(*others) and time.monotonic() < deadline:
                time.sleep(0.02)
            others_done_first.append(not redis_db.exists(*others))

    declared.declare("svc.*", probe=probe, ramp_seconds=0)
    rt = configure()
    for i in range(100):  # svc.000's hold ends first: it is the first due
        rt.ops_for(f"svc.{i:03d}").force(BY, reason="manual_ops", ttl_seconds=1)
    wait_for(lambda: len(due_guards(rt.state, 1000)) == 100, 5, "every hold to end")
    results = rt.probe_due(BY)
    assert others_done_first == [True], "the other 99 were restored while one probe hung"
    assert sum(r["result"] == "success" for r in results.values()) >= 99


def test_a_named_guards_webhooks_name_it_from_its_force_to_its_restore(declared, configure, stub, redis_db,
                                                                        webhooks):
    bodies = webhooks.bodies
    declared.declare("vectordb", hold_seconds=1, ramp_seconds=0, probe=lambda name, timeout_s: None)
    rt = configure(webhook_urls=(("slack", webhooks.url),))
    rt.ops_for("vectordb").force(BY, reason="manual_ops", ttl_seconds=1)
    assert rt.probe_due(BY) == {}, "not due yet: announced all the same"
    wait_for(lambda: len(bodies) == 1, 5, "the downgrade's webhook")
    assert bodies[0]["memguard"]["guard"] == "vectordb"
    assert bodies[0]["text"].startswith("memguard [guard vectordb]: Zep reads downgraded"), bodies[0]
    wait_for(lambda: rt.probe_due(BY).get("vectordb", {}).get("result") == "success", 5, "the probe")
    wait_for(lambda: len(bodies) == 2, 5, "the restore's webhook")
    assert (bodies[1]["memguard"]["kind"], bodies[1]["memguard"]["guard"]) == ("restore", "vectordb")
    wait_for(lambda: rt.probe_due(BY) and redis_db.zcard(HOLDS) == 0, 5, "healthy: out of the index")
    assert not redis_db.exists("mem:audit"), "the default guard's trail is untouched"


holds_values = st.one_of(
    st.tuples(st.just("string"), st.text(max_size=8)),
    st.tuples(st.just("hash"), st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8),
                                               min_size=1, max_size=3)),
    st.tuples(st.just("list"), st.lists(st.text(max_size=8), min_size=1, max_size=3)),
    st.tuples(st.just("zset"), st.dictionaries(st.text(min_size=1, max_size=70), st.floats(-1e15, 1e15),
                                               min_size=1, max_size=4)),
)


@pytest.fixture
def named_for_properties(declared, configure):
    declared.declare("zep-t.*", hold_seconds=60)
    return configure()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=holds_values)
def test_any_value_at_the_index_of_hold_ends_fails_open_and_is_repaired(named_for_properties, redis_db,
                                                                        value):
    rt = named_for_properties
    redis_db.flushall()
    kind, data = value
    {"string": lambda: redis_db.set(HOLDS, data), "hash": lambda: redis_db.hset(HOLDS, mapping=data),
     "list": lambda: redis_db.rpush(HOLDS, *data), "zset": lambda: redis_db.zadd(HOLDS, data)}[kind]()
    assert isinstance(rt.probe_due(BY), dict), "the beat's tick goes on"
    assert all(isinstance(name, str) for name in indexed_guards(rt.state))
    for name in indexed_guards(rt.state):  # whatever is listed, an operator can act on
        rt.ops_for(name).summary()
    ops = rt.ops_for("zep-t.acme")
    assert ops.force(BY, reason="manual_ops", ttl_seconds=60)["forced"] is True
    assert redis_db.type(HOLDS) == "zset" and redis_db.zscore(HOLDS, "zep-t.acme") is not None, "repaired"
    ops.clear(BY, ramp=False)
    rt.probe_due(BY)  # healthy: the next tick takes it out
    assert redis_db.zscore(HOLDS, "zep-t.acme") is None
