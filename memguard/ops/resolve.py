"""Operator actions, probes and notifications for any guard, found the same way for each.

A guard's store, settings and hooks come from the process's units (``memguard.request.units``):
the default's are the process's own, a named guard's are made for the action. Its probe is the
one ``memguard.install`` registered (``Registry.use_probes``), else its declaration's, else
memguard's own Zep read. A valid name this process has not declared is acted on with the
default's settings (an operator's CLI knows no application's declarations); an invalid one is
refused.
"""

from __future__ import annotations

from typing import Any

from memguard.config.settings import Settings
from memguard.domain import guards
from memguard.domain.guards import Resolved
from memguard.ops.actions import Operations, OperatorError
from memguard.ops.notify import Notifier
from memguard.ops.prober import Prepared, Probe, probe_due, zep_probe
from memguard.request.units import Units
from memguard.request.zep import Readers
from memguard.store.index import indexed_guards
from memguard.store.state import State


class GuardOps:
    """``ops_for``, ``notifier``, ``probe_due`` and the metrics' held guards, for any guard."""

    def __init__(self, units: Units, readers: Readers) -> None:
        self.units = units
        self.registry = units.registry
        self.readers = readers  # memguard's own Zep reads, made on first use

    def resolve(self, guard: object) -> Resolved:
        problem = guards.name_problem(guard)
        if problem is not None:
            raise OperatorError(problem)
        assert isinstance(guard, str)
        return self.registry.resolve(guard) or guards.Resolved(guard, guard, None, None, {})

    def probe_of(self, resolved: Resolved) -> Probe:
        return self.registry.probe_of(resolved) or zep_probe(self.readers.reader)

    def ops_for(self, guard: object) -> Operations:
        """The operator actions on one guard, each checked, evented and audited."""
        resolved = self.resolve(guard)
        state, settings, hooks = self.units.store(resolved)
        return Operations(state, settings, hooks, lambda: self.probe_of(resolved))  # type: ignore[arg-type]

    def notifier(self, guard: object) -> Notifier:
        state, settings, hooks = self.units.store(self.resolve(guard))
        return Notifier(state, settings, hooks)  # type: ignore[arg-type]

    def probe_due(self, by: dict[str, Any]) -> dict[str, Any]:
        """Probe the named guards whose holds have ended (beat's tick, after the default's)."""

        def prepare(name: str) -> Prepared | None:
            resolved = self.registry.resolve(name)
            if resolved is None:
                return None
            state, settings, _ = self.units.store(resolved)
            return state, settings, self.probe_of(resolved)

        def deliver(state: State, settings: Settings) -> int:
            return Notifier(state, settings, state.hooks).deliver()  # nothing without webhooks

        default = self.units.state
        return probe_due(default, prepare, by, deliver=deliver if default.settings.webhook_urls else None)

    def held(self) -> list[tuple[str, str, State]]:
        """The named guards held or recovering that this process has declared, for a metrics
        scrape: (declared name or pattern, name, store). A guard it does not know is left to the
        exporters that do: it has no label of bounded cardinality here."""
        out = []
        for name in indexed_guards(self.units.state, limit=100):
            resolved = self.registry.resolve(name)
            if resolved is not None:
                out.append((resolved.label, name, self.units.store(resolved)[0]))
        return out
