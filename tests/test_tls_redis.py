"""memguard over TLS (``rediss://``) to a real redis-server started with ``--tls-port``, with
certificates this test makes (trustme): verified by default, mutual TLS from REDIS_URL's
``ssl_ca_certs``/``ssl_certfile``/``ssl_keyfile``; a wrong CA, an expired certificate and a
host that is not the certificate's are each told in one line, and reads fail open."""

from __future__ import annotations

import datetime
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
import trustme

from memguard import flags, process
from memguard.domain import events
from memguard.drill.localstack import RedisServer, free_port, stack_env, wait_for

from .conftest import (
    API_KEY,
    RABBITMQ_URL,
    a_401_forces_and_another_process_sees_it,
    make_settings,
    require_rabbitmq,
    run_cli,
    the_cli_shows_the_force_and_clears_it,
    worker_and_beat_on_rabbitmq,
)


def _tls_server(tmp: Path, name: str, cert: object, ca_path: Path) -> tuple[RedisServer, int]:
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))  # type: ignore[attr-defined]
    cert.private_key_pem.write_to_path(str(key_path))  # type: ignore[attr-defined]
    port = free_port()
    server = RedisServer(None, "--tls-port", str(port), "--tls-cert-file", str(cert_path),
                         "--tls-key-file", str(key_path), "--tls-ca-cert-file", str(ca_path),
                         "--tls-auth-clients", "optional")
    return server.start(), port


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A TLS redis-server (certificate for localhost), one with an expired certificate, the CA,
    a client certificate, and a CA that signed neither."""
    ca, other_ca = trustme.CA(), trustme.CA()
    ca_path, other_path = tmp_path / "ca.pem", tmp_path / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    other_ca.cert_pem.write_to_path(str(other_path))
    client = ca.issue_cert("memguard-client")
    client_cert, client_key = tmp_path / "client.crt", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(client_cert))
    client.private_key_pem.write_to_path(str(client_key))
    good, port = _tls_server(tmp_path, "good", ca.issue_cert("localhost"), ca_path)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    expired, expired_port = _tls_server(tmp_path, "expired", ca.issue_cert("localhost", not_after=past),
                                        ca_path)

    def url(host: str = "localhost", at: int = port, ca_file: Path = ca_path) -> str:
        query = urlencode({"ssl_ca_certs": ca_file, "ssl_certfile": client_cert, "ssl_keyfile": client_key})
        return f"rediss://{host}:{at}/0?{query}"

    try:
        yield SimpleNamespace(url=url(), wrong_ca=url(ca_file=other_path), expired=url(at=expired_port),
                              wrong_host=url(host="127.0.0.1"), plain=good.client())
    finally:
        good.close()
        expired.close()


def test_reads_forces_and_the_cli_work_over_mutual_tls(tls, stub):
    rt = process.configure(make_settings(tls.url, stub))
    other = process.build(make_settings(tls.url, stub), hooks=events.Hooks(), count_metrics=False)
    try:
        a_401_forces_and_another_process_sees_it(rt, other, stub)  # the views' tracked connections too
        the_cli_shows_the_force_and_clears_it(tls.url, other)
        assert run_cli(tls.url, "force", "--ttl", "60").returncode == 0
        assert tls.plain.exists("mem:mode:forced:v1"), "the state is the server's (read over plain TCP)"
    finally:
        other.close()


@pytest.mark.parametrize("case, reason", [("wrong_ca", "self-signed certificate in certificate chain"),
                                          ("expired", "certificate has expired"),
                                          ("wrong_host", "IP address mismatch")])
def test_a_certificate_that_fails_verification_is_told_in_one_line_and_reads_fail_open(tls, stub, case,
                                                                                       reason):
    url = getattr(tls, case)
    status = run_cli(url, "status")
    assert status.returncode == 3, status.stdout + status.stderr
    assert status.stderr.startswith("memguard: TLS verification failed at rediss://"), status.stderr
    assert reason in status.stderr and len(status.stderr.strip().splitlines()) == 1, status.stderr
    assert "Traceback" not in status.stderr
    rt = process.configure(make_settings(url, stub))
    stub.set_fault("503")
    for _ in range(4):
        assert rt.guard.call("t", rt.readers.reader.read_context, ("t", 0.2))[1]["source"] == "zep_error"
    stub.set_fault("ok")
    assert rt.guard.call("t", rt.readers.reader.read_context, ("t", 0.2))[1]["source"] == "zep", "fails open"


def test_a_worker_and_a_beat_with_a_bad_certificate_exit_78_naming_the_setting(tls, tmp_path):
    require_rabbitmq()
    env = stack_env(tls.wrong_ca, "http://127.0.0.1:1", API_KEY, CELERY_BROKER_URL=RABBITMQ_URL)
    env.pop("CELERY_CONFIG_MODULE", None)
    for kind in ("worker", "beat"):
        out = subprocess.run([sys.executable, "-m", "celery", "-A", "memguard", kind, "-l", "info"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 78, out.stdout + out.stderr
        ours = [ln for ln in out.stderr.splitlines() if ln.startswith("memguard:")]
        assert len(ours) == 1 and ours[0].startswith("memguard: REDIS_URL: TLS verification failed: "), ours
        assert "Traceback" not in out.stderr + out.stdout


def test_the_beats_probe_restores_over_tls(tls, stub, tmp_path):
    with worker_and_beat_on_rabbitmq(tls.url, stub, tmp_path, "tls"):
        process.configure(make_settings(tls.url, stub, ramp_seconds=0))
        flags.force_write_only("manual_ops", 2)
        wait_for(lambda: flags.get_forced_mode() is None, 20, "the beat's probe over TLS to restore")
        assert any(k.startswith("redbeat:") for k in tls.plain.scan_iter("redbeat:*")), "RedBeat over TLS"
