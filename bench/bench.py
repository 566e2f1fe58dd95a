"""memguard benchmark: guard cost against a bare Redis round trip, the seed design and pybreaker.

Starts its own redis-server; every figure is measured in this run and compared as ratios.
    python bench/bench.py [--json] [--reads N]
    python bench/bench.py --fleet [--processes P] [--watchers W]   (bench/fleet.py)
    python bench/bench.py --named [--processes P] [--guards G]    (bench/named.py)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

import otel
import redis
import startup

import memguard
from memguard import process
from memguard.config.settings import Settings
from memguard.domain import events
from memguard.domain.guards import Registry
from memguard.drill.localstack import RedisServer
from memguard.observe import logs, metrics
from memguard.store.keys import CONSECUTIVE_FAILURES_KEY, FORCED_MODE_KEY
from memguard.store.state import State


@memguard.guarded
def decorated_read(thread_id: str) -> str:
    """Decorated at import, as an application's module would be."""
    return "ctx"


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


ROUNDS = 3  # each case runs this many rounds of n reads; the round with the lowest p50 counts


def best_round(rounds: list[list[float]]) -> list[float]:
    """A shared VM's noise only ever adds time: keep the quietest round."""
    return min(rounds, key=lambda samples: pct(samples, 0.5))


def timed(fn: Callable[[], Any], n: int, warmup: int = 500) -> list[float]:
    for _ in range(warmup):
        fn()
    clock = time.perf_counter_ns
    rounds = []
    for _ in range(ROUNDS):
        out = []
        for _ in range(n):
            t0 = clock()
            fn()
            out.append((clock() - t0) / 1000.0)  # µs
        rounds.append(out)
    return best_round(rounds)


def timed_async(make: Callable[[], Any], n: int, warmup: int = 500) -> list[float]:
    """``timed`` for a coroutine, awaited inside one event loop."""

    async def main() -> list[float]:
        for _ in range(warmup):
            await make()
        clock = time.perf_counter_ns
        rounds = []
        for _ in range(ROUNDS):
            out = []
            for _ in range(n):
                t0 = clock()
                await make()
                out.append((clock() - t0) / 1000.0)
            rounds.append(out)
        return best_round(rounds)

    return asyncio.run(main())


def summary(samples: list[float], base: float = 0.0) -> dict[str, float]:
    return {
        "p50_us": round(max(0.0, pct(samples, 0.5) - base), 3),
        "p99_us": round(max(0.0, pct(samples, 0.99) - base), 3),
    }


def per_read(client: redis.Redis, before: int, n: int) -> float:
    """Commands per read since ``before`` over a timed case (the INFO that reads it excluded)."""
    return round((commands(client) - before - 1) / (n * ROUNDS), 4)


def commands(client: redis.Redis, only: str | None = None) -> int:
    """Commands the server ran (those inside scripts too), or only calls of ``only``."""
    stats = client.info("commandstats")
    if only is not None:
        return stats.get(f"cmdstat_{only}", {}).get("calls", 0)
    return sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_"))


def _reader(url: str, conn: Any) -> None:
    """Another process: report when its guard first sees each change."""
    rt = process.configure(Settings(redis_url=url, zep_api_key="x"))
    rt.watcher.wait_ready()
    conn.send("ready")
    while True:
        want = conn.recv()
        if want is None:
            break
        deadline = time.monotonic() + 5
        while (rt.guard.forced() is not None) != want and time.monotonic() < deadline:
            pass
        conn.send(time.perf_counter() if time.monotonic() < deadline else None)
    rt.close()


def _forked_reads(url: str, n: int, conn: Any) -> None:
    """In a forked child: time reads through ``decorated_read`` and count Redis commands."""
    raw = redis.Redis.from_url(url)
    decorated_read("t")  # the child's first read builds its runtime
    process.get().watcher.wait_ready()
    before = commands(raw)
    samples = timed(lambda: decorated_read("t"), n, warmup=0)
    conn.send((samples, (commands(raw) - before - 1) / (n * ROUNDS)))


def forked(url: str, settings: Settings, n: int) -> tuple[list[float], float]:
    process.configure(settings).watcher.wait_ready()  # the parent has a runtime, as after import
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_forked_reads, args=(url, n, child))
    proc.start()
    samples, per_read = parent.recv()
    proc.join(10)
    process.get().close()
    return samples, per_read


def propagation(url: str, state: State, trials: int) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_reader, args=(url, child))
    proc.start()
    parent.recv()
    force_ms, clear_ms = [], []
    for _ in range(trials):
        for want, sink in ((True, force_ms), (False, clear_ms)):
            parent.send(want)
            time.sleep(0.02)
            t0 = time.perf_counter()
            if want:
                state.force("bench", 60, {"via": "bench"}, auto=False)
            else:
                state.clear({"via": "bench"})
            seen = parent.recv()
            sink.append(float("inf") if seen is None else (seen - t0) * 1000)
    parent.send(None)
    proc.join(10)

    def dist(xs: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(pct(xs, 0.5), 3),
            "p99_ms": round(pct(xs, 0.99), 3),
            "max_ms": round(max(xs), 3),
        }

    return {"force_seen": dist(force_ms), "clear_seen": dist(clear_ms), "trials": trials}


def resync_connection(url: str, settings: Settings, n: int) -> dict[str, float]:
    """Redis CPU of an idle process's slow re-read (every 45-75 s) on a kept connection, and on
    one made for it and closed after (the command connection closes when idle): what one
    connection per idle process costs its Redis, per re-read."""
    raw = redis.Redis.from_url(url)

    def cpu() -> float:
        info = raw.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    out = {}
    kept = State(process.redis_client(settings), settings, events.Hooks())
    for case in ("kept", "reconnected"):
        before = cpu()
        for _ in range(n):
            kept.snapshot()
            if case == "reconnected":
                kept.client.connection_pool.disconnect()
        out[f"{case}_us"] = round((cpu() - before) / n * 1e6, 2)
    out["extra_us_per_process_per_s"] = round((out["reconnected_us"] - out["kept_us"]) / 60.0, 3)
    return out


def quiet_build(settings: Settings) -> process.Process:
    """A process's objects with no subscriber: measure the guard, not a log line per read."""
    quiet = events.Hooks()
    proc = process.build(settings, hooks=quiet)
    for subscriber in (logs.on_event, metrics.on_event, proc.audit.on_event):
        quiet.unsubscribe(subscriber)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--fleet", action="store_true", help="the fleet benchmark instead (see bench/fleet.py)")
    ap.add_argument("--watchers", default="1000,5000,10000", help="--fleet, --replicas: fleet sizes")
    ap.add_argument("--holders", type=int, default=4, help="--fleet: processes holding the views")
    ap.add_argument("--window", type=float, default=20.0, help="--fleet: seconds per measured window")
    ap.add_argument("--trials", type=int, default=5, help="--fleet: changes of each kind")
    ap.add_argument("--startup-rounds", type=int, default=7, help="process pairs per start-up ratio")
    ap.add_argument("--replicas", action="store_true", help="views on replicas instead (bench/replicas.py)")
    ap.add_argument("--replica-counts", default="0,2,4", help="--replicas: replica counts, comma-separated")
    ap.add_argument("--named", action="store_true", help="named guards' idle cost instead (bench/named.py)")
    ap.add_argument("--processes", type=int, default=50, help="--named: idle processes per case")
    ap.add_argument("--guards", type=int, default=1000, help="--named: guards declared in the fleet")
    ap.add_argument("--rounds", type=int, default=2, help="--named: windows per case, alternated")
    args = ap.parse_args()
    if args.named:
        import named

        res = named.run(args.processes, args.guards, args.window, args.rounds)
        print(json.dumps(res, indent=2)) if args.json else named.report(res)
        return
    if args.replicas:
        import replicas

        res = replicas.run(tuple(int(n) for n in args.watchers.split(",")),
                           tuple(int(n) for n in args.replica_counts.split(",")), args.holders, args.window,
                           args.trials)
        print(json.dumps(res, indent=2)) if args.json else replicas.report(res)
        return
    if args.fleet:
        import fleet

        sizes = tuple(int(n) for n in args.watchers.split(","))
        res = fleet.run(sizes, args.holders, args.window, args.trials)
        print(json.dumps(res, indent=2)) if args.json else fleet.report(res)
        return
    n = args.reads
    res: dict[str, Any] = {"reads": n}
    with RedisServer() as server:
        raw = redis.Redis(port=server.port)
        # No recovery ramp after this run's clears (the propagation trials): the later cases read
        # at full rate. The ramp has its own case below.
        settings = Settings(redis_url=server.url, zep_api_key="x", threshold=10**6, ramp_seconds=0)
        rt = quiet_build(settings)
        rt.watcher.wait_ready()
        guard = rt.guard

        def noop() -> str:
            return "ctx"

        def timing_out() -> str:
            raise TimeoutError("bench")

        call = timed(noop, n)
        base = pct(call, 0.5)
        res["function_call"] = summary(call)
        rtt = timed(lambda: raw.get(FORCED_MODE_KEY), n)
        res["bare_redis_get"] = summary(rtt)

        before = commands(raw)
        mg = timed(lambda: guard.call("t", noop), n, warmup=0)
        res["memguard"] = summary(mg, base)
        res["memguard"]["redis_commands_per_read"] = per_read(raw, before, n)

        # The latency trip on: a read adds two local counts; a thread flushes once a second.
        lat_rt = quiet_build(Settings(redis_url=server.url, zep_api_key="x", threshold=10**6,
                                        latency_threshold_ms=300))
        lat_rt.watcher.wait_ready()
        before = commands(raw)
        lat = timed(lambda: lat_rt.guard.call("t", noop), n, warmup=0)
        res["memguard_latency_trip"] = summary(lat, base)
        res["memguard_latency_trip"]["redis_commands_per_read"] = per_read(raw, before, n)
        lat_rt.close()

        # The failure-rate policy on: a read adds local counts, no reset of a consecutive count.
        rate_rt = quiet_build(Settings(redis_url=server.url, zep_api_key="x", failure_rate_threshold=0.5))
        rate_rt.watcher.wait_ready()
        before = commands(raw)
        rate = timed(lambda: rate_rt.guard.call("t", noop), n, warmup=0)
        res["memguard_failure_rate"] = summary(rate, base)
        res["memguard_failure_rate"]["redis_commands_per_read"] = per_read(raw, before, n)
        rate_rt.close()

        # Game days (memguard chaos): a process that allows experiments, first with none running
        # (the healthy read must cost what it did), then with a record its views carry, which does
        # not pick the bench's conversation (the read hashes it with the experiment's id and reads on).
        chaos_rt = quiet_build(Settings(redis_url=server.url, zep_api_key="x", threshold=10**6,
                                        ramp_seconds=0, chaos="allow"))
        chaos_rt.watcher.wait_ready()
        before = commands(raw)
        res["memguard_chaos_allowed"] = summary(timed(lambda: chaos_rt.guard.call("t", noop), n), base)
        res["memguard_chaos_allowed"]["redis_commands_per_read"] = per_read(raw, before, n)
        chaos_rt.state.chaos_start("error:503", 0.01, 600, False, {"via": "bench"})
        deadline = time.monotonic() + 5
        while ((v := chaos_rt.view.current) is None or v.chaos is None) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert chaos_rt.guard.call("t", noop)[1] == {"used": True, "source": "zep"}, "t is not picked"
        before = commands(raw)
        res["memguard_chaos_record"] = summary(timed(lambda: chaos_rt.guard.call("t", noop), n), base)
        res["memguard_chaos_record"]["redis_commands_per_read"] = per_read(raw, before, n)
        chaos_rt.state.chaos_stop({"via": "bench"})
        chaos_rt.close()

        # Inside a recovery ramp: each read also hashes (ramp id, thread id) and computes the share.
        # A share just under 1 makes the read take the whole decision and still be admitted.
        ramp_rt = quiet_build(Settings(redis_url=server.url, zep_api_key="x", threshold=10**6,
                                       ramp_seconds=3600, ramp_min_percent=99.99))
        ramp_rt.watcher.wait_ready()
        ramp_rt.state.force("bench", 60, {"via": "bench"}, auto=False)
        ramp_rt.state.clear({"via": "bench"})
        deadline = time.monotonic() + 5
        while ((v := ramp_rt.view.current) is None or v.ramp is None) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ramp_rt.guard.call("t", noop)[1]["source"] == "zep", "the bench's thread is admitted"
        before = commands(raw)
        ramped = timed(lambda: ramp_rt.guard.call("t", noop), n, warmup=0)
        res["memguard_in_ramp"] = summary(ramped, base)
        res["memguard_in_ramp"]["redis_commands_per_read"] = per_read(raw, before, n)
        ramp_rt.state.clear({"via": "bench"}, ramp=False)
        ramp_rt.close()

        # A tenant's guard under the default (a named guard, chosen per read as guarded(guard=fn)
        # does): its own view, then its parent's, and no Redis command.
        declared = Registry()
        declared.declare("zep-t.*", parent="default")
        named_rt = process.build(settings, hooks=events.Hooks(), count_metrics=False, registry=declared)
        named_rt.watcher.wait_ready()
        named_rt.units.for_read("zep-t.acme")[0].call("t", noop)
        unit = named_rt.units.units["zep-t.acme"]
        deadline = time.monotonic() + 5
        while unit.view.current is None and time.monotonic() < deadline:
            time.sleep(0.01)
        before = commands(raw)
        tenant = timed(lambda: named_rt.units.for_read("zep-t.acme")[0].call("t", noop), n, warmup=0)
        res["memguard_named_tenant"] = summary(tenant, base)
        res["memguard_named_tenant"]["redis_commands_per_read"] = per_read(raw, before, n)
        named_rt.close()

        # asyncio: the same guard driven by acall, inside one event loop, against an awaited no-op.
        async def anoop() -> str:
            return "ctx"

        acall = timed_async(anoop, n)
        abase = pct(acall, 0.5)
        res["async_call"] = summary(acall)
        before = commands(raw)
        amg = timed_async(lambda: guard.acall("t", anoop), n, warmup=0)
        res["memguard_async"] = summary(amg, abase)
        res["memguard_async"]["redis_commands_per_read"] = per_read(raw, before, n)

        def seed() -> None:
            raw.get(FORCED_MODE_KEY)
            noop()
            raw.delete(CONSECUTIVE_FAILURES_KEY)

        before = commands(raw)
        sd = timed(seed, n, warmup=0)
        res["seed_get_del"] = summary(sd, base)
        res["seed_get_del"]["redis_commands_per_read"] = per_read(raw, before, n)

        import pybreaker

        breaker = pybreaker.CircuitBreaker(
            fail_max=3,
            reset_timeout=300,
            state_storage=pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, raw, namespace="bench"),
        )
        before = commands(raw)
        pb = timed(lambda: breaker.call(noop), n, warmup=0)
        res["pybreaker_redis"] = summary(pb, base)
        res["pybreaker_redis"]["redis_commands_per_read"] = per_read(raw, before, n)

        res["ratios"] = {
            "memguard_p50_over_bare_rtt": round(
                res["memguard"]["p50_us"] / res["bare_redis_get"]["p50_us"], 4
            ),
            "seed_over_memguard_p50": round(
                res["seed_get_del"]["p50_us"] / max(res["memguard"]["p50_us"], 1e-3), 1
            ),
            "pybreaker_over_memguard_p50": round(
                res["pybreaker_redis"]["p50_us"] / max(res["memguard"]["p50_us"], 1e-3), 1
            ),
            "async_over_sync_overhead_p50": round(
                res["memguard_async"]["p50_us"] / max(res["memguard"]["p50_us"], 1e-3), 2
            ),
            "ramp_extra_p50_over_bare_rtt": round(
                (res["memguard_in_ramp"]["p50_us"] - res["memguard"]["p50_us"])
                / res["bare_redis_get"]["p50_us"], 4),
            "ramp_extra_p50_us": round(res["memguard_in_ramp"]["p50_us"] - res["memguard"]["p50_us"], 3),
            "chaos_allowed_over_memguard_p50": round(
                res["memguard_chaos_allowed"]["p50_us"] / max(res["memguard"]["p50_us"], 1e-3), 2),
            "chaos_record_extra_p50_us": round(
                res["memguard_chaos_record"]["p50_us"] - res["memguard_chaos_allowed"]["p50_us"], 3),
        }

        # Failure path: round trips per recorded failure.
        failures = 200
        before, trips = commands(raw), commands(raw, "evalsha")
        for _ in range(failures):
            guard.call("t", timing_out)
        res["failure_path"] = {
            "round_trips_per_failure": round((commands(raw, "evalsha") - trips) / failures, 3),
            "commands_per_failure_incl_script": round((commands(raw) - before - 2) / failures, 3),
        }
        rt.state.reset_failures()

        res["propagation"] = propagation(
            server.url, State(redis.Redis(port=server.port, decode_responses=True), settings, events.Hooks()),
            trials=50
        )

        res["otel"] = otel.run(settings, decorated_read, n, timed, summary, base)

        fk, fk_per_read = forked(server.url, settings, n)
        res["forked_child_decorated"] = summary(fk, base)
        res["forked_child_decorated"]["redis_commands_per_read"] = round(fk_per_read, 4)

        res["startup"] = startup.run(server.url, args.startup_rounds)
        res["resync_connection"] = resync_connection(server.url, settings, min(n, 2000))

        # Redis down: after the first error, reads go on at local cost.
        server.stop()
        time.sleep(2.5)  # let the watcher notice and drop its view
        guard.call("t", noop)  # the first read pays the error and starts the back-off
        down = timed(lambda: guard.call("t", noop), 5000, warmup=0)
        res["redis_down"] = summary(down, base)
        rt.watcher.stop()
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"memguard benchmark ({n} reads per case, private redis-server on loopback)")
    print(f"{'case':34} {'p50 µs':>9} {'p99 µs':>9} {'cmds/read':>10}")
    for key, label in (
        ("function_call", "in-process function call"),
        ("bare_redis_get", "bare Redis GET round trip"),
        ("memguard", "memguard overhead (healthy)"),
        ("forked_child_decorated", "decorated at import, forked child"),
        ("memguard_latency_trip", "memguard overhead, latency trip on"),
        ("memguard_failure_rate", "memguard overhead, failure-rate on"),
        ("memguard_in_ramp", "memguard overhead, in a ramp"),
        ("memguard_chaos_allowed", "memguard overhead, chaos allowed"),
        ("memguard_chaos_record", "memguard ovh, experiment running"),
        ("memguard_named_tenant", "memguard overhead, a tenant's guard"),
        ("async_call", "awaited coroutine call (asyncio)"),
        ("memguard_async", "memguard overhead, async (acall)"),
        ("seed_get_del", "seed design overhead (GET+DEL)"),
        ("pybreaker_redis", "pybreaker+CircuitRedisStorage ovh"),
        ("redis_down", "memguard overhead, Redis down"),
    ):
        r = res[key]
        print(f"{label:34} {r['p50_us']:9.2f} {r['p99_us']:9.2f} {r.get('redis_commands_per_read', ''):>10}")
    r = res["ratios"]
    print(f"memguard p50 / bare RTT p50:         {r['memguard_p50_over_bare_rtt']} (target <= 0.05)")
    print(f"seed / memguard p50:                 {r['seed_over_memguard_p50']}x (target >= 30x)")
    print(f"pybreaker / memguard p50:            {r['pybreaker_over_memguard_p50']}x (target >= 30x)")
    print(f"async / sync memguard overhead p50:  {r['async_over_sync_overhead_p50']}x "
          "(one implementation, driven by acall)")
    print(f"in-ramp read, extra p50:             {r['ramp_extra_p50_us']} µs = "
          f"{r['ramp_extra_p50_over_bare_rtt']} bare RTT (target <= 2 µs)")
    print(f"chaos allowed, no experiment / off:  {r['chaos_allowed_over_memguard_p50']}x p50 "
          "(target ~1: unchanged)")
    print(f"an experiment's record, extra p50:   {r['chaos_record_extra_p50_us']} µs on a read it does not "
          "pick (no Redis round trip: the record rides in the view)")
    print("memguard's idle cost per process: see --fleet")
    startup.report(res["startup"])
    otel.report(res["otel"])
    rc = res["resync_connection"]
    print(f"an idle process's re-read: Redis CPU {rc['kept_us']} µs on a kept connection, "
          f"{rc['reconnected_us']} µs on a new one closed after: +{rc['extra_us_per_process_per_s']} µs/s "
          "per idle process at one re-read a minute")
    fp = res["failure_path"]
    print(f"failure path: {fp['round_trips_per_failure']} round trips (EVALSHA) per failure, "
          f"{fp['commands_per_failure_incl_script']} commands counting those inside the script")
    for what in ("force", "clear"):
        d = res["propagation"][f"{what}_seen"]
        print(f"{what} seen by another process: p50 {d['p50_ms']} ms, p99 {d['p99_ms']} ms, "
              f"max {d['max_ms']} ms ({res['propagation']['trials']} trials; target <= 100 ms)")


if __name__ == "__main__":
    main()
