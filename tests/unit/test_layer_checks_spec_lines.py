"""Run-time errors point at the spec: a generated statement names its spec line in a comment, which the
traceback shows, and the comments cost nothing (the same bytecode without them)."""

from __future__ import annotations

import importlib
import io
import re
import tokenize
import traceback
import types
from pathlib import Path

import pytest
import torch

from layerdsl.testing import layer_checks as checks

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "layerdsl_spec_lines_under_test"
SPEC = """\
layer Project(n: int, m: int) {
    param w: [n, m] = normal(0.0, 1.0)

    example(n = 3, m = 2)

    forward(x) {
        h = tanh(x)
        return h @ w
    }
}

@function
layer ProjectFunction(n: int, m: int) {
    param w: [n, m] = normal(0.0, 1.0)

    example(n = 3, m = 2)

    forward(x) {
        return tanh(x) @ w
    }
}

@function
layer TwoLineFunction(n: int, m: int, bias: bool = true) {
    param w: [n, m] = normal(0.0, 1.0)
    param bias: [m] = zeros if bias

    example(n = 3, m = 2)

    forward(x) {
        h = tanh(x)
        return h @ w + bias
    }
}

@function
layer Written(n: int) {
    param w: [n] = ones

    example(n = 3)

    forward(x: [B, n]) -> [B, n] {
        return x * w
    }

    backward(grad_y) {
        grad x = grad_y * w
        grad w = sum(grad_y * x, dim = 0)
    }
}
"""


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec_lines")
    (root / "specs").mkdir()
    (root / "specs" / "project.layer").write_text(SPEC, encoding="utf-8")
    case, *_ = checks.generate_package([str(root / "specs")], root, PACKAGE)
    return importlib.import_module(f"{PACKAGE}.{case.module}")


def raised_traceback(layer: torch.nn.Module, x: torch.Tensor) -> str:
    with pytest.raises(RuntimeError) as failure:
        layer(x)
    return "".join(traceback.format_exception(failure.value))


def test_a_forward_that_raises_names_its_spec_line(module):
    text = raised_traceback(module.Project(3, 2), torch.randn(4, 5))  # 5 is not n = 3: `h @ w` raises
    assert "return h @ w  # project.layer:8" in text


def test_a_function_forward_that_raises_names_its_spec_line(module):
    text = raised_traceback(module.ProjectFunction(3, 2), torch.randn(4, 5))
    assert "project.layer:19" in text


def test_a_function_backward_that_raises_names_its_spec_line(module, monkeypatch):
    layer = module.TwoLineFunction(3, 2)
    y = layer(torch.randn(4, 3, requires_grad=True))

    def broken_tanh(*args, **kwargs):
        raise RuntimeError("tanh broke")

    monkeypatch.setattr(torch, "tanh", broken_tanh)  # the backward recomputes `h = tanh(x)`
    with pytest.raises(RuntimeError, match="tanh broke") as failure:
        y.sum().backward()
    text = "".join(traceback.format_exception(failure.value))
    assert "in backward" in text
    assert "h = torch.tanh(x)  # project.layer:31" in text


def test_every_backward_statement_names_its_spec_line(module):
    """On its line, or (when black's line length leaves no room) on a line of its own above it."""
    source = Path(module.__file__).read_text(encoding="utf-8")
    backward = source.split("class TwoLineFunctionFunction")[1].split("def backward")[1].split("def apply")[0]
    lines = [line.strip() for line in backward.splitlines()]
    assignments = [k for k, line in enumerate(lines) if re.match(r"grad_\w+ = |h = ", line) and "None" not in line]
    assert len(assignments) >= 8
    for k in assignments:
        where = lines[k] if "  # " in lines[k] else lines[k - 1]
        assert where.endswith(("# project.layer:31", "# project.layer:32")), lines[k]


def test_a_written_backward_names_its_own_lines(module):
    source = Path(module.__file__).read_text(encoding="utf-8")
    backward = source.split("class WrittenFunction")[1].split("def backward")[1].split("def apply")[0]
    assert "grad_x = grad_y * w  # project.layer:47" in backward
    assert "grad_w = torch.sum(grad_y * x, dim=0)  # project.layer:48" in backward


def test_setup_context_names_the_declaration_it_reads(module):
    source = Path(module.__file__).read_text(encoding="utf-8")
    assert "ctx.bias_shape = None if bias is None else bias.shape  # project.layer:26" in source


def _code_objects(source: str) -> dict[str, bytes]:
    out = {}

    def visit(code: types.CodeType, path: str) -> None:
        out[path] = code.co_code
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                visit(const, f"{path}.{const.co_name}")

    visit(compile(source, "<generated>", "exec"), "")
    return out


def _without_comments(source: str) -> str:
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type != tokenize.COMMENT]
    return tokenize.untokenize(tokens)


@pytest.mark.parametrize("path", sorted((ROOT / "generated").glob("*.py")), ids=lambda p: p.name)
def test_the_comments_cost_nothing(path):
    source = path.read_text(encoding="utf-8")
    assert _code_objects(source) == _code_objects(_without_comments(source))


def test_a_statement_too_long_for_the_comment_has_it_on_the_line_above():
    from layerdsl.codegen.spec_lines import with_spec_line

    short = with_spec_line(["y = x"], 0, "specs/a.layer", 7)
    assert short == ["y = x  # a.layer:7"]
    long = "    y = " + " + ".join(["x"] * 30)
    assert with_spec_line(["if c:", long], 1, "specs/a.layer", 7, depth=1) == ["if c:", "    # a.layer:7", long]
    assert with_spec_line(["y = x"], 0, "specs/a.layer", 0) == ["y = x"]  # a statement the compiler made
