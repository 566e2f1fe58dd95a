"""The public flags API: modes and the fleet-wide forced record (names fixed by DESIGN.md)."""

from __future__ import annotations

from typing import Any

from memguard import runtime
from memguard.guard import origin
from memguard.modes import EffectiveMode
from memguard.ops import check_force_args
from memguard.state import CONSECUTIVE_FAILURES_KEY, FORCED_MODE_KEY

DEFAULT_HOLD_SECONDS = 300
CONSECUTIVE_FAILURES_THRESHOLD = 3

__all__ = [
    "CONSECUTIVE_FAILURES_KEY",
    "CONSECUTIVE_FAILURES_THRESHOLD",
    "DEFAULT_HOLD_SECONDS",
    "FORCED_MODE_KEY",
    "EffectiveMode",
    "base_mode",
    "clear_forced_mode",
    "effective_mode",
    "force_write_only",
    "get_forced_mode",
    "increment_consecutive_failures",
    "reset_consecutive_failures",
]


def base_mode() -> EffectiveMode:
    """The mode the environment flags allow (FLAG_ZEP_WRITE, FLAG_ZEP_READ)."""
    return runtime.get().state.base


def effective_mode() -> EffectiveMode:
    """``write_only`` while a forced record is active (never raising the mode), else the base."""
    return runtime.get().guard.effective_mode()


def get_forced_mode() -> dict[str, Any] | None:
    """The active forced record as stored, or None."""
    record = runtime.get().guard.forced()
    return None if record is None else record.as_dict()


def force_write_only(reason: str, ttl_seconds: int = DEFAULT_HOLD_SECONDS,
                     by: dict[str, Any] | None = None) -> dict[str, Any]:
    """Force write_only fleet-wide for ``ttl_seconds``, replacing any record (operator action)."""
    reason, ttl_seconds = check_force_args(reason, ttl_seconds)
    transition = runtime.get().state.force(reason, ttl_seconds, by or origin("api"), auto=False)
    assert transition.record is not None
    return transition.record.as_dict()


def clear_forced_mode(by: dict[str, Any] | None = None) -> bool:
    """Remove the forced record now; True if there was one."""
    return runtime.get().state.clear(by or origin("api")).previous is not None


def increment_consecutive_failures() -> int:
    """Count one failure atomically (forcing at the threshold) and return the new count."""
    return runtime.get().state.record_failure(origin("api")).fail_count


def reset_consecutive_failures() -> None:
    """End the failure window, as a successful read does."""
    runtime.get().state.reset_failures()
