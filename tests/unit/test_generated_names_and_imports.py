"""Names and imports of generated code: a name the generated code introduces never hides a spec name
(an argument called `parameter`), and the imports are grouped as isort groups them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from layerdsl.codegen.module import emit_file
from layerdsl.driver.layout import format_python
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from ..support import compile_spec

SPEC = """layer InnerForRedraw(n: int) {
    param weight: [n, n] = zeros
    param bias: [n] = zeros
    example(n = 3)

    forward(x: [B, n]) -> [B, n] {
        return x @ weight + bias
    }
}

layer RedrawByArgument(n: int, parameter: float = 0.5, activation: fn | "relu" = "relu") {
    sub inner = InnerForRedraw(n)
    init parameters = constant(parameter) if ndim > 1
    example(n = 3)

    forward(x: [B, n]) -> [B, n] {
        h = inner(x)
        if activation == "relu" {
            return relu(h) * pi
        }
        return activation(h)
    }
}
"""


def test_the_redraw_loop_never_hides_an_argument_named_parameter():
    layer = compile_spec(SPEC)["RedrawByArgument"](3, parameter=0.25)
    assert torch.equal(layer.inner.weight, torch.full((3, 3), 0.25))  # drawn with the argument's value
    assert torch.equal(layer.inner.bias, torch.zeros(3))  # 1 dim: not redrawn


def generated(text: str) -> str:
    spec = parse_file("nits.layer", text)
    return format_python(emit_file(spec, check_program([spec]), "nits.layer", {}))


def test_the_standard_library_imports_are_one_group_before_torch():
    source = generated(SPEC)
    head = source[source.index("import math") : source.index("__all__")]
    assert head == "import math\nfrom collections.abc import Callable\n\nimport torch\nfrom torch import Tensor, nn\n\n"


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_isort_finds_nothing_to_move(tmp_path):
    path = tmp_path / "nits.py"
    path.write_text(generated(SPEC), encoding="utf-8")
    done = subprocess.run(["ruff", "check", "--isolated", "--select", "I", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_the_shipped_modules_imports_are_isorted_other_modules_in_a_group_of_their_own():
    root = Path(__file__).resolve().parents[2] / "generated"
    modules = [str(p) for p in sorted(root.rglob("*.py")) if p.name != "__init__.py"]
    done = subprocess.run(["ruff", "check", "--isolated", "--select", "I", *modules], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
