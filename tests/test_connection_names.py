"""Every connection memguard opens names itself: ``CLIENT LIST`` on a shared Redis tells its
views, commands, asyncio clients, beat and command line apart, by host and pid."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from memguard.drill.localstack import RedisServer, wait_for

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


def test_an_idle_process_holds_one_connection_its_view(configure, stub):
    """A failure opens the command connection; once the request path has left it idle it is
    closed, and the watcher's own upkeep (here: explaining a hand write) opens it only for the
    moment it needs it. A private server: no other test's process is connected."""
    from memguard.store.keys import FORCED_MODE_KEY

    from .test_propagation_to_every_view import original_record

    with RedisServer() as server:
        client = server.client()
        pid = os.getpid()

        def roles() -> list[str]:
            ours = [c["name"].split(":") for c in client.client_list()
                    if c.get("name", "").startswith("memguard:") and c["name"].endswith(f":{pid}")]
            return sorted(parts[1] for parts in ours)

        rt = configure(redis_url=server.url)
        stub.set_fault("500")
        assert rt.guard.call("t", rt.readers.reader.read_context, ("t", 0.2))[1]["source"] == "zep_error"
        stub.set_fault("ok")
        assert roles() == ["cmd", "view"], "the failure's script ran on the command connection"
        idle = rt.settings.command_idle_seconds
        wait_for(lambda: roles() == ["view"], idle + 6, "the idle command connection to close")
        client.set(FORCED_MODE_KEY, original_record())  # explained by this process's watcher
        wait_for(lambda: (v := rt.view.current) is not None and v.record is not None, 2,
                 "the hand write explained")
        wait_for(lambda: roles() == ["view"], 6, "the command connection closed after the upkeep")
        assert rt.guard.call("t", lambda t: t, ("t",))[1]["source"] == "write_only_forced"
        # MEMGUARD_COMMAND_IDLE_SECONDS=0 keeps it open, however long unused: the same upkeep
        # (explaining a hand write) leaves the command connection in place.
        kept = configure(redis_url=server.url, command_idle_seconds=0)
        kept.ops.status({"via": "test"})
        kept.state.usage.at = 0.0  # as if unused for ever
        client.delete(FORCED_MODE_KEY)
        wait_for(lambda: (v := kept.view.current) is not None and v.record is None, 2,
                 "the hand delete explained")
        assert roles() == ["cmd", "view"]
