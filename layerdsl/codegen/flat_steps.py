"""Values of a loop's step whose shape changes from step to step, kept flattened in one buffer.

A value of a step's own shape (`autodiff/loop_ints.sized_per_step`) cannot be kept in a buffer of one slot per
step; backward computes it again from what the step keeps (`loop_backward.BackwardWriter.loop`). Where that
would keep a value autograd does not (`sigmoid(h[:, n:])`, computed again from the carried `h`, kept per step
for it alone, where autograd keeps the smaller values themselves), the value is kept instead: forward appends
each step's value, flattened, to a list, joined into one buffer after the loop (`forward_lines`); backward,
running the steps in reverse, cuts each step's value back from the buffer's end, at the shape it finds from
the shapes of the value's operands (views of what the step keeps, read only for their shape:
`flat_lines`). Only an elementwise value (its shape their broadcast) of views of the carried values, picks,
inputs and parameters, in no `cat` (`read_from_cats` reads those back from the `cat`) and viewed by no step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerdsl.autodiff.loops import Loop
from layerdsl.codegen.function import VIEWS
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk

if TYPE_CHECKING:
    from layerdsl.codegen.function_loops import LoopFunction


def flat_values(loop: Loop, reshaped: set[str], leaves: set[str]) -> set[str]:
    """The values of `loop`'s step of its own shape (`reshaped`) kept flattened rather than computed again:
    elementwise of views (of the carried values, picks, `leaves`) and of those, reading through them a value
    of the step by value (a carried value: kept per step for it alone otherwise)."""
    steps = {s.var: s for s in loop.tape.steps}
    sources = leaves | set(loop.picks)
    views: dict[str, set[str]] = {}  # a view of the step -> the carried values it views (through views)
    out: set[str] = set()
    in_cats = {
        n.id
        for s in loop.tape.steps
        if s.op is not None and s.op.name == "cat"
        for n in walk(s.expr)
        if isinstance(n, N.Name)
    }
    viewed = {o for s in loop.tape.steps if s.op is not None and s.op.shape in VIEWS for o in _operands(s)}
    for s in loop.tape.steps:
        args = _operands(s)
        if s.op is not None and s.op.shape in VIEWS:
            if all(a in sources or a in loop.carried or a in views for a in args):
                views[s.var] = {a for a in args if a in loop.carried} | {c for a in args for c in views.get(a, ())}
            continue
        elementwise = s.op is not None and s.op.shape == "elementwise" and not s.guard and not s.by_mask
        if s.var not in reshaped or not elementwise or s.var in in_cats or s.var in viewed or not args:
            continue
        if s.var in loop.updates.values() or not all(a in sources or a in views for a in args):
            continue
        if any(views.get(a) for a in args):  # computed again, it would read a carried value by value
            out.add(s.var)
    return {v for v in out if v in steps}


def shape_of(operands: list[str]) -> str:
    """The shape of an elementwise value of `operands` (each as backward spells it)."""
    if len(operands) == 1:
        return f"{operands[0]}.shape"
    return f"torch.broadcast_shapes({', '.join(f'{o}.shape' for o in operands)})"


def operands(loop: Loop, v: str) -> list[str]:
    step = loop.tape.step(v)
    assert step is not None
    return sorted(_operands(step))


def _operands(step) -> set[str]:
    return {n.id for a in step.args.values() for n in walk(a) if isinstance(n, N.Name) and n.kind == N.Kind.TENSOR}


def forward_lines(fn: LoopFunction, loop: Loop, flat: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Forward's lines keeping `flat`'s values: before the loop, in its body (at the step's end), after it."""
    before, body, after = [], [], []
    for v in flat:
        parts = fn.name(f"{v}_parts")
        before.append(f"{parts} = []")
        body.append(f"{parts}.append({v}.reshape(-1))")
        after.append(f"{fn.stacked(v)} = torch.cat({parts}) if {parts} else None  # each step's, flattened")
    return before, body, after


def kept_flat(fn: LoopFunction, loop: Loop) -> set[str]:
    """The values of `loop` kept flattened (decided by its backward: `flat_values`)."""
    if loop not in fn.loops:
        return set()
    return fn.flat_steps.get(fn.loops.index(loop), set())
