"""`@function` layers that read sizes and ranks of tensors forward computes, as attention and recurrent layers
do: `size_at(x, k)` of a local followed back to an input's size through views, elementwise operations,
matmul and cat (on each side of the layout `if`s, negative dims on `[..., d]` shapes included), `h.ndim`
of a local, and subs inlined whose members are shaped by an `ints` argument (LayerNorm's) or whose flag
inputs are passed as values. Against the functional form (plain autograd): outputs, first and second
derivatives, gradcheck and gradgradcheck in float64."""

from __future__ import annotations

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .function_agreement import agree, checked, double
from .support import compile_spec

SPEC = """
@function
layer SeqMean(batch_first: bool = false) {
    forward(input: [..., d]) {
        if batch_first {
            x = input
        } else {
            x = transpose(input, 0, -2)
        }
        T = size_at(x, -2)
        return sum(sin(x), dim = -2) / T
    }
}

@function
layer TimeScan(d: int) {
    param w: [d, d]
    example(d = 3)
    forward(input: [..., d]) {
        x = transpose(input, 0, -2)
        h = new_zeros(x, [size_at(x, 0), d])
        for t in range(size_at(x, -2)) {
            h = tanh(h @ w + x[..., t, :])
        }
        return h
    }
}

@function
layer HeadAttention(embed_dim: int, num_heads: int, batch_first: bool = false) {
    param in_proj_weight: [3 * embed_dim, embed_dim] = xavier_uniform
    let head_dim = embed_dim // num_heads
    example(embed_dim = 4, num_heads = 2)
    forward(query: [..., embed_dim]) {
        if query.ndim == 2 {
            q_in = unsqueeze(query, 1)
        } else if batch_first {
            q_in = transpose(query, 0, 1)
        } else {
            q_in = query
        }
        tgt_len = size_at(q_in, 0)
        bsz = size_at(q_in, 1)
        w_q, w_k, w_v = chunk(in_proj_weight, 3)
        q = transpose(transpose(reshape(q_in @ transpose(w_q, 0, 1), [tgt_len, bsz, num_heads, head_dim]), 0, 1), 1, 2)
        k = transpose(transpose(reshape(q_in @ transpose(w_k, 0, 1), [tgt_len, bsz, num_heads, head_dim]), 0, 1), 1, 2)
        v = transpose(transpose(reshape(q_in @ transpose(w_v, 0, 1), [tgt_len, bsz, num_heads, head_dim]), 0, 1), 1, 2)
        weights = softmax(q @ transpose(k, -2, -1) / sqrt(head_dim), -1)
        attended = reshape(transpose(transpose(weights @ v, 1, 2), 0, 1), [tgt_len, bsz, num_heads * head_dim])
        out = attended * (size_at(weights, -1) + size_at(q, 0))
        if query.ndim == 2 {
            return squeeze(out, 1)
        }
        if batch_first {
            return transpose(out, 0, 1)
        }
        return out
    }
}

@function
layer KeysWithBias(d: int) {
    param w: [d, d]
    param bias_k: [1, 1, d]
    example(d = 3)
    forward(x: [N, S, d]) {
        k = transpose(x, 0, 1) @ w
        k = cat([k, expand(bias_k, [1, N, d])], dim = 0)
        return sin(k) / size_at(k, 0) * size_at(k, -2)
    }
}

@function
layer RankOfLocal() {
    forward(x: [...]) {
        h = sin(x)
        if h.ndim == 2 {
            return h @ transpose(h, 0, 1)
        }
        return h * size_at(unsqueeze(h, 0), 0)
    }
}

@function
layer ViewSizes() {
    forward(x: [...]) {
        p = transpose(transpose(x, 0, 2), 1, 2)
        s = stack([p, p], dim = 1)
        u = unsqueeze(x, -1)
        scale = size_at(p, 0) + size_at(s, 1) * size_at(s, 3) + size_at(u, -2) * size_at(squeeze(p, 2), 0)
        return sin(s) * scale
    }
}

layer Norm(normalized_shape: ints, eps: float = 1e-5) {
    param weight: normalized_shape = ones
    param bias: normalized_shape = zeros
    example(normalized_shape = 4, N = 4)
    forward(input: [..., N]) -> [..., N] {
        return layer_norm(input, normalized_shape, weight, bias, eps)
    }
}

layer Scored(d: int) {
    param w: [d, d]
    example(d = 3)
    forward(x: [..., d], need_scores: bool = true) {
        y = tanh(x @ w)
        if not need_scores {
            return y, none
        }
        return y, sum(y, dim = -1)
    }
}

@function
layer NormedScores(d: int) {
    sub norm = Norm(d)
    sub wide = Norm([2, d])
    sub inner = Scored(d)
    example(d = 3)
    forward(x: [..., 2, d]) {
        y, s = inner(norm(wide(x)), false)
        return sin(y)
    }
}

@function
layer NormOver(shape: ints) {
    sub norm = Norm(shape)
    example(shape = [2, 3])
    forward(x: [...]) {
        return tanh(norm(x))
    }
}
"""


@pytest.fixture(scope="module")
def ns() -> dict:
    return compile_spec(SPEC, "function_attention")


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("shape", [(5, 3), (5, 2, 3), (4, 2, 2, 3)])
def test_a_size_of_a_transposed_input_is_measured_on_each_side(ns, batch_first, shape):
    torch.manual_seed(0)
    x = double(*shape)
    agree(ns["SeqMean"](batch_first=batch_first)(x), ns["seq_mean"](x, batch_first=batch_first), [x])
    checked(lambda x: _first(ns["SeqMeanFunction"].apply(x, batch_first)), [x])


def test_the_size_kept_on_ctx_is_the_inputs_dim_the_side_reads(ns):
    x = double(5, 2, 3)
    # transpose(input, 0, -2) at -2 is input's 0; input itself at -2 when batch first
    assert _first(ns["SeqMeanFunction"].apply(x, False)).grad_fn.input_size0 == 5
    assert _first(ns["SeqMeanFunction"].apply(x, True)).grad_fn.input_size_last2 == 2


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_a_loop_counts_the_steps_of_a_transposed_input(ns, steps):
    torch.manual_seed(1)
    layer = ns["TimeScan"](3, dtype=torch.float64)
    x = double(steps, 2, 3)
    agree(layer(x), ns["time_scan"](x, layer.w, d=3), [x, layer.w])
    checked(lambda x, w: _first(ns["TimeScanFunction"].apply(x, w, 3)), [x, layer.w])


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("shape", [(3, 4), (3, 2, 4)])
def test_attention_heads_are_sized_from_the_query_on_each_layout(ns, batch_first, shape):
    torch.manual_seed(2)
    layer = ns["HeadAttention"](4, 2, batch_first=batch_first, dtype=torch.float64)
    x = double(*shape)
    w = layer.in_proj_weight
    agree(layer(x), ns["head_attention"](x, w, embed_dim=4, num_heads=2, batch_first=batch_first), [x, w])
    checked(lambda x, w: _first(ns["HeadAttentionFunction"].apply(x, w, 2, batch_first, 2)), [x, w])


def test_sizes_through_matmul_cat_and_expand_are_the_declared_dims(ns):
    torch.manual_seed(3)
    layer = ns["KeysWithBias"](3, dtype=torch.float64)
    x = double(2, 4, 3)
    y = layer(x)
    assert tuple(y.shape) == (5, 2, 3)
    agree(y, ns["keys_with_bias"](x, layer.w, layer.bias_k, d=3), [x, layer.w, layer.bias_k])
    checked(lambda *a: _first(ns["KeysWithBiasFunction"].apply(*a, 3)), [x, layer.w, layer.bias_k])


@pytest.mark.parametrize("shape", [(3, 2), (2, 3, 2)])
def test_the_rank_of_a_local_is_its_inputs(ns, shape):
    torch.manual_seed(4)
    x = double(*shape)
    agree(ns["RankOfLocal"]()(x), ns["rank_of_local"](x), [x])
    checked(lambda x: _first(ns["RankOfLocalFunction"].apply(x)), [x])


def test_sizes_through_transposes_stack_unsqueeze_and_squeeze(ns):
    torch.manual_seed(7)
    x = double(2, 3, 4)  # distinct sizes: a dim mapped wrongly changes the scale
    y = _first(ns["ViewSizesFunction"].apply(x))
    assert y.grad_fn.x_size2 == 4 and y.grad_fn.x_size1 == 3
    agree(ns["ViewSizes"]()(x), ns["view_sizes"](x), [x])
    checked(lambda x: _first(ns["ViewSizesFunction"].apply(x)), [x])


def test_subs_with_members_shaped_by_ints_and_a_flag_given_as_a_value_inline(ns):
    torch.manual_seed(5)
    layer = ns["NormedScores"](3, dtype=torch.float64)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-1, 1)
    assert tuple(layer.wide.weight.shape) == (2, 3) and tuple(layer.norm.weight.shape) == (3,)
    x = double(4, 2, 3)
    y = layer(x)
    assert "NormedScoresBackward" in type(y.grad_fn).__name__ or "Function" in type(y.grad_fn).__name__
    plain = torch.sin(
        torch.tanh(
            ns["norm"](
                ns["norm"](x, layer.wide.weight, layer.wide.bias, normalized_shape=[2, 3]),
                layer.norm.weight,
                layer.norm.bias,
                normalized_shape=[3],
            )
            @ layer.inner.w
        )
    )
    agree(y, plain, [x, *layer.parameters()])
    # the Function takes the subs' members as `inner_w` (passed as `self.inner.w`) after the input
    members = [layer.get_parameter(name.replace("_", ".", 1)) for name in ("inner_w", "wide_weight", "wide_bias")]
    members += [layer.norm.weight, layer.norm.bias]
    checked(lambda x, *ps: _first(ns["NormedScoresFunction"].apply(x, *ps, 3)), [x, *members])


def test_a_member_shaped_by_the_outer_layers_ints_argument(ns):
    torch.manual_seed(6)
    layer = ns["NormOver"]([2, 3], dtype=torch.float64)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-1, 1)
    x = double(4, 2, 3)
    plain = torch.tanh(ns["norm"](x, layer.norm.weight, layer.norm.bias, normalized_shape=[2, 3]))
    agree(layer(x), plain, [x, *layer.parameters()])


REFUSED = """
@function
layer RowCount() {
    param w: [3, 3]
    forward(x: [..., 3]) {
        h = x @ w
        return h / size_at(h, 0)
    }
}
"""


def test_a_size_the_ranks_do_not_decide_stays_a_located_error():
    spec = parse_file("refused.layer", REFUSED)
    check_program([spec])
    _, problems = plan_backwards([spec])
    (problem,) = problems
    assert (problem.span.line, problem.span.col) == (7, 28)
    assert "`h` is a tensor forward computes, whose size there is not followed back" in problem.message
    assert "measure the input it is computed from" in (problem.hint or "")
