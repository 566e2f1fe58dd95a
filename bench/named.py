"""Named guards' idle cost: what a process costs its Redis with 1,000 guards declared in the fleet
and one of them forced, beside today's single guard.

    ./run bench --named [--processes 50] [--guards 1000] [--window 20] [--rounds 2]

Starts its own redis-server. Each case holds ``--processes`` memguard processes built by
``memguard.process.build`` (a watcher thread and its connection each), idle for the window:

- ``today``: the guard ``default`` alone (no declarations);
- ``declared_unread``: ``--guards`` guards declared, one forced (by an operator's force), and no
  read has named any of them: the process follows the default alone;
- ``declared_read``: the same, after each process read ten of the guards once (the forced one
  among them): it follows their views too, until they expire (10 minutes idle).

Redis CPU (``INFO`` ``used_cpu_user + used_cpu_sys``) per process, minus as many plain idle
connections measured in the same run (the cases alternate, so drift hits all of them), and the
commands run per process per second (``commandstats``, a script's own commands included). A
beat adds one ``ZRANGEBYSCORE`` of the index of hold ends per probe tick, fleet-wide.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import redis

from memguard import process
from memguard.config.settings import Settings
from memguard.domain import events
from memguard.domain.guards import Registry
from memguard.drill.localstack import RedisServer, wait_for

CASES = ("plain", "today", "declared_unread", "declared_read")
def _sample(client: redis.Redis) -> tuple[float, int]:
    """Redis CPU seconds, and every command run but this sampler's INFO (a script's own commands
    count too)."""
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    sent = sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), sent


def _window(client: redis.Redis, seconds: float) -> dict[str, float]:
    cpu0, sent0 = _sample(client)
    start = time.monotonic()
    time.sleep(seconds)
    cpu1, sent1 = _sample(client)
    return {"cpu_s": cpu1 - cpu0, "commands": sent1 - sent0, "seconds": time.monotonic() - start}


def _processes(settings: Settings, n: int, registry: Registry, reads: list[str]) -> list[process.Process]:
    built = [process.build(settings, hooks=events.Hooks(), count_metrics=False, registry=registry)
             for _ in range(n)]
    for proc in built:
        assert proc.watcher.wait_ready(10), "a watcher did not subscribe"
        for name in reads:
            guard = proc.units.guard(name)
            assert guard is not None
            guard.call("t", lambda: "ctx")
    for proc in built:  # the views of the guards read are followed (a planned reconnect)
        wait_for(lambda p=proc: all(u.view.current is not None for u in p.units.units.values()), 10,
                 "the named views")
    return built


def run(processes: int = 50, guards: int = 1000, window_s: float = 10.0, rounds: int = 2) -> dict[str, Any]:
    with RedisServer() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        settings = Settings(redis_url=server.url, zep_api_key="x", ramp_seconds=0)
        declared = Registry()
        names = [f"g{i:04d}" for i in range(guards)]
        for name in names:
            declared.declare(name)
        forced = names[7]
        operator = process.build(settings, watch=False, hooks=events.Hooks(), count_metrics=False,
                                 registry=declared)
        operator.ops_for(forced).force({"via": "bench"}, reason="manual_ops", ttl_seconds=3600)
        windows: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
        views: dict[str, int] = {}  # the views one process follows (its watcher's)
        for _ in range(rounds):
            for case in CASES:
                if case == "plain":
                    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(processes)]
                    for s in socks:
                        s.sendall(b"PING\r\n")
                        s.recv(64)
                    windows[case].append(_window(client, window_s))
                    for s in socks:
                        s.close()
                    continue
                registry = Registry() if case == "today" else declared
                reads = [forced, *names[10:19]] if case == "declared_read" else []
                built = _processes(settings, processes, registry, reads)
                views[case] = max(len(proc.watcher.views) for proc in built)
                try:
                    windows[case].append(_window(client, window_s))
                finally:
                    for proc in built:
                        proc.close()
        operator.close()
    total = {case: {k: sum(w[k] for w in ws) for k in ws[0]} for case, ws in windows.items()}
    plain_us = total["plain"]["cpu_s"] * 1e6 / total["plain"]["seconds"] / processes
    out: dict[str, Any] = {"processes": processes, "guards_declared": guards, "window_s": window_s,
                           "rounds": rounds, "plain_connection_us_per_s": round(plain_us, 2)}
    for case in CASES[1:]:
        w = total[case]
        us = w["cpu_s"] * 1e6 / w["seconds"] / processes
        out[case] = {"redis_cpu_us_per_s_per_process": round(us - plain_us, 2),
                     "commands_per_s_per_process": round(w["commands"] / w["seconds"] / processes, 3),
                     "views_per_process": views[case]}
    today = out["today"]["redis_cpu_us_per_s_per_process"]
    for case in CASES[2:]:
        out[case]["cpu_ratio_to_today"] = round(out[case]["redis_cpu_us_per_s_per_process"] / today, 2) \
            if today > 0 else None
    return out


def report(res: dict[str, Any]) -> None:
    print(f"named guards, idle: {res['processes']} processes, {res['guards_declared']} guards declared, "
          f"one forced; {res['rounds']} x {res['window_s']:g} s windows per case")
    print("Redis CPU from INFO used_cpu_user+sys, minus as many plain idle connections in the same run "
          f"({res['plain_connection_us_per_s']} µs/s each)")
    print(f"{'case':<18} {'views':>5} {'µs/s per process':>17} {'commands/s':>11} {'vs today':>9}")
    for case in CASES[1:]:
        r = res[case]
        ratio = r.get("cpu_ratio_to_today")
        print(f"{case:<18} {r['views_per_process']:>5} {r['redis_cpu_us_per_s_per_process']:>17} "
              f"{r['commands_per_s_per_process']:>11} {'' if ratio is None else ratio:>9}")
