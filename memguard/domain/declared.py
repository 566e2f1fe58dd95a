"""The process's declared guards: ``memguard.declare`` fills them, reads and operators resolve
names against them. Kept apart from the wiring so that declaring a guard, or decorating a read
with one, loads neither Redis nor the rest of memguard; kept across a ``configure()`` too."""

from __future__ import annotations

from memguard.domain.guards import NamedProbe, Registry

registry = Registry()


def declare(name: str, *, parent: str | None = None, probe: NamedProbe | None = None,
            **settings: object) -> None:
    """Declare a guard (``"vectordb"``) or a family by pattern (``"zep-t.*"``), before the reads
    that name it are decorated. ``parent``: a declared guard (or ``"default"``) whose hold also
    blocks this one's reads and which the failures of an outage count toward. ``probe(name,
    timeout_s)`` replaces memguard's Zep read as its probe. ``settings``: any of
    ``memguard.domain.guards.OVERRIDES`` (``hold_seconds=60``), held to the variables' ranges.
    Raises ``GuardError`` naming what is wrong, and then declares nothing."""
    registry.declare(name, parent=parent, probe=probe, **settings)
