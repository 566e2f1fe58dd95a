"""Named guards: which dependency a read guards, and with what configuration (no I/O).

The guard ``default`` is memguard's original one (Zep, today's keys). Another guard exists only
once declared, by an exact name (``vectordb``) or by a family's pattern (``zep-t.*``: every name
that starts with ``zep-t.``), so that a typo or a name taken from a request cannot create guards
without end. A declaration's settings resolve by exact name, then the family's pattern, then the
default's settings. A family may name a parent: a read is blocked while its guard or the parent is
forced, and the failures an outage causes (timeouts, 5xx, slow reads) count toward the parent, so
one outage trips one guard and runs one probe, while a 401/403 (that tenant's key) trips its own.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from memguard.config.settings import checked_value

DEFAULT = "default"
NAME_CHARS = 63
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}\Z")
_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,61}\*\Z")
# A named guard's probe: called with the guard's name and the timeout in seconds; raises on failure.
NamedProbe = Callable[[str, float], Any]
Probe = Callable[[float], object]  # one guard's probe: called with the timeout in seconds
MAX_DECLARED = 10_000  # declarations (names and patterns) one process holds

# What a declaration may set, per guard: these settings, each held to its variable's range.
OVERRIDES = ("threshold", "hold_seconds", "hold_max_seconds", "probe_timeout_ms", "window_seconds",
             "read_timeout_ms", "probe_grace_seconds", "latency_threshold_ms", "latency_min_reads",
             "latency_window_seconds", "failure_rate_threshold", "failure_rate_window_seconds",
             "failure_rate_min_reads", "ramp_seconds", "ramp_min_percent", "ramp_aggression")


class GuardError(ValueError):
    """A guard's name, declaration or settings cannot be used."""


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a guard's name, or None. Linear in a bounded length."""
    if not isinstance(name, str):
        return f"a guard's name is text, got {type(name).__name__}"
    if len(name) > NAME_CHARS or not _NAME.match(name):
        return f"guard name {_shown(name)} must match [a-z0-9][a-z0-9_.-]{{0,62}}"
    return None


def check_name(name: object) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise GuardError(problem)
    assert isinstance(name, str)
    return name


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "…")


def check_overrides(where: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The per-guard settings, each checked against the variable's own range."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in OVERRIDES:
            raise GuardError(f"{where}: unknown setting {key!r}; one of {', '.join(OVERRIDES)}")
        try:
            out[key] = checked_value(key, value)
        except ValueError as exc:
            raise GuardError(f"{where}: {exc}") from None
    return out


@dataclass(frozen=True)
class Declaration:
    """One declared guard (``name``) or family (``name`` ends with ``*``)."""

    name: str
    parent: str | None = None
    probe: NamedProbe | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> bool:
        return self.name.endswith("*")

    def matches(self, name: str) -> bool:
        return name.startswith(self.name[:-1]) if self.family else name == self.name


@dataclass(frozen=True)
class Resolved:
    """A guard's name as a read or an operator gives it, resolved against the declarations."""

    name: str  # the guard's own name: its keys are named after it
    label: str  # the declared name or pattern: a metric label, never a tenant's name
    parent: str | None
    probe: NamedProbe | None
    overrides: Mapping[str, Any]


DEFAULT_GUARD = Resolved(DEFAULT, DEFAULT, None, None, MappingProxyType({}))


class Registry:
    """The process's declared guards. Declaring is done at start-up; lookups are lock-free."""

    def __init__(self) -> None:
        self._exact: dict[str, Declaration] = {}
        self._families: tuple[Declaration, ...] = ()  # longest prefix first
        self._lock = threading.Lock()
        self._probe: Probe | None = None  # the default guard's, from memguard.install
        self._probes: Mapping[str, NamedProbe] = MappingProxyType({})  # by name or pattern, from install

    def use_probes(self, probe: Probe | None, probes: Mapping[str, NamedProbe]) -> None:
        """The probes ``memguard.install`` was given: the default guard's, and named guards' by
        declared name or pattern (over their declarations' own). An install without one keeps
        the one an earlier install gave (one process, one Zep)."""
        if probe is not None:
            self._probe = probe
        self._probes = MappingProxyType({**self._probes, **probes})

    def has_probe(self, declaration: Declaration) -> bool:
        """Whether a declared guard has a probe of its own (install's or its declaration's)."""
        return declaration.probe is not None or declaration.name in self._probes

    def probe_of(self, resolved: Resolved) -> Probe | None:
        """A guard's probe: install's, else its declaration's; None: memguard's own Zep read."""
        if resolved.name == DEFAULT:
            return self._probe
        fn = self._probes.get(resolved.name) or self._probes.get(resolved.label) or resolved.probe
        if fn is None:
            return None
        return lambda timeout_s: fn(resolved.name, timeout_s)

    def declare(self, name: str, *, parent: str | None = None, probe: NamedProbe | None = None,
                **overrides: Any) -> Declaration:
        """Declare a guard or a family; declaring the same name again replaces it."""
        if not isinstance(name, str) or (name_problem(name) and not _PATTERN.match(name)):
            raise GuardError(name_problem(name) if not isinstance(name, str) else
                             f"guard name {_shown(name)} must match [a-z0-9][a-z0-9_.-]{{0,62}}, "
                             "or end with * to declare a family")
        if name == DEFAULT:
            raise GuardError("the guard 'default' is memguard's own: configure it with the environment")
        if parent is not None:
            check_name(parent)
            if parent == name or (name.endswith("*") and parent.startswith(name[:-1])):
                raise GuardError(f"guard {name!r} cannot be its own parent")
            parent_decl = self._exact.get(parent)
            if parent != DEFAULT and parent_decl is None:
                raise GuardError(f"guard {name!r}: its parent {parent!r} is not declared (declare it first)")
            if parent_decl is not None and parent_decl.parent is not None:
                raise GuardError(f"guard {name!r}: its parent {parent!r} has a parent itself; one level only")
        if probe is not None and not callable(probe):
            raise GuardError(f"guard {name!r}: probe must be callable, got {type(probe).__name__}")
        checked = check_overrides(f"guard {name!r}", overrides)
        decl = Declaration(name, parent, probe, MappingProxyType(checked))
        with self._lock:
            if len(self._exact) + len(self._families) >= MAX_DECLARED and not self.declared(name):
                raise GuardError(f"more than {MAX_DECLARED} guards declared")
            if decl.family:
                rest = [d for d in self._families if d.name != name]
                self._families = tuple(sorted([*rest, decl], key=lambda d: -len(d.name)))
            else:
                self._exact[name] = decl
        return decl

    def declared(self, name: object) -> bool:
        """Whether ``name`` is a declaration's own name or pattern (not a family's member)."""
        return isinstance(name, str) and (name in self._exact or any(d.name == name for d in self._families))

    def declarations(self) -> list[Declaration]:
        """Every declaration, exact names first."""
        return [*self._exact.values(), *self._families]

    def labels(self) -> list[str]:
        """Every declaration's name or pattern: the metrics' ``guard`` labels."""
        return [*self._exact, *(d.name for d in self._families)]

    def names(self) -> list[str]:
        """The declared names (families' members are not known until a read names them)."""
        return list(self._exact)

    def resolve(self, name: str) -> Resolved | None:
        """The guard ``name`` stands for: exact name, then the longest family pattern; None when it
        is not declared (or not a guard's name at all)."""
        if name == DEFAULT:
            return DEFAULT_GUARD
        if name_problem(name) is not None:
            return None
        exact = self._exact.get(name)
        family = next((d for d in self._families if d.matches(name)), None)
        if exact is None and family is None:
            return None
        overrides = {**(family.overrides if family else {}), **(exact.overrides if exact else {})}
        parent = (exact.parent if exact else None) or (family.parent if family else None)
        probe = (exact.probe if exact else None) or (family.probe if family else None)
        label = exact.name if exact is not None else family.name  # type: ignore[union-attr]
        return Resolved(name, label, parent, probe, MappingProxyType(overrides))
