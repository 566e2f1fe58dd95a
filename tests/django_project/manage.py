#!/usr/bin/env python
"""The minimal Django project memguard's tests run: manage.py memguard ..., /api/metrics/."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
