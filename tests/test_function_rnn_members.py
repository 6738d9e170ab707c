"""torch.nn's RNN and GRU under `@function`: a forward with loops holding loops whose `if`s are
segments of their own (`plan._fewest_ways`) makes few copies of the nest.

- An optional member added to a value (`+ bias_hh_l{k}`, `param ... if bias`) is read through a local an
  `if` binds, zeros of its shape where it is not built (`autodiff.member_locals`): one plan, not one with
  the member and one without.
- The loop over a family's members from 1 on goes into the `if n > 0` of its first step (`peel.rest_under_first`),
  and the side with no loop is a loop Function too (`plan._as_loop_plan`): no copy of the loop on the side
  where `n > 0` fails.

Against the plain module in float64 (outputs, first and second derivatives; gradcheck and gradgradcheck):
num_layers 1 and 2, bias, bidirectional, batch_first, with and without the state, train and eval."""

from __future__ import annotations

import itertools

import pytest
import torch

from layerdsl.autodiff import plan
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import agree, checked
from .support import TORCH_NN_SPECS, compile_spec, torch_nn_with_and_without_function

# a nest with three `if`s on flags and whether the state is given: 16 ways, each `if` a segment of its own;
# an optional bias added at each step, a first member of its own shape
MEMBERS = """@function
layer NestMembers(n: int, d_in: int, d: int, bias: bool = true, a: bool = false, b: bool = false, c: bool = false) {
    for k in range(n) {
        param w_l{k}: [d_in if k == 0 else d, d] = uniform(-0.5, 0.5)
        param u_l{k}: [d, d] = uniform(-0.5, 0.5)
        param b_l{k}: [d] = uniform(-0.5, 0.5) if bias
    }
    example(n = 2, d_in = 2, d = 3)
    forward(input: [B, T, d_in], hx: [..., d]? = none) {
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
            g = x @ w_l{k}
            outputs = []
            for t in range(T) {
                h = tanh(g[..., t, :] + h @ u_l{k} + b_l{k})
                outputs.append(h)
            }
            finals.append(h)
            x = stack(outputs, dim = -2)
        }
        return x, stack(finals, dim = 0)
    }
}
"""


def _nests(text: str, name: str) -> int:
    spec = parse_file("members.layer", text)
    check_program([spec])
    plans, problems = plan.plan_backwards([spec])
    assert not problems, problems
    return len(plan._nests(plans[name]))


def test_the_nest_is_planned_once_for_a_bias_and_a_first_member_of_its_own():
    """Without the local, a plan with the bias and one without; without the loop over the rest under
    `if n > 0`, a copy of it on either side of the `if`: 4 in all."""
    assert _nests(MEMBERS, "NestMembers") == 1


@pytest.fixture(scope="module")
def members() -> tuple:
    """The @function NestMembers, the plain one, and the Function's source."""
    ours = compile_spec(MEMBERS, "nest_members")
    plain = compile_spec(MEMBERS.replace("@function\n", ""), "nest_members_plain")
    source = ours["SOURCE"]
    return ours["NestMembers"], plain["NestMembers"], source[: source.index("class NestMembers(")]


def _pair(members, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    ours, plain, _ = members
    torch.manual_seed(0)
    a = ours(**kwargs).double()
    b = plain(**kwargs).double()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("n, bias, given", list(itertools.product([1, 3], [True, False], [True, False])))
def test_the_nest_written_once_agrees_with_the_plain_module(members, n, bias, given):
    assert members[2].count("for k in range(") == 1  # the loop over the members from 1 on, in forward
    m, p = _pair(members, n=n, d_in=2, d=3, bias=bias, a=True)
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(n, 2, 3, dtype=torch.float64, requires_grad=True)
    params = {name: v.detach().clone().requires_grad_() for name, v in m.named_parameters()}
    args = (x, hx) if given else (x,)
    got, want = (torch.func.functional_call(module, params, args) for module in (m, p))
    agree(got, want, [*args, *params.values()])


def test_the_function_adds_the_bias_or_zeros(members):
    assert "b_l0_or_zeros" in members[2]
    m, _ = _pair(members, n=2, d_in=2, d=2, bias=False)
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True)
    checked(lambda x, hx: m(x, hx), [x, hx])


# ------------------------------------------------------------------ torch.nn's RNN and GRU

RNNS = ("RNN", "GRU")  # LSTM: tests/test_function_lstm.py


@pytest.fixture(scope="module")
def rnns(tmp_path_factory) -> dict:
    """Each layer's package with `@function` on it, and the plain one."""
    out = {}
    for name in RNNS:
        root = tmp_path_factory.mktemp(name.lower())
        out[name] = torch_nn_with_and_without_function(root, ["rnn.layer"], name, f"rnn_members_{name.lower()}")
    return out


@pytest.mark.parametrize("name, most", [("RNN", 4), ("GRU", 2)])
def test_the_rnns_make_few_copies_of_their_nest(name, most):
    """bidirectional or not (and RNN's nonlinearity, an `if` in the step): past MAX_NEST_COPIES before."""
    text = (TORCH_NN_SPECS / "rnn.layer").read_text().replace(f"\nlayer {name}(", f"\n@function\nlayer {name}(")
    assert _nests(text, name) == most


CONFIGS = list(itertools.product([1, 2], [True, False], [False, True], [False, True], [False, True]))


def _state(layers: int, batch: int, hidden: int) -> torch.Tensor:
    return torch.randn(layers, batch, hidden, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("name", RNNS)
@pytest.mark.parametrize("layers, bias, bidirectional, batch_first, given", CONFIGS)
def test_the_rnns_agree_with_the_plain_module(rnns, name, layers, bias, bidirectional, batch_first, given):
    function, plain = rnns[name]
    kwargs = dict(num_layers=layers, bias=bias, bidirectional=bidirectional, batch_first=batch_first)
    torch.manual_seed(0)
    a = getattr(function, name)(3, 2, **kwargs).double()
    b = getattr(plain, name)(3, 2, **kwargs).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)  # [T, B] or [B, T] with batch_first
    state = _state(layers * (2 if bidirectional else 1), 2 if batch_first else 3, 2)
    args = (x, state) if given else (x,)
    params = {k: v.detach().clone().requires_grad_() for k, v in a.named_parameters()}
    for training in (True, False):
        a.train(training)
        b.train(training)
        got, want = (torch.func.functional_call(m, params, args) for m in (a, b))
        agree(got, want, [*args, *params.values()])


@pytest.mark.parametrize("name, extra", [("RNN", {"nonlinearity": "relu"}), ("GRU", {})], ids=["RNN-relu", "GRU"])
def test_gradcheck_two_bidirectional_layers(rnns, name, extra):
    function, _ = rnns[name]
    torch.manual_seed(0)
    m = getattr(function, name)(2, 2, num_layers=2, bidirectional=True, batch_first=True, **extra).double()
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    names = [k for k, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def run(x, state, *rest):
        return torch.func.functional_call(m, dict(zip(names, rest)), (x, state))

    checked(run, [x, _state(4, 2, 2), *params])


@pytest.mark.parametrize("bias", [True, False])
def test_the_relu_side_agrees(rnns, bias):
    function, plain = rnns["RNN"]
    kwargs = dict(num_layers=2, bias=bias, bidirectional=True, nonlinearity="relu")
    torch.manual_seed(0)
    a = function.RNN(3, 2, **kwargs).double()
    b = plain.RNN(3, 2, **kwargs).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    state = _state(4, 2, 2)
    params = {k: v.detach().clone().requires_grad_() for k, v in a.named_parameters()}
    got, want = (torch.func.functional_call(m, params, (x, state)) for m in (a, b))
    agree(got, want, [x, state, *params.values()])
