"""An `if` in the body of a loop whose count is known only when forward runs, whose side may change from step to
step on ints only (`t % 2 == 1`, `t > n` of an int the loop carries, `t == 0` in a loop over a range with a
step, more bounds than a split makes loops): under `@function` a choice per step (`autodiff/step_choices.py`),
forward and backward evaluating the condition at every step. Each spec was refused before ("cannot derive
through this `if` yet"); each now agrees with the plain module (outputs, first and second derivatives of the
inputs and parameters), passes gradcheck and gradgradcheck in float64 over 0, 1, 2, 3 and 5 steps, under
`save = "inputs"` too, and keeps no more bytes for backward than autograd."""

from __future__ import annotations

import functools
from collections import Counter

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from tests.support import compile_spec, saved_bytes

STEPS = [0, 1, 2, 3, 5]

LAYER = """\
DECORATOR
layer Steps(d: int, k: int = 1) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], y: [B, d]) -> [B, d] {
        h = y
        n = 0
        BODY
    }
}
"""

SPECS = {
    # the issue's: one side empty, the statements after it on both sides
    "t % 2 == 1": """for t in range(T) {
            if t % 2 == 1 {
                h = h * 2.0
            }
            h = tanh(h @ w + x[t])
        }
        return h""",
    # both sides bind the carried value
    "t % 2 == 0 else": """for t in range(T) {
            if t % 2 == 0 {
                h = tanh(h @ w + x[t])
            } else {
                h = sin(h) * x[t]
            }
        }
        return h""",
    # a side's own values read by its backward (kept only for the steps that ran it), before and after
    "t % 3 != 1 rows": """for t in range(T) {
            g = h * x[t]
            if t % 3 != 1 {
                a = tanh(g @ w)
                h = a * sigmoid(a) + g
            } else {
                h = exp(g * 0.5)
            }
        }
        return h""",
    # an int the loop carries
    "t > n carried": """for t in range(T) {
            n = (n + 1) % 3
            if t > n {
                h = tanh(h @ w + x[t])
            }
        }
        return h""",
    "n == 0 carried else": """for t in range(T) {
            n = (n + 2) % 3
            if n == 0 {
                h = tanh(h @ w + x[t])
            } else {
                h = h * x[t]
            }
        }
        return h + n""",
    # a range with a step (the loop is not split there)
    "range step": """for t in range(0, T, 2) {
            if t == 0 {
                h = tanh(y @ w + x[t])
            } else {
                h = tanh(h @ w + x[t]) + h
            }
        }
        return h""",
    # the start read by step 0's side through an add only (autograd keeps no `y` for it: not read as itself)
    "range step, y added": """for t in range(0, T, 2) {
            if t == 0 {
                h = tanh(x[t] + y)
            } else {
                h = tanh(h @ w + x[t]) + h
            }
        }
        return h""",
    # a list each step appends to, stacked after the loop
    "appends": """hs = []
        for t in range(T) {
            if t % 2 == 1 {
                h = tanh(h @ w + x[t])
            }
            hs.append(h * y)
        }
        return sum(stack(hs, dim = 0), dim = 0) + h""",
    # x's rows in reverse (`x[T - 1 - t]`), picked at every step
    "reversed": """for t in range(T) {
            r = x[T - 1 - t]
            if t % 2 == 1 {
                h = tanh(h @ w + r)
            } else {
                h = h * r
            }
        }
        return h""",
    # more bounds than a split makes loops (more than 8 pieces)
    "many bounds": """for t in range(T) {
            if t == 1 or t == 3 or t == 5 or t == 7 or t == k {
                h = h @ w
            } else {
                h = tanh(h + x[t])
            }
        }
        return h""",
}

DECORATORS = {"saved": "@function", "inputs": '@function(save = "inputs")'}


@functools.cache
def _namespaces(name: str, save: str) -> tuple[dict, dict]:
    """The module generated from spec `name` under `@function` (as `save` says), and without it."""
    text = LAYER.replace("BODY", SPECS[name])
    stem = "".join(c if c.isalnum() else "_" for c in name)
    ours = compile_spec(text.replace("DECORATOR", DECORATORS[save]), f"step_choice_{stem}_{save}")
    return ours, compile_spec(text.replace("DECORATOR\n", ""), f"step_choice_{stem}_plain")


def _pair(name: str, save: str = "saved") -> tuple[torch.nn.Module, torch.nn.Module]:
    modules = []
    for namespace in _namespaces(name, save):
        torch.manual_seed(0)
        modules.append(namespace["Steps"](3, 2).double())
    modules[1].load_state_dict(modules[0].state_dict())
    return modules[0], modules[1]


def _inputs(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(steps)
    x = (0.5 * torch.randn(steps, 2, 3, dtype=torch.float64)).requires_grad_()
    y = (0.5 * torch.randn(2, 3, dtype=torch.float64)).requires_grad_()
    return x, y


def _agree(ours: torch.nn.Module, plain: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Same output, same gradients of x, y and the parameters, same second derivatives."""
    unused = {"allow_unused": True, "materialize_grads": True}  # x, in a loop of no steps
    got, want = ours(x, y), plain(x, y)
    torch.testing.assert_close(got, want)
    weights = torch.linspace(-1, 2, got.numel(), dtype=got.dtype).reshape(got.shape)
    grads = []
    for module, value in ((ours, got), (plain, want)):
        wrt = [x, y, *module.parameters()]
        grads.append(torch.autograd.grad((value * weights).sum(), wrt, create_graph=True, **unused))
    for g, p in zip(*grads, strict=True):
        torch.testing.assert_close(g, p)
    seconds = []
    for module, first in zip((ours, plain), grads):
        square = sum((g * g).sum() for g in first)
        seconds.append(torch.autograd.grad(square, [x, y, *module.parameters()], **unused))
    for g, p in zip(*seconds, strict=True):
        torch.testing.assert_close(g, p)


@pytest.mark.parametrize("save", sorted(DECORATORS))
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_choice_per_step_derives(name, steps, save):
    ours, plain = _pair(name, save)
    x, y = _inputs(steps)
    if name == "appends" and steps == 0:  # stack() of no items: torch refuses it, under autograd too
        for module in (ours, plain):
            with pytest.raises(RuntimeError, match="non-empty"):
                module(x, y)
        return
    _agree(ours, plain, x, y)
    assert torch.autograd.gradcheck(ours, (x, y))
    assert torch.autograd.gradgradcheck(ours, (x, y))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_parameters_pass_gradcheck(name):
    ours, _ = _pair(name)
    x, y = _inputs(5)
    names = [n for n, _ in ours.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in ours.parameters()]

    def run(x, y, *tensors):
        return torch.func.functional_call(ours, dict(zip(names, tensors)), (x, y))

    assert torch.autograd.gradcheck(run, (x, y, *params))
    assert torch.autograd.gradgradcheck(run, (x, y, *params))


def test_the_condition_is_evaluated_at_every_step():
    """Forward tests the condition in its loop, and backward again in its loop over the steps in reverse."""
    source = _namespaces("t % 2 == 1", "saved")[0]["SOURCE"]
    forward = source[source.index("def forward(x") : source.index("def setup_context")]
    backward = source[source.index("def backward(ctx") : source.index("def apply")]
    assert "if t % 2 == 1:" in forward
    assert "for t in reversed(range(" in backward and "if t % 2 == 1:" in backward


@pytest.mark.parametrize("steps", (6, 7))
@pytest.mark.parametrize("name", sorted(SPECS))
def test_backward_keeps_no_more_than_autograd(name, steps):
    """A side's values are kept for the steps that ran it only; a value either side leaves in the carried one
    is kept once per step (and read back as the carried value's)."""
    ours, plain = _pair(name)
    x, y = _inputs(steps)
    assert saved_bytes(lambda: ours(x, y), ours) <= saved_bytes(lambda: plain(x, y), plain)


APPENDS_AFTER = """\
DECORATOR
layer Steps(d: int) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 3)
    forward(x: [T, B, d], y: [B, d]) -> [B, d] {
        h = y
        hs_appended = y * 2.0
        hs = []
        for t in range(T) {
            if t % 2 == 1 {
                h = tanh(h @ w + x[t])
            }
            hs.append(h * y)
            g = h * 3.0
            hs.append(g)
        }
        return sum(stack(hs, dim = 0), dim = 0) + h + hs_appended
    }
}
"""


@functools.cache
def _appends_after() -> tuple[dict, dict]:
    return compile_spec(APPENDS_AFTER.replace("DECORATOR", "@function"), "step_choice_appends_after_f"), compile_spec(
        APPENDS_AFTER.replace("DECORATOR\n", ""), "step_choice_appends_after_p"
    )


@pytest.mark.parametrize("steps", [1, 2, 6, 7])
def test_appends_after_the_if_are_items_bound_on_each_side(steps):
    """`hs.append(h * y)` after the `if`: its item bound on each side to a local of its own (not the
    `hs_appended` the spec binds before the loop), appended after the `if` (`step_choices.tail_joined`), so
    the carried value is kept lazily (`codegen/step_rows.py`); `hs.append(g)` of a name appended as it is."""
    modules = []
    for namespace in _appends_after():
        torch.manual_seed(0)
        modules.append(namespace["Steps"](3).double())
    ours, plain = modules
    plain.load_state_dict(ours.state_dict())
    x, y = _inputs(steps)
    _agree(ours, plain, x, y)
    assert torch.autograd.gradcheck(ours, (x, y))
    assert torch.autograd.gradgradcheck(ours, (x, y))
    assert saved_bytes(lambda: ours(x, y), ours) <= saved_bytes(lambda: plain(x, y), plain)


FLAGS = """\
@function
layer ManyFlags(d: int, steps: int, a: bool = false, b: bool = false, c: bool = false, e: bool = false, f: bool = false, g: bool = false) {
    param w: [d, d] = uniform(-1, 1)
    example(d = 3, steps = 2)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for t in range(steps) {
            if a {
                h = tanh(h)
            }
            if b {
                h = sin(h)
            }
            if c {
                h = tanh(h) * 2.0
            }
            if e {
                h = h * x
            }
            if f {
                h = exp(h * 0.1)
            }
            if g {
                h = h @ w
            }
        }
        return h
    }
}
"""


@functools.cache
def _flags() -> tuple[dict, dict]:
    return compile_spec(FLAGS, "step_choice_flags_f"), compile_spec(
        FLAGS.replace("@function\n", ""), "step_choice_flags_p"
    )


@pytest.mark.parametrize("flags", [(True, False, True, False, True, True), (False, True, False, True, False, True)])
@pytest.mark.parametrize("steps", STEPS)
def test_ifs_on_arguments_past_the_copies_are_a_choice_per_step(steps, flags):
    """Six `if`s on arguments in a loop's body (64 copies of the loop, past 32, refused before): each a choice
    evaluated at every step, the same side at each."""
    modules = []
    for namespace in _flags():
        torch.manual_seed(0)
        modules.append(namespace["ManyFlags"](3, steps, *flags).double())
    ours, plain = modules
    plain.load_state_dict(ours.state_dict())
    torch.manual_seed(steps)
    x = (0.5 * torch.randn(2, 3, dtype=torch.float64)).requires_grad_()
    got, want = ours(x), plain(x)
    torch.testing.assert_close(got, want)
    seed = torch.randn_like(want)
    for g, p in zip(
        torch.autograd.grad(got, [x, *ours.parameters()], seed, allow_unused=True, materialize_grads=True),
        torch.autograd.grad(want, [x, *plain.parameters()], seed, allow_unused=True, materialize_grads=True),
        strict=True,
    ):
        torch.testing.assert_close(g, p)
    assert torch.autograd.gradcheck(ours, (x,))
    assert torch.autograd.gradgradcheck(ours, (x,))


class _BackwardWork(TorchDispatchMode):
    """The ATen ops run under it: how many of each, and the elements of every tensor they give."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls[func.overloadpacket.__name__] += 1
        self.elements += sum(t.numel() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def _backward_work(module: torch.nn.Module, steps: int) -> _BackwardWork:
    x, y = _inputs(steps)
    out = module(x, y)
    with _BackwardWork() as work:
        torch.autograd.grad(out.sum(), [x, y, *module.parameters()])
    return work


@pytest.mark.parametrize("save", sorted(DECORATORS))
@pytest.mark.parametrize("name", sorted(SPECS))
def test_x_t_is_picked_as_in_a_plain_loop(name, save):
    """`x[t]` in a loop of choices per step is picked as a plain loop picks it (`codegen/step_picks.py`): each
    step's gradient of it is one row of x's, written into one gradient after the loop; no `select_backward` of
    x's whole shape added at every step (O(T²) elements). The elements the backward's ATen ops give grow
    linearly with the steps: 16 steps more add about twice what 8 more add (four times, quadratic; autograd's
    own backward of the plain loop adds `select_backward`'s whole shape at every step)."""
    ours, _ = _pair(name, save)
    work = {steps: _backward_work(ours, steps) for steps in (8, 16, 32)}
    assert work[32].calls["select_backward"] == 0
    assert work[32].elements - work[16].elements < 3 * (work[16].elements - work[8].elements)
