"""The benchmarks run, at a tiny size, so that they cannot rot unnoticed (their figures are
read from a full run: ``./run bench``, ``./run bench --fleet``; the soak has its own test)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from .conftest import ROOT


def bench(*args: str) -> dict:
    out = subprocess.run([sys.executable, "bench/bench.py", "--json", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_the_benchmark_runs_and_a_healthy_read_costs_no_redis_command():
    res = bench("--reads", "300", "--startup-rounds", "1")
    for case in ("memguard", "memguard_async", "forked_child_decorated", "memguard_failure_rate",
                 "memguard_named_tenant", "memguard_chaos_allowed", "memguard_chaos_record"):
        assert res[case]["redis_commands_per_read"] == 0, case
    assert res["seed_get_del"]["redis_commands_per_read"] == 2
    assert round(res["failure_path"]["round_trips_per_failure"]) == 1  # one script per failure
    assert res["propagation"]["trials"] == 50 and res["propagation"]["force_seen"]["max_ms"] < 1000
    st = res["startup"]
    assert st["import"]["ratio"] > 0 and st["status"]["ratio"] > 0
    assert set(st["first_async_read_stall_ms"]) == {"zep-python", "zep-cloud", "guarded"}


def test_the_fleet_benchmark_runs_and_every_view_sees_every_change():
    res = bench("--fleet", "--watchers", "6,12", "--holders", "2", "--window", "2", "--trials", "1")
    assert [r["watchers"] for r in res["sizes"]] == [6, 12]
    for size in res["sizes"]:
        assert size["idle"]["output_bytes_per_s"] > 0 and "redis_cpu_us_per_s_per_view" in size["policies_on"]
        assert "redis_cpu_us_per_s_per_view" in size["policies_on_window_hot"]
        for group in ("propagation_to_all", "propagation_to_observers"):
            for name, dist in size[group].items():
                assert math.isfinite(dist["max_ms"]), f"{group}: never saw {name} ({size['watchers']} views)"
        assert set(size["redis_cpu_ms_per_change"]) == {"force", "clear", "hand_set", "hand_del"}
        assert size["explanations_asked_by_held_views_per_change"]["force"] == 0  # the notice explains it
        assert size["explanations_asked_by_held_views_per_change"]["hand_set"] <= size["watchers"]
        assert size["bare_publish_to_first_subscriber_ms"] > 0


def test_the_named_guards_benchmark_runs_and_an_idle_process_follows_only_what_it_read():
    res = bench("--named", "--processes", "3", "--guards", "40", "--window", "1", "--rounds", "1")
    assert res["guards_declared"] == 40
    assert res["today"]["views_per_process"] == 1
    assert res["declared_unread"]["views_per_process"] == 1, "40 declared, one forced: none followed"
    assert res["declared_read"]["views_per_process"] == 11, "the ten guards read, beside the default"
    for case in ("today", "declared_unread", "declared_read"):
        assert math.isfinite(res[case]["redis_cpu_us_per_s_per_process"])


def test_the_replicas_benchmark_runs_and_views_on_replicas_leave_the_primary_none():
    res = bench("--replicas", "--watchers", "8", "--replica-counts", "0,2", "--holders", "2", "--window", "1",
                "--trials", "1")
    assert [(c["replicas"], c["watchers"]) for c in res["cases"]] == [(0, 8), (2, 8)]
    for case in res["cases"]:
        for group in ("propagation_to_all", "propagation_to_observers"):
            for name, dist in case[group].items():
                assert math.isfinite(dist["max_ms"]), f"{group}: never saw {name} ({case['replicas']})"
        assert case["view_connections_per_view"] == 1.0, "one view connection per view"
        assert len(case["redis_cpu_ms_per_change"]["force"]["replicas"]) == case["replicas"]
        assert case["bare_publish_to_last_of_n_subscribers_ms"] > 0
    on_primary, on_replicas = res["cases"]
    assert on_primary["views_on_the_primary"] == 8 + 4 and on_replicas["views_on_the_primary"] == 0
