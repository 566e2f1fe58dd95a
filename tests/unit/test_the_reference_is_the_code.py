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


def test_the_python_api_page_renders_every_public_name_and_only_those():
    """docs/api.md renders each name of ``memguard.__all__`` from the object ``memguard.<name>``
    is, and nothing else."""
    import importlib
    import re

    import memguard

    page = (ROOT / "docs" / "api.md").read_text()
    rendered = re.findall(r"^::: ([\w.]+)$", page, flags=re.M)
    public = sorted(set(memguard.__all__) - {"__version__"})
    assert sorted(path.rsplit(".", 1)[-1] for path in rendered) == public
    for path in rendered:
        module, _, name = path.rpartition(".")
        target = importlib.import_module(path) if name == "flags" else \
            getattr(importlib.import_module(module), name)
        exported = getattr(memguard, name)
        # The asyncio entry points are thin wrappers in memguard/__init__.py around the service's.
        assert exported is target or (exported.__module__ == "memguard" and exported.__name__ == name), path


def test_the_operations_synopsis_names_every_command_and_flag():
    """docs/operations.md's one-paragraph synopsis of the command line is written by hand: it
    must still name every command and every flag the parser has."""
    import re

    from memguard.integrations import cli

    text = (ROOT / "docs" / "operations.md").read_text()
    synopsis = re.search(r"^`memguard (.*?)`;", text, re.S | re.M)
    assert synopsis, "docs/operations.md has no command-line synopsis"
    words = set(re.findall(r"-{0,2}[a-z][\w-]*", synopsis.group(1)))

    def parsers(parser, path=""):
        sub = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not sub:
            yield path, parser
        for action in sub:
            for name, child in action.choices.items():
                yield from parsers(child, f"{path} {name}".strip())

    missing = []
    for path, parser in parsers(cli._parser()):
        missing += [path.split()[0]] if path.split()[0] not in words else []
        for action in parser._actions:
            flags = [o for o in action.option_strings if o not in ("-h", "--help")]
            said = any(f in words for f in flags) or (flags == ["--guard"] and "`--guard NAME`" in text)
            if flags and not said:
                missing.append(f"{path} {flags[0]}")
    assert missing == [], missing
