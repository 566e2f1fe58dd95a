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
from pathlib import Path

import redis

REDIS_HINT = ("redis-server was not found on PATH: install it (Debian/Ubuntu: "
              "`sudo apt-get install -y redis-server`, macOS: `brew install redis`)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class RedisServer:
    """A throw-away redis-server on a free port; ``stop()``/``start()`` keep the port."""

    def __init__(self, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError(REDIS_HINT)
        self.port = port or free_port()
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
             "--appendonly", "no", "--dir", self.dir, "--logfile", os.path.join(self.dir, "log")],
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
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class CeleryProcess:
    """``celery -A <app> worker|beat`` as a real subprocess with its own log file."""

    def __init__(self, kind: str, env: dict[str, str], logdir: str, name: str, *extra: str,
                 app: str = "memguard", cwd: str | None = None) -> None:
        self.kind = kind
        self.name = name
        self.cwd = cwd
        self.log_path = Path(logdir) / f"{name}.log"
        args = [sys.executable, "-m", "celery", "-A", app, "--quiet", kind, "-l", "info"]
        if kind == "worker":
            args += ["-n", f"{name}@%h", "--without-mingle", "--without-gossip"]
        self.args = args + list(extra)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 30) -> CeleryProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        marker = "ready." if self.kind == "worker" else "beat: Starting..."
        wait_for(lambda: marker in self.output() or self.proc.poll() is not None, ready_timeout,
                 f"celery {self.kind} {self.name}")
        if self.proc.poll() is not None:
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
