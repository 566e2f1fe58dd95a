"""Fleet benchmark: thousands of real views on one Redis, idle and with the policies on.

    ./run bench --fleet [--watchers 1000,5000,10000] [--holders 4] [--window 20] [--trials 5]

Starts its own redis-server. For each fleet size N, ``--holders`` processes hold N views in all,
each view a ``memguard.request.watch.Watcher`` run by the asyncio driver
(``memguard.drill.awatch``): memguard's own handshake, tracking, notices, heartbeat and
liveness, one connection per view, as N processes would have. Measured, all from ``INFO``:

- Redis CPU (``used_cpu_user + used_cpu_sys``) per view, idle, minus the same number of plain
  idle connections measured in the same run: what memguard adds, fan-out included (one socket
  write per subscriber per message). ``commandstats`` is shown beside it, labelled as what it
  is: command time only.
- The same with the policies on (the failure-rate window): every view has its own
  ``memguard.request.meter.ReadMeter``, records steady healthy reads and runs the meter's own
  schedule (``due``/``flush_steps``), as its thread would. Then the same with one view failing
  a read a second, so that the window stays hot and every meter sends once a slot.
- Output bytes/s, and how long a memguard force, a clear, a hand ``SET`` and a hand ``DEL``
  take to reach every view (p50/p99/max over views). On one machine that is mostly the holders'
  own CPU (they run at nice 10, as if on machines of their own), so it is also shown
  for ``crowd.OBSERVERS`` processes of their own (a thread watcher each, as an application has),
  connected before the fleet: Redis writes a message to its subscribers last-subscribed first,
  so these are written to last.
- For a hand write, how many held views asked for its explanation, and when the first did: on
  one machine the holders' CPU, not Redis, decides that moment.
- The floor for that: how long a bare ``PUBLISH`` takes to reach the first of N plain
  subscribed connections (the one written to last), measured on the baseline's connections.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import socket
import time
from typing import Any

import redis

from memguard.config.settings import Settings
from memguard.domain import events
from memguard.drill import crowd
from memguard.drill.localstack import RedisServer
from memguard.store.keys import FORCED_MODE_KEY, OUTCOMES_KEY
from memguard.store.state import State

SIZES = (1000, 5000, 10000)
HOLDERS = 4
WINDOW_S = 20.0
TRIALS = 5


def _cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _window(client: redis.Redis, seconds: float) -> dict[str, float]:
    """Redis CPU seconds, output bytes, command time (µs) and commands sent by clients (scripts
    count once, not the commands they run) over ``seconds``."""
    def sample() -> tuple[float, int, int, int]:
        stats = {k: v for k, v in client.info("commandstats").items() if k != "cmdstat_info"}
        usec = sum(v["usec"] for v in stats.values())
        sent = sum(v["calls"] for k, v in stats.items() if k in _CLIENT_COMMANDS)
        return _cpu(client), int(client.info("stats")["total_net_output_bytes"]), usec, sent

    cpu0, out0, usec0, sent0 = sample()
    start = time.monotonic()
    time.sleep(seconds)
    cpu1, out1, usec1, sent1 = sample()
    elapsed = time.monotonic() - start
    return {"cpu_s": cpu1 - cpu0, "out_bytes": out1 - out0, "usec": usec1 - usec0, "commands": sent1 - sent0,
            "seconds": elapsed}


# What a view or a meter sends itself (the snapshot read, a script); a script's own commands
# (TYPE, GET, PUBLISH...) are counted by commandstats too, and left out here.
_CLIENT_COMMANDS = ("cmdstat_mget", "cmdstat_evalsha", "cmdstat_script|load")


def _sum(windows: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(w[k] for w in windows) for k in windows[0]}


def _plain(port: int, n: int, seconds: float, client: redis.Redis) -> dict[str, float]:
    """``n`` plain connections, each after one PING, idle for the window: the baseline. Then
    each subscribes, and ``fanout_ms`` is how long a bare PUBLISH took to reach the first."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    try:
        for commands in (b"PING\r\n", b"SUBSCRIBE bench:floor\r\n"):
            for s in socks:
                s.sendall(commands)
            for s in socks:
                s.recv(64)
            if commands.startswith(b"PING"):
                window = _window(client, seconds)
        fanout_ms = []
        for _ in range(5):
            at = time.perf_counter()
            client.publish("bench:floor", json.dumps({"v": 1, "forced": "x" * 120}))
            socks[0].recv(4096)
            fanout_ms.append((time.perf_counter() - at) * 1000)
            for s in socks[1:]:
                s.recv(4096)
        return {**window, "fanout_ms": sorted(fanout_ms)[2]}
    finally:
        for s in socks:
            s.close()


def _dist(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {"p50_ms": round(s[len(s) // 2], 1), "p99_ms": round(s[min(len(s) - 1, int(0.99 * len(s)))], 1),
            "max_ms": round(s[-1], 1)}


class Crowd:
    """A crowd's processes (``memguard.drill.crowd``), observers and holders, each obeying its
    pipe: started by ``spawn``, told by ``ask``, stopped by ``close``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ctx = mp.get_context("spawn")
        self.pipes: list[Any] = []
        self.procs: list[Any] = []

    def spawn(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        """``target(url, *args, pipe, **kwargs)`` in a process of its own; its end of the pipe."""
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=target, args=(self.url, *args, child), kwargs=kwargs)
        proc.start()
        self.pipes.append(parent)
        self.procs.append(proc)
        return parent

    @staticmethod
    def ask(to: list[Any], command: Any) -> list[Any]:
        """Send ``command`` to each of ``to``, then collect each one's answer."""
        for parent in to:
            parent.send(command)
        return [parent.recv() for parent in to]

    def steady(self, holders: list[Any]) -> None:
        """Wait (up to 2 minutes) for 5 s in which no held view reconnected."""
        deadline = time.monotonic() + 120
        while True:
            time.sleep(5)
            if not sum(self.ask(holders, ("troubles", None))) or time.monotonic() > deadline:
                return

    def close(self) -> None:
        for parent in self.pipes:
            parent.send(None)
        for proc in self.procs:
            proc.join(60)


def changes_of(state: State, client: redis.Redis, *, ramp: bool = True) -> dict[str, tuple[bool, Any]]:
    """The four changes every view must see, by name: (forced afterwards?, make it). ``ramp``:
    whether the clear starts a recovery ramp."""
    now = time.time
    return {
        "force": (True, lambda: state.force("bench", 60, {"via": "bench"}, auto=False)),
        "clear": (False, lambda: state.clear({"via": "bench"}, ramp=ramp)),
        "hand_set": (True, lambda: client.set(FORCED_MODE_KEY, json.dumps(
            {"mode": "write_only", "reason": "manual_ops", "until": now() + 60, "forced_at": now()}))),
        "hand_del": (False, lambda: client.delete(FORCED_MODE_KEY)),
    }


def _size(server: RedisServer, n: int, holders: int, window_s: float, trials: int) -> dict[str, Any]:
    client = redis.Redis(port=server.port, decode_responses=True)
    base = _plain(server.port, n, window_s, client)
    spawned = Crowd(server.url)
    spawn, ask = spawned.spawn, spawned.ask
    try:
        observers = [spawn(crowd.observe) for _ in range(crowd.OBSERVERS)]
        assert [parent.recv() for parent in observers] == ["ready"] * crowd.OBSERVERS
        # Nice 10: at 19 the holders' views missed heartbeats and reconnected.
        fleet = [spawn(crowd.hold, n // holders + (h < n % holders), nice=10) for h in range(holders)]
        assert [parent.recv() for parent in fleet] == ["ready"] * holders
        spawned.steady(fleet)
        windows: dict[str, list[dict[str, float]]] = {"idle": [], "healthy": [], "hot": []}
        for mode in ("idle", "healthy", "idle", "healthy", "hot"):  # alternated: drift hits both
            ask(fleet, ("reads", {"idle": None, "healthy": False, "hot": True}[mode]))
            time.sleep(2)
            ask(fleet, ("troubles", None))
            windows[mode].append(_window(client, window_s / 2 if mode != "hot" else window_s))
            windows[mode][-1]["troubles"] = sum(ask(fleet, ("troubles", None)))
        ask(fleet, ("reads", None))
        client.delete(OUTCOMES_KEY)

        changes = changes_of(State(client, Settings(redis_url=server.url), events.Hooks()), client)
        seen_ms: dict[str, dict[str, list[float]]] = {"all": {k: [] for k in changes},
                                                       "observers": {k: [] for k in changes}}
        busy_ms: dict[str, list[float]] = {k: [] for k in changes}
        explained: dict[str, list[int]] = {k: [] for k in changes}
        ask(fleet, ("asked", None))  # counted from here
        ask(fleet, ("troubles", None))
        troubled: dict[str, int] = {k: 0 for k in changes}
        asked_ms: dict[str, list[float]] = {k: [] for k in changes}
        for _ in range(trials):
            for name, (want, change) in changes.items():
                for parent in fleet:
                    parent.send(("see", want))
                for parent in observers:
                    parent.send(want)
                assert {parent.recv() for parent in fleet + observers} == {"armed"}
                cpu0, at = _cpu(client), time.perf_counter()
                change()
                for group, parents in (("all", fleet), ("observers", observers)):
                    for parent in parents:
                        seen_ms[group][name] += [(t - at) * 1000 if t is not None else float("inf")
                                                 for t in parent.recv()]
                busy_ms[name].append((_cpu(client) - cpu0) * 1000)
                asked = ask(fleet, ("asked", None))
                first = [t for t, _ in asked if t is not None]
                asked_ms[name] += [(min(first) - at) * 1000] if first else []
                explained[name].append(sum(count for _, count in asked))
                troubled[name] += sum(ask(fleet, ("troubles", None)))
    finally:
        spawned.close()
    after = _plain(server.port, n, window_s, client)
    fanout_ms = sorted((base.pop("fanout_ms"), after.pop("fanout_ms")))[0]
    base = _sum([base, after])  # before and after the fleet

    def per_view_us(w: dict[str, float]) -> float:
        return round((w["cpu_s"] / w["seconds"] - base["cpu_s"] / base["seconds"]) / n * 1e6, 2)

    def window(w: dict[str, float]) -> dict[str, float]:
        return {"redis_cpu_us_per_s_per_view": per_view_us(w),
                "commands_per_s_per_view": round(w["commands"] / w["seconds"] / n, 4),
                "output_bytes_per_s": round(w["out_bytes"] / w["seconds"]),
                "command_time_only_us_per_s_per_view": round(w["usec"] / w["seconds"] / n, 3),
                "view_troubles": int(w["troubles"])}

    return {
        "watchers": n,
        "baseline_cpu_us_per_s_per_connection": round(base["cpu_s"] / base["seconds"] / n * 1e6, 2),
        "idle": window(_sum(windows["idle"])),
        "policies_on": window(_sum(windows["healthy"])),
        "policies_on_window_hot": window(_sum(windows["hot"])),
        "propagation_to_all": {k: _dist(v) for k, v in seen_ms["all"].items()},
        "propagation_to_observers": {k: _dist(v) for k, v in seen_ms["observers"].items()},
        "bare_publish_to_first_subscriber_ms": round(fanout_ms, 3),
        "redis_cpu_ms_per_change": {k: round(sorted(v)[len(v) // 2], 1) for k, v in busy_ms.items()},
        "explanations_asked_by_held_views_per_change": {
            k: sorted(v)[len(v) // 2] for k, v in explained.items()},
        "first_explanation_asked_ms": {k: round(sorted(v)[len(v) // 2], 1) for k, v in asked_ms.items() if v},
        "view_troubles_during_changes": troubled,
    }


def run(sizes: tuple[int, ...] = SIZES, holders: int = HOLDERS, window_s: float = WINDOW_S,
        trials: int = TRIALS) -> dict[str, Any]:
    with RedisServer(None, "--maxclients", str(2 * max(sizes) + 1000)) as server:
        results = [_size(server, n, holders, window_s, trials) for n in sizes]
    first, last = results[0]["policies_on"], results[-1]["policies_on"]
    return {"sizes": results, "window_seconds": window_s, "holders": holders,
            "policies_per_view_ratio_largest_over_smallest": round(
                last["redis_cpu_us_per_s_per_view"] / max(first["redis_cpu_us_per_s_per_view"], 0.01), 2),
            "window_hot_per_view_ratio_largest_over_smallest": round(
                results[-1]["policies_on_window_hot"]["redis_cpu_us_per_s_per_view"]
                / max(results[0]["policies_on_window_hot"]["redis_cpu_us_per_s_per_view"], 0.01), 2)}


def report(res: dict[str, Any]) -> None:
    print(f"fleet benchmark: views run by memguard's watcher code on asyncio ({res['holders']} holder "
          f"processes), {res['window_seconds']:g} s windows, private redis-server on loopback")
    print("Redis CPU from INFO used_cpu_user+sys, minus as many plain idle connections in the same run")
    print("(those cost " + ", ".join(f"{r['baseline_cpu_us_per_s_per_connection']} µs/s each at "
                                     f"{r['watchers']}" for r in res["sizes"]) + ");")
    print("'cmd time' is commandstats: command execution only, without the fan-out")
    cols = (("idle", "idle"), ("policies_on", "policies on"), ("policies_on_window_hot", "window hot"))
    print(f"{'views':>6} " + " ".join(f"{title + ' µs/s/view':>22} {'out B/s':>9}" for _, title in cols)
          + f" {'cmd time, idle':>15}")
    for r in res["sizes"]:
        print(f"{r['watchers']:>6} " + " ".join(
            f"{r[k]['redis_cpu_us_per_s_per_view']:>22} {r[k]['output_bytes_per_s']:>9}" for k, _ in cols)
            + f" {r['idle']['command_time_only_us_per_s_per_view']:>15}")
    print(f"{'views':>6} commands sent per view per second (views that reconnected or failed a step): "
          + " | ".join(title for _, title in cols))
    for r in res["sizes"]:
        print(f"{r['watchers']:>6} " + " | ".join(
            f"{r[k]['commands_per_s_per_view']:.4f} ({r[k]['view_troubles']})" for k, _ in cols))
    print("per view, largest fleet / smallest (target <= 1.3): policies on "
          f"{res['policies_per_view_ratio_largest_over_smallest']}x, window hot "
          f"{res['window_hot_per_view_ratio_largest_over_smallest']}x")
    print(f"{'views':>6} {'change':9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}   seen by: every view "
          f"(holders share the CPU) | {crowd.OBSERVERS} processes of their own, written to last | "
          f"Redis CPU ms, explanations the held views asked for (medians)")
    for r in res["sizes"]:
        for name, d in r["propagation_to_all"].items():
            o = r["propagation_to_observers"][name]
            print(f"{r['watchers']:>6} {name:9} {d['p50_ms']:>8} {d['p99_ms']:>8} {d['max_ms']:>8}   | "
                  f"{o['p50_ms']:>8} {o['p99_ms']:>8} {o['max_ms']:>8} | "
                  f"{r['redis_cpu_ms_per_change'][name]:>8} "
                  f"{r['explanations_asked_by_held_views_per_change'][name]:>6}")
        print(f"{r['watchers']:>6} a held view first asked for an explanation after (median ms): "
              + ", ".join(f"{k} {v}" for k, v in r["first_explanation_asked_ms"].items()))
        print(f"{r['watchers']:>6} views that reconnected or failed a step during the changes: "
              + ", ".join(f"{k} {v}" for k, v in r["view_troubles_during_changes"].items()))
        print(f"{r['watchers']:>6} floor: a bare PUBLISH reached the first of {r['watchers']} plain "
              f"subscribers (written to last) in {r['bare_publish_to_first_subscriber_ms']} ms")
