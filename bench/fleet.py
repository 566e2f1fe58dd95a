"""Fleet benchmark: N watchers (one tracked connection each) idle and through changes.

    python bench/bench.py --fleet [--processes P] [--watchers W]

Starts its own redis-server. P processes hold W watchers each (N = P x W connections). It
measures what the idle fleet costs Redis (client commands and CPU per watcher, from
``INFO commandstats``), how long a change takes to reach all N views (a memguard force, a
hand SET in the original format, a clear, a key expiring), and where memguard's idle cost
crosses the original design's per-read cost (a GET of the flag and a DEL of the counter on
every read).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from typing import Any

import redis

from memguard.config.settings import Settings
from memguard.domain import events
from memguard.drill.localstack import RedisServer
from memguard.request.watch import Watcher
from memguard.store.keys import FORCED_MODE_KEY
from memguard.store.state import State

TRIALS = 5
IDLE_S = 65.0  # longer than one slow re-read period (memguard.request.watch.RESYNC_S)


def _holder(url: str, watchers: int, conn: Any) -> None:
    """One process holding ``watchers`` views; reports when each first sees the wanted state."""
    settings = Settings(redis_url=url, zep_api_key="x")
    hooks = events.Hooks()
    state = State(redis.Redis.from_url(url, decode_responses=True), settings, hooks)
    views = [Watcher(state, settings.probe_grace_seconds, hooks) for _ in range(watchers)]
    for w in views:
        w.start()
    deadline = time.monotonic() + 60
    while any(w.current is None for w in views) and time.monotonic() < deadline:
        time.sleep(0.01)
    conn.send("ready")
    while (want := conn.recv()) is not None:
        seen: list[float | None] = [None] * watchers
        deadline = time.monotonic() + 10
        while None in seen and time.monotonic() < deadline:
            now = time.perf_counter()
            for i, w in enumerate(views):
                view = w.current
                if seen[i] is None and view is not None and (view.record is not None) == want:
                    seen[i] = now
            time.sleep(0.0005)
        conn.send(seen)
    for w in views:
        w.stop()


def _stats(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("commandstats")
    skip = ("cmdstat_info", "cmdstat_config|resetstat")
    return (sum(v["calls"] for k, v in stats.items() if k not in skip),
            sum(v["usec"] for k, v in stats.items() if k not in skip))


def _dist(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    p99 = s[min(len(s) - 1, int(0.99 * len(s)))]
    return {"p50_ms": round(s[len(s) // 2], 2), "p99_ms": round(p99, 2), "max_ms": round(s[-1], 2)}


def run(processes: int, watchers: int, idle_s: float = IDLE_S, trials: int = TRIALS) -> dict[str, Any]:
    n = processes * watchers
    out: dict[str, Any] = {"processes": processes, "watchers_per_process": watchers, "watchers": n}
    with RedisServer() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        client.config_set("maxclients", max(10000, n + 100))
        ctx = mp.get_context("fork")
        pipes, procs = [], []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_holder, args=(server.url, watchers, child))
            p.start()
            pipes.append(parent)
            procs.append(p)
        for parent in pipes:
            assert parent.recv() == "ready"
        time.sleep(2)

        client.config_resetstat()
        t0 = time.monotonic()
        time.sleep(idle_s)
        calls, usec = _stats(client)
        elapsed = time.monotonic() - t0
        out["idle"] = {"seconds": round(elapsed, 1),
                       "commands_per_s_per_watcher": round(calls / elapsed / n, 4),
                       "redis_cpu_us_per_s_per_watcher": round(usec / elapsed / n, 3),
                       "commands_per_s_fleet": round(calls / elapsed, 2)}

        state = State(redis.Redis(port=server.port, decode_responses=True), Settings(redis_url=server.url),
                      events.Hooks())

        def original_record(ttl: float) -> str:
            now = time.time()
            return json.dumps({"mode": "write_only", "reason": "manual_ops", "until": now + ttl,
                               "forced_at": now})

        changes = {
            "force": (True, lambda: state.force("bench", 60, {"via": "bench"}, auto=False)),
            "clear": (False, lambda: state.clear({"via": "bench"})),
            "hand_set": (True, lambda: client.set(FORCED_MODE_KEY, original_record(60), ex=60)),
            "hand_del": (False, lambda: client.delete(FORCED_MODE_KEY)),
        }
        order = ["force", "clear", "hand_set", "hand_del"]
        samples: dict[str, list[float]] = {k: [] for k in [*order, "expiry"]}
        costs: dict[str, list[int]] = {k: [] for k in order}
        for _ in range(trials):
            for name in order:
                want, change = changes[name]
                for parent in pipes:
                    parent.send(want)
                time.sleep(0.05)
                before = _stats(client)[0]
                at = time.perf_counter()
                change()
                for parent in pipes:
                    samples[name] += [(s - at) * 1000 if s is not None else float("inf")
                                      for s in parent.recv()]
                time.sleep(0.05)
                costs[name].append(_stats(client)[0] - before)
            # A record that expires by itself: measured from the moment it expired.
            for parent in pipes:
                parent.send(True)
            set_at = time.perf_counter()
            client.set(FORCED_MODE_KEY, original_record(60), px=600)
            for parent in pipes:
                parent.recv()
                parent.send(False)
            for parent in pipes:
                samples["expiry"] += [(s - set_at - 0.6) * 1000 if s is not None else float("inf")
                                      for s in parent.recv()]
        out["propagation_to_all"] = {k: _dist(v) for k, v in samples.items()}
        # Commands Redis ran for each change, everything included (the change itself, the
        # commands inside its script, re-reads by watchers, a heartbeat that fell in between).
        out["commands_per_change"] = {k: round(sum(v) / len(v), 1) for k, v in costs.items()}
        for parent in pipes:
            parent.send(None)
        for p in procs:
            p.join(30)

        # The original design's cost per read: GET the flag, DEL the counter.
        client.config_resetstat()
        reads = 5000
        for _ in range(reads):
            client.get(FORCED_MODE_KEY)
            client.delete("mem:read:consec_failures")
        calls, usec = _stats(client)
        per_read = {"commands": calls / reads, "cpu_us": usec / reads}
    idle_cmds = out["idle"]["commands_per_s_per_watcher"]
    idle_cpu = out["idle"]["redis_cpu_us_per_s_per_watcher"]
    out["original_per_read"] = {k: round(v, 3) for k, v in per_read.items()}
    out["crossover"] = [
        {"reads_per_s": r, "original_commands_per_s": round(r * per_read["commands"], 2),
         "memguard_commands_per_s": idle_cmds, "original_cpu_us_per_s": round(r * per_read["cpu_us"], 2),
         "memguard_cpu_us_per_s": idle_cpu}
        for r in (0.1, 1, 10, 100)
    ]
    return out


def report(res: dict[str, Any]) -> None:
    print(f"fleet benchmark: {res['watchers']} watchers ({res['processes']} processes x "
          f"{res['watchers_per_process']}), private redis-server on loopback")
    idle = res["idle"]
    print(f"idle ({idle['seconds']} s): {idle['commands_per_s_per_watcher']} client commands/s and "
          f"{idle['redis_cpu_us_per_s_per_watcher']} µs Redis CPU/s per watcher "
          f"({idle['commands_per_s_fleet']} commands/s for the whole fleet)")
    print(f"{'change seen by all N':22} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'fleet cmds':>11}")
    for name, d in res["propagation_to_all"].items():
        cost = res["commands_per_change"].get(name, "")
        print(f"{name:22} {d['p50_ms']:8.2f} {d['p99_ms']:8.2f} {d['max_ms']:8.2f} {cost:>11}")
    print("(expiry: seen by the views when Redis reports it; a read at the key's expiry goes to Redis)")
    print("per process: original design (GET + DEL per read) vs memguard (idle cost, 0 per read)")
    print(f"{'reads/s':>8} {'orig cmds/s':>12} {'mg cmds/s':>10} {'orig µs/s':>10} {'mg µs/s':>8}")
    for row in res["crossover"]:
        print(f"{row['reads_per_s']:8} {row['original_commands_per_s']:12} "
              f"{row['memguard_commands_per_s']:10} {row['original_cpu_us_per_s']:10} "
              f"{row['memguard_cpu_us_per_s']:8}")
