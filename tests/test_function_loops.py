"""`@function` layers with a loop whose trip count is known only when forward runs (a constructor
argument, an input's size): the Function runs the loop, its backward runs the body's derived backward
in reverse. Against plain autograd (the functional form, torch's RNN), gradcheck and gradgradcheck in
float64, at several trip counts including 0 and 1."""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import compile_spec
from .test_function_sub_lists import compare_with_plain, plain_pair

SCAN = """
@function
layer Scan(d: int, steps: int = 3) {
    param w: [d, d]
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = x
        outputs = []
        for t in range(steps) {
            h = tanh(h @ w + x)
            outputs.append(h * (t + 1))
        }
        return h + sum(stack(outputs, dim = 0), dim = 0) + cat(outputs, dim = -1)[:, :d]
    }
}
"""

CARRIED = """
@function
layer Carried(d: int, steps: int = 3) {
    param w: [d, d]
    param s: [d] = uniform(0.5, 1.5)
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        y = sin(x)
        h = y * 2
        c = x * s
        for t in range(1, steps + 1) {
            before = c
            c = h * s
            h = tanh(before @ w + y) * t + h
        }
        return h * y + c
    }
}
"""

TWO_LOOPS = """
@function
layer TwoLoops(d: int, steps: int = 3) {
    param w: [d, d]
    example(d = 3)
    forward(x: [B, T, d]) -> [B, d] {
        h = x[:, 0]
        for t in range(T) {
            h = tanh(h @ w + x[:, t])
        }
        g = h * 2
        for k in range(steps) {
            g = sin(g) * h
        }
        return g + h
    }
}
"""

JOIN_READ_BY_LOOP = """
@function
layer JoinReadByLoop(d: int, steps: int = 3) {
    param w: [d, d]
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = x
        outputs = []
        for t in range(steps) {
            h = tanh(h @ w + x)
            outputs.append(h)
        }
        s = sum(stack(outputs, dim = 0), dim = 0)
        g = x
        for k in range(steps) {
            g = sin(g) * s
        }
        return g
    }
}
"""

ELMAN = """
@function
layer Elman(input_size: int, hidden_size: int) {
    param weight_ih_l0: [hidden_size, input_size]
    param weight_hh_l0: [hidden_size, hidden_size]
    param bias_ih_l0: [hidden_size]
    param bias_hh_l0: [hidden_size]
    example(input_size = 3, hidden_size = 4)
    forward(input: [T, B, input_size]) -> [T, B, hidden_size] {
        gi = input @ transpose(weight_ih_l0, 0, 1) + bias_ih_l0
        h = new_zeros(input, [size_at(input, 1), hidden_size])
        outputs = []
        for t in range(size_at(input, 0)) {
            h = tanh(gi[t] + h @ transpose(weight_hh_l0, 0, 1) + bias_hh_l0)
            outputs.append(h)
        }
        return stack(outputs, dim = 0)
    }
}
"""


def _inputs(ns: dict, name: str, *shape: int, **kwargs):
    torch.manual_seed(0)
    module = ns[name](**kwargs).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    return module, x, params


def _check_against_functional(ns: dict, name: str, functional: str, steps: list[int], shape, **kwargs):
    fn, plain = ns[f"{name}Function"], ns[functional]
    for n in steps:
        module, x, params = _inputs(ns, name, *shape, steps=n, **kwargs)
        numbers = [getattr(module, p) for p in list(inspect.signature(fn.forward).parameters)[1 + len(params) :]]
        words = {
            p.name: getattr(module, p.name)
            for p in inspect.signature(plain).parameters.values()
            if p.kind is p.KEYWORD_ONLY
        }

        def run(*tensors, numbers=numbers):
            return fn.apply(*tensors, *numbers)[0]

        ref = plain(x, *params, **words)
        out = run(x, *params)
        torch.testing.assert_close(out, ref)
        seed = torch.randn_like(ref)
        got = torch.autograd.grad(out, [x, *params], seed, allow_unused=True)
        want = torch.autograd.grad(ref, [x, *params], seed, allow_unused=True)
        for g, w, t in zip(got, want, [x, *params]):  # no step: w is not read
            torch.testing.assert_close(torch.zeros_like(t) if g is None else g, torch.zeros_like(t) if w is None else w)
        assert torch.autograd.gradcheck(run, (x, *params))
        assert torch.autograd.gradgradcheck(run, (x, *params))


def test_a_loop_over_a_constructor_argument_derives_with_lists_stacked_and_cat():
    ns = compile_spec(SCAN, "scan")
    _check_against_functional(ns, "Scan", "scan", [1, 2, 5], (2, 3), d=3)


def test_carried_values_read_each_other_and_a_loop_of_no_steps_passes_its_gradient_through():
    ns = compile_spec(CARRIED, "carried")
    _check_against_functional(ns, "Carried", "carried", [0, 1, 4], (2, 3), d=3)


def test_two_loops_one_over_a_named_input_size_one_reading_the_others_last_state():
    ns = compile_spec(TWO_LOOPS, "two_loops")
    for length in (1, 4):
        _check_against_functional(ns, "TwoLoops", "two_loops", [0, 2], (2, length, 3), d=3)


def test_a_stacked_list_read_by_a_later_loop():
    ns = compile_spec(JOIN_READ_BY_LOOP, "join_read_by_loop")
    _check_against_functional(ns, "JoinReadByLoop", "join_read_by_loop", [1, 3], (2, 3), d=3)


def test_the_generated_function_runs_the_body_once_forward_and_once_backward():
    spec = parse_file("scan.layer", SCAN)
    code = emit_file(spec, check_program([spec]), "scan.layer", {})
    function = code[code.index("class ScanFunction") : code.index("class Scan(")]
    assert function.count("torch.tanh(") == 1  # the body once, not unrolled
    assert "for t in range(steps):" in function
    assert "for t in reversed(range(ctx.steps)):" in function
    assert "tanh_backward" in function


@pytest.mark.parametrize(
    "text", [SCAN, CARRIED, TWO_LOOPS, JOIN_READ_BY_LOOP, ELMAN], ids=["scan", "carried", "two", "join", "elman"]
)
def test_backward_binds_no_dim_it_does_not_read(text):
    spec = parse_file("loop.layer", text)
    code = emit_file(spec, check_program([spec]), "loop.layer", {})
    backward = code[code.index("def backward(") : code.index("\nclass ", code.index("def backward("))]
    for bound in re.findall(r"^ +(\w+) = ctx\.\w+$", backward, re.M):
        assert len(re.findall(rf"(?<![.\w]){bound}\b", backward)) > 1, bound


@pytest.mark.parametrize("length", [1, 2, 6])
def test_a_loop_over_an_input_size_equals_torchs_rnn(length):
    ns = compile_spec(ELMAN, "elman")
    torch.manual_seed(0)
    ours = ns["Elman"](3, 4).double()
    rnn = torch.nn.RNN(3, 4).double()
    rnn.load_state_dict(ours.state_dict())
    x = torch.randn(length, 2, 3, dtype=torch.float64, requires_grad=True)
    out, theirs = ours(x), rnn(x)[0]
    torch.testing.assert_close(out, theirs)
    seed = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *ours.parameters()], seed)
    want = torch.autograd.grad(theirs, [x, *rnn.parameters()], seed)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    fn = ns["ElmanFunction"]
    params = [p.detach().requires_grad_() for p in ours.parameters()]

    def run(*tensors):
        return fn.apply(*tensors, 4)[0]

    assert torch.autograd.gradcheck(run, (x, *params))
    assert torch.autograd.gradgradcheck(run, (x, *params))


def test_a_carried_value_and_the_step_value_it_becomes_are_kept_once():
    """Elman's backward reads h before the step (the matmul's) and after it (tanh's): one [T, B, H] buffer
    of the steps' h, the value before step t read back as step t - 1's (the start at 0), not a second."""
    ns = compile_spec(ELMAN, "elman")
    torch.manual_seed(0)
    module = ns["Elman"](3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    saved = module(x).grad_fn.saved_tensors
    assert sorted(tuple(t.shape) for t in saved if t.dim() == 3) == [(5, 2, 3), (5, 2, 4)]  # x, the steps' h
    # no bias: their backward reads only their shapes (the one added in the loop's steps too), kept on ctx;
    # nor the last h, whose gradient starts as zeros of its shape
    assert sum(t.numel() for t in saved) == 5 * 2 * 3 + 4 * 3 + 4 * 4 + 5 * 2 * 4
    spec = parse_file("elman.layer", ELMAN)
    code = emit_file(spec, check_program([spec]), "elman.layer", {})
    assert "_steps[t - 1] if t > 0 else " in code


ELMAN2 = (
    ELMAN.replace("layer Elman(", "layer Elman2(")
    .replace(
        "    example(",
        """    param weight_ih_l1: [hidden_size, hidden_size]
    param weight_hh_l1: [hidden_size, hidden_size]
    param bias_ih_l1: [hidden_size]
    param bias_hh_l1: [hidden_size]
    example(""",
    )
    .replace(
        "        return stack(outputs, dim = 0)",
        """        gi1 = stack(outputs, dim = 0) @ transpose(weight_ih_l1, 0, 1) + bias_ih_l1
        h1 = new_zeros(input, [size_at(input, 1), hidden_size])
        outputs1 = []
        for t in range(size_at(input, 0)) {
            h1 = tanh(gi1[t] + h1 @ transpose(weight_hh_l1, 0, 1) + bias_hh_l1)
            outputs1.append(h1)
        }
        return stack(outputs1, dim = 0)""",
    )
)


@pytest.mark.parametrize("length", [1, 4])
def test_a_loop_over_the_steps_of_an_earlier_loop_picks_its_joined_list_per_step(length):
    """A 2-layer Elman RNN written out: the second loop reads `gi1[t]` of the first's stacked outputs, whose
    first dim is the same count (T): each step's gradient is one slice, not a full-size select_backward."""
    ns = compile_spec(ELMAN2, "elman2")
    torch.manual_seed(0)
    ours = ns["Elman2"](3, 4).double()
    rnn = torch.nn.RNN(3, 4, num_layers=2).double()
    rnn.load_state_dict(ours.state_dict())
    x = torch.randn(length, 2, 3, dtype=torch.float64, requires_grad=True)
    out, theirs = ours(x), rnn(x)[0]
    torch.testing.assert_close(out, theirs)
    seed = torch.randn_like(out)
    for g, w in zip(
        torch.autograd.grad(out, [x, *ours.parameters()], seed),
        torch.autograd.grad(theirs, [x, *rnn.parameters()], seed),
    ):
        torch.testing.assert_close(g, w)
    params = [p.detach().requires_grad_() for p in ours.parameters()]

    def run(*tensors):
        return ns["Elman2Function"].apply(*tensors, 4)[0]

    assert torch.autograd.gradcheck(run, (x, *params))
    assert torch.autograd.gradgradcheck(run, (x, *params))
    spec = parse_file("elman2.layer", ELMAN2)
    code = emit_file(spec, check_program([spec]), "elman2.layer", {})
    assert "select_backward" not in code
    # Per layer one buffer of the steps' h: the stacked outputs are a view of it, not a second copy
    saved = ours(x).grad_fn.saved_tensors
    steps = {t.untyped_storage().data_ptr() for t in saved if tuple(t.shape) == (length, 2, 4)}
    assert len(steps) == 2
    function = code[code.index("class Elman2Function") : code.index("class Elman2(")]
    assert "outputs = []" not in function and "stacked_outputs = h" in function


LONG = """
@function
layer LongChain(d: int) {
    param w: [d] = uniform(0.5, 1.5)
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for t in range(70) {
            h = sin(h) * w
        }
        return h
    }
}
"""


def test_a_written_loop_longer_than_unrolling_takes_stays_a_loop():
    ns = compile_spec(LONG, "long")
    spec = parse_file("long.layer", LONG)
    code = emit_file(spec, check_program([spec]), "long.layer", {})
    assert "for t in reversed(range(70)):" in code
    assert code.count("torch.sin(") == 4  # forward, functional, and recomputed in both backward sections
    torch.manual_seed(0)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64).add(0.5).requires_grad_()
    run = lambda x, w: ns["LongChainFunction"].apply(x, w)[0]  # noqa: E731
    torch.testing.assert_close(run(x, w), ns["long_chain"](x, w))
    assert torch.autograd.gradcheck(run, (x, w))
    assert torch.autograd.gradgradcheck(run, (x, w))


def test_torch_func_transforms_go_through_the_loop():
    ns = compile_spec(SCAN, "scan")
    torch.manual_seed(0)
    w = ns["Scan"](3).double().w.detach()
    xs = torch.randn(4, 2, 3, dtype=torch.float64)

    def ours(x):
        return ns["ScanFunction"].apply(x, w, 3, 3)[0]

    def plain(x):
        return ns["scan"](x, w, d=3, steps=3)

    grads = torch.func.vmap(torch.func.grad(lambda x: ours(x).sum()))(xs)
    torch.testing.assert_close(grads, torch.func.vmap(torch.func.grad(lambda x: plain(x).sum()))(xs))
    torch.testing.assert_close(torch.func.jacrev(ours)(xs[0]), torch.func.jacrev(plain)(xs[0]))


BRANCHING_BODY = """
@function
layer BranchingElman(input_size: int, hidden_size: int, nonlinearity: str = "tanh", scaled: bool = false) {
    param weight_ih: [hidden_size, input_size]
    param weight_hh: [hidden_size, hidden_size]
    example(input_size = 3, hidden_size = 4)
    forward(input: [B, T, input_size]) -> [B, T, hidden_size] {
        gi = input @ transpose(weight_ih, 0, 1)
        h = new_zeros(input, [size_at(input, 0), hidden_size])
        outputs = []
        for t in range(size_at(input, 1)) {
            pre = gi[:, t] + h @ transpose(weight_hh, 0, 1)
            if nonlinearity == "relu" {
                h = relu(pre)
            } else {
                h = tanh(pre)
            }
            if scaled {
                outputs.append(h * (t + 1))
            } else {
                outputs.append(h)
            }
        }
        return stack(outputs, dim = 1)
    }
}
"""

BRANCHING_STEPS = """
@function
layer BranchingSteps(d: int, steps: int, squash: bool = true) {
    param w: [d, d]
    example(d = 3, steps = 2)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for t in range(steps) {
            g = h @ w
            if squash {
                h = sin(g) + h
            } else {
                h = g * h
            }
        }
        if not squash {
            return h * 2
        }
        return h
    }
}
"""


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("length", [1, 3])
def test_an_if_on_arguments_in_a_loops_body_chooses_a_loop(nonlinearity, scaled, length):
    a, b = plain_pair(
        BRANCHING_BODY,
        "branching_elman",
        "BranchingElman",
        input_size=3,
        hidden_size=4,
        nonlinearity=nonlinearity,
        scaled=scaled,
    )
    x = torch.randn(2, length, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("squash", [False, True])
def test_an_if_on_arguments_in_a_loop_over_an_argument_and_after_it(steps, squash):
    a, b = plain_pair(BRANCHING_STEPS, "branching_steps", "BranchingSteps", d=3, steps=steps, squash=squash)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_the_loop_is_written_once_per_side_of_the_if_taken_out_of_it():
    spec = parse_file("branching_steps.layer", BRANCHING_STEPS)
    code = emit_file(spec, check_program([spec]), "branching_steps.layer", {})
    function = code[code.index("class BranchingStepsFunction") : code.index("class BranchingSteps(")]
    forward = function[: function.index("def setup_context")]
    assert forward.count("for t in range(steps):") == 2 and forward.count("if squash:") == 1
    assert function.count("for t in reversed(range(ctx.steps)):") >= 2 and "if ctx.squash:" in function


OPTIONAL_MEMBER = """
@function
layer OptionalBias(d: int, steps: int, bias: bool = true) {
    param w: [d, d]
    param b: [d] = uniform(-0.5, 0.5) if bias
    example(d = 3, steps = 2)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for t in range(steps) {
            h = tanh(h @ w + b) + h
        }
        return h * b
    }
}
"""


@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_an_optional_member_read_in_a_loop_chooses_a_side_by_whether_it_is_built(steps, bias):
    a, b = plain_pair(OPTIONAL_MEMBER, "optional_bias", "OptionalBias", d=3, steps=steps, bias=bias)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    compare_with_plain(a, b, x)


def test_whether_the_member_is_built_is_kept_on_ctx_for_backward():
    spec = parse_file("optional_bias.layer", OPTIONAL_MEMBER)
    code = emit_file(spec, check_program([spec]), "optional_bias.layer", {})
    function = code[code.index("class OptionalBiasFunction") : code.index("class OptionalBias(")]
    assert "ctx.b_given = b is not None" in function and "if ctx.b_given:" in function


OPTIONAL_READ_OTHERWISE = """
@function
layer OptionalScale(d: int, steps: int, scaled: bool = true) {
    param s: [d] = uniform(0.5, 1.5) if scaled
    example(d = 3, steps = 2)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for t in range(steps) {
            h = sin(h) + h
        }
        return s - h
    }
}
"""


def test_an_optional_member_on_the_left_of_a_minus_is_refused_where_it_is_read():
    spec = parse_file("optional_scale.layer", OPTIONAL_READ_OTHERWISE)
    check_program([spec])
    _, problems = plan_backwards([spec])
    assert [(p.span.line, p.span.col) for p in problems] == [(11, 16)]
    assert "reads the optional member 's' as the right operand of -" in problems[0].message


OPTIONAL_INPUT_IN_BODY = """
@function
layer Steered(d: int, steps: int) {
    param w: [d, d]
    example(d = 3, steps = 2)
    forward(x: [B, d], hx: [B, d]? = none) -> [B, d] {
        h = x
        for t in range(steps) {
            if hx != none {
                h = tanh(h @ w + hx)
            } else {
                h = tanh(h @ w)
            }
        }
        return h
    }
}
"""


@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("given", [False, True])
def test_an_if_on_whether_an_optional_input_is_given_in_a_loops_body(steps, given):
    a, b = plain_pair(OPTIONAL_INPUT_IN_BODY, "steered", "Steered", d=3, steps=steps)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    if given:
        compare_with_plain(a, b, x, torch.randn(2, 3, dtype=torch.float64, requires_grad=True))
    else:
        compare_with_plain(a, b, x)


def test_whether_the_optional_input_is_given_is_kept_on_ctx_for_backward():
    spec = parse_file("steered.layer", OPTIONAL_INPUT_IN_BODY)
    code = emit_file(spec, check_program([spec]), "steered.layer", {})
    function = code[code.index("class SteeredFunction") : code.index("class Steered(")]
    assert "ctx.hx_given = hx is not None" in function and "if ctx.hx_given:" in function
    assert function.count("for t in range(steps):") == 2  # the loop on each side of the `if` taken out


@pytest.mark.parametrize("frozen", [(), ("w",), ("b",), ("w", "b")])
@pytest.mark.parametrize("x_grad", [True, False])
def test_a_step_computes_only_the_gradients_asked_for(frozen, x_grad):
    a, b = plain_pair(OPTIONAL_MEMBER, "optional_bias", "OptionalBias", d=3, steps=3, bias=True)
    for module in (a, b):
        for name in frozen:
            getattr(module, name).requires_grad_(False)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=x_grad)
    wanted = ([x] if x_grad else []) + [p for p in a.parameters() if p.requires_grad]
    if not wanted:
        return
    theirs = ([x] if x_grad else []) + [p for p in b.parameters() if p.requires_grad]
    out, ref = a(x), b(x)
    got = torch.autograd.grad(out.sum(), wanted, create_graph=True)
    want = torch.autograd.grad(ref.sum(), theirs, create_graph=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    second = torch.autograd.grad(sum((g * g).sum() for g in got), wanted, allow_unused=True)
    second_want = torch.autograd.grad(sum((w * w).sum() for w in want), theirs, allow_unused=True)
    for g, w in zip(second, second_want):
        torch.testing.assert_close(g, w)


def test_the_step_statements_of_one_gradient_run_only_when_it_is_asked_for():
    spec = parse_file("optional_bias.layer", OPTIONAL_MEMBER)
    code = emit_file(spec, check_program([spec]), "optional_bias.layer", {})
    function = code[code.index("class OptionalBiasFunction") : code.index("class OptionalBias(")]
    backward = function[function.index("def backward") :]
    loop = backward[backward.index("for t in reversed") :]
    assert "if ctx.needs_input_grad[1]:" in loop  # w's per-step gradient
    assert "if ctx.needs_input_grad[2]:" in loop  # b's


def test_stacking_the_list_of_a_loop_of_no_steps_raises_a_runtime_error_naming_the_list():
    """Forward keeps the stacked items in a buffer made at the first step: with no steps there is none, and
    `stack` of the empty list raises a RuntimeError naming the list, where the plain form raises torch's
    (not an AttributeError on the missing buffer)."""
    ours, plain = plain_pair(ELMAN, "elman_no_steps", "Elman", input_size=3, hidden_size=4)
    x = torch.randn(0, 2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="stack expects a non-empty TensorList"):
        plain(x)
    with pytest.raises(RuntimeError, match=r"Elman: stack\(\) of 'outputs' got no items"):
        ours(x)
