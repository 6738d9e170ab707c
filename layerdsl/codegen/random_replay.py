"""Random draws replayed under `@function(save = "inputs")`: a forward with loops (or `if`s taken each on
their own) runs again in backward, so the random state forward began with is passed in, and backward sets
it while it runs forward again, under `torch.random.fork_rng`, as `torch.utils.checkpoint` does."""

from __future__ import annotations

from layerdsl.autodiff.loops import LoopPlan, segment_steps
from layerdsl.autodiff.plan import BranchPlan
from layerdsl.autodiff.tape import NotDerivable, reserved_names
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import names_bound, names_read
from layerdsl.language.naming import fresh_name

STATE_TYPE = "tuple[torch.device, Tensor] | None"  # (device, random state) as forward begins, None in eval


def state_name(layer: N.Layer) -> str:
    """The Function's argument holding the random state: `rng_state`, or the first of `rng_state_`, ... that
    no name of `layer`'s spec takes (an argument, member, input, dim or local of that name keeps it)."""
    assert layer.forward is not None
    taken = reserved_names(layer) | names_read(layer.forward) | names_bound(layer.forward.body) | {"training"}
    return fresh_name("rng_state", taken)


def replays_draws(layer: N.Layer, plan: object) -> bool:
    """Whether `layer`'s Function runs a forward that draws at random again in backward: `save = "inputs"`
    over a plan with loops or separate `if`s (every side of it, where it branches)."""
    dec = layer.decorator("function")
    if dec is None or not any(k.name == "save" and getattr(k.value, "value", None) == "inputs" for k in dec.kwargs):
        return False
    sides = _loop_plans(plan)
    return sides is not None and any(_drawn(side) is not None for side in sides)


def _drawn(plan: LoopPlan):
    """The first step of `plan` drawn at random (dropout's mask), or None."""
    steps = (s for seg in plan.segments for s in segment_steps(seg))
    return next((s for s in steps if s.op is not None and s.op.cost == "random"), None)


def _loop_plans(plan: object) -> list[LoopPlan] | None:
    """Every side of `plan` (`plan` itself, when it has none), each with loops; None where one has none."""
    if isinstance(plan, BranchPlan):
        then, orelse = _loop_plans(plan.then), _loop_plans(plan.orelse)
        return None if then is None or orelse is None else then + orelse
    return [plan] if isinstance(plan, LoopPlan) else None


def check_replayed(plan: LoopPlan, replaying: bool) -> None:
    """A forward run again in backward would draw anew where its draws are not replayed: refused there."""
    step = _drawn(plan)
    if step is not None and not replaying:
        raise NotDerivable(
            step.expr.span,
            'save = "inputs" runs this forward again in backward, where a random draw (dropout) would draw'
            " anew: replayed only where every side of the forward has loops or `if`s taken each on its own",
            'drop `save = "inputs"` (the default saves the mask), or draw the mask outside the `@function` layer',
        )


def state_argument(like: str | None) -> str:
    """The module's argument: the random state of the device of tensor `like` (CUDA's own generator for a
    CUDA tensor, else the CPU's; the CPU's where no tensor input is given), in training only (eval draws
    nothing)."""
    if like is None:
        return '(torch.device("cpu"), torch.get_rng_state()) if self.training else None'
    state = f"torch.cuda.get_rng_state({like}.device) if {like}.is_cuda else torch.get_rng_state()"
    return f"({like}.device, {state}) if self.training else None"


def replayed(lines: list[str], kept: str, drawn: str, cuda: str) -> list[str]:
    """`lines` (forward run again) under the random state kept as `kept` (`ctx.rng_state`), the caller's
    restored after them; `drawn`, `cuda`: locals."""
    return [
        f"{drawn} = {kept}  # (device, random state) as forward began: its draws again; None in eval",
        f'{cuda} = [{drawn}[0]] if {drawn} is not None and {drawn}[0].type == "cuda" else []',
        f"with torch.random.fork_rng({cuda}, enabled={drawn} is not None):  # the caller's state kept",
        f"    if {cuda}:",
        f"        torch.cuda.set_rng_state({drawn}[1], {cuda}[0])",
        f"    elif {drawn} is not None:",
        f"        torch.set_rng_state({drawn}[1])",
        *(f"    {line}" for line in lines),
    ]
