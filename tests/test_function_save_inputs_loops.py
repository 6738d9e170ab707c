"""`@function(save = "inputs")` of a forward with a run-time loop: setup_context saves only the inputs and
parameters, and backward runs the forward again (keeping per step what the loop's backward reads) before
the loop's backward, in torch operations, so double backward goes through it. Each spec against the default
`@function` and the plain module (float64: outputs, gradients, gradcheck and gradgradcheck), and the bytes
autograd keeps: the input's, nothing per step."""

from __future__ import annotations

import pytest
import torch

from .function_agreement import compare_with_plain
from .support import compile_spec, saved_bytes
from .test_function_nested_loops import SAME_SHAPE_LAYERS
from .test_user_trial_round16 import SCAN_INPUTS

# tests/test_user_trial_round16.py's SCAN_INPUTS, its parameter drawn (not zeros) so that the decay varies
SCAN = SCAN_INPUTS.replace("ScanInputs", "Scan").replace("param a: [d] = zeros", "param a: [d] = uniform(-1.0, 1.0)")

# backward reads the output (tanh's) and a view of a parameter: both computed again
SCAN_TANH = """\
@function(save = "inputs")
layer ScanTanh(d: int) {
    param a: [d] = uniform(-1.0, 1.0)
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 3)

    forward(x: [B, T, d]) -> [B, T, d] {
        decay = sigmoid(a)
        h = new_zeros(x, [B, d])
        ys = []
        for t in range(T) {
            h = decay * h + x[:, t] @ transpose(w, 0, 1)
            ys.append(h)
        }
        return tanh(stack(ys, dim = 1))
    }
}
"""

# a carried state and an `if` on an argument: each side a Function with the loop (`emit_branching_loop_function`)
GATED = """\
@function(save = "inputs")
layer Gated(d: int, gated: bool = true) {
    param w: [d, d] = uniform(-0.5, 0.5)
    param b: [d] = uniform(-0.5, 0.5)
    example(d = 3)

    forward(x: [B, T, d]) -> [B, d] {
        h = new_zeros(x, [B, d])
        for t in range(T) {
            if gated {
                h = sigmoid(x[:, t] @ w + b) * tanh(h + x[:, t])
            } else {
                h = tanh(h @ w + x[:, t])
            }
        }
        return h * h
    }
}
"""

# layers of one shape, their count an argument: a `Nest` of the loop over time (`codegen.function_nest`)
NEST = SAME_SHAPE_LAYERS.replace("@function", '@function(save = "inputs")').replace("SameShapeLayers", "Layers")

# more `if`s on arguments than there are branch plans (64 combinations): each `if` a segment of its own
# (`Choice`), the Function written as a loop one's with no loop
CHOICES = """\
@function(save = "inputs")
layer Choices(d: int, a: bool = true, b: bool = false, c: bool = true, e: bool = false, f: bool = true,
              g: bool = false) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 3)

    forward(x: [B, T, d]) -> [B, d] {
        u = x
        if a {
            u = tanh(u)
        }
        if b {
            u = u * u
        }
        if c {
            u = sigmoid(u) * x
        }
        h = tanh(u[:, -1] + u[:, 0] @ w)
        if e {
            h = h * h
        }
        if f {
            h = exp(h)
        }
        if g {
            h = sin(h)
        }
        return h
    }
}
"""

SPECS = {
    "Scan": (SCAN, (3,)),
    "ScanTanh": (SCAN_TANH, (3,)),
    "Gated": (GATED, (3,)),
    "Layers": (NEST, (3, 2)),
    "Choices": (CHOICES, (3,)),
}
CONFIGS = {"Gated": [{"gated": True}, {"gated": False}], "Choices": [{}, {"a": False, "b": True, "g": True}]}


def _input(name: str) -> torch.Tensor:
    shape = (5, 2, 3) if name == "Layers" else (2, 5, 3)  # [T, B, d] or [B, T, d]
    return torch.empty(shape, dtype=torch.float64).uniform_(-1, 1).requires_grad_()


def _modules(name: str, config: dict) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """The layer under `save = "inputs"`, under the default `@function`, and plain: one state."""
    text, args = SPECS[name]
    stem = name.lower()
    variants = [
        text,
        text.replace('@function(save = "inputs")', "@function"),
        text.replace('@function(save = "inputs")\n', ""),
    ]
    modules = []
    for k, spec in enumerate(variants):
        torch.manual_seed(0)
        modules.append(compile_spec(spec, f"{stem}_{k}")[name](*args, **config).double())
    for m in modules[1:]:
        m.load_state_dict(modules[0].state_dict())
    return modules[0], modules[1], modules[2]


CASES = [(name, config) for name in SPECS for config in CONFIGS.get(name, [{}])]


@pytest.mark.parametrize("name,config", CASES)
def test_only_the_inputs_are_saved_and_the_gradients_agree(name, config):
    inputs, default, plain = _modules(name, config)
    x = _input(name)
    # the parameters counted too (those the configuration reads): a family's members are saved as one stack
    read = torch.autograd.grad(inputs(x).sum(), list(inputs.parameters()), allow_unused=True)
    given = sum(t.numel() * t.element_size() for t, g in zip([x, *inputs.parameters()], [x, *read]) if g is not None)
    assert saved_bytes(lambda: inputs(x)) == given
    # the default policy keeps what autograd keeps or less (which may be less than the inputs: a loop's
    # steps keep values smaller than x, or x's views)
    assert saved_bytes(lambda: default(x)) <= saved_bytes(lambda: plain(x))
    # and what backward computes again is what the default Function saves: the same outputs and gradients,
    # the plain module's (double backward too)
    compare_with_plain(inputs, plain, x)
    out, ref = inputs(x), default(x)
    torch.testing.assert_close(out, ref)
    seed = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x, *inputs.parameters()], seed, allow_unused=True)
    want = torch.autograd.grad(ref, [x, *default.parameters()], seed, allow_unused=True)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w)


def test_the_function_returns_only_the_outputs_and_recomputes_in_backward():
    source = compile_spec(SCAN, "scan")["SOURCE"]
    fn = source[source.index("class ScanFunction") : source.index("class Scan(")]
    forward = fn[fn.index("def forward") : fn.index("def setup_context")]
    setup = fn[fn.index("def setup_context") : fn.index("def backward")]
    backward = fn[fn.index("def backward") : fn.index("def apply")]
    assert "h1_steps" not in forward and "return stacked_ys\n" in forward
    assert "ctx.save_for_backward(x, a)" in setup and "def backward(ctx, grad_out):" in backward
    assert "x, a = ctx.saved_tensors" in backward and "decay = torch.sigmoid(a)" in backward
    assert "torch.stack(ys" not in backward  # the output itself is not computed again


def test_each_side_of_an_if_saves_what_it_reads_and_returns_the_output_alone():
    source = compile_spec(GATED, "gated")["SOURCE"]
    setup = source[source.index("def setup_context") : source.index("def backward")]
    assert "-> Tensor:" in source[source.index("def forward(x: Tensor, w") :].splitlines()[0]
    # w and b, read only in the loop's steps, saved only where a step runs (`loop_starts.step_test`)
    ran = "if len(range(ctx.T)) else None"
    assert f"ctx.save_for_backward(x, w {ran}, b {ran})" in setup and f"ctx.save_for_backward(x, w {ran})" in setup
