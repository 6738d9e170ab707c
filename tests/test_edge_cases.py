"""Corners of the language: lets built from lets, @function layers reading lets and dims, arguments
that only size an input, and the misuses that must be spec errors rather than broken Python."""

from __future__ import annotations

import pytest
import torch

from layerdsl.driver.cli import main

from .support import compile_spec

SPEC = """
layer Lets(d: int) {
    let r = 1 / sqrt(d)
    let q = r * 2
    param w: [d] = constant(q)
    example(d = 4)

    forward(x: [B, d]) -> [B, d] {
        return x * w * q
    }
}

@function
layer FnLets(d: int) {
    let scale = 1 / sqrt(d)
    example(d = 4)

    forward(x: [B, n, d]) -> [B, n, d] {
        h = n // 2
        return x * scale * h
    }
}

layer OnlyShape(n: int) {
    example(n = 3)

    forward(x: [B, n]) -> [B, n] {
        return x * 2
    }
}

layer Trunc(d: int) {
    param w: [d, d] = trunc_normal()
    example(d = 64)

    forward(x: [B, d]) -> [B, d] {
        return x @ w
    }
}
"""


@pytest.fixture(scope="module")
def ns() -> dict:
    return compile_spec(SPEC, "edge")


def test_a_let_may_use_an_earlier_let(ns):
    m = ns["Lets"](4)
    assert m.q == pytest.approx(1.0) and torch.allclose(m.w, torch.ones(4))


def test_a_function_reads_lets_and_symbolic_dims(ns):
    m = ns["FnLets"](4, dtype=torch.float64)
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(m(x), x * 0.5 * 2)
    assert torch.autograd.gradcheck(m, (x,))


def test_an_argument_that_only_sizes_an_input_is_still_checked(ns):
    with pytest.raises(ValueError, match="expected n = 3"):
        ns["only_shape"](torch.randn(2, 4), n=3)
    with pytest.raises(ValueError, match="expected n = 3"):
        ns["OnlyShape"](3)(torch.randn(2, 4))


def test_trunc_normal_defaults_to_the_languages_std(ns):
    torch.manual_seed(0)
    assert ns["Trunc"](64).w.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("layer A() {\n    forward(x) {\n        return where(0 < x < 1, x, 0)\n    }\n}\n", "chained comparisons"),
        (
            "@function\nlayer A() {\n    forward(x) {\n        grad_x = x * 2\n        return grad_x\n    }\n}\n",
            "'grad_x'",
        ),
        (
            "layer A(n: int, bias: bool = true) {\n    param bias: [n] = zeros if bias\n    example(n = 2)\n\n"
            "    forward(x: [B, n]) -> [B, n] {\n        y[b, i] = x[b, i] + bias[i]\n        return y\n    }\n}\n",
            "optional",
        ),
        (
            "layer A(n: int) {\n    param half: [n]\n    example(n = 2)\n\n    forward(x) {\n        return x\n    }\n}\n",
            "'half'",
        ),
        ("# nothing yet\n", "defines no layer"),
    ],
)
def test_misuses_are_spec_errors(tmp_path, capsys, body, message):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.layer").write_text(body)
    assert main(["gen", str(specs), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "specs/a.layer:" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
