"""A `@function` layer's Function checks its subs' `require`s on values it computes (autodiff/sub_requires.py,
codegen/function_checks.py): a bad input raises the plain module's ValueError, naming the sub's layer and
spec line; a requirement the static shapes decide is not checked (always true) or refused by `gen` (never)."""

from __future__ import annotations

import re

import pytest
import torch

from layerdsl.diagnostics import SpecError
from tests.support import compile_spec
from tests.test_function_rank_facts import spec_text

INNER = """
layer Inner(d: int) {
    param weight: [d, d]

    example(d = 4)

    forward(x: [..., d]) -> [..., d] {
        require x.ndim == 2, "Inner takes a batch of vectors"
        require size_at(x, 0) >= d
        return x @ weight
    }
}
"""

OUTER = """
layer Outer(d: int) {
    sub inner = Inner(d)

    example(d = 4)

    forward(x: SHAPE) -> SHAPE {
        h = tanh(x)
        return inner(h) * 2.0
    }
}

layer Stack(d: int, n: int) {
    sub blocks = [Inner(d) for i in range(n)]

    example(d = 4, n = 2)

    forward(x: SHAPE) -> SHAPE {
        h = x * 1.0
        for block in blocks {
            h = tanh(block(h))
        }
        return h
    }
}
"""

RANK_LINE = INNER.splitlines().index('        require x.ndim == 2, "Inner takes a batch of vectors"') + 1
SIZE_LINE = INNER.splitlines().index("        require size_at(x, 0) >= d") + 1


def _modules(layer: str, shape: str = "[..., d]") -> tuple[dict, dict]:
    """The spec compiled as written and with `layer` a `@function` layer (one file name: one spec path)."""
    spec = INNER + OUTER.replace("SHAPE", shape)
    function = re.sub(rf"^layer {layer}\b", f"@function\nlayer {layer}", spec, flags=re.M)
    return compile_spec(spec, "computed"), compile_spec(function, "computed")


def _pair(layer: str, args: tuple, shape: str = "[..., d]") -> tuple[torch.nn.Module, torch.nn.Module, str]:
    plain, function = _modules(layer, shape)
    assert f"{layer}Function.apply" in function["SOURCE"]
    torch.manual_seed(0)
    expected = plain[layer](*args).double()
    torch.manual_seed(0)
    return expected, function[layer](*args).double(), function["SOURCE"]


def _error(module: torch.nn.Module, x: torch.Tensor) -> str:
    with pytest.raises(ValueError) as caught:
        module(x)
    return str(caught.value)


def _runs_alike(expected: torch.nn.Module, derived: torch.nn.Module, x: torch.Tensor | None = None) -> None:
    """A good input (by default 6 rows of 4): the same output, and the derived backward passes gradcheck."""
    x = torch.randn(6, 4, dtype=torch.double, requires_grad=True) if x is None else x
    torch.testing.assert_close(derived(x), expected(x))
    assert torch.autograd.gradcheck(derived, (x,))


@pytest.mark.parametrize("layer, args", [("Outer", (4,)), ("Stack", (4, 2))])
def test_a_bad_rank_of_a_computed_value_raises_the_plain_modules_error(layer, args):
    expected, derived, _ = _pair(layer, args)
    x = torch.randn(5, 3, 4, dtype=torch.double)
    said = _error(derived, x)
    assert said == _error(expected, x)
    assert said.startswith("Inner: Inner takes a batch of vectors (`require x.dim() == 2`")
    assert f"at computed.layer:{RANK_LINE}; got x.dim() = 3" in said
    _runs_alike(expected, derived)


@pytest.mark.parametrize("layer, args", [("Outer", (4,)), ("Stack", (4, 2))])
def test_a_bad_size_of_a_computed_value_raises_the_plain_modules_error(layer, args):
    expected, derived, _ = _pair(layer, args)
    x = torch.randn(3, 4, dtype=torch.double)  # 3 rows, Inner requires at least d = 4
    said = _error(derived, x)
    assert said == _error(expected, x)
    assert f"`require x.size(0) >= d` at computed.layer:{SIZE_LINE}; got x.size(0) = 3, d = 4" in said
    _runs_alike(expected, derived)


def test_the_function_checks_them_on_the_values_it_computes():
    _, _, source = _pair("Outer", (4,))
    function = source[source.index("class OuterFunction(") : source.index("def setup_context")]
    assert function.index("if x_ndim != 2:") < function.index("h = torch.tanh(x)")
    assert f"  # computed.layer:{RANK_LINE}" in function


def test_a_loop_checks_a_size_it_does_not_change_once():
    _, _, source = _pair("Stack", (4, 2))
    function = source[source.index("class StackFunction(") : source.index("def setup_context")]
    loop = function[function.index("for i in range(n):") :]
    assert re.search(r"if i == 0:\n +if x_ndim != 2:", loop)


@pytest.mark.parametrize("layer, args", [("Outer", (4,)), ("Stack", (4, 2))])
def test_what_the_static_shapes_decide_is_not_checked(layer, args):
    expected, derived, source = _pair(layer, args, shape="[B, d]")
    function = source[source.index(f"class {layer}Function(") : source.index("def setup_context")]
    assert "Inner takes a batch of vectors" not in function  # a [B, d] value has 2 dims: no check
    assert "if B < d:" in function  # its size is known only when forward runs
    x = torch.randn(3, 4, dtype=torch.double)
    assert _error(derived, x) == _error(expected, x)
    _runs_alike(expected, derived)


def test_a_requirement_the_static_shapes_break_is_a_located_gen_error():
    spec = INNER + OUTER.replace("SHAPE", "[B, T, d]")
    with pytest.raises(SpecError) as caught:
        compile_spec(re.sub(r"^layer Outer\b", "@function\nlayer Outer", spec, flags=re.M), "computed")
    said = str(caught.value)
    assert f"computed.layer:{RANK_LINE}:9: error: Inner's `require x.ndim == 2` never holds" in said
    assert "(`x.ndim` is 3 here)" in said
    assert "inlined into 'Outer'" in said


@pytest.mark.parametrize("shape", [(4, 3), (4, 2, 3), (2, 4, 2, 3)], ids=["unbatched", "batched", "bad rank"])
def test_a_checked_sub_require_bounds_a_computed_rank(shape):
    """tests/test_function_rank_facts.py's Residual, its bounds on ranks stated by the sub: `second`'s, on `h`,
    are checked in the Function, so the plan relies on them and the layer derives (it was refused)."""
    function = compile_spec(spec_text(True, requires="sub"), "residual")
    plain = compile_spec(spec_text(False, requires="sub"), "residual")
    source = function["SOURCE"]
    forward = source[source.index("class ResidualFunction(") : source.index("def setup_context")]
    assert "if h.dim() > 3:" in forward
    modules = []
    for ns in (function, plain):
        torch.manual_seed(0)
        modules.append(ns["Residual"](3, p=True, dtype=torch.double))
    x = torch.rand(*shape, dtype=torch.double, requires_grad=True)
    if len(shape) > 3:
        assert _error(modules[0], x) == _error(modules[1], x)
    else:
        _runs_alike(modules[1], modules[0], x)
