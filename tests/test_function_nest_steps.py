"""A loop over time inside a loop over layers, both of counts known only when forward runs (`autodiff.nest`),
whose body reads `gi[t]` of the whole layer's input projection: the pick is one step's slice of `gi`
(`loops.Planner.picks`) only where `gi` has a static shape, and the layer's input `x`, carried from layer to
layer, has one only where what the layer makes of it keeps it. Two things gave it none: an LSTM's gates
are slices of `4 * hidden_size` (`gates[..., hidden_size : 2 * hidden_size]`, a size the shapes now prove
to be `hidden_size`), and a layer stacking its steps at a dim after the items' `...` group
(`stack(outputs, dim = -2)` of `[..., hidden_size]` items is `[..., T, hidden_size]`). Without a static
shape, backward scattered each step's gradient into a whole-size zero tensor (T of them per layer).
Against the plain form: outputs, gradients, gradcheck and gradgradcheck in float64; and the bytes saved."""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.loops import Loop, LoopPlan
from layerdsl.autodiff.nest import Nest
from layerdsl.autodiff.plan import BranchPlan, plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import compare_with_plain
from .support import saved_bytes
from .test_function_sub_lists import plain_pair

# torch.nn.LSTM's form, biased, one direction (benchmarks/bench_nest_saving.py measures it)
LSTM_LAYERS = """
@function
layer LstmLayers(input_size: int, hidden_size: int, num_layers: int) {
    for k in range(num_layers) {
        param weight_ih_l{k}: [4 * hidden_size, input_size if k == 0 else hidden_size] = uniform(-0.5, 0.5)
        param weight_hh_l{k}: [4 * hidden_size, hidden_size] = uniform(-0.5, 0.5)
        param bias_ih_l{k}: [4 * hidden_size] = uniform(-0.5, 0.5)
        param bias_hh_l{k}: [4 * hidden_size] = uniform(-0.5, 0.5)
    }
    example(input_size = 3, hidden_size = 4, num_layers = 2)
    forward(input: [T, B, input_size]) {
        x = input
        for k in range(num_layers) {
            h = new_zeros(x, [B, hidden_size])
            c = new_zeros(x, [B, hidden_size])
            gi = x @ transpose(weight_ih_l{k}, 0, 1) + bias_ih_l{k}
            w_hh = transpose(weight_hh_l{k}, 0, 1)
            outputs = []
            for t in range(T) {
                gates = gi[t] + h @ w_hh + bias_hh_l{k}
                i = sigmoid(gates[..., 0:hidden_size])
                f = sigmoid(gates[..., hidden_size : 2 * hidden_size])
                g = tanh(gates[..., 2 * hidden_size : 3 * hidden_size])
                o = sigmoid(gates[..., 3 * hidden_size :])
                c = f * c + i * g
                h = o * tanh(c)
                outputs.append(h)
            }
            x = stack(outputs, dim = 0)
        }
        return x
    }
}
"""

# the sequence as [..., T, n], as specs/torch_nn/rnn.layer keeps it: a step is `gi[..., t, :]`
BATCH_FIRST_LAYERS = """
@function
layer BatchFirstLayers(input_size: int, hidden_size: int, num_layers: int) {
    for k in range(num_layers) {
        param weight_ih_l{k}: [hidden_size, input_size if k == 0 else hidden_size] = uniform(-0.5, 0.5)
        param weight_hh_l{k}: [hidden_size, hidden_size] = uniform(-0.5, 0.5)
    }
    example(input_size = 3, hidden_size = 4, num_layers = 2)
    forward(input: [..., T, input_size], h0: [..., hidden_size]) {
        x = input
        for k in range(num_layers) {
            h = h0
            gi = x @ transpose(weight_ih_l{k}, 0, 1)
            w_hh = transpose(weight_hh_l{k}, 0, 1)
            outputs = []
            for t in range(T) {
                h = tanh(gi[..., t, :] + h @ w_hh)
                outputs.append(h)
            }
            x = stack(outputs, dim = -2)
        }
        return x
    }
}
"""

# The same with one batch dim named in both inputs: two inputs' `...` may broadcast against each other (the
# carried `h` may grow after its first step), so a pick of the steps needs their batch dims to be the same.
BATCH_FIRST_LAYERS_NAMED = BATCH_FIRST_LAYERS.replace(
    "input: [..., T, input_size], h0: [..., hidden_size]", "input: [B, T, input_size], h0: [B, hidden_size]"
)


def _nest_loops(text: str, stem: str) -> list[Loop]:
    """The loops inside the nests of every side of the layer's plan (a family whose first member differs
    branches on whether there is a first layer, `autodiff.peel`)."""
    spec = parse_file(f"{stem}.layer", text)
    check_program([spec])
    plans, problems = plan_backwards([spec])
    assert not problems
    [plan] = plans.values()
    sides = [plan]
    while any(isinstance(p, BranchPlan) for p in sides):
        sides = [q for p in sides for q in ((p.then, p.orelse) if isinstance(p, BranchPlan) else (p,))]
    assert all(isinstance(p, LoopPlan) for p in sides)
    return [loop for p in sides for seg in p.segments if isinstance(seg, Nest) for loop in seg.loops()]


@pytest.mark.parametrize(
    ("text", "stem"),
    [(LSTM_LAYERS, "lstm_layers"), (BATCH_FIRST_LAYERS_NAMED, "batch_first_layers_named")],
    ids=["lstm", "batch"],
)
def test_a_layer_inside_the_nest_picks_its_steps_of_the_input_projection(text, stem):
    loops = _nest_loops(text, stem)
    assert loops
    for loop in loops:
        assert [s.op.name for s in loop.picks.values() if s.op is not None] == ["select"]


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("steps", [1, 4])
def test_lstm_layers_of_a_count_known_when_forward_runs_agree_with_autograd(layers, steps):
    a, b = plain_pair(LSTM_LAYERS, "lstm_layers", "LstmLayers", input_size=3, hidden_size=2, num_layers=layers)
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize(("batch", "h0_batch"), [((2,), (2,)), ((2,), ()), ((), (2,)), ((3, 2), (2,))])
def test_layers_stacking_steps_after_the_batch_dims_agree_with_autograd(layers, steps, batch, h0_batch):
    """Each input's `...` is its own: `h0`'s may broadcast against the input's (the carried `h` grows)."""
    a, b = plain_pair(
        BATCH_FIRST_LAYERS, "batch_first_layers", "BatchFirstLayers", input_size=3, hidden_size=4, num_layers=layers
    )
    x = torch.randn(*batch, steps, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(*h0_batch, 4, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x, h0)


def test_lstm_layers_save_about_what_autograd_does():
    """Each layer's `gi` is kept by its shape alone (backward picks a step's slice of its gradient), not
    stacked over the layers; the gates' values have static shapes, kept per step without a first step of
    its own."""
    a, b = plain_pair(LSTM_LAYERS, "lstm_layers", "LstmLayers", input_size=16, hidden_size=16, num_layers=2)
    x = torch.randn(16, 4, 16, dtype=torch.float64, requires_grad=True)
    assert saved_bytes(lambda: a(x), a) < 1.3 * saved_bytes(lambda: b(x), b)
