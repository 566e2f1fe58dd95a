"""docs/reference.md is what tools/reference.py prints from the code: a command, flag, task,
metric, label or log event added, renamed or removed without regenerating it turns this red."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def generator():
    spec = importlib.util.spec_from_file_location("reference", ROOT / "tools" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_reference_is_what_the_generator_prints():
    committed = (ROOT / "docs" / "reference.md").read_text()
    assert committed == generator().render(), "run: python tools/reference.py > docs/reference.md"


def test_the_reference_names_every_metric_task_and_command():
    from memguard.integrations import cli
    from memguard.observe import metrics

    page = (ROOT / "docs" / "reference.md").read_text()
    for counter in metrics.COUNTERS.values():
        assert f"`{counter._name}_total`" in page
    for task in ("force", "clear", "status", "probe", "doctor"):
        assert f"`memguard.{task}`" in page
    sub = next(a for a in cli._parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for command in sub.choices:
        assert f"### memguard {command}" in page
