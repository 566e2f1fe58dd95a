"""Configuration from the environment, validated once at start-up.

A bad value fails loudly with the variable's name: a guard that silently falls back to a
default would hide a typo until the night it matters.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:  # the target (and redis-py with it) is imported when Redis is first needed
    from memguard.config.target import Target
    from memguard.config.views import ViewServers

ZEP_CLIENTS = ("zep-python", "zep-cloud")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """One or more environment variables hold a value memguard cannot use."""


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    zep_api_key: str | None = field(default=None, repr=False)
    zep_api_url: str = "https://api.getzep.com"
    zep_client: str = "zep-python"
    flag_zep_read: bool = True
    flag_zep_write: bool = True
    threshold: int = 3
    hold_seconds: int = 300
    probe_timeout_ms: int = 150
    window_seconds: int = 60
    read_timeout_ms: int = 250
    probe_interval_seconds: float = 5.0
    probe_grace_seconds: int = 60
    disable_auto_downgrade: bool = False
    redis_timeout_ms: int = 50
    hold_max_seconds: int = 3600
    latency_threshold_ms: int = 0
    latency_min_reads: int = 5
    latency_window_seconds: int = 30
    failure_rate_threshold: float = 0.0  # 0: off, the consecutive-failure trigger applies
    failure_rate_window_seconds: int = 60
    failure_rate_min_reads: int = 20
    webhook_urls: tuple[tuple[str, str], ...] = ()  # (format, url), format slack or pagerduty
    notify_stuck_seconds: int = 900
    quorum_hosts: int = 0
    quorum_auth: bool = False
    instance: str = field(default_factory=socket.gethostname)
    metrics_port: int | None = None  # a Celery worker's /metrics (its main process)
    ramp_seconds: int = 30  # the recovery ramp after a hold (memguard.domain.ramp); 0: none
    ramp_min_percent: float = 10.0
    ramp_aggression: float = 1.0
    otel: str = "auto"  # OpenTelemetry: auto (when opentelemetry-api is installed), on, off
    command_idle_seconds: int = 10  # close the command connection after this idle; 0: keep it open
    view_urls: tuple[str, ...] = ()  # the views' servers (memguard.config.views); () follows REDIS_URL
    chaos: str = "off"  # allow: this process injects a game day's experiment (memguard chaos)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every variable, report every bad one at once."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        errors: list[str] = []
        for attr, (var, parse) in _VARIABLES.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[attr] = parse(raw.strip())
            except ValueError as exc:
                errors.append(f"{var}={_shown(var, raw)}: {exc}")
        if not errors and (problem := _views_problem(values)) is not None:
            errors.append(f"MEMGUARD_VIEW_URLS: {problem}")
        if errors:
            raise SettingsError("invalid configuration: " + "; ".join(errors))
        default = values.pop("webhook_format", "auto")
        values["webhook_urls"] = tuple((fmt or _format_for(url, default), url)
                                       for fmt, url in values.get("webhook_urls", ()))
        return cls(**values)

    @property
    def read_timeout_s(self) -> float:
        return self.read_timeout_ms / 1000.0

    @property
    def failure_rate_on(self) -> bool:
        """The failure-rate policy replaces the consecutive-failure trigger (auth still trips at once)."""
        return self.failure_rate_threshold > 0

    @cached_property
    def redis_target(self) -> Target:
        """Where memguard's Redis is (one server, a Sentinel master, a Cluster)."""
        from memguard.config.target import Target

        return Target.parse(self.redis_url)

    @cached_property
    def view_servers(self) -> ViewServers | None:
        """Where the views connect when not to REDIS_URL's server (MEMGUARD_VIEW_URLS)."""
        if not self.view_urls:
            return None
        from memguard.config.views import ViewServers

        return ViewServers(self.redis_target, self.view_urls)

    @property
    def hold_cap_seconds(self) -> int:
        """The longest hold: backoff and Retry-After stop here (never below the base hold)."""
        return max(self.hold_max_seconds, self.hold_seconds)

    @property
    def ramp(self) -> dict[str, float] | None:
        """The ramp a restore starts, as the scripts take it; None when ramps are off."""
        if not self.ramp_seconds:
            return None
        return {"seconds": self.ramp_seconds, "min_percent": self.ramp_min_percent,
                "aggression": self.ramp_aggression}

    @property
    def probe_timeout_s(self) -> float:
        return self.probe_timeout_ms / 1000.0


def _format_for(url: str, default: str) -> str:
    """auto: PagerDuty's Events API by its host, Slack-compatible JSON for anything else."""
    if default != "auto":
        return default
    return "pagerduty" if (urlsplit(url).hostname or "").endswith("pagerduty.com") else "slack"


def masked_url(url: str) -> str:
    """``url`` with its passwords (in the user part or a ``*password=`` query value) replaced
    by ``***``: safe to print and log. The user part ends at the last ``@`` before whitespace, so
    a password holding ``#``, ``/``, ``?`` or ``@`` (which URL parsing would split) is hidden whole."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = next((i for i, c in enumerate(rest) if c.isspace()), len(rest))
    at = rest.rfind("@", 0, end)
    if at != -1:
        user, colon, _ = rest[:at].partition(":")
        if colon:
            rest = f"{user}:***{rest[at:]}"
    parts = urlsplit(f"{scheme}://{rest}")
    if "password" in parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = [(k, "***" if "password" in k else v) for k, v in pairs]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


def _shown(var: str, raw: str) -> str:
    if var in ("ZEP_API_KEY", "MEMORY_WEBHOOK_URLS"):  # a Slack webhook URL is a secret
        return "'***'"
    return repr(masked_url(raw)) if "://" in raw else repr(raw)


class _Parser:
    """A variable's parser, and what it takes in words (``takes``: docs/settings.md shows it, and
    a test holds the page to it)."""

    def __init__(self, takes: str, parse: Callable[[str], Any]) -> None:
        self.takes, self.parse = takes, parse

    def __call__(self, raw: str) -> Any:
        return self.parse(raw)


def _bool(raw: str) -> bool:
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("expected true/false (or 1/0, yes/no, on/off)")


def _int_in(lo: int, hi: int) -> _Parser:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("expected a whole number") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return _Parser(f"a whole number, {lo} to {hi}", parse)


def _float_in(lo: float, hi: float) -> _Parser:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}")
        return value

    return _Parser(f"a number, {lo:g} to {hi:g}", parse)


def _url(*schemes: str) -> _Parser:
    def parse(raw: str) -> str:
        scheme, sep, rest = raw.partition("://")
        if not sep or scheme not in schemes or not rest:
            raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return raw.rstrip("/")

    return _Parser(f"a URL: {' or '.join(s + '://' for s in schemes)}", parse)


def _redis_url(raw: str) -> str:
    """One server, a Sentinel master or a Cluster (memguard.connection)."""
    from memguard.config.target import Target

    Target.parse(raw)
    return raw.rstrip("/")


def _view_urls(raw: str) -> tuple[str, ...]:
    from memguard.config.views import parse_view_urls

    return parse_view_urls(raw)


def _views_problem(values: dict[str, Any]) -> str | None:
    if not values.get("view_urls"):
        return None
    from memguard.config.views import check_with

    return check_with(values["view_urls"], values.get("redis_url", Settings.redis_url))


def _choice(*choices: str) -> _Parser:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return raw

    return _Parser(f"one of {', '.join(choices)}", parse)


def _text(raw: str) -> str:
    return raw


WEBHOOK_FORMATS = ("slack", "pagerduty")


def webhook_entries(raw: str) -> list[tuple[str, str]]:
    """``[format=]url`` entries of MEMORY_WEBHOOK_URLS, unchecked: (format or "", url)."""
    out = []
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        fmt, sep, url = entry.partition("=")
        out.append(("", entry) if not sep or "://" in fmt else (fmt, url))
    return out


def _webhooks(raw: str) -> tuple[tuple[str, str], ...]:
    """``[slack=|pagerduty=]https://...`` comma-separated; the format is MEMORY_WEBHOOK_FORMAT's
    (applied after parsing) unless the entry names its own."""
    entries = webhook_entries(raw)
    for fmt, url in entries:
        if fmt and fmt not in WEBHOOK_FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected slack= or pagerduty=")
        _url("http", "https")(url)
    return tuple(entries)


_BOOL = _Parser("true or false", _bool)
_TEXT = _Parser("text", _text)

_VARIABLES: dict[str, tuple[str, _Parser]] = {
    "redis_url": ("REDIS_URL", _Parser("a Redis URL: one server, Sentinel or Cluster", _redis_url)),
    "zep_api_key": ("ZEP_API_KEY", _TEXT),
    "zep_api_url": ("ZEP_API_URL", _url("http", "https")),
    "zep_client": ("ZEP_CLIENT", _choice(*ZEP_CLIENTS)),
    "flag_zep_read": ("FLAG_ZEP_READ", _BOOL),
    "flag_zep_write": ("FLAG_ZEP_WRITE", _BOOL),
    "threshold": ("MEMORY_DOWNGRADE_THRESHOLD", _int_in(1, 1000)),
    "hold_seconds": ("MEMORY_DOWNGRADE_HOLD_SECONDS", _int_in(1, 86_400)),
    "probe_timeout_ms": ("MEMORY_DOWNGRADE_PROBE_TIMEOUT_MS", _int_in(1, 10_000)),
    "window_seconds": ("MEMORY_DOWNGRADE_WINDOW_SECONDS", _int_in(1, 3_600)),
    "read_timeout_ms": ("MEMORY_ZEP_READ_TIMEOUT_MS", _int_in(1, 60_000)),
    "probe_interval_seconds": ("MEMORY_DOWNGRADE_PROBE_INTERVAL_SECONDS", _float_in(0.1, 3_600)),
    "probe_grace_seconds": ("MEMORY_DOWNGRADE_PROBE_GRACE_SECONDS", _int_in(1, 86_400)),
    "disable_auto_downgrade": ("DISABLE_AUTO_DOWNGRADE", _BOOL),
    "redis_timeout_ms": ("MEMORY_REDIS_TIMEOUT_MS", _int_in(1, 5_000)),
    "hold_max_seconds": ("MEMORY_DOWNGRADE_HOLD_MAX_SECONDS", _int_in(1, 86_400)),
    "latency_threshold_ms": ("MEMORY_LATENCY_THRESHOLD_MS", _int_in(0, 60_000)),
    "latency_min_reads": ("MEMORY_LATENCY_MIN_READS", _int_in(1, 1_000_000)),
    "latency_window_seconds": ("MEMORY_LATENCY_WINDOW_SECONDS", _int_in(1, 3_600)),
    "failure_rate_threshold": ("MEMORY_FAILURE_RATE_THRESHOLD", _float_in(0.0, 0.99)),
    "failure_rate_window_seconds": ("MEMORY_FAILURE_RATE_WINDOW_SECONDS", _int_in(1, 3_600)),
    "failure_rate_min_reads": ("MEMORY_FAILURE_RATE_MIN_READS", _int_in(1, 1_000_000)),
    "webhook_urls": ("MEMORY_WEBHOOK_URLS", _Parser("comma-separated http(s) URLs", _webhooks)),
    "webhook_format": ("MEMORY_WEBHOOK_FORMAT", _choice("auto", *WEBHOOK_FORMATS)),
    "notify_stuck_seconds": ("MEMORY_NOTIFY_STUCK_SECONDS", _int_in(1, 7 * 86_400)),
    "quorum_hosts": ("MEMORY_QUORUM_HOSTS", _int_in(0, 1_000)),
    "quorum_auth": ("MEMORY_QUORUM_AUTH", _BOOL),
    "instance": ("MEMGUARD_INSTANCE", _TEXT),
    "metrics_port": ("MEMGUARD_METRICS_PORT", _int_in(1, 65_535)),
    "ramp_seconds": ("MEMORY_RECOVERY_RAMP_SECONDS", _int_in(0, 3_600)),  # ramp.MAX_RAMP_SECONDS
    "ramp_min_percent": ("MEMORY_RECOVERY_RAMP_MIN_PERCENT", _float_in(0.0, 100.0)),
    "ramp_aggression": ("MEMORY_RECOVERY_RAMP_AGGRESSION", _float_in(0.1, 10.0)),  # ramp.MIN_/MAX_AGGRESSION
    "otel": ("MEMGUARD_OTEL", _choice("auto", "on", "off")),
    "view_urls": ("MEMGUARD_VIEW_URLS", _Parser("replica URLs, or sentinel", _view_urls)),
    "command_idle_seconds": ("MEMGUARD_COMMAND_IDLE_SECONDS", _int_in(0, 86_400)),
    "chaos": ("MEMGUARD_CHAOS", _choice("off", "allow")),
}

VARIABLE_NAMES = frozenset(var for var, _ in _VARIABLES.values())


def takes(variable: str) -> str:
    """What ``variable`` takes, in words: its type and range."""
    return next(parse.takes for var, parse in _VARIABLES.values() if var == variable)


def checked_value(attr: str, value: int | float) -> Any:
    """``value`` for the setting ``attr`` given in code (a named guard's declaration), held to
    the variable's own parser and range; ValueError names the variable and what is wrong."""
    var, parse = _VARIABLES[attr]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{attr} ({var}) must be a number, got {value!r}")
    try:
        return parse(str(value))
    except ValueError as exc:
        raise ValueError(f"{attr} ({var}): {exc}, got {value!r}") from None
