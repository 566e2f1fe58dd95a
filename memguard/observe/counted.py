"""What each event counts, as (counter, labels): one mapping for every metrics backend.

Prometheus (``memguard.observe.metrics``) and OpenTelemetry (``memguard.observe.otel``) both
count from here, so the two can never disagree on what a 401 or a probe adds. The labels are
of bounded cardinality: a named guard is counted under its declared name or pattern
(``family``), never a tenant's name. The fleet's state read at collection time is here too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from memguard.domain import events
from memguard.domain.fleet import FleetStatus
from memguard.domain.guards import DEFAULT
from memguard.store.state import State

# counter → its label names, in the order a Prometheus counter takes them
LABELS: dict[str, tuple[str, ...]] = {
    "downgrades": ("reason", "guard"),
    "would_downgrade": ("reason", "guard"),
    "failures": ("reason", "guard"),
    "probes": ("result", "guard"),
    "blocked": ("reason", "guard"),
    "restored": ("reason", "guard"),
    "ramps": ("result", "guard"),
    "errors": ("kind", "op", "guard"),
    "operator_actions": ("action", "result", "guard"),
    "unguarded": ("guard",),
    "chaos_injected": ("fault", "guard"),
}
# The ones that change the state: dashboards annotate them.
OPERATOR_ACTIONS = ("force", "clear", "chaos_start", "chaos_stop")
OPERATOR_RESULTS = ("accepted", "refused")


def guard_of(event: events.Event) -> str:
    return event.family if isinstance(event, events.Named) else DEFAULT


def counts(event: events.Event) -> Iterator[tuple[str, dict[str, str], int]]:
    """The counters ``event`` adds to, each with its labels and how much (one, but for a batch
    of unguarded reads)."""
    guard = guard_of(event)
    if isinstance(event, events.ReadBlocked):
        yield "blocked", {"reason": event.reason, "guard": guard}, 1
    elif isinstance(event, events.FailureRecorded):
        yield "failures", {"reason": event.reason, "guard": guard}, 1
    elif isinstance(event, events.ModeForced):
        if not event.operator:  # automatic downgrades only: a planned force pages nothing
            yield "downgrades", {"reason": event.reason, "guard": guard}, 1
        if event.reason == "ramp_failed":
            yield "ramps", {"result": "failed", "guard": guard}, 1
    elif isinstance(event, events.WouldForce):
        yield "would_downgrade", {"reason": event.reason, "guard": guard}, 1
    elif isinstance(event, events.ModeRestored):
        yield "restored", {"reason": event.reason, "guard": guard}, 1
        if event.ramp_seconds > 0:
            yield "ramps", {"result": "started", "guard": guard}, 1
    elif isinstance(event, events.RampCompleted):
        yield "ramps", {"result": "completed", "guard": guard}, 1
    elif isinstance(event, events.ProbeFinished):
        yield "probes", {"result": event.result, "guard": guard}, 1
    elif isinstance(event, events.GuardTrouble):
        yield "errors", {"kind": event.kind, "op": event.op, "guard": guard}, 1
    elif isinstance(event, events.ChaosInjected):
        yield "chaos_injected", {"fault": event.fault, "guard": guard}, 1
    elif isinstance(event, events.ReadUnguarded):
        yield "unguarded", {"guard": guard}, event.reads
    elif isinstance(event, events.OperatorAction) and event.action in OPERATOR_ACTIONS:
        yield "operator_actions", {"action": event.action, "result": OPERATOR_RESULTS[not event.accepted],
                                   "guard": guard}, 1


StateSource = Callable[[], State]  # the process's store, resolved at collection time
NamedSource = Callable[[], Iterable[tuple[str, str, State]]]
NAMED_PER_SCRAPE = 100  # named guards' series one collection reads at most


def fleet(source: StateSource, named: NamedSource | None = None) -> list[tuple[str, str, FleetStatus]] | None:
    """Every guard's status now, as (declared name or pattern, name, status): the default's,
    then the named guards held or recovering (one that cannot be read is left out). None when
    the default's cannot be read: one Redis round trip, plus one per named guard."""
    try:
        state = source()
        default = FleetStatus.of(state.snapshot(), state.base, state.settings.probe_grace_seconds)
    except Exception:
        return None
    out = [(DEFAULT, DEFAULT, default)]
    try:
        held = list(named()) if named is not None else []
    except Exception:
        return out
    for label, name, each in held[:NAMED_PER_SCRAPE]:
        try:
            out.append((label, name, FleetStatus.of(each.snapshot(), each.base,
                                                    each.settings.probe_grace_seconds)))
        except Exception:
            continue
    return out
