"""docs/settings.md is checked against the settings table: every variable, and its default."""

from __future__ import annotations

import dataclasses
import re
import socket
from pathlib import Path

import pytest

from memguard.config.settings import _VARIABLES, Settings
from memguard.integrations.celery_settings import redbeat_conf

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]+)` \| (.*?) \| (.*?) \|")
# Read outside the Settings table (by Celery, prometheus-client or the worker's start-up).
ELSEWHERE = {"CELERY_CONFIG_MODULE", "PROMETHEUS_MULTIPROC_DIR"}


def documented(column: int = 3) -> dict[str, str]:
    """variable -> a column's value: ``takes`` (2) as it is, the default (3) as its first code
    span, else its text."""
    rows = {}
    for line in (ROOT / "docs" / "settings.md").read_text().splitlines():
        if m := ROW.match(line):
            cell = m.group(column)
            code = re.match(r"`([^`]*)`", cell) if column == 3 else None
            rows[m.group(1)] = code.group(1) if code else cell
    return rows


def shown(value: object) -> str:
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def code_defaults() -> dict[str, str]:
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    out = {}
    for field, (variable, _) in _VARIABLES.items():
        if field == "instance":
            assert Settings().instance == socket.gethostname()
            out[variable] = "the host name"
        elif field == "webhook_format":
            assert Settings.from_env({"MEMORY_WEBHOOK_URLS": "https://hooks.example/x"}).webhook_urls[0][0] \
                == "slack", "auto: Slack-compatible for a host that is not PagerDuty's"
            out[variable] = "auto"
        else:
            out[variable] = shown(defaults[field])
    return out


def test_every_setting_is_documented_with_its_default():
    docs, code = documented(), code_defaults()
    assert {v: docs.get(v) for v in code} == code


def test_every_setting_is_documented_with_what_it_takes():
    """The "takes" column is each variable's parser's own words: its type and range."""
    from memguard.config.settings import takes

    docs = documented(column=2)
    assert {v: docs.get(v) for v in code_defaults()} == {v: takes(v) for v in code_defaults()}


def test_every_documented_variable_is_read_by_memguard():
    extra = set(documented()) - set(code_defaults())
    assert extra == ELSEWHERE
    source = "\n".join(p.read_text() for p in (ROOT / "memguard").rglob("*.py"))
    for variable in ELSEWHERE - {"PROMETHEUS_MULTIPROC_DIR"}:  # that one is prometheus-client's
        assert f'"{variable}"' in source, variable


def test_every_setting_a_named_guard_may_set_is_documented_with_its_variable():
    from memguard.config.settings import checked_value
    from memguard.domain.guards import OVERRIDES

    text = (ROOT / "docs" / "settings.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| `([A-Z_]+)` \|$", text, re.M))
    assert set(rows) == set(OVERRIDES)
    for key, variable in rows.items():
        try:
            checked_value(key, "not a value")
        except ValueError as exc:
            assert variable in str(exc), (key, variable)


def test_a_sentinel_or_cluster_url_gives_its_tls_files_to_the_connections_it_makes():
    from memguard.config.target import Target

    query = "?ssl_ca_certs=/ca.pem&ssl_certfile=/c.crt&ssl_keyfile=/c.key&ssl_cert_reqs=required"
    for url in (f"rediss+sentinel://s1:26379,s2:26379/mg/0{query}", f"rediss+cluster://n1:7000{query}"):
        target = Target.parse(url)
        assert target.tls == {"ssl_ca_certs": "/ca.pem", "ssl_certfile": "/c.crt", "ssl_keyfile": "/c.key",
                              "ssl_cert_reqs": "required"}, url
    sentinel = Target.parse(f"rediss+sentinel://127.0.0.1:1/mg/0{query}")
    kwargs = sentinel.client().connection_pool.connection_kwargs  # no I/O until a command
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_certfile"]) == ("/ca.pem", "/c.crt"), "the master's"
    assert Target.parse(f"redis+sentinel://s1:26379/mg/0{query}").tls == {}, "no TLS without rediss"


def test_rediss_sentinel_asks_the_sentinels_over_tls_unless_told_not_to():
    from memguard.config.settings import Settings, SettingsError
    from memguard.config.target import Target

    query = "ssl_ca_certs=/ca.pem&ssl_certfile=/c.crt&ssl_keyfile=/c.key"
    tls = Target.parse(f"rediss+sentinel://s1:26379/mg/0?{query}&sentinel_password=pw")
    assert tls.sentinel_kwargs == {"password": "pw", "ssl": True, "ssl_ca_certs": "/ca.pem",
                                   "ssl_certfile": "/c.crt", "ssl_keyfile": "/c.key"}
    files = {"ssl_ca_certs": "/ca.pem", "ssl_certfile": "/c.crt", "ssl_keyfile": "/c.key"}
    assert redbeat_conf(tls)["redbeat_redis_use_ssl"] == files
    plain = Target.parse(f"rediss+sentinel://s1:26379/mg/0?{query}&sentinel_ssl=false")
    assert "ssl" not in plain.sentinel_kwargs and plain.tls["ssl_ca_certs"] == "/ca.pem"
    assert "ssl" not in Target.parse("redis+sentinel://s1:26379/mg/0").sentinel_kwargs
    with pytest.raises(SettingsError, match=r"REDIS_URL=.*sentinel_ssl must be true or false"):
        Settings.from_env({"REDIS_URL": f"rediss+sentinel://s1:26379/mg/0?{query}&sentinel_ssl=maybe"})
