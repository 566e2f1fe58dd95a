"""The alert rules, the dashboard and the playbook's commands are real."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from memguard import exporter, flags, service
from memguard.observe import metrics

from .conftest import ROOT

RUNBOOK = ROOT / "runbook"


def test_promtool_rule_tests_pass():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: ./run installs the Debian package 'prometheus'"
    out = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=RUNBOOK,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_dashboard_metric_exists_in_a_real_scrape(configure, stub):

    rt = configure()
    metrics.registry(exporter.current_state)
    rt.ops.probe({"via": "test"}, scheduled=True)  # beat's tick: the heartbeat exists
    stub.set_fault("503")
    service.fetch_thread_context("t")
    stub.set_fault("ok")
    service.fetch_thread_context("t")
    flags.force_write_only("manual_ops", ttl_seconds=60)
    service.fetch_thread_context("t")
    for _ in range(32):  # overhead is sampled
        flags.clear_forced_mode() if flags.get_forced_mode() else service.fetch_thread_context("t")
    text = generate_latest(REGISTRY).decode()
    scraped = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    dashboard = json.loads((RUNBOOK / "dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\b(memory_[a-z_]+)\b", target["expr"])}
    assert len(queried) >= 10
    assert queried <= scraped, f"not in a scrape: {sorted(queried - scraped)}"
    alerts = (RUNBOOK / "alerts.yml").read_text()
    assert set(re.findall(r"\b(memory_[a-z_]+)\b", alerts)) <= scraped


def test_playbook_commands_name_real_tasks_and_subcommands():
    text = (RUNBOOK / "playbook.md").read_text()
    tasks = set(re.findall(r"call (memguard\.\w+)", text))
    assert tasks == {"memguard.force", "memguard.clear", "memguard.status", "memguard.doctor"}
    from memguard.celery import app

    assert tasks <= set(app.tasks)
    code = "\n".join(re.findall(r"```sh\n(.*?)```", text, re.S))
    subs = set(re.findall(r"^memguard (\w+)", code, re.M))
    assert {"status", "force", "clear", "probe", "drill", "doctor"} <= subs
    for sub in subs:
        out = subprocess.run([sys.executable, "-m", "memguard", sub, "--help"], capture_output=True,
                             text=True)
        assert out.returncode == 0, f"memguard {sub}: {out.stderr}"


def anchor(heading: str) -> str:
    """A heading's anchor as GitHub and Grafana links make it."""
    kept = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def test_every_alerts_runbook_link_points_at_a_playbook_section_that_exists():
    import yaml

    anchors = {anchor(h) for h in re.findall(r"^## (.+)$", (RUNBOOK / "playbook.md").read_text(), re.M)}
    rules = yaml.safe_load((RUNBOOK / "alerts.yml").read_text())["groups"][0]["rules"]
    links = {r["alert"]: r["annotations"]["runbook"] for r in rules}
    assert "MemoryGuardStateDown" in links
    broken = {name: link for name, link in links.items()
              if not link.startswith("runbook/playbook.md#") or link.split("#", 1)[1] not in anchors}
    assert broken == {}, f"no such playbook section: {broken}"
    assert anchor("Flapping Zep: recovery ramps fail") == "flapping-zep-recovery-ramps-fail"


def test_a_downgrade_fired_names_every_reason_memguard_forces_with():
    from memguard.domain.record import AUTOMATIC_DOWNGRADES

    text = (RUNBOOK / "playbook.md").read_text()
    start = text.index("## A downgrade fired")
    section = text[start:text.index("\n## ", start + 3)]
    missing = [r for r in AUTOMATIC_DOWNGRADES if f"- `{r}`:" not in section]
    assert missing == []
