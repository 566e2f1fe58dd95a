"""memguard's log lines: the event subscriber, redaction, and the optional JSON set-up.

Every event goes to the standard library's logger ``memguard`` at the event's own level, so it
joins whatever the application configured (Celery's logging, Django's ``LOGGING``,
``logging.basicConfig``). The message is the event name followed by ``key=value`` fields; the
fields also ride on the record (``memguard_event``, ``memguard_fields``). ``configure()`` is the
JSON mode (``install(app, json_logs=True)``, the ready app): every line, memguard's and foreign
(Celery's) alike, becomes one JSON object, memguard's with its fields as keys. Secrets are
scrubbed from memguard's fields before any formatter sees them, and from foreign lines in JSON
mode, so the Zep API key, Redis and broker passwords and webhook tokens never reach a log line.
structlog is imported only by the JSON mode.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import re
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from memguard.config.settings import webhook_entries
from memguard.domain import events

logger = logging.getLogger("memguard")

BLOCKED_LOG_INTERVAL_S = 1.0
REDACTED = "[REDACTED]"
_SECRET_KEYS = re.compile(r"(authorization|api[_-]?key|password|passwd|secret|token)$", re.I)
_AUTH_SCHEMES = ("api-key", "bearer", "basic")
_AUTH_VALUE = re.compile(r"\s{1,16}[^\s'\",}]{1,4096}")


def _auth_headers(text: str) -> str:
    """``text`` with the credential after every ``Api-Key``/``Bearer``/``Basic`` masked; each
    scheme word is found with ``str.find`` (fast and linear), the value matched only there."""
    lower = text.lower()
    spans = []
    for scheme in _AUTH_SCHEMES:
        pos = 0
        while (i := lower.find(scheme, pos)) != -1:
            pos = i + len(scheme)
            if (m := _AUTH_VALUE.match(text, pos)) is not None:
                spans.append((pos, m.end()))
                pos = m.end()
    if not spans:
        return text
    out, last = [], 0
    for start, end in sorted(spans):
        if start >= last:
            out += [text[last:start], " ", REDACTED]
            last = end
    out.append(text[last:])
    return "".join(out)
_RUN = re.compile(r"\S{0,512}")  # a URL's authority ends at whitespace; no real one is longer


def _url_passwords(text: str) -> tuple[str, list[str]]:
    """``text`` with the password of every ``scheme://user:password@`` masked, and the passwords.

    One pass, no backtracking: linear in the text whatever it holds. The password runs from the
    first ``:`` after ``://`` to the last ``@`` before whitespace (or 512 characters), so one
    holding ``@``, ``#``, ``/`` or ``?`` is masked whole; a port followed by an ``@`` in a path
    is masked too, which is the safe side."""
    out: list[str] = []
    found: list[str] = []
    pos = 0
    while (i := text.find("://", pos)) != -1:
        start = i + 3
        end = _RUN.match(text, start).end()  # type: ignore[union-attr]
        at = text.rfind("@", start, end)
        colon = text.find(":", start, at) if at != -1 else -1
        if colon != -1 and colon + 1 < at:
            out += [text[pos:colon + 1], REDACTED]
            found.append(text[colon + 1:at])
            pos = at
        else:
            out.append(text[pos:end])
            pos = end
    out.append(text[pos:])
    return "".join(out), found


def _secret_values() -> list[str]:
    values = [os.environ.get("ZEP_API_KEY", "")]
    for _, url in webhook_entries(os.environ.get("MEMORY_WEBHOOK_URLS", "")):
        # The whole URL, its path (a Slack webhook's secret), the path's last segment (the
        # token, should it be quoted alone) and the fragment (a PagerDuty routing key).
        parts = urlsplit(url)
        values += [url, parts.path, parts.path.rsplit("/", 1)[-1], parts.fragment]
    for var in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        values += _url_passwords(os.environ.get(var, ""))[1]
    return [v for v in values if len(v) >= 4]


def _scrub(text: str, secrets: list[str]) -> str:
    for value in secrets:
        text = text.replace(value, REDACTED)
    text = _url_passwords(text)[0] if "://" in text else text
    return _auth_headers(text)


def scrubbed(text: str) -> str:
    """``text`` as any memguard output may show it: every secret memguard knows of masked (for
    lines that do not go through the log, such as a command's one-line error)."""
    return _scrub(text, _secret_values())


def redact(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor (JSON mode): drop secret-named fields, scrub secret values from the rest."""
    return _scrub_nested(event_dict, _secret_values())


def _scrub_nested(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEYS.search(str(k)) else _scrub_nested(v, secrets)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_nested(v, secrets) for v in value]
    return _scrub(value, secrets) if isinstance(value, str) else value


def _lift(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """JSON mode: a memguard record's event name and fields become the line's keys."""
    record = event_dict.get("_record")
    fields = getattr(record, "memguard_fields", None)
    if fields is not None:
        event_dict["event"] = record.memguard_event  # type: ignore[union-attr]
        event_dict.update(fields)
    return event_dict


def configure(level: str = "INFO", stream: Any = None) -> None:
    """Send every log line (memguard's and the stdlib's) to ``stream`` as one JSON object."""
    import structlog

    chain = [_lift, structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level,
             structlog.stdlib.add_logger_name, structlog.processors.TimeStamper(fmt="iso", utc=True),
             structlog.processors.format_exc_info, redact]
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {
            "()": structlog.stdlib.ProcessorFormatter,
            "foreign_pre_chain": chain,
            "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                           structlog.processors.JSONRenderer()],
        }},
        "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "json",
                             "stream": stream or sys.stdout}},
        "root": {"handlers": ["out"], "level": level},
        # One line per HTTP request would drown the signal.
        "loggers": {"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
    })
    logging.captureWarnings(True)  # Python warnings become JSON lines too


def _shown(value: Any) -> str:
    if isinstance(value, str) and value and not any(c in value for c in ' ="\n'):
        return value
    return json.dumps(value, default=str, separators=(",", ":"))


_named = threading.local()  # the named guard whose event is being logged (this thread's)


def emit(level: int, name: str, **fields: Any) -> None:
    """One event line on the ``memguard`` logger, its fields scrubbed of secrets. A named guard's
    event names it first (``guard=``); the default guard's lines are as they always were."""
    if not logger.isEnabledFor(level):
        return
    guard = getattr(_named, "guard", None)
    if guard is not None:
        fields = {"guard": guard, **fields}
    clean = _scrub_nested(fields, _secret_values())
    text = " ".join([name, *(f"{k}={_shown(v)}" for k, v in clean.items())])
    logger.log(level, "%s", text, extra={"memguard_event": name, "memguard_fields": clean})


class _Sampler:
    """At most one line per interval per key; says how many were left out."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.lock = threading.Lock()
        self.next_at: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def take(self, key: str) -> int | None:
        now = time.monotonic()
        with self.lock:
            if now < self.next_at.get(key, 0.0):
                self.suppressed[key] = self.suppressed.get(key, 0) + 1
                return None
            self.next_at[key] = now + self.interval
            return self.suppressed.pop(key, 0)


_sampler = _Sampler(BLOCKED_LOG_INTERVAL_S)
_config_errors_logged: set[str] = set()
# Internal faults already logged, by (op, exception type): each is logged once per process; the
# set is bounded, so a stream of new types cannot grow it without end.
_internal_logged: set[tuple[str, str]] = set()
INTERNAL_KINDS_LOGGED = 256


def on_event(event: events.Event) -> None:
    _named.guard = event.guard if event.named else None
    try:
        _log(event)
    finally:
        _named.guard = None


def _log(event: events.Event) -> None:
    if isinstance(event, events.ModeForced):
        emit(logging.WARNING, "memory_mode_forced", prev_mode=event.prev_mode, next_mode=event.next_mode,
             reason=event.reason, hold_seconds=event.hold_seconds, until=event.until, holds=event.holds,
             by=event.by, **({"trigger": event.trigger} if event.trigger else {}))
        if event.reason == "ramp_failed":
            emit(logging.ERROR, "memory_recovery_ramp_failed", trigger=event.trigger, holds=event.holds,
                 hold_seconds=event.hold_seconds, until=event.until)
        elif event.reason == "auth":
            emit(logging.ERROR, "zep_auth_failure_auto_downgrade", reason=event.reason, until=event.until)
        elif event.reason == "consecutive_failures":
            emit(logging.ERROR, "zep_consecutive_failures_auto_downgrade", fail_count=event.fail_count,
                 until=event.until)
    elif isinstance(event, events.WouldForce):
        emit(logging.WARNING, "memory_mode_would_force", reason=event.reason,
             hold_seconds=event.hold_seconds, fail_count=event.fail_count, dry_run=True)
    elif isinstance(event, events.ModeRestored):
        emit(logging.INFO, "memory_mode_restored", mode=event.mode, reason=event.reason,
             previous_reason=event.previous_reason, by=event.by, ramp_seconds=event.ramp_seconds)
        if event.ramp_seconds > 0:
            emit(logging.INFO, "memory_recovery_ramp_started", reason=event.reason,
                 previous_reason=event.previous_reason, ramp_seconds=event.ramp_seconds)
    elif isinstance(event, events.RampCompleted):
        emit(logging.INFO, "memory_recovery_ramp_completed", previous_reason=event.previous_reason,
             holds=event.holds, ramp_seconds=event.seconds)
    elif isinstance(event, events.ReadBlocked) and event.reason == "ramp":
        suppressed = _sampler.take("held")
        if suppressed is not None:
            emit(logging.INFO, "zep_read_held_recovery_ramp", thread_id=event.thread_id, until=event.until,
                 suppressed_since_last=suppressed)
    elif isinstance(event, events.ReadBlocked):
        suppressed = _sampler.take("blocked")
        if suppressed is not None:
            emit(logging.INFO, "zep_read_blocked_forced_mode", thread_id=event.thread_id,
                 reason=event.reason, until=event.until, suppressed_since_last=suppressed)
    elif isinstance(event, events.FailureRecorded):
        emit(logging.WARNING, "zep_read_failed", reason=event.reason, action=event.action,
             status=event.status, fail_count=event.fail_count, thread_id=event.thread_id, error=event.error)
    elif isinstance(event, events.ProbeFinished):
        emit(logging.INFO, "memory_probe_finished", result=event.result,
             duration_ms=round(event.duration_seconds * 1000, 1), error=event.error)
    elif isinstance(event, events.OperatorAction):
        if event.accepted:
            emit(logging.INFO, "memguard_operator_action", action=event.action, arguments=event.arguments,
                 by=event.by)
        else:
            emit(logging.WARNING, "memguard_operator_refused", action=event.action,
                 errors=list(event.errors), arguments=event.arguments, by=event.by)
    elif isinstance(event, events.ChaosChanged) and event.change == "started":  # its reads are counted
        emit(logging.WARNING, "memguard_chaos_started", fault=event.fault, percent=event.percent,
             seconds=event.seconds, experiment=event.experiment, by=event.by)
    elif isinstance(event, events.ChaosChanged) and event.change == "stopped":
        emit(logging.INFO, "memguard_chaos_stopped", fault=event.fault, experiment=event.experiment,
             ended_by=event.ended_by, by=event.by)
    elif isinstance(event, events.ChaosChanged):
        emit(logging.INFO, "memguard_chaos_ended", fault=event.fault, experiment=event.experiment,
             seconds=event.seconds, by=event.by)
    elif isinstance(event, events.GuardTrouble) and event.kind == "config_error":
        if event.detail not in _config_errors_logged:  # once per process: it will not fix itself
            _config_errors_logged.add(event.detail)
            emit(logging.ERROR, "memguard_config_error", op=event.op, detail=event.detail)
    elif isinstance(event, events.GuardTrouble) and event.kind == events.INTERNAL:
        key = (event.op, event.error_type)
        if key not in _internal_logged and len(_internal_logged) < INTERNAL_KINDS_LOGGED:
            _internal_logged.add(key)
            emit(logging.ERROR, "memguard_internal_error", op=event.op, error_type=event.error_type,
                 detail=event.detail)
    elif isinstance(event, events.GuardTrouble):
        suppressed = _sampler.take(f"trouble:{event.kind}:{event.op}")
        if suppressed is not None:
            emit(logging.WARNING, f"memguard_{event.kind}", op=event.op, detail=event.detail,
                 suppressed_since_last=suppressed)
