"""A small Zep-compatible HTTP server with fault injection, for drills and tests.

It serves the read and write endpoints of both SDKs (zep-python 2.x under ``/api/v2``,
zep-cloud 4.x under ``/api/v4``) and can be switched at run time, over HTTP or from Python,
to fail the way a real Zep does on a bad night. It counts every request it is sent.

    python -m memguard.zepstub --port 8000 [--api-key KEY]
    curl -X POST localhost:8000/_stub/fault -d '{"fault": "hang"}'
    curl localhost:8000/_stub/stats
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import json
import re
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = (
    "ok", "401", "403", "404", "408", "429", "429_retry", "429_retry_date", "500", "500_text", "503",
    "503_text", "slow", "hang", "reset", "bad_json",
)
_HANG_LIMIT_S = 30.0
_ROUTES = [
    (re.compile(r"^/api/v2/sessions/([^/]+)/memory$"), "v2"),
    (re.compile(r"^/api/v4/threads/([^/]+)/context$"), "v4-read"),
    (re.compile(r"^/api/v4/threads/([^/]+)/messages$"), "v4-write"),
]


class StubState:
    """The switchable fault and the request counters, shared by all handler threads."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key
        self.fault = "ok"
        self.delay_ms = 0
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.counts: Counter[str] = Counter()
        self.reads_by_thread: Counter[str] = Counter()

    def set_fault(self, fault: str, delay_ms: int = 0) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")
        with self.changed:
            self.fault, self.delay_ms = fault, delay_ms
            self.changed.notify_all()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"fault": self.fault, "delay_ms": self.delay_ms, "requests": 0, "reads": 0,
                    "writes": 0, **self.counts,
                    "reads_by_thread": dict(self.reads_by_thread)}

    def reset_counts(self) -> None:
        with self.lock:
            self.counts.clear()
            self.reads_by_thread.clear()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, keep-alive clients wait ~40 ms
    # for a delayed ACK on every request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        if path.startswith("/_stub/"):
            self._control(method, path, body)
            return
        for pattern, kind in _ROUTES:
            m = pattern.match(path)
            if m:
                self._zep(method, kind, m.group(1))
                return
        self._send(404, {"message": "not found"})

    def _control(self, method: str, path: str, body: bytes) -> None:
        st = self.server.state
        if path == "/_stub/stats":
            self._send(200, st.stats())
        elif path == "/_stub/fault" and method == "POST":
            try:
                req = json.loads(body or b"{}")
                st.set_fault(str(req.get("fault", "ok")), int(req.get("delay_ms", 0)))
            except (ValueError, TypeError) as exc:
                self._send(400, {"message": str(exc)})
                return
            self._send(200, st.stats())
        elif path == "/_stub/reset" and method == "POST":
            st.reset_counts()
            self._send(200, st.stats())
        else:
            self._send(404, {"message": "unknown control path"})

    def _zep(self, method: str, kind: str, thread_id: str) -> None:
        st = self.server.state
        is_read = method == "GET" and kind != "v4-write"
        with st.lock:
            st.counts["requests"] += 1
            st.counts["reads" if is_read else "writes"] += 1
            if is_read:
                st.reads_by_thread[thread_id] += 1
            fault, delay_ms = st.fault, st.delay_ms
        if st.api_key is not None and self.headers.get("Authorization") != f"Api-Key {st.api_key}":
            self._send(401, {"message": "unauthorized"})
            return
        if fault == "hang":
            self._hang()
            return
        if fault == "slow":
            time.sleep(delay_ms / 1000.0)
        elif fault == "reset":
            self._reset()
            return
        if fault.startswith("429_retry"):
            # Retry-After of delay_ms (default 30 s), in seconds or as an HTTP date.
            wait = max(1, delay_ms // 1000) if delay_ms else 30
            value = email.utils.formatdate(time.time() + wait, usegmt=True) if fault.endswith("date") \
                else str(wait)
            self._send(429, {"message": "rate limited"}, {"Retry-After": value})
        elif fault in ("401", "403", "404", "408", "429", "500", "503"):
            self._send(int(fault), {"message": f"stub fault {fault}"})
        elif fault.endswith("_text"):
            self._send_raw(int(fault[:3]), b"<html>upstream error</html>", "text/html")
        elif fault == "bad_json":
            self._send_raw(200, b'{"context": "trunc', "application/json")
        elif not is_read:
            self._send(202 if kind == "v4-write" else 200, {"message": "ok"})
        elif kind == "v2":
            self._send(200, {"context": f"context for {thread_id}",
                             "messages": [{"role": "user", "role_type": "user", "content": "hello"}]})
        else:
            self._send(200, {"context": f"context for {thread_id}"})

    def _hang(self) -> None:
        """Hold the request open until the fault changes or the hang limit passes."""
        st = self.server.state
        deadline = time.monotonic() + _HANG_LIMIT_S
        with st.changed:
            while st.fault == "hang" and not self.server.closing and time.monotonic() < deadline:
                st.changed.wait(0.2)
        self.close_connection = True

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_raw(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], state: StubState) -> None:
        super().__init__(addr, _Handler)
        self.state = state
        self.closing = False


class ZepStub:
    """The stub in a background thread: ``with ZepStub() as stub: stub.url ...``."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", api_key: str | None = None) -> None:
        self.state = StubState(api_key)
        self._server = _Server((host, port), self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, name="zepstub", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ZepStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.closing = True
        self.state.set_fault("ok")
        self._server.shutdown()
        self._server.server_close()

    def set_fault(self, fault: str, delay_ms: int = 0) -> None:
        self.state.set_fault(fault, delay_ms)

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    def reads_of(self, thread_id: str) -> int:
        """How many reads of ``thread_id`` reached the stub (the prober reads its own thread)."""
        with self.state.lock:
            return self.state.reads_by_thread[thread_id]

    def __enter__(self) -> ZepStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m memguard.zepstub", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="answer 401 to any other key")
    parser.add_argument("--fault", default="ok", choices=FAULTS)
    args = parser.parse_args(argv)
    stub = ZepStub(args.port, args.host, args.api_key)
    stub.set_fault(args.fault)
    print(f"zep stub listening on {stub.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stub._server.serve_forever()


if __name__ == "__main__":
    main()
