"""The public flags API: modes and the fleet-wide forced record (names fixed by memguard's
design contract and kept for older code).

A force and a clear here take the operators' one path (``memguard.ops.actions``): the same
checks, events and audit entry as ``memguard force`` and the ``memguard.force`` task. The key
constants are the names on one Redis server; on a Redis Cluster they start with ``{mem}:``
(``memguard.store.keys.Keys.under``).
"""

from __future__ import annotations

from typing import Any

from memguard import process
from memguard.config.settings import Settings
from memguard.domain.events import origin
from memguard.domain.modes import EffectiveMode
from memguard.store.keys import CONSECUTIVE_FAILURES_KEY, FORCED_MODE_KEY

DEFAULT_HOLD_SECONDS: int = Settings.hold_seconds
CONSECUTIVE_FAILURES_THRESHOLD: int = Settings.threshold

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
    return process.get().state.base


def effective_mode() -> EffectiveMode:
    """``write_only`` while a forced record is active (never raising the mode), else the base."""
    return process.get().guard.effective_mode()


def get_forced_mode(guard: str = "default") -> dict[str, Any] | None:
    """The active forced record as stored, or None: from the guard's view while this process
    reads it (the default's always), else read from Redis."""
    proc = process.get()
    unit = proc.units.unit(guard) if isinstance(guard, str) else None
    record = unit.guard.forced() if unit is not None else proc.ops_for(guard).state.snapshot().record
    return None if record is None else record.as_dict()


def force_write_only(reason: str, ttl_seconds: int = DEFAULT_HOLD_SECONDS,
                     by: dict[str, Any] | None = None, *, replace: bool = False,
                     guard: str = "default") -> dict[str, Any]:
    """Force write_only fleet-wide for ``ttl_seconds`` (an operator action: checked, logged and
    audited; a bad argument raises ``OperatorError`` and changes nothing). A longer hold already
    in place is kept, unless ``replace=True``; the returned record is the one in force.
    ``guard``: a named guard instead of the default."""
    forced = process.get().ops_for(guard).force(by or origin("api"), reason=reason, ttl_seconds=ttl_seconds,
                                                replace=replace)
    forced.pop("forced")
    forced.pop("kept")
    return forced


def clear_forced_mode(by: dict[str, Any] | None = None, *, ramp: bool = True, guard: str = "default") -> bool:
    """Remove the forced record now (audited); True if there was one. Reads return through the
    recovery ramp, or with ``ramp=False`` all at once (ending a ramp in progress too)."""
    return process.get().ops_for(guard).clear(by or origin("api"), ramp=ramp)["cleared"]


def increment_consecutive_failures() -> int:
    """Count one failure atomically (forcing at the threshold) and return the new count."""
    return process.get().state.record_failure(origin("api")).fail_count


def reset_consecutive_failures() -> None:
    """End the failure window, as a successful read does."""
    process.get().state.reset_failures()
