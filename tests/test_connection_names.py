"""Every connection memguard opens names itself: ``CLIENT LIST`` on a shared Redis tells its
views, commands, asyncio clients, beat and command line apart, by host and pid."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from memguard.drill.localstack import wait_for

from .conftest import API_KEY

HOST = socket.gethostname()


def names(redis_db) -> set[str]:
    return {c["name"] for c in redis_db.client_list() if c.get("name")}


def test_a_process_names_its_view_and_its_commands(configure, redis_db):
    rt = configure()
    rt.ops.status({"via": "test"})
    pid = os.getpid()
    wait_for(lambda: {f"memguard:view:{HOST}:{pid}", f"memguard:cmd:{HOST}:{pid}"} <= names(redis_db), 5,
             "the view's and the commands' connections named")
    assert rt.state.client.client_getname() == f"memguard:cmd:{HOST}:{pid}"


def test_the_command_line_and_the_beat_name_theirs(stack):
    redis_db = stack.server.client()
    program = ("from memguard import process; p = process.configure(watch=False, count_metrics=False); "
               "print(p.state.client.client_getname())")
    out = subprocess.run([sys.executable, "-c", program], env=stack.env(ZEP_API_KEY=API_KEY),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().startswith(f"memguard:cli:{HOST}:"), out.stderr[-2000:]
    stack.spawn("beat", "named-beat")
    wait_for(lambda: any(n.startswith(f"memguard:beat:{HOST}:") for n in names(redis_db)), 20,
             "the beat's RedBeat connection named")
