"""What a loop Function saves only for its loops' steps, saved only where a step runs.

An input read by backward only inside the steps of the forward's own loops (an RNN's `h0`, read as the
start of `h` at step 0: `h_t = h_steps[t - 1] if t > 0 else h0`) is read by no backward after a loop of no
steps, where autograd keeps nothing: setup_context saves it as `h0 if len(range(ctx.T)) else None`, over
the ranges backward writes for those loops, when they read only what setup_context has already kept on
ctx (not a number backward computes in its prelude). At one step or more it saves what it saved before.
"""

from __future__ import annotations

import ast
from typing import Protocol

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
    return all(n.id in _BUILTINS for n in ast.walk(tree) if isinstance(n, ast.Name))
