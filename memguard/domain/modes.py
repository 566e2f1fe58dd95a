"""The three modes and how a forced record combines with the environment flags."""

from __future__ import annotations

import enum

from memguard.config.settings import Settings


class EffectiveMode(enum.StrEnum):
    OFF = "off"
    WRITE_ONLY = "write_only"
    READ_WRITE = "read_write"


def base_mode_of(settings: Settings) -> EffectiveMode:
    if not settings.flag_zep_write:
        return EffectiveMode.OFF
    if not settings.flag_zep_read:
        return EffectiveMode.WRITE_ONLY
    return EffectiveMode.READ_WRITE


def combine(base: EffectiveMode, forced: bool) -> EffectiveMode:
    """A force only ever lowers the mode: forced write_only over a base of off stays off."""
    if forced and base is EffectiveMode.READ_WRITE:
        return EffectiveMode.WRITE_ONLY
    return base
