"""``memguard drill --chaos``: a game day on the drill's stack. An experiment is started through
the worker's task (``memguard.chaos_start``), this process (which allows it) reads a set of
conversations each second and prints the share that fails beside the share asked for, and the
stop (``memguard.chaos_stop``) is timed until every read is normal again."""

from __future__ import annotations

import time
from collections.abc import Callable

from celery import Celery

from memguard import process, service
from memguard.domain.events import origin

CONVERSATIONS = 200  # read each second: the share is judged over them
SHARE_PERCENT = 30
SECONDS = 3  # seconds of reads while the experiment runs


def _failing(ids: list[str]) -> set[str]:
    """The conversations whose read the experiment answered (source ``chaos``)."""
    return {i for i in ids if service.fetch_thread_context(i)[1].get("source") == "chaos"}


def chaos_drill(say: Callable[[str], None], sender: Celery,
                reads_of: Callable[[str], int] | None) -> tuple[bool, str]:
    """The game day's steps and verdict: (ok, detail)."""
    say(f"== chaos drill: error:503 on {SHARE_PERCENT}% of conversations, fleet-wide, in the processes "
        "that allow it (MEMGUARD_CHAOS=allow: this one)")
    ids = [f"gameday-conv-{i}" for i in range(CONVERSATIONS)]
    before = {i: reads_of(i) for i in ids} if reads_of else {}
    started = sender.send_task("memguard.chaos_start", kwargs={
        "fault": "error:503", "share": f"{SHARE_PERCENT}%", "duration": "1m"}).get(timeout=20)
    say(f"memguard.chaos_start through Celery -> experiment {started['id'][:12]} for "
        f"{started['seconds_left']:g} s")
    view = process.get().view
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (view.current and view.current.chaos):
        time.sleep(0.02)
    seen: list[set[str]] = []
    for second in range(SECONDS):
        t0 = time.monotonic()
        seen.append(_failing(ids))
        say(f"second {second + 1}: {len(seen[-1]):3d} of {CONVERSATIONS} conversations failing "
            f"({100 * len(seen[-1]) / CONVERSATIONS:.0f} %, asked {SHARE_PERCENT} %), the same ones: "
            f"{seen[-1] == seen[0]}")
        time.sleep(max(0.0, t0 + 1 - time.monotonic()))
    reached = sum(reads_of(i) - before[i] for i in seen[0]) if reads_of else None
    if reached is not None:
        say(f"reads of the failing conversations that reached the Zep stub: {reached}")
    status = process.get().ops.status(origin("drill"))
    say(f"memguard status shows: chaos {status.get('chaos', {}).get('fault')} on "
        f"{status.get('chaos', {}).get('share_percent')} %")
    stopped_at = time.monotonic()
    sender.send_task("memguard.chaos_stop").get(timeout=20)
    returned = time.monotonic()
    while _failing(ids) and time.monotonic() < returned + 5:
        time.sleep(0.02)
    normal_s = time.monotonic() - returned
    say(f"memguard.chaos_stop through Celery ({returned - stopped_at:.2f} s) -> every read normal "
        f"{normal_s:.2f} s after it returned")
    share = 100 * len(seen[0]) / CONVERSATIONS
    ok = abs(share - SHARE_PERCENT) <= 10 and all(s == seen[0] for s in seen) and normal_s <= 1.0 \
        and not reached
    return ok, f"{share:.0f} % failing (asked {SHARE_PERCENT} %), normal {normal_s:.2f} s after the stop"
