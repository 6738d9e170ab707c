"""matmul under `@function` where an operand is only possibly a vector (declared `[..., n]`) and the other
operand's declared rank does not settle which product it is: `a: [..., m, n] @ v: [..., n]` given a vector
v or a matrix (or a stack of them), and `v: [..., n] @ w: [..., n, m]` given a vector v or a matrix. The
derived backward branches on the operand's rank at run time, and agrees with autograd at every rank the
declared shapes allow (gradcheck and gradgradcheck included)."""

from __future__ import annotations

import pytest
import torch

from .function_agreement import compare_with_plain
from .support import compile_spec
from .test_function_sub_lists import plain_pair

PRODUCT = """
@function
layer Product() {{
    forward(a: {a}, b: {b}) {{
        return {expr}
    }}
}}
"""


@pytest.mark.parametrize(
    ("a", "b", "expr", "givens"),
    [
        # a matrix (or a stack) times a possibly-vector operand: a vector, a matrix, stacks of them
        (
            "[..., m, n]",
            "[..., n]",
            "a @ b",
            [[(2, 3), (3,)], [(2, 2, 3), (3,)], [(2, 3), (3, 3)], [(2, 2, 3), (2, 3, 3)]],
        ),
        # its mirror: the possibly-vector operand on the left
        (
            "[..., n]",
            "[..., n, m]",
            "a @ b",
            [[(3,), (3, 2)], [(3,), (2, 3, 2)], [(3, 3), (3, 2)], [(2, 3, 3), (3, 2)]],
        ),
        # the same products with the operands swapped in the spec (the vector-ness on the other parameter)
        ("[..., n]", "[..., m, n]", "b @ a", [[(3,), (2, 3)], [(3, 3), (2, 2, 3)]]),
        ("[..., n, m]", "[..., n]", "b @ a", [[(3, 2), (3,)], [(2, 3, 2), (2, 3, 3)]]),
        # both possibly vectors: a dot product, a vector times a matrix, a matrix times a vector, matrices
        ("[..., n]", "[..., n]", "a @ b", [[(3,), (3,)], [(3,), (3, 3)], [(3, 3), (3,)], [(2, 3, 3), (3, 3)]]),
    ],
)
def test_a_product_with_a_possibly_vector_operand_derives_at_every_rank(a, b, expr, givens):
    ours, plain = plain_pair(PRODUCT.format(a=a, b=b, expr=expr), "maybe_vector", "Product")
    for given in givens:
        inputs = [torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in given]
        compare_with_plain(ours, plain, *inputs)


def test_the_backward_asks_the_rank_only_where_the_declared_shapes_leave_it_open():
    """A product of declared matrices keeps the row's formula alone (no run-time test); a possibly-vector
    operand's backward tests its `dim()`."""
    matrices = compile_spec(PRODUCT.format(a="[..., m, n]", b="[..., n, k]", expr="a @ b"), "maybe_matrices")
    assert ".dim() ==" not in matrices["SOURCE"].partition("def backward")[2].partition("def apply")[0]
    vector = compile_spec(PRODUCT.format(a="[..., m, n]", b="[..., n]", expr="a @ b"), "maybe_vector_src")
    backward = vector["SOURCE"].partition("def backward")[2].partition("def apply")[0]
    assert "if b.dim() == 1 else" in backward
