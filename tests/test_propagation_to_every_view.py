"""Freshness pushed by the server: any writer is seen by another process within 100 ms, a
change costs the fleet O(1) commands, an idle process almost none, and a dead or paused
connection lapses the view (reads then go to Redis) until tracking is back."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from memguard import flags, process, service
from memguard.config.settings import Settings
from memguard.domain import events
from memguard.drill.localstack import RedisServer, wait_for
from memguard.store.keys import EXPLAIN_LOCK_KEY, FORCED_MODE_KEY

TRIALS = 10
BOUND_MS = 100  # the README's freshness bound: any writer is seen within 100 ms
LIVENESS_BOUND_S = 5.0  # the README's liveness bound: no view serves a state older than 5 s
HAND_WRITE_ROUND_TRIPS = 24  # the README: a hand write costs at most 24 round trips


def _reader(url: str, conn) -> None:
    """Another process: report (perf_counter) when its guard first sees the wanted state."""
    rt = process.configure(Settings(redis_url=url, zep_api_key="x"))
    rt.watcher.wait_ready(5)
    conn.send("ready")
    while (want := conn.recv()) is not None:
        if want == "live":  # wait until the view is trusted again (after a reconnect)
            deadline = time.monotonic() + 10
            while ((v := rt.view.current) is None or time.monotonic() >= v.valid_until) \
                    and time.monotonic() < deadline:
                time.sleep(0.005)
            conn.send(time.monotonic() < deadline)
            continue
        conn.send("armed")
        deadline = time.monotonic() + 5
        while (rt.guard.forced() is not None) != want and time.monotonic() < deadline:
            time.sleep(0.0005)
        view = rt.view.current
        conn.send((time.perf_counter() if time.monotonic() < deadline else None,
                   view is not None and time.monotonic() < view.valid_until))
    rt.close()


@contextlib.contextmanager
def reader_process(url: str) -> Iterator[Callable[..., float]]:
    """Another process following ``url``; yields ``seen(want, write, via_view=True)``, whose
    ``seen.live()`` waits until that process's view is trusted again."""
    parent, child = mp.get_context("fork").Pipe()
    proc = mp.get_context("fork").Process(target=_reader, args=(url, child))
    proc.start()
    assert parent.recv() == "ready"

    def seen(want: bool, write, via_view: bool = True) -> float:
        """Tell the reader what to wait for, make the write, return ms until it saw it."""
        parent.send(want)
        assert parent.recv() == "armed"
        t0 = time.perf_counter()
        nominal = write()
        at, from_view = parent.recv()
        assert at is not None, f"the reader never saw forced={want}"
        assert from_view or not via_view, "seen by the view, not by a read per request"
        return (at - (nominal or t0)) * 1000

    def live() -> None:
        parent.send("live")
        assert parent.recv(), "the other process's view never came back"

    seen.live = live  # type: ignore[attr-defined]
    try:
        yield seen
    finally:
        parent.send(None)
        proc.join(10)


@pytest.fixture
def reader(redis_server, redis_db):
    with reader_process(redis_server.url) as seen:
        yield seen


def original_record(ttl: float = 60) -> str:
    now = time.time()
    return json.dumps({"mode": "write_only", "reason": "manual_ops", "until": now + ttl, "forced_at": now})


def redis_cli(server: RedisServer, *args: str) -> None:
    subprocess.run(["redis-cli", "-p", str(server.port), *args], check=True, capture_output=True, timeout=10)


def test_any_writer_is_seen_by_another_process_within_100ms(reader, redis_server):
    results: dict[str, list[float]] = {"SET": [], "DEL": [], "expiry": [], "FLUSHALL": []}
    for _ in range(TRIALS):
        set_at: list[float] = []
        results["SET"].append(reader(True, lambda: redis_cli(redis_server, "SET", FORCED_MODE_KEY,
                                                             original_record(), "EX", "60")))
        results["DEL"].append(reader(False, lambda: redis_cli(redis_server, "DEL", FORCED_MODE_KEY)))
        def set_expiring(set_at: list[float] = set_at) -> None:
            set_at.append(time.perf_counter())
            redis_cli(redis_server, "SET", FORCED_MODE_KEY, original_record(), "PX", "300")

        reader(True, set_expiring)
        # Measured from the moment the key expired (300 ms after the SET was sent). The view
        # lapses at the key's own expiry (Redis reports it up to ~100 ms later): the reads in
        # between go to Redis, which no longer has the key.
        results["expiry"].append(reader(False, lambda set_at=set_at: set_at[0] + 0.3, via_view=False))
        reader.live()  # the expiry made the view lapse: the next write is measured on a live view again
        reader(True, lambda: redis_cli(redis_server, "SET", FORCED_MODE_KEY, original_record(), "EX", "60"))
        results["FLUSHALL"].append(reader(False, lambda: redis_cli(redis_server, "FLUSHALL")))
    worst = {k: round(max(v), 1) for k, v in results.items()}
    print(f"propagation max ms over {TRIALS} trials: {worst}")
    assert all(w <= BOUND_MS for w in worst.values()), worst


def test_memguards_own_force_and_clear_reach_another_process_within_100ms(reader, configure):
    configure()
    results: dict[str, list[float]] = {"force": [], "clear": []}
    for _ in range(TRIALS):
        results["force"].append(reader(True, lambda: flags.force_write_only("manual_ops", 60) and None))
        results["clear"].append(reader(False, lambda: flags.clear_forced_mode() and None))
    worst = {k: round(max(v), 1) for k, v in results.items()}
    print(f"memguard's own writes, max ms over {TRIALS} trials: {worst}")
    assert all(w <= BOUND_MS for w in worst.values()), worst


def _idle(url: str, ready, stop) -> None:
    rt = process.configure(Settings(redis_url=url, zep_api_key="x"))
    rt.watcher.wait_ready(5)
    ready.set()
    stop.wait(60)
    rt.close()


@pytest.fixture
def idle_processes(redis_server, redis_db):
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    started: list = []

    def spawn(n: int) -> None:
        for _ in range(n):
            ready = ctx.Event()
            p = ctx.Process(target=_idle, args=(redis_server.url, ready, stop))
            p.start()
            assert ready.wait(10)
            started.append(p)

    yield spawn
    stop.set()
    for p in started:
        p.join(10)


class Monitor:
    """Every command the server receives while running, as (client_type, command, address)."""

    MARK = "memguard-monitor-stop"

    def __init__(self, server: RedisServer) -> None:
        self.lines: list[tuple[str, str, str]] = []
        self._marker = redis.Redis(port=server.port)
        self._marker.ping()  # connected before monitoring starts: its handshake is not seen
        self._client = redis.Redis(port=server.port, decode_responses=True)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def _run(self) -> None:
        with self._client.monitor() as m:
            self._ready.set()
            for cmd in m.listen():
                if self.MARK in cmd["command"]:
                    return
                addr = f"{cmd.get('client_address')}:{cmd.get('client_port')}"
                self.lines.append((cmd["client_type"], cmd["command"], addr))

    def stop(self) -> list[tuple[str, str, str]]:
        self._marker.echo(self.MARK)
        self._thread.join(10)
        return self.lines


def is_heartbeat(command: str) -> bool:
    """The fleet's liveness heartbeat: sent whatever happens, not caused by a failure."""
    return command.startswith("PUBLISH") and command.endswith(" heartbeat")


def test_two_recorded_failures_cost_two_client_commands_in_all(configure, redis_server, redis_db,
                                                               idle_processes):
    # Only this test's processes count: a connection left by an earlier test is not ours.
    earlier = {c["addr"] for c in redis_db.client_list()}
    configure(threshold=1000)  # count without forcing
    idle_processes(3)
    flags.increment_consecutive_failures()  # load the script (a first EVALSHA answers NOSCRIPT)
    flags.reset_consecutive_failures()
    time.sleep(0.5)
    monitor = Monitor(redis_server)
    flags.increment_consecutive_failures()
    flags.increment_consecutive_failures()
    time.sleep(0.3)  # every process's view has taken the notice by now
    lines = monitor.stop()
    client = [c for t, c, addr in lines if t != "lua" and addr not in earlier]
    failures = [c for c in client if not is_heartbeat(c)]
    print(f"client-sent commands: {client}")
    assert len(failures) <= 2, failures
    assert all(c.startswith("EVALSHA") for c in failures)

    # A burst from one process: its own view applies each notice before its watcher reads it
    # from the channel; the tracking messages that follow must still be explained.
    flags.reset_consecutive_failures()
    time.sleep(0.3)
    monitor = Monitor(redis_server)
    for _ in range(20):
        flags.increment_consecutive_failures()
    time.sleep(0.3)
    burst = [c for t, c, addr in monitor.stop()
             if t != "lua" and addr not in earlier and not is_heartbeat(c)]
    assert len(burst) == 20 and all(c.startswith("EVALSHA") for c in burst), burst


def test_a_force_and_a_clear_cost_the_other_processes_no_command(configure, redis_server, redis_db,
                                                                 idle_processes):
    """Every other view takes the published notice as it is: none of them reads Redis again."""
    configure()
    flags.force_write_only("manual_ops", 60)  # load the scripts (a first EVALSHA answers NOSCRIPT)
    flags.clear_forced_mode()
    ours = {c["addr"] for c in redis_db.client_list()}  # this process's and earlier tests' connections
    idle_processes(3)
    time.sleep(0.5)
    for action in (lambda: flags.force_write_only("manual_ops", 60), flags.clear_forced_mode):
        monitor = Monitor(redis_server)
        action()
        time.sleep(0.3)  # a view that re-read after the notice would have done so by now
        lines = monitor.stop()
        assert any(c.startswith("EVALSHA") for t, c, addr in lines if addr in ours), "the write was seen"
        others = [c for t, c, addr in lines if t != "lua" and addr not in ours and not is_heartbeat(c)]
        assert others == [], others
        asked = [c for t, c, addr in lines if t != "lua" and EXPLAIN_LOCK_KEY in c]
        assert asked == [], f"the notice explains the change, yet a view asked: {asked}"


def test_ten_idle_processes_send_one_heartbeat_a_round_in_all(redis_server, idle_processes):
    """Idle, the fleet's only commands are the heartbeat rounds: one script every ~4 s in all,
    however many processes. (Redis CPU, fan-out included, is measured by ./run bench --fleet.)"""
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    idle_processes(10)
    # A first round published: the script is loaded (a first EVALSHA answers NOSCRIPT, then loads).
    wait_for(lambda: "cmdstat_publish" in client.info("commandstats"), 10, "a first heartbeat round")
    client.config_resetstat()
    time.sleep(10)  # the window observed
    stats = client.info("commandstats")
    calls = {k: v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config|resetstat")}
    print(f"idle, 10 processes, 10 s: {calls}")
    # The heartbeat script and what it runs inside Redis (its key's TYPE check, SET NX, TIME and
    # two PUBLISHes), and at most a one-time SCRIPT LOAD by a process that had not run it yet. An
    # idle process's command connection is closed between its uses: the round's sender connects
    # (redis-py's HELLO, CLIENT SETNAME and SETINFO) to send it.
    assert set(calls) <= {"cmdstat_evalsha", "cmdstat_type", "cmdstat_set", "cmdstat_publish",
                          "cmdstat_time", "cmdstat_script|load", "cmdstat_hello", "cmdstat_client|setname",
                          "cmdstat_client|setinfo"}, calls
    assert calls.get("cmdstat_client|setname", 0) <= calls["cmdstat_evalsha"], "a connect per round at most"
    # Rounds of ~4.2 s: two or three heartbeats are published, one per round, whatever the number
    # of processes (a timer that fires late on a loaded machine finds the lock taken). Each is two
    # messages: the heartbeat, and the primary's time on a channel only views on replicas follow.
    assert 2 * 2 <= calls.get("cmdstat_publish", 0) <= 4 * 2, calls
    assert calls.get("cmdstat_time", 0) * 2 == calls["cmdstat_publish"], calls
    assert calls["cmdstat_evalsha"] < 10 * 2, "not every process offers one every round"


def _writes(client: redis.Redis) -> bool:
    try:
        return bool(client.set("memguard-test:pause-probe", 1))
    except redis.TimeoutError:
        return False


def test_a_killed_or_paused_connection_lapses_the_view_and_reads_stay_right(configure, redis_db):
    rt = configure()
    # Killed: the view lapses at once, a write made meanwhile is read from Redis.
    redis_db.client_kill_filter(_type="pubsub")
    killed = time.monotonic()
    redis_db.set(FORCED_MODE_KEY, original_record())
    assert service.fetch_thread_context("t")[1]["source"] == "write_only_forced"
    wait_for(lambda: rt.view.current is not None, 5, "tracking to come back after CLIENT KILL")
    print(f"view back {time.monotonic() - killed:.3f}s after CLIENT KILL")
    assert rt.view.current.record is not None
    redis_db.delete(FORCED_MODE_KEY)
    wait_for(lambda: rt.view.current is not None and rt.view.current.record is None, 1, "the DEL")

    # Paused: no heartbeat gets through, the view lapses within the 5 s bound; reads go to Redis.
    redis_db.execute_command("CLIENT", "PAUSE", str(int(LIVENESS_BOUND_S * 1000) + 2000), "WRITE")
    paused = time.monotonic()
    # What the guard goes by: a view past its deadline is not trusted, woken watcher or not.
    wait_for(lambda: (v := rt.view.current) is None or time.monotonic() >= v.valid_until,
             LIVENESS_BOUND_S + 1, "the view to lapse under CLIENT PAUSE", interval=0.01)
    lapsed = time.monotonic() - paused
    print(f"view lapsed {lapsed:.3f}s after CLIENT PAUSE")
    assert lapsed <= LIVENESS_BOUND_S + 0.1
    assert service.fetch_thread_context("t")[1]["used"] is True  # read through Redis: not forced
    probe = redis.Redis(port=redis_db.connection_pool.connection_kwargs["port"], socket_timeout=0.2)
    wait_for(lambda: _writes(probe), 5, "CLIENT PAUSE to end")
    wait_for(lambda: rt.view.current is not None, 5, "tracking to come back after the pause")
    flags.force_write_only("manual_ops", 60)
    assert service.fetch_thread_context("t")[1]["source"] == "write_only_forced"


def test_a_view_is_told_of_its_own_keys_only(configure, redis_db, idle_processes):
    """Tracking covers the forced record and the failure count: writes to memguard's other keys
    (meter windows, heartbeat, audit, locks, cursors, quorum sets) reach no watcher."""
    rt = configure()
    idle_processes(3)  # four watchers: each message would be four socket writes
    k = rt.state.keys
    before = redis_db.info("stats")["total_net_output_bytes"]
    for i in range(100):
        redis_db.hincrby(k.outcomes, "1:t", 1)
        redis_db.set(k.heartbeat, str(i))
        redis_db.xadd(k.audit, {"event": "probe"})
        redis_db.sadd(k.failing_hosts, f"h{i}")
    grown = redis_db.info("stats")["total_net_output_bytes"] - before
    # The replies to these 400 commands and one INFO are a few kB; 400 invalidations to four
    # watchers would be over 80 kB.
    assert grown < 12_000, f"{grown} bytes sent for writes no watcher should hear"
    # The view's own keys are still tracked: a hand-written record is seen.
    redis_db.set(k.forced, original_record())
    wait_for(lambda: (v := rt.view.current) is not None and v.record is not None, 2,
             "the view to hear of the hand-written record")


CROWD = 300


@pytest.mark.alone  # 301 views on 2 cores: beside three other test workers the asking views starve
def test_every_change_reaches_every_view_while_a_crowd_is_connected(redis_server, redis_db):
    """A force, a clear, a hand ``SET`` and a hand ``DEL`` with a crowd connected: one application
    process, then CROWD views in one process, each on its own connection with memguard's own
    protocol (Redis writes a message to the last subscribed first: to the application process
    last). That process sees every change within 100 ms, and every view of the crowd sees it
    too. A hand write is explained by a few views for all, not re-read by each."""
    from memguard.drill import crowd

    ctx = mp.get_context("spawn")
    (holder, holder_end), (app, app_end) = ctx.Pipe(), ctx.Pipe()
    procs = [ctx.Process(target=crowd.observe, args=(redis_server.url, app_end))]
    procs[0].start()
    try:
        assert app.recv() == "ready"
        procs.append(ctx.Process(target=crowd.hold, args=(redis_server.url, CROWD, holder_end)))
        procs[1].start()
        assert holder.recv() == "ready"
        assert redis_db.pubsub_numsub("mem:mode:changes")[0][1] == CROWD + 1
        crowd_ms, app_ms, calls = four_changes_seen(holder, app, redis_db, redis_server.url)
    finally:
        for parent in (holder, app):
            with contextlib.suppress(OSError):
                parent.send(None)
        for proc in procs:
            proc.join(20)
    worst_app = {k: round(max(v), 1) for k, v in app_ms.items()}
    print(f"with {CROWD} views connected, max ms: application process {worst_app}, "
          f"every crowd view {({k: round(max(v), 1) for k, v in crowd_ms.items()})}")
    assert all(w <= BOUND_MS for w in worst_app.values()), worst_app
    print(f"commands sent by all {CROWD + 1} views for each change: {calls}")
    for name in ("hand SET", "hand DEL"):  # about six views ask; Poisson(6) > 24: 1e-7
        assert sorted(calls[name])[1] <= HAND_WRITE_ROUND_TRIPS, (name, calls[name])


def four_changes_seen(holder: Any, app: Any, writer: redis.Redis, url: str, rounds: int = 3) \
        -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[int]]]:
    """A force, a clear, a hand ``SET`` and a hand ``DEL`` (``writer`` on the server at ``url``),
    ``rounds`` times, each awaited by a crowd (``holder``, ``memguard.drill.crowd.hold``) and an
    application process (``app``, ``crowd.observe``); every view must see every change. By
    change: the ms each crowd view and the application took to see it, and the commands the
    server ran for it (``commands``)."""
    state = process.build(Settings(redis_url=url, zep_api_key="x"), watch=False,
                          count_metrics=False, hooks=events.Hooks()).state  # nothing left subscribed
    changes = {"force": (True, lambda: state.force("test", 60, {"via": "test"}, auto=False)),
               "clear": (False, lambda: state.clear({"via": "test"})),
               "hand SET": (True, lambda: writer.set(FORCED_MODE_KEY, original_record())),
               "hand DEL": (False, lambda: writer.delete(FORCED_MODE_KEY))}
    app_ms: dict[str, list[float]] = {name: [] for name in changes}
    crowd_ms: dict[str, list[float]] = {name: [] for name in changes}
    calls: dict[str, list[int]] = {name: [] for name in changes}
    for _ in range(rounds):
        for name, (want, change) in changes.items():
            holder.send(("see", want))
            app.send(want)
            assert (holder.recv(), app.recv()) == ("armed", "armed")
            before = commands(writer)
            at = time.perf_counter()
            change()
            crowd_seen, app_seen = holder.recv(), app.recv()
            calls[name].append(commands(writer) - before)
            assert None not in crowd_seen and None not in app_seen, f"a view never saw the {name}"
            crowd_ms[name] += [(t - at) * 1000 for t in crowd_seen]
            app_ms[name] += [(t - at) * 1000 for t in app_seen]
    return crowd_ms, app_ms, calls


def commands(client: redis.Redis) -> int:
    """Scripts and snapshot reads Redis has run (one of each is one view's round trip)."""
    stats = client.info("commandstats")
    return sum(stats.get(k, {}).get("calls", 0) for k in ("cmdstat_evalsha", "cmdstat_mget"))


def test_a_view_past_its_own_write_stops_serving_and_reads_again(configure):
    """The version went back (FLUSHALL, a repaired version) while this process's view holds a
    newer one: its own write's notice looks old. The view must not hide the write."""
    rt = configure()
    assert rt.watcher.wait_ready()
    rt.view._version = 10**12
    flags.force_write_only("manual_ops", 60)
    assert flags.get_forced_mode() is not None, "the own write is seen at once"
    wait_for(lambda: (v := rt.view.current) is not None and v.record is not None, 5, "the view re-read")
    assert rt.view._version < 10**12
