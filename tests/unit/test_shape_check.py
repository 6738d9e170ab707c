"""The static shape pass: symbolic dims in normal form, no false positive on a corpus of good specs, every
shape error of a file in one run, and the run-time checks left for what cannot be decided statically
(outputs not proven, dims bound through `let`, wrong dtype, integer and wrong-device inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from layerdsl.codegen.module import emit_file
from layerdsl.diagnostics import SpecError
from layerdsl.driver.cli import main
from layerdsl.semantics import shapes as S
from layerdsl.semantics.checker import check_program
from layerdsl.semantics.shape_check import binding_at, shape_hints
from layerdsl.syntax.parser import parse_expr, parse_file

from ..support import compile_spec

ROOT = Path(__file__).resolve().parents[2]
GOOD = sorted((ROOT / "specs").glob("*.layer")) + sorted((ROOT / "tests" / "shape_corpus").glob("*.layer"))
BAD = sorted((ROOT / "tests" / "error_corpus").glob("shape_*.layer"))


def dim(text: str) -> str:
    return S.dim_text(parse_expr(text))


@pytest.mark.parametrize(
    "a, b",
    [
        ("2 * n", "n + n"),
        ("n * 2", "n + n"),
        ("H - k + 1", "1 - k + H"),
        ("(n + 1) * (n - 1)", "n ** 2 - 1"),
        ("a * b + b * a", "2 * (b * a)"),
        ("16 * 5 * 5", "400"),
        ("n // 2", "(n) // 2"),
        ("(n + n) // 2", "(2 * n) // 2"),
    ],
)
def test_equal_dims_have_one_normal_form(a, b):
    assert dim(a) == dim(b)


@pytest.mark.parametrize("a, b", [("2 * n", "n"), ("n + 1", "n"), ("n // 2", "n / 2"), ("n // 2", "n // 3")])
def test_different_dims_differ(a, b):
    assert dim(a) != dim(b)


def test_normal_form_text_reads_like_the_spec():
    assert [dim(t) for t in ["n + n", "1 - k + H", "n // 2 + 1", "8 // 2"]] == ["2 * n", "H - k + 1", "n // 2 + 1", "4"]


def _program(*paths: Path):
    return check_program([parse_file(p.name, p.read_text(encoding="utf-8")) for p in paths])


def test_the_corpus_of_good_specs_has_no_shape_error():
    """At least 60 specs (the shipped ones and tests/shape_corpus): each checks clean, one file at a time
    (a file's subs are its own), and every layer got its shapes."""
    assert len(GOOD) >= 60
    false_positives = []
    for path in GOOD:
        try:
            program = _program(path)
        except SpecError as exc:
            false_positives.append(f"{path.name}: {exc.diagnostics[0].message}")
            continue
        assert set(program.shapes) == {layer.name for f in program.files for layer in f.layers}
    assert false_positives == []


def test_the_shipped_specs_prove_every_declared_output():
    program = _program(*sorted((ROOT / "specs").glob("*.layer")))
    assert {name: s.unproven for name, s in program.shapes.items() if s.unproven} == {}
    assert program.shapes["LeNet"].bindings[-1].shape == ("B", "num_classes")  # through nn.Sequential rules


def test_the_error_corpus_has_forty_shape_cases():
    assert len(BAD) >= 40


def _errors(source: str) -> list[str]:
    with pytest.raises(SpecError) as err:
        check_program([parse_file("t.layer", source)])
    return [f"{d.span.line}:{d.span.col} {d.message}" for d in err.value.diagnostics]


SEVERAL = """
layer Several(n: int, m: int) {
    param w: [m, n] = ones
    param b: [m] = zeros
    example(n = 3, m = 2)

    forward(x: [B, n]) -> [B, n] {
        h = x @ w
        g = x + b
        k = sum(x, 2)
        return h
    }
}
"""


def test_every_shape_error_of_a_file_in_one_run_and_none_after_a_failed_operand():
    assert _errors(SEVERAL) == [
        "8:13 x @ w: [B, n] @ [m, n] — inner dims n and m differ",
        "9:13 x + b: [B, n] + [m] — dims n and m differ",
        "10:20 sum: dim 2 is out of range for [B, n]",
    ]  # `return h` reads a failed `h`: its shape is unknown, no follow-on error


def test_unknown_nn_sub_is_opaque_and_its_output_is_left_to_run_time():
    source = """
layer Enc(n: int) {
    sub enc = nn.TransformerEncoderLayer(n, 1)
    example(n = 4)

    forward(x: [T, B, n]) -> [T, B, n] {
        return enc(x)
    }
}
"""
    program = check_program([parse_file("t.layer", source)])
    assert program.shapes["Enc"].unproven == {0}


def test_hints_put_each_shape_after_its_binding():
    program = _program(ROOT / "specs" / "channel_norm.layer")
    hints = [(span.line, text) for span, text in shape_hints(program.shapes["ChannelNorm"])]
    assert hints == [(11, ": [B, channels, 1, 1]"), (12, ": [B, channels, 1, 1]"), (13, "-> [B, channels, H, W]")]


def test_show_shapes_prints_each_statement_with_its_shape(capsys):
    assert main(["show", "--shapes", str(ROOT / "specs" / "running_center.layer")]) == 0
    out = capsys.readouterr().out
    assert "mu = mean(x, dim = 0)" in out and ": [num_features]" in out and "-> [B, num_features]" in out
    assert main(["show", "--shapes", str(ROOT / "specs" / "running_center.layer"), "--layer", "Nope"]) == 2


# ------------------------------------------------------------------ what is left to run time


def _build(source: str) -> dict:
    return compile_spec(source, "t")


LET_BATCH = """
layer Pairs(n: int) {
    let rows = n * 2
    param w: [n, n] = ones
    example(n = 3)

    forward(x: [rows, n]) -> [rows, n] {
        return x @ w
    }
}
"""


def test_a_dim_bound_through_a_let_is_checked():
    ns = _build(LET_BATCH)
    layer = ns["Pairs"](3)
    assert layer(torch.randn(6, 3)).shape == (6, 3)
    with pytest.raises(ValueError, match=r"Pairs: input 'x' has size 5 at dim 0, expected rows = 6"):
        layer(torch.randn(5, 3))
    with pytest.raises(ValueError, match="expected rows = 6"):
        ns["pairs"](torch.randn(5, 3), torch.ones(3, 3))


def test_integer_wrong_dtype_and_wrong_device_inputs_get_the_layers_error():
    layer = _build(LET_BATCH)["Pairs"](3)
    with pytest.raises(TypeError, match=r"Pairs: input 'x' must be a floating-point tensor, got torch.int64"):
        layer(torch.ones(6, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"Pairs: input 'x' is torch.float64 but the parameters are torch.float32"):
        layer(torch.ones(6, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"Pairs: input 'x' is on meta but the parameters are on cpu"):
        layer(torch.ones(6, 3, device="meta"))


def test_an_elementwise_layer_still_promotes_dtypes():
    source = """
layer Scale(n: int) {
    param s: [n] = ones
    example(n = 3)

    forward(x: [B, n]) -> [B, n] {
        return x * s
    }
}
"""
    assert _build(source)["Scale"](3)(torch.ones(2, 3, dtype=torch.float64)).dtype == torch.float64


WINDOW = """
layer Window(n: int, k: int) {
    example(n = 5, k = 2)

    forward(x: [B, n]) -> [B, k] {
        return x[:, 2 : k + 2]
    }
}
"""


def test_an_output_the_pass_cannot_prove_is_checked_at_run_time():
    ns = _build(WINDOW)
    assert ns["Window"](5, 2)(torch.randn(4, 5)).shape == (4, 2)
    with pytest.raises(ValueError, match=r"Window: the output has size 1 at dim 1, forward declares k = 2"):
        ns["Window"](3, 2)(torch.randn(4, 3))  # the slice runs past the end: torch clamps it


def test_a_proven_output_gets_no_run_time_check():
    source = (ROOT / "specs" / "my_layer.layer").read_text(encoding="utf-8")
    spec = parse_file("my_layer.layer", source)
    assert "_out0" not in emit_file(spec, check_program([spec]), "my_layer.layer", {})


def test_the_dtype_check_lets_autocast_through():
    layer = _build(LET_BATCH)["Pairs"](3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.ones(6, 3, dtype=torch.bfloat16)).shape == (6, 3)


def test_binding_at_finds_the_shape_under_the_cursor():
    shapes = _program(ROOT / "specs" / "channel_norm.layer").shapes["ChannelNorm"]
    assert binding_at(shapes, 11, 9).shape == ("B", "channels", "1", "1")  # on `mu`
    assert binding_at(shapes, 11, 8) is None
