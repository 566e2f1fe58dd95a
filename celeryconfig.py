"""An example of changing the ready app's Celery settings.

    CELERY_CONFIG_MODULE=celeryconfig celery -A memguard worker -l info

Start from memguard's packaged settings and override what you need.
"""

from memguard.celeryconfig import *  # noqa: F403

result_expires = 600  # keep task results for 10 minutes (the packaged default is an hour)
