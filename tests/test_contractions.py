"""Einsum contractions in a derived backward (`optimize.contractions`): like terms merged, products split
into pairs in the order the cost model picks, shared pairs computed once, and the result right at sizes
other than the example's."""

from __future__ import annotations

import pytest
import torch

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.optimize import Facts, Stmt
from layerdsl.optimize.contractions import plan_contractions

from .support import compile_spec

D = torch.float64


def einsum(equation: str, *operands: str) -> N.Call:
    eq = N.Str(N.NOWHERE, equation)
    eq.kind = N.Kind.STR
    listed = N.ListExpr(N.NOWHERE, [B.name(o) for o in operands])
    listed.kind = N.Kind.LIST
    return B.call("einsum", eq, listed)


def facts(shapes: dict, sizes: dict) -> Facts:
    return Facts(shapes=shapes, kept=set(shapes), foldable=set(), full=[], sizes=sizes)


def texts(stmts: list[Stmt]) -> list[str]:
    return [f"{s.target} = {spec_text(s.expr)}" for s in stmts]


QUADRATIC = {"grad_out": ("B", "o"), "x": ("B", "n"), "w": ("n", "n", "o")}


def quadratic_backward() -> list[Stmt]:
    """What the derivation gives for y[b, k] = sum[i, j](w[i, j, k] * x[b, i] * x[b, j])."""
    return [
        Stmt(
            "grad_x",
            B.binop("+", einsum("bk,ijk,bj->bi", "grad_out", "w", "x"), einsum("bk,ijk,bi->bj", "grad_out", "w", "x")),
            {"x"},
        ),
        Stmt("grad_w", einsum("bk,bi,bj->ijk", "grad_out", "x", "x"), {"w"}),
    ]


def test_quadratic_form_shares_the_outer_product_and_symmetrises_the_weight():
    stmts = plan_contractions(quadratic_backward(), facts(QUADRATIC, {"B": 4096, "n": 64, "o": 64}))
    assert texts(stmts) == [
        'x_outer_grad_out = einsum("bj,bk->bjk", [x, grad_out])',
        'grad_x = einsum("bjk,ijk->bi", [x_outer_grad_out, w + permute(w, [1, 0, 2], [1, 0, 2])])',
        'grad_w = einsum("bi,bjk->ijk", [x, x_outer_grad_out])',
    ]
    assert stmts[0].leaves == {"x", "w"}  # needed by both gradients: computed when either is


def test_a_chain_contracts_the_cheap_end_first_and_the_order_follows_the_example_sizes():
    shapes = {"a": ("m", "n"), "b": ("n", "p"), "c": ("p", "q")}

    def chain(sizes):
        return texts(
            plan_contractions([Stmt("grad_u", einsum("ij,jk,kl->il", "a", "b", "c"), {"u"})], facts(shapes, sizes))
        )

    assert chain({"m": 2, "n": 512, "p": 512, "q": 512}) == [
        'a_dot_b = einsum("ij,jk->ik", [a, b])',
        'grad_u = einsum("ik,kl->il", [a_dot_b, c])',
    ]
    assert chain({"m": 512, "n": 512, "p": 512, "q": 2}) == [
        'b_dot_c = einsum("jk,kl->jl", [b, c])',
        'grad_u = einsum("ij,jl->il", [a, b_dot_c])',
    ]


def test_two_operand_einsums_and_other_terms_are_left_alone():
    stmts = [Stmt("grad_x", B.binop("*", B.name("grad_out"), B.name("x")), {"x"})]
    stmts.append(Stmt("grad_w", einsum("bi,bk->ik", "x", "grad_out"), {"w"}))
    before = texts(stmts)
    assert texts(plan_contractions(stmts, facts(QUADRATIC, {}))) == before


def test_terms_over_different_tensors_do_not_merge():
    stmt = Stmt(
        "grad_x",
        B.binop("+", einsum("bk,ik->bi", "grad_out", "w"), einsum("bk,ik->bi", "grad_out", "v")),
        {"x"},
    )
    merged = plan_contractions([stmt], facts({"grad_out": ("B", "o"), "w": ("n", "o"), "v": ("n", "o")}, {}))
    assert texts(merged) == ['grad_x = einsum("bk,ik->bi", [grad_out, w + v])']  # same product but one operand
    other = Stmt(
        "grad_x",
        B.binop("+", einsum("bk,ik->bi", "grad_out", "w"), einsum("bk,ki->bi", "v", "w")),
        {"x"},
    )
    shapes = {"grad_out": ("B", "o"), "w": ("n", "o"), "v": ("o", "o")}
    assert len(texts(plan_contractions([other], facts(shapes, {})))) == 1
    assert spec_text(other.expr).count("einsum") == 2


SPEC = """
@function
layer Contract(n: int, o: int) {{
    param w: [n, n, o] = uniform(-0.5, 0.5)
    param m: [n, o] = uniform(-0.5, 0.5)
    example(n = 4, o = 3)

    forward(x: [B, n], u: [B, o]) -> [B, o] {{
        y[b, k] = {rhs}
        return y
    }}
}}
"""

PRODUCTS = [
    "sum[i, j](w[i, j, k] * x[b, i] * x[b, j])",  # the quadratic form: merged, shared, symmetrised
    "sum[i, j](w[i, j, k] * x[b, i] * x[b, j] * u[b, k])",  # four tensors
    "sum[i, j](w[i, j, k] * x[b, i] * m[j, k])",
    "sum[i, j](w[j, i, k] * x[b, i] * x[b, j]) + sum[i](x[b, i] * m[i, k] * u[b, k])",
    "2 * sum[i, j](w[i, j, k] * x[b, j] * x[b, i] * x[b, i])",
]


@pytest.mark.parametrize("rhs", PRODUCTS)
def test_split_products_match_autograd_at_sizes_unlike_the_example(rhs):
    ns = compile_spec(SPEC.format(rhs=rhs), "contract")
    torch.manual_seed(0)
    layer = ns["Contract"](5, 2, dtype=D)
    x = torch.randn(7, 5, dtype=D, requires_grad=True)
    u = torch.randn(7, 2, dtype=D, requires_grad=True)
    targets = (x, u, layer.w, layer.m)
    got = ns["ContractFunction"].apply(x, u, layer.w, layer.m)
    want = ns["contract"](x, u, layer.w, layer.m)
    assert torch.allclose(got, want), rhs
    seed = torch.randn_like(want)
    for a, b in zip(
        torch.autograd.grad(got, targets, seed, allow_unused=True),
        torch.autograd.grad(want, targets, seed, allow_unused=True),
    ):
        assert (a is None) == (b is None) or (a if b is None else b).abs().max() == 0, rhs
        if a is not None and b is not None:
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), rhs
    apply = ns["ContractFunction"].apply
    assert torch.autograd.gradgradcheck(apply, targets), rhs


def test_the_shipped_quadratic_form_builds_the_outer_product_once(gen):
    import inspect
    import sys

    module = sys.modules[gen.QuadraticFormFunctional.__module__]
    source = inspect.getsource(module.QuadraticFormFunctionalFunction.backward)
    assert source.count("torch.einsum") == 3  # x ⊗ g, then one contraction per gradient
    assert "weight + weight.permute(1, 0, 2)" in source


def test_a_functions_forward_takes_its_operands_in_the_cheapest_left_to_right_order():
    from layerdsl.optimize import einsum_operands_in_cheapest_order

    shapes = {"w": ("n", "n", "o"), "x": ("B", "n")}
    forward = einsum("ijk,bi,bj->bk", "w", "x", "x")
    outer_first = einsum_operands_in_cheapest_order(forward, shapes, {"n": 4, "o": 3})
    assert spec_text(outer_first) == 'einsum("bi,bj,ijk->bk", [x, x, w])'  # x ⊗ x, then one large product
    one_output = einsum_operands_in_cheapest_order(forward, shapes, {"n": 64, "o": 1})
    assert spec_text(one_output) == 'einsum("ijk,bi,bj->bk", [w, x, x])'  # w·x is [B, n, 1]: small, first
