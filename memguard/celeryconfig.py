"""Celery settings of memguard's ready app (``celery -A memguard ...``), from the environment.

Packaged, so the ready app finds them from any working directory. To change them, write a
module that starts with ``from memguard.celeryconfig import *`` and name it in
``CELERY_CONFIG_MODULE``. Beat's loop interval and RedBeat lock timeout come from
``memguard.install`` (1 s and 5 s) unless set here.
"""

import os

from memguard.config.settings import SettingsError
from memguard.integrations.celery_settings import celery_transport
from memguard.ops.beatlock import READY_APP_PREFIX

# The broker (and the results, unless CELERY_RESULT_BACKEND says otherwise) follow
# CELERY_BROKER_URL, else REDIS_URL: on Sentinel in kombu's sentinel:// form. A Redis Cluster
# cannot carry them, so CELERY_BROKER_URL must then name another Redis (RedBeat uses it too).
# A bad REDIS_URL is a SettingsError naming it; the ready app (memguard.celery) exits with it.
try:
    _transport = celery_transport(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0", os.environ)
except ValueError as exc:
    raise SettingsError(f"invalid configuration: REDIS_URL: {exc}") from None
broker_url = _transport["broker_url"]
broker_transport_options = _transport["broker_transport_options"]
result_backend = _transport["result_backend"]
result_backend_transport_options = _transport["result_backend_transport_options"]
result_expires = 3600

# JSON only: an operator's `celery call` must never be able to send a pickle.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

worker_hijack_root_logger = False
worker_prefetch_multiplier = 1
broker_connection_retry_on_startup = True

# One active beat fleet-wide (RedBeat's lock); a standby takes over within ~6 s, and every
# beat rides through a Redis restart (memguard.beat).
beat_scheduler = "memguard.beat.Scheduler"
redbeat_key_prefix = READY_APP_PREFIX
