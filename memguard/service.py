"""The request-path entry points: read thread context through the guard, write unguarded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memguard import runtime
from memguard.modes import EffectiveMode


def fetch_thread_context(thread_id: str) -> tuple[str | None, dict[str, Any]]:
    """Return (context | None, meta). Never raises what Zep or Redis raised.

    While the fleet is forced to write_only this returns ``(None, meta)`` at once with
    ``meta["source"] == "write_only_forced"`` and makes no call to Zep.
    """
    rt = runtime.get()
    reader = rt.reader  # a missing API key is a configuration error, raised here
    return rt.guard.call(thread_id, reader.read_context, thread_id, rt.settings.read_timeout_s)


def add_messages(thread_id: str, messages: Sequence[dict[str, str]]) -> bool:
    """Write messages to Zep unless FLAG_ZEP_WRITE is off; a forced write_only never blocks writes.

    Errors from Zep are raised: the caller decides whether a lost write matters.
    """
    rt = runtime.get()
    if rt.guard.base is EffectiveMode.OFF:
        return False
    rt.reader.add_messages(thread_id, messages)
    return True
