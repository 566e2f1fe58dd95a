"""The Django app: settings come from ``settings.MEMGUARD`` under the environment."""

from __future__ import annotations

from django.apps import AppConfig


class MemguardConfig(AppConfig):
    name = "memguard.contrib.django"
    label = "memguard"
    verbose_name = "memguard"

    def ready(self) -> None:
        # Only where settings come from: nothing is built until the first guarded read.
        from memguard import process
        from memguard.contrib.django import settings_from_django

        process.set_settings_loader(settings_from_django)
