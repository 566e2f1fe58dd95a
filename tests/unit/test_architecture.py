"""The layout holds: dependencies point one way, no import cycle, no global lookup below the
entry points, no module over 450 lines, and the scripts' names agree with their docs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from memguard.store import scripts

PACKAGE = Path(__file__).resolve().parents[2] / "memguard"
MAX_LINES = 450
# Lower layers first; a module may import its own layer and those below, never above.
LAYERS = {"config": 0, "domain": 1, "store": 2, "request": 3, "ops": 4, "observe": 5}
ENTRY = 6  # process, service, flags, the ready app, integrations, contrib, drill
ENTRY_POINTS = ("memguard.service", "memguard.flags", "memguard.exporter", "memguard.celery",
                "memguard.testing", "memguard.integrations.", "memguard.contrib.", "memguard.drill.")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], ENTRY) if len(parts) > 2 else ENTRY


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(module: str, *, type_checking: bool = False) -> set[str]:
    """Every memguard module ``module`` imports, at any level (``if TYPE_CHECKING:`` blocks only
    with ``type_checking``: a cycle through them is still a cycle of meaning)."""
    tree = ast.parse(MODULES[module].read_text())
    skipped = set() if type_checking else \
        {id(n) for block in ast.walk(tree) if _type_checking(block) for n in ast.walk(block)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports(m) for m in MODULES}
TYPED_GRAPH = {m: imports(m, type_checking=True) for m in MODULES}


def test_no_import_cycle_among_memguard_modules():
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for dep in sorted(TYPED_GRAPH[module]):
            assert seen.get(dep) != 1, "import cycle: " + " -> ".join([*path, module, dep])
            if dep not in seen:
                visit(dep, [*path, module])
        seen[module] = 2

    for module in sorted(MODULES):
        if module not in seen:
            visit(module, [])


def test_dependencies_point_down_the_layers():
    upward = [f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps if layer(d) > layer(m)]
    assert upward == []


def test_only_the_command_line_and_the_pytest_plugin_reach_the_drill_tooling():
    users = sorted(m for m, deps in GRAPH.items() if not m.startswith("memguard.drill")
                   and any(d.startswith("memguard.drill") for d in deps))
    assert users == ["memguard.integrations.cli", "memguard.testing"]


def test_the_process_wiring_is_looked_up_only_by_entry_points():
    lookups = sorted(m for m, deps in GRAPH.items() if "memguard.process" in deps
                     and not m.startswith(ENTRY_POINTS))
    assert lookups == []


def test_no_module_is_longer_than_450_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_script_reads_exactly_its_named_arguments_and_keys():
    for name, spec in scripts.SPECS.items():
        body = scripts.sources()[name].split("\n", len(spec.keys) + 1)[-1]
        used_args = set(re.findall(r"\bA\.(\w+)", body))
        # The prelude's helpers read A.channel only when a script calls notify().
        assert used_args <= set(spec.args), (name, used_args - set(spec.args))
        assert set(spec.args) - {"channel"} <= used_args, (name, set(spec.args) - used_args)
        key_names = {lua for lua, _ in spec.keys}
        own = (PACKAGE / "store" / "lua" / f"{spec.source}.lua").read_text()
        own = re.sub(r"--[^\n]*|'[^']*'", "", own)  # comments and strings (Redis commands)
        # REPAIRED: the hygiene's list of replaced values (store/lua/hygiene.lua), not a key.
        used_keys = set(re.findall(r"\b([A-Z][A-Z_]+)\b", own)) - {"KEYS", "ARGV", "REPAIRED"}
        assert used_keys <= key_names, (name, used_keys - key_names)


def test_the_docs_table_lists_every_script_with_its_keys_arguments_and_reply():
    text = (PACKAGE.parent / "docs" / "store.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0] != "script":
            rows[cells[0].strip("`")] = [set(re.findall(r"`([\w:]+)`", c)) for c in cells[1:]]
    assert set(rows) == set(scripts.SPECS)
    for name, spec in scripts.SPECS.items():
        keys, args, reply = rows[name]
        assert keys == {lua for lua, _ in spec.keys}, name
        assert args == set(spec.args), name
        assert reply == set(spec.reply), name
