"""Classification of real client exceptions, and the fleet-status arithmetic, without I/O."""

from __future__ import annotations

import io
import json
import time
import urllib.error

import httpx
import pytest
import requests
import urllib3
from zep_cloud.core.api_error import ApiError as CloudApiError
from zep_python.core.api_error import ApiError as PythonApiError

from memguard.domain import events
from memguard.domain.classify import RESPONSE_ATTR, Action, classify
from memguard.domain.fleet import FleetStatus
from memguard.domain.modes import EffectiveMode
from memguard.domain.record import ForcedRecord
from memguard.domain.snapshot import Snapshot
from memguard.integrations.cli_text import watchers_line
from memguard.observe import counted


def url_error(status: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://zep.test/", status, "status", {}, io.BytesIO(b""))


def undecodable(status: int | None) -> json.JSONDecodeError:
    exc = json.JSONDecodeError("Expecting value", "<html>", 0)
    if status is not None:
        setattr(exc, RESPONSE_ATTR, (status, None))
    return exc


@pytest.mark.parametrize("exc, action, reason", [
    (PythonApiError(status_code=401), Action.FORCE, "auth"),
    (CloudApiError(status_code=403), Action.FORCE, "auth"),
    (PythonApiError(status_code=500), Action.COUNT, "http_5xx"),
    (CloudApiError(status_code=408), Action.COUNT, "timeout"),
    (url_error(408), Action.COUNT, "timeout"),
    (url_error(502), Action.COUNT, "http_5xx"),
    (urllib.error.URLError("refused"), Action.COUNT, "connection"),
    (requests.exceptions.ReadTimeout("slow"), Action.COUNT, "timeout"),
    (requests.exceptions.ConnectionError("refused"), Action.COUNT, "connection"),
    (urllib3.exceptions.ReadTimeoutError(None, "/", "slow"), Action.COUNT, "timeout"),
    (urllib3.exceptions.ProtocolError("reset"), Action.COUNT, "connection"),
    # urllib3's NewConnectionError subclasses its ConnectTimeoutError: a refusal is not a timeout.
    (urllib3.exceptions.NewConnectionError(None, "refused"), Action.COUNT, "connection"),
    (urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.ReadTimeoutError(None, "/", "slow")),
     Action.COUNT, "timeout"),
    (urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.NewConnectionError(None, "refused")),
     Action.COUNT, "connection"),
    (httpx.ReadTimeout("slow"), Action.COUNT, "timeout"),
    (TimeoutError(), Action.COUNT, "timeout"),
    (ConnectionResetError(), Action.COUNT, "connection"),
    (undecodable(502), Action.COUNT, "http_5xx"),
    (undecodable(200), Action.IGNORE, "bad_payload"),
    (undecodable(None), Action.IGNORE, "bad_payload"),
    (PythonApiError(status_code=404), Action.IGNORE, "http_4xx"),
    (CloudApiError(status_code=429), Action.IGNORE, "rate_limited"),
    (KeyError("x"), Action.IGNORE, "other"),
])
def test_classification_goes_by_status_then_transport(exc, action, reason):
    verdict = classify(exc)
    assert (verdict.action, verdict.reason) == (action, reason)


def test_retry_after_from_headers_or_from_the_adapters_last_response():
    cloud = CloudApiError(status_code=429, headers={"retry-after": "30"})
    assert classify(cloud).hold_seconds == 30
    bare = PythonApiError(status_code=429)
    setattr(bare, RESPONSE_ATTR, (429, "45"))
    assert (classify(bare).action, classify(bare).hold_seconds) == (Action.FORCE, 45)


def snap(record: ForcedRecord | None, now: float, heartbeat: float | None = None) -> Snapshot:
    return Snapshot(record, None, 2, 30_000, now, heartbeat)


def test_fleet_status_while_held_awaiting_the_probe_and_clear():
    now = time.time()
    rec = ForcedRecord("write_only", "auth", now + 100, now - 200, None, 2, {}, now - 900)
    held = FleetStatus.of(snap(rec, now, heartbeat=now - 3), EffectiveMode.READ_WRITE, 60)
    assert (held.mode, held.phase, held.holds) == (EffectiveMode.WRITE_ONLY, "held", 2)
    assert held.hold_seconds == pytest.approx(300) and held.seconds_left == pytest.approx(100)
    assert held.expired_seconds == 0 and held.lapses_in == pytest.approx(160)
    assert held.stuck_seconds == pytest.approx(900) and held.prober_age == pytest.approx(3)

    late = FleetStatus.of(snap(rec, now + 130), EffectiveMode.READ_WRITE, 60)
    assert (late.phase, late.seconds_left, late.prober_age) == ("awaiting_probe", 0, None)
    assert late.expired_seconds == pytest.approx(30) and late.lapses_in == pytest.approx(30)

    clear = FleetStatus.of(snap(None, now), EffectiveMode.READ_WRITE, 60)
    assert (clear.mode, clear.phase, clear.hold_seconds, clear.holds, clear.stuck_seconds) == (
        EffectiveMode.READ_WRITE, None, 0, 0, 0)


def test_a_force_never_raises_the_mode():
    now = time.time()
    rec = ForcedRecord("write_only", "auth", now + 100, now, None, 1, {}, now)
    assert FleetStatus.of(snap(rec, now), EffectiveMode.OFF, 60).mode is EffectiveMode.OFF


def test_an_operators_force_is_an_operator_action_and_only_a_triggers_force_a_downgrade():
    def forced(operator: bool) -> events.ModeForced:
        return events.ModeForced("read_write", "write_only", "manual_ops" if operator else "auth", 300.0,
                                 0.0, operator=operator)

    assert list(counted.counts(forced(operator=True))) == []
    assert list(counted.counts(forced(operator=False))) == [
        ("downgrades", {"reason": "auth", "guard": "default"}, 1)]
    assert list(counted.counts(events.OperatorAction("force", True))) == [
        ("operator_actions", {"action": "force", "result": "accepted", "guard": "default"}, 1)]
    assert list(counted.counts(events.OperatorAction("clear", False, ("bad",)))) == [
        ("operator_actions", {"action": "clear", "result": "refused", "guard": "default"}, 1)]
    assert list(counted.counts(events.OperatorAction("status", True))) == []
    assert list(counted.counts(events.ReadUnguarded(7, guard="zep-t.acme", family="zep-t.*"))) == [
        ("unguarded", {"guard": "zep-t.*"}, 7)]


def test_status_without_redis_url_names_the_default_it_read():
    line = watchers_line(0, "redis://127.0.0.1:6379/0", from_env=False, on_replicas=False)
    assert line.endswith("REDIS_URL is not set: this read the default redis://127.0.0.1:6379/0")
    assert watchers_line(1, "x", from_env=True, on_replicas=False) == \
        "watchers:    1 memguard process follows this Redis"


def test_the_doctors_settings_and_guards_checks_name_what_to_change():
    from memguard.config.settings import Settings
    from memguard.ops import doctor

    assert [c.verdict for c in doctor.settings_checks(Settings(zep_api_key="x"))] == ["ok"]
    risky = Settings(zep_api_key="x", disable_auto_downgrade=True, probe_grace_seconds=5,
                     probe_interval_seconds=5.0, probe_timeout_ms=400, read_timeout_ms=250)
    found = doctor.settings_checks(risky)
    assert [c.verdict for c in found] == ["warn", "warn", "warn"]
    assert [c.detail.split()[0] for c in found] == [
        "DISABLE_AUTO_DOWNGRADE", "MEMORY_DOWNGRADE_PROBE_GRACE_SECONDS", "MEMORY_DOWNGRADE_PROBE_TIMEOUT_MS"]

    def deployment(named: list[tuple[str, bool]]) -> doctor.Deployment:
        return doctor.Deployment(None, risky, lambda: None, None, None, named)  # type: ignore[arg-type]

    bare = doctor.named(deployment([("vectordb", True), ("zep-t.*", False)]))
    assert bare.verdict == "warn" and bare.detail.startswith("zep-t.* has no probe of its own")
    assert doctor.named(deployment([("vectordb", True)])).verdict == "ok"
    assert doctor.worst([bare]) == 0 and doctor.worst([doctor.Check("fail", "x", "y"), bare]) == 1
