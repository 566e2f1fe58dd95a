"""One implementation of the request path for blocking and asyncio callers.

Every Redis step the request path may take (count a failure, force, reset the count, read
the state when the view cannot say, end a lapsed hold) is written once, as a generator that
yields what it needs done — a transition script or the snapshot read — and gets back the
reply, or has the Redis error thrown in where it yielded. ``run`` performs those steps with
the blocking client, ``arun`` awaits them on ``redis.asyncio``. So the scripts, triggers,
events and fail-open handling cannot drift apart between the blocking and asyncio paths:
there is one copy of each.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
S = TypeVar("S")  # a step: the request path's (Script, ReadSnapshot) or a watcher's (also Listen)


@dataclass(frozen=True)
class Script:
    """Run the script ``name`` (``memguard.store.scripts``) with these named arguments."""

    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class ReadSnapshot:
    """The snapshot's plain reads, in one round trip."""


@dataclass(frozen=True)
class Via:
    """A step of another guard's: its store performs it (a tenant's timeout counts toward its
    parent's failures; a watcher re-reads a named guard's view)."""

    store: Any  # a memguard.store.state.State
    step: Step


Step = Script | ReadSnapshot | Via
Steps = Generator[Step, Any, T]


def via(store: Any, steps: Generator[Step, Any, T]) -> Generator[Step, Any, T]:
    """``steps``, each performed by ``store``."""
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            step = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value
        try:
            reply, error = (yield Via(store, step)), None
        except Exception as exc:
            reply, error = None, exc


def run(steps: Generator[S, Any, T], perform: Callable[[S], Any]) -> T:
    """Drive ``steps`` to its result, performing each step as a blocking call (an error is
    thrown in where the step was yielded)."""
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value
        try:
            value, error = perform(step), None
        except Exception as exc:
            value, error = None, exc


async def arun(steps: Generator[S, Any, T], perform: Callable[[S], Awaitable[Any]]) -> T:
    """Drive ``steps`` to its result, awaiting each step."""
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value
        try:
            value, error = await perform(step), None
        except Exception as exc:
            value, error = None, exc
