"""memguard as users install it: the wheel and the sdist built from the checkout, each installed
(not editable) into a fresh venv and run from a directory outside the checkout, against a
private redis-server and the Zep stub; the distributions' contents, their metadata and the
package's types.

``./run matrix`` runs this module under each supported Python: the venv is made from the
interpreter running the tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

import memguard
from memguard.drill.localstack import CeleryProcess, RedisServer, stack_env, wait_for
from memguard.drill.zepstub import ZepStub
from memguard.store import scripts

from .conftest import API_KEY, ROOT

pytestmark = pytest.mark.alone  # builds and installs: run after the rest (./run test)

VERSION = memguard.__version__
DIST = "memguard_zep"  # the distribution memguard-zep, as file names spell it
EXCLUDED = ("tests/", "bench/", "tools/", ".venv", "examples/", ".ci/")


def run(*args: str | Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw)
    assert out.returncode == 0, f"{args} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """The sdist, and the wheel built from it (so the wheel also proves the sdist complete)."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, cwd=out)
    return {"wheel": out / f"{DIST}-{VERSION}-py3-none-any.whl", "sdist": out / f"{DIST}-{VERSION}.tar.gz"}


def loaded_files() -> set[str]:
    """Every non-Python file under memguard/ that the code opens at run time."""
    lua = {f"memguard/store/lua/{name}.lua" for name in ("prelude", "hygiene")}
    lua |= {f"memguard/store/lua/{spec.source}.lua" for spec in scripts.SPECS.values()}
    return lua | {"memguard/py.typed"}


def package_files() -> set[str]:
    """Every non-Python file the checkout has under memguard/."""
    listed = run("git", "ls-files", "memguard", cwd=ROOT).stdout.split()
    return {name for name in listed if not name.endswith(".py")}


def test_the_wheel_and_the_sdist_carry_every_file_the_package_loads_and_nothing_else(dists):
    assert loaded_files() <= package_files(), "a loaded file is not in the checkout"
    wheel = set(zipfile.ZipFile(dists["wheel"]).namelist())
    prefix = f"{DIST}-{VERSION}/"
    with tarfile.open(dists["sdist"]) as tar:
        sdist = {name.removeprefix(prefix) for name in tar.getnames()}
    for name, files in (("wheel", wheel), ("sdist", sdist)):
        assert package_files() - files == set(), f"the {name} lacks package files"
        strays = sorted(f for f in files if f.startswith(EXCLUDED) or "__pycache__" in f)
        assert strays == [], f"the {name} holds files from outside the package: {strays[:5]}"
    assert {"LICENSE", "CHANGELOG.md", "README.md"} <= sdist
    assert f"{DIST}-{VERSION}.dist-info/licenses/LICENSE" in wheel


def test_the_metadata_renders_on_pypi_and_declares_every_supported_python(dists):
    out = run(sys.executable, "-m", "twine", "check", "--strict", dists["wheel"], dists["sdist"])
    assert out.stdout.count("PASSED") == 2, out.stdout
    metadata = zipfile.ZipFile(dists["wheel"]).read(f"{DIST}-{VERSION}.dist-info/METADATA").decode()
    assert "Name: memguard-zep" in metadata, "published as memguard-zep: memguard is another project's"
    assert "License-Expression: MIT" in metadata
    for minor in ("3.11", "3.12", "3.13"):
        assert f"Classifier: Programming Language :: Python :: {minor}" in metadata
    assert "Requires-Python: >=3.11" in metadata and "Typing :: Typed" in metadata


def test_mypy_is_clean_on_the_package():
    out = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-4000:]


# -- installed into a fresh venv, run outside the checkout ------------------------------------


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv of the interpreter running the tests; memguard's dependencies come with
    the first install (pip's cache makes later runs fast)."""
    where = tmp_path_factory.mktemp("venv") / "v"
    base = getattr(sys, "_base_executable", sys.executable)
    run(base, "-m", "venv", where)
    return where


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("outside-the-checkout")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.pop("ZEP_API_URL", None)
    return {**env, **extra}


def install(venv: Path, dist: Path) -> None:
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if (venv / "bin" / "memguard").exists():  # the dependencies are in: replace memguard alone
        run(*pip, "--force-reinstall", "--no-deps", dist)
    else:
        run(*pip, dist)


READS = """
import json, sys
import memguard

assert memguard.__file__.startswith(sys.prefix), memguard.__file__  # the installed copy


@memguard.guarded
def mine(thread_id: str) -> str:
    return "own:" + thread_id


memguard.declare("vectordb", hold_seconds=60)


@memguard.guarded(guard="vectordb")
def nearest(thread_id: str) -> str:
    if sys.argv[3:] == ["vectordb-down"]:
        raise ConnectionError("the vector store is down")
    return "near:" + thread_id


out = {"file": memguard.__file__}
out["reads"] = [memguard.fetch_thread_context(sys.argv[1]) for _ in range(int(sys.argv[2]))]
out["own"] = mine(sys.argv[1])
out["nearest"] = [nearest(sys.argv[1]) for _ in range(4)]
out["otel"] = sorted({m.split(".")[0] for m in sys.modules} & {"opentelemetry"}) + sorted(
    m for m in sys.modules if m == "memguard.observe.otel")
print(json.dumps(out))
"""


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_the_installed_package_guards_reads_and_its_cli_and_drill_work(kind, dists, venv, outside):
    install(venv, dists[kind])
    bin_ = venv / "bin"
    (outside / "reads.py").write_text(READS)
    with RedisServer() as redis_server, ZepStub(api_key=API_KEY) as stub:
        env = clean_env(REDIS_URL=redis_server.url, ZEP_API_URL=stub.url, ZEP_API_KEY=API_KEY)

        def memguard_cli(*args: str) -> str:
            return run(bin_ / "memguard", *args, cwd=outside, env=env).stdout

        assert memguard_cli("--version").strip() == f"memguard-zep {VERSION}"
        healthy = json.loads(run(bin_ / "python", "reads.py", "t-ok", "1", cwd=outside, env=env).stdout)
        assert str(venv) in healthy["file"] and str(ROOT) not in healthy["file"]
        [(context, meta)] = healthy["reads"]
        assert meta == {"used": True, "source": "zep"} and context is not None
        assert healthy["own"] == ["own:t-ok", {"used": True, "source": "zep"}]
        assert stub.reads_of("t-ok") == 1
        assert healthy["otel"] == [], "without memguard[otel], nothing of OpenTelemetry is imported"

        stub.set_fault("500")  # three failing reads force the fleet; the next read is blocked
        failing = json.loads(run(bin_ / "python", "reads.py", "t-bad", "3", cwd=outside, env=env).stdout)
        assert [meta["source"] for _, meta in failing["reads"]] == ["zep_error"] * 3
        assert failing["own"][1]["source"] == "write_only_forced"
        status = json.loads(memguard_cli("status", "--json"))
        assert status["mode"] == "write_only" and status["reason"] == "consecutive_failures", status
        stub.set_fault("ok")

        memguard_cli("clear")
        assert json.loads(memguard_cli("status", "--json"))["mode"] == "read_write"
        vector = json.loads(run(bin_ / "python", "reads.py", "t-v", "0", "vectordb-down", cwd=outside,
                                env=env).stdout)["nearest"]
        assert [meta["source"] for _, meta in vector] == ["zep_error"] * 3 + ["write_only_forced"]
        degraded = [line.split()[:2] for line in memguard_cli("guards", "--degraded").splitlines()]
        assert ["vectordb", "forced,"] in degraded, degraded
        assert json.loads(memguard_cli("status", "--json"))["mode"] == "read_write", "the default reads on"
        memguard_cli("clear", "--guard", "vectordb", "--no-ramp")
        assert "vectordb" not in memguard_cli("guards", "--degraded")
        memguard_cli("force", "--reason", "manual_ops", "--ttl", "60")
        status = json.loads(memguard_cli("status", "--json"))
        assert status["mode"] == "write_only" and status["reason"] == "manual_ops", status
        memguard_cli("clear")
        assert json.loads(memguard_cli("status", "--json"))["mode"] == "read_write"

    drill = run(bin_ / "memguard", "drill", cwd=outside, env=clean_env(), timeout=180).stdout
    assert "drills: all passed" in drill, drill[-3000:]


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- example-app -->\n```python\n(.*?)```", readme, re.S)
    assert block, "the README has no example-app snippet"
    return block.group(1)


def readme_force_command() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    line = re.search(r"^celery -A myapp call memguard\.force --kwargs '(\{.*?\})'$", readme, re.M)
    assert line, "the README shows no celery call memguard.force"
    kwargs = json.loads(line.group(1))
    assert kwargs["ttl_seconds"] > 2
    return ["-A", "myapp", "call", "memguard.force", "--kwargs", json.dumps({**kwargs, "ttl_seconds": 2})]


def readme_run_commands() -> list[list[str]]:
    """The quick start's "Run a worker and two beats" commands, as the README shows them."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"\*\*Run a worker and two beats\*\*.*?\n\n```sh\n(.*?)```", readme, re.S)
    assert block, "the README's quick start has no run step"
    return [line.split() for line in block.group(1).splitlines() if line.strip()]


def readme_check_commands() -> list[list[str]]:
    """The quick start's "Check it." commands, as the README shows them (comments dropped)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"\*\*Check it\.\*\*\n\n```sh\n(.*?)```", readme, re.S)
    assert block, "the README's quick start has no check step"
    return [line.split("#")[0].split() for line in block.group(1).splitlines() if line.strip()]


def test_the_readmes_celery_example_runs_from_the_installed_wheel(dists, venv, outside, tmp_path):
    """The README's example app, verbatim: a prefork worker, two beats, ``celery call
    memguard.force`` (with a 2 s hold instead of 600), and the probe restores."""
    install(venv, dists["wheel"])
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "myapp.py").write_text(readme_example())
    python = str(venv / "bin" / "python")
    with RedisServer() as broker, RedisServer() as state, ZepStub(api_key=API_KEY) as stub:
        env = clean_env(**{k: v for k, v in stack_env(state.url, stub.url, API_KEY).items()
                           if k in ("REDIS_URL", "ZEP_API_URL", "ZEP_API_KEY", "PYTHONUNBUFFERED")},
                        CELERY_BROKER_URL=broker.url, MEMORY_DOWNGRADE_PROBE_INTERVAL_SECONDS="1")
        # The quick start's run step, its flags verbatim: a prefork worker and two beats.
        commands = readme_run_commands()
        assert [words[:4] for words in commands] == [["celery", "-A", "myapp", kind]
                                                     for kind in ("worker", "beat", "beat")], commands
        procs = [CeleryProcess(words[3], env, str(tmp_path), f"p{i}", *words[4:], app="myapp",
                               cwd=str(app_dir), python=python) for i, words in enumerate(commands)]
        try:
            for p in procs:
                p.start()
            run(venv / "bin" / "celery", *readme_force_command(), cwd=app_dir, env=env)

            def status() -> dict:
                out = run(venv / "bin" / "memguard", "status", "--json", cwd=app_dir, env=env)
                return json.loads(out.stdout)

            wait_for(lambda: status()["mode"] == "write_only", 20, "the worker to run memguard.force")
            forced_at = time.monotonic()
            wait_for(lambda: status()["mode"] == "read_write", 30, "the probe to restore")
            assert time.monotonic() - forced_at < 30
            assert stub.reads_of("memguard-probe") >= 1
            assert all(p.alive() for p in procs), [p.output()[-2000:] for p in procs if not p.alive()]
            assert sum("Sending due task memguard-probe" in p.output() for p in procs[1:]) == 1
            # The quick start's check step, verbatim, from the app's directory.
            said = {}
            for words in readme_check_commands():
                assert words[0] == "memguard"
                said[words[1]] = run(venv / "bin" / "memguard", *words[1:], cwd=app_dir, env=env).stdout
            held = r"^beat lock:   redbeat::lock held by \S+:\d+ for \d+ s"
            assert re.search(held, said["status"], re.M), said["status"]
            assert re.search(r"^watchers:    [1-9]\d* memguard process", said["status"], re.M), said["status"]
            assert not [ln for ln in said["doctor"].splitlines() if ln.startswith("fail")], said["doctor"]
            assert "forced" in said["history"] and said["clear"]
        finally:
            for p in procs:
                p.stop()


USER_APP = '''
import memguard

memguard.declare("vectordb")


def build_prompt(thread_id: str, question: str) -> str:
    """The application under test: a prompt with the conversation's memory when there is some."""
    context, _ = memguard.fetch_thread_context(thread_id)
    return f"Context: {context}\\n\\nQuestion: {question}" if context else f"Question: {question}"


async def abuild_prompt(thread_id: str, question: str) -> str:
    context, _ = await memguard.afetch_thread_context(thread_id)
    return f"Context: {context}\\n\\nQuestion: {question}" if context else f"Question: {question}"


@memguard.guarded(guard="vectordb")
def similar(thread_id: str) -> list[str]:
    return ["a", "b"]
'''
# The same application with the bug the degraded path hides: it assumes memory is always there.
BUGGY_APP = USER_APP.replace('if context else f"Question: {question}"', "").replace(
    'f"Context: {context}', 'f"Context: {context.strip()}')

USER_TESTS = '''
import asyncio

import memguard
import pytest
from celery import shared_task

from userapp import abuild_prompt, build_prompt, similar


def test_a_healthy_zep_puts_the_memory_in_the_prompt(memguard_guard, memguard_zep):
    assert build_prompt("t1", "hi").startswith("Context: ")


def test_a_bad_key_downgrades_and_the_prompt_goes_on_without_memory(memguard_guard, memguard_zep,
                                                                   memguard_events):
    memguard_zep.fault("401")
    assert build_prompt("t1", "hi") == "Question: hi"
    assert memguard_events.forced(reason="auth"), "memguard tripped"
    assert memguard_guard.status()["mode"] == "write_only"


def test_while_forced_no_read_reaches_zep(memguard_guard, memguard_zep):
    memguard_guard.force(reason="consecutive_failures")
    assert asyncio.run(abuild_prompt("t2", "hi")) == "Question: hi"
    assert memguard_zep.reads_of("t2") == 0
    memguard_guard.clear()
    assert build_prompt("t2", "hi").startswith("Context: ")


def test_a_ramp_admits_its_share_of_conversations(memguard_guard, memguard_zep):
    memguard_guard.ramp(0.5)
    admitted = sum(build_prompt(f"c{i}", "hi").startswith("Context: ") for i in range(200))
    assert 60 <= admitted <= 140, admitted


def test_a_named_guard_held_alone(memguard_guard, memguard_zep):
    memguard_guard.force(reason="auth", guard="vectordb")
    assert similar("t3") == (None, {"used": False, "source": "write_only_forced", "reason": "auth",
                                    "until": similar("t3")[1]["until"], "guard": "vectordb"})
    assert build_prompt("t3", "hi").startswith("Context: "), "the default guard reads on"


@shared_task
def answer(thread_id: str) -> str:
    return build_prompt(thread_id, "hi")


def test_a_task_in_celerys_own_test_worker_sees_the_state(memguard_guard, memguard_zep, celery_app,
                                                          celery_worker):
    memguard_guard.force(reason="auth")
    assert answer.delay("t4").get(timeout=10) == "Question: hi"
'''


def test_a_users_suite_uses_the_plugin_from_the_installed_wheel(dists, venv, outside, tmp_path):
    """A project of a user's own, outside the checkout, with memguard's wheel and pytest: its
    suite passes on the application that handles "no context", and fails for the right reason
    (the application's own TypeError/AttributeError) on the one that does not."""
    install(venv, dists["wheel"])
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", "pytest")
    env = clean_env()
    env.pop("REDIS_URL", None)
    results = {}
    for name, app in (("good", USER_APP), ("buggy", BUGGY_APP)):
        project = tmp_path / name
        project.mkdir()
        (project / "userapp.py").write_text(app)
        (project / "test_prompt.py").write_text(USER_TESTS)
        (project / "conftest.py").write_text('pytest_plugins = ("celery.contrib.pytest",)\n')  # Celery's docs
        results[name] = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
            env=env, capture_output=True, text=True, timeout=300)
    good, buggy = results["good"], results["buggy"]
    assert good.returncode == 0, good.stdout[-4000:] + good.stderr[-2000:]
    assert "6 passed" in good.stdout, good.stdout[-2000:]
    assert buggy.returncode == 1, buggy.stdout[-4000:]
    failed = set(re.findall(r"^FAILED test_prompt\.py::(\w+)", buggy.stdout, re.M))
    assert failed == {"test_a_bad_key_downgrades_and_the_prompt_goes_on_without_memory",
                      "test_while_forced_no_read_reaches_zep",
                      "test_a_ramp_admits_its_share_of_conversations",
                      "test_a_task_in_celerys_own_test_worker_sees_the_state"}, buggy.stdout[-4000:]
    assert "AttributeError: 'NoneType' object has no attribute 'strip'" in buggy.stdout
