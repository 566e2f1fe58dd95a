"""Private processes for drills and tests: a redis-server, Celery workers and beats.

Each runs on a free loopback port or with its own log file, and is stopped (and its files
removed) when the stack closes, so a drill never touches a shared Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import redis

REDIS_HINT = ("redis-server was not found on PATH: install it (Debian/Ubuntu: "
              "`sudo apt-get install -y redis-server`, macOS: `brew install redis`)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_below(limit: int) -> int:
    """A free port a cluster node may use (Redis refuses ports above 55535 in cluster mode)."""
    while (port := free_port()) > limit:
        pass
    return port


def wait_for(check: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class RedisServer:
    """A throw-away redis-server on a free port; ``stop()``/``start()`` keep the port."""

    def __init__(self, port: int | None = None, *args: str) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError(REDIS_HINT)
        self.port = port or free_port()
        self.args = args  # more redis-server options: --replicaof, --cluster-enabled...
        self.dir = tempfile.mkdtemp(prefix="memguard-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=2)

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--logfile", os.path.join(self.dir, "log"),
             *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._pings, 10, f"redis-server on port {self.port}")
        return self

    def _pings(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.2).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # a primary waiting for a replica that never catches up
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class SentinelGroup:
    """A primary, a replica and three sentinels watching them, all on free loopback ports."""

    def __init__(self, service: str = "mg") -> None:
        self.service = service
        self.primary = RedisServer()
        self.replica = RedisServer(None, "--replicaof", "127.0.0.1", str(self.primary.port))
        self.sentinels = [RedisServer() for _ in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self) -> SentinelGroup:
        self.primary.start()
        self.replica.start()
        for s in self.sentinels:
            conf = Path(s.dir) / "sentinel.conf"
            conf.write_text(
                f"port {s.port}\nbind 127.0.0.1\ndir {s.dir}\nlogfile {s.dir}/log\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 4000\n")
            s.proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: all(self._knows_replica(s) for s in self.sentinels), 20,
                 "the sentinels to see the primary and its replica")
        return self

    def _knows_replica(self, sentinel: RedisServer) -> bool:
        try:
            replicas = sentinel.client().sentinel_slaves(self.service)
            return any(r.get("master-link-status") == "ok" for r in replicas)
        except redis.RedisError:
            return False

    def master_port(self) -> int:
        sentinel = self.sentinels[0].client()
        address = cast(tuple[str, int], sentinel.sentinel_get_master_addr_by_name(self.service))
        return int(address[1])

    def failover(self, timeout: float = 20) -> int:
        """``SENTINEL FAILOVER``; returns the new master's port once it accepts writes."""
        old = self.master_port()

        def started() -> bool:
            try:
                return bool(self.sentinels[0].client().sentinel_failover(self.service))
            except redis.ResponseError as exc:  # NOGOODSLAVE until the sentinels saw it synced
                if "NOGOODSLAVE" not in str(exc):
                    raise
                return False

        wait_for(started, timeout, "the sentinels to accept SENTINEL FAILOVER", interval=0.5)
        wait_for(lambda: self.master_port() != old, timeout, "the sentinels to promote the replica")
        new = next(s for s in (self.primary, self.replica) if s.port != old)
        wait_for(lambda: new.client().role()[0] == "master", timeout, "the new master to take writes")
        return new.port

    def close(self) -> None:
        for s in (*self.sentinels, self.replica, self.primary):
            s.close()

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClusterGroup:
    """A three-master Redis Cluster, made with ``redis-cli --cluster create``."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [RedisServer(_port_below(55_535), "--cluster-enabled", "yes", "--cluster-node-timeout",
                                  "2000", "--cluster-port", str(free_port())) for _ in range(masters)]
        for n in self.nodes:
            n.args += ("--cluster-config-file", os.path.join(n.dir, "nodes.conf"))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> ClusterGroup:
        for n in self.nodes:
            n.start()
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-yes"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self._ok, 20, "the cluster to report cluster_state:ok")
        return self

    def _ok(self) -> bool:
        try:
            return all(n.client().cluster("INFO").get("cluster_state") == "ok" for n in self.nodes)
        except redis.RedisError:
            return False

    def flushall(self) -> None:
        for n in self.nodes:
            n.client().flushall()

    def close(self) -> None:
        for n in self.nodes:
            n.close()

    def __enter__(self) -> ClusterGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class CeleryProcess:
    """``celery -A <app> worker|beat`` as a real subprocess with its own log file."""

    def __init__(self, kind: str, env: dict[str, str], logdir: str, name: str, *extra: str,
                 app: str = "memguard", cwd: str | None = None, python: str = sys.executable) -> None:
        self.kind = kind
        self.name = name
        self.cwd = cwd
        self.log_path = Path(logdir) / f"{name}.log"
        args = [python, "-m", "celery", "-A", app, "--quiet", kind, "-l", "info"]
        if kind == "worker":
            args += ["-n", f"{name}@%h", "--without-mingle", "--without-gossip"]
        self.args = args + list(extra)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 30) -> CeleryProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        proc = self.proc = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdout=self._log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        marker = "ready." if self.kind == "worker" else "beat: Starting..."
        wait_for(lambda: marker in self.output() or proc.poll() is not None, ready_timeout,
                 f"celery {self.kind} {self.name}")
        if proc.poll() is not None:
            raise RuntimeError(f"celery {self.kind} {self.name} exited:\n{self.output()[-3000:]}")
        return self

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the main process and its pool children)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 15) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()


def stack_env(redis_url: str, zep_url: str, api_key: str, **overrides: str) -> dict[str, str]:
    """The environment for memguard processes pointed at a private stack."""
    env = dict(os.environ)
    env.update({
        "REDIS_URL": redis_url,
        "ZEP_API_URL": zep_url,
        "ZEP_API_KEY": api_key,
        "PYTHONUNBUFFERED": "1",
    })
    env.update(overrides)
    return env
