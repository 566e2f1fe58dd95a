"""Views served by replicas, measured: the fleet benchmark's method with 0, 2 and 4 replicas.

    ./run bench --replicas [--watchers 1000,5000,10000] [--replica-counts 0,2,4] [--holders 4]
                           [--window 10] [--trials 3]

For each replica count R, a private primary and R replicas (``--replicaof``); for each fleet
size N, ``--holders`` processes hold N views (``memguard.drill.crowd``, memguard's own watcher
code on asyncio), with ``MEMGUARD_VIEW_URLS`` set to the replicas when R > 0, and
``crowd.OBSERVERS`` processes of their own, connected first (Redis writes a message to its
subscribers last-subscribed first, so these are written to last). Measured, from ``INFO``:

- Redis CPU per change (a force, a hand ``SET``, and the clear and ``DEL`` that undo them), on
  the primary and on each replica, less what that server spends idle over as long (the views'
  re-reads and heartbeats go on meanwhile), as the median over ``--trials``;
- how long a force and a hand ``SET`` take to reach the observers (p50/p99/max), and to reach
  every view;
- idle Redis CPU per view, all servers together, minus the same number of plain idle
  connections on one server measured in the same run; and each server's alone (not less a
  baseline);
- connections per view: the servers' ``memguard:view:`` connections, and the primary's
  clients, per view;
- the floor: a bare ``PUBLISH`` to as many plain subscribers on one server, to the one written
  to last.
"""

from __future__ import annotations

import time
from typing import Any

import fleet
import redis

from memguard.config.settings import Settings
from memguard.domain import events
from memguard.drill import crowd
from memguard.drill.localstack import RedisServer, wait_for
from memguard.store.state import State

SIZES = (1000, 5000, 10000)
REPLICAS = (0, 2, 4)
WINDOW_S = 10.0
TRIALS = 3


def _servers(replicas: int, n: int) -> tuple[RedisServer, list[RedisServer]]:
    room = ("--maxclients", str(2 * n + 1000))
    primary = RedisServer(None, *room).start()
    copies = [RedisServer(None, *room, "--replicaof", "127.0.0.1", str(primary.port)).start()
              for _ in range(replicas)]
    wait_for(lambda: all(c.client().info("replication").get("master_link_status") == "up" for c in copies),
             60, "the replicas to sync")
    return primary, copies


def _case(replicas: int, n: int, holders: int, window_s: float, trials: int) -> dict[str, Any]:
    primary, copies = _servers(replicas, n)
    servers = [primary, *copies]
    clients = [redis.Redis(port=s.port, decode_responses=True) for s in servers]
    view_urls = tuple(c.url for c in copies)
    spawned = fleet.Crowd(primary.url)
    spawn, ask = spawned.spawn, spawned.ask
    try:
        observers = [spawn(crowd.observe, view_urls=view_urls) for _ in range(crowd.OBSERVERS)]
        assert [p.recv() for p in observers] == ["ready"] * crowd.OBSERVERS
        held = [spawn(crowd.hold, n // holders + (h < n % holders), nice=10, view_urls=view_urls)
                for h in range(holders)]
        assert [p.recv() for p in held] == ["ready"] * holders
        if replicas:  # each view counts the fleet once more, 5 to 15 s after it connected
            wait_for(lambda: min(ask(held, ("counted", None))) >= n // 2, 120, "the views to count the fleet",
                     interval=1.0)
        spawned.steady(held)
        views = [sum(1 for c in cl.client_list() if c.get("name", "").startswith("memguard:view:"))
                 for cl in clients]
        primary_clients = int(clients[0].info("clients")["connected_clients"])
        cpu0 = [fleet._cpu(c) for c in clients]
        started = time.monotonic()
        time.sleep(window_s)
        idle_s = time.monotonic() - started
        idle_rates = [(fleet._cpu(c) - c0) / idle_s for c, c0 in zip(clients, cpu0, strict=True)]

        state = State(clients[0], Settings(redis_url=primary.url), events.Hooks())
        changes = fleet.changes_of(state, clients[0], ramp=False)
        cpu_ms: dict[str, list[list[float]]] = {k: [] for k in changes}
        seen: dict[str, dict[str, list[float]]] = {"observers": {k: [] for k in changes},
                                                    "all": {k: [] for k in changes}}
        asked: dict[str, list[int]] = {k: [] for k in changes}
        ask(held, ("asked", None))
        for _ in range(trials):
            for name, (want, change) in changes.items():
                for parent in held + observers:
                    parent.send(("see", want) if parent in held else want)
                assert {p.recv() for p in held + observers} == {"armed"}
                before, at = [fleet._cpu(c) for c in clients], time.perf_counter()
                started = time.monotonic()
                change()
                for group, parents in (("all", held), ("observers", observers)):
                    for parent in parents:
                        seen[group][name] += [(t - at) * 1000 if t is not None else float("inf")
                                              for t in parent.recv()]
                after, took = [fleet._cpu(c) for c in clients], time.monotonic() - started
                # Less what each server spends idle over as long (the views' re-reads, heartbeats).
                cpu_ms[name].append([(a - b - rate * took) * 1000
                                     for a, b, rate in zip(after, before, idle_rates, strict=True)])
                asked[name].append(sum(count for _, count in ask(held, ("asked", None))))
    finally:
        spawned.close()
        for s in servers:
            s.close()

    def median(rows: list[list[float]], i: int) -> float:
        return round(sorted(r[i] for r in rows)[len(rows) // 2], 2)

    return {
        "replicas": replicas, "watchers": n,
        "redis_cpu_ms_per_change": {k: {"primary": median(v, 0),
                                        "replicas": [median(v, i) for i in range(1, len(servers))]}
                                    for k, v in cpu_ms.items()},
        "propagation_to_observers": {k: fleet._dist(v) for k, v in seen["observers"].items()},
        "propagation_to_all": {k: fleet._dist(v) for k, v in seen["all"].items()},
        "idle_cpu_us_per_s_all_servers": sum(idle_rates) * 1e6,
        "idle_cpu_us_per_s_per_view_by_server": [round(r * 1e6 / n, 2) for r in idle_rates],
        "view_connections_per_view": round(sum(views) / (n + crowd.OBSERVERS), 3),
        "views_on_the_primary": views[0],
        "primary_clients_per_view": round(primary_clients / (n + crowd.OBSERVERS), 4),
        "explanations_asked_per_hand_write": sorted(asked["hand_set"])[len(asked["hand_set"]) // 2],
    }


def _floor(n: int, window_s: float) -> dict[str, float]:
    """N plain idle connections on one server (the baseline), then a bare PUBLISH to them."""
    with RedisServer(None, "--maxclients", str(2 * n + 1000)) as server:
        return fleet._plain(server.port, n, window_s, redis.Redis(port=server.port, decode_responses=True))


def run(sizes: tuple[int, ...] = SIZES, replica_counts: tuple[int, ...] = REPLICAS, holders: int = 4,
        window_s: float = WINDOW_S, trials: int = TRIALS) -> dict[str, Any]:
    cases = []
    for n in sizes:
        floor = _floor(n, window_s)
        base_us = floor["cpu_s"] / floor["seconds"] * 1e6
        for r in replica_counts:
            case = _case(r, n, holders, window_s, trials)
            idle = case.pop("idle_cpu_us_per_s_all_servers")
            case["idle_cpu_us_per_s_per_view"] = round((idle - base_us) / n, 2)
            case["bare_publish_to_last_of_n_subscribers_ms"] = round(floor["fanout_ms"], 2)
            cases.append(case)
    return {"cases": cases, "window_seconds": window_s, "holders": holders, "trials": trials}


def report(res: dict[str, Any]) -> None:
    print(f"views on replicas: memguard's watcher code on asyncio ({res['holders']} holder processes), "
          f"{crowd.OBSERVERS} observer processes connected first (written to last), {res['trials']} trials")
    print(f"{'views':>6} {'repl':>4} {'change':9} {'obs p50':>8} {'p99':>7} {'max':>7} | {'all p99':>8} | "
          f"{'primary CPU ms':>14}  replicas' CPU ms")
    for c in res["cases"]:
        for name in ("force", "hand_set"):
            o, a = c["propagation_to_observers"][name], c["propagation_to_all"][name]
            cpu = c["redis_cpu_ms_per_change"][name]
            print(f"{c['watchers']:>6} {c['replicas']:>4} {name:9} {o['p50_ms']:>8} {o['p99_ms']:>7} "
                  f"{o['max_ms']:>7} | {a['p99_ms']:>8} | {cpu['primary']:>14}  {cpu['replicas']}")
    print(f"{'views':>6} {'repl':>4} {'idle µs/s/view':>15} {'view conns/view':>16} "
          f"{'primary clients/view':>21} {'asked/hand write':>17} {'bare PUBLISH floor ms':>22}  "
          "idle µs/s/view by server (primary first)")
    for c in res["cases"]:
        print(f"{c['watchers']:>6} {c['replicas']:>4} {c['idle_cpu_us_per_s_per_view']:>15} "
              f"{c['view_connections_per_view']:>16} {c['primary_clients_per_view']:>21} "
              f"{c['explanations_asked_per_hand_write']:>17} "
              f"{c['bare_publish_to_last_of_n_subscribers_ms']:>22}  "
              f"{c['idle_cpu_us_per_s_per_view_by_server']}")
