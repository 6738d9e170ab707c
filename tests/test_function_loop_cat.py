"""`cat()` of a list a loop whose count is known only when forward runs appends to, where the list gets items
before the loop (appended, or in the list as made: `outs = [h]`) or several per step: under `@function` the steps' items are stacked and flattened into the
cat's dim (`autodiff/loops.py`, `Planner.cat_of_steps`), the items before the loop cat'ed to them. Each spec
here was refused before; each now agrees with the plain module:
outputs, first and second derivatives, gradcheck and gradgradcheck in float64, over loops of 0, 1, 2 and 5
steps, and keeps no more bytes for backward than autograd does."""

from __future__ import annotations

import pytest
import torch

from layerdsl.diagnostics import SpecError
from tests.support import compile_spec, function_and_plain, saved_bytes

STEPS = [0, 1, 2, 5]

LAYER = """\
@function
layer Cat(d: int) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], y: [B, d]) -> [...] {
        h = y
        BODY
    }
}
"""

SPECS = {
    # the first item appended before the loop, cat along the steps' dim
    "head, dim 0": """outs = []
        outs.append(h)
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h)
        }
        return cat(outs, dim = 0)""",
    # the list made with its first items (`outs = [h0]`)
    "made with its first items, dim 0": """outs = [h * 2.0, h]
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h)
        }
        return cat(outs, dim = 0)""",
    "made with its first item, stacked": """outs = [h]
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h)
        }
        return stack(outs, dim = 1)""",
    # two items before the loop, of a size along the cat's dim of their own (1, not B)
    "heads of their own size, dim 0": """outs = []
        outs.append(h[0:1] * 3.0)
        outs.append(sin(h))
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h)
        }
        return cat(outs, dim = 0)""",
    # a head along the last dim
    "head, dim 1": """outs = []
        outs.append(h * h)
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h)
        }
        return cat(outs, dim = 1)""",
    # a head of another size along the cat's dim, counted from the end
    "head, dim -1": """outs = []
        outs.append(y[:, 0:1])
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h)
        }
        return cat(outs, dim = -1)""",
    # two items each step, interleaved in the list
    "two per step, dim 0": """outs = []
        outs.append(h)
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h)
            outs.append(sigmoid(h) * x[t])
        }
        return cat(outs, dim = 0)""",
    "two per step, dim -1": """outs = []
        outs.append(y * 2.0)
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h * h)
            outs.append(h)
        }
        return cat(outs, dim = -1)""",
    # two items each step of sizes of their own along the cat's dim (3 and 1)
    "two of their own sizes per step, dim 1": """outs = []
        outs.append(h)
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h)
            outs.append(h[:, 1:2] * x[t][:, 0:1])
        }
        return cat(outs, dim = 1)""",
    # the list read after the loop by stack() and by cat() both
    "stack and cat both": """outs = []
        outs.append(h)
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h)
        }
        s = stack(outs, dim = 1)
        c = cat(outs, dim = 1)
        return c * sum(c, dim = 1, keepdim = true) + sum(s * s, dim = 1)[:, 0:1]""",
    # the cat's result split again
    "split of the cat": """outs = []
        outs.append(h)
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h)
        }
        a, b, c = chunk(cat(outs, dim = 1), 3, dim = 1)
        return sum(a, dim = 1) * sum(b * b, dim = 1) + sum(c, dim = 1)""",
}

# two items per step and none before the loop: cat() of a loop of no steps raises, as torch's does
NO_HEADS = """outs = []
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h)
            outs.append(h * x[t])
        }
        return cat(outs, dim = 1)"""


def _inputs(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(steps)
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    return x, y


def _agree(ours: torch.nn.Module, plain: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Same output, same gradients of x, y and the parameters, same second derivatives."""
    got, want = ours(x, y), plain(x, y)
    torch.testing.assert_close(got, want)
    weights = torch.linspace(-1, 2, got.numel(), dtype=got.dtype).reshape(got.shape)
    unused = {"allow_unused": True, "materialize_grads": True}  # x, in a loop of no steps
    firsts = []
    for module, out in ((ours, got), (plain, want)):
        firsts.append(
            torch.autograd.grad((out * weights).sum(), [x, y, *module.parameters()], create_graph=True, **unused)
        )
    for g, p in zip(*firsts, strict=True):
        torch.testing.assert_close(g, p)
    seconds = []
    for module, grads in zip((ours, plain), firsts, strict=True):
        second = sum((g * g.detach().cos()).sum() for g in grads)
        seconds.append(torch.autograd.grad(second, [x, y, *module.parameters()], **unused))
    for g, p in zip(*seconds, strict=True):
        torch.testing.assert_close(g, p)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_cat_of_a_list_with_heads_or_several_items_per_step_derives(name, steps):
    ours, plain = function_and_plain(LAYER.replace("BODY", SPECS[name]), "Cat", 3)
    x, y = _inputs(steps)
    _agree(ours, plain, x, y)
    assert torch.autograd.gradcheck(ours, (x, y))
    assert torch.autograd.gradgradcheck(ours, (x, y))


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_cat_of_two_items_per_step_derives(steps):
    ours, plain = function_and_plain(LAYER.replace("BODY", NO_HEADS), "Cat", 3)
    x, y = _inputs(steps)
    _agree(ours, plain, x, y)
    assert torch.autograd.gradcheck(ours, (x, y))
    assert torch.autograd.gradgradcheck(ours, (x, y))


def test_cat_of_two_items_per_step_raises_after_no_steps_as_torch_does():
    ours, plain = function_and_plain(LAYER.replace("BODY", NO_HEADS), "Cat", 3)
    x, y = _inputs(0)
    for module in (ours, plain):
        with pytest.raises((RuntimeError, ValueError), match="non-empty"):  # torch.cat's is a ValueError
            module(x, y)


# one item per step, none before: derived before, but its Function kept the last `h` for the zeros its
# gradient starts from (now its shape only, codegen/loop_backward.py)
STACKED = """outs = []
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h)
        }
        return stack(outs, dim = 0)"""


@pytest.mark.parametrize("name", ["head, dim 0", "two per step, dim -1", "stack and cat both", "stacked"])
def test_cat_of_a_list_with_heads_keeps_no_more_than_autograd(name):
    body = STACKED if name == "stacked" else SPECS[name]
    ours, plain = function_and_plain(LAYER.replace("BODY", body), "Cat", 3)
    x, y = _inputs(5)
    assert saved_bytes(lambda: ours(x, y), ours) <= saved_bytes(lambda: plain(x, y), plain)


def test_cat_of_items_whose_size_depends_on_the_step_is_refused_where_it_is():
    """A carried value growing each step: the steps' items cannot be stacked."""
    body = """outs = []
        g = y
        outs.append(g)
        for t in range(size_at(x, 0)) {
            g = cat([g, x[t]], dim = 0)
            outs.append(g)
        }
        return cat(outs, dim = 0)"""
    with pytest.raises(SpecError) as error:
        compile_spec(LAYER.replace("BODY", body), "cat_uneven")
    text = str(error.value)  # where the carried value grows (autodiff/loops._check_carried_shapes)
    assert "cat_uneven.layer:11:17: error: a derived backward keeps the steps of a value a loop carries" in text
    assert "'g' changes shape at every step ([B, d] -> [2 * B, d], ...; not derived yet)" in text
    assert "hint: give it the same shape at every step, or drop @function" in text


# a loop holding a loop (a `Nest`), its list cat'ed: each outer step's part of the gradient was read as one
# row of it (unbind), not the step's item (codegen/function_nest.py)
NESTED = """outs = []
        for t in range(size_at(x, 0)) {
            for s in range(size_at(x, 0)) {
                h = tanh(h @ w + x[s])
            }
            outs.append(h)
        }
        return cat(outs, dim = 0)"""


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_cat_of_a_list_a_loop_holding_a_loop_appends_to_derives(steps):
    ours, plain = function_and_plain(LAYER.replace("BODY", NESTED), "Cat", 3)
    x, y = _inputs(steps)
    _agree(ours, plain, x, y)
    assert torch.autograd.gradcheck(ours, (x, y))


# chunk() of a cat whose size the checker cannot tell (steps × d): at an odd size torch.chunk cuts
# ceil(size / 2) and the rest, and the @function layer's slices cut the same (they cut size // 2 first)
HALVES = """outs = []
        for t in range(size_at(x, 0)) {
            h = tanh(h @ w + x[t])
            outs.append(h)
        }
        a, b = chunk(cat(outs, dim = 1), 2, dim = 1)
        return a * 2.0 + sum(b, dim = 1, keepdim = true)"""


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_chunk_of_a_cat_of_a_size_known_when_forward_runs_cuts_as_torch_does(steps):
    ours, plain = function_and_plain(LAYER.replace("BODY", HALVES), "Cat", 3)
    x, y = _inputs(steps)
    _agree(ours, plain, x, y)
    assert torch.autograd.gradcheck(ours, (x, y))
