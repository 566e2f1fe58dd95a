"""A shortened soak (bench/soak.py): prefork readers through a Redis restart, a 401 outage
and a timeout outage."""

from __future__ import annotations

import sys

from .conftest import ROOT


def test_shortened_soak(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import soak

    res = soak.run(minutes=0.6, logdir=str(tmp_path))
    soak.report(res)
    assert res["exceptions_to_callers"] == 0
    assert res["failures_counted"] == res["failures_injected"] > 0
    assert [d["downgrades"] for d in res["downgrades_per_outage"]] == [1, 1]
    assert res["probes_per_hold_expiry"] and set(res["probes_per_hold_expiry"]) == {1}
    assert res["probe_reads_at_stub"] == res["holds"] >= 2, "one probe read per hold, counted by Zep"
    assert res["wrong_mode_reads"] == 0, res["longest_wrong_mode_s"]
    assert res["beat_alive"] and res["worker_alive"]
    sys.modules.pop("soak", None)
