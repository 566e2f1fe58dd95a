"""memguard.contrib.django in a minimal Django project (tests/django_project), run as real
``manage.py`` processes: the operator command, settings.MEMGUARD under the environment, and
/api/metrics/ with the fleet gauge and other processes' counters (multiprocess mode)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from memguard.store.keys import FORCED_MODE_KEY

from .conftest import API_KEY, ROOT

PROJECT = ROOT / "tests" / "django_project"
METRICS = """
from django.test import Client
r = Client().get("/api/metrics/")
print(r.status_code, r["Content-Type"])
print(r.content.decode())
"""


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def env(redis_server, redis_db, stub, tmp_path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MEMORY_", "REDIS_URL", "ZEP_API_KEY"))}
    e.update(TEST_REDIS_URL=redis_server.url, TEST_ZEP_KEY=API_KEY, ZEP_API_URL=stub.url,
             PYTHONPATH=str(ROOT), PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    return e


def test_manage_py_memguard_takes_settings_memguard_and_the_environment_wins(env, redis_db):
    forced = manage(env, "memguard", "force", "--ttl", "60")
    assert forced.returncode == 0, forced.stderr
    assert redis_db.get(FORCED_MODE_KEY), "settings.MEMGUARD's REDIS_URL was used"

    status = manage(env, "memguard", "status")
    assert status.stdout.startswith("mode:        write_only"), status.stdout
    assert "of 7 in the current window" in status.stdout  # settings.MEMGUARD's threshold
    overridden = manage({**env, "MEMORY_DOWNGRADE_THRESHOLD": "9"}, "memguard", "status")
    assert "of 9 in the current window" in overridden.stdout  # the environment wins

    history = manage(env, "memguard", "history", "-n", "5")
    assert "forced" in history.stdout and "via cli" in history.stdout, history.stdout
    cleared = manage(env, "memguard", "clear")
    assert cleared.returncode == 0 and not redis_db.exists(FORCED_MODE_KEY)

    other = manage(env, "memguard", "drill")
    assert other.returncode != 0 and "unknown memguard command 'drill'" in other.stderr


def test_the_django_guides_lines_are_the_projects():
    guide = (ROOT / "docs" / "django.md").read_text()
    block = re.search(r"<!-- example-django -->\n```python\n(.*?)```", guide, re.S)
    assert block, "docs/django.md has no Django example"
    project = "\n".join(p.read_text() for p in (PROJECT / "mysite").glob("*.py"))
    code = [ln for ln in block.group(1).splitlines()
            if ln.strip() and not ln.startswith("#") and "..." not in ln]
    assert code and all(ln in project for ln in code), code
    assert '"memguard.contrib.django"' in block.group(1) and "memguard.contrib.django" in project


def test_a_bad_settings_memguard_entry_is_named_in_one_line(env, redis_db):
    out = manage({**env, "TEST_MEMGUARD_EXTRA": "MEMORY_DOWNGRADE_TRESHOLD"}, "memguard", "status")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert "MEMORY_DOWNGRADE_TRESHOLD" in out.stderr and "settings.MEMGUARD" in out.stderr


def test_metrics_view_serves_the_fleet_gauge_and_every_process_counters(env, stub, redis_db):
    stub.set_fault("503")
    reads = manage(env, "shell", "-c", "import memguard; print(memguard.fetch_thread_context('t')[1])")
    assert "http_5xx" in reads.stdout, reads.stderr
    stub.set_fault("ok")
    assert manage(env, "memguard", "force", "--ttl", "60").returncode == 0

    out = manage(env, "shell", "-c", METRICS)  # another process than the one that read
    assert "200 text/plain" in out.stdout, out.stdout + out.stderr
    assert 'memory_mode_gauge{guard="default",mode="write_only",name="default"} 1.0' in out.stdout
    assert 'memory_zep_context_failures_total{guard="default",reason="http_5xx"} 1.0' in out.stdout
