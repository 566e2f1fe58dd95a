"""``memguard doctor`` against real servers: a healthy deployment, and each way one goes wrong
(a user missing a permission, no beat, a probe that times out, a webhook that 404s), each giving
the line it should, from the command line as an operator runs it and from a worker's task."""

from __future__ import annotations

import json
import re
import shlex

import redis

from memguard.drill.localstack import RedisServer, wait_for
from memguard.ops import acl

from .conftest import API_KEY, ROOT, run_cli


def doctor(stack, *args: str, **env: str) -> tuple[int, dict[str, list[str]]]:
    """Run ``memguard doctor`` with the stack's environment; its lines by check name."""
    names = ("REDIS_URL", "ZEP_API_URL", "ZEP_API_KEY", "MEMORY_WEBHOOK_URLS")
    full = {k: v for k, v in stack.env(**env).items() if k in names}
    url = full.pop("REDIS_URL")
    out = run_cli(url, "doctor", *args, **full)
    assert "Traceback" not in out.stderr, out.stderr
    lines: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^(ok|warn|fail) +(\S+) +(.+)$", line)
        assert m, f"not a check line: {line!r}"
        lines.setdefault(m[2], []).append(f"{m[1]} {m[3]}")
    return out.returncode, lines


def test_a_healthy_deployment_is_all_ok_from_the_cli_and_from_a_worker(stack, webhooks):
    stack.spawn("worker", "doctor-worker", "-P", "solo", MEMORY_WEBHOOK_URLS=webhooks.url)
    stack.spawn("beat", "doctor-beat")
    wait_for(lambda: "held by" in run_cli(stack.server.url, "status").stdout, 20, "the beat's lock")
    wait_for(lambda: "last tick" in run_cli(stack.server.url, "status").stdout, 20, "a probe tick")
    code, lines = doctor(stack, MEMORY_WEBHOOK_URLS=webhooks.url)
    assert code == 0, lines
    assert {name: [v.split()[0] for v in vs] for name, vs in lines.items()} == {
        "redis": ["ok"], "permissions": ["ok"], "beat": ["ok"], "clock": ["ok"], "eviction": ["ok"],
        "probe": ["ok"], "webhook": ["ok"], "settings": ["ok"], "guards": ["ok"]}
    assert re.search(r"Redis \d+\.\d+", lines["redis"][0])
    held = r"held by \S+:\d+ for \d+ s, renewed within \d+ s; last probe tick"
    assert re.search(held, lines["beat"][0]), lines["beat"]
    test_body = webhooks.bodies[-1]
    assert test_body["memguard"]["kind"] == "test" and "ignore it" in test_body["text"]
    # The probe never changed the mode; it is in the trail as the doctor's.
    assert "forced:      no" in run_cli(stack.server.url, "status").stdout
    assert "doctor_probe" in run_cli(stack.server.url, "history").stdout
    # The playbook's own lines, verbatim, against this stack (the ready app).
    playbook = (ROOT / "runbook" / "playbook.md").read_text()
    verbatim = re.findall(r"^memguard (status --app memguard|doctor --app memguard)\b", playbook, re.M)
    assert sorted(set(verbatim)) == ["doctor --app memguard", "status --app memguard"]
    for line in set(verbatim):
        out = run_cli(stack.server.url, *shlex.split(line), ZEP_API_URL=stack.stub.url, ZEP_API_KEY=API_KEY)
        assert out.returncode == 0 and "held by" in out.stdout, out.stdout + out.stderr
    # From a worker: the same checks in the task's result, and in its logs.
    result = stack.sender.send_task("memguard.doctor").get(timeout=30)
    assert {r["check"]: r["verdict"] for r in result}["beat"] == "ok"
    assert not [r for r in result if r["verdict"] == "fail"], result


def test_no_beat_and_a_probe_that_times_out_fail_and_exit_1(stack):
    stack.stub.set_fault("hang")
    code, lines = doctor(stack)
    assert code == 1
    assert lines["beat"] == ["fail no beat holds memguard:redbeat::lock: no hold would end by a probe; run "
                             "celery beat for this app (memguard.install makes memguard.beat.Scheduler its "
                             "scheduler)"]
    assert re.match(r"fail timeout: \w+ after \d+ ms of 150", lines["probe"][0]), lines["probe"]
    assert lines["redis"][0].startswith("ok ")


def test_a_webhook_that_404s_is_a_warning_with_its_secret_path_masked(stack):
    hook = f"{stack.stub.url}/services/T000/B000/SECRET-PART"
    _, lines = doctor(stack, MEMORY_WEBHOOK_URLS=hook)
    assert lines["webhook"][0].startswith("warn slack http://127.0.0.1/… answered HTTP 404"), lines["webhook"]
    assert "SECRET-PART" not in json.dumps(lines)


def test_as_memguards_acl_user_it_tries_each_command_and_says_what_it_cannot_tell(stack, stub):
    with RedisServer() as server:
        admin = server.client()
        rules = acl.rules(redbeat_prefix="memguard:redbeat:")
        admin.execute_command(*[">mg-pw" if w.startswith(">CHANGE") else w for w in rules[0].split()])
        # The same user without the invalidation channel and without scripts: what a hand-made
        # user often lacks.
        crippled = [w for w in rules[0].split() if w not in ("&__redis__:invalidate", "+@scripting")]
        crippled[2] = "memguard-lite"
        admin.execute_command(*[">lite-pw" if w.startswith(">CHANGE") else w for w in crippled])
        admin.execute_command("ACL", "SETUSER", "admin", "on", ">admin-pw", "~*", "&*", "+@all")
        admin.execute_command("ACL", "SETUSER", "default", "off")
        as_admin = redis.Redis(port=server.port, username="admin", password="admin-pw", decode_responses=True)
        base = f"127.0.0.1:{server.port}/0"
        env = {"ZEP_API_URL": stub.url, "ZEP_API_KEY": "k"}
        full = run_cli(f"redis://memguard:mg-pw@{base}", "doctor", "--json", **env)
        checks = {c["check"]: c for c in map(json.loads, full.stdout.splitlines())}
        assert checks["permissions"]["verdict"] == "ok", checks["permissions"]
        assert "each command tried on a scratch key" in checks["permissions"]["detail"]
        assert checks["eviction"]["verdict"] == "warn"
        assert checks["eviction"]["detail"].startswith("could not tell: this user may not run INFO or CONFIG")
        assert as_admin.keys("*doctor*") == [], "the scratch keys are gone"
        lite = run_cli(f"redis://memguard-lite:lite-pw@{base}", "doctor", **env)
        line = next(x for x in lite.stdout.splitlines() if x.startswith("fail permissions"))
        assert "EVAL" in line and "SUBSCRIBE __redis__:invalidate" in line, line
        assert "memguard acl" in line and lite.returncode == 1
