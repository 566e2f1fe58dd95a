"""Every blocking/asyncio pair on the request path is one text but for ``await``: with ``await``,
``async`` and the asyncio names taken out, each asyncio body is its blocking twin's, line for
line. A fix made to one and not the other turns this red."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

from memguard import service
from memguard.request.guard import Guard
from memguard.store import steps
from memguard.store.aio import AsyncRedis
from memguard.store.state import State

# Longest first: each asyncio name and the blocking name it stands for.
RENAMES = (("_aunguarded", "_unguarded"), ("_abare_read", "_bare_read"), ("awrapper", "wrapper"),
           ("aperform", "perform"), ("steps.arun", "steps.run"), ("_aget", "_get"), ("acall", "call"),
           ("aget", "get"), ("asyncio.sleep", "time.sleep"), ("async ", ""))


class Unawait(ast.NodeTransformer):
    """``await x`` read as ``x``."""

    def visit_Await(self, node: ast.Await) -> ast.AST:
        return self.visit(node.value)


def body(source: str) -> list[str]:
    """A function's lines after its signature and docstring, comments and names normalised."""
    tree = ast.parse(textwrap.dedent(source))
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
    statements = fn.body[1:] if isinstance(fn.body[0], ast.Expr) and isinstance(
        getattr(fn.body[0], "value", None), ast.Constant) else fn.body
    lines = [ast.unparse(Unawait().visit(s)) for s in statements]
    out = []
    for line in "\n".join(lines).splitlines():
        for old, new in RENAMES:
            line = line.replace(old, new)
        out.append(line.strip())
    return out


def source(fn: Callable[..., Any]) -> str:
    return inspect.getsource(fn)


def inner(outer: Callable[..., Any], name: str) -> str:
    """The source of the function ``name`` defined inside ``outer``."""
    text = textwrap.dedent(inspect.getsource(outer))
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            segment = ast.get_source_segment(text, node)
            assert segment is not None
            return segment
    raise AssertionError(f"no {name} in {outer.__name__}")


PAIRS = {
    "Guard.call": (source(Guard.call), source(Guard.acall)),
    "steps.run": (source(steps.run), source(steps.arun)),
    "fetch_thread_context": (source(service.fetch_thread_context), source(service.afetch_thread_context)),
    "guarded's wrapper": (inner(service.guarded, "wrapper"), inner(service.guarded, "awrapper")),
    "_unguarded": (source(service._unguarded), source(service._aunguarded)),
    "_bare_read": (source(service._bare_read), source(service._abare_read)),
    "the store's step": (source(State._on), source(AsyncRedis._on)),
}


def test_each_asyncio_body_is_its_blocking_twins_but_for_await():
    drifted = {name: (body(a), body(b)) for name, (a, b) in PAIRS.items() if body(a) != body(b)}
    assert drifted == {}


def test_the_comparison_sees_a_difference():
    blocking = "def f(x):\n    return g(x)\n"
    assert body(blocking) == body("async def f(x):\n    return await g(x)\n")
    assert body(blocking) != body("async def f(x):\n    return await g(x, 1)\n")
