"""The operation table's rank cases (`Op.rank_grads`): derivative formulas, in the spec language, that take
the place of a row's own where its operands' declared ranks say so. matmul's row carries the formulas for
a vector operand (which its own formulas would transpose); the derivation reads them from the row, as it
reads every formula, and each operand rank derives a backward that agrees with autograd (gradcheck and
gradgradcheck included)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from layerdsl.autodiff.formulas import formula, rank_branches
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk
from layerdsl.language.ops import OPS, RankCase

from .function_agreement import compare_with_plain
from .support import compile_spec
from .test_function_sub_lists import plain_pair

VEC_STACK = (
    "sum_to(squeeze(matmul(unsqueeze(grad, -2), transpose(other, -1, -2)), -2), input)",
    "unsqueeze(input, -1) * unsqueeze(grad, -2)",
)
BY_MATRIX = (
    "matmul(grad, transpose(other, -1, -2))",  # the row's, with no sum after it: it has x's shape already
    "matmul(transpose(flatten(unsqueeze(input, 0), 0, -2), 0, 1), flatten(unsqueeze(grad, 0), 0, -2))",
)


def _branches(a: tuple | None, b: tuple | None, param: str) -> list[tuple[dict[str, str], str | None]]:
    """The formulas `param`'s gradient chooses between (None: the row's own), each with its run-time tests."""
    branches = rank_branches("matmul", param, {"input": a, "other": b})
    return [(tests, None if case is None else case.grads[param]) for tests, case in branches]


def _chosen(formula_text: str | None | list) -> list:
    """One formula, chosen at compile time; or the branches written out."""
    return formula_text if isinstance(formula_text, list) else [({}, formula_text)]


@pytest.mark.parametrize(
    ("a", "b", "input_grad", "other_grad"),
    [
        # x @ v: v a vector (x a batch of rows, a vector, or of any rank)
        (("B", "n"), ("n",), "unsqueeze(grad, -1) * other", "sum_to(unsqueeze(grad, -1) * input, other)"),
        (("n",), ("n",), "unsqueeze(grad, -1) * other", "sum_to(unsqueeze(grad, -1) * input, other)"),
        (("...", "n"), ("n",), "unsqueeze(grad, -1) * other", "sum_to(unsqueeze(grad, -1) * input, other)"),
        # v @ w: w a stack of matrices
        (("n",), ("S", "n", "m"), VEC_STACK[0], VEC_STACK[1]),
        (("n",), ("R", "S", "n", "m"), *VEC_STACK),
        # ... or a matrix: `...` may stand for no dims, which the backward asks at run time
        (
            ("n",),
            ("...", "n", "m"),
            [({"other": "2"}, BY_MATRIX[0]), ({}, VEC_STACK[0])],
            [({"other": "2"}, BY_MATRIX[1]), ({}, VEC_STACK[1])],
        ),
        # x @ w: w a matrix, x possibly a vector (declared so, with `...`, or of a shape not known)
        (("n",), ("n", "m"), *BY_MATRIX),
        (("...", "n"), ("n", "m"), *BY_MATRIX),
        (None, ("n", "m"), *BY_MATRIX),
        # matrices, batched or not: the row's own formulas
        (("B", "n"), ("n", "m"), None, None),
        (("B", "m", "n"), ("B", "n", "k"), None, None),
        (("...", "m", "n"), ("n", "k"), None, None),
        (None, None, None, None),
    ],
)
def test_the_matmul_row_carries_the_formulas_of_each_operand_rank(a, b, input_grad, other_grad):
    assert (_branches(a, b, "input"), _branches(a, b, "other")) == (_chosen(input_grad), _chosen(other_grad))


def test_every_rank_case_is_formulas_in_the_spec_language_over_the_rows_operands():
    cases = [(op, case) for op in OPS.values() for case in op.rank_grads]
    assert {op.name for op, _ in cases} >= {"matmul"}
    for op, case in cases:
        tensors = {p.name for p in op.params if p.tensor}
        assert set(case.ranks) <= tensors and set(case.grads) <= tensors, (op.name, case)
        assert all(op.grads.get(p) for p in case.grads), "a rank case refines a derivative the row has"
        for param in case.grads:
            nodes = list(walk(formula(op.name, param, case)))
            assert {n.func for n in nodes if isinstance(n, N.Call)} <= set(OPS), (op.name, param)
            assert {n.id for n in nodes if isinstance(n, N.Name)} <= tensors | {"grad", "result"}, (op.name, param)


MAT_VEC = """
@function
layer MatVec(d: int) {
    param q: [d]
    example(d = 3)
    forward(x: [B, d]) -> [B] {
        return x @ q
    }
}
"""


def test_the_derivation_takes_a_rank_case_from_the_table(monkeypatch):
    """The formula of `x @ q` with q a vector is the row's data: another formula there is what the derived
    backward computes."""
    assert "grad_x = torch.unsqueeze(grad_out, -1) * q" in compile_spec(MAT_VEC, "mat_vec")["SOURCE"]
    row = OPS["matmul"]
    case = next(c for c in row.rank_grads if c.ranks == {"other": "1"})
    swapped = RankCase(case.ranks, {**case.grads, "input": "other * unsqueeze(grad, -1)"}, case.doc)
    cases = tuple(swapped if c is case else c for c in row.rank_grads)
    monkeypatch.setitem(OPS, "matmul", dataclasses.replace(row, rank_grads=cases))
    source = compile_spec(MAT_VEC, "mat_vec_swapped")["SOURCE"]
    assert "grad_x = q * torch.unsqueeze(grad_out, -1)" in source
    monkeypatch.setitem(OPS, "matmul", dataclasses.replace(row, rank_grads=()))
    assert "torch.transpose(q, -1, -2)" in compile_spec(MAT_VEC, "mat_vec_rowless")["SOURCE"]


PRODUCT = """
@function
layer Product() {{
    forward(a: {a}, b: {b}) {{
        return a @ b
    }}
}}
"""


@pytest.mark.parametrize(
    ("a", "b", "given"),
    [
        ("[n]", "[n]", [(3,), (3,)]),
        ("[B, n]", "[n]", [(2, 3), (3,)]),
        ("[B, T, n]", "[n]", [(2, 2, 3), (3,)]),
        ("[..., n]", "[n]", [(3,), (3,)]),
        ("[..., n]", "[n]", [(2, 2, 3), (3,)]),
        ("[n]", "[n, m]", [(3,), (3, 4)]),
        ("[n]", "[S, n, m]", [(3,), (2, 3, 4)]),
        ("[n]", "[R, S, n, m]", [(3,), (2, 2, 3, 4)]),
        ("[n]", "[..., n, m]", [(3,), (3, 4)]),
        ("[n]", "[..., n, m]", [(3,), (2, 2, 3, 4)]),
        ("[..., n]", "[n, m]", [(3,), (3, 4)]),
        ("[..., n]", "[n, m]", [(2, 3), (3, 4)]),
        ("[..., n]", "[n, m]", [(2, 2, 3), (3, 4)]),
        ("[B, n]", "[n, m]", [(2, 3), (3, 4)]),
        ("[B, T, n]", "[n, m]", [(2, 2, 3), (3, 4)]),
        ("[B, m, n]", "[B, n, k]", [(2, 3, 4), (2, 4, 2)]),
        ("[m, n]", "[B, n, k]", [(3, 4), (2, 4, 2)]),
        ("[B, m, n]", "[n, k]", [(2, 3, 4), (4, 2)]),
        ("[..., m, n]", "[..., n, k]", [(2, 3, 4), (4, 2)]),
    ],
)
def test_a_product_of_each_operand_rank_derives(a, b, given):
    ours, plain = plain_pair(PRODUCT.format(a=a, b=b), "product", "Product")
    inputs = [torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in given]
    compare_with_plain(ours, plain, *inputs)
