"""Start-up costs, whole processes, measured against a baseline in the same run.

- ``import memguard`` against ``import redis``;
- ``memguard status`` against a Python process that imports redis and GETs one key;
- the event-loop stall of a fresh process's first asyncio read (no warm-up), for each Zep SDK
  and for an application's own ``async def`` read under ``@memguard.guarded``.

Each pair runs alternately, ``rounds`` times; the ratio is the median of the per-pair ratios.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import Any

STALL_SCRIPT = """
import asyncio, sys, time
import httpx
import memguard

TICK = 0.002
own = httpx.AsyncClient(base_url=sys.argv[2], headers={"Authorization": "Api-Key " + sys.argv[3]})


@memguard.guarded
async def own_read(thread_id):
    r = await own.get(f"/api/v2/sessions/{thread_id}/memory")
    r.raise_for_status()
    return r.json()


async def main():
    gaps, done = [], asyncio.Event()

    async def ticker():
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            gaps.append(now - last - TICK)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    gaps.clear()
    if sys.argv[1] == "guarded":
        value, meta = await own_read("t")
    else:
        value, meta = await memguard.afetch_thread_context("t")
    assert meta["used"], meta
    done.set()
    await task
    print(max(gaps) * 1000)


asyncio.run(main())
"""


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=120)
    return time.perf_counter() - started


def paired(base: list[str], ours: list[str], env: dict[str, str], rounds: int) -> dict[str, float]:
    """Median wall times of both commands and the median of their per-pair ratio."""
    a, b = [], []
    for _ in range(rounds):
        a.append(_wall(base, env))
        b.append(_wall(ours, env))
    return {"base_ms": round(statistics.median(a) * 1000, 1),
            "ours_ms": round(statistics.median(b) * 1000, 1),
            "ratio": round(statistics.median(y / x for x, y in zip(a, b, strict=True)), 3)}


def first_read_stall_ms(kind: str, env: dict[str, str], stub_url: str, api_key: str) -> float:
    """The longest event-loop stall (ms) during a fresh process's first read of ``kind``:
    ``zep-python`` or ``zep-cloud`` (``afetch_thread_context``) or ``guarded`` (an own read)."""
    mode = "guarded" if kind == "guarded" else "afetch"
    run_env = {**env, "ZEP_API_URL": stub_url, "ZEP_API_KEY": api_key,
               "ZEP_CLIENT": "zep-python" if kind == "guarded" else kind}
    out = subprocess.run([sys.executable, "-c", STALL_SCRIPT, mode, stub_url, api_key], env=run_env,
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"stall probe ({kind}) failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def run(redis_url: str, rounds: int = 7) -> dict[str, Any]:
    from memguard.drill.zepstub import ZepStub

    env = {**os.environ, "REDIS_URL": redis_url, "ZEP_API_KEY": "bench-key"}
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    get = f"import redis; redis.Redis(host={host!r}, port={port}).get('mem:mode:forced:v1')"
    res: dict[str, Any] = {
        "import": paired([sys.executable, "-c", "import redis"], [sys.executable, "-c", "import memguard"],
                         env, rounds),
        "status": paired([sys.executable, "-c", get], [sys.executable, "-m", "memguard", "status"], env,
                         rounds),
    }
    with ZepStub(api_key="bench-key") as stub:
        res["first_async_read_stall_ms"] = {
            kind: round(statistics.median(first_read_stall_ms(kind, env, stub.url, "bench-key")
                                          for _ in range(3)), 1)
            for kind in ("zep-python", "zep-cloud", "guarded")}
    return res


def report(res: dict[str, Any]) -> None:
    i, s = res["import"], res["status"]
    print(f"import memguard / import redis:      {i['ratio']}x ({i['ours_ms']} / {i['base_ms']} ms; "
          "target <= 1.35)")
    print(f"memguard status / redis GET process: {s['ratio']}x ({s['ours_ms']} / {s['base_ms']} ms; "
          "target <= 1.6)")
    stalls = ", ".join(f"{k} {v} ms" for k, v in res["first_async_read_stall_ms"].items())
    print(f"first asyncio read, longest loop stall (median of 3 fresh processes): {stalls} (target <= 50)")
