"""The op table's derivative formulas, parsed into IR."""

from __future__ import annotations

import pytest

from layerdsl.autodiff.formulas import formula
from layerdsl.ir import build as B


def test_a_formula_is_parsed_into_ir():
    assert B.key(formula("sigmoid", "input")) == "sigmoid_backward(grad, result)"


def test_an_operand_without_a_derivative_has_no_formula():
    with pytest.raises(ValueError, match="floordiv"):
        formula("floordiv", "input")
