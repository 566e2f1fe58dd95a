"""Faults of memguard's own against a real Redis, the stub and the real Zep client: a missing
package file, an unexpected script reply. Reads fail open with ``guard_error`` in the meta, the
fault is counted (``memory_guard_errors_total{kind="internal"}``) and logged once; the operator
paths answer in one line."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from celery import Celery
from prometheus_client import REGISTRY

import memguard
from memguard import process, service
from memguard.drill.localstack import wait_for
from memguard.integrations import cli
from memguard.observe import logs
from memguard.ops.actions import Operations
from memguard.store import scripts

from .conftest import make_settings


def errors(op: str) -> float:
    labels = {"kind": "internal", "op": op, "guard": "default"}
    return REGISTRY.get_sample_value("memory_guard_errors_total", labels) or 0.0


def internal_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.getMessage().startswith("memguard_internal_error") and r.levelno == logging.ERROR]


@pytest.fixture
def scripts_missing(monkeypatch, redis_server, stub):
    """memguard as a wheel without its Lua files: the process cannot be built."""

    def missing(source: str) -> str:
        raise FileNotFoundError(f"memguard/store/lua/{source}.lua")

    monkeypatch.setattr(scripts, "_read", missing)
    scripts.sources.cache_clear()
    monkeypatch.setattr(process, "_current", None)
    monkeypatch.setattr(process, "_settings", make_settings(redis_server.url, stub))
    monkeypatch.setattr(service, "_bare", None)
    logs._internal_logged.clear()
    yield
    scripts.sources.cache_clear()


def test_without_its_script_files_memguards_own_read_still_reads_zep(scripts_missing, stub, caplog):
    caplog.set_level(logging.INFO, logger="memguard")
    before = errors("build")
    for _ in range(3):
        context, meta = memguard.fetch_thread_context("t-missing")
        assert meta == {"used": True, "source": "zep", "guard_error": "FileNotFoundError"}
        assert context is not None
    assert stub.reads_of("t-missing") == 3
    assert errors("build") == before + 3
    lines = internal_lines(caplog)
    assert len(lines) == 1 and "FileNotFoundError" in lines[0] and "op=build" in lines[0]


def test_without_its_script_files_a_guarded_function_runs_and_its_value_is_returned(scripts_missing):
    @memguard.guarded
    def read(thread_id: str) -> str:
        return f"mine:{thread_id}"

    @memguard.guarded
    def failing(thread_id: str) -> str:
        raise ConnectionError("down")

    assert read("t1") == ("mine:t1", {"used": True, "source": "zep", "guard_error": "FileNotFoundError"})
    value, meta = failing("t1")
    assert value is None and meta["source"] == "zep_error" and meta["reason"] == "connection"
    assert meta["guard_error"] == "FileNotFoundError"


def test_without_its_script_files_asyncio_reads_still_read(scripts_missing, stub):
    @memguard.guarded
    async def read(thread_id: str) -> str:
        return f"mine:{thread_id}"

    async def both():
        return await memguard.afetch_thread_context("t-async"), await read("t2")

    (context, meta), (value, own) = asyncio.run(both())
    assert context is not None and meta["guard_error"] == "FileNotFoundError" and meta["source"] == "zep"
    assert value == "mine:t2" and own["guard_error"] == "FileNotFoundError"
    assert stub.reads_of("t-async") == 1


def test_an_unexpected_script_reply_never_reaches_the_caller(configure, stub, monkeypatch, caplog):
    configure()
    caplog.set_level(logging.INFO, logger="memguard")
    logs._internal_logged.clear()

    decode = scripts.decode_reply

    def unexpected(reply):
        """record_failure's reply (it counts) is one this memguard does not expect."""
        data = decode(reply)
        if "count" in data:
            raise ValueError(f"a memguard script replied {reply!r:.40}")
        return data

    monkeypatch.setattr(scripts, "decode_reply", unexpected)
    stub.set_fault("500")
    before = errors("failure")
    for _ in range(3):
        context, meta = memguard.fetch_thread_context("t-500")
        assert context is None and meta["source"] == "zep_error" and meta["guard_error"] == "ValueError"
        assert meta["reason"] == "http_5xx"
    assert errors("failure") == before + 3
    assert len(internal_lines(caplog)) == 1
    # The scripts themselves ran: the third failure forced the fleet. The reply that would have
    # told this process's view at once was the unexpected one: the view hears the notice instead.
    wait_for(lambda: (view := process.get().view.current) is not None and view.record is not None, 5,
             "the view to see the force")
    context, meta = memguard.fetch_thread_context("t-500")
    assert meta["source"] == "write_only_forced" and meta["reason"] == "consecutive_failures"


def test_the_cli_names_a_fault_of_its_own_in_one_line_and_exits_70(scripts_missing, monkeypatch,
                                                                     redis_server, capsys):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    for command in (["status", "--json"], ["force", "--reason", "manual_ops"], ["clear"]):
        assert cli.main(command) == cli.EX_SOFTWARE
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"internal error during {command[0]}: FileNotFoundError" in err
    assert redis_server.client().keys("*") == []  # nothing was changed


def test_a_fault_line_masks_the_secrets_its_message_holds(scripts_missing, monkeypatch, redis_server,
                                                          capsys):
    secret = "zep-secret-Kq81"
    monkeypatch.setenv("ZEP_API_KEY", secret)
    monkeypatch.setenv("REDIS_URL", redis_server.url.replace("redis://", "redis://:pw-Vz93@"))

    def leaky(source: str) -> str:
        raise FileNotFoundError(f"no {source}.lua under {os.environ['REDIS_URL']} for key {secret}")

    monkeypatch.setattr(scripts, "_read", leaky)
    assert cli.main(["status"]) == cli.EX_SOFTWARE
    err = capsys.readouterr().err
    assert "FileNotFoundError" in err and secret not in err and "pw-Vz93" not in err, err


def test_a_task_answers_a_fault_of_its_own_in_one_line(configure, monkeypatch):
    configure()
    app = Celery("faulty", set_as_current=False)
    app.conf.task_always_eager = True
    memguard.install(app)

    def broken(self, by, **kwargs):
        raise KeyError("a field memguard expected, not zep-secret-Kq81")

    monkeypatch.setattr(Operations, "force", broken)
    before = errors("force")
    monkeypatch.setenv("ZEP_API_KEY", "zep-secret-Kq81")
    result = app.tasks["memguard.force"].apply(kwargs={"reason": "manual_ops"})
    assert result.failed()
    assert type(result.result).__name__ == "InternalFault"
    assert str(result.result).count("\n") == 0 and "KeyError" in str(result.result)
    assert "zep-secret-Kq81" not in str(result.result)
    assert errors("force") == before + 1
