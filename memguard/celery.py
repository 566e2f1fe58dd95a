"""memguard's ready Celery app: ``celery -A memguard worker|beat|call``.

Configured from ``celeryconfig.py`` (in the working directory, or the module named by
``CELERY_CONFIG_MODULE``) and the environment.
"""

from __future__ import annotations

import os

from celery import Celery

from memguard import logs, tasks
from memguard.settings import Settings

# JSON from the first line on: Celery warns (privileges, config) before its logging signal.
logs.configure()
app = Celery("memguard")
app.config_from_object(os.environ.get("CELERY_CONFIG_MODULE", "celeryconfig"), silent=True)
_redis_url = Settings.from_env().redis_url
app.conf.setdefault("broker_url", _redis_url)
app.conf.setdefault("result_backend", _redis_url)
tasks.install(app)
