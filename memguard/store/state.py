"""The fleet-wide downgrade state in Redis, and the one object that changes it.

Every transition is one Lua script (``memguard.store.scripts``), run atomically on the
server, so that N workers failing together produce exactly one downgrade and no failure is
lost. Time comes from the Redis server's clock (``TIME``) so workers with skewed clocks
still agree. Each script that changes the record or the counter publishes a notice with the
new values on the guard's change channel in the same round trip; that is what keeps in-process views
fresh without a read per process (``memguard.request.watch``).

``State`` is the only writer: it runs the script, hands its notice to the local view, and emits
the event that metrics, logs and the audit trail subscribe to. The guard, prober, operator
actions and notifications call it and never finish a transition by hand.
"""

from __future__ import annotations

import dataclasses
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis
from redis.cluster import RedisCluster

from memguard.config.settings import Settings
from memguard.domain import events
from memguard.domain.chaos import Chaos, parse_chaos
from memguard.domain.modes import EffectiveMode, base_mode_of, combine
from memguard.domain.ramp import Ramp, parse_ramp
from memguard.domain.record import ForcedRecord, Status, parse_record
from memguard.domain.snapshot import Snapshot, Transition
from memguard.store import scripts, snapshots
from memguard.store.aio import AsyncRedis
from memguard.store.keys import LATENCY_WINDOW, OUTCOMES_WINDOW, Keys
from memguard.store.plain import Plain
from memguard.store.steps import ReadSnapshot, Script, Step, Steps, Via
from memguard.store.steps import run as run_steps

T = TypeVar("T")

WINDOW_SLOTS = 6  # the latency and outcome windows are summed in this many time slots
LATENCY_SLOW_RATIO = 0.5  # more than half the reads slow: the median is slow
# A window's first bad reads are judged this long after the fleet was told of them, when the
# healthy counts the processes kept have come in (memguard.request.meter).
CATCHUP_MS = 2000
Counts = list[tuple[int, int, int]]  # a window's batch: (age in ms, reads, bad reads) per slot
# The prober's heartbeat outlives this many probe intervals: its absence means no prober.
HEARTBEAT_INTERVALS = 12


@dataclass
class Usage:
    """When a store's client was last used for the request path or an operator (monotonic)."""

    at: float = 0.0


class State:
    """Every change to the forced record, the failure counter and the probe lock.

    Each method is one script run; on a change it hands the script's notice to ``on_change``
    (this process's view applies it at once) and emits the event. Redis errors are raised:
    the caller decides whether to fail open (the request path) or report (operators).
    """

    def __init__(self, client: redis.Redis, settings: Settings, hooks: events.Hooks, *,
                 on_change: Callable[[str], None] | None = None, keys: Keys | None = None,
                 shared: State | None = None, guard: str | None = None) -> None:
        self.client = client
        self.plain = Plain(client)  # its other keys' commands (audit, locks, index)
        self.guard = guard  # a named guard's name (its transitions are indexed); None: default
        self.settings = settings
        self.hooks = hooks
        self.base = base_mode_of(settings)
        self.on_change = on_change or (lambda notice: None)
        self.grace_ms = settings.probe_grace_seconds * 1000
        self.keys = keys or Keys.for_guard("default", settings.redis_target.key_prefix)
        self.channel = self.keys.channel
        # A named guard's store shares the default's registered scripts and asyncio clients.
        # When the request path (or an operator) last used ``client``'s connections: shared by
        # every guard's store, as their client is (``close_idle``).
        self.usage: Usage = shared.usage if shared is not None else Usage()
        self._scripts: dict[str, Any] = shared._scripts if shared is not None else \
            {name: client.register_script(source) for name, source in scripts.sources().items()}
        self.async_redis: AsyncRedis = AsyncRedis(settings, self.keys, self.perform, self.snapshot_commands,
                                      shared.async_redis if shared is not None else None)

    # -- performing steps (memguard.store.steps): blocking here, asyncio in AsyncRedis ------

    def run(self, steps: Steps[T]) -> T:
        return run_steps(steps, self.perform)

    def perform(self, step: Step, *, quiet: bool = False) -> Any:
        """Run one step on this store's client. ``quiet``: the watcher's own upkeep (re-reads,
        the heartbeat, explanations), which does not keep the connection open (``close_idle``)."""
        if not quiet:
            self.usage.at = time.monotonic()
        if isinstance(step, Via):
            return step.store.perform(step.step, quiet=quiet)
        return self._on(self._keys_node(), self._scripts, step)

    def _on(self, client: Any, registered: dict[str, Any], step: Step) -> Any:
        """One step on ``client``, scripts by ``registered``: ``AsyncRedis._on`` is this, awaited."""
        if isinstance(step, Script):
            spec = scripts.SPECS[step.name]
            reply = registered[step.name](keys=spec.key_names(self.keys),
                                          args=scripts.encode_args(step.name, step.args))
            return scripts.decode_reply(reply)
        if isinstance(step, ReadSnapshot):
            pipe = client.pipeline(transaction=False)
            self.snapshot_commands(pipe)
            return pipe.execute()
        raise TypeError(f"{type(self).__name__} cannot perform {step!r}")

    async def aperform(self, step: Step) -> Any:
        return await self.async_redis.perform(step)

    def call(self, script: str, **args: Any) -> dict[str, Any]:
        """Run one script by name with its named arguments; its reply as a dict."""
        return self.run(self._script(script, **args))

    def close_idle(self, idle_s: float) -> None:
        """Close the client's idle connections unless the request path used them within
        ``idle_s``: an idle process then holds only its view's connection; the next command
        connects again (its re-read a minute then costs Redis a connect: ``./run bench``)."""
        if self.settings.redis_target.kind == "cluster":
            return  # a cluster client's connections are per node, kept by redis-py
        if time.monotonic() - self.usage.at >= idle_s:
            self.client.connection_pool.disconnect(inuse_connections=False)

    def reconnect(self) -> None:
        """The master moved: drop every connection; the next command asks for the new one."""
        self.client.connection_pool.disconnect()
        self.async_redis.reset()

    def _script(self, script: str, **args: Any) -> Steps[dict[str, Any]]:
        """Run one script; a transition's reply carries the notice of what changed."""
        if scripts.SPECS[script].prelude:
            args["channel"] = self.channel
        reply = yield Script(script, args)
        if reply.get("repaired_keys"):  # the script replaced values memguard did not write
            detail = "; ".join(reply["repaired_keys"])[:300]
            self.hooks.emit(events.GuardTrouble("corrupt_state", script, detail))
        if reply.get("notice"):
            self.on_change(reply["notice"])
            if self.guard is not None:
                yield from self._index(reply["notice"])
        return reply

    def _index(self, notice: str) -> Steps[None]:
        """A named guard's hold end in the fleet's index (``index_hold``), after a transition of
        its record or ramp: the prober finds it there, and takes it out once it finds the guard
        healthy. A failure here leaves the transition be."""
        change = json.loads(notice)
        if "forced" not in change and "ramp" not in change:
            chaos = parse_chaos(change.get("chaos") or None)
            if chaos is not None:  # an experiment started: ticked at its end, unless due sooner
                yield from self._index_at(int(chaos.end * 1000), sooner=True)
            return
        record = parse_record(change.get("forced") or None)
        ramp = parse_ramp(change.get("ramp") or None)
        # Healthy again: due at once, so that the prober announces it (webhooks), then takes it out.
        due = record.until if record is not None else ramp.end if ramp is not None else change["now"] / 1000
        yield from self._index_at(int(due * 1000), sooner=False)

    def _index_at(self, due_ms: int, *, sooner: bool) -> Steps[None]:
        try:
            yield Script("index_hold", {"guard": self.guard, "due_ms": due_ms, "sooner": sooner})
        except redis.RedisError as exc:
            self.hooks.emit(events.GuardTrouble("redis_error", "index", type(exc).__name__))

    def index(self, due: float | None) -> None:
        """Put this named guard's hold end (epoch seconds) in the fleet's index, or take it out."""
        self.call("index_hold", guard=self.guard, due_ms=None if due is None else int(due * 1000),
                  sooner=False)

    # -- reads ----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return self.run(self.snapshot_steps())

    def snapshot_steps(self) -> Steps[Snapshot]:
        """One round trip of plain reads (no Lua: a script costs an idle Redis ~70 µs of CPU)."""
        (raw, count, beat, version, ramp, chaos), ttl, record_ttl, (secs, micros), numsub, *types = \
            yield ReadSnapshot()
        # MGET answers nil for a key of another type: TYPE tells that apart from no key.
        typed = zip(snapshots.string_keys(self.keys), types, strict=True)
        problems = [f"{key} holds a {kind}, not a string" for key, kind in typed
                    if kind not in ("none", "string")]
        return snapshots.parse(self.keys, raw, count, beat, version, int(ttl), int(record_ttl),
                              secs + micros // 1000 / 1000.0, problems, fleet=int(numsub[0][1]), ramp=ramp,
                              chaos=chaos)

    def explanation(self, data: str) -> Snapshot | None:
        """The snapshot in an ``explain`` script's reply or message; None if it is not one."""
        return snapshots.explained(self.keys, data)

    def snapshot_commands(self, pipe: Any) -> None:
        k = self.keys
        pipe.mget(k.forced, k.counter, k.heartbeat, k.version, k.ramp, k.chaos)
        pipe.pttl(k.counter)
        pipe.pttl(k.forced)
        pipe.time()
        pipe.pubsub_numsub(self.channel)
        for key in snapshots.string_keys(k):
            pipe.type(key)

    def _keys_node(self) -> redis.Redis:
        """The client to pipeline plain reads on: on a Cluster, the node owning memguard's slot
        (a cluster pipeline refuses MGET and TIME)."""
        if self.settings.redis_target.kind == "cluster":
            node = cast(RedisCluster, self.client).get_node_from_key(self.keys.forced)
            return cast(redis.Redis, node.redis_connection)
        return self.client

    def mode(self, record: ForcedRecord | None) -> EffectiveMode:
        return combine(self.base, record is not None)

    # -- transitions ----------------------------------------------------------------------

    def force(self, reason: str, hold_seconds: int, by: dict[str, Any], *, auto: bool,
              quorum: int = 0, replace: bool = False) -> Transition:
        return self.run(self.force_steps(reason, hold_seconds, by, auto=auto, quorum=quorum, replace=replace))

    def force_steps(self, reason: str, hold_seconds: int, by: dict[str, Any], *, auto: bool,
                    quorum: int = 0, replace: bool = False) -> Steps[Transition]:
        """Write a record; an automatic trigger never replaces (or shortens) an existing one,
        does nothing under DISABLE_AUTO_DOWNGRADE, and with ``quorum`` > 1 waits until that
        many hosts (MEMGUARD_INSTANCE) have asked within the failure window."""
        if auto and self.settings.disable_auto_downgrade:
            self.hooks.emit(events.WouldForce(reason, hold_seconds))
            return Transition(Status.DISABLED)
        s = self.settings
        reply = yield from self._script(
            "force", reason=reason, hold_ms=hold_seconds * 1000, grace_ms=self.grace_ms, by=by, auto=auto,
            quorum=quorum, instance=s.instance, window_ms=s.window_seconds * 1000, replace=replace,
            **self._trip_args())
        status = Status(reply["status"])
        if status is not Status.FORCED:
            return Transition(status, record=parse_record(reply.get("record")))
        t = Transition(Status.FORCED, record=parse_record(reply["record"]),
                       previous=parse_record(reply["previous"]))
        self._forced(t, operator=not auto)
        if self._chaos_over(reply.get("chaos_ended"), "stopped", by, "force") is not None:
            return dataclasses.replace(t, chaos_ended=True)
        return t

    def record_failure(self, by: dict[str, Any]) -> Transition:
        return self.run(self.record_failure_steps(by))

    def record_failure_steps(self, by: dict[str, Any]) -> Steps[Transition]:
        """Count one failure fleet-wide and, at the threshold, force: one round trip."""
        s = self.settings
        reply = yield from self._script(
            "record_failure", window_ms=s.window_seconds * 1000, threshold=s.threshold,
            hold_ms=s.hold_seconds * 1000, grace_ms=self.grace_ms, by=by, auto=not s.disable_auto_downgrade,
            quorum=s.quorum_hosts, instance=s.instance, **self._trip_args())
        count = int(reply["count"])
        t = Transition(Status(reply["status"]), record=parse_record(reply["record"]),
                       previous=parse_record(reply["previous"]), fail_count=count)
        if reply["repaired"]:
            self.hooks.emit(events.GuardTrouble("corrupt_state", "count",
                                                "failure counter was not an integer"))
        if t.status is Status.FORCED:
            self._forced(t)
        elif t.status is Status.DISABLED:
            self.hooks.emit(events.WouldForce("consecutive_failures", s.hold_seconds, count))
        return t

    def record_latencies(self, counts: Counts, by: dict[str, Any]) -> Transition:
        return self.run(self.record_latencies_steps(counts, by))

    def record_latencies_steps(self, counts: Counts, by: dict[str, Any]) -> Steps[Transition]:
        """Add a batch of read latencies to the fleet's window; force when its median is slow."""
        s = self.settings
        return (yield from self._window_trip_steps("latency_window", "latency", LATENCY_WINDOW, counts,
                                                   s.latency_window_seconds, s.latency_min_reads,
                                                   LATENCY_SLOW_RATIO, by))

    def record_outcomes(self, counts: Counts, by: dict[str, Any]) -> Transition:
        return self.run(self.record_outcomes_steps(counts, by))

    def record_outcomes_steps(self, counts: Counts, by: dict[str, Any]) -> Steps[Transition]:
        """Add a batch of read outcomes to the fleet's window (the failure-rate policy); force
        when more than MEMORY_FAILURE_RATE_THRESHOLD of its reads failed."""
        s = self.settings
        return (yield from self._window_trip_steps("outcome_window", "failure_rate", OUTCOMES_WINDOW, counts,
                                                   s.failure_rate_window_seconds, s.failure_rate_min_reads,
                                                   s.failure_rate_threshold, by))

    def _window_trip_steps(self, script: str, reason: str, window: str, counts: Counts, window_seconds: int,
                           min_reads: int, ratio: float, by: dict[str, Any]) -> Steps[Transition]:
        s = self.settings
        window_ms = window_seconds * 1000
        reply = yield from self._script(
            script, reason=reason, window=window, counts=[list(c) for c in counts], window_ms=window_ms,
            min_reads=min_reads, ratio=ratio, slot_ms=max(1, window_ms // WINDOW_SLOTS),
            catchup_ms=CATCHUP_MS, hold_ms=s.hold_seconds * 1000, grace_ms=self.grace_ms, by=by,
            auto=not s.disable_auto_downgrade, **self._trip_args())
        t = Transition(Status(reply["status"]), record=parse_record(reply.get("record")),
                       previous=parse_record(reply.get("previous")), waiting=reply.get("waiting") is True)
        if t.status is Status.FORCED:
            self._forced(t)
        elif t.status is Status.DISABLED:
            self.hooks.emit(events.WouldForce(reason, s.hold_seconds))
        return t

    def reset_failures(self) -> bool:
        return self.run(self.reset_failures_steps())

    def reset_failures_steps(self) -> Steps[bool]:
        """End the failure window (a read succeeded); True if there was a count."""
        return bool((yield from self._script("reset_failures"))["reset"])

    def _trip_args(self) -> dict[str, Any]:
        """An automatic trip during a ramp backs off as a failed probe does."""
        return {"cap_ms": self.settings.hold_cap_seconds * 1000, "jitter": random.uniform(0.9, 1.0)}

    def _restored(self, reason: str, previous: ForcedRecord, ramp: Ramp | None, by: dict[str, Any]) -> None:
        """A hold ended, through ``ramp`` if the script started one."""
        self.hooks.emit(events.ModeRestored(self.base.value, reason, previous.reason, by,
                                            ramp.seconds if ramp else 0.0))

    def clear(self, by: dict[str, Any], *, ramp: bool = True) -> Transition:
        """Remove the record and the failure count now (an operator's clear): reads return
        through a ramp, or (``ramp=False``) at once, which also ends a ramp in progress."""
        reply = self.call("clear", ramp=self.settings.ramp if ramp else None)
        ended = self._chaos_over(reply.get("chaos_ended"), "stopped", by, "clear") is not None
        previous = parse_record(reply["previous"])
        if previous is None:  # no hold ended; --no-ramp may have ended a ramp in progress ("")
            return Transition(Status.CLEARED if reply.get("ramp") == "" else Status.IDLE, chaos_ended=ended)
        started = parse_ramp(reply.get("ramp"))
        self._restored("manual_clear", previous, started, by)
        return Transition(Status.CLEARED, previous=previous, ramp=started, chaos_ended=ended)

    def lapse(self, by: dict[str, Any]) -> Transition:
        return self.run(self.lapse_steps(by))

    def lapse_steps(self, by: dict[str, Any]) -> Steps[Transition]:
        """End a record whose hold plus grace has passed on the Redis clock."""
        reply = yield from self._script("lapse", grace_ms=self.grace_ms, ramp=self.settings.ramp)
        previous = parse_record(reply["previous"])
        if previous is None:
            return Transition(Status.IDLE)
        started = parse_ramp(reply.get("ramp"))
        self._restored("lapsed", previous, started, by)
        return Transition(Status.LAPSED, previous=previous, ramp=started)

    def claim_probe(self, lock_ms: int, *, heartbeat: bool = True) -> tuple[Transition, str]:
        """Take the fleet-wide probe lock if a hold has expired; returns the lock token.
        ``heartbeat``: renew the prober's heartbeat (beat's ticks; not a manual probe)."""
        token = secrets.token_hex(16)
        every_ms = self.settings.probe_interval_seconds * 1000
        heartbeat_ms = int(HEARTBEAT_INTERVALS * every_ms) if heartbeat else 0
        reply = self.call("probe_claim", token=token, lock_ms=lock_ms, heartbeat_ms=heartbeat_ms)
        status = Status(reply["status"])
        if status is Status.CORRUPT:
            self.hooks.emit(events.GuardTrouble("corrupt_state", "probe", "forced record removed"))
            return Transition(Status.CORRUPT), token
        self._chaos_over(reply.get("chaos_ended"), "ended", None, "")
        completed = parse_ramp(reply.get("completed"))
        if completed is not None:  # this tick ended a ramp that had run its course: once fleet-wide
            self.hooks.emit(events.RampCompleted(completed.previous_reason, completed.holds,
                                                 completed.seconds))
        record, due = parse_record(reply.get("record")), reply.get("due")
        return Transition(status, record=record, ident=reply.get("ident", ""), ramp=completed,
                          due=due / 1000 if isinstance(due, int | float) else None), token

    def finish_probe(self, token: str, claim: Transition, *, success: bool, started: float,
                     error: str, by: dict[str, Any]) -> Transition:
        """Apply a probe's result, unless the lock or the record changed meanwhile."""
        s = self.settings
        reply = self.call("probe_finish", token=token, ident=claim.ident, success=success,
                          hold_ms=s.hold_seconds * 1000, grace_ms=self.grace_ms, by=by,
                          cap_ms=s.hold_cap_seconds * 1000, jitter=random.uniform(0.9, 1.0), ramp=s.ramp)
        duration = time.perf_counter() - started
        status = Status(reply["status"])
        if status is Status.RESTORED:
            t = Transition(status, previous=parse_record(reply["previous"]),
                           ramp=parse_ramp(reply.get("ramp")))
        else:
            t = Transition(status, record=parse_record(reply.get("record")),
                           previous=parse_record(reply.get("previous")))
        self.hooks.emit(events.ProbeFinished(t.status.probe_result, duration, error))
        if t.status is Status.RESTORED and t.previous is not None:
            self._restored("probe_success", t.previous, t.ramp, by)
        elif t.status is Status.REFORCED:
            self._forced(t)
        return t

    # -- game days (memguard.domain.chaos) --------------------------------------------------

    def chaos_start(self, fault: str, percent: float, seconds: int, trip: bool, by: dict[str, Any]) -> Chaos:
        """Start an experiment (replacing one in progress): every view carries it at the notice."""
        reply = self.call("chaos_start", fault=fault, percent=percent, seconds=seconds, trip=trip, by=by)
        self._chaos_over(reply["previous"] or None, "stopped", by, "chaos_start")
        chaos = Chaos.parse(reply["chaos"])
        self._chaos_event("started", chaos, by, "")
        return chaos

    def chaos_stop(self, by: dict[str, Any]) -> Chaos | None:
        """End the experiment in every view; the one ended (None: there was none, or not a valid one)."""
        return self._chaos_over(self.call("chaos_stop")["previous"] or None, "stopped", by, "chaos_stop")

    def _chaos_over(self, raw: str | None, change: str, by: dict[str, Any] | None,
                    ended_by: str) -> Chaos | None:
        """An experiment a script removed (``raw``; None: none was) is told as stopped or ended."""
        chaos = parse_chaos(raw)
        if chaos is not None:
            self._chaos_event(change, chaos, by, ended_by)
        return chaos

    def _chaos_event(self, change: str, chaos: Chaos, by: dict[str, Any] | None, ended_by: str) -> None:
        self.hooks.emit(events.ChaosChanged(change, chaos.fault.text, chaos.percent, chaos.seconds, chaos.id,
                                            by if by is not None else chaos.by, ended_by))

    def _forced(self, t: Transition, *, operator: bool = False) -> None:
        record = t.record
        if record is None:
            return
        self.hooks.emit(events.ModeForced(
            prev_mode=self.mode(t.previous).value,
            next_mode=self.mode(record).value,
            reason=record.reason,
            hold_seconds=record.until - record.forced_at,
            until=record.until,
            holds=record.holds,
            fail_count=t.fail_count or None,
            by=record.by,
            trigger=record.trigger,
            operator=operator,
        ))
