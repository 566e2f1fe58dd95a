"""Fixtures: a private redis-server, the Zep stub, and a configured memguard process."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import hypothesis
import pytest
from celery import Celery

from memguard import process
from memguard.config.settings import Settings
from memguard.domain import events
from memguard.drill.localstack import CeleryProcess, RedisServer, stack_env, wait_for
from memguard.drill.zepstub import ZepStub

API_KEY = "test-key-Zq7"
ROOT = Path(__file__).resolve().parent.parent

# The SDK would prefer a developer's ZEP_API_URL over the stub's address.
os.environ.pop("ZEP_API_URL", None)


# ./run mutants only needs to know that a property fails: no shrinking, no example database. The
# explicit examples still run: they are the cases a property must always check.
hypothesis.settings.register_profile("mutants", phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                                     database=None)

RABBITMQ = ("127.0.0.1", 5672)  # guest/guest: this machine kind and CI run one
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def require(what: str, present: bool, hint: str) -> None:
    """Skip a test whose outside part is missing, except under ``CI=true``: there it fails."""
    if present:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing under CI=true: {hint}", pytrace=False)
    pytest.skip(f"{what} is missing: {hint}")


def require_binary(name: str, package: str) -> None:
    require(name, shutil.which(name) is not None, f"install the Debian package {package} (./run does)")


def require_rabbitmq() -> None:
    try:
        socket.create_connection(RABBITMQ, timeout=2).close()
        up = True
    except OSError:
        up = False
    require("RabbitMQ at 127.0.0.1:5672", up, "start rabbitmq-server (Debian package rabbitmq-server)")


def _not_pytests(handlers: list[logging.Handler]) -> list[logging.Handler]:
    return [h for h in handlers if not type(h).__module__.startswith("_pytest")]


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """A test that sends log lines to its captured stdout (``logs.configure``) leaves the root
    logger's handlers as it found them: a later test's watcher thread must not write to a
    stream pytest has closed."""
    root = logging.getLogger()
    before, level = _not_pytests(root.handlers), root.level
    yield
    added = _not_pytests(root.handlers)
    root.handlers[:] = [h for h in root.handlers if h not in added] + before
    root.setLevel(level)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server
        # The last test's process may still follow this server: close it before the server
        # stops, so that its watcher does not report a lost server to a closed log stream.
        process.release()


@pytest.fixture
def redis_db(redis_server: RedisServer):
    client = redis_server.client()
    client.flushall()
    yield client
    client.flushall()


@pytest.fixture
def stub() -> Iterator[ZepStub]:
    with ZepStub(api_key=API_KEY) as s:
        yield s


@pytest.fixture
def recorded() -> Iterator[list[events.Event]]:
    """Every event the guard emits during the test."""
    seen: list[events.Event] = []
    process.hooks.subscribe(seen.append)
    yield seen
    process.hooks.unsubscribe(seen.append)


# The tests of what memguard did before the recovery ramp run with the ramp off: they are the
# proof that MEMORY_RECOVERY_RAMP_SECONDS=0 behaves as before. The ramp's own tests turn it on.
NO_RAMP = {"MEMORY_RECOVERY_RAMP_SECONDS": "0"}


def make_settings(redis_url: str, stub: ZepStub, **kw) -> Settings:
    base = dict(redis_url=redis_url, zep_api_url=stub.url, zep_api_key=API_KEY, read_timeout_ms=200,
                probe_timeout_ms=150, hold_seconds=300, probe_grace_seconds=60, ramp_seconds=0)
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def configure(redis_db, redis_server: RedisServer, stub: ZepStub):
    """Build the process runtime against the private Redis and the stub."""
    built: list[process.Process] = []

    def _configure(**kw) -> process.Process:
        rt = process.configure(make_settings(kw.pop("redis_url", redis_server.url), stub, **kw))
        assert rt.watcher.wait_ready(), "watcher did not subscribe"
        built.append(rt)
        return rt

    yield _configure
    for rt in built:
        rt.close()


def run_cli(redis_url: str | None, *args: str, cwd: Path | None = None,
            **more: str) -> subprocess.CompletedProcess[str]:
    """The ``memguard`` command line in a process of its own, with only REDIS_URL (when given)
    and the Zep key set, as an operator's shell would have them (in ``cwd``, their project, with
    ``more`` of its environment)."""
    env = {"ZEP_API_KEY": API_KEY, "PATH": "/usr/bin:/bin", **({"REDIS_URL": redis_url} if redis_url else {}),
           **more}
    return subprocess.run([sys.executable, "-m", "memguard", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=cwd)


RABBITMQ_APP = """
import os
from celery import Celery
import memguard

app = Celery("rabbitapp", broker=os.environ["CELERY_BROKER_URL"])
app.conf.task_default_queue = os.environ["TEST_QUEUE"]
memguard.install(app)
"""


@contextlib.contextmanager
def worker_and_beat_on_rabbitmq(redis_url: str, stub: ZepStub, tmp_path: Path, name: str,
                                **env: str) -> Iterator[list[CeleryProcess]]:
    """A user's own Celery app (RabbitMQ the broker, ``memguard.install(app)``) with a solo
    worker and a beat on ``redis_url``, started, and stopped on leaving: the probe ticks every
    0.5 s and restores without a ramp. ``env``: more of the processes' environment."""
    require_rabbitmq()
    (tmp_path / "rabbitapp.py").write_text(RABBITMQ_APP)
    full = stack_env(redis_url, stub.url, API_KEY, CELERY_BROKER_URL=RABBITMQ_URL, PYTHONPATH=str(tmp_path),
                     TEST_QUEUE=f"memguard-{name}-{uuid.uuid4().hex[:12]}",
                     MEMORY_DOWNGRADE_PROBE_INTERVAL_SECONDS="0.5", MEMORY_RECOVERY_RAMP_SECONDS="0", **env)
    full.pop("CELERY_CONFIG_MODULE", None)
    procs = [CeleryProcess("worker", full, str(tmp_path), f"{name}-worker", "-P", "solo", app="rabbitapp",
                           cwd=str(tmp_path)),
             CeleryProcess("beat", full, str(tmp_path), f"{name}-beat", app="rabbitapp", cwd=str(tmp_path))]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def a_401_forces_and_another_process_sees_it(rt: process.Process, other: process.Process,
                                              stub: ZepStub) -> None:
    """A read of ``rt`` reaches Zep; a 401 forces; ``other``'s view shows the force."""
    assert rt.watcher.wait_ready(5) and other.watcher.wait_ready(5), "both views' connections"
    assert rt.guard.call("t", rt.readers.reader.read_context, ("t", 0.2))[1]["source"] == "zep"
    stub.set_fault("401")
    assert rt.guard.call("t", rt.readers.reader.read_context, ("t", 0.2))[1]["reason"] == "auth"
    stub.set_fault("ok")
    wait_for(lambda: (v := other.view.current) is not None and v.record is not None, 2,
             "the force seen by another process")


def the_cli_shows_the_force_and_clears_it(redis_url: str, other: process.Process) -> None:
    """After a 401's force: ``memguard status`` says so, ``memguard clear --no-ramp`` clears it,
    and ``other``'s view shows the clear."""
    status = run_cli(redis_url, "status")
    assert status.returncode == 0 and "forced:      yes, reason auth" in status.stdout, status.stderr
    assert run_cli(redis_url, "clear", "--no-ramp").returncode == 0
    wait_for(lambda: (v := other.view.current) is not None and v.record is None, 2, "the clear seen")


@pytest.fixture
def webhooks() -> Iterator[SimpleNamespace]:
    """A webhook receiver on loopback that accepts every POST: ``url``, and the ``bodies``."""
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}/hook", bodies=bodies)
    server.shutdown()


def wait_past(epoch: float, what: str, timeout: float = 10) -> None:
    """Wait until the wall clock (Redis's, on this machine) is past ``epoch``."""
    wait_for(lambda: time.time() > epoch, timeout, what, interval=0.01)


def wait_caught_up(redis_db, window_key: str) -> None:
    """Wait until a window that holds bad reads may be judged: ``CATCHUP_MS`` after the fleet
    was told, when the healthy counts the processes kept have come in."""
    from memguard.store.state import CATCHUP_MS

    hot = redis_db.hget(window_key, "hot")
    assert hot is not None, f"{window_key} holds no bad reads"
    wait_past((int(hot) + CATCHUP_MS) / 1000, f"{window_key} caught up")


def probe_ticks(worker: CeleryProcess) -> int:
    """Probe tasks a worker has finished, from its log."""
    return len(re.findall(r"Task memguard\.probe\[[^\]]+\] succeeded", worker.output()))


@pytest.fixture
def stack(tmp_path, stub, monkeypatch):
    """A private Redis plus real Celery processes started from the project root (celeryconfig.py)."""
    monkeypatch.chdir(ROOT)
    with RedisServer() as server:
        procs: list[CeleryProcess] = []

        def env(**extra: str) -> dict[str, str]:
            e = stack_env(server.url, stub.url, API_KEY, **{
                "MEMORY_DOWNGRADE_PROBE_INTERVAL_SECONDS": "0.5", **NO_RAMP, **extra})
            e["PYTHONPATH"] = str(ROOT)
            return e

        def spawn(kind: str, name: str, *args: str, **extra: str) -> CeleryProcess:
            p = CeleryProcess(kind, env(**extra), str(tmp_path), name, *args)
            procs.append(p)
            return p.start()

        def use(**kw) -> process.Process:
            s = Settings.from_env(env(**{k: str(v) for k, v in kw.items()}))
            rt = process.configure(s)
            rt.watcher.wait_ready()
            return rt

        yield SimpleNamespace(server=server, stub=stub, spawn=spawn, env=env, use=use,
                              sender=Celery(broker=server.url, backend=server.url))
        for p in procs:
            p.stop()
        process.get().close()


# The modules that spend longest waiting on real clocks start first, so that with
# `pytest -n 4 --dist loadfile` (./run test) no worker begins one of them near the end.
SLOW_FIRST = ("test_alerts_in_real_prometheus", "test_existing_celery_app", "test_shortened_soak",
              "test_beat_rides_through_redis_restart", "test_sentinel_failover",
              "test_trip_policies_backoff_and_webhooks", "test_prober_and_operator_tasks",
              "test_benchmarks_run")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.module.__name__.rpartition(".")[2] if item.module else ""
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)
