"""Writes docs/reference.md from the code: the command line, the tasks, the metrics with their
labels and the log events with their levels and fields. A unit test holds the committed page to
what this prints, so the reference cannot drift from the code.

    python tools/reference.py > docs/reference.md
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEADER = """# Reference

Generated from the code by `tools/reference.py` (a test holds this page to its output). The
settings are in [settings](settings.md), the Redis keys and scripts in [the store](store.md), the
`meta` keys of a read in [concepts](concepts.md#what-a-read-returns).
"""


def cli_section() -> list[str]:
    from memguard.integrations import cli

    parser = cli._parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    out = ["## Command line", "", "`memguard --version` prints the version. Every command:", ""]
    for name, command in sub.choices.items():
        out += [f"### memguard {name}", "", (helps.get(name) or "").rstrip(".") + ".", ""]
        options = [a for a in command._actions if a.option_strings and a.dest != "help"]
        if options:
            out += ["| option | default | meaning |", "| --- | --- | --- |"]
            for a in options:
                flag = ", ".join(f"`{o}`" for o in a.option_strings)
                default = "" if a.default in (None, False) else f"`{a.default}`"
                out.append(f"| {flag} | {default} | {(a.help or '').replace('|', '/')} |")
            out.append("")
    return out


def tasks_section() -> list[str]:
    """The tasks ``install`` registers, read from their definitions (installing would register
    probes in this process)."""
    tree = ast.parse((ROOT / "memguard" / "integrations" / "tasks.py").read_text())
    rows = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            name = next((k.value.value for k in getattr(decorator, "keywords", [])
                         if k.arg == "name" and isinstance(k.value, ast.Constant)), None)
            if name:
                rows.append(f"| `{name}` | {' '.join((ast.get_docstring(node) or '').split())} |")
    out = ["## Celery tasks", "", "`celery -A <app> call <task> --kwargs '{...}'`; `force`, `clear`, "
           "`status` and `probe` also take `guard` (default `default`).", "", "| task | what it does |",
           "| --- | --- |"]
    return [*out, *sorted(rows), ""]


def metrics_section() -> list[str]:
    from memguard.observe import metrics

    out = ["## Metrics", "", "| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for counter in [*metrics.COUNTERS.values(), metrics.OVERHEAD]:
        kind = type(counter).__name__.lower()
        name = counter._name + ("_total" if kind == "counter" else "")
        labels = ", ".join(f"`{label}`" for label in counter._labelnames)
        out.append(f"| `{name}` | {kind} | {labels} | {counter._documentation} |")
    guard = ", ".join(f"`{label}`" for label in metrics.GUARD_LABELS)
    out.append(f"| `memory_guard_state_up` | gauge | {guard} | {metrics.STATE_UP} |")
    out.append(f"| `memory_mode_gauge` | gauge | `mode`, {guard} | {metrics.MODE} |")
    for name, documentation, _ in metrics.GAUGES:
        out.append(f"| `{name}` | gauge | {guard} | {documentation} |")
    out.append(f"| `memory_prober_up` | gauge | | {metrics.PROBER_UP} |")
    out.append(f"| `memory_prober_heartbeat_age_seconds` | gauge | | {metrics.HEARTBEAT_AGE} (absent until "
               "a tick was seen) |")
    return [*out, ""]


def log_events_section() -> list[str]:
    rows: dict[str, tuple[str, list[str]]] = {}
    for path in sorted((ROOT / "memguard").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            func = getattr(node, "func", None)
            owner = getattr(getattr(func, "value", None), "id", "")
            method = getattr(func, "attr", None) == "emit" and owner == "logs"
            logged = getattr(func, "id", None) == "emit" or method
            if not (isinstance(node, ast.Call) and len(node.args) >= 2 and logged):
                continue
            level = ast.unparse(node.args[0]).removeprefix("logging.")
            if level.startswith("DOCTOR_LEVELS"):
                level = "INFO, WARNING or ERROR (ok, warn, fail)"
            name = node.args[1]
            event = name.value if isinstance(name, ast.Constant) else "memguard_<kind>"
            rows.setdefault(str(event), (level, [k.arg for k in node.keywords if k.arg is not None]))
    out = ["## Log events", "", "Each is a record of the standard logger `memguard` (JSON with "
           "`install(app, json_logs=True)`), its fields scrubbed of secrets. A named guard's lines "
           "also carry `guard`.", "", "| event | level | fields |", "| --- | --- | --- |"]
    for event, (level, fields) in sorted(rows.items()):
        out.append(f"| `{event}` | {level} | {', '.join(f'`{f}`' for f in fields)} |")
    out += ["", "`memguard_<kind>` is one of memguard's own troubles (`memguard_redis_error`, "
            "`memguard_corrupt_state`, `memguard_webhook_failed`, ...), sampled.", ""]
    return out


def render() -> str:
    lines = [HEADER, *cli_section(), *tasks_section(), *metrics_section(), *log_events_section()]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
