"""Celery settings for memguard's ready app (``celery -A memguard ...``), from the environment."""

import os

from memguard.settings import Settings
from memguard.tasks import PROBE_SCHEDULE_NAME, probe_entry

_settings = Settings.from_env()

broker_url = os.environ.get("CELERY_BROKER_URL", _settings.redis_url)
result_backend = os.environ.get("CELERY_RESULT_BACKEND", _settings.redis_url)
result_expires = 3600

# JSON only: an operator's `celery call` must never be able to send a pickle.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

worker_hijack_root_logger = False
worker_prefetch_multiplier = 1
broker_connection_retry_on_startup = True

# Beat with RedBeat: one active beat fleet-wide, a standby takes over within ~5 s.
# Beat exits when it loses its lock: run it under a supervisor that restarts it.
beat_scheduler = "redbeat.RedBeatScheduler"
redbeat_redis_url = _settings.redis_url
redbeat_key_prefix = "memguard:redbeat:"
redbeat_lock_timeout = 5
beat_max_loop_interval = 1
beat_schedule = {PROBE_SCHEDULE_NAME: probe_entry(_settings)}
