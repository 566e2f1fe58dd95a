"""memguard added to an existing Celery app the way a user does it (examples/existing_app)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

import httpx
import pytest
import redis
import requests
import urllib3
from celery import Celery

import memguard
from memguard import flags, process
from memguard.config.settings import Settings
from memguard.domain import events
from memguard.drill.localstack import CeleryProcess, RedisServer, free_port, stack_env, wait_for
from memguard.drill.zepstub import ZepStub
from memguard.ops import audit
from memguard.store.keys import FORCED_MODE_KEY

from .conftest import API_KEY, RABBITMQ_URL, ROOT, make_settings, require_rabbitmq

EXAMPLE = ROOT / "examples" / "existing_app"


def commands(client) -> int:
    """Commands the server has run, not counting the INFO calls that ask."""
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


# -- the example app with real processes ------------------------------------------------------


@pytest.fixture
def example(tmp_path, stub):
    """The example app's world: its broker Redis, memguard's Redis, the stub; run from tmp_path."""
    with RedisServer() as broker, RedisServer() as state:
        env = stack_env(state.url, stub.url, API_KEY, CELERY_BROKER_URL=broker.url,
                        CELERY_RESULT_BACKEND=broker.url, PYTHONPATH=str(EXAMPLE),
                        MEMORY_DOWNGRADE_PROBE_INTERVAL_SECONDS="1")
        env.pop("CELERY_CONFIG_MODULE", None)
        procs: list[CeleryProcess] = []

        def spawn(kind: str, name: str, *args: str, app: str = "myapp", **extra: str) -> CeleryProcess:
            p = CeleryProcess(kind, {**env, **extra}, str(tmp_path), name, *args, app=app, cwd=str(tmp_path))
            procs.append(p)
            return p.start()

        sender = Celery(broker=broker.url, backend=broker.url)
        yield type("Example", (), {"broker": broker, "state": state, "env": env, "spawn": spawn,
                                   "sender": sender, "dir": tmp_path})
        for p in procs:
            p.stop()


def test_example_app_prefork_two_beats_free_reads_and_failover(example, stub):
    worker = example.spawn("worker", "w", "-P", "prefork", "-c", "2")
    beats = [example.spawn("beat", name) for name in ("b1", "b2")]  # memguard.install's scheduler
    started = time.monotonic()
    client = example.state.client()

    # Reads in forked pool children, through a function decorated at import time.
    for how in ("decorated", "fetch_thread_context"):
        for _ in range(4):  # warm both children up: their first read builds their runtime
            example.sender.send_task("myapp.read_many", args=[10, how]).get(timeout=20)
        before = commands(client)
        result = example.sender.send_task("myapp.read_many", args=[5000, how]).get(timeout=60)
        per_read = (commands(client) - before) / result["reads"]
        print(f"{how}: {per_read:.4f} Redis commands per healthy read in pool child {result['pid']}")
        assert result["used"] == result["reads"], result
        assert per_read <= 0.05, f"{how}: {per_read:.4f} Redis commands per healthy read"

    # Both beats keep running for a minute: the lock is never lost.
    while time.monotonic() - started < 60:
        assert all(b.alive() for b in beats), [b.output()[-2000:] for b in beats if not b.alive()]
        time.sleep(1)
    active = [b for b in beats if "Sending due task memguard-probe" in b.output()]
    assert len(active) == 1, "exactly one beat schedules the probe"
    standby = next(b for b in beats if b is not active[0])

    # Kill the active beat while the fleet is forced: the standby takes over and probes.
    rt = process.configure(make_settings(example.state.url, stub))
    flags.force_write_only("manual_ops", ttl_seconds=1)
    killed = time.monotonic()
    active[0].kill()
    wait_for(lambda: flags.get_forced_mode() is None, 15, "the standby beat's probe to restore")
    assert time.monotonic() - killed < 15
    assert "Sending due task memguard-probe" in standby.output()
    assert stub.reads_of("memguard-probe") >= 1
    assert worker.alive() and standby.alive()
    rt.close()


def test_example_apps_tenant_guards_a_401_holds_one_tenant_its_declared_probe_restores_it(example, stub):
    example.spawn("worker", "tenants", "-P", "prefork", "-c", "2", MYAPP_TENANT_HOLD_SECONDS="2")
    example.spawn("beat", "tenants-beat", MYAPP_TENANT_HOLD_SECONDS="2")
    state = redis.Redis.from_url(example.state.url, decode_responses=True)

    def answer(tenant: str) -> dict:
        return example.sender.send_task("myapp.tenant_answer", args=("t", tenant)).get(timeout=20)

    assert answer("acme")["source"] == "zep" and answer("globex")["source"] == "zep"
    stub.set_fault("401")
    assert answer("acme")["source"] == "zep_error"
    stub.set_fault("ok")
    assert sorted(state.scan_iter("*forced*")) == ["mem:g:zep-t.acme:mode:forced:v1"], "acme's alone"
    assert answer("globex")["source"] == "zep"
    held = answer("acme")
    assert (held["source"], held["guard"]) == ("write_only_forced", "zep-t.acme")
    wait_for(lambda: not state.exists("mem:g:zep-t.acme:mode:forced:v1"), 20, "the beat's probe of acme")
    assert answer("acme")["source"] in ("zep", "ramp_held"), "acme reads again, through its ramp"
    assert not state.exists("mem:mode:forced:v1"), "the default guard was never forced"
    assert state.exists("mem:g:zep-t.acme:mode:ramp"), "acme's reads return through its own recovery ramp"
    probes = [e for e in audit.history(state, "mem:g:zep-t.acme:audit", 20) if e["event"] == "probe"]
    assert [(p["guard"], p["result"]) for p in probes] == [("zep-t.acme", "success")], "one probe: the beat"

    def task(name: str, **kwargs: Any) -> dict:
        return example.sender.send_task(name, kwargs=kwargs).get(timeout=20)

    forced = task("memguard.force", guard="zep-t.globex", reason="manual_ops", ttl_seconds=60)
    assert (forced["guard"], forced["forced"]) == ("zep-t.globex", True)
    wait_for(lambda: answer("globex")["source"] == "write_only_forced", 5, "globex's force in every child")
    assert answer("acme")["source"] != "write_only_forced", "another tenant's force is not acme's"
    assert task("memguard.status", guard="zep-t.globex")["forced"] is True
    assert task("memguard.status")["forced"] is False, "the default's status is the default's"
    assert task("memguard.clear", guard="zep-t.globex", ramp=False)["cleared"] is True
    with pytest.raises(Exception, match="guard name 'Bad Name' must match"):
        task("memguard.force", guard="Bad Name")


def test_example_app_on_rabbitmq_forces_by_celery_call_and_the_probe_restores(tmp_path, stub):
    """The most common broker: RabbitMQ carries the tasks, memguard's state and RedBeat stay on Redis."""
    require_rabbitmq()
    queue = f"memguard-test-{uuid.uuid4().hex[:12]}"  # this run's own queue on the shared broker
    (tmp_path / "rabbitapp.py").write_text(
        "import os\nfrom myapp import app\napp.conf.task_default_queue = os.environ['TEST_QUEUE']\n")
    with RedisServer() as state:
        results = state.url.replace("/0", "/1")
        env = stack_env(state.url, stub.url, API_KEY, CELERY_BROKER_URL=RABBITMQ_URL,
                        CELERY_RESULT_BACKEND=results, PYTHONPATH=f"{EXAMPLE}{os.pathsep}{tmp_path}",
                        MEMORY_DOWNGRADE_PROBE_INTERVAL_SECONDS="1", TEST_QUEUE=queue)
        env.pop("CELERY_CONFIG_MODULE", None)
        procs = [CeleryProcess("worker", env, str(tmp_path), "w", "-P", "prefork", "-c", "2",
                               app="rabbitapp", cwd=str(tmp_path))]
        procs += [CeleryProcess("beat", env, str(tmp_path), name, app="rabbitapp", cwd=str(tmp_path))
                  for name in ("b1", "b2")]
        sender = Celery(broker=RABBITMQ_URL, backend=results)
        sender.conf.task_default_queue = queue
        try:
            for p in procs:
                p.start()
            done = sender.send_task("myapp.read_many", args=[50]).get(timeout=30)
            assert done["used"] == done["reads"] == 50, done
            probes = stub.reads_of("memguard-probe")

            out = subprocess.run([sys.executable, "-m", "celery", "-A", "rabbitapp", "call", "memguard.force",
                                  "--kwargs", json.dumps({"reason": "manual_ops", "ttl_seconds": 2})],
                                 cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            client = state.client()
            wait_for(lambda: client.exists(FORCED_MODE_KEY), 20, "celery call memguard.force to force")
            assert json.loads(client.get(FORCED_MODE_KEY))["reason"] == "manual_ops"
            answer = sender.send_task("myapp.answer", args=["t"]).get(timeout=30)
            assert answer == "no memory (write_only_forced)", "a pool child saw the force"
            # Well inside the 60 s grace: only a successful probe ends the hold this soon.
            wait_for(lambda: not client.exists(FORCED_MODE_KEY), 20, "the probe to restore the fleet")
            assert stub.reads_of("memguard-probe") > probes
            # memguard's events join Celery's own logging, each at its own level.
            worker = procs[0]
            wait_for(lambda: re.search(r"INFO/ForkPoolWorker-\d+\] memory_probe_finished result=success",
                                       worker.output()), 10, "the probe's INFO line in the worker log")
            assert re.search(r"WARNING/ForkPoolWorker-\d+\] memory_mode_forced prev_mode=read_write ",
                             worker.output()), worker.output()[-3000:]
            assert "[info" not in worker.output(), "no line reached Celery through redirected stdout"
            sending = [b for b in procs[1:] if "Sending due task memguard-probe" in b.output()]
            assert len(sending) == 1, "exactly one beat schedules the probe"
            assert all(p.alive() for p in procs), [p.output()[-2000:] for p in procs if not p.alive()]
        finally:
            for p in procs:
                p.stop()
            with sender.connection_for_write() as conn:
                conn.default_channel.queue_delete(queue)


def test_worker_without_zep_key_exits_with_one_line(example):
    env = {k: v for k, v in example.env.items() if k != "ZEP_API_KEY"}
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "memguard", "worker", "-l", "info"],
                         cwd=example.dir, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 78, out.stdout + out.stderr  # EX_CONFIG
    ours = [ln for ln in out.stderr.splitlines() if "memguard" in ln]
    assert ours == ["memguard: invalid configuration: ZEP_API_KEY is not set (memguard's Zep reader "
                    "needs it)"], out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert "ready." not in out.stdout + out.stderr


def test_beat_without_zep_key_exits_with_one_line(example):
    env = {k: v for k, v in example.env.items() if k != "ZEP_API_KEY"}
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "memguard", "beat", "-l", "info"],
                         cwd=example.dir, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 78, out.stdout + out.stderr  # EX_CONFIG
    both = out.stdout + out.stderr
    assert [ln for ln in both.splitlines() if "ZEP_API_KEY" in ln] == [
        "memguard: invalid configuration: ZEP_API_KEY is not set (memguard's Zep reader needs it)"], both
    assert "Traceback" not in both and "Acquired lock" not in both


@pytest.mark.parametrize("variable,value", [("MEMORY_DOWNGRADE_THRESHOLD", "three"),
                                            ("MEMGUARD_METRICS_PORT", "abc")])
def test_example_worker_with_a_bad_setting_exits_naming_it(example, variable, value):
    env = {**example.env, variable: value}
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "myapp", "worker", "-l", "info"],
                         cwd=example.dir, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 78, out.stdout + out.stderr  # EX_CONFIG
    assert [ln for ln in out.stderr.splitlines() if ln.startswith("memguard:")] == [
        f"memguard: invalid configuration: {variable}='{value}': expected a whole number"]
    assert "Traceback" not in out.stderr + out.stdout


def test_beat_refuses_settings_that_lose_the_lock(example):
    (example.dir / "tightbeat.py").write_text(
        "from myapp import app\napp.conf.beat_max_loop_interval = 5\napp.conf.redbeat_lock_timeout = 3\n")
    env = {**example.env, "PYTHONPATH": f"{EXAMPLE}{os.pathsep}{example.dir}"}
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "tightbeat", "beat", "-S",
                          "redbeat.RedBeatScheduler", "-l", "info"], cwd=example.dir, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 78, out.stdout + out.stderr  # EX_CONFIG
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if "memguard:" in ln]
    assert len(lines) == 1 and "redbeat_lock_timeout (3 s) must be longer than beat_max_loop_interval (5 s)" \
        in lines[0], out.stdout + out.stderr
    assert "Acquired lock" not in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_a_beat_on_plain_redbeat_warns_once_what_it_loses(example):
    beat = example.spawn("beat", "plain-redbeat", "-S", "redbeat.RedBeatScheduler")
    wait_for(lambda: "Sending due task memguard-probe" in beat.output(), 20, "the plain beat's first tick")
    hints = [ln for ln in beat.output().splitlines() if "not memguard.beat.Scheduler" in ln]
    assert len(hints) == 1, beat.output()[-3000:]
    assert "WARNING" in hints[0] and "redbeat.schedulers.RedBeatScheduler" in hints[0]
    assert "-S memguard.beat.Scheduler" in hints[0] and "exit on the first Redis error" in hints[0]


def test_ready_app_beat_runs_from_another_directory(example):
    beat = example.spawn("beat", "ready-beat", app="memguard")
    # Eight 1 s probe ticks outlast the 6 s lock timeout: a lost lock would have ended the beat.
    wait_for(lambda: beat.output().count("Sending due task memguard-probe") >= 8 or not beat.alive(), 30,
             "eight probe ticks")
    assert beat.alive(), beat.output()[-2000:]
    assert "not memguard.beat.Scheduler" not in beat.output(), "memguard's own scheduler gets no hint"


# -- install() on an app object ---------------------------------------------------------------


def test_install_applies_beat_defaults_and_keeps_the_apps_own_choices():
    app = Celery("plain")
    app.conf.beat_schedule = {"mine": {"task": "x", "schedule": 10}}
    memguard.install(app)
    assert app.conf.beat_max_loop_interval == 1
    assert app.conf.redbeat_lock_timeout == 6  # > 5 loops and > one 5 s probe interval
    assert set(app.conf.beat_schedule) == {"mine", "memguard-probe"}
    assert {"memguard.force", "memguard.clear", "memguard.status", "memguard.probe"} <= set(app.tasks)

    chosen = Celery("chosen")
    chosen.conf.update(beat_max_loop_interval=2, redbeat_lock_timeout=30)
    memguard.install(chosen)
    assert (chosen.conf.beat_max_loop_interval, chosen.conf.redbeat_lock_timeout) == (2, 30)
    # Tasks are registered on the app installed into, not on every app in the process.
    assert "memguard.force" not in Celery("other").tasks


def test_importing_memguard_changes_nothing_global():
    code = (
        "import logging, threading\n"
        "from celery import signals\n"
        "import memguard, memguard.flags, memguard.service\n"
        "@memguard.guarded\n"
        "def read(thread_id): return 1\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
        "for s in (signals.setup_logging, signals.worker_init, signals.beat_init, signals.task_prerun):\n"
        "    assert not s.receivers, s\n"
        "from memguard import process\n"
        "assert process._current is None\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "ZEP_API_KEY": "x", "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert out.stdout.strip() == "clean", out.stderr


HEAVY = ("celery", "kombu", "redbeat", "prometheus_client", "zep_python", "zep_cloud", "structlog", "httpx")
# Makes OpenTelemetry uninstalled for the process that runs it (this venv has it, for its tests).
WITHOUT_OTEL = """
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, _Absent())
"""


def _loaded(code: str, **env: str) -> list[str]:
    """The HEAVY packages a fresh process has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_a_bare_import_loads_none_of_the_heavy_packages():
    assert _loaded("import memguard") == []
    # Decorating a read, and the flags module, still need none of them.
    assert _loaded("import memguard\n@memguard.guarded\ndef read(t): return t\nimport memguard.flags") == []


def test_each_heavy_package_is_loaded_where_it_is_used(redis_server, redis_db, stub):
    env = {"REDIS_URL": redis_server.url, "ZEP_API_URL": stub.url, "ZEP_API_KEY": API_KEY}
    # The command line's one-shot commands: Redis only.
    assert _loaded("from memguard.integrations import cli\ncli.main(['status', '--json'])", **env) == []
    # An application's own read: metrics are kept (prometheus-client), nothing else.
    assert _loaded("import memguard\nmemguard.guarded(lambda t: t)('t')", **env) == ["prometheus_client"]
    # memguard's own reader: the chosen SDK and its HTTP client, not the other SDK.
    assert _loaded("import memguard\nmemguard.fetch_thread_context('t')", **env) == [
        "httpx", "prometheus_client", "zep_python"]
    # install(): Celery and its transport.
    installed = _loaded("import memguard, celery\nmemguard.install(celery.Celery())", **env)
    assert {"celery", "kombu"} <= set(installed)


def _otel_loaded(code: str, **env: str) -> dict[str, object]:
    """After ``code`` and one guarded read: whether any of OpenTelemetry and memguard's
    OpenTelemetry module are loaded, and the read's meta."""
    probe = (f"{code}\nimport json, sys, memguard\nvalue, meta = memguard.guarded(lambda t: t)('t')\n"
             "otel = any(m.split('.')[0] == 'opentelemetry' for m in sys.modules)\n"
             "print(json.dumps({'opentelemetry': otel,"
             " 'memguard.observe.otel': 'memguard.observe.otel' in sys.modules, 'meta': meta}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_opentelemetry_is_fed_only_where_installed_and_not_turned_off(redis_server, redis_db, stub):
    env = {"REDIS_URL": redis_server.url, "ZEP_API_URL": stub.url, "ZEP_API_KEY": API_KEY}
    healthy = {"used": True, "source": "zep"}
    # Not installed (memguard[otel] left out): nothing of it is imported, and reads go on as ever.
    assert _otel_loaded(WITHOUT_OTEL, **env) == {
        "opentelemetry": False, "memguard.observe.otel": False, "meta": healthy}
    # Installed: fed unless MEMGUARD_OTEL=off. (redis-py imports OpenTelemetry itself where installed.)
    assert _otel_loaded("", **env)["memguard.observe.otel"] is True
    assert _otel_loaded("", **env, MEMGUARD_OTEL="off")["memguard.observe.otel"] is False
    # MEMGUARD_OTEL=on without it: a configuration error naming the setting, as any bad setting gives.
    meta = _otel_loaded(WITHOUT_OTEL, **env, MEMGUARD_OTEL="on")["meta"]
    assert meta["source"] == "config_error" and "MEMGUARD_OTEL=on" in meta["error"], meta


# -- any HTTP client --------------------------------------------------------------------------


def _httpx_read(stub: ZepStub, key: str = API_KEY):
    client = httpx.Client(base_url=stub.url, headers={"Authorization": f"Api-Key {key}"})

    def read(thread_id: str) -> dict:
        r = client.get(f"/api/v2/sessions/{thread_id}/memory", timeout=5)
        r.raise_for_status()
        return r.json()

    return read


def _requests_read(stub: ZepStub, key: str = API_KEY):
    session = requests.Session()
    session.headers["Authorization"] = f"Api-Key {key}"

    def read(thread_id: str) -> dict:
        r = session.get(f"{stub.url}/api/v2/sessions/{thread_id}/memory", timeout=5)
        r.raise_for_status()
        return r.json()

    return read


@pytest.mark.parametrize("make_read", [_httpx_read, _requests_read], ids=["httpx", "requests"])
def test_plain_http_clients_trip_the_guard(configure, stub, recorded, make_read):
    configure()
    read = memguard.guarded(make_read(stub))
    value, meta = read("t-1")
    assert value["context"] == "context for t-1" and meta == {"used": True, "source": "zep"}

    stub.set_fault("401")
    value, meta = read("t-1")
    assert value is None and meta["reason"] == "auth" and meta["status"] == 401
    assert flags.get_forced_mode()["reason"] == "auth"

    flags.clear_forced_mode()
    stub.set_fault("503")
    metas = [read("t-1")[1] for _ in range(3)]
    assert [m["reason"] for m in metas] == ["http_5xx"] * 3
    assert flags.get_forced_mode()["reason"] == "consecutive_failures"

    flags.clear_forced_mode()
    stub.set_fault("reset")
    assert read("t-1")[1]["reason"] == "connection"


@pytest.mark.parametrize("make_read", [_httpx_read, _requests_read], ids=["httpx", "requests"])
def test_a_read_over_its_budget_counts_as_a_timeout(configure, stub, recorded, make_read):
    configure()
    read = memguard.guarded(timeout_ms=250)(make_read(stub))
    stub.set_fault("slow", delay_ms=2000)
    started = time.monotonic()
    value, meta = read("t-2")
    assert time.monotonic() - started >= 2.0
    assert value["context"] == "context for t-2", "the caller still gets its value"
    assert meta["used"] is True and meta["overran_ms"] >= 2000
    failures = [e for e in recorded if isinstance(e, events.FailureRecorded)]
    assert [(f.reason, f.action, f.fail_count) for f in failures] == [("timeout", "count", 1)]


def test_transport_timeouts_of_requests_count(configure, stub):
    configure()
    stub.set_fault("hang")
    session = requests.Session()
    session.headers["Authorization"] = f"Api-Key {API_KEY}"

    @memguard.guarded
    def read(thread_id: str) -> dict:
        r = session.get(f"{stub.url}/api/v2/sessions/{thread_id}/memory", timeout=0.1)
        r.raise_for_status()
        return r.json()

    assert read("t")[1]["reason"] == "timeout"


def _urllib_read(base: str):
    def read(thread_id: str) -> dict:
        request = urllib.request.Request(f"{base}/api/v2/sessions/{thread_id}/memory",
                                         headers={"Authorization": f"Api-Key {API_KEY}"})
        with urllib.request.urlopen(request, timeout=0.2) as r:  # raises HTTPError on >= 400
            return json.loads(r.read())

    return read


def _urllib3_read(base: str):
    pool = urllib3.PoolManager(retries=False, headers={"Authorization": f"Api-Key {API_KEY}"})

    def read(thread_id: str) -> dict:
        r = pool.request("GET", f"{base}/api/v2/sessions/{thread_id}/memory", timeout=0.2)
        return json.loads(r.data)  # urllib3 raises only for transport errors

    return read


TRANSPORT_FAULTS = [("hang", "timeout"), ("reset", "connection"), ("refused", "connection")]


# urllib3 raises no error for an HTTP status (the application decides), so only its transport
# errors are classified; urllib's HTTPError carries the status.
@pytest.mark.parametrize("make_read,fault,reason", [
    *[(_urllib_read, f, r) for f, r in [("408", "timeout"), ("503", "http_5xx"), ("401", "auth"),
                                        *TRANSPORT_FAULTS]],
    *[(_urllib3_read, f, r) for f, r in TRANSPORT_FAULTS],
], ids=lambda v: getattr(v, "__name__", v))
def test_standard_library_and_urllib3_reads_are_classified(configure, stub, recorded, make_read, fault,
                                                           reason):
    configure()
    read = memguard.guarded(make_read(f"http://127.0.0.1:{free_port()}" if fault == "refused" else stub.url))
    if fault != "refused":
        stub.set_fault(fault)
    value, meta = read("t")
    assert value is None and meta["reason"] == reason, meta
    failures = [e for e in recorded if isinstance(e, events.FailureRecorded)]
    assert [(f.reason, f.action) for f in failures] == [(reason, "force" if reason == "auth" else "count")]


def test_guarded_rejects_a_bad_budget():
    with pytest.raises(ValueError, match="timeout_ms"):
        memguard.guarded(timeout_ms=0)


# -- configuration errors at request time -----------------------------------------------------


def test_config_error_returns_none_and_is_logged_once(redis_server, redis_db, stub, capsys):
    from memguard.observe import logs

    logs.configure(stream=sys.stdout)
    rt = process.configure(Settings(redis_url=redis_server.url, zep_api_url=stub.url, zep_api_key=None))
    try:
        results = [memguard.fetch_thread_context("t") for _ in range(3)]
    finally:
        rt.close()
    assert all(ctx is None and meta["source"] == "config_error" and "ZEP_API_KEY" in meta["error"]
               for ctx, meta in results)
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if "memguard_config_error" in ln]
    assert len(lines) == 1 and "ZEP_API_KEY" in lines[0]["detail"]
    assert stub.stats()["reads"] == 0


# -- the README's snippet is the example app's code -------------------------------------------


def test_readme_snippet_is_the_example_apps_code():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- example-app -->\n```python\n(.*?)```", readme, re.S)
    assert block, "the README has no example-app snippet"
    assert block.group(1) in (EXAMPLE / "myapp.py").read_text()
