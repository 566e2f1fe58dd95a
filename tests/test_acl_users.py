"""memguard as the least-privilege ACL users ``memguard acl`` prints, with the default user
disabled, on a private redis-server: reads, a force another process sees, the CLI, the audit trail;
the read-only operator is refused a force in one line naming NOPERM; a NOPERM on the request path
fails open and is counted like any Redis error."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest

from memguard import flags, process
from memguard.domain import events
from memguard.drill.localstack import CeleryProcess, RedisServer, stack_env, wait_for
from memguard.ops import acl, audit

from .conftest import (
    API_KEY,
    RABBITMQ_URL,
    ROOT,
    a_401_forces_and_another_process_sees_it,
    make_settings,
    run_cli,
    worker_and_beat_on_rabbitmq,
)


@pytest.fixture
def acl_server() -> Iterator[tuple[str, str]]:
    """A redis-server whose default user is off: memguard's user and the read-only operator's,
    created from the printed rules; an admin user for the test's own checks."""
    with RedisServer() as server:
        admin = server.client()
        admin.execute_command("ACL", "SETUSER", "admin", "on", ">admin-pw", "~*", "&*", "+@all")
        for rule, password in zip(acl.rules(), ("mg-pw", "ro-pw"), strict=True):
            words = [f">{password}" if w.startswith(">CHANGE-ME") else w for w in rule.split()]
            admin.execute_command(*words)
        admin.execute_command("ACL", "SETUSER", "default", "off")
        base = f"127.0.0.1:{server.port}/0"
        yield f"redis://memguard:mg-pw@{base}", f"redis://memguard-ro:ro-pw@{base}"


def test_memguard_runs_as_its_acl_user_and_the_operator_reads_as_the_read_only_one(acl_server, stub):
    url, read_only_url = acl_server
    rt = process.configure(make_settings(url, stub))
    other = process.build(make_settings(url, stub), hooks=events.Hooks(), count_metrics=False)
    try:
        a_401_forces_and_another_process_sees_it(rt, other, stub)  # tracking and channels as the user
        status = run_cli(read_only_url, "status")
        assert status.returncode == 0 and "forced:      yes, reason auth" in status.stdout, status.stderr
        history = run_cli(read_only_url, "history")
        assert history.returncode == 0 and "forced" in history.stdout, history.stderr
        refused = run_cli(read_only_url, "force")
        assert refused.returncode == 3 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert re.search(r"permission denied at .*NOPERM", refused.stderr), refused.stderr
        assert "Traceback" not in refused.stderr
        cleared = run_cli(url, "clear", "--no-ramp")
        assert cleared.returncode == 0, cleared.stderr
        wait_for(lambda: (v := other.view.current) is not None and v.record is None, 2, "the clear seen")
    finally:
        other.close()


def test_a_worker_and_a_beat_as_the_acl_user_probe_restore_notify_and_audit(acl_server, stub, tmp_path,
                                                                            webhooks):
    """RabbitMQ carries the tasks; memguard's state, RedBeat's schedule and lock, the webhooks'
    claims and the audit trail all go through the printed user."""
    url, read_only_url = acl_server
    with worker_and_beat_on_rabbitmq(url, stub, tmp_path, "acl", MEMORY_WEBHOOK_URLS=webhooks.url) as procs:
        rt = process.configure(make_settings(url, stub, ramp_seconds=0))
        # The first tick's claim starts the webhooks' cursor at the end of the trail: force after it.
        wait_for(lambda: rt.state.client.exists(rt.state.keys.notify_cursor), 20, "the beat's first tick")
        flags.force_write_only("manual_ops", 2)
        wait_for(lambda: flags.get_forced_mode() is None, 20, "the beat's probe to restore, as the user")
        wait_for(lambda: [b["memguard"]["kind"] for b in webhooks.bodies] == ["downgrade", "restore"], 10,
                 "the webhooks, claimed as the user")
        probes = [e for e in audit.history(rt.state.client, rt.state.keys.audit, 20) if e["event"] == "probe"]
        assert [p["result"] for p in probes] == ["success"]
        history = run_cli(read_only_url, "history")
        assert history.returncode == 0 and "probe success" in history.stdout, history.stdout + history.stderr
        # The playbook's lock check, run in the user's project: their app's key, and which beat holds it.
        status = run_cli(read_only_url, "status", "--app", "rabbitapp", cwd=tmp_path,
                         CELERY_BROKER_URL=RABBITMQ_URL, TEST_QUEUE="-")
        assert status.returncode == 0, status.stderr
        holder = f"{socket.gethostname()}:{procs[1].proc.pid}"
        assert re.search(rf"^beat lock:   redbeat::lock held by {re.escape(holder)} for \d+ s", status.stdout,
                         re.M), status.stdout
        for p in procs:
            assert "NOPERM" not in p.output() and "NoPermission" not in p.output(), p.output()[-3000:]


def test_a_noperm_on_the_request_path_fails_open_and_is_counted(acl_server, stub, recorded):
    _, read_only_url = acl_server
    rt = process.configure(make_settings(read_only_url, stub))
    stub.set_fault("503")
    _, meta = rt.guard.call("t", rt.readers.reader.read_context, ("t", 0.2))
    assert meta["source"] == "zep_error", "the read's own outcome, not memguard's"
    troubles = [e for e in recorded if isinstance(e, events.GuardTrouble) and e.kind == "redis_error"]
    assert any("NoPermissionError" in e.detail for e in troubles), troubles


def test_the_printed_rules_name_memguards_keys_channels_and_the_beats_keys():
    out = run_cli(None, "acl")
    assert out.returncode == 0, out.stderr
    user, read_only = [line for line in out.stdout.splitlines() if line.startswith("ACL SETUSER")]
    for part in ("~mem:*", "~{mem}:*", "&mem:*", "&__redis__:invalidate", "~redbeat:*", "+@scripting"):
        assert part in user.split(), part
    assert "+@scripting" not in read_only and "%R~mem:*" in read_only.split()
    guide = (ROOT / "docs" / "redis.md").read_text()
    assert out.stdout in guide, "docs/redis.md shows what memguard acl prints"
    without_beat = run_cli(None, "acl", "--no-beat").stdout
    assert "~redbeat:*" not in without_beat


def users_from(printed: str, server: RedisServer) -> tuple[str, str]:
    """The users ``memguard acl`` printed, created on ``server`` (whose default user goes off);
    their URLs."""
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", "admin", "on", ">admin-pw", "~*", "&*", "+@all")
    rules = [line for line in printed.splitlines() if line.startswith("ACL SETUSER")]
    for rule, password in zip(rules, ("mg-pw", "ro-pw"), strict=True):
        admin.execute_command(*[f">{password}" if w.startswith(">CHANGE-ME") else w for w in rule.split()])
    admin.execute_command("ACL", "SETUSER", "default", "off")
    base = f"127.0.0.1:{server.port}/0"
    return f"redis://memguard:mg-pw@{base}", f"redis://memguard-ro:ro-pw@{base}"


def test_the_ready_apps_beat_runs_as_the_user_that_memguard_acl_app_memguard_prints(stub, tmp_path):
    printed = run_cli(None, "acl", "--app", "memguard")
    assert printed.returncode == 0, printed.stderr
    assert "~memguard:redbeat:*" in printed.stdout.split(), "the ready app's RedBeat prefix is granted"
    assert "~myapp:beat:*" in run_cli(None, "acl", "--redbeat-prefix", "myapp:beat:").stdout.split()
    with RedisServer() as server, RedisServer() as broker:
        url, read_only_url = users_from(printed.stdout, server)
        env = stack_env(url, stub.url, API_KEY, CELERY_BROKER_URL=broker.url,
                        CELERY_RESULT_BACKEND=broker.url, MEMORY_DOWNGRADE_PROBE_INTERVAL_SECONDS="0.5")
        env.pop("CELERY_CONFIG_MODULE", None)
        beat = CeleryProcess("beat", env, str(tmp_path), "ready-beat", cwd=str(tmp_path)).start()
        try:
            holder = f"{socket.gethostname()}:{beat.proc.pid}"
            line = re.compile(rf"^beat lock:   memguard:redbeat::lock held by {re.escape(holder)} for \d+ s",
                              re.M)
            # Verbatim as the playbook has it, as the read-only operator: no --app is the ready app.
            wait_for(lambda: line.search(run_cli(read_only_url, "status").stdout), 20,
                     "the ready app's beat to hold its lock, named")
            log = beat.output()
            assert "NOPERM" not in log and "NoPermission" not in log, log[-3000:]
        finally:
            beat.stop()
