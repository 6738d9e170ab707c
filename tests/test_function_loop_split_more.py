"""A loop of a run-time count whose `if`s compare its variable with an int, split where they turn
(`autodiff/loop_split.py`), in two forms refused before:

- a loop over `range(start, stop, step)` (a number step > 0) in the body of a loop holding a loop: its
  `if`s' sides could not be a choice per step there ("its side may change from step to step (a choice per
  step is derived in a loop holding no loop only)"); it is split into ranges of the same step, each piece
  after a turn starting at the first step at or after it (`Splitting.start_after`);
- `x[..., t:t + 1, ...]` of a value whose dim there is the loop's count, in the first pieces of a split loop
  (`range(0, t_at)`, `t_at = minimum(1, T)`): the items a step appends were of a size known only when
  forward runs ("the loops in a row appending to it append items of different shapes"); a stop proven no
  more than the dim (`loop_split.stop_at_most`) now lets `loop_lists.unit_slices` read it as
  `unsqueeze(x[..., t, ...], k)`.

Each agrees with the plain module (outputs, first and second derivatives), passes gradcheck and
gradgradcheck in float64 over loops of 0, 1, 2, 5 (and 6) steps and bounds before, at, inside and after
them, and keeps no more for backward than autograd does."""

from __future__ import annotations

import functools

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file
from tests.support import compile_spec, function_and_plain, saved_bytes

STEPS = [0, 1, 2, 5, 6]  # 5: not a multiple of a step of 2; 6: not of 4
BOUNDS = [-1, 0, 1, 4, 7]

LAYER = """\
@function
layer P(d: int, k: int = 1) {
    param w: [d, d] = uniform(-1, 1)
    param u: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], h0: [L, B, d]) -> [...] {
        h = h0[0]
        BODY
    }
}
"""

NESTED = {
    "t == 0, step 2": """for j in range(L) {
            for t in range(0, T, 2) {
                if t == 0 { h = tanh(x[t] @ w + h) } else { h = tanh(x[t] @ w + h @ u) }
            }
        }
        return h""",
    "t < k, range(1, T, 2)": """for j in range(L) {
            h = h + h0[j]
            for t in range(1, T, 2) {
                if t < k { h = tanh(x[t] @ w + h) } else { h = sin(x[t] @ w) * h }
            }
            h = h * 0.5
        }
        return h""",
    # two bounds (three pieces), a start the bound may fall before, a step of 3
    "t == k, range(1, T, 3)": """for j in range(L) {
            for t in range(1, T, 3) {
                h = tanh(x[t] @ w + h @ u)
                if t == k { h = h * h0[j] }
            }
        }
        return h""",
    # a bound off the steps' grid (T - 1 of an even T), a list stacked each outer step
    "t >= T - 1, step 4, stack": """for j in range(L) {
            outs = []
            for t in range(0, T, 4) {
                if t >= T - 1 { g = sin(x[t] @ u) + h } else { g = tanh(x[t] @ w + h @ u) }
                h = g
                outs.append(g)
            }
            h = h + sum(stack(outs, dim = 0), dim = 0)
        }
        return h""",
}

SLICED = {
    # a slice on dim 1, the list catted on it
    "t == 0, cat dim 1": """xs = transpose(x, 0, 1)
        outs = []
        for t in range(T) {
            if t == 0 { g = tanh(xs[:, t:t + 1] @ w) } else { g = sin(xs[:, t:t + 1] @ u) }
            outs.append(g)
        }
        return cat(outs, dim = 1)""",
    "t < k, carried, cat dim 1": """xs = transpose(x, 0, 1)
        outs = []
        for t in range(T) {
            if t < k {
                h = tanh(sum(xs[:, t:t + 1], dim = 1) @ w + h)
            } else {
                h = tanh(sum(xs[:, t:t + 1], dim = 1) + h @ u)
            }
            outs.append(unsqueeze(h, 1) * xs[:, t:t + 1])
        }
        return cat(outs, dim = 1)""",
    "t == T - 1, cat dim 0": """outs = []
        for t in range(T) {
            if t == T - 1 { g = tanh(x[t:t + 1] @ w) } else { g = x[t:t + 1] * h }
            outs.append(g)
        }
        return cat(outs, dim = 0)""",
}

SPECS = NESTED | SLICED


@functools.cache
def _namespaces(name: str) -> tuple[dict, dict]:
    text = LAYER.replace("BODY", SPECS[name])
    stem = "".join(c if c.isalnum() else "_" for c in name)
    return compile_spec(text, f"more_{stem}_f"), compile_spec(text.replace("@function\n", ""), f"more_{stem}_p")


def _pair(name: str, k: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    modules = []
    for namespace in _namespaces(name):
        torch.manual_seed(0)
        modules.append(namespace["P"](3, k).double())
    modules[1].load_state_dict(modules[0].state_dict())
    return modules[0], modules[1]


def _inputs(steps: int, layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(10 * steps + layers)
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(layers, 2, 3, dtype=torch.float64, requires_grad=True)
    return x, h0


def _agree(ours: torch.nn.Module, plain: torch.nn.Module, x: torch.Tensor, h0: torch.Tensor) -> None:
    """Same output, same gradients of x, h0 and the parameters, same second derivatives."""
    unused = {"allow_unused": True, "materialize_grads": True}
    got, want = ours(x, h0), plain(x, h0)
    torch.testing.assert_close(got, want)
    weights = torch.linspace(-1, 2, got.numel(), dtype=got.dtype).reshape(got.shape)
    grads = []
    for module, value in ((ours, got), (plain, want)):
        wrt = [x, h0, *module.parameters()]
        grads.append(torch.autograd.grad((value * weights).sum(), wrt, create_graph=True, **unused))
    for g, p in zip(*grads, strict=True):
        torch.testing.assert_close(g, p)
    seconds = []
    for module, first in zip((ours, plain), grads):
        square = sum((g * g).sum() for g in first if g.requires_grad)
        if not isinstance(square, torch.Tensor):
            return  # nothing reads the parameters (no steps)
        seconds.append(torch.autograd.grad(square, [x, h0, *module.parameters()], **unused))
    for g, p in zip(*seconds, strict=True):
        torch.testing.assert_close(g, p)


def _problems(text: str) -> list[str]:
    spec = parse_file("more.layer", text)
    check_program([spec])
    _, problems = plan_backwards([spec])
    return [f"{p.span.line}:{p.span.col}: {p.message} (hint: {p.hint})" for p in problems]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_spec_is_derived(name):
    assert _problems(LAYER.replace("BODY", SPECS[name])) == []


@pytest.mark.parametrize("k", BOUNDS)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_split_loop_agrees_with_autograd(name, steps, k):
    ours, plain = _pair(name, k)
    for layers in [0, 1, 2] if name in NESTED else [1]:
        x, h0 = _inputs(steps, layers)
        try:
            plain(x, h0)
        except (RuntimeError, ValueError, IndexError):  # h0[0] of no layers, a cat of no items
            with pytest.raises((RuntimeError, ValueError, IndexError)):
                ours(x, h0)
            continue
        _agree(ours, plain, x, h0)
        if steps and k in (1, 4):
            assert torch.autograd.gradcheck(ours, (x, h0))
            assert torch.autograd.gradgradcheck(ours, (x, h0))


# a loop holding loops in a row stacked, each outer step, the value carried from one inner loop to the next
# (`h2_layers` of "t == 0, step 2": 816 bytes to autograd's 720), a copy of the first loop's last step value it
# keeps too: now kept only where that loop ran no steps, read as its last step elsewhere
# (`function_nest.kept_where_none`); `stack(outs)` of each outer step, read only for its shape, is kept one
# element expanded (`function_nest.shapes_per_step`: 864 bytes to autograd's 672 before); the value a middle
# loop of three leaves, a copy of its start where it runs no steps, is kept only where it ran steps, read as
# its start elsewhere (`function_nest.kept_where_steps`: 720 bytes to autograd's 624 before); a view in a
# step of a value from before the loop is computed again in backward, not stacked as a copy
# (`loop_backward.from_before`, `views_of_read`: 1152 bytes to autograd's 816 before).
@pytest.mark.parametrize("name", sorted(SPECS))
def test_backward_keeps_no_more_than_autograd(name):
    ours, plain = _pair(name, 3)
    x, h0 = _inputs(7, 2)
    assert saved_bytes(lambda: ours(x, h0), ours) <= saved_bytes(lambda: plain(x, h0), plain)


def test_the_stepped_pieces_start_on_the_steps():
    """The piece after a turn starts at the first step at or after it, the step kept."""
    source = _namespaces("t < k, range(1, T, 2)")[0]["SOURCE"]
    forward = source[source.index("class PFunction") : source.index("def setup_context")]
    assert "range(1, t_at, 2)" in forward and "range(t_at_, T, 2)" in forward
    assert "t_at_ = 1 + (t_at - 1 + 1) // 2 * 2" in forward


IN_A_ROW = """\
@function
layer P(d: int) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [...] {
        h = h0
        outs = []
        for t in range(0, T, 3) {
            h = tanh(x[t] @ w + h)
            outs.append(h)
        }
        for s in range(T) {
            h = sin(h) * x[s]
            outs.append(h * 2.0)
        }
        return stack(outs, dim = 0)
    }
}
"""


@pytest.mark.parametrize("steps", [1, 2, 5, 7, 10])
def test_a_list_appended_to_after_a_loop_over_a_range_with_a_step_derives(steps):
    """The second loop's items were found at the count of `range(0, 3)` after the first's, not of `range(0, T,
    3)` (`codegen.loop_backward`, the bounds of a range with a step read as (start, stop)): an IndexError, or
    at 10 steps a wrong gradient."""
    ours, plain = function_and_plain(IN_A_ROW, "P", 3)
    x, h0 = _inputs(steps, 1)
    h0 = h0[0].detach().requires_grad_()
    _agree(ours, plain, x, h0)
    assert torch.autograd.gradcheck(ours, (x, h0))


OUTER_LIST = """\
@function
layer P(d: int) {
    param w: [d, d] = uniform(-1, 1)
    param u: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], h0: [L, B, d]) -> [...] {
        h = h0[0]
        outs = []
        for j in range(L) {
            BODY
        }
        return cat(outs, dim = 0)
    }
}
"""
INNER_APPENDS = """for t in range(RANGE) {
                h = tanh(x[t] @ w + h @ u)
                outs.append(unsqueeze(h, 0))
            }"""
STACKED_ONCE = """inner = []
            for t in range(RANGE) {
                if t == 0 { h = tanh(x[t] @ w + h) } else { h = tanh(x[t] @ w + h @ u) }
                inner.append(h)
            }
            outs.append(stack(inner, dim = 0))"""


@pytest.mark.parametrize("bounds", ["T", "0, T, 2"])
def test_an_inner_loop_appending_to_a_list_made_before_the_nest_is_refused(bounds):
    """The Function returned the last outer step's items only (T items where the plain module has L * T):
    now a located refusal (`nest._no_outer_items`)."""
    problems = _problems(OUTER_LIST.replace("BODY", INNER_APPENDS.replace("RANGE", bounds)))
    assert len(problems) == 1
    assert problems[0].startswith("12:17: cannot derive through this append yet: it appends to the list 'outs',")
    assert "make a list in the outer loop's body, and append its stack to 'outs' there" in problems[0]


@pytest.mark.parametrize("steps,layers", [(1, 1), (2, 2), (5, 3)])
def test_a_list_of_the_outer_body_appended_as_a_stack_derives(steps, layers):
    """The refusal's hint, of an inner loop over a range with a step split where its `if` turns."""
    text = OUTER_LIST.replace("BODY", STACKED_ONCE.replace("RANGE", "0, T, 2"))
    assert _problems(text) == []
    ours, plain = function_and_plain(text, "P", 3)
    x, h0 = _inputs(steps, layers)
    _agree(ours, plain, x, h0)
    assert torch.autograd.gradcheck(ours, (x, h0))
