"""A tenant's guard under the default guard, against real Redis and the Zep stub: a 401 forces
the tenant alone; timeouts count toward the parent; a watcher of named views sees both."""

from __future__ import annotations

from memguard import process
from memguard.domain import events
from memguard.drill.localstack import wait_for
from memguard.request.guard import Guard
from memguard.request.view import GuardView
from memguard.request.watch import Watcher
from memguard.request.zep import Readers
from memguard.store.keys import Keys
from memguard.store.state import State
from tests.conftest import make_settings


def _tenant(rt: process.Process, name: str) -> tuple[Guard, Watcher]:
    hooks = events.GuardHooks(process.hooks, name, "zep-t.*")
    keys = Keys.for_guard(name, rt.state.keys.prefix)
    state = State(rt.state.client, rt.settings, hooks, keys=keys, shared=rt.state)  # type: ignore[arg-type]
    view = GuardView(state, rt.settings.probe_grace_seconds, hooks)  # type: ignore[arg-type]
    state.on_change = view.apply_notice
    watcher = Watcher(rt.state, rt.settings.probe_grace_seconds, process.hooks, views=[view])
    watcher.start()
    assert watcher.wait_ready(5), "the named view"
    return Guard(rt.settings, state, hooks, view, name=name, parent=rt.guard), watcher


def test_a_401_forces_the_tenant_alone_and_timeouts_force_the_parent(configure, redis_db, redis_server, stub):
    rt = configure()
    acme, acme_watch = _tenant(rt, "zep-t.acme")
    other, other_watch = _tenant(rt, "zep-t.other")
    try:
        wrong_key = Readers(make_settings(redis_server.url, stub, zep_api_key="not-the-key")).reader
        _, meta = acme.call("t1", wrong_key.read_context, ("t1", 0.2))
        assert meta["reason"] == "auth"
        assert redis_db.exists("mem:g:zep-t.acme:mode:forced:v1")
        assert not redis_db.exists("mem:mode:forced:v1"), "the 401 is the tenant's key: its own guard"
        wait_for(lambda: (v := acme.view.current) is not None and v.record is not None, 2,  # type: ignore[union-attr]
                 "the tenant's view")
        reader = rt.readers.reader
        assert acme.call("t1", reader.read_context, ("t1", 0.2))[1]["source"] == "write_only_forced"
        assert other.call("t1", reader.read_context, ("t1", 0.2))[1]["source"] == "zep", "the other tenant"
        assert rt.guard.call("t1", reader.read_context, ("t1", 0.2))[1]["source"] == "zep", "the parent"

        stub.set_fault("hang")
        for _ in range(3):
            other.call("t1", reader.read_context, ("t1", 0.2))
        assert redis_db.exists("mem:mode:forced:v1"), "timeouts forced the parent"
        assert not redis_db.exists("mem:g:zep-t.other:mode:forced:v1")
        assert not redis_db.exists("mem:g:zep-t.other:read:consec_failures"), "counted toward the parent"
        stub.set_fault("ok")
        wait_for(lambda: (v := rt.view.current) is not None and v.record is not None, 2, "parent's view")
        _, meta = other.call("t1", reader.read_context, ("t1", 0.2))
        assert (meta["source"], meta["guard"]) == ("write_only_forced", "default"), "blocked by its parent"
    finally:
        acme_watch.stop()
        other_watch.stop()
