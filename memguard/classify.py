"""What a failed Zep read means for the guard: the one place that decides.

Classification goes by the HTTP status the client reports (``status_code`` on its
``ApiError``), never by exception class: zep-python 2.x and zep-cloud 4.x raise different
classes for the same status. zep-python leaks a raw ``JSONDecodeError`` for some non-JSON
error bodies, so the adapter records the last HTTP status it saw and passes it in here.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

import httpx


class Action(enum.Enum):
    FORCE = "force"  # downgrade the fleet at once
    COUNT = "count"  # one more consecutive failure
    IGNORE = "ignore"  # not Zep being down: metrics only


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str  # the `reason` label of memory_zep_context_failures_total
    status: int | None = None


def classify(exc: BaseException, last_status: int | None = None) -> Verdict:
    """Map a read failure to the action DESIGN.md's trigger table prescribes."""
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = None
    if status is None and isinstance(exc, json.JSONDecodeError):
        status = last_status
        if status is None or 200 <= status < 300:
            return Verdict(Action.IGNORE, "bad_payload", status)
    if status is not None:
        return _by_status(status)
    if isinstance(exc, httpx.TimeoutException):
        return Verdict(Action.COUNT, "timeout")
    if isinstance(exc, httpx.TransportError):
        return Verdict(Action.COUNT, "connection")
    if isinstance(exc, TimeoutError):
        return Verdict(Action.COUNT, "timeout")
    if isinstance(exc, ConnectionError):
        return Verdict(Action.COUNT, "connection")
    return Verdict(Action.IGNORE, "bad_payload" if isinstance(exc, ValueError) else "other")


def _by_status(status: int) -> Verdict:
    if status in (401, 403):
        return Verdict(Action.FORCE, "auth", status)
    if status == 408:
        return Verdict(Action.COUNT, "timeout", status)
    if status >= 500:
        return Verdict(Action.COUNT, "http_5xx", status)
    if status == 429:
        return Verdict(Action.IGNORE, "rate_limited", status)
    if 200 <= status < 300:
        return Verdict(Action.IGNORE, "bad_payload", status)
    return Verdict(Action.IGNORE, "http_4xx", status)
