"""How memguard says times, durations and who acted, to people: one wording for the command
line, the audit trail's lines and status."""

from __future__ import annotations

import time
from typing import Any


def iso(epoch: float) -> str:
    """UTC ISO 8601 to the second: ``2026-11-30T08:24:02Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def duration(seconds: float) -> str:
    """Rounded, two units at most: ``45s``, ``9m 58s``, ``2h 5m``, ``3d 4h``."""
    s = max(0, round(seconds))
    for unit, size, sub, sub_size in (("d", 86_400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            rest = (s % size) // sub_size
            return f"{s // size}{unit} {rest}{sub}" if rest else f"{s // size}{unit}"
    return f"{s}s"


def by_text(by: Any) -> str:
    """``via task on host:pid (task id …)``: who acted, from a record's or an entry's ``by``."""
    if not isinstance(by, dict) or not by:
        return "unknown"
    text = f"via {by.get('via', '?')}"
    if by.get("host"):
        text += f" on {by['host']}" + (f":{by['pid']}" if by.get("pid") else "")
    extra = [f"{label} {by[key]}" for key, label in (("task_id", "task id"), ("user", "user")) if by.get(key)]
    return text + (f" ({', '.join(extra)})" if extra else "")
