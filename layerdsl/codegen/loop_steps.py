"""A loop Function's derived statements through the optimisation stage, as a straight Function's.

`codegen.function_loops` writes each step's statements inside `for t in reversed(...)`, and the straight
code before, between and after its loops outside them. Both go through
the same rewriting as straight code (`optimize.prepared`: folded recomputations, contraction order, scales,
plain sums between known shapes, a joint kernel's results out of sums) and one kernel's gradients are
joined into one call (`codegen.joint_gradients`): a layer norm in a step then runs its backward kernel once
per step, not once per gradient. Before that, a value read only for its shape (`cat`'s operands) is written
as its static shape in the dims and arguments on ctx (`autodiff.shape_sources.with_static_shapes`), so the
Function neither keeps it nor, in a step, stacks it.

The scheduling passes (in-place updates, deletions) are not run: a step's temporaries are rebound at the
next step anyway, and the values a step starts from (per-step slices of saved buffers, the carried
gradients) must never be updated in place, so every name the step does not bind is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from layerdsl.autodiff.inline import Inlined
from layerdsl.autodiff.reverse import Backward
from layerdsl.autodiff.shape_sources import dim_size, leaf_size, with_static_shapes
from layerdsl.codegen.joint_gradients import joint_calls
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import clone
from layerdsl.optimize import Facts, Stmt, prepared
from layerdsl.optimize.statements import names
from layerdsl.semantics.evaluate import example_values
from layerdsl.semantics.shapes import Shape


def step_statements(
    bwd: Backward,
    shapes: dict[str, tuple | None],
    layer: N.Layer,
    needs: Callable[[set[str]], str | None],
    at_hand: Mapping[str, N.Ref],
    whole: Collection[str],
    sized_by: list[str],
) -> list[Stmt]:
    """`bwd`'s statements rewritten; `shapes`: the static shapes of the Function's values (a gradient has its
    value's), `needs(leaves)`: the guard under which the gradients of `leaves` are needed (None: always),
    `at_hand`: the dims and arguments backward reads from ctx, `whole`: the values at hand in backward anyway (inputs, views of them), `sized_by`: those whose size may give a dim (members first).
    """

    def replaced(var: str) -> bool:
        return var in shapes and var not in whole

    def size_of(dim: str) -> N.Expr | None:  # a member's size next: kept by the module anyway
        return dim_size(dim, at_hand) or leaf_size(dim, sized_by, shapes)

    stmts = [
        Stmt(g.var, with_static_shapes(clone(g.expr), shapes, replaced, size_of), set(g.leaves), span=g.span)
        for g in bwd.stmts
    ]
    bound = {s.target for s in stmts}
    read = {n for s in stmts for n in names(s.expr)}
    key = (
        layer,
        tuple((s.target, spec_text(s.expr), frozenset(s.leaves)) for s in stmts),
        tuple(sorted((n, shapes.get(n.removeprefix("grad_"))) for n in read | bound)),
        tuple(sorted(bwd.leaf_grads.items())),
    )
    if key not in _PREPARED:  # a loop Function writes each step's backward several times (rounds, modes)
        if len(_PREPARED) >= _KEPT:
            _PREPARED.clear()
        _PREPARED[key] = prepared(stmts, _facts(bwd, stmts, shapes, layer))
    return joint_calls(clone(_PREPARED[key]), needs)


def sized_leaves(layer: N.Layer, inlined: Inlined | None, leaves: list[str], absent: Collection[str]) -> list[str]:
    """The Function's inputs whose size may stand for a dim in backward: the layer's own members, then the
    forward's inputs; not one that may be None (`absent`), nor members stacked from a family or a list of
    subs (an empty placeholder, of another rank, when there are none)."""
    stacked = set(inlined.families) | {n for n, path in inlined.paths.items() if "[" in path} if inlined else set()
    inputs = [i.name for i in layer.forward.inputs] if layer.forward else []
    return [l for l in [*(t.name for t in layer.tensors), *inputs] if l in leaves and l not in {*absent, *stacked}]


_KEPT = 256
_PREPARED: dict[tuple, list[Stmt]] = {}


def _facts(bwd: Backward, stmts: list[Stmt], shapes: dict[str, tuple | None], layer: N.Layer) -> Facts:
    bound = {s.target for s in stmts}
    read = {n for s in stmts for n in names(s.expr)}
    known: dict[str, Shape] = {v: shape for v, shape in shapes.items() if shape is not None}
    known.update({f"grad_{v}": shape for v, shape in known.items()})
    return Facts(
        shapes=known,
        kept=(read - bound) | set(bwd.leaf_grads.values()),
        foldable=set(),
        full=[],
        incoming={n for n in read - bound if n.startswith("grad_")},
        sizes={k: v for k, v in example_values(layer).items() if isinstance(v, int) and not isinstance(v, bool)},
    )
