"""A `@function` layer checks its subs' `require`s before `Function.apply` (autodiff/sub_requires.py): a bad
input or argument raises the plain module's ValueError, naming the sub's layer and spec line."""

from __future__ import annotations

import re

import pytest
import torch

from tests.support import compile_spec

SPEC = """
layer Inner(d: int, heads: int = 2) {
    param weight: [d, d]

    example(d = 4)

    forward(x: [..., d]) -> [..., d] {
        require x.ndim == 2, "Inner takes a batch of vectors"
        require d % heads == 0
        return x @ weight
    }
}

layer Outer(d: int, heads: int = 2) {
    sub inner = Inner(d, heads)

    example(d = 4)

    forward(x: [..., d]) -> [..., d] {
        return tanh(inner(x))
    }
}

layer Top(d: int) {
    sub outer = Outer(d, heads = 3)

    example(d = 6)

    forward(x: [..., d]) -> [..., d] {
        return outer(x) * 2.0
    }
}

layer Gated(d: int, heads: int, gated: bool) {
    sub inner = Inner(d, heads)

    example(d = 4, heads = 2, gated = true)

    forward(x: [..., d]) -> [..., d] {
        if gated {
            return tanh(inner(x))
        }
        return x * 2.0
    }
}

layer Stack(d: int, heads: int, n: int) {
    sub blocks = [Inner(d, heads) for i in range(n)]

    example(d = 4, heads = 2, n = 2)

    forward(x: [B, d]) -> [B, d] {
        h = x * 1.0
        for block in blocks {
            h = tanh(block(h))
        }
        return h
    }
}

layer Holds(inner: Inner) {
    sub held = inner

    example(inner = Inner(4), D = 4)

    forward(x: [..., D]) -> [..., D] {
        return tanh(held(x))
    }
}

layer Copies(inner: Inner, n: int) {
    sub layers = [copy(inner) for i in range(n)]

    example(inner = Inner(4), n = 2, D = 4)

    forward(x: [B, D]) -> [B, D] {
        h = x * 1.0
        for item in layers {
            h = item(h)
        }
        return h
    }
}
"""

RANK_LINE = SPEC.splitlines().index('        require x.ndim == 2, "Inner takes a batch of vectors"') + 1
HEADS_LINE = SPEC.splitlines().index("        require d % heads == 0") + 1


def _modules(layer: str) -> tuple[dict, dict]:
    """The spec compiled as written and with `layer` a `@function` layer (one file name: one spec path)."""
    function = re.sub(rf"^layer {layer}\b", f"@function\nlayer {layer}", SPEC, flags=re.M)
    return compile_spec(SPEC, "subs"), compile_spec(function, "subs")


def _runs_alike(plain: torch.nn.Module, function: torch.nn.Module, x: torch.Tensor) -> None:
    """Good input: the same output and input gradient."""
    x = x.detach().requires_grad_()
    want, got = plain(x), function(x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), x), torch.autograd.grad(want.sum(), x))


def _error(module: torch.nn.Module, x: torch.Tensor) -> str:
    with pytest.raises(ValueError) as caught:
        module(x)
    return str(caught.value)


@pytest.mark.parametrize("layer, args", [("Outer", (4,)), ("Top", (6,))])
def test_a_bad_rank_raises_the_plain_modules_error(layer, args):
    plain, function = _modules(layer)
    assert f"{layer}Function.apply" in function["SOURCE"]
    torch.manual_seed(0)
    expected = plain[layer](*args)
    torch.manual_seed(0)
    derived = function[layer](*args)
    x = torch.randn(2, 3, args[0])
    said = _error(derived, x)
    assert said == _error(expected, x)
    _runs_alike(expected, derived, x[0])
    assert said.startswith("Inner: Inner takes a batch of vectors (`require x.dim() == 2`")
    assert f"at subs.layer:{RANK_LINE}; got x.dim() = 3" in said


@pytest.mark.parametrize("layer, args, good", [("Outer", (6, 4), (6, 3)), ("Top", (4,), (6,))])
def test_a_bad_argument_raises_the_plain_modules_error(layer, args, good):
    plain, function = _modules(layer)
    x = torch.randn(3, args[0])
    said = _error(function[layer](*args), x)
    assert said == _error(plain[layer](*args), x)
    assert f"`require d % heads == 0` at subs.layer:{HEADS_LINE}; got d % heads =" in said
    torch.manual_seed(0)
    expected = plain[layer](*good)
    torch.manual_seed(0)
    _runs_alike(expected, function[layer](*good), torch.randn(3, good[0]))


def test_the_requires_are_checked_before_apply():
    _, function = _modules("Outer")
    source = function["SOURCE"]
    forward = source[source.index("class Outer(") :]
    assert forward.index("if self.d % self.heads != 0:") < forward.index("OuterFunction.apply(")


@pytest.mark.parametrize(
    "layer, args, raises",
    [
        ("Gated", (6, 4, True), True),
        ("Gated", (6, 4, False), False),  # the sub is not called: its `require` is not checked
        ("Stack", (6, 4, 2), True),
        ("Stack", (6, 4, 0), False),  # the loop does not run
    ],
)
def test_a_require_in_an_if_or_a_loop_is_checked_where_the_sub_runs(layer, args, raises):
    plain, function = _modules(layer)
    assert f"{layer}Function.apply" in function["SOURCE"]
    x = torch.randn(3, args[0])
    if raises:
        said = _error(function[layer](*args), x)
        assert said == _error(plain[layer](*args), x)
        assert f"at subs.layer:{HEADS_LINE}" in said
    else:
        torch.manual_seed(0)
        expected = plain[layer](*args)
        torch.manual_seed(0)
        _runs_alike(expected, function[layer](*args), x)


@pytest.mark.parametrize("layer, n", [("Holds", None), ("Copies", 2), ("Copies", 0)])
def test_a_held_layers_arguments_are_read_from_it(layer, n):
    plain, function = _modules(layer)
    assert f"{layer}Function.apply" in function["SOURCE"]
    for d, heads in ((6, 4), (6, 3)):
        given = [plain, function]
        modules = [ns[layer](ns["Inner"](d, heads), *([n] if n is not None else [])) for ns in given]
        function_module = modules[1]
        function_module.load_state_dict(modules[0].state_dict())
        x = torch.randn(3, d)
        if d % heads and n != 0:
            said = _error(function_module, x)
            assert said == _error(modules[0], x)
            assert f"`require d % heads == 0` at subs.layer:{HEADS_LINE}" in said
        else:
            _runs_alike(modules[0], function_module, x)
    if layer == "Holds":  # the input's rank too
        x = torch.randn(2, 3, 6)
        module = function[layer](function["Inner"](6, 3))
        assert _error(module, x) == _error(plain[layer](plain["Inner"](6, 3)), x)
