"""A slice whose size varies from step to step in a loop whose `if` picks its side at each step.

Such a loop is planned as a loop holding a loop of none (`step_choices`), whose values are kept per step
stacked at one shape (`codegen.function_nest`), so a value whose shape varies cannot be kept. A slice of the
value the loop carries, or of an input, outside the `if` (`p = sum(h[:, :m])` with `m = t % 3`), of which
nothing computed has a shape that varies (found with the slice's size as the difference of its bounds, as
`loop_ints.sized_per_step` finds a plain loop's), is not kept: backward computes the slice again at each step
from the carried value (`carried_views`) or the input. Any other value whose shape varies (`tanh(h[:, :m])`)
is refused, located at the slice (`loop_ints.check_varying_slices`' message). In the body of a loop holding a
loop, outside the loops it holds (`check_nest`), a slice of an input of which nothing computed there varies in
shape (`sum(z[:j + 1], dim = 0)`) derives alike: backward computes views of the inputs again at each outer step
(`codegen.function_nest._leaf_views`), and what the body computes from it at one shape at every step
(`sum(z[:j + 1], dim = 0)` is [B, d]) has that shape in the plan (`steady_outer_shapes`: a loop after it then
knows its carried value keeps its shape); any other is refused at the slice, as before.

An index by a bool mask in the straight code of either (`sum(h[h > 0])`, `mean(x[t][m])`) is not kept either,
nor what that code computes from it of a varying shape (`exp(x[t][m]) * 0.5`) (`masks_again`): backward
computes them again at each step, from the mask and the input, each of one shape (kept per step, or computed
again themselves), as with the slices above (`carried_views`); on a side of an `if`, at the start of that
side's backward (`side_masks`). One whose value (or one computed from it) the steps keep at one shape (a
carried value, an appended item) is refused at the mask (`loop_ints.check_masks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerdsl.autodiff import loop_ints
from layerdsl.autodiff.tape import NotDerivable, Step, Tape
from layerdsl.ir import nodes as N

if TYPE_CHECKING:
    from layerdsl.autodiff.loops import Straight
    from layerdsl.autodiff.nest import Nest
    from layerdsl.autodiff.shapes import Shape


def _sized(nest: Nest, shapes: dict[str, Shape]) -> tuple[set[str], list[Step]]:
    """`loop_ints.sized_per_step`'s values of the body outside its loops (and the steps kept at one shape)."""
    from layerdsl.autodiff import loops

    steps = [
        s for seg in nest.segments if isinstance(seg, (loops.Straight, loops.Choice)) for s in loops.segment_steps(seg)
    ]
    facts = loop_ints.BodyFacts(
        var=nest.var,
        numbers=nest.numbers,
        varying_numbers=set(nest.carried_numbers),
        kept=loop_ints.kept_at_one_shape(nest.updates, nest.appended, nest.more),
        carried=nest.carried,
        steps=steps,
    )
    return loop_ints.sized_steps(facts, shapes)


def sized_outside_loops(nest: Nest, shapes: dict[str, Shape]) -> set[str]:
    """The values of the body outside its loops whose shape may change from step to step (`_sized`)."""
    return _sized(nest, shapes)[0]


def _slices_of_starts(nest: Nest, leaves: set[str]) -> dict[str, Step]:
    """The slices in the body's straight code of a carried value (at the step's start) or an input."""
    from layerdsl.autodiff import loops

    out: dict[str, Step] = {}
    for seg in nest.segments:
        for s in seg.tape.steps if isinstance(seg, loops.Straight) else []:
            source = s.args.get("input")
            if s.op is not None and s.op.name == "slice" and isinstance(source, N.Name):
                if source.id in nest.carried or source.id in leaves:
                    out[s.var] = s
    return out


def masks_again(nest: Nest, sized: set[str]) -> dict[str, Step]:
    """The indexes by a bool mask in the body's straight code (`sum(h[h > 0])`, `x[t][m]`), and the values
    of varying shape (of `sized`) it computes from them there (`exp(x[t][m]) * 0.5`): backward computes each
    again from its operands (the mask and the input kept per step, or computed again themselves) where
    nothing else computed from them varies in shape (`check`). (On a side of an `if`: `side_masks`.)"""
    out: dict[str, Step] = {}
    for s in _straight_steps(nest):
        if s.by_mask or s.var in sized and s.reads & set(out):
            out[s.var] = s
    return out


def side_masks(nest: Nest, sized: set[str]) -> dict[tuple[int, int], dict[str, Step]]:
    """By (index of a `Choice` in the body, side): that side's indexes by a bool mask and the values of varying
    shape it computes from them (`masks_again`'s, of a side): computed again at the start of that side's
    backward, where read (`codegen.loop_backward.BackwardWriter.side_again`)."""
    from layerdsl.autodiff import loops

    out: dict[tuple[int, int], dict[str, Step]] = {}
    for index, seg in enumerate(nest.segments):
        for k, tape in enumerate(seg.sides() if isinstance(seg, loops.Choice) else ()):
            chain: dict[str, Step] = {}
            for s in tape.steps:
                if s.by_mask or s.var in sized and s.reads & set(chain):
                    chain[s.var] = s
            if chain:
                out[index, k] = chain
    return out


def _outside_loops(nest: Nest) -> list[Step]:
    from layerdsl.autodiff import loops

    return [
        s for seg in nest.segments if isinstance(seg, loops.Straight | loops.Choice) for s in loops.segment_steps(seg)
    ]


def _straight_steps(nest: Nest) -> list[Step]:
    from layerdsl.autodiff import loops

    return [s for seg in nest.segments if isinstance(seg, loops.Straight) for s in seg.tape.steps]


def _again(nest: Nest, leaves: set[str], sized: set[str]) -> set[str]:
    """The values whose shape varies that backward computes again rather than keeps: slices of a carried
    value or an input, and indexes by a bool mask and what is computed from them (`masks_again`)."""
    on_sides = {v for chain in side_masks(nest, sized).values() for v in chain}
    return set(_slices_of_starts(nest, leaves)) | set(masks_again(nest, sized)) | on_sides


def check(stmt: N.For, nest: Nest, shapes: dict[str, Shape], leaves: set[str]) -> None:
    """NotDerivable at a slice of `stmt`'s body (a loop with a choice per step, planned as `nest`) whose size
    varies from step to step, unless it is a slice of a carried value or an input outside the `if` of which
    nothing computed has a shape that varies (backward computes it again), and at an index by a bool mask
    there unless nothing kept at one shape is computed from it (`masks_again`, `side_masks`)."""
    sized, kept_at_one = _sized(nest, shapes)
    if not kept_at_one and sized <= _again(nest, leaves, sized):
        return
    loop_ints.check_varying_slices(stmt, per_step=True)  # (the slice, located, as before)
    loop_ints.check_masks([Tape(nest.steps(), [], [], set())], per_step=True)  # (the mask, as before)
    at = next(iter(kept_at_one), None) or next(s for s in nest.steps() if s.var in sized)
    raise NotDerivable(
        at.expr.span,
        "cannot derive through this value yet: its shape may change from step to step, in a loop whose `if`"
        " picks a side at each step",
        "keep the shape the same in every step, or compute both sides and choose with where(cond, a, b), or"
        " write a backward block, or drop @function",
    )


def check_nest(stmt: N.For, nest: Nest, shapes: dict[str, Shape], leaves: set[str]) -> None:
    """NotDerivable at a slice whose size varies from step to step in the body of `stmt`, a loop holding a
    loop (planned as `nest`), outside its loops, unless it is a slice of an input of which nothing computed
    there varies in shape (backward computes views of the inputs again at each step:
    `codegen.function_nest._leaf_views`)."""
    sized, kept_at_one = _sized(nest, shapes)
    of_inputs = {v for v, s in _slices_of_starts(nest, leaves).items() if _sliced(s) in leaves}
    on_sides = {v for chain in side_masks(nest, sized).values() for v in chain}
    if not kept_at_one and sized <= of_inputs | set(masks_again(nest, sized)) | on_sides:
        return
    loop_ints.check_varying_slices(stmt)  # (the slice, located, as before)
    loop_ints.check_masks([Tape(_outside_loops(nest), [], [], set())])  # (the mask, as before)
    at = next(iter(kept_at_one), None) or next(s for s in nest.steps() if s.var in sized)
    raise NotDerivable(
        at.expr.span,
        "cannot derive through this value yet: its shape may change from step to step, in the body of a loop"
        " holding a loop, outside the loop it holds",
        "keep the shape the same in every step, or move it into the inner loop, or write a backward block",
    )


def steady_outer_shapes(stmt: N.For, straight: Straight, shapes: dict[str, Shape]) -> dict[str, Shape]:
    """The shapes of the values of `straight`, a straight segment of the body of `stmt` (a loop holding a loop,
    or of choices per step), computed from a slice whose size varies from step to step, that are the same at
    every step (`sum(x[:i + 1], dim = 0)` is [B, d]: `loop_ints.steady_step_shapes`): the plan knows them, so
    that a loop after it knows its carried value keeps its shape (its last step read back as the carried value
    at the next outer step, `codegen.function_nest.last_step`, not stacked as a copy)."""
    return loop_ints.steady_step_shapes(straight.tape.steps, shapes, loop_ints.varying_per_step(stmt))


def carried_views(nest: Nest, shapes: dict[str, Shape], leaves: set[str]) -> dict[str, Step]:
    """The slices of the carried values whose size varies from step to step, and the indexes by a bool mask
    (`masks_again`; in a loop holding a loop, these alone), that `check` let through: computed again at each
    step of backward rather than kept."""
    from layerdsl.autodiff import loops

    sized = _sized(nest, shapes)[0]
    masks = {v: s for v, s in masks_again(nest, sized).items() if v in sized}
    if any(isinstance(seg, (loops.Loop, type(nest))) for seg in nest.segments):
        return masks  # (a loop holding a loop: a slice of an input is a view of its own, `_leaf_views`)
    views = _slices_of_starts(nest, leaves)
    again = {v: s for v, s in views.items() if v in sized and _sliced(s) in nest.carried}
    return again | masks


def sliced_carried(nest: Nest, shapes: dict[str, Shape], leaves: set[str]) -> set[str]:
    """The carried values `carried_views` slices: read back at the head of each step of backward, where the
    slices are computed again (not kept lazily on the sides, `codegen.step_rows`)."""
    return {_sliced(s) for s in carried_views(nest, shapes, leaves).values()} & set(nest.carried)


def _sliced(step: Step) -> str:
    """The name a slice of `_slices_of_starts` slices."""
    source = step.args["input"]
    assert isinstance(source, N.Name)
    return source.id
