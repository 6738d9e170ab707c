"""A loop whose count is known only when forward runs (over time) inside a loop of a count written in the
spec (over layers), under `@function`. The outer loop is unrolled (`autodiff.unroll`): each copy of its body
makes its own list (`outputs = []` again: `outputs_1` from the second copy on, `unroll._lists_made_once`),
and a list the copies append to outside the inner loop (an RNN's `finals`) is the list of those items where
it is stacked (`loops._items`). Against the plain form (outputs, gradients, gradcheck and gradgradcheck in
float64), with and without the optional start state, and a loop of no steps raising at its spec line."""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import compare_with_plain
from .test_function_sub_lists import plain_pair

TWO_LEVEL = """
@function
layer TwoLevel(d: int) {
    for k in range(2) {
        param w_l{k}: [d, d] = uniform(-0.5, 0.5)
    }
    example(d = 3)
    forward(input: [T, B, d], hx: [..., d]? = none) -> [T, B, d] {
        x = input
        finals = []
        for k in range(2) {
            if hx != none {
                h = hx[k]
            } else {
                h = new_zeros(x, [B, d])
            }
            outputs = []
            for t in range(T) {
                h = tanh(x[t] + h @ w_l{k})
                outputs.append(h)
            }
            finals.append(h)
            x = stack(outputs, dim = 0)
        }
        return x + sum(stack(finals, dim = 0), dim = 0)
    }
}
"""


# torch.nn.RNN(num_layers = 2) with its layers as a loop over a family whose first member has a shape of its
# own (`autodiff.peel`): written out, the first layer on its own and the rest unrolled
ELMAN_LAYERS = """
@function
layer ElmanLayers(input_size: int, hidden_size: int) {
    for k in range(2) {
        param weight_ih_l{k}: [hidden_size, input_size if k == 0 else hidden_size] = uniform(-0.5, 0.5)
        param weight_hh_l{k}: [hidden_size, hidden_size] = uniform(-0.5, 0.5)
        param bias_ih_l{k}: [hidden_size] = uniform(-0.5, 0.5)
        param bias_hh_l{k}: [hidden_size] = uniform(-0.5, 0.5)
    }
    example(input_size = 3, hidden_size = 4)
    forward(input: [T, B, input_size]) -> [T, B, hidden_size] {
        x = input
        for k in range(2) {
            gi = x @ transpose(weight_ih_l{k}, 0, 1) + bias_ih_l{k}
            h = new_zeros(input, [B, hidden_size])
            outputs = []
            for t in range(T) {
                h = tanh(gi[t] + h @ transpose(weight_hh_l{k}, 0, 1) + bias_hh_l{k})
                outputs.append(h)
            }
            x = stack(outputs, dim = 0)
        }
        return x
    }
}
"""


def generated(text: str, stem: str) -> str:
    spec = parse_file(f"{stem}.layer", text)
    program = check_program([spec])
    plans, problems = plan_backwards([spec])
    assert not problems, problems
    return emit_file(spec, program, f"{stem}.layer", plans)


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("given", [False, True])
def test_a_loop_over_time_inside_a_written_loop_over_layers_derives(steps, given):
    a, b = plain_pair(TWO_LEVEL, "two_level", "TwoLevel", d=3)
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    inputs = (x, torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)) if given else (x,)
    compare_with_plain(a, b, *inputs)


@pytest.mark.parametrize("steps", [1, 5])
def test_a_written_loop_over_a_family_whose_first_member_differs_holding_a_loop_over_time(steps):
    a, b = plain_pair(ELMAN_LAYERS, "elman_layers", "ElmanLayers", input_size=3, hidden_size=4)
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)
    rnn = torch.nn.RNN(3, 4, num_layers=2).double()
    rnn.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), rnn(x)[0])


def test_each_copy_of_the_outer_body_collects_into_a_list_of_its_own():
    source = generated(TWO_LEVEL, "two_level")
    assert "'outputs' got no items" in source and "'outputs_1' got no items" in source
    assert "torch.stack([" in source  # the items appended outside the inner loops, stacked as they are


def test_an_inner_loop_of_no_steps_raises_at_its_spec_line():
    source = generated(TWO_LEVEL, "two_level")
    raising = [line for line in source.splitlines() if "got no items" in line]
    assert raising and all(line.endswith("# two_level.layer:18") for line in raising)  # `for t in range(T)`
    ours, plain = plain_pair(TWO_LEVEL, "two_level_no_steps", "TwoLevel", d=3)
    x = torch.randn(0, 2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="stack expects a non-empty TensorList"):
        plain(x)
    with pytest.raises(RuntimeError, match=r"TwoLevel: stack\(\) of 'outputs' got no items"):
        ours(x)


def test_a_list_appended_after_its_loop_is_still_refused_at_the_append():
    text = """
@function
layer AppendedAfter(d: int) {
    param w: [d, d]
    example(d = 3)
    forward(input: [T, B, d]) -> [...] {
        h = new_zeros(input, [B, d])
        outputs = []
        for t in range(T) {
            h = tanh(input[t] + h @ w)
            outputs.append(h)
        }
        outputs.append(h)
        return stack(outputs, dim = 0)
    }
}
"""
    spec = parse_file("appended_after.layer", text)
    check_program([spec])
    problems = plan_backwards([spec])[1]
    assert [(p.span.line, p.span.col) for p in problems] == [(13, 9)]
    assert "in the loop that appends to it" in problems[0].message


# torch's RNN layer by layer: the state starts as [d] (none given) and is [..., d] after the first step, so
# `h @ w` is [d] at step 0 and [..., d] later; one side of the `if batch_first` binds a local `output`
SEQUENCE = """
@function
layer Sequence(d: int, batch_first: bool = false) {
    param w: [d, d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(input: [..., d]) {
        if batch_first {
            x = input
        } else {
            x = transpose(input, 0, -2)
        }
        T = size_at(x, -2)
        h = new_zeros(x, [d])
        outputs = []
        for t in range(T) {
            h = tanh(x[..., t, :] + h @ w)
            outputs.append(h)
        }
        y = stack(outputs, dim = -2)
        if batch_first {
            output = y
        } else {
            output = transpose(y, 0, -2)
        }
        return output
    }
}
"""


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("batch_first", [False, True])
def test_a_value_of_a_step_smaller_at_the_first_step_than_later(steps, batch_first):
    """`h @ w` is kept per step (its size is read); its buffer, made at step 0 as [d], is made anew at step
    1 as [B, d], step 0's value kept on its own and read there by backward."""
    a, b = plain_pair(SEQUENCE, "sequence", "Sequence", d=3, batch_first=batch_first)
    x = torch.randn(*((2, steps, 3) if batch_first else (steps, 2, 3)), dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_setup_context_names_its_output_alike_on_every_side():
    source = generated(SEQUENCE, "sequence")
    assert "def setup_context(ctx, inputs, output_) -> None:" in source
    assert " = output\n" not in source  # no side unpacks another name than the parameter's


# an LSTM's optional state is a tuple (`hx: (h0, c0)? = none`): its test is `hx_0 != none and hx_1 != none`
# (`autodiff.inputs`), an `if` on configuration values before the loop
CELL = """
@function
layer Cell(d: int) {
    param w: [d, 2 * d] = uniform(-0.5, 0.5)
    example(d = 3)
    forward(input: [T, B, d], hx: ([B, d], [B, d])? = none) -> [T, B, d] {
        if hx != none {
            h, c = hx
        } else {
            h = new_zeros(input, [B, d])
            c = new_zeros(input, [B, d])
        }
        outputs = []
        for t in range(T) {
            gates = sigmoid(input[t] @ w + h @ w)
            c = gates[:, 0:d] * c + tanh(input[t])
            h = gates[:, d:] * tanh(c)
            outputs.append(h)
        }
        return stack(outputs, dim = 0)
    }
}
"""


@pytest.mark.parametrize("given", [False, True])
def test_a_tuple_state_tested_before_the_loop(given):
    a, b = plain_pair(CELL, "cell", "Cell", d=3)
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    if not given:
        compare_with_plain(a, b, x)
        return
    torch.testing.assert_close(a(x, state), b(x, state))
    names = [n for n, _ in a.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in a.parameters()]

    def run(x, h0, c0, *tensors):
        return torch.func.functional_call(a, dict(zip(names, tensors)), (x, (h0, c0)))

    assert torch.autograd.gradcheck(run, (x, *state, *params))
    assert torch.autograd.gradgradcheck(run, (x, *state, *params))


def test_a_list_appended_outside_loops_and_indexed_is_refused_at_the_read():
    text = """
@function
layer Indexed(d: int) {
    param w: [d, d]
    example(d = 3)
    forward(input: [T, B, d]) -> [B, d] {
        h = new_zeros(input, [B, d])
        finals = []
        for t in range(T) {
            h = tanh(input[t] + h @ w)
        }
        finals.append(h)
        finals.append(h * 2)
        return finals[1]
    }
}
"""
    spec = parse_file("indexed.layer", text)
    check_program([spec])
    problems = plan_backwards([spec])[1]
    assert [(p.span.line, p.span.col) for p in problems] == [(14, 16)]
    assert "reads the list 'finals' by stack() or cat() only" in problems[0].message
