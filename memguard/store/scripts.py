"""memguard's Lua scripts: each one's keys, arguments and reply fields, by name.

A script is a package file (``memguard/store/lua/<source>.lua``) run after a generated header
and, for the transition scripts, the shared prelude (``lua/prelude.lua``). The header decodes
the one JSON argument into ``A`` (so the body reads ``A.reason``, ``A.hold_ms``...) and binds
the script's keys to the Lua names its spec lists (``FORCED``, ``COUNTER``...); the body
returns one JSON object. Nothing is passed or read by position.

The sources are read once, when a store first asks for them (``sources()``), not at import:
a missing file is a fault of the store being built, which the request path fails open on,
never an ImportError of everything that imports the store. ``docs/store.md`` has the same
table for people, and a test holds the two together.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from memguard.store.keys import KEY_TYPES, Keys


@dataclass(frozen=True)
class ScriptSpec:
    """One script: its Lua key names (each bound to a ``Keys`` field), arguments and reply."""

    name: str
    source: str  # lua/<source>.lua
    keys: tuple[tuple[str, str], ...]  # (Lua name, Keys field), in KEYS order
    args: tuple[str, ...]
    reply: tuple[str, ...]
    prelude: bool = True
    repair: bool = True  # the hygiene first removes a key of the wrong type (lua/hygiene.lua)

    def key_names(self, keys: Keys) -> list[str]:
        """The KEYS to pass, in the order the header binds them."""
        return [getattr(keys, field) for _, field in self.keys]


_TRANSITION = ("channel",)  # every script with the prelude publishes its notice there
_TRIP = ("cap_ms", "jitter")  # an automatic trip during a ramp backs off as a failed probe does

SPECS: dict[str, ScriptSpec] = {spec.name: spec for spec in (
    ScriptSpec("force", "force",
               (("FORCED", "forced"), ("VERSION", "version"), ("AUTH_HOSTS", "auth_hosts"), ("RAMP", "ramp"),
                ("CHAOS", "chaos")),
               (*_TRANSITION, "reason", "hold_ms", "grace_ms", "by", "auto", "quorum", "instance",
                "window_ms", "replace", *_TRIP),
               ("status", "record", "previous", "chaos_ended", "notice")),
    ScriptSpec("record_failure", "record_failure",
               (("FORCED", "forced"), ("COUNTER", "counter"), ("VERSION", "version"),
                ("FAILING_HOSTS", "failing_hosts"), ("RAMP", "ramp")),
               (*_TRANSITION, "window_ms", "threshold", "hold_ms", "grace_ms", "by", "auto", "quorum",
                "instance", *_TRIP),
               ("status", "count", "record", "repaired", "previous", "notice")),
    ScriptSpec("reset_failures", "reset_failures",
               (("COUNTER", "counter"), ("FAILING_HOSTS", "failing_hosts"), ("VERSION", "version")),
               _TRANSITION, ("reset", "notice")),
    ScriptSpec("clear", "clear",
               (("FORCED", "forced"), ("COUNTER", "counter"), ("VERSION", "version"), ("LATENCY", "latency"),
                ("FAILING_HOSTS", "failing_hosts"), ("AUTH_HOSTS", "auth_hosts"), ("OUTCOMES", "outcomes"),
                ("RAMP", "ramp"), ("CHAOS", "chaos")),
               (*_TRANSITION, "ramp"), ("previous", "ramp", "chaos_ended", "notice")),
    ScriptSpec("lapse", "lapse", (("FORCED", "forced"), ("VERSION", "version"), ("RAMP", "ramp")),
               (*_TRANSITION, "grace_ms", "ramp"), ("previous", "ramp", "notice")),
    *(ScriptSpec(name, "window_trip", (("FORCED", "forced"), ("VERSION", "version"), ("WINDOW", window),
                                       ("RAMP", "ramp")),
                 (*_TRANSITION, "reason", "window", "counts", "window_ms", "min_reads", "ratio", "slot_ms",
                  "catchup_ms", "hold_ms", "grace_ms", "by", "auto", *_TRIP),
                 ("status", "reads", "bad", "waiting", "record", "previous", "notice"))
      for name, window in (("latency_window", "latency"), ("outcome_window", "outcomes"))),
    ScriptSpec("probe_claim", "probe_claim",
               (("FORCED", "forced"), ("VERSION", "version"), ("LOCK", "lock"), ("HEARTBEAT", "heartbeat"),
                ("RAMP", "ramp"), ("CHAOS", "chaos")),
               (*_TRANSITION, "token", "lock_ms", "heartbeat_ms"),
               ("status", "record", "ident", "completed", "chaos_ended", "due", "notice")),
    ScriptSpec("probe_finish", "probe_finish",
               (("FORCED", "forced"), ("COUNTER", "counter"), ("VERSION", "version"), ("LOCK", "lock"),
                ("LATENCY", "latency"), ("FAILING_HOSTS", "failing_hosts"), ("AUTH_HOSTS", "auth_hosts"),
                ("OUTCOMES", "outcomes"), ("RAMP", "ramp")),
               (*_TRANSITION, "token", "ident", "success", "hold_ms", "grace_ms", "by", "cap_ms", "jitter",
                "ramp"),
               ("status", "record", "previous", "ramp", "notice")),
    ScriptSpec("heartbeat", "heartbeat", (("LOCK", "heartbeat_lock"),), ("channel", "ttl_ms", "clock"),
               ("sent",), prelude=False),
    ScriptSpec("explain", "explain",
               (("FORCED", "forced"), ("COUNTER", "counter"), ("VERSION", "version"),
                ("LOCK", "explain_lock"), ("RAMP", "ramp"), ("CHAOS", "chaos")),
               ("channel", "ttl_ms"), ("sent", "snapshot"), prelude=False, repair=False),
    ScriptSpec("chaos_start", "chaos_start", (("CHAOS", "chaos"), ("VERSION", "version")),
               (*_TRANSITION, "fault", "percent", "seconds", "trip", "by"), ("chaos", "previous", "notice")),
    ScriptSpec("chaos_stop", "chaos_stop", (("CHAOS", "chaos"), ("VERSION", "version")),
               _TRANSITION, ("previous", "notice")),
    ScriptSpec("notify_claim", "notify_claim",
               (("AUDIT", "audit"), ("CURSOR", "notify_cursor"), ("STUCK", "notify_stuck")),
               ("limit", "stuck_episode", "replay_ms"), ("stuck", "entries"), prelude=False),
    ScriptSpec("index_hold", "index_hold", (("HOLDS", "holds"),), ("guard", "due_ms", "sooner"), ("indexed",),
               prelude=False),
)}


def _read(source: str) -> str:
    return resources.files("memguard.store").joinpath("lua", f"{source}.lua").read_text()


def _compose(spec: ScriptSpec, prelude: str, hygiene: str) -> str:
    """Header, hygiene (every key of a wrong type removed), prelude, then the body as a function
    whose reply gains ``repaired_keys`` when the hygiene removed anything."""
    header = ["local A = cjson.decode(ARGV[1])"]
    header += [f"local {lua} = KEYS[{i}]" for i, (lua, _) in enumerate(spec.keys, start=1)]
    checks = [f"expect({lua}, '{KEY_TYPES[field]}')" for lua, field in spec.keys if spec.repair]
    return "\n".join([*header, hygiene, *checks, prelude if spec.prelude else "",
                      "local function body()", _read(spec.source), "end",
                      "local reply = body()",
                      "if #REPAIRED > 0 then",
                      "  local t = cjson.decode(reply)",
                      "  t.repaired_keys = REPAIRED",
                      "  reply = cjson.encode(t)",
                      "end",
                      "return reply"])


@functools.cache
def sources() -> dict[str, str]:
    """Every script's full source by name, read from the package on the first call."""
    prelude, hygiene = _read("prelude"), _read("hygiene")
    return {name: _compose(spec, prelude, hygiene) for name, spec in SPECS.items()}


def encode_args(name: str, args: dict[str, Any]) -> list[str]:
    """The one ARGV element: the named arguments as JSON. Raises on a missing or unknown name,
    so a caller and its script cannot drift apart."""
    expected = set(SPECS[name].args)
    if set(args) != expected:
        raise TypeError(f"script {name}: expected arguments {sorted(expected)}, got {sorted(args)}")
    return [json.dumps(args, separators=(",", ":"))]


def decode_reply(reply: Any) -> dict[str, Any]:
    """A script's JSON reply as a dict (its fields are in the spec's ``reply``)."""
    if isinstance(reply, bytes):
        reply = reply.decode()
    data = json.loads(reply)
    if not isinstance(data, dict):
        raise TypeError(f"a memguard script replied {reply!r}, not a JSON object")
    return data
