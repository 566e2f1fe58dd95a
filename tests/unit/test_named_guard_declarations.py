"""Named guards' declarations and keys, without I/O (memguard.domain.guards, memguard.store.keys)."""

from __future__ import annotations

import re

import pytest

from memguard.domain import events
from memguard.domain.guards import DEFAULT, GuardError, Registry, name_problem
from memguard.store.keys import Keys


def test_a_name_is_bounded_and_lowercase():
    assert name_problem("zep-t.acme_1") is None
    assert name_problem("a" * 63) is None
    for bad in ("", "A", "-x", "a" * 64, "zep t", "zep/t", "zé", 7):
        assert name_problem(bad) is not None, bad


def test_configuration_resolves_by_exact_name_then_pattern_then_the_default():
    reg = Registry()
    reg.declare("zep", hold_seconds=120)
    reg.declare("zep-t.*", parent="zep", hold_seconds=600, threshold=5)
    reg.declare("zep-t.big", hold_seconds=30)
    exact = reg.resolve("zep-t.big")
    assert exact is not None and exact.label == "zep-t.big" and exact.parent == "zep"
    assert dict(exact.overrides) == {"hold_seconds": 30, "threshold": 5}
    tenant = reg.resolve("zep-t.acme")
    assert tenant is not None and tenant.label == "zep-t.*" and dict(tenant.overrides)["hold_seconds"] == 600
    assert reg.resolve(DEFAULT) is not None and reg.resolve(DEFAULT).overrides == {}  # type: ignore[union-attr]
    assert reg.resolve("vectordb") is None, "undeclared"
    assert reg.resolve("Zep-t.acme") is None, "not a name"


def test_the_longest_pattern_wins():
    reg = Registry()
    reg.declare("zep-*", hold_seconds=1)
    reg.declare("zep-t.*", hold_seconds=2)
    assert dict(reg.resolve("zep-t.x").overrides) == {"hold_seconds": 2}  # type: ignore[union-attr]
    assert dict(reg.resolve("zep-q").overrides) == {"hold_seconds": 1}  # type: ignore[union-attr]


@pytest.mark.parametrize("kwargs, words", [
    ({"hold_seconds": 0}, "hold_seconds (MEMORY_DOWNGRADE_HOLD_SECONDS): must be between 1 and 86400"),
    ({"hold_seconds": 1.5}, "hold_seconds (MEMORY_DOWNGRADE_HOLD_SECONDS): expected a whole number"),
    ({"hold_seconds": float("inf")}, "hold_seconds"),
    ({"threshold": True}, "threshold"),
    ({"ramp_min_percent": float("nan")}, "ramp_min_percent"),
    ({"colour": 1}, "unknown setting 'colour'"),
    ({"parent": "nowhere"}, "its parent 'nowhere' is not declared"),
    ({"probe": 3}, "probe must be callable"),
])
def test_a_bad_declaration_is_refused_by_name_and_changes_nothing(kwargs, words):
    reg = Registry()
    with pytest.raises(GuardError, match=re.escape(words)):
        reg.declare("vectordb", **kwargs)
    assert reg.resolve("vectordb") is None


def test_default_and_bad_names_cannot_be_declared_and_parents_are_one_level():
    reg = Registry()
    for name in ("default", "Bad", "zep-*-x", "*"):
        with pytest.raises(GuardError):
            reg.declare(name)
    reg.declare("zep")
    reg.declare("zep-t.*", parent="zep")
    reg.declare("zep-t.vip", parent="zep")
    with pytest.raises(GuardError, match="one level"):
        reg.declare("x-*", parent="zep-t.vip")
    with pytest.raises(GuardError, match="own parent"):
        reg.declare("zep-t.*", parent="zep-t.a")


def test_the_default_guards_keys_are_todays_and_a_named_guards_are_its_own():
    assert Keys.for_guard(DEFAULT, "mem:") == Keys()
    named = Keys.for_guard("zep-t.acme", "mem:")
    assert named.forced == "mem:g:zep-t.acme:mode:forced:v1"
    assert named.channel == "mem:g:zep-t.acme:mode:changes"
    assert Keys().channel == "mem:mode:changes" and Keys.under("{mem}:").channel == "mem:mode:changes"
    cluster = Keys.for_guard("zep-t.acme", "{mem}:")
    own = {k.split("}")[0] for f, k in vars(cluster).items() if f != "holds"}
    assert own == {"{mem:g:zep-t.acme"}, "one slot per guard"
    assert cluster.holds == Keys.under("{mem}:").holds, "the fleet's one index of hold ends"


def test_a_named_guards_events_carry_its_name_and_family():
    hooks, seen = events.Hooks(), []
    hooks.subscribe(seen.append)
    events.GuardHooks(hooks, "zep-t.acme", "zep-t.*").emit(events.ReadBlocked("t", "auth", 1.0))
    hooks.emit(events.ReadBlocked("t", "auth", 1.0))
    assert [(e.guard, e.family) for e in seen] == [("zep-t.acme", "zep-t.*"), ("default", "default")]
