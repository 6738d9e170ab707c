"""Index notation: each shipped spec against an independent torch reference, what the Function saves,
run-time size checks, and a differential test of random index statements."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .support import compile_spec

D = torch.float64


def test_quadratic_form_matches_a_loop(gen):
    m = gen.QuadraticForm(4, 3, dtype=D)
    x = torch.randn(5, 4, dtype=D)
    want = torch.stack([torch.stack([x[b] @ m.weight[:, :, k] @ x[b] for k in range(3)]) for b in range(5)])
    assert torch.allclose(m(x), want)
    f = gen.QuadraticFormFunctional(4, 3, dtype=D)
    f.load_state_dict(m.state_dict())
    assert torch.allclose(f(x), want)


def test_attention_scores(gen):
    q, k = torch.randn(2, 3, 8, dtype=D), torch.randn(2, 5, 8, dtype=D)
    assert torch.allclose(gen.AttentionScores(8)(q, k), q @ k.transpose(1, 2) / 8**0.5)


def test_index_channel_norm_equals_the_plain_one(gen):
    torch.manual_seed(0)
    plain, indexed = gen.ChannelNorm(3, dtype=D), gen.ChannelNormIndexed(3, dtype=D)
    with torch.no_grad():
        for m in (plain, indexed):
            m.weight.copy_(torch.tensor([0.5, 1.0, 2.0], dtype=D).view_as(m.weight))
            m.bias.copy_(torch.tensor([0.1, -0.2, 0.3], dtype=D).view_as(m.bias))
    x = torch.randn(2, 3, 4, 5, dtype=D, requires_grad=True)
    a, b = plain(x), indexed(x)
    assert torch.allclose(a, b)
    ref = torch.nn.functional.instance_norm(x, eps=1e-5) * plain.weight + plain.bias
    assert torch.allclose(a, ref, atol=1e-6)
    ga = torch.autograd.grad(a.sum() + (a**2).sum(), x)[0]
    gb = torch.autograd.grad(b.sum() + (b**2).sum(), x)[0]
    assert torch.allclose(ga, gb)


def test_bilinear_matches_torch(gen):
    m = gen.BilinearForm(4, 5, 3, dtype=D)
    with torch.no_grad():
        m.bias.uniform_()
    x1, x2 = torch.randn(6, 4, dtype=D), torch.randn(6, 5, dtype=D)
    assert torch.allclose(m(x1, x2), torch.nn.functional.bilinear(x1, x2, m.weight, m.bias))


def test_index_softmax_matches_torch(gen):
    x = torch.randn(3, 7, dtype=D) * 30
    assert torch.allclose(gen.IndexSoftmax()(x), torch.softmax(x, dim=-1))


def test_quadratic_form_function_keeps_no_batch_by_in_by_out_intermediate(gen):
    from .test_function import _saved_storages

    m = gen.QuadraticFormFunctional(16, 8)
    x = torch.randn(64, 16, requires_grad=True)
    saved = _saved_storages(m, x)
    assert saved == (x.numel() + m.weight.numel()) * 4
    assert saved < 64 * 16 * 8 * 4  # [B, in, out] would be this big alone


def test_einsum_is_emitted_with_the_specs_index_names(gen):
    import inspect

    assert 'torch.einsum("ijk,bi,bj->bk", weight, x, x)' in inspect.getsource(
        type(gen.QuadraticForm(2, 2)).forward.__globals__["quadratic_form"]
    )


SPEC_MISMATCH = """
layer Mix(n: int, m: int) {
    param w: [m, m] = ones
    example(n = 3, m = 3)

    forward(x) {
        y[b, k] = sum[i](x[b, i] * w[i, k])
        return y
    }
}
"""  # `x` has no declared shape, so the sizes of `i` are compared at run time (declared, it is a static error)


def _build(source: str) -> dict:
    return compile_spec(source, "mix")


def test_an_index_with_two_sizes_is_a_value_error_naming_both():
    ns = _build(SPEC_MISMATCH)
    layer = ns["Mix"](4, 3)
    with pytest.raises(ValueError) as err:
        layer(torch.randn(2, 4))
    msg = str(err.value)
    assert "Mix" in msg and "index 'i'" in msg and "'x'" in msg and "'w'" in msg and "4" in msg and "3" in msg


# ------------------------------------------------------------------ differential


@st.composite
def index_rhs(draw, depth=2):
    """A random right side for y[b, i] over x[b, i], v[i], m[i, j], u[b, j], with bound indices."""
    leaves = [
        "x[b, i]",
        "v[i]",
        "u[b, i]",
        "sum[j](m[i, j] * u[b, j])",
        "sum[j](x[b, j] * m[j, i])",
        "mean[j](m[i, j] * v[j])",
    ]
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return draw(st.sampled_from(leaves))
    kind = draw(st.sampled_from(["bin", "un", "red"]))
    a = draw(index_rhs(depth - 1))
    if kind == "un":
        return f"{draw(st.sampled_from(['tanh', 'sigmoid', 'exp', 'sin']))}({a})"
    if kind == "red":
        inner = (
            a.replace("[b, i]", "[b, k]")
            .replace("v[i]", "v[k]")
            .replace("m[i, j]", "m[k, j]")
            .replace("m[j, i]", "m[j, k]")
        )
        return f"({a} - {draw(st.sampled_from(['amax', 'sum', 'mean']))}[k]({inner}))"
    b = draw(index_rhs(depth - 1))
    return f"({a} {draw(st.sampled_from(['+', '-', '*']))} {b})"


DIFF_SPEC = """
@function
layer Ix(n: int) {{
    param v: [n] = uniform(0.5, 1.5)
    param m: [n, n] = uniform(-0.5, 0.5)
    example(n = 4)

    forward(x: [B, n], u: [B, n]) -> [B, n] {{
        y[b, i] = u[b, i] * {rhs}
        return y
    }}
}}
"""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index_rhs())
def test_derived_backward_through_index_statements_matches_autograd(rhs):
    ns = compile_spec(DIFF_SPEC.format(rhs=rhs), "ix")
    torch.manual_seed(0)
    layer = ns["Ix"](4, dtype=D)
    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    u = torch.randn(3, 4, dtype=D, requires_grad=True)
    got = ns["IxFunction"].apply(x, u, layer.v, layer.m)
    got = got[0] if isinstance(got, tuple) else got
    want = ns["ix"](x, u, layer.v, layer.m)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-10), rhs
    seed = torch.randn_like(want)
    targets = [x, u, layer.v, layer.m]
    for a, b in zip(
        torch.autograd.grad(got, targets, seed, allow_unused=True),
        torch.autograd.grad(want, targets, seed, allow_unused=True),
    ):
        if a is None or b is None:
            assert (a if b is None else b) is None or (a if b is None else b).abs().max() == 0, rhs
            continue
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9), rhs
