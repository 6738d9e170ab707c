"""`@function` layers taking every input form torch.nn's specs use: flags (`scaled: bool = true`), tuple
inputs (`hx: ([B, n], [B, n])? = none`), inputs of alternatives (`targets: long[N, S] | long[L]`, `lengths:
long[N] | ints`) and an `fn | "relu" | "gelu"` argument. Each layer's Function is compared with its
functional form (plain autograd): outputs, gradients, and gradcheck and gradgradcheck in float64, for each
flag value, alternative and choice."""

from __future__ import annotations

import pytest
import torch

from .function_agreement import agree, checked, double
from .support import compile_spec

SPEC = """
@function
layer FlagScale(n: int) {
    param w: [n] = ones

    example(n = 4)

    forward(x: [B, n], scaled: bool = true, squash: bool = false) -> [B, n] {
        h = x * w
        if scaled {
            h = h * sigmoid(x)
        }
        if not squash {
            return h
        }
        return tanh(h)
    }
}

@function
layer Attend(n: int) {
    param w: [n, n] = uniform(-0.5, 0.5)

    example(n = 4)

    forward(x: [B, T, n], need_weights: bool = true, average_attn_weights: bool = true) {
        weights = softmax((x @ w) @ transpose(x, -2, -1), -1)
        out = weights @ x
        if not need_weights {
            return out, none
        }
        if average_attn_weights {
            weights = mean(weights, dim = 0)
        }
        return out, weights
    }
}

@function
layer FlagSum(n: int) {
    example(n = 4)

    forward(x: [B, n], keep: bool = false) {
        return sum(x * x, dim = -1, keepdim = keep)
    }
}

@function
layer Cell(input_size: int, hidden_size: int) {
    param weight_ih: [4 * hidden_size, input_size] = uniform(-0.5, 0.5)
    param weight_hh: [4 * hidden_size, hidden_size] = uniform(-0.5, 0.5)

    example(input_size = 3, hidden_size = 2)

    forward(
        input: [..., input_size],
        hx: ([..., hidden_size], [..., hidden_size])? = none,
    ) -> ([..., hidden_size], [..., hidden_size]) {
        gates = input @ transpose(weight_ih, 0, 1)
        if hx != none {
            h, c = hx
            gates = gates + h @ transpose(weight_hh, 0, 1)
        }
        i = sigmoid(gates[..., 0:hidden_size])
        f = sigmoid(gates[..., hidden_size : 2 * hidden_size])
        g = tanh(gates[..., 2 * hidden_size : 3 * hidden_size])
        o = sigmoid(gates[..., 3 * hidden_size : 4 * hidden_size])
        c_next = i * g
        if hx != none {
            h, c = hx
            c_next = f * c + c_next
        }
        return o * tanh(c_next), c_next
    }
}

@function
layer PairProduct(n: int) {
    param w: [n] = ones

    example(n = 4)

    forward(x: [B, n], pair: ([B, n], [B, n])) -> [B, n] {
        a, b = pair
        return x * w + a * b
    }
}

@function
layer CTCLoss(blank: int = 0, reduction: str = "mean", zero_infinity: bool = false) {
    example(blank = 4, zero_infinity = true, C = 5)

    forward(
        log_probs: [T, N, C],
        targets: long[N, S] | long[L],
        input_lengths: long[N] | ints,
        target_lengths: long[N] | ints,
    ) {
        return ctc_loss(
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            blank = blank,
            reduction = reduction,
            zero_infinity = zero_infinity,
        )
    }
}

@function
layer EitherRank(n: int) {
    param w: [n] = ones

    example(n = 4)

    forward(x: [B, n] | [n], y: [B, n]) {
        return sum(x * w, dim = -1) * sum(y, dim = -1)
    }
}

@function
layer FeedForward(n: int, activation: fn | "relu" | "gelu" = "relu") {
    param w: [n, n] = uniform(-0.5, 0.5)

    example(n = 4)

    forward(x: [B, n]) -> [B, n] {
        h = x @ w
        if activation == "relu" {
            h = relu(h)
        } else if activation == "gelu" {
            h = gelu(h)
        } else {
            h = activation(h)
        }
        return h * x
    }
}

@function
layer MixedIndex(n: int) {
    param w: [n, n, n] = uniform(0.5, 1.5)

    example(n = 4)

    forward(x: [n, n, n], idx: long[K], pairs: long[P, Q]) {
        y = x * w
        return y[idx, 1:], y[:, 0, idx], y[1:, idx, -1], y[..., pairs, 2:], y[0, pairs, pairs]
    }
}

@function
layer KDimLoss(n: int, c: int, d: int, reduction: str = "mean") {
    param w: [c, d, n] = uniform(-0.5, 0.5)
    param b: [c, d] = uniform(-0.5, 0.5)

    example(n = 4, c = 3, d = 2)

    forward(x: [B, n], t: long[B, d]) {
        return linear_cross_entropy(x, w, t, linear_bias = b, reduction = reduction)
    }
}

@function
layer MaybeActivated(activation: fn? = none) {
    forward(x: [B, N]) -> [B, N] {
        if activation != none {
            return activation(x)
        }
        return x * x
    }
}
"""


@pytest.fixture(scope="module")
def ns() -> dict:
    return compile_spec(SPEC, "function_inputs")


@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("squash", [True, False])
def test_a_flag_chooses_the_side_in_forward_and_backward(ns, scaled, squash):
    torch.manual_seed(0)
    layer = ns["FlagScale"](4, dtype=torch.float64)
    with torch.no_grad():
        layer.w.uniform_(0.5, 1.5)
    x = double(3, 4)
    got = layer(x, scaled=scaled, squash=squash)
    agree(got, ns["flag_scale"](x, layer.w, scaled=scaled, squash=squash), [x, layer.w])
    checked(lambda x, w: ns["FlagScaleFunction"].apply(x, scaled, squash, w), [x, layer.w])


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("average", [True, False])
def test_flags_choose_whether_an_output_is_none_as_multihead_attention_does(ns, need_weights, average):
    torch.manual_seed(0)
    layer = ns["Attend"](4, dtype=torch.float64)
    x = double(2, 3, 4)
    got = layer(x, need_weights=need_weights, average_attn_weights=average)
    want = ns["attend"](x, layer.w, need_weights=need_weights, average_attn_weights=average)
    assert (got[1] is None) == (not need_weights) == (want[1] is None)
    given = [o for o in got if o is not None]
    agree(tuple(given), tuple(o for o in want if o is not None), [x, layer.w])

    def apply(x, w):
        outs = ns["AttendFunction"].apply(x, need_weights, average, w)[:2]
        return tuple(o for o in outs if o is not None)

    checked(apply, [x, layer.w])


@pytest.mark.parametrize("keep", [True, False])
def test_a_flag_given_to_an_operation_is_kept_for_backward(ns, keep):
    torch.manual_seed(0)
    layer = ns["FlagSum"](4)
    x = double(3, 4)
    got = layer(x, keep=keep)
    assert got.shape == ((3, 1) if keep else (3,))
    agree(got, ns["flag_sum"](x, keep=keep, n=4), [x])
    checked(lambda x: ns["FlagSumFunction"].apply(x, keep), [x])


def test_a_flag_is_a_bool_of_the_function_with_no_gradient(ns):
    source = ns["FlagScaleFunction"].forward.__annotations__
    assert source["scaled"] == "bool" and source["squash"] == "bool"
    x = double(2, 4)
    w = torch.ones(4, dtype=torch.float64, requires_grad=True)
    y = ns["FlagScaleFunction"].apply(x, True, False, w)
    assert y.grad_fn is not None
    gx, gw = torch.autograd.grad(y.sum(), [x, w])
    assert gx.shape == x.shape and gw.shape == w.shape


@pytest.mark.parametrize("given", [True, False])
def test_a_tuple_input_is_taken_as_its_tensors(ns, given):
    torch.manual_seed(0)
    layer = ns["Cell"](3, 2, dtype=torch.float64)
    x = double(5, 3)
    hx = (double(5, 2), double(5, 2)) if given else None
    got = layer(x, hx)
    want = ns["cell"](x, layer.weight_ih, layer.weight_hh, hx=hx, hidden_size=2)
    read = [layer.weight_ih, layer.weight_hh] if given else [layer.weight_ih]  # weight_hh multiplies h
    agree(got, want, [x, *read, *(hx or ())])

    def apply(x, weight_ih, *parts):
        h, c = parts if given else (None, None)
        return ns["CellFunction"].apply(x, h, c, weight_ih, layer.weight_hh, 2)[:2]

    checked(apply, [x, layer.weight_ih, *(hx or ())])


def test_a_required_tuple_input_gives_a_gradient_to_each_tensor(ns):
    torch.manual_seed(0)
    layer = ns["PairProduct"](4, dtype=torch.float64)
    x, a, b = double(3, 4), double(3, 4), double(3, 4)
    agree(layer(x, (a, b)), ns["pair_product"](x, (a, b), layer.w), [x, a, b, layer.w])
    checked(lambda x, a, b, w: ns["PairProductFunction"].apply(x, a, b, w), [x, a, b, layer.w])


def _ctc_case(padded: bool, as_ints: bool):
    torch.manual_seed(0)
    log_probs = torch.randn(6, 2, 5, dtype=torch.float64).log_softmax(-1).detach().requires_grad_()
    target_lengths = torch.tensor([3, 2])
    if padded:
        targets = torch.randint(0, 4, (2, 3))
    else:
        targets = torch.randint(0, 4, (int(target_lengths.sum()),))
    input_lengths = torch.tensor([6, 5])
    if as_ints:
        return log_probs, targets, tuple(input_lengths.tolist()), tuple(target_lengths.tolist())
    return log_probs, targets, input_lengths, target_lengths


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("as_ints", [True, False])
def test_inputs_of_alternatives_and_tuples_of_ints_pass_through(ns, reduction, padded, as_ints):
    log_probs, targets, input_lengths, target_lengths = _ctc_case(padded, as_ints)
    layer = ns["CTCLoss"](blank=4, reduction=reduction)
    got = layer(log_probs, targets, input_lengths, target_lengths)
    want = ns["ctc_loss"](log_probs, targets, input_lengths, target_lengths, blank=4, reduction=reduction)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(
        want, torch.nn.functional.ctc_loss(log_probs, targets, input_lengths, target_lengths, 4, reduction)
    )
    seed = torch.randn_like(want)
    torch.testing.assert_close(
        torch.autograd.grad(got, log_probs, seed)[0], torch.autograd.grad(want, log_probs, seed)[0]
    )
    function = ns["CTCLossFunction"]
    args = (targets, input_lengths, target_lengths, 4, reduction, False)
    # torch's CTC gradient assumes normalised log-probabilities: checked through log_softmax, as torch's are
    scores = torch.randn(6, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: function.apply(s.log_softmax(-1), *args), [scores])
    # torch's own CTC backward (`_ctc_loss_backward`) has no derivative: neither has the plain module's


@pytest.mark.parametrize("rank", [1, 2])
def test_a_float_input_of_alternatives_derives_at_either_rank(ns, rank):
    torch.manual_seed(0)
    layer = ns["EitherRank"](4, dtype=torch.float64)
    with torch.no_grad():
        layer.w.uniform_(0.5, 1.5)
    x, y = double(*([3, 4] if rank == 2 else [4])), double(3, 4)
    agree(layer(x, y), ns["either_rank"](x, y, layer.w), [x, y, layer.w])
    checked(lambda x, y, w: ns["EitherRankFunction"].apply(x, y, w), [x, y, layer.w])


@pytest.mark.parametrize("activation", ["relu", "gelu", torch.nn.functional.silu])
def test_each_string_choice_derives_and_a_callable_runs_the_plain_forward(ns, activation):
    torch.manual_seed(0)
    layer = ns["FeedForward"](4, activation=activation, dtype=torch.float64)
    x = double(3, 4)
    got = layer(x)
    backward = type(got.grad_fn).__name__
    if isinstance(activation, str):
        assert backward.startswith("FeedForwardFunction"), backward
        checked(lambda x, w: ns["FeedForwardFunction"].apply(x, w, activation)[0], [x, layer.w])
    else:  # a callable has no derivative the Function knows: autograd's
        assert "FeedForwardFunction" not in backward
        checked(layer, [x])
    agree(got, ns["feed_forward"](x, layer.w, activation=activation), [x, layer.w])


@pytest.mark.parametrize("activation", [None, torch.tanh])
def test_an_optional_callable_derives_when_none(ns, activation):
    layer = ns["MaybeActivated"](activation=activation)
    x = double(3, 4)
    got = layer(x)
    assert ("MaybeActivatedFunction" in type(got.grad_fn).__name__) == (activation is None)
    agree(got, ns["maybe_activated"](x, activation=activation), [x])
    checked(layer, [x])


def test_index_tensors_mixed_with_slices_and_adjacent_ints(ns):
    torch.manual_seed(0)
    layer = ns["MixedIndex"](4, dtype=torch.float64)
    x = double(4, 4, 4)
    idx, pairs = torch.tensor([3, 0, 3]), torch.tensor([[1, 2], [0, 0]])
    got = layer(x, idx, pairs)
    want = ns["mixed_index"](x, idx, pairs, layer.w)
    y = x * layer.w
    expected = (y[idx, 1:], y[:, 0, idx], y[1:, idx, -1], y[..., pairs, 2:], y[0, pairs, pairs])
    assert [tuple(g.shape) for g in got] == [tuple(e.shape) for e in expected]
    agree(got, want, [x, layer.w])
    checked(lambda x, w: ns["MixedIndexFunction"].apply(x, idx, pairs, w)[:5], [x, layer.w])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_a_k_dimensional_linear_cross_entropy_derives(ns, reduction):
    torch.manual_seed(0)
    layer = ns["KDimLoss"](4, 3, 2, reduction=reduction, dtype=torch.float64)
    x, t = double(5, 4), torch.randint(0, 3, (5, 2))
    got = layer(x, t)
    members = [layer.w, layer.b]
    torch.testing.assert_close(
        got, torch.nn.functional.linear_cross_entropy(x, *members[:1], t, linear_bias=layer.b, reduction=reduction)
    )
    agree(got, ns["k_dim_loss"](x, t, *members, reduction=reduction), [x, *members])
    function = ns["KDimLossFunction"]
    checked(lambda x, w, b: function.apply(x, t, w, b, reduction)[0], [x, *members])
