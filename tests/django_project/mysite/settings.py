"""A minimal project: memguard's app, its metrics URL and settings.MEMGUARD."""

import os

SECRET_KEY = "memguard-tests-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "mysite.urls"
INSTALLED_APPS = ["memguard.contrib.django"]
DATABASES: dict = {}
USE_TZ = True

# The test passes its private Redis and the stub's key in; everything else is the project's.
MEMGUARD = {
    "REDIS_URL": os.environ["TEST_REDIS_URL"],
    "ZEP_API_KEY": os.environ["TEST_ZEP_KEY"],
    "MEMORY_DOWNGRADE_THRESHOLD": 7,
    "FLAG_ZEP_WRITE": True,
}
if os.environ.get("TEST_MEMGUARD_EXTRA"):  # a bad entry, for the error test
    MEMGUARD[os.environ["TEST_MEMGUARD_EXTRA"]] = "1"
