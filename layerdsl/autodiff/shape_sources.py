"""The leaves whose broadcast shape an intermediate has, for a backward that reads only its shape.

`mean(loss)`'s gradient expands to `loss`'s shape. When `loss` is computed by elementwise operations alone
(`exp(input) - target * input`), its shape is `torch.broadcast_shapes(input.shape, target.shape)`: the
Function keeps that on ctx in setup_context instead of recomputing the whole of `loss` in backward only to
read its shape (issue 15: "shape-only uses keep only the shape").
"""

from __future__ import annotations

from collections.abc import Collection

from layerdsl.autodiff.tape import Tape
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk


def broadcast_leaves(tape: Tape, var: str, excluded: Collection[str] = ()) -> list[str] | None:
    """The leaves (in tape order) that the intermediate `var` has the broadcast shape of, when every step
    it is computed from is elementwise (a comparison too); None otherwise, or when it reads a leaf in
    `excluded` (one that may be absent, or a plain value rather than a tensor)."""
    found: set[str] = set()
    seen: set[str] = set()
    pending = [var]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        step = tape.step(name)
        if step is None:
            if name not in tape.leaves or name in excluded:
                return None
            found.add(name)
            continue
        elementwise = step.op.shape == "elementwise" if step.op is not None else isinstance(step.expr, N.Compare)
        if not elementwise or step.guard or step.by_mask:
            return None
        for n in walk(step.expr):
            if isinstance(n, N.Name) and (tape.step(n.id) is not None or n.id in tape.leaves):
                pending.append(n.id)
    return [leaf for leaf in tape.leaves if leaf in found] or None
