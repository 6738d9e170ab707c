"""A loop holding a loop (`autodiff.nest.Nest`) under @function saves no more bytes for backward than autograd
does for the same spec (the plain module): a value its backward reads only the shape of (a carried value's
zeros, the inner loop's last value in the gradient of `h + z[j]`) is not stacked over the outer steps."""

from __future__ import annotations

import pytest
import torch

from .function_agreement import compare_with_plain
from .support import function_and_plain, saved_bytes
from .test_function_loop_ints import NEST_LAYER, NEST_SPECS
from .test_function_nest_steps import LSTM_LAYERS
from .test_function_nested_loops import ELMAN_NUM_LAYERS, SAME_SHAPE_LAYERS
from .test_function_sub_lists import plain_pair


def _read_as_values(body: str) -> str:
    """The nest `body` with its inputs read as values (`* x[t]`, `* z[j]`: autograd saves them too) and a
    start that is no input, so that the bytes compared are the nest's own."""
    body = body.replace("+ x[t]", "* x[t]").replace("+ z[j]", "* z[j]")
    return NEST_LAYER.replace("h = y", "h = y * 2.0").replace("BODY", body)


def _nest_inputs(steps: int, outer: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(7)
    shapes = [(steps, 2, 4), (2, 4), (outer, 4)]
    return tuple(torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in shapes)


def _at_most_autograd(a: torch.nn.Module, b: torch.nn.Module, *inputs: torch.Tensor) -> None:
    assert saved_bytes(lambda: a(*inputs), a) <= saved_bytes(lambda: b(*inputs), b)


@pytest.mark.parametrize("name", ["carried by the inner loop", "read after the inner loop"])
def test_the_inner_loops_last_value_read_for_its_shape_is_not_stacked(name):
    """`h + z[j]` after the inner loop reads its last value for its shape alone: kept on ctx."""
    ours, plain = function_and_plain(_read_as_values(NEST_SPECS[name]), "Nested", 4)
    _at_most_autograd(ours, plain, *_nest_inputs(4, 2))
    compare_with_plain(ours, plain, *_nest_inputs(2, 2))


def test_a_carried_value_read_for_its_shape_is_not_stacked():
    """Each layer's input `x` is read only for the zeros of its gradient (an inner loop of no steps): not
    stacked over the layers, nor the last one saved."""
    a, b = plain_pair(SAME_SHAPE_LAYERS, "same_shape_layers", "SameShapeLayers", d=16, n=2)
    _at_most_autograd(a, b, torch.randn(16, 4, 16, dtype=torch.float64, requires_grad=True))


def test_lstm_layers_save_at_most_what_autograd_does():
    a, b = plain_pair(LSTM_LAYERS, "lstm_layers", "LstmLayers", input_size=16, hidden_size=16, num_layers=2)
    _at_most_autograd(a, b, torch.randn(16, 4, 16, dtype=torch.float64, requires_grad=True))


def test_elman_layers_save_at_most_what_autograd_does():
    """A layer's input `x` (read as a value: `x @ w`'s gradient) is not stacked over the layers: at layer k it
    is read back from layer k - 1's stacked steps (`stack(outputs)` views them), the input at layer 0."""
    a, b = plain_pair(
        ELMAN_NUM_LAYERS, "elman_num_layers", "ElmanNumLayers", input_size=16, hidden_size=16, num_layers=2
    )
    _at_most_autograd(a, b, torch.randn(16, 4, 16, dtype=torch.float64, requires_grad=True))


def test_a_nest_after_a_loop_saves_at_most_what_autograd_does():
    """The nest's last carried value (h of `h * n`) is read by nothing after it: the zeros its gradient starts
    as in the double backward take its start's shape (read anyway at outer step 0), not saving it; and h's
    stack over the outer steps holds steps 1 on, its start read at step 0 rather than copied."""
    ours, plain = function_and_plain(_read_as_values(NEST_SPECS["after a loop"]), "Nested", 4)
    _at_most_autograd(ours, plain, *_nest_inputs(4, 2))


def test_a_nest_reading_its_inputs_for_their_shape_saves_at_most_what_autograd_does():
    """An input read only through views read for their shape (x of `x[t] + ...`, z of `z[j]`) is kept as its
    shape on ctx and made on the meta device; the stack of h over the outer steps holds steps 1 on, its
    start y read at step 0 rather than copied."""
    ours, plain = function_and_plain(NEST_LAYER.replace("BODY", NEST_SPECS["carried by the inner loop"]), "Nested", 4)
    _at_most_autograd(ours, plain, *_nest_inputs(4, 2))
