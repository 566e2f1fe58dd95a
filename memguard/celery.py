"""memguard's ready Celery app: ``celery -A memguard worker|beat|call``.

Configured from ``memguard.celeryconfig`` (or the module named by ``CELERY_CONFIG_MODULE``)
and the environment, from any working directory. Importing this module (which Celery does
for ``-A memguard``) sets up JSON logging: it is an entry point, not a library module. A bad
setting stops it here with one line naming the variable (exit 78).
"""

from __future__ import annotations

import os

from celery import Celery

from memguard.config.settings import SettingsError
from memguard.integrations.tasks import exit_config, install
from memguard.observe import logs

# JSON from the first line on: Celery warns (privileges, config) before its logging signal.
logs.configure()
app = Celery("memguard")
try:
    app.config_from_object(os.environ.get("CELERY_CONFIG_MODULE") or "memguard.celeryconfig", force=True)
except SettingsError as exc:
    exit_config(str(exc))
install(app, json_logs=True)
