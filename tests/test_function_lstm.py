"""torch.nn's LSTM under `@function`: its nest binds `h0, c0 = hx` under `if hx != none` only, and reads them
only on that side. The `if` of the first member (`peel.rest_under_first`) leaves no `h0`, `c0` after it
(`loops.read_before_bound`: the loop over the rest binds them before each read), so the nest carries no
value that may be None (`plan._check_carried_bound` refused it).

Against the plain module in float64 (outputs, first and second derivatives; gradcheck and gradgradcheck):
num_layers 1 and 2, bias, bidirectional, batch_first, with and without (h0, c0), train and eval, proj_size."""

from __future__ import annotations

import itertools
import sys

import pytest
import torch

from layerdsl.autodiff import plan
from layerdsl.autodiff.loops import UNBOUND, Choice
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import agree, checked
from .support import compile_spec, torch_nn_with_and_without_function

# a nest with three `if`s on flags (a plan with `Choice`s, `plan._fewest_ways`) whose state is unpacked
# from a tuple on one side of an `if` and read there only
UNPACKED = """@function
layer NestUnpacked(n: int, d_in: int, d: int, a: bool = false, b: bool = false, c: bool = false) {
    for k in range(n) {
        param w_l{k}: [d_in if k == 0 else d, d] = uniform(-0.5, 0.5)
        param u_l{k}: [d, d] = uniform(-0.5, 0.5)
    }
    example(n = 2, d_in = 2, d = 3)
    forward(input: [B, T, d_in], hx: ([..., d], [..., d])? = none) {
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
        for k in range(n) {
            if hx != none {
                h0, c0 = hx
                h = h0[k] * c0[k]
            } else {
                h = new_zeros(x, [d])
            }
            g = x @ w_l{k}
            outputs = []
            for t in range(T) {
                h = tanh(g[..., t, :] + h @ u_l{k})
                outputs.append(h)
            }
            x = stack(outputs, dim = -2)
        }
        return x
    }
}
"""


def test_a_local_bound_on_one_side_and_rebound_before_each_read_is_not_carried():
    """Before: the `if` of the first member left `h0`, `c0` (None without hx) to the nest, which carried them
    (refused by `plan._check_carried_bound`)."""
    spec = parse_file("unpacked.layer", UNPACKED)
    check_program([spec])
    plans, problems = plan.plan_backwards([spec])
    assert not problems, problems
    sides = plan._loop_sides(plans["NestUnpacked"])
    assert sides and plan._nests(plans["NestUnpacked"])
    for side in sides:  # the `if`s before the nest leave no local unbound
        choices = [seg for seg in side.segments if isinstance(seg, Choice)]
        assert choices and all(UNBOUND not in values for c in choices for values in c.merged.values())


@pytest.mark.parametrize("n, given", list(itertools.product([1, 3], [True, False])))
def test_the_unpacked_state_agrees_with_the_plain_module(n, given):
    ours = compile_spec(UNPACKED, f"nest_unpacked_{n}_{given}")["NestUnpacked"]
    plain = compile_spec(UNPACKED.replace("@function\n", ""), f"nest_unpacked_plain_{n}_{given}")["NestUnpacked"]
    torch.manual_seed(0)
    m = ours(n=n, d_in=2, d=3, a=True).double()
    p = plain(n=n, d_in=2, d=3, a=True).double()
    p.load_state_dict(m.state_dict())
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(n, 2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    params = {name: v.detach().clone().requires_grad_() for name, v in m.named_parameters()}
    args = (x, hx) if given else (x,)
    got, want = (torch.func.functional_call(module, params, args) for module in (m, p))
    agree(got, want, [x, *(hx if given else ()), *params.values()])


# ------------------------------------------------------------------ torch.nn's LSTM


@pytest.fixture(scope="module")
def lstm(tmp_path_factory) -> tuple:
    """The package with `@function` on LSTM, and the plain one."""
    return torch_nn_with_and_without_function(tmp_path_factory.mktemp("lstm"), ["rnn.layer"], "LSTM", "lstm_function")


def test_lstm_is_a_function(lstm):
    function, _ = lstm
    assert hasattr(sys.modules[function.LSTM.__module__], "LSTMFunction")


def _state(layers: int, batch: int, real_hidden: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.randn(layers, batch, real_hidden, dtype=torch.float64, requires_grad=True),
        torch.randn(layers, batch, hidden, dtype=torch.float64, requires_grad=True),
    )


CONFIGS = list(itertools.product([1, 2], [True, False], [False, True], [False, True], [False, True], [0, 1]))


@pytest.mark.parametrize("layers, bias, bidirectional, batch_first, given, proj_size", CONFIGS)
def test_lstm_agrees_with_the_plain_module(lstm, layers, bias, bidirectional, batch_first, given, proj_size):
    function, plain = lstm
    kwargs = dict(
        num_layers=layers, bias=bias, bidirectional=bidirectional, batch_first=batch_first, proj_size=proj_size
    )
    torch.manual_seed(0)
    a = function.LSTM(3, 2, **kwargs).double()
    b = plain.LSTM(3, 2, **kwargs).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)  # [T, B] or [B, T] with batch_first
    state = _state(layers * (2 if bidirectional else 1), 2 if batch_first else 3, proj_size or 2, 2)
    args = (x, state) if given else (x,)
    params = {k: v.detach().clone().requires_grad_() for k, v in a.named_parameters()}
    for training in (True, False):
        a.train(training)
        b.train(training)
        got, want = (torch.func.functional_call(m, params, args) for m in (a, b))
        agree(got, want, [x, *(state if given else ()), *params.values()])


@pytest.mark.parametrize("given, proj_size", [(True, 0), (False, 1)])
def test_lstm_gradcheck_two_bidirectional_layers(lstm, given, proj_size):
    function, _ = lstm
    torch.manual_seed(0)
    m = function.LSTM(2, 2, num_layers=2, bidirectional=True, batch_first=True, proj_size=proj_size).double()
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    names = [k for k, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    if given:
        h0, c0 = _state(4, 2, 2, 2)

        def run(x, h0, c0, *rest):
            return torch.func.functional_call(m, dict(zip(names, rest)), (x, (h0, c0)))

        checked(run, [x, h0, c0, *params])
    else:
        checked(lambda x, *rest: torch.func.functional_call(m, dict(zip(names, rest)), (x,)), [x, *params])
