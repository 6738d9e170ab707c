"""Expression keys and the spec-text printer they come from."""

from __future__ import annotations

import pytest

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import NOWHERE
from layerdsl.ir.printer import spec_text
from layerdsl.syntax.parser import parse_file


def let_value(text: str) -> N.Expr:
    """`text` parsed as the value of a `let` (the layer is not checked)."""
    spec = parse_file("t.layer", f"layer L() {{\n    let v = {text}\n}}\n")
    return spec.layers[0].lets[0].value


@pytest.mark.parametrize(
    "text",
    [
        "(a + b) * c",
        "a - (b - c)",
        "a - b - c",
        "a / (b * c)",
        "-a ** 2",
        "(-a) ** 2",
        "2 ** -x",
        "a ** b ** c",
        "(a ** b) ** c",
        "not a and (b or c)",
        "0 < x <= n",
        "f(x, dim = -1, keepdim = true)",
        "x[:, none, 1:n:2, ...]",
        '[1, 2.5, none, "a \\"b\\""]',
    ],
)
def test_spec_text_round_trips(text):
    assert spec_text(let_value(text)) == text


def test_spec_text_drops_redundant_parentheses():
    assert spec_text(let_value("((a) + (b * c))")) == "a + b * c"


def test_align_views_are_written_as_their_subscript():
    view = B.call("align", B.name("mu"))
    view.items = [N.Slice(NOWHERE, None, None, None), N.NoneLit(NOWHERE)]
    assert spec_text(view) == "mu[:, none]"


def test_equal_structures_have_equal_keys():
    assert B.key(let_value("sqrt(x ** 2 + b) @ w")) == B.key(let_value("sqrt((x ** 2) + b) @ (w)"))
    made = B.binop("*", B.name("g"), B.call("exp", B.name("x")))
    assert B.key(made) == B.key(let_value("g * exp(x)"))


@pytest.mark.parametrize(
    "a, b",
    [
        ("a - b", "b - a"),
        ("(a + b) * c", "a + b * c"),
        ("sum(x, 1)", "sum(x, dim = 1)"),
        ("sum(x, dim = 1)", "sum(x, dim = -1)"),
        ("f(a, b)", "f(a)"),
        ("true", "1"),
        ('"1"', "1"),
    ],
)
def test_different_structures_have_different_keys(a, b):
    assert B.key(let_value(a)) != B.key(let_value(b))


def test_align_views_with_different_axes_have_different_keys():
    views = []
    for items in ([N.NoneLit(NOWHERE), N.Slice(NOWHERE, None, None, None)], [N.Slice(NOWHERE, None, None, None)]):
        view = B.call("align", B.name("mu"))
        view.items = items + [N.NoneLit(NOWHERE)]
        views.append(view)
    assert B.key(views[0]) != B.key(views[1])
