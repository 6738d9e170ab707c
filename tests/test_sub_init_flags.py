"""What MultiheadAttention needed of the language: `init SUB.MEMBER = INIT` (a sub's member re-initialised by
the parent's reset_parameters, after the sub drew it), bool flag inputs (`need_weights: bool = true`),
optional outputs (`return out, none`), `expand`, `is_floating_point`, the `else` of an `if` proving the
members whose condition is `not` the `if`'s, and `if kdim == n` making the two dims one in the branch."""

from __future__ import annotations

import inspect

import pytest
import torch

from layerdsl.codegen.module import emit_file
from layerdsl.diagnostics import SpecError
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file
from layerdsl.tools.fmt.formatter import format_source

from .support import compile_spec

PROJ = """
layer Proj(n: int, bias: bool = true) {
    param weight: [n, n] = normal(0.0, 1.0)
    param bias: [n] = normal(0.0, 1.0) if bias

    example(n = 3)

    forward(x: [B, n]) -> [B, n] {
        return x @ transpose(weight, 0, 1) + bias
    }
}
"""

OUTER = PROJ + """
layer Outer(n: int, bias: bool = true) {
    param scale: [n] = normal(0.0, 1.0)
    sub proj = Proj(n, bias = bias)
    init proj.bias = zeros
    init proj.weight = constant(2.0)

    example(n = 3)

    forward(x: [B, n], need_scale: bool = true) -> ([B, n], [B, n]?) {
        y = proj(x)
        if not need_scale {
            return y, none
        }
        return y, y * scale
    }
}
"""


@pytest.fixture(scope="module")
def outer():
    return compile_spec(OUTER)


def test_init_re_initialises_the_sub_member_after_the_sub_drew(outer):
    torch.manual_seed(0)
    m = outer["Outer"](3)
    assert torch.equal(m.proj.bias, torch.zeros(3))
    assert torch.equal(m.proj.weight, torch.full((3, 3), 2.0))
    # The sub is built (and draws) before the layer's own reset: its draws come first, as torch's
    # MultiheadAttention draws out_proj before its in-projection.
    torch.manual_seed(0)
    alone = outer["Proj"](3)
    scale = torch.empty(3).normal_(0.0, 1.0)
    assert not torch.equal(alone.weight, m.proj.weight)
    assert torch.equal(m.scale, scale)


def test_reset_parameters_re_initialises_again_and_skips_an_absent_member(outer):
    m = outer["Outer"](3)
    with torch.no_grad():
        m.proj.bias.fill_(5.0)
        m.proj.weight.fill_(5.0)
    m.reset_parameters()
    assert torch.equal(m.proj.bias, torch.zeros(3)) and torch.equal(m.proj.weight, torch.full((3, 3), 2.0))
    without = outer["Outer"](3, bias=False)  # Proj has no bias: the re-initialisation is skipped
    assert without.proj.bias is None
    spec = parse_file("spec.layer", OUTER)
    source = emit_file(spec, check_program([spec]), "spec.layer", {})
    assert "if self.proj.bias is not None:" in source and "nn.init.zeros_(self.proj.bias)" in source


def test_flag_input_and_optional_output(outer):
    m = outer["Outer"](3)
    x = torch.randn(2, 3)
    out, scaled = m(x)
    assert torch.allclose(scaled, out * m.scale)
    out2, none = m(x, False)
    assert none is None and torch.equal(out2, out)
    signature = inspect.signature(m.forward)
    assert signature.parameters["need_scale"].default is True
    assert str(signature.return_annotation) in (
        "tuple[Tensor, Tensor | None]",
        "tuple[torch.Tensor, torch.Tensor | None]",
    )


def test_a_flag_is_a_keyword_of_the_functional_form():
    ns = compile_spec("""
layer Gate(n: int) {
    param w: [n] = ones
    example(n = 3)
    forward(x: [B, n], double: bool = false) {
        if double {
            return x * w * 2, none
        }
        return x * w, x
    }
}
""")
    x = torch.randn(2, 3)
    w = torch.ones(3)
    assert torch.equal(ns["gate"](x, w, double=True)[0], 2 * x)
    assert ns["gate"](x, w, double=True)[1] is None
    assert torch.equal(ns["Gate"](3)(x)[1], x)


def test_expand_and_is_floating_point_pick_by_dtype():
    ns = compile_spec("""
layer Masked(n: int) {
    param b: [1, n] = normal(0.0, 1.0)
    example(n = 3)
    forward(x: [B, n], mask: bool[B, n]? = none) -> [B + 1, n] {
        y = cat([x, expand(b, [1, n])], dim = 0)
        if mask != none {
            if is_floating_point(mask) {
                y = y + pad(mask, [0, 0, 0, 1])
            } else {
                y = where(pad(mask, [0, 0, 0, 1]), -inf, y)
            }
        }
        return y
    }
}
""")
    m = ns["Masked"](3)
    x = torch.randn(2, 3)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    as_bool = m(x, mask)
    as_float = m(x, torch.zeros(2, 3).masked_fill(mask, float("-inf")))
    assert torch.equal(as_bool, as_float)
    assert torch.isinf(as_bool[:2][mask]).all() and torch.equal(as_bool[2], m.b[0])


def test_expand_derives_in_a_function_layer():
    ns = compile_spec("""
@function
layer Tiled(n: int) {
    param b: [1, n] = normal(0.0, 1.0)
    example(n = 3)
    forward(x: [B, n]) -> [B, n] {
        return x * expand(b, [B, n])
    }
}
""")
    m = ns["Tiled"](3).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: ns["TiledFunction"].apply(x, b, 3), (x, m.b))


def test_else_proves_the_negated_members_and_equal_dims_are_one_in_the_branch():
    ns = compile_spec("""
layer Either(n: int, m: int = n) {
    param packed: [2 * n, n] = normal(0.0, 1.0) if (m == n)
    param first: [n, m] = normal(0.0, 1.0) if not (m == n)
    example(n = 3)
    forward(x: [B, m]) -> [B, n] {
        if m == n {
            a, b = chunk(packed, 2)
            y = x @ transpose(a, 0, 1)
        } else {
            y = x @ transpose(first, 0, 1)
        }
        return y
    }
}
""")
    same, other = ns["Either"](3), ns["Either"](3, m=4)
    assert same.first is None and other.packed is None
    assert same(torch.randn(2, 3)).shape == (2, 3) and other(torch.randn(2, 4)).shape == (2, 3)


def test_equal_dims_hold_only_inside_the_branch():
    text = """
layer Wrong(n: int, m: int = n) {
    param w: [n, n] = ones
    example(n = 3)
    forward(x: [B, m]) -> [B, n] {
        if m == n {
            y = x @ w
        } else {
            y = x @ w
        }
        return y
    }
}
"""
    with pytest.raises(SpecError) as caught:
        compile_spec(text)
    errors = [d for d in caught.value.diagnostics if "inner dims m and n differ" in d.message]
    assert [d.span.line for d in errors] == [9]


def test_fmt_keeps_the_new_constructs():
    text = "layer A(n: int) {\n    sub p = Proj(n)\n    init   p.bias=zeros\n    forward(x: [B, n], f: bool=true) -> ([B, n], [B, n] ?) {\n        return x, none\n    }\n}\n"
    out = format_source(text)
    assert "    init p.bias = zeros\n" in out
    assert "forward(x: [B, n], f: bool = true) -> ([B, n], [B, n]?) {" in out
    assert format_source(out) == out
