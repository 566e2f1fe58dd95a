"""What a failed read means for the guard: the one place that decides.

Classification goes by the HTTP status the exception carries, never by its class:
zep-python 2.x and zep-cloud 4.x raise different classes for the same status, and an
application's own read may use httpx, requests or the standard library.

| the read raised                                                   | reason       | action |
| ----------------------------------------------------------------- | ------------ | ------ |
| status 401 or 403                                                 | auth         | force  |
| status 408                                                        | timeout      | count  |
| status 5xx (a non-JSON 5xx body too)                              | http_5xx     | count  |
| status 429 with Retry-After (seconds or an HTTP date)             | rate_limited | force for that long |
| status 429 without Retry-After                                    | rate_limited | ignore |
| any other status                                                  | http_4xx     | ignore |
| a transport timeout (httpx, requests, urllib3, TimeoutError)      | timeout      | count  |
| a connection error (httpx, requests, urllib3, ConnectionError)    | connection   | count  |
| a payload that cannot be parsed (ValueError)                      | bad_payload  | ignore |
| anything else                                                     | other        | ignore |
| a read that returned but overran its budget (``timeout_ms``)      | timeout      | count  |

The status is found, in order, on ``exc.status_code`` (the Zep SDKs' ``ApiError``, and any
exception with an integer ``status_code``), ``exc.response.status_code`` (httpx's
``HTTPStatusError``, requests' ``HTTPError``) and ``exc.status`` (``urllib.error.HTTPError``,
aiohttp, urllib3 responses). zep-python leaks a raw ``JSONDecodeError`` for some non-JSON
error bodies and its errors carry no headers, so memguard's Zep adapter attaches the last
HTTP status and Retry-After it saw to the exception (``RESPONSE_ATTR``) for this module.
Retry-After is read from ``exc.headers`` (zep-cloud) or ``exc.response.headers`` (httpx,
requests) first.
"""

from __future__ import annotations

import datetime
import email.utils
import enum
import http.client
import json
import sys
import urllib.error
from dataclasses import dataclass
from typing import Any

# Every reason a failed read is counted under (the `reason` label of the failure counter).
FAILURE_REASONS = ("auth", "timeout", "connection", "http_5xx", "rate_limited", "http_4xx", "bad_payload",
                   "other")
# The (status, Retry-After) of the last response memguard's Zep adapter saw for this read.
RESPONSE_ATTR = "memguard_response"


class Action(enum.Enum):
    FORCE = "force"  # downgrade the fleet at once
    COUNT = "count"  # one more consecutive failure
    IGNORE = "ignore"  # not Zep being down: metrics only


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str  # the `reason` label of memory_zep_context_failures_total
    status: int | None = None
    hold_seconds: float | None = None  # a FORCE's own hold (a 429's Retry-After), else the setting


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, from any of the common clients, or None."""
    for holder, attr in ((exc, "status_code"), (getattr(exc, "response", None), "status_code"),
                         (exc, "status")):
        status = getattr(holder, attr, None)
        if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
            return status
    return None


def retry_after(exc: BaseException, fallback: str | None = None) -> float | None:
    """Seconds a 429's Retry-After asks for (seconds or an HTTP date), or None."""
    raw = fallback
    for headers in (getattr(exc, "headers", None), getattr(getattr(exc, "response", None), "headers", None)):
        if headers is not None and hasattr(headers, "get"):
            raw = headers.get("retry-after") or headers.get("Retry-After") or raw
            break
    if not raw:
        return None
    raw = str(raw).strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        seconds = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
    return seconds if seconds >= 1 else None


def classify(exc: BaseException) -> Verdict:
    """Map a read failure to the action of the table above."""
    status = status_of(exc)
    last = getattr(exc, RESPONSE_ATTR, None)
    last_status, last_retry = last if isinstance(last, tuple) and len(last) == 2 else (None, None)
    if status is None and isinstance(exc, json.JSONDecodeError):
        status = last_status
        if status is None or 200 <= status < 300:
            return Verdict(Action.IGNORE, "bad_payload", status)
    if status == 429:
        wait = retry_after(exc, last_retry if last_status == 429 else None)
        if wait is not None:
            return Verdict(Action.FORCE, "rate_limited", 429, wait)
    if status is not None:
        return _by_status(status)
    urllib3 = sys.modules.get("urllib3")
    if urllib3 is not None:
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(exc.reason, BaseException):
            return classify(exc.reason)  # what failed on the last try
        if isinstance(exc, urllib3.exceptions.NewConnectionError):  # a subclass of its timeout error
            return Verdict(Action.COUNT, "connection")
    if isinstance(exc, _timeouts()):
        return Verdict(Action.COUNT, "timeout")
    if isinstance(exc, _connection_errors()):
        return Verdict(Action.COUNT, "connection")
    return Verdict(Action.IGNORE, "bad_payload" if isinstance(exc, ValueError) else "other")


def of_fault(status: int | None) -> Verdict:
    """What a read failing with ``status`` (None: a timeout) gets: a game day's injected fault is
    judged as the real one would be (``memguard.domain.chaos``)."""
    return Verdict(Action.COUNT, "timeout") if status is None else _by_status(status)


# Exception classes of the HTTP libraries, by module and attribute path. Only libraries the
# process has loaded are looked at: an exception of one that is not loaded cannot occur, and
# looking costs no import.
_TIMEOUTS = (("httpx", "TimeoutException"), ("requests", "exceptions.Timeout"),
             ("urllib3", "exceptions.TimeoutError"))
_CONNECTION_ERRORS = (("httpx", "TransportError"), ("requests", "exceptions.ConnectionError"),
                      ("urllib3", "exceptions.ProtocolError"), ("urllib3", "exceptions.NewConnectionError"),
                      ("urllib3", "exceptions.MaxRetryError"))


def error_meta(exc: BaseException, verdict: Verdict | None = None) -> dict[str, Any]:
    """What a caller's ``meta`` says of a read that raised: its classification, or only its
    type when even classifying it failed (the caller's meta never depends on memguard working)."""
    try:
        verdict = verdict or classify(exc)
    except Exception:
        return {"used": False, "source": "zep_error", "reason": None, "status": None,
                "error": type(exc).__name__}
    return {"used": False, "source": "zep_error", "reason": verdict.reason, "status": verdict.status,
            "error": type(exc).__name__}


def _loaded(classes: tuple[tuple[str, str], ...]) -> list[type[BaseException]]:
    found = []
    for module_name, path in classes:
        obj: Any = sys.modules.get(module_name)
        if obj is not None:
            for part in path.split("."):
                obj = getattr(obj, part)
            found.append(obj)
    return found


def _timeouts() -> tuple[type[BaseException], ...]:
    """Timeout classes of the standard library and of the HTTP libraries the process has loaded."""
    return (TimeoutError, *_loaded(_TIMEOUTS))


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Transport errors: a refused or reset connection, a broken protocol, a DNS failure."""
    return (ConnectionError, http.client.HTTPException, urllib.error.URLError, *_loaded(_CONNECTION_ERRORS))


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
