"""What a loop Function saves only for its loops' steps, saved only where a step runs; and what a forward
run again leaves out of a loop updating a buffer.

An input read by backward only inside the steps of the forward's own loops (an RNN's `h0`, read as the
start of `h` at step 0: `h_t = h_steps[t - 1] if t > 0 else h0`) is read by no backward after a loop of no
steps, where autograd keeps nothing: setup_context saves it as `h0 if len(range(ctx.T)) else None`, over
the ranges backward writes for those loops, when they read only what setup_context has already kept on
ctx (not a number backward computes in its prelude). At one step or more it saves what it saved before.

Under `save = "inputs"`, the forward run again in backward leaves out a buffer a loop's body updates
(`autodiff.loop_buffers`) that no gradient reads (a count), with the steps computing it: its input is then
not saved, as autograd keeps nothing for it.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Protocol

from layerdsl.autodiff.loops import Loop, Segment
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
        loops = reads.in_loops.get(name, set())
        trips = [reads.trips.get(k) for k in sorted(loops)]
        if not loops or name in reads.outside or name in left or not all(t and _on_ctx(t) for t in trips):
            out.append(name)
            continue
        runs = " or ".join(f"len({t})" for t in trips if t)
        out.append(f"{name} if {runs} else None")
    return out


def _on_ctx(text: str) -> bool:
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
