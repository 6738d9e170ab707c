"""Lists a loop of a run-time count appends to, in forms a derived backward refused before (issue 15):

- each step appending `x[t:t + 1]` (a slice of the loop's count's dim, of size 1 at every step) to a list
  with items before the loop, joined by `cat` (`autodiff/loop_lists.unit_slices`: `unsqueeze(x[t], 0)`);
- a loop split where `if t == 0` turns whose pieces append several items a step to one list
  (`loops.Loop.before_per`: each earlier loop's items a step, counted in backward's cut);
- an item of the list read after the loop (`outs[-1]`, `outs[0]`: `loop_lists.item_read`, an item of
  `stack(outs, dim = 0)`).

Each spec agrees with the plain module (outputs, first and second derivatives) and passes gradcheck and
gradgradcheck in float64 over loops of 0, 1, 2 and 5 steps (0 where the plain module does not raise), also
under `@function(save = "inputs")`, and keeps no more bytes for backward than autograd does."""

from __future__ import annotations

import functools

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file
from tests.support import compile_spec, saved_bytes

STEPS = [0, 1, 2, 5]

LAYER = """\
@function
layer Steps(d: int) {
    param w: [d, d] = uniform(-1, 1)
    param u: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [...] {
        h = h0
        BODY
    }
}
"""

UNEVEN_CAT = """outs = []
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            if t == 0 {
                outs.append(h)
            } else {
                outs.append(h)
                outs.append(h[:, 0:1])
            }
        }
        return cat(outs, dim = 1)"""

SPECS = {
    # issue 15's form: a head, then `x[t:t + 1]` each step, cat along the steps' dim
    "unit slice, head, cat 0": """outs = [unsqueeze(h0, 0)]
        for t in range(T) {
            outs.append(x[t:t + 1])
        }
        return cat(outs, dim = 0)""",
    # the slice read by the step's computation, an int index after it, a carried value
    "unit slice in a product": """outs = [h0 * 2.0, h0[0:1]]
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(x[t:t + 1, 0] * 3.0 + tanh(h[0:1]))
        }
        return cat(outs, dim = 0)""",
    # a slice at dim 1 of an input whose dim 1 is the count
    "unit slice at dim 1": """outs = [unsqueeze(h0, 1)]
        xs = transpose(x, 0, 1)
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(sin(xs[:, t:t + 1]) + unsqueeze(h, 1))
        }
        return cat(outs, dim = 1)""",
    # pieces of a split loop appending one item a step, then two
    "split, two a step after the first": """outs = []
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            if t == 0 {
                outs.append(h)
            } else {
                outs.append(h)
                outs.append(h * 3.0)
            }
        }
        return stack(outs, dim = 0)""",
    # two a step, then one, with a head, stacked at the last dim
    "split, two then one, head": """outs = [h0]
        for t in range(T) {
            if t < 2 {
                h = tanh(x[t] @ w + h @ u)
                outs.append(sin(h))
                outs.append(h)
            } else {
                h = tanh(x[t] @ w)
                outs.append(h * h)
            }
        }
        return stack(outs, dim = -1)""",
    # both pieces two a step, with a head, joined by cat (a stack of each step's i-th item, over the pieces)
    "split, two a step each, cat": """outs = [h0]
        for t in range(T) {
            if t == 0 {
                h = tanh(x[t] @ w)
            } else {
                h = tanh(x[t] @ w + h @ u)
            }
            outs.append(h)
            outs.append(sin(h) * 2.0)
        }
        return cat(outs, dim = 1)""",
    # loops written in a row, several a step, a stack of the first read between them
    "two loops in a row, several a step": """outs = []
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h)
            outs.append(h * h)
        }
        first = stack(outs, dim = 0)
        for s in range(1, T) {
            h = sin(h @ u) * x[s]
            outs.append(h * 2.0)
        }
        return cat([first, stack(outs, dim = 0)], dim = 0)""",
    # a loop holding a loop, then a loop, appending to one list
    "nest, then a loop": """outs = []
        for l in range(T) {
            for t in range(T) {
                h = tanh(x[t] @ w + h @ u)
            }
            outs.append(h)
        }
        for s in range(T) {
            h = sin(h @ u)
            outs.append(h * 2.0)
        }
        return stack(outs, dim = 0)""",
    # a loop, then a loop holding a loop appending two items a step, a head first
    "a loop, then a nest": """outs = [h0]
        for s in range(T) {
            h = sin(h @ u)
            outs.append(h)
        }
        for l in range(T) {
            g = h * 0.5
            for t in range(T) {
                g = tanh(x[t] @ w + g @ u)
            }
            outs.append(g)
            outs.append(g * h)
            h = g
        }
        return stack(outs, dim = 1)""",
    # pieces appending one item a step, then two, joined by cat: items of one shape, a flattened stack
    "split, unlike counts, cat": """outs = []
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            if t == 0 {
                outs.append(h)
            } else {
                outs.append(h)
                outs.append(h * 3.0)
            }
        }
        return cat(outs, dim = 0)""",
    # a loop holding a loop, then a loop, joined by cat (a flattened stack)
    "nest, then a loop, cat": """outs = [h0]
        for l in range(T) {
            for t in range(T) {
                h = tanh(x[t] @ w + h @ u)
            }
            outs.append(h)
        }
        for s in range(T) {
            h = sin(h @ u)
            outs.append(h * 2.0)
            outs.append(h)
        }
        return cat(outs, dim = -1)""",
    # items of a list a loop holding a loop appends to
    "items of a nest's list": """outs = []
        for l in range(T) {
            for t in range(T) {
                h = tanh(x[t] @ w + h @ u)
            }
            outs.append(h * 2.0)
        }
        return outs[-1] + outs[0]""",
    # a loop, then a loop whose `if` picks a side per step (`step_choices`: a nest of no inner loop)
    "a loop, then a choice per step": """outs = [h0]
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h)
        }
        for s in range(T) {
            if s % 2 == 1 {
                h = sin(h @ u)
            } else {
                h = h * 0.5
            }
            outs.append(h)
        }
        return stack(outs, dim = 0)""",
    "a choice per step, then a loop": """outs = []
        for s in range(T) {
            if s % 2 == 1 {
                h = sin(h @ u)
            } else {
                h = h * 0.5
            }
            outs.append(h)
        }
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h)
        }
        return cat(outs, dim = 1)""",
    # the last item after the loop
    "last item": """outs = []
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h * 2.0)
        }
        return outs[-1]""",
    # the last item, which backward reads (a view of what the loop keeps per step)
    "last item, read by backward": """outs = []
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h)
        }
        return sin(outs[-1]) * outs[0]""",
    # the first (a head) and the last, and a stack besides
    "first and last items": """outs = [h0]
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h)
        }
        return outs[0] * outs[-1] + sum(stack(outs, dim = 0), dim = 0)""",
    # the last item, which backward reads, of a list with a head: a value the loop keeps not per step
    "last item not kept per step, head": """outs = [h0]
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h * 2.0)
        }
        return outs[-1] * h0 + sum(stack(outs, dim = 0), dim = 0)""",
    # an item after the head, counted from the front, which backward reads
    "second item read by backward": """outs = [h0]
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h)
        }
        return outs[1] * outs[0] + sin(outs[-1])""",
    # the last item of loops in a row appending to one list (the later one's last step's, or the earlier's)
    "last item of loops in a row": """outs = [h0]
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h)
        }
        for s in range(1, T) {
            h = sin(h @ u) * x[s]
            outs.append(h)
        }
        return h0 * outs[-1] + sum(stack(outs, dim = 0), dim = 0)""",
    # several items a step: the last is the step's second
    "last item, two a step": """outs = [h0]
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(sin(h))
            outs.append(h)
        }
        return h0 * outs[-1] + outs[-2]""",
    # pieces of a split loop appending one item a step, then two of unlike shapes, joined by cat: each piece's
    # items cut out of the list by its own count (`loops.Planner.cat_by_loops`)
    "split, unlike counts and shapes, cat": UNEVEN_CAT,
    # the same with a head, at the last dim
    "split, unlike counts and shapes, head, cat -1": """outs = [h0[:, 0:2]]
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            if t < 2 {
                outs.append(h[:, 1:3] * 2.0)
                outs.append(h)
            } else {
                outs.append(h[:, 0:1] * 3.0)
            }
        }
        return cat(outs, dim = -1)""",
    # loops written in a row, unlike counts of items of unlike shapes, at dim 0 of the items
    "two loops in a row, unlike counts, cat 0": """outs = [h0]
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h)
        }
        for s in range(1, T) {
            h = sin(h @ u) * x[s]
            outs.append(h[0:1])
            outs.append(h * 2.0)
            outs.append(h[1:2] * h[0:1])
        }
        return cat(outs, dim = 0)""",
    # the last item at an index computed from the loop's count (`loop_lists.last_by_count`: `outs[-1]`)
    "last item by the count": """outs = []
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h)
        }
        return sin(outs[T - 1]) * h0""",
    "last item by the count, head": """outs = [h0 * 2.0]
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h * 3.0)
        }
        return outs[T] * outs[0]""",
    # the pieces of a split loop: their count is the spec's loop's
    "last item by the count, split loop": """outs = [h0]
        for t in range(T) {
            if t == 0 {
                h = tanh(x[t] @ w)
            } else {
                h = tanh(x[t] @ w + h @ u)
            }
            outs.append(h)
        }
        return outs[T] * outs[-1]""",
    # an item of a list of a split loop, counted from the front
    "item of a split loop's list": """outs = [h0]
        for t in range(T) {
            if t == 0 {
                h = tanh(x[t] @ w)
            } else {
                h = tanh(x[t] @ w + h @ u)
            }
            outs.append(h)
        }
        return outs[1] + outs[-1]""",
}


@functools.cache
def _namespaces(name: str, decorator: str = "@function") -> tuple[dict, dict]:
    """The module generated from spec `name` with `decorator`, and without it."""
    text = LAYER.replace("BODY", SPECS[name])
    stem = "".join(c if c.isalnum() else "_" for c in name)
    ours = text.replace("@function", decorator)
    tag = "i" if "inputs" in decorator else "f"
    return compile_spec(ours, f"lists2_{stem}_{tag}"), compile_spec(text.replace("@function\n", ""), f"lists2_{stem}_p")


def _pair(name: str, decorator: str = "@function") -> tuple[torch.nn.Module, torch.nn.Module]:
    modules = []
    for namespace in _namespaces(name, decorator):
        torch.manual_seed(0)
        modules.append(namespace["Steps"](3).double())
    modules[1].load_state_dict(modules[0].state_dict())
    return modules[0], modules[1]


def _inputs(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(steps)
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
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
            return  # first derivatives constant in every input (a list of slices of x)
        seconds.append(torch.autograd.grad(square, [x, h0, *module.parameters()], **unused))
    for g, p in zip(*seconds, strict=True):
        torch.testing.assert_close(g, p)


def _raises_alike(ours: torch.nn.Module, plain: torch.nn.Module, x: torch.Tensor, h0: torch.Tensor) -> bool:
    """Whether the plain module raises on these inputs (a stack of no items, an item of an empty list);
    then ours raises too."""
    try:
        plain(x, h0)
    except (RuntimeError, ValueError, IndexError):
        with pytest.raises((RuntimeError, ValueError, IndexError)):
            ours(x, h0)
        return True
    return False


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("decorator", ["@function", '@function(save = "inputs")'])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_list_derives(name, steps, decorator):
    ours, plain = _pair(name, decorator)
    x, h0 = _inputs(steps)
    if _raises_alike(ours, plain, x, h0):
        assert steps == 0
        return
    _agree(ours, plain, x, h0)
    assert torch.autograd.gradcheck(ours, (x, h0))
    assert torch.autograd.gradgradcheck(ours, (x, h0))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_backward_keeps_no_more_than_autograd(name):
    ours, plain = _pair(name)
    x, h0 = _inputs(6)
    assert saved_bytes(lambda: ours(x, h0), ours) <= saved_bytes(lambda: plain(x, h0), plain)


# a loop of choices per step beside a plain loop: the carried value kept on the steps whose side reads it only
# (`codegen/step_rows.Lazy.own`), as autograd keeps it
@pytest.mark.parametrize("steps", [1, 2, 5, 6])
@pytest.mark.parametrize("name", ["a loop, then a choice per step", "a choice per step, then a loop"])
def test_a_choice_per_step_beside_a_loop_keeps_no_more_than_autograd(name, steps):
    ours, plain = _pair(name)
    x, h0 = _inputs(steps)
    assert saved_bytes(lambda: ours(x, h0), ours) <= saved_bytes(lambda: plain(x, h0), plain)


def _problems(body: str) -> list:
    spec = parse_file("refused.layer", LAYER.replace("BODY", body))
    check_program([spec])
    return plan_backwards([spec])[1]


def test_a_slice_that_may_be_empty_is_still_refused_saying_why():
    """`h[t:t + 1]` of a dim that is not the loop's count may be empty at a step: not of one size."""
    problems = _problems("""outs = [h0]
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h[t:t + 1])
        }
        return cat(outs, dim = 0)""")
    assert [(p.span.line, p.span.col) for p in problems] == [(13, 16)]
    assert "cannot derive through this cat() yet" in problems[0].message
    assert "known only when forward runs" in problems[0].message


def test_an_item_of_items_of_several_shapes_is_refused_saying_why():
    problems = _problems("""outs = [x]
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h)
        }
        return outs[-1]""")
    assert [(p.span.line, p.span.col) for p in problems] == [(13, 16)]
    assert "as an item of the stack of 'outs'" in problems[0].message
    assert "[B, d]" in problems[0].message and "[T, B, d]" in problems[0].message


def test_an_item_at_a_computed_index_is_refused_saying_why():
    """`outs[T - 1]` (its last item) derives; `outs[T - 2]` is the last where the list holds one item only."""
    problems = _problems("""outs = []
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h)
        }
        return outs[T - 2]""")
    assert [(p.span.line, p.span.col) for p in problems] == [(13, 16)]
    assert (
        "reads 'outs[T - 2]'" in problems[0].message and "as its last item only (`outs[T - 1]`)" in problems[0].message
    )
    assert "outs[-2]" in (problems[0].hint or "")


def test_an_item_of_a_loop_from_one_at_a_computed_index_is_refused_saying_why():
    """`range(1, T)` appends T - 1 items: `outs[T - 1]` is out of range, not counted."""
    problems = _problems("""outs = []
        for t in range(1, T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h)
        }
        return outs[T - 1]""")
    assert [(p.span.line, p.span.col) for p in problems] == [(13, 16)]
    assert "at an int written in the spec only" in problems[0].message


def test_a_cat_over_a_nest_and_a_loop_appending_unlike_counts_is_refused_saying_why():
    """Loops in a row appending unlike counts a step derive (`loops.Planner.cat_by_loops`), but not where one
    of them holds a loop."""
    problems = _problems("""outs = []
        for l in range(T) {
            for t in range(T) {
                h = tanh(x[t] @ w + h @ u)
            }
            outs.append(h)
        }
        for s in range(T) {
            h = sin(h @ u)
            outs.append(h)
            outs.append(h[:, 0:1])
        }
        return cat(outs, dim = 1)""")
    assert [(p.span.line, p.span.col) for p in problems] == [(20, 16)]
    assert "cannot derive through this cat() yet" in problems[0].message
    assert "append 1 and 2 items a step" in problems[0].message


def test_a_cat_over_pieces_appending_unlike_counts_derives():
    """It was refused before ("append 1 and 2 items a step"); `test_the_list_derives` compares it with the
    plain module."""
    assert not _problems(UNEVEN_CAT)


def test_an_item_of_an_earlier_loops_list_in_a_later_loop_is_refused_saying_why():
    """It raised IndexError inside the planner before (a traceback, not a located error)."""
    problems = _problems("""outs = []
        for t in range(T) {
            h = tanh(x[t] @ w + h @ u)
            outs.append(h)
        }
        for s in range(T) {
            h = h * outs[-1]
        }
        return h""")
    assert [(p.span.line, p.span.col) for p in problems] == [(14, 21)]
    assert "reads an item of the list 'outs' at an int in the body of a later loop" in problems[0].message
    assert "last = outs[-1]" in (problems[0].hint or "")


# where the loop before runs no steps, its end (`h`, h0's view) was saved for the double backward's zeros of the
# later loop's carried gradient (`torch.zeros_like(h)`; 48 bytes to autograd's 0): made of its shape now
# (function_nest._last_zeros)
def test_a_loop_then_a_choice_per_step_of_no_steps_keeps_no_more_than_autograd():
    ours, plain = _pair("a loop, then a choice per step")
    x, h0 = _inputs(0)
    assert saved_bytes(lambda: ours(x, h0), ours) <= saved_bytes(lambda: plain(x, h0), plain)
