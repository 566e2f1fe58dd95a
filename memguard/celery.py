"""memguard's ready Celery app: ``celery -A memguard worker|beat|call``.

Configured from ``memguard.celeryconfig`` (or the module named by ``CELERY_CONFIG_MODULE``)
and the environment, from any working directory. Importing this module (which Celery does
for ``-A memguard``) sets up JSON logging: it is an entry point, not a library module.
"""

from __future__ import annotations

import os

from celery import Celery

from memguard import logs
from memguard.tasks import install

# JSON from the first line on: Celery warns (privileges, config) before its logging signal.
logs.configure()
app = Celery("memguard")
app.config_from_object(os.environ.get("CELERY_CONFIG_MODULE") or "memguard.celeryconfig")
install(app, json_logs=True)
