"""Every mutant of ``./run mutants`` still applies: its original text is in its file exactly
once, so a change to the code cannot quietly retire a mutant."""

from __future__ import annotations

import sys

from ..conftest import ROOT


def test_every_mutant_finds_its_original_text_exactly_once():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import mutants
    finally:
        sys.path.remove(str(ROOT / "tools"))
    stale = {m.name: (ROOT / m.path).read_text().count(m.old) for m in mutants.MUTANTS
             if (ROOT / m.path).read_text().count(m.old) != 1}
    assert stale == {}, "mutants whose original text is gone or repeated (name: times found)"
    assert len({m.name for m in mutants.MUTANTS}) == len(mutants.MUTANTS), "mutant names are unique"
