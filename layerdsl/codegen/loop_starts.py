"""What a loop Function saves only for its loops' steps, saved only where a step runs; and what a forward
run again leaves out of a loop updating a buffer.

An input read by backward only inside the steps of the forward's own loops (an RNN's `h0`, read as the
start of `h` at step 0: `h_t = h_steps[t - 1] if t > 0 else h0`) is read by no backward after a loop of no
steps, where autograd keeps nothing: setup_context saves it as `h0 if len(range(ctx.T)) else None`, over
the ranges backward writes for those loops, when they read only what setup_context has already kept on
ctx (not a number backward computes in its prelude). At one step or more it saves what it saved before.
A loop's start that forward computes (`h = x[0] * 0.0`), returned as an extra output and read alike, is
saved under the same test (`computed_starts`; a nest's, `function_nest.saved_in_steps`).

Under `save = "inputs"`, the forward run again in backward leaves out a buffer a loop's body updates
(`autodiff.loop_buffers`) that no gradient reads (a count), with the steps computing it: its input is then
not saved, as autograd keeps nothing for it. An input that backward, the forward run again included, reads
only in loops' steps or as a carried start bound before its loop (`h = h0.view_as(h0)`) is saved only
where one of those loops runs a step, the start bound only where it is not None (`again_when_a_step_runs`).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Protocol

from layerdsl.autodiff.loops import Loop, Segment
from layerdsl.autodiff.nest import Nest
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk

# what a range written for backward may read besides `ctx`'s fields, to be spelt in setup_context too
_BUILTINS = frozenset({"ctx", "range", "len", "min", "max", "abs", "int"})


class _Reads(Protocol):
    outside: set[str]
    in_loops: dict[str, set[int]]
    trips: dict[int, str]


def when_a_step_runs(saved: list[str], reads: _Reads, left: set[str]) -> list[str]:
    """`saved` as setup_context saves them: each read only inside the steps of loops whose ranges
    setup_context can spell, under the test that one of them runs a step (`left`: those saved as they
    are whatever backward reads)."""
    out = []
    for name in saved:
        runs = None if name in left else step_test(name, reads)
        out.append(name if runs is None else f"{name} if {runs} else None")
    return out


def step_test(name: str, reads: _Reads) -> str | None:
    """The test that a step of one of the loops reading `name` runs (`len(range(ctx.T))`), where backward
    reads it by value only in the steps of loops whose ranges setup_context can spell; else None."""
    loops = reads.in_loops.get(name, set())
    trips = [reads.trips.get(k) for k in sorted(loops)]
    if not loops or name in reads.outside or not all(t and on_ctx(t) for t in trips):
        return None
    return " or ".join(f"len({t})" for t in trips if t)


def computed_starts(segments: list[Segment], leaves: set[str], extra: set[str], reads: _Reads) -> dict[str, str]:
    """The starts of the forward's own loops (of `extra`, the values returned for backward) that it computes
    (not an input, nor a value a loop carries: `ends_in_buffers` saves those), read by backward only in the
    loops' steps: by the test under which setup_context saves them (`step_test`)."""
    loops = [seg for seg in segments if isinstance(seg, Loop)]
    carried = {c for seg in segments if isinstance(seg, (Loop, Nest)) for c in seg.carried}
    out = {}
    for start in dict.fromkeys(s for loop in loops for s in loop.carried.values()):
        if start in extra and start not in leaves and start not in carried:
            if (runs := step_test(start, reads)) is not None:
                out[start] = runs
    return out


def on_ctx(text: str) -> bool:
    """Whether the expression `text` reads only `ctx`'s fields, numbers and a few builtins."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    # a comprehension's own variables (a loop's count at each step of the loop holding it: `ragged_steps`)
    own = {
        n.id
        for c in ast.walk(tree)
        if isinstance(c, ast.comprehension)
        for n in ast.walk(c.target)
        if isinstance(n, ast.Name)
    }
    return all(n.id in _BUILTINS | own for n in ast.walk(tree) if isinstance(n, ast.Name))


def unread_buffer_chains(segments: list[Segment], kept: set[str], read_by: Callable[[Segment], set[str]]) -> set[str]:
    """The values a forward run again (`save = "inputs"`) leaves out in the loops whose bodies update a
    buffer (`autodiff.loop_buffers`): the carried buffers and the body's steps that neither `kept` (what
    backward reads) nor the other segments (`read_by`) read, nor what the loop carries otherwise, appends
    or counts with: a count no gradient needs is not computed, nor its input saved."""
    out: set[str] = set()
    for seg in segments:
        if not (isinstance(seg, Loop) and seg.buffers):
            continue
        outside = kept | {n for other in segments if other is not seg for n in read_by(other)}
        buffers = set(seg.buffers.values())
        body = {s.var: s for s in seg.tape.steps}
        roots = [v for c, v in seg.updates.items() if c not in buffers]
        roots += [
            n.id
            for e in [*seg.appended.values(), *(i for m in seg.more.values() for i in m)]
            for n in walk(e)
            if isinstance(n, N.Name)
        ]
        roots += [n for _, e in seg.numbers for n in _names(e)] + [n for p in seg.picks.values() for n in p.reads]
        roots += [v for v in [*body, *buffers] if v in outside]
        live: set[str] = set()
        while roots:
            v = roots.pop()
            if v in live:
                continue
            live.add(v)
            if v in body:
                roots += list(body[v].reads)
            elif v in buffers:
                roots.append(seg.updates[v])
        out |= {v for v in [*body, *buffers] if v not in live}
    return out


def _names(e: N.Expr) -> list[str]:
    return [n.id for n in walk(e) if isinstance(n, N.Name)]


def again_when_a_step_runs(body: list[str], saved: list[str], left: set[str]) -> tuple[dict[str, str], list[str]]:
    """Under `save = "inputs"`: the inputs of `saved` (not of `left`) that backward, the forward run again
    included (`body`, its lines), reads only inside the steps of loops whose ranges setup_context can spell,
    or as a loop's carried start bound before it (`h = h0.view_as(h0)`, itself read only inside such steps),
    by the test under which setup_context saves them (`len(range(ctx.T))`, over the loops reading them); and
    `body` with each such start bound only where it is not None (after a loop of no steps nothing reads it)."""
    lines = "\n".join(body).split("\n")
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return {}, body
    tests: dict[str, str] = {}
    for name in saved:
        if name in left:
            continue
        bindings = [s for s in tree.body if isinstance(s, ast.Assign) and _views_itself(s, name)]
        names = {name} | {s.targets[0].id for s in bindings if isinstance(s.targets[0], ast.Name)}
        skipped = {id(n) for s in bindings for n in ast.walk(s.value)}
        ranges = _ranges_reading(tree, names, skipped)
        if not ranges or None in ranges:
            continue
        tests[name] = " or ".join(f"len({r})" for r in dict.fromkeys(r for r in ranges if r is not None))
        for s in bindings:  # (a top-level line of its own: the spec's line, if any, after it)
            bound = f"{ast.unparse(s.targets[0])} = {name}"
            lines[s.lineno - 1] = lines[s.lineno - 1].replace(
                f"{bound}.view_as({name})", f"{bound} if {name} is None else {name}.view_as({name})", 1
            )
    return tests, lines


def _views_itself(stmt: ast.Assign, name: str) -> bool:
    """Whether `stmt` is `c = name.view_as(name)` (a carried value's start, `LoopFunction.not_an_input`)."""
    if not (len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
        return False
    v = stmt.value
    return (
        isinstance(v, ast.Call)
        and isinstance(v.func, ast.Attribute)
        and v.func.attr == "view_as"
        and isinstance(v.func.value, ast.Name)
        and v.func.value.id == name
        and len(v.args) == 1
        and isinstance(v.args[0], ast.Name)
        and v.args[0].id == name
    )


def _ranges_reading(tree: ast.AST, names: set[str], skipped: set[int]) -> list[str | None]:
    """For each read of one of `names` (not of the nodes `skipped`): the range of the innermost loop around it
    that setup_context can spell (`range(ctx.T)`, of `reversed(list(enumerate(...)))` too), None where none."""
    out: list[str | None] = []

    def visit(node: ast.AST, around: str | None) -> None:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names:
            if id(node) not in skipped:
                out.append(around)
        if isinstance(node, ast.For):
            visit(node.iter, around)
            inner = _spelt_range(node.iter)
            for child in [node.target, *node.body, *node.orelse]:
                visit(child, inner if inner is not None else around)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, around)

    visit(tree, None)
    return out


def _spelt_range(it: ast.expr) -> str | None:
    """The `range(...)` a loop runs over, as setup_context can spell it (reading only ctx's fields)."""
    while (
        isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id in ("reversed", "list", "enumerate")
    ):
        if len(it.args) != 1:
            return None
        it = it.args[0]
    if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"):
        return None
    text = ast.unparse(it)
    return text if on_ctx(text) else None
