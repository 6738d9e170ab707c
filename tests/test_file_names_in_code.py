"""A spec's file name reaches the generated source only in its header and in the `# file.layer:LINE`
comments: the code itself is the same whatever the file is called, even when its name reads like code of
the layer's own (an input `x` in `x.layer`, `self.w.layer`, `ctx.x_shape.layer`). The Function's planning
reads its backward's text for the names it uses; a comment naming `x.layer` once made it save `x` in
forward where backward did not unpack it."""

from __future__ import annotations

import keyword
import re
from pathlib import Path

import pytest
import torch

from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file
from tests.support import compile_spec

SPECS = Path(__file__).resolve().parent.parent / "specs"

LOOP = """\
@function
layer Recur(d: int, passes: int = 2) {
    param w: [d, d] = uniform(-1, 1)
    param b: [d] = zeros()
    example(d = 3)
    forward(x: [T, B, d], h0: [B, d]) -> [B, d] {
        h = h0
        for j in range(passes) {
            for k in range(j) {
                for t in range(T) {
                    h = tanh(h @ w + x[t] + b) * (1.0 + 0.1 * k)
                }
            }
        }
        return h
    }
}
"""

NEUTRAL = "neutral"


def _source(text: str, stem: str) -> str:
    """The module generated from `text` as the file `<stem>.layer`, its file name put back as NEUTRAL."""
    path = f"{stem}.layer"
    spec = parse_file(path, text)
    source = emit_file(spec, check_program([spec]), path, {})
    return source.replace(path, f"{NEUTRAL}.layer")


def _stems(text: str) -> list[str]:
    """File names that read like code of the spec's: each name it writes, and `self.` / `ctx.` spellings."""
    names = sorted(n for n in set(re.findall(r"\b[A-Za-z_]\w*\b", text)) if not keyword.iskeyword(n))
    return [*names, *(f"self.{n}" for n in names), *(f"ctx.{n}_shape" for n in names)]


def _function_specs() -> list[Path]:
    return sorted(p for p in SPECS.glob("*.layer") if "@function" in p.read_text())


@pytest.mark.parametrize(
    "spec", [LOOP, *(p.read_text() for p in _function_specs())], ids=["loop", *(p.stem for p in _function_specs())]
)
def test_a_file_named_like_the_code_gives_the_same_code(spec):
    want = _source(spec, NEUTRAL)
    differ = [stem for stem in _stems(spec) if _source(spec, stem) != want]
    assert differ == []


@pytest.mark.parametrize("stem", ["x", "h0", "w"])
def test_a_loop_function_in_a_file_named_after_its_input_derives(stem):
    namespace = compile_spec(LOOP, stem)
    torch.manual_seed(0)
    layer = namespace["Recur"](3, 3).double()
    x = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x, h0))
    assert torch.autograd.gradgradcheck(layer, (x, h0))
