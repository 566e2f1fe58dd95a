"""memguard for Django projects.

    INSTALLED_APPS = [..., "memguard.contrib.django"]      # manage.py memguard status|force|clear|history
    MEMGUARD = {"REDIS_URL": "redis://redis:6379/0", "MEMORY_DOWNGRADE_THRESHOLD": 5}   # optional
    path("api/metrics/", memguard.contrib.django.metrics_view)                         # urls.py

``settings.MEMGUARD`` takes memguard's variable names (``docs/settings.md``) and supplies
defaults: an environment variable that is set wins over it, so an operator can change one
value on one host without a deploy, and the Celery workers, beat and CLI, which read the
environment, agree with the web processes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from memguard.config.settings import VARIABLE_NAMES, Settings, SettingsError

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

__all__ = ["metrics_view", "settings_from_django"]


def metrics_view(request: HttpRequest) -> HttpResponse:
    """memguard's metrics in Prometheus' text format: the fleet's mode read from Redis at
    scrape time, and the counters of every process when PROMETHEUS_MULTIPROC_DIR is set."""
    from django.http import HttpResponse
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    # Its counters register when first served, not when INSTALLED_APPS is loaded.
    from memguard import exporter
    from memguard.observe import metrics

    return HttpResponse(generate_latest(metrics.registry(exporter.current_state, exporter.held_guards)),
                        content_type=CONTENT_TYPE_LATEST)


def settings_from_django() -> Settings:
    """``settings.MEMGUARD`` under the environment; raises ``SettingsError`` naming bad entries."""
    from django.conf import settings

    given = getattr(settings, "MEMGUARD", None) or {}
    if not isinstance(given, Mapping):
        raise SettingsError("invalid configuration: settings.MEMGUARD must be a dict of memguard's "
                            f"variable names, not {type(given).__name__}")
    unknown = sorted(str(k) for k in given if k not in VARIABLE_NAMES)
    if unknown:
        raise SettingsError("invalid configuration: settings.MEMGUARD has unknown names "
                            f"{', '.join(unknown)} (expected memguard's variable names, such as REDIS_URL)")
    return Settings.from_env({**{k: _as_text(v) for k, v in given.items()}, **os.environ})


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)
