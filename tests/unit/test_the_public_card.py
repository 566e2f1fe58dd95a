"""The public surface on one card: the names users, dashboards, alerts and runbooks depend on.
Each list is the card; a name that disappears from memguard turns this red."""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path

from celery import Celery

import memguard
from memguard.config.settings import VARIABLE_NAMES
from memguard.domain import events
from memguard.integrations import cli
from memguard.observe import logs, metrics

ROOT = Path(__file__).resolve().parents[2]

CARD_PACKAGE = ("install", "guarded", "fetch_thread_context", "afetch_thread_context", "awarm_up", "flags",
                "serve_metrics", "metrics_wsgi_app", "declare", "__version__")
CARD_FLAGS = ("base_mode", "effective_mode", "get_forced_mode", "force_write_only", "clear_forced_mode",
              "increment_consecutive_failures", "reset_consecutive_failures")
CARD_TASKS = ("memguard.force", "memguard.clear", "memguard.status", "memguard.probe", "memguard.doctor")
CARD_CLI = ("status", "force", "clear", "probe", "history", "guards", "acl", "doctor", "drill", "metrics")
CARD_SETTINGS = (
    "REDIS_URL", "ZEP_API_KEY", "ZEP_API_URL", "ZEP_CLIENT", "FLAG_ZEP_READ", "FLAG_ZEP_WRITE",
    "MEMORY_DOWNGRADE_THRESHOLD", "MEMORY_DOWNGRADE_HOLD_SECONDS", "MEMORY_DOWNGRADE_PROBE_TIMEOUT_MS",
    "MEMORY_DOWNGRADE_WINDOW_SECONDS", "MEMORY_ZEP_READ_TIMEOUT_MS",
    "MEMORY_DOWNGRADE_PROBE_INTERVAL_SECONDS",
    "MEMORY_DOWNGRADE_PROBE_GRACE_SECONDS", "DISABLE_AUTO_DOWNGRADE", "MEMORY_DOWNGRADE_HOLD_MAX_SECONDS",
    "MEMORY_LATENCY_THRESHOLD_MS", "MEMORY_LATENCY_MIN_READS", "MEMORY_LATENCY_WINDOW_SECONDS",
    "MEMORY_FAILURE_RATE_THRESHOLD", "MEMORY_FAILURE_RATE_WINDOW_SECONDS", "MEMORY_FAILURE_RATE_MIN_READS",
    "MEMORY_WEBHOOK_URLS", "MEMORY_WEBHOOK_FORMAT", "MEMORY_NOTIFY_STUCK_SECONDS", "MEMORY_QUORUM_HOSTS",
    "MEMGUARD_INSTANCE", "MEMGUARD_METRICS_PORT", "MEMORY_RECOVERY_RAMP_SECONDS",
    "MEMORY_RECOVERY_RAMP_MIN_PERCENT", "MEMORY_RECOVERY_RAMP_AGGRESSION",
)
CARD_METRICS = (
    "memory_zep_downgrades_total", "memory_mode_gauge", "memory_zep_context_failures_total",
    "memory_zep_probes_total", "memory_zep_reads_blocked_total", "memory_mode_restored_total",
    "memory_guard_errors_total", "memory_guard_overhead_seconds", "memory_zep_would_downgrade_total",
    "memory_guard_state_up", "memory_mode_holds", "memory_mode_hold_seconds_left",
    "memory_zep_consecutive_failures", "memory_prober_up", "memory_recovery_ramp_share",
    "memory_recovery_ramp_seconds_left", "memory_recovery_ramps_total", "memory_operator_actions_total",
    "memory_zep_reads_unguarded_total",
)
CARD_LOG_EVENTS = (
    "memory_mode_forced", "memory_mode_restored", "zep_read_blocked_forced_mode",
    "zep_auth_failure_auto_downgrade", "zep_consecutive_failures_auto_downgrade", "memory_mode_would_force",
    "zep_read_failed", "memory_probe_finished", "memguard_operator_action", "memguard_operator_refused",
    "memguard_config_error", "memguard_internal_error", "memguard_redis_error",
    "memory_recovery_ramp_started", "memory_recovery_ramp_completed", "memory_recovery_ramp_failed",
    "zep_read_held_recovery_ramp",
)


def test_the_package_names_on_the_card_resolve():
    assert set(CARD_PACKAGE) <= set(memguard.__all__)
    for name in CARD_PACKAGE:
        assert getattr(memguard, name) is not None, name
    assert re.fullmatch(r"\d+\.\d+\.\d+", memguard.__version__)
    for name in CARD_FLAGS:
        assert callable(getattr(memguard.flags, name)), name


def test_install_registers_the_tasks_on_the_card():
    app = Celery("card", set_as_current=False)
    memguard.install(app)
    assert set(CARD_TASKS) <= set(app.tasks)


def test_the_command_line_has_the_commands_on_the_card():
    parser = cli._parser()
    commands = next(a for a in parser._actions if a.dest == "cmd").choices
    assert set(CARD_CLI) <= set(commands)
    assert any("--version" in a.option_strings for a in parser._actions)


def test_the_settings_on_the_card_are_read():
    assert set(CARD_SETTINGS) - VARIABLE_NAMES == set()


def test_the_metrics_on_the_card_are_exported():
    """Declared by name in the metrics module: the counters at import, the fleet's gauges at
    each scrape (real-Redis tests and the Prometheus test read their values)."""
    declared = set(re.findall(r'"(memory_[a-z_]+)"', inspect.getsource(metrics)))
    assert set(CARD_METRICS) - declared == set()


def test_every_log_event_on_the_card_is_emitted(caplog):
    caplog.set_level(logging.DEBUG, logger="memguard")
    logs._internal_logged.clear()
    logs._config_errors_logged.clear()
    logs._sampler.next_at.clear()  # a blocked read logged by an earlier test in this process
    samples = [
        events.ModeForced("read_write", "write_only", "auth", 300, 1.0),
        events.ModeForced("read_write", "write_only", "consecutive_failures", 300, 1.0, fail_count=3),
        events.WouldForce("auth", 300),
        events.ModeRestored("read_write", "probe_success", "auth"),
        events.ModeRestored("read_write", "probe_success", "auth", ramp_seconds=30),
        events.RampCompleted("auth", 2, 30),
        events.ModeForced("read_write", "write_only", "ramp_failed", 600, 1.0, holds=2, trigger="auth"),
        events.ReadBlocked("t", "auth", 1.0),
        events.ReadBlocked("t", "ramp", 1.0),
        events.FailureRecorded("timeout", "count", None, "t"),
        events.ProbeFinished("success", 0.01),
        events.OperatorAction("force", True),
        events.OperatorAction("force", False, ("bad ttl",)),
        events.GuardTrouble("config_error", "read", "ZEP_API_KEY is not set"),
        events.internal("check", KeyError("x")),
        events.GuardTrouble("redis_error", "card-test", "ConnectionError"),
    ]
    for event in samples:
        logs.on_event(event)
    emitted = {r.getMessage().split(" ", 1)[0] for r in caplog.records}
    assert set(CARD_LOG_EVENTS) - emitted == set()


def test_the_readmes_install_line_names_the_distribution_pyproject_publishes():
    import tomllib

    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    readme = (ROOT / "README.md").read_text()
    installs = re.findall(r"^pip install '?([a-z0-9-]+)(?:\[\w+\])?'?", readme, re.M)
    assert installs and set(installs) == {name} == {cli.DISTRIBUTION}, installs
    assert name != "memguard", "memguard on the package index is another project"
    assert f"`{name}`" in (ROOT / "CHANGELOG.md").read_text()


def test_the_quick_starts_first_step_names_the_variables_memguard_reads_and_its_default():
    """Step 1 exports exactly the variables every process needs, each one memguard reads, and the
    default it states for REDIS_URL is the code's."""
    import re
    from pathlib import Path

    from memguard.config.settings import VARIABLE_NAMES, Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    step = re.search(r"1\. \*\*Point every process.*?```sh\n(.*?)```", readme, re.S)
    assert step, "the README's quick start has no first step"
    exported = re.findall(r"\b([A-Z][A-Z_]+)=", step.group(1))
    assert exported == ["REDIS_URL", "ZEP_API_URL", "ZEP_API_KEY"] and set(exported) <= VARIABLE_NAMES
    assert f"default `{Settings().redis_url}`" in step.group(0)
