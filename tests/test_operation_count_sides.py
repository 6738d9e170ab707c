"""The operation count before inlining (autodiff/operation_count.py) follows each side of an `if` testing the
layer's arguments, as the plan derives a tape per combination of such tests: a combination past the limit is
refused before any sub is inlined (the count gave up at such an `if` before, leaving it to the plan after
inlining), and sides each under the limit are not refused however many operations they have together."""

from __future__ import annotations

import pytest

from layerdsl.autodiff.operation_count import TooManyOperations, check_operations
from layerdsl.ir import nodes as N
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file


def _chain(depth: int) -> str:
    """Layers B1 .. B{depth}, each calling the next twice: one call of B1 is 2^(depth - 1) tanh."""
    layers = [
        f"layer B{k}() {{\n    sub s = B{k + 1}()\n    forward(x: [B, D]) {{\n        return s(s(x))\n    }}\n}}\n"
        for k in range(1, depth)
    ]
    layers.append(f"layer B{depth}() {{\n    forward(x: [B, D]) {{\n        return tanh(x)\n    }}\n}}\n")
    return "\n".join(layers)


def _layers(top: str) -> tuple[N.Layer, dict[str, N.Layer]]:
    spec = parse_file("sides.layer", top + "\n" + _chain(9))  # B1: 256 operations
    check_program([spec])
    layers = {layer.name: layer for layer in spec.layers}
    return layers["Top"], layers


def _top(body: str) -> str:
    return (
        "@function\nlayer Top(n: int, m: int) {\n    example(n = 3, m = 3)\n    sub s = B1()\n"
        f"    forward(x: [B, D]) {{\n{body}    }}\n}}\n"
    )


# (then, then) 1 operation, (then, else) 513, (else, then) 256, (else, else) 768: only the last is too long
TWO_TESTS = _top("""\
        h = x
        if n > 2 {
            h = sin(x)
        } else {
            h = s(x)
        }
        if m > 2 {
            return h
        }
        return s(s(h))
""")


def test_a_combination_of_sides_past_the_limit_is_refused_before_inlining():
    layer, layers = _layers(TWO_TESTS)
    with pytest.raises(TooManyOperations) as refused:
        check_operations(layer, layers)
    assert "more than 600" in refused.value.message


# 512 operations on each side, 1,024 in all: each side's tape derives
EACH_UNDER = _top("""\
        if n > 2 {
            return s(s(x))
        }
        return s(s(sin(x)))
""")


def test_sides_each_under_the_limit_are_not_refused():
    layer, layers = _layers(EACH_UNDER)
    check_operations(layer, layers)
