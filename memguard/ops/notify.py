"""Webhook notifications: downgrade, restore and "stuck", from the Celery side only.

The probe task calls ``Notifier.deliver`` on every tick, after probing: it takes the
transitions no other prober has taken from the audit trail (the ``notify_claim`` script moves
a cursor in the same step, so each goes to exactly one process fleet-wide) and POSTs them to every URL in
``MEMORY_WEBHOOK_URLS``, as Slack-compatible JSON or a PagerDuty Events v2 event, with a
timeout and a few retries. Nothing here runs on the request path, and no payload carries a
secret: reasons, modes and times only.

"Once per transition" means: each transition is claimed by one deliverer fleet-wide and POSTed
to each receiver until it answers 2xx, at most ``ATTEMPTS`` times. A receiver that processed a
POST but answered after ``TIMEOUT_S`` cannot be told apart from one that never got it, so it is
sent again, with the same id (``memguard.id`` in the body, the ``Idempotency-Key`` header): a
receiver that drops a repeated id gets each transition exactly once; one that does not gets it
at least once and at most ``ATTEMPTS`` times. PagerDuty folds a repeated trigger into the same
incident by its ``dedup_key``.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urldefrag, urlsplit

import redis

from memguard.config.settings import Settings
from memguard.domain import events
from memguard.domain.fleet import FleetStatus
from memguard.ops import audit
from memguard.store.state import State

if TYPE_CHECKING:
    import httpx

LOCK_S = 120  # longer than a delivery takes; a deliverer that died frees it after this
TIMEOUT_S = 2.0
ATTEMPTS = 3
BACKOFF_S = (0.2, 0.5)
# A restore that starts a recovery ramp is "recovering"; the ramp's end is the "restore". A
# restore without a ramp (MEMORY_RECOVERY_RAMP_SECONDS=0, clear --no-ramp) is the "restore" at once.
NOTIFIED = {"forced": "downgrade", "restored": "restore", "lapsed": "restore", "manual_clear": "restore",
            "ramp_completed": "restore", "chaos_started": "chaos", "chaos_stopped": "chaos",
            "chaos_ended": "chaos"}
CHAOS_TEXT = {"chaos_started": "memguard: chaos experiment started: {fault} on {percent}% of conversations "
                               "for {seconds} (experiment {experiment})",
              "chaos_stopped": "memguard: chaos experiment stopped (by {ended_by}): reads are normal again "
                               "(experiment {experiment})",
              "chaos_ended": "memguard: chaos experiment ended, its time was up: reads are normal again "
                             "(experiment {experiment})"}
PAGERDUTY_DEDUP_KEY = "memguard-fleet-write-only"  # one incident: triggers and resolves pair up


def _seconds(raw: str) -> str:
    """An audit field holding seconds (JSON text), as a person reads it: ``30 s``."""
    try:
        return f"{float(raw):g} s"
    except ValueError:
        return raw


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def messages(state: State, settings: Settings) -> list[dict[str, Any]]:
    """What to announce now: claimed transitions, and the current hold if it is stuck."""
    fleet = FleetStatus.of(state.snapshot(), state.base, settings.probe_grace_seconds)
    record = fleet.record
    stuck_now = record is not None and fleet.stuck_seconds >= settings.notify_stuck_seconds
    episode = repr(record.since) if stuck_now and record is not None else ""
    stuck, entries = claim(state, episode)
    out: list[dict[str, Any]] = []
    for e in entries:
        kind = NOTIFIED.get(e.get("event", ""))
        if kind is None:
            continue
        ramp = e.get("ramp_seconds")
        if kind == "chaos":
            fields = {k: str(e.get(k, "?")) for k in ("fault", "percent", "experiment", "ended_by")}
            fields["ended_by"] = audit.ENDED_BY.get(fields["ended_by"], fields["ended_by"])
            text = CHAOS_TEXT[e["event"]].format(**fields, seconds=_seconds(e.get("seconds", "?")))
            out.append({"kind": kind, "reason": e["event"], "text": text, "id": e["id"],
                        "experiment": fields["experiment"]})
            continue
        if kind == "downgrade":
            until = float(json.loads(e.get("until", "0")))
            trigger = f", the recovery ramp failed on {e['trigger']}" if e.get("trigger") else ""
            text = (f"memguard: Zep reads downgraded to write_only fleet-wide (reason {e.get('reason')}"
                    f"{trigger}, hold {e.get('holds', '1')}), until {_when(until)}")
        elif e.get("event") == "ramp_completed":
            text = (f"memguard: Zep reads restored: the recovery ramp completed, every read goes to Zep "
                    f"(the hold was {e.get('previous_reason')})")
        elif ramp:
            kind = "recovering"
            text = (f"memguard: Zep reads recovering ({e.get('reason')}): a {_seconds(ramp)} ramp admits a "
                    f"growing share of conversations (the hold was {e.get('previous_reason')})")
        else:
            text = (f"memguard: Zep reads restored ({e.get('reason')}; the hold was "
                    f"{e.get('previous_reason')})")
        out.append({"kind": kind, "reason": e.get("reason") or e.get("event"), "text": text, "id": e["id"]})
    if stuck and record is not None:
        out.append({"kind": "stuck", "reason": record.reason, "id": episode,
                    "text": f"memguard: still write_only after {fleet.stuck_seconds / 60:.0f} minutes "
                            f"(reason {record.reason}, {record.holds} holds in a row)"})
    if state.guard is not None:  # a named guard's: its name leads the text and is in the body
        for msg in out:
            msg["guard"] = state.guard
            msg["text"] = f"memguard [guard {state.guard}]:" + str(msg["text"]).removeprefix("memguard:")
    return out


def claim(state: State, stuck_episode: str, limit: int = 50) -> tuple[bool, list[dict[str, str]]]:
    """The audit entries no caller has taken yet (each goes to exactly one caller fleet-wide),
    and whether this caller should announce ``stuck_episode``."""
    # A named guard's first claim takes its last hour: its stream began with the transition that
    # made it due, which the default's start-at-the-end would skip.
    replay_ms = 3_600_000 if state.guard is not None else 0
    reply = state.call("notify_claim", limit=limit, stuck_episode=stuck_episode, replay_ms=replay_ms)
    return bool(reply["stuck"]), [{"id": e["id"], **e["fields"]} for e in reply.get("entries") or []]


def payload(fmt: str, url: str, msg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The URL to POST to and the body, for the receiver's format."""
    named = {"guard": msg["guard"]} if "guard" in msg else {}  # the default guard's bodies are as before
    details = {"kind": msg["kind"], "reason": msg["reason"], "id": msg["id"], **named}
    if fmt == "pagerduty" and msg["kind"] == "chaos":  # an incident of its own, informational
        target, routing_key = urldefrag(url)
        return target, {
            "routing_key": routing_key,
            "event_action": "trigger" if msg["reason"] == "chaos_started" else "resolve",
            "dedup_key": f"memguard-chaos-{msg['experiment']}",
            "payload": {"summary": msg["text"], "source": "memguard", "severity": "info",
                        "custom_details": details}}
    if fmt == "pagerduty":
        target, routing_key = urldefrag(url)
        return target, {
            "routing_key": routing_key,
            "event_action": {"restore": "resolve", "recovering": "acknowledge"}.get(msg["kind"], "trigger"),
            "dedup_key": f"memguard-guard-{msg['guard']}-write-only" if named else PAGERDUTY_DEDUP_KEY,
            "payload": {"summary": msg["text"], "source": "memguard",
                        "severity": "critical" if msg["kind"] == "stuck" else "warning",
                        "custom_details": details},
        }
    return url, {"text": msg["text"], "memguard": details}


class Notifier:
    """Delivers what is due to every ``MEMORY_WEBHOOK_URLS`` receiver."""

    def __init__(self, state: State, settings: Settings, hooks: events.Hooks) -> None:
        self.state = state
        self.settings = settings
        self.hooks = hooks

    def deliver(self) -> int:
        """Announce what is due to every webhook; returns the number of POSTs accepted.

        One prober delivers at a time (a Redis lock; the others skip their turn), so a receiver
        gets the messages in the order of the transitions: a resolve never overtakes its trigger.
        """
        if not self.settings.webhook_urls:
            return 0
        lock = self.state.plain.lock(self.state.keys.notify_lock, timeout=LOCK_S)
        if not lock.acquire(blocking=False) and not self._repair_lock(lock):
            return 0
        import httpx  # only a prober with webhooks pays for it

        sent = 0
        try:
            with httpx.Client() as client:
                for msg in messages(self.state, self.settings):
                    for fmt, url in self.settings.webhook_urls:
                        sent += self.post(client, fmt, url, msg)
        finally:
            with contextlib.suppress(redis.RedisError):
                lock.release()
        return sent

    def _repair_lock(self, lock: Any) -> bool:
        """A lock memguard did not write (another type, or no expiry) would block every delivery
        for good: replace it, and try once more."""
        key = self.state.keys.notify_lock
        plain = self.state.plain
        if plain.kind(key) == "string" and plain.expiry_ms(key) != -1:
            return False  # another deliverer's: it expires by itself
        plain.remove(key)
        self.hooks.emit(events.GuardTrouble("corrupt_state", "notify", f"{key} was not a lock memguard took"))
        return bool(lock.acquire(blocking=False))

    def post(self, client: httpx.Client, fmt: str, url: str, msg: dict[str, Any]) -> bool:
        target, body = payload(fmt, url, msg)
        headers = {"Idempotency-Key": f"memguard-{msg['kind']}-{msg['id']}"}
        error = ""
        for attempt in range(ATTEMPTS):
            try:
                response = client.post(target, json=body, headers=headers, timeout=TIMEOUT_S)
                if response.status_code < 300:
                    return True
                error = f"HTTP {response.status_code}"
            except Exception as exc:  # httpx.HTTPError, or anything else: the next one is tried
                error = type(exc).__name__
            if attempt < len(BACKOFF_S):
                time.sleep(BACKOFF_S[attempt])
        # The host only: a Slack webhook's path is its secret.
        detail = f"{urlsplit(url).hostname}: {error}"
        self.hooks.emit(events.GuardTrouble("webhook_failed", msg["kind"], detail))
        return False
