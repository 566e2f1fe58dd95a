"""Game days end to end, against the real redis-server, the Zep stub and separate processes: an
experiment started from the command line fails the asked share of conversations, the same ones
in every process that allows it and none in one that does not, and nothing of theirs reaches
Zep; it ends by ``stop`` within a second, by its own end, and by an operator's force or clear;
the operator sees it in status, history, webhooks and metrics; a process of the release before
game days reads normally beside it."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY

import memguard
from memguard import process, service
from memguard.drill.localstack import stack_env

from .conftest import API_KEY, ROOT, run_cli, wait_for

BY = {"via": "test"}
CONVERSATIONS = [f"conv-{i}" for i in range(1000)]
EARLIER_RELEASE = "af9d1a5"  # the main before game days


def _reader(env: dict[str, str], conn: Any) -> None:
    """A separate process reading through its own guard, on command: ("read", ids) answers each
    read's source; ("normal", ids) answers the wall time when none of them is injected any more."""
    os.environ.update(env)
    assert process.get().watcher.wait_ready(5)
    conn.send("ready")
    while (command := conn.recv()) is not None:
        kind, ids = command
        if kind == "read":
            conn.send([service.fetch_thread_context(t)[1]["source"] for t in ids])
            continue
        deadline = time.time() + 15
        while time.time() < deadline and any(service.fetch_thread_context(t)[1]["source"] == "chaos"
                                             for t in ids):
            time.sleep(0.002)
        conn.send(time.time())


@contextlib.contextmanager
def readers(redis_url: str, stub: Any, *chaos: str) -> Iterator[list[Any]]:
    """One reader process per setting of MEMGUARD_CHAOS in ``chaos``; their pipes."""
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    try:
        for setting in chaos:
            parent, child = ctx.Pipe()
            env = stack_env(redis_url, stub.url, API_KEY, MEMGUARD_CHAOS=setting,
                            MEMORY_ZEP_READ_TIMEOUT_MS="500")
            procs.append(ctx.Process(target=_reader, args=(env, child)))
            procs[-1].start()
            pipes.append(parent)
        for pipe in pipes:
            assert pipe.poll(30) and pipe.recv() == "ready"
        yield pipes
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def ask(pipe: Any, command: tuple[str, list[str]]) -> Any:
    pipe.send(command)
    assert pipe.poll(60), f"a reader did not answer {command[0]}"
    return pipe.recv()


def injected(pipe: Any, ids: list[str] = CONVERSATIONS) -> set[str]:
    return {t for t, source in zip(ids, ask(pipe, ("read", ids)), strict=True) if source == "chaos"}


def start(redis_url: str, *args: str) -> dict[str, Any]:
    run = run_cli(redis_url, "chaos", "start", *args, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_an_experiment_fails_the_asked_share_the_same_in_every_process_that_allows_it(
        redis_server, redis_db, stub):
    with readers(redis_server.url, stub, "allow", "allow", "off") as (first, second, off):
        started = start(redis_server.url, "--fault", "error:503", "--share", "30%", "--for", "10m")
        assert (started["fault"], started["share_percent"], started["seconds_left"]) == \
            ("error:503", 30.0, 600.0)
        wait_for(lambda: injected(first, CONVERSATIONS[:50]), 5, "the first reader to carry the experiment")
        picked = injected(first)
        assert abs(100 * len(picked) / len(CONVERSATIONS) - 30) <= 5, len(picked)
        assert injected(second) == picked, "the same conversations in every process"
        assert injected(first) == picked, "and on every read"
        assert ask(off, ("read", CONVERSATIONS)) == ["zep"] * len(CONVERSATIONS), "off: ignored"
        assert all(stub.reads_of(t) == 1 for t in picked), "only the process that ignores it read them"
        assert all(stub.reads_of(t) == 4 for t in [t for t in CONVERSATIONS[50:] if t not in picked][:50])

        status = run_cli(redis_server.url, "status").stdout
        assert "chaos:       error:503 on 30% of conversations, 9m 5" in status, status
        sample = sorted(picked)[:20]
        stop = run_cli(redis_server.url, "chaos", "stop")
        returned = time.time()
        assert stop.stdout.startswith("chaos stopped: error:503 on 30% of conversations"), stop.stdout
        for pipe in (first, second):
            assert ask(pipe, ("normal", sample)) - returned <= 1.0, "normal within 1 s of stop returning"
        assert not injected(first) and not injected(second)
    history = run_cli(redis_server.url, "history").stdout
    assert "chaos started: error:503 on 30.0% of conversations for 10m" in history, history
    assert "chaos stopped: error:503" in history and "(user " in history.split("chaos stopped")[1], history


def test_an_experiment_ends_by_itself_at_its_end_and_the_next_tick_records_it_once(
        configure, redis_server, redis_db, stub):
    rt = configure()
    with readers(redis_server.url, stub, "allow") as (reader,):
        started = start(redis_server.url, "--fault", "timeout", "--share", "50", "--for", "5s")
        wait_for(lambda: injected(reader, CONVERSATIONS[:20]), 5, "the reader to carry the experiment")
        ended_at = ask(reader, ("normal", CONVERSATIONS[:100]))
        assert started["end"] - 0.5 <= ended_at <= started["end"] + 1.0, (started["end"], ended_at)
    assert redis_db.exists("mem:mode:chaos"), "no tick yet: the record is there, its time is up"
    assert "chaos" not in rt.ops.status(BY)
    for _ in range(2):
        rt.ops.probe(BY, probe=lambda timeout_s: None, scheduled=True)
    assert not redis_db.exists("mem:mode:chaos")
    history = run_cli(redis_server.url, "history").stdout
    assert history.count("chaos ended: timeout on 50.0% of conversations for 5s") == 1, history
    assert "its time was up (started by via cli" in history, history


def test_an_operators_force_or_clear_ends_the_experiment(configure, redis_server, redis_db, stub):
    rt = configure(chaos="allow")
    for ending, words in (("force", "by an operator's force"), ("clear", "by an operator's clear")):
        start(redis_server.url, "--fault", "error:500", "--share", "100", "--for", "1m")
        wait_for(lambda: rt.guard.call("t", lambda: "c")[1]["source"] == "chaos", 2, "the experiment")
        if ending == "force":
            out = run_cli(redis_server.url, "force", "--ttl", "60").stdout
            assert "and ended the chaos experiment that was running" in out, out
        ended = run_cli(redis_server.url, "clear", "--no-ramp").stdout
        if ending == "clear":
            assert ended.startswith("and ended the chaos experiment that was running"), ended
        wait_for(lambda: rt.guard.call("t", lambda: "c")[1]["source"] == "zep", 2, "reads normal again")
        assert not redis_db.exists("mem:mode:chaos")
        assert words in run_cli(redis_server.url, "history").stdout


def test_injected_faults_trip_the_fleet_only_when_asked(configure, redis_server, stub):
    rt = configure(chaos="allow")
    before = REGISTRY.get_sample_value("memory_chaos_injected_total", {"fault": "error", "guard": "default"})
    start(redis_server.url, "--fault", "error:503", "--share", "100", "--for", "1m")
    wait_for(lambda: rt.guard.call("t", lambda: "c")[1]["source"] == "chaos", 2, "the experiment")
    for i in range(10):
        assert service.fetch_thread_context(f"t{i}")[1]["reason"] == "http_5xx"
    assert not rt.ops.status(BY)["forced"] and rt.ops.status(BY)["fail_count"] == 0, "no trip by default"
    assert REGISTRY.get_sample_value("memory_chaos_injected_total",
                                     {"fault": "error", "guard": "default"}) - (before or 0) == 11
    start(redis_server.url, "--fault", "error:503", "--share", "100", "--for", "1m", "--trip")
    wait_for(lambda: rt.view.current is not None and rt.view.current.chaos is not None
             and rt.view.current.chaos.chaos.trip, 2, "the experiment with trip")
    for i in range(3):
        service.fetch_thread_context(f"t{i}")
    status = rt.ops.status(BY)
    assert status["forced"] and status["reason"] == "consecutive_failures", status
    assert "chaos" in status, "an automatic trip leaves the experiment running: the whole path runs"


def test_a_named_guards_experiment_leaves_the_default_guard_be(configure, redis_server, stub):
    from memguard.domain.declared import registry

    registry.declare("vectordb", hold_seconds=60)
    try:
        configure(chaos="allow")

        @memguard.guarded(guard="vectordb")
        def vector(thread_id: str) -> str:
            return "v"

        start(redis_server.url, "--guard", "vectordb", "--fault", "auth", "--share", "100", "--for", "1m")
        wait_for(lambda: vector("t")[1]["source"] == "chaos", 2, "the named guard's experiment")
        assert vector("t")[1]["status"] == 401
        assert service.fetch_thread_context("t")[1]["source"] == "zep"
        guards = run_cli(redis_server.url, "guards").stdout
        assert "vectordb" in guards and "chaos: auth on 100% of conversations" in guards, guards
        stopped = run_cli(redis_server.url, "chaos", "stop", "--guard", "vectordb").stdout
        assert stopped.startswith("guard:       vectordb\nchaos stopped"), stopped
    finally:
        registry.__init__()  # type: ignore[misc]


def test_a_webhook_announces_the_start_and_the_stop(configure, redis_server, webhooks):
    rt = configure(webhook_urls=(("slack", webhooks.url),))
    rt.notifier.deliver()  # the first delivery starts the fleet's cursor at the stream's end
    start(redis_server.url, "--fault", "latency:300ms", "--share", "10", "--for", "90s")
    run_cli(redis_server.url, "chaos", "stop")
    rt.notifier.deliver()
    texts = [body["text"] for body in webhooks.bodies]
    assert texts[0].startswith("memguard: chaos experiment started: latency:300ms on 10.0% of conversations "
                               "for 90 s"), texts
    assert texts[1].startswith("memguard: chaos experiment stopped (by memguard chaos stop)"), texts


def test_bad_input_is_refused_by_name_and_changes_nothing(redis_server, redis_db):
    run = run_cli(redis_server.url, "chaos", "start", "--fault", "error:404", "--share", "0", "--for", "2h")
    assert run.returncode == 2 and not redis_db.exists("mem:mode:chaos")
    for words in ("fault must be one of", "share must be a percentage", "duration must be 5 s to 1 h"):
        assert words in run.stderr, run.stderr


def test_a_process_of_the_release_before_game_days_reads_normally_beside_an_experiment(
        configure, redis_server, stub, tmp_path):
    """Rolling upgrades: the earlier release does not know the record and reads every conversation."""
    rt = configure(chaos="allow")
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "archive", EARLIER_RELEASE, "memguard"], capture_output=True, check=True,
                             cwd=ROOT)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    start(redis_server.url, "--fault", "error:503", "--share", "100", "--for", "1m")
    wait_for(lambda: rt.guard.call("t0", lambda: "c")[1]["source"] == "chaos", 2, "the experiment here")
    program = ("import json; from memguard import service; "
               "print(json.dumps([service.fetch_thread_context(f't{i}')[1]['source'] for i in range(100)]))")
    env = {**stack_env(redis_server.url, stub.url, API_KEY, MEMGUARD_CHAOS="allow"), "PYTHONPATH": str(old)}
    run = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert set(json.loads(run.stdout)) == {"zep"}
    assert all(stub.reads_of(f"t{i}") == 1 for i in range(1, 100))


def test_a_named_guards_experiment_is_ended_and_recorded_by_the_prober_at_its_end(
        configure, redis_server, redis_db):
    from memguard.domain.declared import registry
    from memguard.store.keys import HOLDS_KEY

    registry.declare("vectordb", hold_seconds=60, probe=lambda name, timeout_s: None)
    try:
        rt = configure(chaos="allow")
        started = rt.ops_for("vectordb").chaos_start(BY, fault="timeout", share="50", duration="5s")
        assert redis_db.zscore(HOLDS_KEY, "vectordb") == int(started["end"] * 1000), "the prober's index"
        assert rt.probe_due(BY) == {}, "not due before its end"
        wait_for(lambda: rt.probe_due(BY).get("vectordb", {}).get("result") == "idle", 10, "its end's tick")
        assert not redis_db.exists("mem:g:vectordb:mode:chaos") and redis_db.zcard(HOLDS_KEY) == 0
        history = run_cli(redis_server.url, "history", "--guard", "vectordb").stdout
        assert history.count("chaos ended: timeout on 50.0% of conversations for 5s") == 1, history
    finally:
        registry.__init__()  # type: ignore[misc]


def test_a_named_guards_experiment_outliving_its_hold_is_ticked_again_at_its_end(
        configure, redis_server, redis_db):
    """The index keeps the sooner of a hold and an experiment: the tick at the hold's end restores
    the guard and indexes it again at the experiment's end, whose tick records it."""
    from memguard.domain.declared import registry
    from memguard.store.keys import HOLDS_KEY

    registry.declare("vectordb", hold_seconds=60, ramp_seconds=0, probe=lambda name, timeout_s: None)
    try:
        rt = configure(chaos="allow")
        ops = rt.ops_for("vectordb")
        held = ops.force(BY, reason="manual_ops", ttl_seconds=2)
        started = ops.chaos_start(BY, fault="error:503", share="50", duration="6s")
        assert redis_db.zscore(HOLDS_KEY, "vectordb") == int(held["until"] * 1000), "the hold: sooner"
        wait_for(lambda: rt.probe_due(BY).get("vectordb", {}).get("result") == "success", 10, "its tick")
        assert redis_db.exists("mem:g:vectordb:mode:chaos"), "a clear by the probe is not an operator's"
        wait_for(lambda: (rt.probe_due(BY), not redis_db.exists("mem:g:vectordb:mode:chaos"))[1], 10,
                 "the experiment's end to be ticked")
        assert time.time() >= started["end"]
        history = run_cli(redis_server.url, "history", "--guard", "vectordb").stdout
        assert history.count("chaos ended: error:503 on 50.0% of conversations for 6s") == 1, history
    finally:
        registry.__init__()  # type: ignore[misc]
