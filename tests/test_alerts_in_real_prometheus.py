"""The alert rules in a real Prometheus server scraping live memguard processes.

promtool's unit tests (test_runbook_is_real.py) prove each rule's exact timing on synthetic series;
this test proves the expressions against what live processes really export. Prometheus
scrapes and evaluates every second, and the rules are loaded with every duration divided by
60 (``for: 15m`` becomes 15 s, ``[1h]`` becomes 60 s); the expressions are unchanged.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
import time

import httpx
import redis

from memguard.drill.localstack import free_port, wait_for

from .conftest import ROOT, require_binary

SCALE = 60
_UNITS = {"s": 1, "m": 60, "h": 3600}


def scaled(rules: str, factor: int = SCALE) -> str:
    """The rule file with every ``for:`` and range duration divided by ``factor``."""

    def shrink(m: re.Match[str]) -> str:
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
        return f"{max(1, seconds // factor)}s"

    rules = re.sub(r"(?<=for: )(\d+)([smh])\b", shrink, rules)
    return re.sub(r"(?<=\[)(\d+)([smh])(?=\])", shrink, rules)


def test_scaling_keeps_the_expressions():
    text = "expr: increase(x[5m]) > 0\n        for: 15m\n        expr: y[1h]\n        for: 1m\n"
    assert scaled(text) == ("expr: increase(x[5s]) > 0\n        for: 15s\n"
                            "        expr: y[60s]\n        for: 1s\n")


class Prometheus:
    def __init__(self, tmp_path, targets: list[str]) -> None:
        self.port = free_port()
        rules = tmp_path / "alerts.yml"
        rules.write_text(scaled((ROOT / "runbook" / "alerts.yml").read_text()))
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {rules}\n"
            "scrape_configs:\n  - job_name: memguard\n    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
        )
        self.log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._ready, 30, "prometheus to be ready")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params: str) -> object:
        r = httpx.get(f"http://127.0.0.1:{self.port}/api/v1/{path}", params=params, timeout=5)
        r.raise_for_status()
        return r.json()["data"]

    def evaluated_since(self, epoch: float) -> bool:
        """Every rule group has been evaluated after ``epoch`` (Unix seconds)."""
        stamps = [g["lastEvaluation"][:19] for g in self.api("rules")["groups"]]  # RFC 3339, UTC
        return bool(stamps) and all(
            datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC).timestamp()
            > epoch for s in stamps)

    def alerts(self, state: str = "firing") -> list[dict]:
        return [a for a in self.api("alerts")["alerts"] if a["state"] == state]

    def firing(self, alertname: str, **labels: str) -> bool:
        return any(a["labels"]["alertname"] == alertname and labels.items() <= a["labels"].items()
                   for a in self.alerts())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


def dashboard_queries() -> dict[str, dict[str, str]]:
    """Every dashboard panel's queries: {title: {refId: expr}}."""
    dashboard = json.loads((ROOT / "runbook" / "dashboard.json").read_text())
    return {p["title"]: {t["refId"]: t["expr"] for t in p["targets"]} for p in dashboard["panels"]}


def annotation_queries() -> dict[str, str]:
    """The dashboard's annotation queries: {name: expr}."""
    dashboard = json.loads((ROOT / "runbook" / "dashboard.json").read_text())
    return {a["name"]: a["expr"] for a in dashboard["annotations"]["list"]}


READER = """
import sys, time
import memguard
memguard.serve_metrics(int(sys.argv[1]), "127.0.0.1")
while True:
    memguard.fetch_thread_context("live-reader")
    time.sleep(0.02)
"""


def test_alerts_fire_and_resolve_in_a_real_prometheus(stack, tmp_path):
    require_binary("prometheus", "prometheus")
    hold = {"MEMORY_DOWNGRADE_HOLD_SECONDS": "2", "MEMORY_DOWNGRADE_HOLD_MAX_SECONDS": "2"}  # no backoff
    reader_port, worker_port = free_port(), free_port()
    stack.spawn("worker", "prom-worker", "-P", "solo", MEMGUARD_METRICS_PORT=str(worker_port), **hold)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(reader_port)], env=stack.env(**hold),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prom = Prometheus(tmp_path, [f"127.0.0.1:{reader_port}", f"127.0.0.1:{worker_port}"])
    panels = dashboard_queries()
    try:
        targets = lambda: prom.api("targets")["activeTargets"]  # noqa: E731
        wait_for(lambda: [t["health"] for t in targets()] == ["up", "up"], 30, "both targets scraped")
        # No beat yet: no prober has ever ticked, and the dashboard says so rather than "No data".
        heartbeat_age = panels["Prober: heartbeat up and age (s)"]["B"]
        assert [float(r["value"][1]) for r in prom.api("query", query=heartbeat_age)["result"]] == [-1.0]
        beat = stack.spawn("beat", "prom-beat", **hold)
        up = time.time()
        wait_for(lambda: prom.evaluated_since(up + 3), 30, "three rule evaluations of the live series")
        assert prom.alerts() == [], "nothing fires on a healthy fleet"

        # Four planned operator forces within the (scaled) hour page nothing: they are operator
        # actions (and the dashboard's annotations), not downgrades.
        for _ in range(4):
            stack.sender.send_task("memguard.force", kwargs={"reason": "manual_ops", "ttl_seconds": 60}
                                   ).get(timeout=20)
            stack.sender.send_task("memguard.clear").get(timeout=20)
        forced = time.time()
        actions = 'sum by (action) (memory_operator_actions_total{result="accepted"}) > 0'
        wait_for(lambda: {r["metric"]["action"]: float(r["value"][1])
                          for r in prom.api("query", query=actions)["result"]} == {"force": 4, "clear": 4},
                 20, "the worker's four forces and four clears scraped")
        wait_for(lambda: prom.evaluated_since(forced + 3), 30, "three rule evaluations after the forces")
        downgrades = prom.api("query", query="sum(memory_zep_downgrades_total)")["result"]
        assert float(downgrades[0]["value"][1]) == 0, "no force was counted as a downgrade"
        assert prom.alerts("firing") == [] and prom.alerts("pending") == [], \
            "a planned force fires neither MemoryAutoDowngrade nor MemoryDowngradeFlapping"
        marks = prom.api("query",
                         query=annotation_queries()["Operator forces, clears and experiments"])["result"]
        assert {m["metric"]["action"] for m in marks} == {"force", "clear"}, "the dashboard marks them"

        # A game day: the dashboard marks the experiment while it runs, and it pages nothing.
        stack.sender.send_task("memguard.chaos_start", kwargs={"fault": "error:503", "share": "20%",
                                                               "duration": "1m"}).get(timeout=20)
        running = annotation_queries()["Chaos experiment running"]
        wait_for(lambda: prom.api("query", query=running)["result"], 20, "the dashboard's mark")
        stack.sender.send_task("memguard.chaos_stop").get(timeout=20)
        wait_for(lambda: not prom.api("query", query=running)["result"], 20, "the mark to end with the stop")
        assert prom.alerts("firing") == [] and prom.alerts("pending") == []

        # A 401: the reader downgrades the fleet at once.
        stack.stub.set_fault("401")
        wait_for(lambda: prom.firing("MemoryAutoDowngrade", reason="auth"), 20,
                 "MemoryAutoDowngrade{reason=auth}")
        # Zep stays bad: probes fail, the fleet holds again and again, and is stuck; the
        # automatic downgrades (auth, then probe_failed) flap.
        wait_for(lambda: prom.firing("MemoryStuckInDowngrade"), 40, "MemoryStuckInDowngrade")
        assert prom.firing("MemoryAutoDowngrade", reason="probe_failed")
        wait_for(lambda: prom.firing("MemoryDowngradeFlapping"), 30, "MemoryDowngradeFlapping")
        # Zep is back: the next probe restores, and both resolve.
        stack.stub.set_fault("ok")
        wait_for(lambda: not prom.firing("MemoryStuckInDowngrade"), 20, "MemoryStuckInDowngrade to resolve")
        recovered = time.monotonic()  # the last downgrade was before this
        wait_for(lambda: not prom.firing("MemoryAutoDowngrade"), 30, "MemoryAutoDowngrade to resolve")

        # Beat stops: no probe tick renews the heartbeat (12 x 0.5 s), the prober is missing.
        assert not prom.firing("MemoryProberMissing")
        beat.stop()
        wait_for(lambda: prom.firing("MemoryProberMissing"), 30, "MemoryProberMissing")
        stack.spawn("beat", "prom-beat-2", **hold)
        wait_for(lambda: not prom.firing("MemoryProberMissing"), 30, "MemoryProberMissing to resolve")

        # The flapping window (60 s scaled) passes with no more downgrades.
        left = max(10, 80 - (time.monotonic() - recovered))
        wait_for(lambda: not prom.firing("MemoryDowngradeFlapping"), left, "flapping to resolve")
        assert prom.alerts() == []

        # Every panel of the dashboard answers from the live series.
        empty = [f"{title} {ref}" for title, exprs in panels.items() for ref, expr in exprs.items()
                 if not prom.api("query", query=expr)["result"]]
        assert empty == [], empty
        age = float(prom.api("query", query=heartbeat_age)["result"][0]["value"][1])
        assert 0 <= age < 5, "a ticking prober's heartbeat age"
    finally:
        prom.stop()
        reader.terminate()
        reader.wait(10)


NAMED_READER = """
import dataclasses, os, sys, time
import memguard
from memguard import process
from memguard.request.zep import Readers
memguard.declare("zep-t.*", hold_seconds=300)
memguard.serve_metrics(int(sys.argv[1]), "127.0.0.1")
settings = process.load_settings()
good = Readers(settings).reader
bad = Readers(dataclasses.replace(settings, zep_api_key="not-the-key")).reader

@memguard.guarded(guard=lambda thread_id, tenant: f"zep-t.{tenant}")
def read(thread_id, tenant):
    return (bad if tenant == "acme" else good).read_context(thread_id, 0.2)

while True:  # acme's reads begin when the test says (its series are scraped at 0 first)
    for tenant in ("acme", "other") if os.path.exists(sys.argv[2]) else ("other",):
        read("t", tenant)
    memguard.fetch_thread_context("t")
    time.sleep(0.05)
"""


def test_a_tenants_401_fires_its_guards_alerts_and_leaves_the_default_quiet(stack, tmp_path):
    require_binary("prometheus", "prometheus")
    port = free_port()
    go = tmp_path / "acme-reads"
    reader = subprocess.Popen([sys.executable, "-c", NAMED_READER, str(port), str(go)], env=stack.env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prom = Prometheus(tmp_path, [f"127.0.0.1:{port}"])
    family = 'memory_zep_downgrades_total{guard="zep-t.*",reason="auth"}'
    try:
        wait_for(lambda: prom.api("query", query=family)["result"], 30, "the family's series scraped at 0")
        go.touch()
        wait_for(lambda: prom.firing("MemoryAutoDowngrade", reason="auth", guard="zep-t.*"), 30,
                 "MemoryAutoDowngrade{guard=zep-t.*}")
        wait_for(lambda: prom.firing("MemoryStuckInDowngrade", guard="zep-t.*", name="zep-t.acme"), 40,
                 "MemoryStuckInDowngrade for the tenant")
        assert not [a for a in prom.alerts() if a["labels"].get("guard") == "default"], "default is healthy"
        modes = prom.api("query", query=dashboard_queries()["Fleet mode (1 = current)"]["A"])["result"]
        current = {(m["metric"]["guard"], m["metric"]["name"], m["metric"]["mode"]) for m in modes
                   if m["value"][1] == "1"}
        assert current == {("default", "default", "read_write"), ("zep-t.*", "zep-t.acme", "write_only")}, \
            "one series for the default, one for the tenant held, none for the tenant reading"
    finally:
        prom.stop()
        reader.terminate()
        reader.wait(10)


RAMP_READER = """
import itertools, sys, time
import memguard
memguard.serve_metrics(int(sys.argv[1]), "127.0.0.1")
for i in itertools.count():  # a new conversation each time: the ramp admits a growing share of them
    memguard.fetch_thread_context(f"conversation-{i}")
    time.sleep(0.01)
"""


def test_a_zep_that_falls_over_as_reads_return_fires_the_ramp_alert(stack, tmp_path):
    require_binary("prometheus", "prometheus")
    conf = {"MEMORY_DOWNGRADE_HOLD_SECONDS": "1", "MEMORY_DOWNGRADE_HOLD_MAX_SECONDS": "2",
            "MEMORY_RECOVERY_RAMP_SECONDS": "60"}
    reader_port, worker_port = free_port(), free_port()
    stack.spawn("worker", "ramp-worker", "-P", "solo", MEMGUARD_METRICS_PORT=str(worker_port), **conf)
    stack.spawn("beat", "ramp-beat", **conf)
    reader = subprocess.Popen([sys.executable, "-c", RAMP_READER, str(reader_port)], env=stack.env(**conf),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prom = Prometheus(tmp_path, [f"127.0.0.1:{reader_port}", f"127.0.0.1:{worker_port}"])
    redis_db = redis.Redis.from_url(stack.server.url, decode_responses=True)
    share = dashboard_queries()["Recovery ramp: share of conversations admitted, ramps by result"]["A"]

    def forced_reason() -> str | None:
        raw = redis_db.get("mem:mode:forced:v1")
        return json.loads(raw)["reason"] if raw else None

    def admitted() -> float:
        result = prom.api("query", query=share)["result"]
        return float(result[0]["value"][1]) if result else -1.0

    try:
        wait_for(lambda: [t["health"] for t in prom.api("targets")["activeTargets"]] == ["up", "up"], 30,
                 "both targets scraped")
        stack.stub.set_fault("503")
        wait_for(lambda: forced_reason() == "consecutive_failures", 10, "the fleet to be forced")
        assert not prom.firing("MemoryRecoveryRampFailing")
        for _ in range(2):  # Zep answers the probe, then falls over as the ramp's reads return
            stack.stub.set_fault("ok")
            wait_for(lambda: redis_db.exists("mem:mode:ramp"), 20, "the probe to start a ramp")
            wait_for(lambda: 0 < admitted() < 1, 10, "the dashboard to show the ramp's share")
            stack.stub.set_fault("503")
            wait_for(lambda: forced_reason() == "ramp_failed", 10, "the ramp's reads to force again")
        wait_for(lambda: prom.firing("MemoryRecoveryRampFailing"), 30, "MemoryRecoveryRampFailing")
        assert admitted() == 0.0, "no conversation is admitted while forced"
        # (It resolves an hour later: runbook/alerts_test.yml holds that timing.)
    finally:
        prom.stop()
        reader.terminate()
        reader.wait(10)


def test_a_guard_that_cannot_reach_redis_pages_and_resolves_when_redis_is_back(stack, tmp_path):
    require_binary("prometheus", "prometheus")
    port = free_port()
    reader = subprocess.Popen([sys.executable, "-c", READER, str(port)], env=stack.env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prom = Prometheus(tmp_path, [f"127.0.0.1:{port}"])

    def value(query: str) -> float | None:
        result = prom.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else None

    unguarded = 'memory_zep_reads_unguarded_total{guard="default"}'
    try:
        wait_for(lambda: value('memory_guard_state_up{guard="default"}') == 1, 30, "the state read")
        assert value(unguarded) == 0
        assert not prom.firing("MemoryGuardStateDown")
        stack.server.stop()
        # The exporter still says what it knows: the state is down, and no prober can be seen.
        wait_for(lambda: value('memory_guard_state_up{guard="default"}') == 0, 20, "state_up 0")
        assert value("memory_prober_up") == 0, "exported as 0, not left out"
        wait_for(lambda: prom.firing("MemoryGuardStateDown", instance=f"127.0.0.1:{port}"), 30,
                 "MemoryGuardStateDown for the reader's instance")
        wait_for(lambda: (value(unguarded) or 0) > 0, 10, "the unguarded reads counted")
        before = value(unguarded)
        stack.server.start()
        wait_for(lambda: not prom.firing("MemoryGuardStateDown"), 30, "MemoryGuardStateDown to resolve")
        wait_for(lambda: value(unguarded) == value(unguarded + " offset 3s"), 20, "no more unguarded reads")
        assert value(unguarded) >= before
    finally:
        prom.stop()
        reader.terminate()
        reader.wait(10)
