"""A forward with a loop holding a loop (`autodiff.nest`) whose `if`s on arguments make more ways through it
than `plan.MAX_NEST_COPIES` (a copy of the two loops each) or `loops.MAX_BRANCH_PLANS`: the `if`s around
no loop, before, after or inside the loop over the layers, are `if`s of their own (`loops.Choice`), the
Function branching only on those around a loop (`plan._fewest_ways`). Against the plain module over the
configurations (outputs, first and second derivatives, gradcheck and gradgradcheck in float64), and the
Function written with the two loops once."""

from __future__ import annotations

import itertools

import pytest
import torch

from layerdsl.autodiff import plan
from layerdsl.autodiff.loops import Choice
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import agree, checked
from .support import compile_spec
from .test_function_sub_lists import plain_pair

# four `if`s around no loop: 16 ways, past MAX_NEST_COPIES
CHOICES = """
@function
layer NestChoices(
    n: int,
    d: int,
    batch_first: bool = false,
    doubled: bool = false,
    squared: bool = false,
    negated: bool = false,
) {
    for k in range(n) {
        param w_l{k}: [d, d] = uniform(-0.5, 0.5)
    }
    example(n = 2, d = 3)
    forward(input: [..., d]) {
        if batch_first {
            x = input
        } else {
            x = transpose(input, 0, -2)
        }
        if doubled {
            x = x * 2
        }
        T = size_at(x, -2)
        if squared {
            x = x * x
        }
        finals = []
        for k in range(n) {
            h = new_zeros(x, [d])
            outputs = []
            for t in range(T) {
                h = tanh(x[..., t, :] @ w_l{k} + h)
                outputs.append(h)
            }
            finals.append(h)
            x = stack(outputs, dim = -2)
        }
        if negated {
            x = -x
        }
        if batch_first {
            output = x
        } else {
            output = transpose(x, 0, -2)
        }
        return output, stack(finals, dim = 0)
    }
}
"""

FLAGS = ("batch_first", "doubled", "squared", "negated")


def _plan(text: str):
    spec = parse_file("nest_choices.layer", text)
    check_program([spec])
    return plan.plan_backwards([spec])


def test_the_ifs_around_no_loop_are_ifs_of_their_own_and_the_nest_is_planned_once():
    plans, problems = _plan(CHOICES)
    assert not problems
    assert len(plan._nests(plans["NestChoices"])) == 1


def test_an_if_around_the_nest_still_branches():
    """An `if` whose sides hold the loop is a way of its own: two ways, a copy of the nest each."""
    text = CHOICES.replace(
        "        finals = []\n",
        "        finals = []\n        if negated {\n            x = x + 1\n            finals.append(x[..., 0, :])\n        }\n",
    )
    plans, problems = _plan(text)
    assert not problems
    assert len(plan._nests(plans["NestChoices"])) == 2


def test_the_function_writes_the_loop_holding_a_loop_once():
    source = compile_spec(CHOICES, "nest_choices_source")["SOURCE"]
    function = source[: source.index("class NestChoices(")]
    assert function.count("for k in range(") == 1  # forward
    assert function.count("for k in reversed(range(") == 1  # backward
    assert function.count("if batch_first:") == 2  # forward's: where it is read, before the loop and after


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=len(FLAGS))))
def test_every_configuration_agrees_with_the_plain_module(flags):
    kwargs = dict(zip(FLAGS, flags))
    a, b = plain_pair(CHOICES, "nest_choices", "NestChoices", n=2, d=3, **kwargs)
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    params = {name: p.detach().clone().requires_grad_() for name, p in a.named_parameters()}
    got, want = (torch.func.functional_call(m, params, (x,)) for m in (a, b))
    agree(got, want, [x, *params.values()])


@pytest.mark.parametrize("n", [1, 3])
def test_gradcheck_at_each_count(n):
    a, _ = plain_pair(CHOICES, "nest_choices", "NestChoices", n=n, d=2, batch_first=True, negated=True)
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    checked(lambda x: a(x), [x])


# `if`s in the body of the loop over the layers (whether the state is given, a flag): 64 ways in all
NEST_IFS = """@function
layer NestIfs(n: int, d: int, scaled: bool = false, shifted: bool = false, a: bool = false, b: bool = false, c: bool = false) {
    for k in range(n) {
        param w_l{k}: [d, d] = uniform(-0.5, 0.5)
    }
    example(n = 2, d = 3)
    forward(input: [B, T, d], hx: [..., d]? = none) {
        x = input
        if a {
            x = x * 2
        }
        if b {
            x = x * 3
        }
        if c {
            x = tanh(x)
        }
        finals = []
        for k in range(n) {
            if hx != none {
                h = hx[k]
            } else {
                h = new_zeros(x, [d])
            }
            if scaled {
                h = h * 2
            }
            outputs = []
            for t in range(T) {
                h = tanh(x[..., t, :] @ w_l{k} + h)
                outputs.append(h)
            }
            finals.append(h)
            x = stack(outputs, dim = -2)
            if shifted {
                x = x + 1
            }
        }
        return x, stack(finals, dim = 0)
    }
}
"""


def test_the_ifs_of_the_loop_over_the_layers_stay_in_its_body():
    plans, problems = _plan(NEST_IFS)
    assert not problems
    (nest,) = plan._nests(plans["NestIfs"])
    assert sum(isinstance(seg, Choice) for seg in nest.segments) == 3


@pytest.mark.parametrize("scaled, shifted, a, given", list(itertools.product([False, True], repeat=4)))
def test_every_side_of_the_ifs_in_the_loop_agrees_with_the_plain_module(scaled, shifted, a, given):
    m, p = plain_pair(NEST_IFS, "nest_ifs", "NestIfs", n=2, d=3, scaled=scaled, shifted=shifted, a=a, b=not a, c=a)
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    params = {name: v.detach().clone().requires_grad_() for name, v in m.named_parameters()}
    args = (x, hx) if given else (x,)
    got, want = (torch.func.functional_call(module, params, args) for module in (m, p))
    agree(got, want, [*args, *params.values()])


def test_gradcheck_with_the_state_given_and_the_flags_set():
    m, _ = plain_pair(NEST_IFS, "nest_ifs", "NestIfs", n=2, d=2, scaled=True, shifted=True)
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True)
    checked(lambda x, hx: m(x, hx), [x, hx])


def test_the_ifs_around_no_loop_stay_where_an_if_around_the_loop_is_all_the_top_holds():
    """An `if` around a loop inside the loop over the layers is taken around it (two copies of it, the
    forward's top holding no loop but in the `if`): the `if`s around no loop still stay, two ways in all."""
    text = NEST_IFS.replace(
        "            if scaled {\n                h = h * 2\n            }\n",
        "            if scaled {\n                for t in range(T) {\n                    h = h * 2\n                }\n            }\n",
    )
    assert text != NEST_IFS
    plans, problems = _plan(text)
    assert not problems
    assert len(plan._nests(plans["NestIfs"])) == 2
    for scaled in (False, True):
        m, p = plain_pair(text, "nest_ifs_around", "NestIfs", n=2, d=3, scaled=scaled, a=True)
        x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
        hx = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
        params = {name: v.detach().clone().requires_grad_() for name, v in m.named_parameters()}
        got, want = (torch.func.functional_call(module, params, (x, hx)) for module in (m, p))
        agree(got, want, [x, hx, *params.values()])


def test_the_ifs_of_the_loop_over_the_layers_stay_where_its_inner_loop_is_taken_apart():
    """An `if` on arguments in the inner loop's body (an RNN's nonlinearity) takes the inner loop apart (a
    copy on each side), and then the outer one: the outer body's `if`s around no loop still stay in it."""
    text = NEST_IFS.replace("c: bool = false)", "c: bool = false, relu: bool = false)").replace(
        "                h = tanh(x[..., t, :] @ w_l{k} + h)\n",
        "                if relu {\n                    h = relu(x[..., t, :] @ w_l{k} + h)\n                } else {\n"
        "                    h = tanh(x[..., t, :] @ w_l{k} + h)\n                }\n",
    )
    assert text.count("relu") == 3
    plans, problems = _plan(text)
    assert not problems
    assert len(plan._nests(plans["NestIfs"])) == 2
    for relu, given in ((True, True), (False, False)):
        m, p = plain_pair(text, "nest_ifs_relu", "NestIfs", n=2, d=3, relu=relu, scaled=True, shifted=True)
        x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
        hx = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
        params = {name: v.detach().clone().requires_grad_() for name, v in m.named_parameters()}
        args = (x, hx) if given else (x,)
        got, want = (torch.func.functional_call(module, params, args) for module in (m, p))
        agree(got, want, [*args, *params.values()])
