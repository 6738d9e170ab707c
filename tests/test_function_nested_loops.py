"""A loop whose count is known only when forward runs (over time) inside a loop of a count written in the
spec (over layers), under `@function`. The outer loop is unrolled (`autodiff.unroll`): each copy of its body
makes its own list (`outputs = []` again: `outputs_1` from the second copy on, `unroll._lists_made_once`),
and a list the copies append to outside the inner loop (an RNN's `finals`) is the list of those items where
it is stacked (`loops._items`). Against the plain form (outputs, gradients, gradcheck and gradgradcheck in
float64), with and without the optional start state, and a loop of no steps raising at its spec line.

Both counts known only when forward runs (`for k in range(num_layers)`): the outer loop is a `Nest` segment
(`autodiff.nest`), its body segments of their own, run once per layer in forward (each layer's saved values
stacked over the layers) and in reverse in backward (`codegen.function_nest`); over a family whose first
member has a shape of its own, its first step is written before it (`autodiff.peel`)."""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import agree, compare_with_plain
from .support import saved_bytes
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


# torch.nn.RNN's layers with their count an argument: the first layer on its own (its weight_ih reads the
# input), the others a loop over the members from 1 on, each holding the loop over time
ELMAN_NUM_LAYERS = """
@function
layer ElmanNumLayers(input_size: int, hidden_size: int, num_layers: int) {
    for k in range(num_layers) {
        param weight_ih_l{k}: [hidden_size, input_size if k == 0 else hidden_size] = uniform(-0.5, 0.5)
        param weight_hh_l{k}: [hidden_size, hidden_size] = uniform(-0.5, 0.5)
        param bias_l{k}: [hidden_size] = uniform(-0.5, 0.5)
    }
    example(input_size = 3, hidden_size = 4, num_layers = 2)
    forward(input: [T, B, input_size], hx: [..., hidden_size]? = none) {
        x = input
        finals = []
        for k in range(num_layers) {
            if hx != none {
                h = hx[k]
            } else {
                h = new_zeros(x, [hidden_size])
            }
            gi = x @ transpose(weight_ih_l{k}, 0, 1) + bias_l{k}
            outputs = []
            for t in range(T) {
                h = tanh(gi[t] + h @ transpose(weight_hh_l{k}, 0, 1))
                outputs.append(h)
            }
            finals.append(h)
            x = stack(outputs, dim = 0)
        }
        return x, stack(finals, dim = 0)
    }
}
"""

# layers of one shape, their count an argument (none at all: the input comes back)
SAME_SHAPE_LAYERS = """
@function
layer SameShapeLayers(d: int, n: int) {
    for k in range(n) {
        param w_l{k}: [d, d] = uniform(-0.5, 0.5)
    }
    example(d = 3, n = 2)
    forward(input: [T, B, d]) -> [T, B, d] {
        x = input
        for k in range(n) {
            h = new_zeros(x, [B, d])
            outputs = []
            for t in range(T) {
                h = tanh(x[t] + h @ w_l{k})
                outputs.append(h)
            }
            x = stack(outputs, dim = 0)
        }
        return x
    }
}
"""


def _functional(module, inputs):
    """`module` as a function of its inputs and parameters (gradcheck and gradgradcheck take them all)."""
    names = [n for n, _ in module.named_parameters()]

    def run(*tensors):
        return torch.func.functional_call(module, dict(zip(names, tensors[len(inputs) :])), tensors[: len(inputs)])

    return run


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("given", [False, True])
def test_layers_of_a_count_known_when_forward_runs_each_holding_a_loop_over_time(layers, steps, given):
    a, b = plain_pair(
        ELMAN_NUM_LAYERS, "elman_num_layers", "ElmanNumLayers", input_size=3, hidden_size=4, num_layers=layers
    )
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    inputs = (x, torch.randn(layers, 2, 4, dtype=torch.float64, requires_grad=True)) if given else (x,)
    params = [p.detach().clone().requires_grad_() for p in a.parameters()]
    ours, plain = _functional(a, inputs), _functional(b, inputs)
    agree(ours(*inputs, *params), plain(*inputs, *params), [*inputs, *params])
    assert torch.autograd.gradcheck(ours, (*inputs, *params))
    assert torch.autograd.gradgradcheck(ours, (*inputs, *params))


@pytest.mark.parametrize("layers", [2, 3])
def test_layers_of_a_count_known_when_forward_runs_save_about_what_autograd_does(layers):
    """Each layer's values that backward reads only the shape of (`x @ w`, `gi` of `gi[t]`, the loop's
    own) are kept as one element expanded, not stacked over the layers as copies of the whole."""
    a, b = plain_pair(
        ELMAN_NUM_LAYERS, "elman_num_layers", "ElmanNumLayers", input_size=16, hidden_size=16, num_layers=layers
    )
    x = torch.randn(16, 4, 16, dtype=torch.float64, requires_grad=True)
    assert saved_bytes(lambda: a(x), a) < 1.5 * saved_bytes(lambda: b(x), b)


def test_the_elman_layers_agree_with_torch_rnn():
    """torch.nn.RNN without biases: ours with its biases zero."""
    a, _ = plain_pair(ELMAN_NUM_LAYERS, "elman_num_layers", "ElmanNumLayers", input_size=3, hidden_size=4, num_layers=3)
    rnn = torch.nn.RNN(3, 4, num_layers=3, bias=False).double()
    with torch.no_grad():
        for k in range(3):
            getattr(a, f"bias_l{k}").zero_()
    rnn.load_state_dict({n: p for n, p in a.state_dict().items() if not n.startswith("bias")})
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    output, finals = a(x)
    want, want_finals = rnn(x)
    torch.testing.assert_close(output, want)
    torch.testing.assert_close(finals, want_finals)


@pytest.mark.parametrize("layers", [0, 1, 3])
@pytest.mark.parametrize("steps", [1, 4])
def test_layers_of_one_shape_and_of_a_count_known_when_forward_runs(layers, steps):
    a, b = plain_pair(SAME_SHAPE_LAYERS, "same_shape_layers", "SameShapeLayers", d=3, n=layers)
    x = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_the_backward_runs_the_layers_in_reverse_with_each_layers_saved_values():
    source = generated(SAME_SHAPE_LAYERS, "same_shape_layers")
    forward = source[source.index("    def forward(") : source.index("    def setup_context(")]
    backward = source[source.index("    def backward(") : source.index("    def apply(")]
    assert "for k in range(n):  # same_shape_layers.layer:10" in forward
    assert "for k in reversed(range(ctx.n)):  # same_shape_layers.layer:10" in backward
    assert "h2_steps_layers = torch.stack(h2_steps_layers)" in forward  # a layer's stack, over the layers
    assert "h2_steps = None if h2_steps_layers is None else h2_steps_layers[k]" in backward
    # a view of a member (`w_l[k]`) is taken again in backward, not kept per layer
    assert "part1 = w_l[k]" in backward and "part1_layers" not in source


def test_a_loop_holding_a_loop_inside_a_third_is_refused_at_the_middle_one():
    """Where the outer loop's body holds more than the middle loop (`autodiff.nest_pairs` pairs them where
    it holds that loop alone), and the middle loop's body more than the inner loop (else those two are paired)."""
    text = """
@function
layer ThreeDeep(d: int, n: int) {
    example(d = 3, n = 2)
    forward(x: [T, d]) -> [T, d] {
        h = x
        for j in range(n) {
            h = h * 2.0
            for k in range(n) {
                h = h + 1.0
                for t in range(T) {
                    h = tanh(h)
                }
            }
        }
        return h
    }
}
"""
    spec = parse_file("three_deep.layer", text)
    check_program([spec])
    problems = plan_backwards([spec])[1]
    assert [(p.span.line, p.span.col) for p in problems] == [(9, 13)]
    assert "holds a loop and is inside another loop" in problems[0].message
