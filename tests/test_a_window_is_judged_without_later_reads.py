"""A window that holds enough bad reads is judged within a few seconds even if no read follows:
two processes make three slow reads each and then stay idle, as a new user's first try would."""

from __future__ import annotations

import subprocess
import sys
import time

from memguard import flags
from memguard.drill.localstack import stack_env

from .conftest import API_KEY, NO_RAMP, wait_for

READS = """
import time
from memguard import service
for i in range(3):
    service.fetch_thread_context(f"burst-{i}")
print("read", flush=True)
time.sleep(30)
"""


def test_a_burst_of_slow_reads_then_silence_forces_the_fleet(configure, redis_server, stub):
    configure()  # this test's own view of the fleet; it makes no read itself
    stub.set_fault("slow", delay_ms=500)
    env = stack_env(redis_server.url, stub.url, API_KEY, **NO_RAMP, MEMORY_LATENCY_THRESHOLD_MS="300",
                    MEMORY_LATENCY_MIN_READS="5", MEMORY_LATENCY_WINDOW_SECONDS="30",
                    MEMORY_ZEP_READ_TIMEOUT_MS="2000")
    procs = [subprocess.Popen([sys.executable, "-c", READS], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "read"
        idle_since = time.monotonic()
        # Six reads of 500 ms against a 300 ms threshold, five needed: the median is slow. The
        # last batch reached the window before its catch-up was over; no read comes after it.
        wait_for(lambda: (flags.get_forced_mode() or {}).get("reason") == "latency", 8,
                 "the latency window to be judged with no read after the burst")
        print(f"forced {time.monotonic() - idle_since:.1f} s after the last read")
    finally:
        for p in procs:
            p.kill()
            p.wait(5)
