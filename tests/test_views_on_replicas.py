"""Views served by replicas (``MEMGUARD_VIEW_URLS``): a real primary and two real replicas.

Every script and write goes to the primary; each view subscribes and tracks on one replica,
which delivers the replicated messages and invalidations itself. The freshness promises hold
there: any writer is seen, a replica that dies or is cut off from its primary loses its views
to the other within the liveness bound, and the explanation's askers stay few though the
primary counts no subscriber.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import redis

from memguard import process
from memguard.config.settings import Settings, SettingsError
from memguard.domain import events
from memguard.drill.localstack import RedisServer, wait_for
from memguard.request.watch import LIVENESS_S
from memguard.store.keys import CHANGES_CHANNEL

from .test_propagation_to_every_view import BOUND_MS, HAND_WRITE_ROUND_TRIPS, four_changes_seen


class DelayLink:
    """A TCP relay from a replica to its primary whose primary-to-replica bytes can be held back
    (``delay``, seconds): replication lag, as a congested link or a slow replica gives it."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.delay = target_port, 0.0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(down, up, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, delayed: bool) -> None:
        due: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def send() -> None:
            while (item := due.get()) is not None and item[1]:
                time.sleep(max(0.0, item[0] - time.monotonic()))
                with contextlib.suppress(OSError):
                    sink.sendall(item[1])
            with contextlib.suppress(OSError):
                sink.close()

        threading.Thread(target=send, daemon=True).start()
        while True:
            try:
                chunk = source.recv(65536)
            except OSError:
                chunk = b""
            due.put((time.monotonic() + (self.delay if delayed else 0.0), chunk))
            if not chunk:
                return

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


@pytest.fixture
def replicated() -> Iterator[SimpleNamespace]:
    # A primary stopping waits for its replicas to catch up (shutdown-timeout): one behind the
    # relay may never. Not here.
    primary = RedisServer(None, "--shutdown-timeout", "0").start()
    link = DelayLink(primary.port)  # the first replica's link can be made to lag
    replicas = [RedisServer(None, "--replicaof", "127.0.0.1", str(port)).start()
                for port in (link.port, primary.port)]

    def linked(server: RedisServer) -> bool:
        return server.client().info("replication").get("master_link_status") == "up"

    try:
        wait_for(lambda: all(linked(r) for r in replicas), 20, "both replicas to sync")
        yield SimpleNamespace(primary=primary, replicas=replicas, view_urls=tuple(r.url for r in replicas),
                              link=link)
    finally:
        for server in (*replicas, primary):
            server.close()
        link.close()


def settings(group: SimpleNamespace, **kw) -> Settings:
    return Settings(redis_url=group.primary.url, zep_api_key="x", view_urls=group.view_urls, **kw)


def numsub(server: RedisServer) -> int:
    return int(server.client().pubsub_numsub(CHANGES_CHANNEL)[0][1])


def test_views_on_replicas_need_a_one_server_or_sentinel_redis_url_and_say_what_is_wrong():
    with pytest.raises(SettingsError, match="MEMGUARD_VIEW_URLS: 'sentinel' needs a Sentinel REDIS_URL"):
        Settings.from_env({"REDIS_URL": "redis://h:6379/0", "MEMGUARD_VIEW_URLS": "sentinel"})
    with pytest.raises(SettingsError, match=r"MEMGUARD_VIEW_URLS: .*not supported with a Redis Cluster"):
        Settings.from_env({"REDIS_URL": "redis+cluster://h:7000", "MEMGUARD_VIEW_URLS": "redis://r:6379"})
    with pytest.raises(SettingsError, match=r"MEMGUARD_VIEW_URLS=.*URL 2: each must be one server"):
        Settings.from_env({"MEMGUARD_VIEW_URLS": "redis://r1:6379,redis+sentinel://s:26379/mg"})
    ok = Settings.from_env({"MEMGUARD_VIEW_URLS": " redis://r1:6379/0 , rediss://r2:6380/0 "})
    assert ok.view_urls == ("redis://r1:6379/0", "rediss://r2:6380/0")
    assert Settings.from_env({}).view_servers is None, "unset: the views follow REDIS_URL"


CROWD = 200


@pytest.mark.alone  # 201 views and three servers on 2 cores
def test_every_change_reaches_every_view_on_replicas_and_the_primary_fans_out_to_none(replicated):
    from memguard.drill import crowd

    ctx = mp.get_context("spawn")
    (holder, holder_end), (app, app_end) = ctx.Pipe(), ctx.Pipe()
    url, views = replicated.primary.url, replicated.view_urls
    procs = [ctx.Process(target=crowd.observe, args=(url, app_end, views)),
             ctx.Process(target=crowd.hold, args=(url, CROWD, holder_end, 0, views))]
    primary = replicated.primary.client()
    try:
        procs[0].start()
        assert app.recv() == "ready"
        procs[1].start()
        assert holder.recv() == "ready"

        def counted() -> bool:  # each view counts the fleet again a while after it connected
            holder.send(("counted", None))
            return holder.recv() >= CROWD // 2

        wait_for(counted, 30, "every view on a replica to count the fleet", interval=0.5)
        spread = [numsub(r) for r in replicated.replicas]
        assert numsub(replicated.primary) == 0, "no view is the primary's to write to"
        assert sum(spread) == CROWD + 1 and min(spread) >= CROWD // 4, spread
        _, app_ms, calls = four_changes_seen(holder, app, primary, url)
        holder.send(("troubles", None))
        assert holder.recv() == 0, "no view on a replica lapsed, lagged or reconnected"
    finally:
        for parent in (holder, app):
            with contextlib.suppress(OSError):
                parent.send(None)
        for proc in procs:
            proc.join(20)
    worst = {k: round(max(v), 1) for k, v in app_ms.items()}
    print(f"views on 2 replicas, application process, max ms: {worst}; primary commands: {calls}")
    assert all(w <= BOUND_MS for w in worst.values()), worst
    for name in ("hand SET", "hand DEL"):  # a few views ask, though the primary counts no subscriber
        assert sorted(calls[name])[1] <= HAND_WRITE_ROUND_TRIPS, (name, calls[name])


def _stale_reads_after(rt: process.Process, at: float, until: float) -> list[float]:
    """Reads after ``at`` (perf_counter; a force was written then) that still went to Zep,
    as seconds after it, read every 10 ms until ``until``."""
    stale = []
    while time.perf_counter() < until:
        meta = rt.guard.call("t", lambda: "ctx")[1]
        if meta["source"] == "zep":
            stale.append(round(time.perf_counter() - at, 3))
        time.sleep(0.01)
    return stale


@pytest.mark.parametrize("how", ["killed", "cut off from its primary"])
def test_a_replica_lost_moves_its_views_within_the_liveness_bound_and_none_serves_stale(replicated, how):
    rt = process.configure(settings(replicated))
    other = process.build(Settings(redis_url=replicated.primary.url, zep_api_key="x"), watch=False,
                          count_metrics=False, hooks=events.Hooks())
    try:
        assert rt.watcher.wait_ready(5)
        lost = next(r for r in replicated.replicas if r.url == rt.watcher.placement.server)
        survivor = next(r for r in replicated.replicas if r is not lost)
        if how == "killed":
            lost.stop()
        else:  # it stays up and answers, but hears nothing more from the primary
            lost.client().replicaof("NO", "ONE")
        other.state.force("manual_ops", 60, {"via": "test"}, auto=False)
        at = time.perf_counter()
        stale = _stale_reads_after(rt, at, at + LIVENESS_S + 1.5)
        # A view keeps a state at most the liveness bound: past it, every read is held.
        assert not [s for s in stale if s > LIVENESS_S], stale
        wait_for(lambda: rt.watcher.placement.server == survivor.url and rt.view.current is not None, 3,
                 "the view to move to the other replica")
        assert rt.view.current.record is not None, "the moved view shows the force"
        assert numsub(survivor) == 1
    finally:
        other.close()


def test_a_lagging_replica_loses_its_views(replicated):
    """The first replica's link starts holding the primary's bytes back 2 s while changes keep
    coming: its messages arrive, late, often enough to keep the view live. Their primary time
    tells the view, which moves to the other replica."""
    rt = process.configure(settings(replicated))
    other = process.build(Settings(redis_url=replicated.primary.url, zep_api_key="x", ramp_seconds=0),
                          watch=False, count_metrics=False, hooks=events.Hooks())
    lagging = replicated.replicas[0]
    assert rt.watcher.wait_ready(5)
    if rt.watcher.placement.server != lagging.url:  # a dropped connection moves the view to the other
        rt.watcher.reconnect()
        wait_for(lambda: rt.watcher.placement.server == lagging.url and rt.view.current is not None, 3,
                 "the view on the first replica")
    troubles: list[events.Event] = []
    process.hooks.subscribe(troubles.append)
    stop = threading.Event()

    def changes() -> None:  # a notice every 0.3 s: the view never goes quiet
        while not stop.wait(0.3):
            other.state.force("manual_ops", 60, {"via": "test"}, auto=False)
            other.state.clear({"via": "test"}, ramp=False)

    churn = threading.Thread(target=changes, daemon=True)
    churn.start()
    try:
        replicated.link.delay = 2.0
        wait_for(lambda: rt.watcher.placement.server != lagging.url and rt.view.current is not None,
                 LIVENESS_S + 3, "the view to leave the lagging replica")
    finally:
        stop.set()
        churn.join(5)
        process.hooks.unsubscribe(troubles.append)
        other.close()
    said = [t.detail for t in troubles if isinstance(t, events.GuardTrouble) and t.op == "watch"]
    assert said, troubles


def test_views_follow_the_replicas_sentinel_reports():
    from memguard.drill.localstack import SentinelGroup

    with SentinelGroup() as group:
        rt = process.configure(Settings(redis_url=group.url, zep_api_key="x", view_urls=("sentinel",)))
        other = process.build(Settings(redis_url=group.url, zep_api_key="x"), watch=False,
                              count_metrics=False, hooks=events.Hooks())
        try:
            assert rt.watcher.wait_ready(5)
            assert rt.watcher.placement.server == f"127.0.0.1:{group.replica.port}", "Sentinel's replica"
            assert numsub(group.primary) == 0 and numsub(group.replica) == 1
            other.state.force("manual_ops", 60, {"via": "test"}, auto=False)
            wait_for(lambda: (v := rt.view.current) is not None and v.record is not None, 1,
                     "the force to reach the view on the replica")
            # A failover: the replica becomes the primary. The view follows what Sentinel reports,
            # and a clear made on the new primary reaches it.
            group.failover()

            def cleared_and_seen() -> bool:
                try:
                    other.state.clear({"via": "test"}, ramp=False)
                except redis.RedisError:
                    return False
                return (v := rt.view.current) is not None and v.record is None

            wait_for(cleared_and_seen, 20, "a clear on the new primary to reach the view")
        finally:
            other.close()
