"""Fleet benchmark: thousands of real views on one Redis, idle and with the policies on.

    ./run bench --fleet [--watchers 1000,5000,10000] [--holders 4] [--window 20] [--trials 5]

Starts its own redis-server. For each fleet size N, ``--holders`` processes hold N views in all,
each view a ``memguard.request.watch.Watcher`` run by the asyncio driver
(``memguard.request.awatch``): memguard's own handshake, tracking, notices, heartbeat and
liveness, one connection per view, as N processes would have. Measured, all from ``INFO``:

- Redis CPU (``used_cpu_user + used_cpu_sys``) per view, idle, minus the same number of plain
  idle connections measured in the same run: what memguard adds, fan-out included (one socket
  write per subscriber per message). ``commandstats`` is shown beside it, labelled as what it
  is: command time only.
- The same with the read meters on: every view flushes a healthy batch into the failure-rate
  window at memguard's own cadence (``ReadMeter.healthy_flush_s``), as a process reading
  steadily would.
- Output bytes/s, and how long a memguard force and a hand ``SET`` take to reach every view
  (p50/p99/max over views; on one machine that is mostly the holders' own CPU).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import random
import socket
import time
from typing import Any

import redis

from memguard.config.settings import Settings
from memguard.domain import events
from memguard.drill.localstack import RedisServer
from memguard.request import awatch
from memguard.request.meter import ReadMeter
from memguard.request.watch import Watcher
from memguard.store.keys import FORCED_MODE_KEY
from memguard.store.state import State
from memguard.store.steps import arun

SIZES = (1000, 5000, 10000)
HOLDERS = 4
WINDOW_S = 20.0
TRIALS = 5
READS_PER_S = 20  # each simulated process, healthy


def _holder(url: str, count: int, conn: Any) -> None:
    asyncio.run(_hold(url, count, conn))


async def _hold(url: str, count: int, conn: Any) -> None:
    """``count`` views in one process; obeys the parent: meters on/off, report when all see a state."""
    settings = Settings(redis_url=url, zep_api_key="x", redis_timeout_ms=5000, failure_rate_threshold=0.5)
    hooks = events.Hooks()
    state = State(redis.Redis.from_url(url, decode_responses=True), settings, hooks)
    gate = asyncio.Semaphore(32)  # re-reads at once per holder, as a few dozen processes' worth

    async def perform(step: Any) -> Any:
        async with gate:
            return await state.aperform(step)

    views = [Watcher(state, settings.probe_grace_seconds, hooks) for _ in range(count)]
    tasks = []
    for i, view in enumerate(views):
        tasks.append(asyncio.create_task(awatch.run(view, perform)))
        if i % 100 == 99:
            await asyncio.sleep(0.02)  # connect gradually, as a fleet starts
    while any(v.current is None for v in views):
        await asyncio.sleep(0.05)
    conn.send("ready")
    loop = asyncio.get_running_loop()
    meters: list[asyncio.Task[None]] = []
    every = ReadMeter(state, settings, hooks).healthy_flush_s
    by = events.origin("auto")

    async def meter() -> None:
        await asyncio.sleep(random.uniform(0, every))
        while True:
            await arun(state.record_outcomes_steps(int(READS_PER_S * every), 0, by), perform)
            await asyncio.sleep(every)

    while (command := await loop.run_in_executor(None, conn.recv)) is not None:
        kind, arg = command
        if kind == "meters":
            if arg:
                meters = [asyncio.create_task(meter()) for _ in views]
            else:
                for m in meters:
                    m.cancel()
                meters = []
            conn.send("ok")
        else:  # "see": report when each view first sees forced == arg
            seen: list[float | None] = [None] * count
            conn.send("armed")
            deadline = time.monotonic() + 60
            while None in seen and time.monotonic() < deadline:
                now = time.perf_counter()
                for i, view in enumerate(views):
                    current = view.current
                    if seen[i] is None and current is not None and (current.record is not None) == arg:
                        seen[i] = now
                await asyncio.sleep(0.001)
            conn.send(seen)
    for view in views:
        view.stop()
    await asyncio.gather(*tasks, return_exceptions=True)


def _cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _window(client: redis.Redis, seconds: float) -> dict[str, float]:
    """Redis CPU seconds, output bytes and command time (µs) over ``seconds``."""
    def sample() -> tuple[float, int, int]:
        stats = client.info("commandstats")
        usec = sum(v["usec"] for k, v in stats.items() if k not in ("cmdstat_info",))
        return _cpu(client), int(client.info("stats")["total_net_output_bytes"]), usec

    cpu0, out0, usec0 = sample()
    start = time.monotonic()
    time.sleep(seconds)
    cpu1, out1, usec1 = sample()
    elapsed = time.monotonic() - start
    return {"cpu_s": cpu1 - cpu0, "out_bytes": out1 - out0, "usec": usec1 - usec0, "seconds": elapsed}


def _plain(port: int, n: int, seconds: float, client: redis.Redis) -> dict[str, float]:
    """``n`` plain connections, each after one PING, idle for the window: the baseline."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    for s in socks:
        s.sendall(b"PING\r\n")
    for s in socks:
        s.recv(64)
    try:
        return _window(client, seconds)
    finally:
        for s in socks:
            s.close()


def _dist(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {"p50_ms": round(s[len(s) // 2], 1), "p99_ms": round(s[min(len(s) - 1, int(0.99 * len(s)))], 1),
            "max_ms": round(s[-1], 1)}


def _size(server: RedisServer, n: int, holders: int, window_s: float, trials: int) -> dict[str, Any]:
    client = redis.Redis(port=server.port, decode_responses=True)
    base = _plain(server.port, n, window_s, client)
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for h in range(holders):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_holder, args=(server.url, n // holders + (h < n % holders), child))
        p.start()
        pipes.append(parent)
        procs.append(p)

    def ask(command: Any) -> list[Any]:
        """Send ``command`` to every holder, then collect each one's answer."""
        for parent in pipes:
            parent.send(command)
        return [parent.recv() for parent in pipes]

    try:
        assert [parent.recv() for parent in pipes] == ["ready"] * holders
        time.sleep(2)
        idle = _window(client, window_s)
        ask(("meters", True))
        time.sleep(2)
        policies = _window(client, window_s)
        ask(("meters", False))

        state = State(client, Settings(redis_url=server.url), events.Hooks())
        now = time.time
        changes = {
            "force": (True, lambda: state.force("bench", 60, {"via": "bench"}, auto=False)),
            "clear": (False, lambda: state.clear({"via": "bench"})),
            "hand_set": (True, lambda: client.set(FORCED_MODE_KEY, json.dumps(
                {"mode": "write_only", "reason": "manual_ops", "until": now() + 60, "forced_at": now()}))),
            "hand_del": (False, lambda: client.delete(FORCED_MODE_KEY)),
        }
        seen_ms: dict[str, list[float]] = {k: [] for k in changes}
        for _ in range(trials):
            for name, (want, change) in changes.items():
                assert ask(("see", want)) == ["armed"] * holders
                at = time.perf_counter()
                change()
                for parent in pipes:
                    seen_ms[name] += [(t - at) * 1000 if t is not None else float("inf")
                                      for t in parent.recv()]
    finally:
        for parent in pipes:
            parent.send(None)
        for p in procs:
            p.join(60)

    def per_view_us(w: dict[str, float]) -> float:
        return round((w["cpu_s"] / w["seconds"] - base["cpu_s"] / base["seconds"]) / n * 1e6, 2)

    def window(w: dict[str, float]) -> dict[str, float]:
        return {"redis_cpu_us_per_s_per_view": per_view_us(w),
                "output_bytes_per_s": round(w["out_bytes"] / w["seconds"]),
                "command_time_only_us_per_s_per_view": round(w["usec"] / w["seconds"] / n, 3)}

    return {
        "watchers": n,
        "baseline_cpu_us_per_s_per_connection": round(base["cpu_s"] / base["seconds"] / n * 1e6, 2),
        "idle": window(idle),
        "policies_on": window(policies),
        "propagation_to_all": {k: _dist(v) for k, v in seen_ms.items()},
    }


def run(sizes: tuple[int, ...] = SIZES, holders: int = HOLDERS, window_s: float = WINDOW_S,
        trials: int = TRIALS) -> dict[str, Any]:
    with RedisServer(None, "--maxclients", str(2 * max(sizes) + 1000)) as server:
        results = [_size(server, n, holders, window_s, trials) for n in sizes]
    first, last = results[0]["policies_on"], results[-1]["policies_on"]
    return {"sizes": results, "window_seconds": window_s, "holders": holders,
            "policies_per_view_ratio_largest_over_smallest": round(
                last["redis_cpu_us_per_s_per_view"] / max(first["redis_cpu_us_per_s_per_view"], 0.01), 2)}


def report(res: dict[str, Any]) -> None:
    print(f"fleet benchmark: views run by memguard's watcher code on asyncio ({res['holders']} holder "
          f"processes), {res['window_seconds']:g} s windows, private redis-server on loopback")
    print("Redis CPU from INFO used_cpu_user+sys, minus as many plain idle connections in the same run")
    print(f"{'views':>6} {'idle µs/s/view':>15} {'idle out B/s':>13} {'policies µs/s/view':>19} "
          f"{'policies out B/s':>17} {'cmd time only, idle':>20}")
    for r in res["sizes"]:
        i, p = r["idle"], r["policies_on"]
        print(f"{r['watchers']:>6} {i['redis_cpu_us_per_s_per_view']:>15} {i['output_bytes_per_s']:>13} "
              f"{p['redis_cpu_us_per_s_per_view']:>19} {p['output_bytes_per_s']:>17} "
              f"{i['command_time_only_us_per_s_per_view']:>20}")
    ratio = res["policies_per_view_ratio_largest_over_smallest"]
    print(f"policies on, per view, largest fleet / smallest: {ratio}x (target <= 1.3)")
    print(f"{'views':>6} {'change':9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}   (seen by every view)")
    for r in res["sizes"]:
        for name, d in r["propagation_to_all"].items():
            print(f"{r['watchers']:>6} {name:9} {d['p50_ms']:>8} {d['p99_ms']:>8} {d['max_ms']:>8}")
