"""Which telemetry backends a process feeds besides its logs: OpenTelemetry only when it is
to be fed, so that without it nothing of OpenTelemetry's is imported."""

from __future__ import annotations

import importlib.util
from typing import Any

from memguard.config.settings import Settings, SettingsError


def opentelemetry(settings: Settings) -> Any:
    """``memguard.observe.otel`` when OpenTelemetry is to be fed: ``MEMGUARD_OTEL=auto`` (the
    default) when ``opentelemetry-api`` is installed, ``on`` always (a SettingsError without it),
    ``off`` never. Without it nothing of OpenTelemetry's is imported."""
    if settings.otel == "off" or (settings.otel == "auto" and not installed("opentelemetry")):
        return None
    try:
        from memguard.observe import otel
    except ImportError as exc:
        if settings.otel == "on":
            raise SettingsError(f"MEMGUARD_OTEL=on: OpenTelemetry cannot be imported ({exc}); "
                                "install memguard-zep[otel]") from None
        return None
    return otel


def installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False
