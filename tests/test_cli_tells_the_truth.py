"""The command line tells the operator the truth, readably: which Redis, what failed and what to
check, exit codes that follow the action, times a person can read, and no traceback ever."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from memguard import process, service
from memguard.config.settings import Settings
from memguard.drill.localstack import RedisServer, free_port
from memguard.store.keys import AUDIT_KEY, FORCED_MODE_KEY, PROBE_HEARTBEAT_KEY

from .conftest import API_KEY, make_settings


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memguard", *args], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def env(redis_server, redis_db) -> dict[str, str]:
    return {"REDIS_URL": redis_server.url, "ZEP_API_KEY": API_KEY}


ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def test_every_command_names_its_redis_and_shows_readable_times(env, redis_server):
    forced = cli(env, "force", "--ttl", "600")
    assert forced.returncode == 0, forced.stderr
    assert re.fullmatch(rf"forced write_only fleet-wide: reason manual_ops until {ISO} \((10m|9m 59s) left\)",
                        forced.stdout.splitlines()[0]), forced.stdout
    assert forced.stdout.splitlines()[-1] == f"redis:       {redis_server.url}"
    status = cli(env, "status").stdout.splitlines()
    assert status[0] == "mode:        write_only (base read_write)"
    assert re.fullmatch(r"forced:      yes, reason manual_ops, via cli on \S+:\d+ \(user \S+\)", status[1])
    assert re.fullmatch(rf"until:       {ISO} \((10m|9m 5\ds) left, phase held, hold #1 of 10m\)", status[2])
    assert status[-1] == f"redis:       {redis_server.url}"
    for command in (["clear"], ["probe"], ["history", "-n", "3"]):
        assert cli(env, *command).stdout.splitlines()[-1] == f"redis:       {redis_server.url}", command
    as_json = json.loads(cli(env, "status", "--json").stdout)
    assert as_json["redis"] == redis_server.url and isinstance(as_json["redis_time"], float)


def test_a_force_keeps_a_longer_hold_unless_replace_is_asked(env, redis_db):
    cli(env, "force", "--ttl", "3600")
    until = json.loads(redis_db.get(FORCED_MODE_KEY))["until"]
    kept = cli(env, "force", "--ttl", "60", "--reason", "zep_maintenance")
    assert kept.returncode == 0
    assert kept.stdout.startswith("kept the longer hold in place: reason manual_ops until ")
    assert "add --replace to shorten it" in kept.stdout
    assert json.loads(redis_db.get(FORCED_MODE_KEY))["until"] == until
    replaced = json.loads(cli(env, "force", "--ttl", "60", "--replace", "--json").stdout)
    assert replaced["forced"] is True and replaced["kept"] is False and replaced["until"] < until


def test_a_manual_probe_says_manual_and_is_not_the_beat(env, redis_db):
    out = cli(env, "probe")
    assert out.stdout.splitlines()[0] == "manual probe: idle (no hold to probe)", out.stdout
    assert json.loads(cli(env, "probe", "--json").stdout)["manual"] is True
    assert not redis_db.exists(PROBE_HEARTBEAT_KEY)
    assert "no probe tick seen recently: is celery beat running?" in cli(env, "status").stdout


def test_force_help_lists_the_reasons(env):
    out = cli(env, "force", "--help")
    for reason in ("manual_ops", "auth", "consecutive_failures", "probe_failed"):
        assert reason in out.stdout


def test_a_done_action_exits_0_and_says_what_failed_after_it(env, redis_db):
    redis_db.set(AUDIT_KEY, "not a stream")  # the audit entry after the force cannot be written as is
    out = cli(env, "force", "--ttl", "60")
    assert out.returncode == 0, out.stderr
    assert redis_db.exists(FORCED_MODE_KEY)
    assert out.stderr.startswith("memguard: note: corrupt_state during audit (the force itself was done)")
    assert redis_db.type(AUDIT_KEY) == "stream", "the next write replaced it"


def test_a_closed_pipe_ends_quietly(env, redis_db):
    for i in range(2000):  # more lines than a pipe holds: the reader is gone before the writer is done
        redis_db.xadd(AUDIT_KEY, {"event": "probe", "result": "idle", "duration_ms": str(i)})
    script = f"{sys.executable} -m memguard history -n 2000 | head -1; echo exit=${{PIPESTATUS[0]}}"
    out = subprocess.run(["bash", "-c", script], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                         text=True, timeout=60)
    assert out.stderr == "", out.stderr
    assert out.stdout.splitlines()[-1] == "exit=0"


def test_json_never_prints_nan(env, redis_db):
    redis_db.set(FORCED_MODE_KEY, '{"mode": "write_only", "until": NaN, "reason": "x"}')
    out = cli(env, "status", "--json")
    assert out.returncode == 0 and "NaN" not in out.stdout
    st = json.loads(out.stdout)
    assert st["forced"] is False and "until is not a finite number" in st["state_problems"]


# -- Redis failures, told apart ------------------------------------------------------------------


def one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_refused_is_told_apart():
    line = one_error_line(cli({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, "status"))
    assert line.startswith("memguard: connection refused at redis://127.0.0.1:") and "check REDIS_URL" in line


def test_a_wrong_password_is_told_apart_and_never_shown():
    with RedisServer() as server:
        server.client().config_set("requirepass", "right#pw")
        url = f"redis://:wr%23ng%2Fpw@127.0.0.1:{server.port}/0"
        line = one_error_line(cli({"REDIS_URL": url}, "status"))
    assert line == (f"memguard: authentication failed at redis://:***@127.0.0.1:{server.port}/0: "
                    "check the user and password in REDIS_URL")


def test_a_database_that_does_not_exist_is_told_apart(redis_server):
    line = one_error_line(cli({"REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/99"}, "status"))
    assert line == (f"memguard: redis://127.0.0.1:{redis_server.port}/99 has no such database: "
                    "check the number after the host in REDIS_URL")


def test_a_hung_redis_is_a_timeout_after_the_cli_s_own_budget():
    with RedisServer() as server:
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            line = one_error_line(cli({"REDIS_URL": server.url}, "status"))
            took = time.monotonic() - started
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
    assert line == (f"memguard: {server.url} did not answer within 2 s: check the host and port in REDIS_URL "
                    "and the network")
    assert took >= 2, "the CLI waits longer than the request path's 50 ms"


def test_sentinels_that_are_down_are_told_apart():
    url = f"redis+sentinel://127.0.0.1:{free_port()}/mymaster/0"
    line = one_error_line(cli({"REDIS_URL": url}, "status"))
    assert "answered for its master: check the sentinels and the service name in REDIS_URL" in line


@pytest.mark.parametrize("value,named", [
    ("redis://127.0.0.1:6379/abc", "REDIS_URL"),
    ("redis://:p#ss@127.0.0.1:6379/0", "REDIS_URL"),
])
def test_a_bad_redis_url_is_refused_in_one_line_without_its_password(value, named):
    out = cli({"REDIS_URL": value}, "status")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert named in out.stderr and "p#ss" not in out.stderr and "percent-encoded" in out.stderr


def test_a_listening_socket_that_never_answers_is_a_timeout():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        line = one_error_line(cli({"REDIS_URL": f"redis://127.0.0.1:{sock.getsockname()[1]}/0"}, "status"))
    assert "did not answer within 2 s" in line


CORRUPT = {
    "holds many": '{"mode": "write_only", "until": %(until)s, "holds": "many"}',
    "until true": '{"mode": "write_only", "until": true}',
    "until NaN": '{"mode": "write_only", "until": NaN}',
    "until 1e400": '{"mode": "write_only", "until": 1e400}',
    "until as a string": '{"mode": "write_only", "until": "9999999999"}',
    "until in 2286": '{"mode": "write_only", "until": 9999999999}',
}


@pytest.mark.parametrize("name", [*sorted(CORRUPT), "a hash", "a list"])
def test_a_corrupt_record_fails_open_is_named_and_every_tool_works_over_it(name, env, redis_db, stub):
    if name == "a hash":
        redis_db.hset(FORCED_MODE_KEY, "mode", "write_only")
    elif name == "a list":
        redis_db.rpush(FORCED_MODE_KEY, "write_only")
    else:
        redis_db.set(FORCED_MODE_KEY, CORRUPT[name] % {"until": time.time() + 600})
    redis_db.set("mem:state:version", "xyz")
    status = cli(env, "status")
    assert status.returncode == 0 and "forced:      no" in status.stdout, status.stdout + status.stderr
    warning = [ln for ln in status.stdout.splitlines() if ln.startswith("WARNING:")]
    assert len(warning) == 1 and FORCED_MODE_KEY in warning[0] and "mem:state:version" in warning[0], warning
    # Failures are counted and the fleet is forced automatically (the bad value is replaced).
    rt = process.configure(Settings(redis_url=env["REDIS_URL"], zep_api_url=stub.url, zep_api_key=API_KEY))
    try:
        stub.set_fault("503")
        for _ in range(3):
            service.fetch_thread_context("t")
        assert json.loads(redis_db.get(FORCED_MODE_KEY))["reason"] == "consecutive_failures"
    finally:
        rt.close()
    for command in (["clear"], ["force", "--ttl", "60"], ["clear"], ["probe"]):
        out = cli(env, *command)
        assert out.returncode == 0, (command, out.stderr)
    assert "WARNING" not in cli(env, "status").stdout


def test_status_says_when_no_memguard_process_follows_this_redis_and_counts_those_that_do(env, stub):
    alone = cli(env, "status")
    assert alone.returncode == 0, alone.stderr
    assert f"watchers:    none: no memguard process follows this Redis; is it the fleet's? REDIS_URL is " \
           f"{env['REDIS_URL']}" in alone.stdout
    watching = [process.build(make_settings(env["REDIS_URL"], stub), count_metrics=False) for _ in range(2)]
    try:
        for rt in watching:
            assert rt.watcher.wait_ready(5)
        seen = cli(env, "status")
        assert "watchers:    2 memguard processes follow this Redis" in seen.stdout, seen.stdout
        assert json.loads(cli(env, "status", "--json").stdout)["watchers"] == 2
    finally:
        for rt in watching:
            rt.close()


def test_status_shows_a_trip_as_a_trip_not_as_four_of_three(env, redis_db):
    redis_db.set("mem:read:consec_failures", 4, ex=60)
    out = cli(env, "status")
    assert "failures:    4 in the current window: the threshold (3) was reached, but nothing is forced" \
        in out.stdout, out.stdout
    assert "of 3" not in out.stdout
