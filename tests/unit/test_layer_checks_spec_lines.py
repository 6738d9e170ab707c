"""Run-time errors point at the spec: a generated statement names its spec line in a comment, which the
traceback shows, and the comments cost nothing (the same bytecode without them)."""

from __future__ import annotations

import ast
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

    def broken_tanh_backward(*args, **kwargs):
        raise RuntimeError("tanh_backward broke")

    # the backward's `grad_x = tanh_backward(grad_h, h)` (h = tanh(x) is saved, not recomputed)
    monkeypatch.setattr(torch.ops.aten, "tanh_backward", broken_tanh_backward)
    with pytest.raises(RuntimeError, match="tanh_backward broke") as failure:
        y.sum().backward()
    text = "".join(traceback.format_exception(failure.value))
    assert "in backward" in text
    assert "grad_x = torch.ops.aten.tanh_backward(grad_h, h)  # project.layer:31" in text


def test_every_backward_statement_names_its_spec_line(module):
    """On its first line, or (when black's line length leaves no room) on a line of its own above it."""
    source = Path(module.__file__).read_text(encoding="utf-8")
    backward = source.split("class TwoLineFunctionFunction")[1].split("def backward")[1].split("def apply")[0]
    lines = [line.strip() for line in backward.splitlines()]
    assignments = [k for k, line in enumerate(lines) if re.match(r"grad_\w+ = |h = ", line) and "None" not in line]
    assert len(assignments) >= 8
    for k in assignments:
        where = lines[k] if "  # " in lines[k] else lines[k - 1]
        assert where.endswith(("# project.layer:31", "# project.layer:32")), lines[k]


GENERATED = sorted((ROOT / "generated").rglob("*.py"))
SPEC_COMMENT = re.compile(r"# [\w.-]+\.layer:\d+")
METHODS = ("forward", "backward", "setup_context")


def _spec_comments(source: str) -> dict[int, str]:
    """Line number -> the spec comment on it."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {t.start[0]: t.string for t in tokens if t.type == tokenize.COMMENT and SPEC_COMMENT.fullmatch(t.string)}


def _statements(tree: ast.Module) -> list[ast.stmt]:
    """Every statement in a forward, backward or setup_context, nested ones too (not the defs themselves)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in METHODS:
            out += [s for s in ast.walk(node) if isinstance(s, ast.stmt) and s is not node]
    return out


def _first_lines_end(s: ast.stmt) -> int:
    """The last line of a statement's own code: a compound statement's header, a simple statement's end."""
    if isinstance(s, (ast.If, ast.While)):
        return s.test.end_lineno or s.lineno
    if isinstance(s, ast.With):
        return s.items[-1].context_expr.end_lineno or s.lineno
    if isinstance(s, ast.For):
        return s.iter.end_lineno or s.lineno
    return s.lineno if hasattr(s, "body") else s.end_lineno or s.lineno


def _comment_fits_after_a_call_bracket(first_line: str, comment: str) -> bool:
    code = first_line.rstrip()
    return (
        len(code) >= 2
        and code[-1] in "([{"
        and (code[-2].isalnum() or code[-2] in "_)]")
        and (len(code) + 2 + len(comment) <= 88)
    )


@pytest.mark.parametrize("path", GENERATED, ids=lambda p: p.relative_to(ROOT / "generated").as_posix())
def test_a_split_statement_names_its_spec_line_on_its_first_line(path):
    """A traceback shows a statement's first line only: the spec comment is there, or above a statement whose
    first line has no room for it (or whose first line is optional parentheses black keeps), never lower."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    comments = _spec_comments(source)
    for s in _statements(ast.parse(source)):
        end = _first_lines_end(s)
        below = [n for n in range(s.lineno + 1, end + 1) if n in comments]
        assert not below, f"{path.name}:{below[0]}: a spec comment below the statement's first line"
        above = comments.get(s.lineno - 1) if lines[s.lineno - 2].strip().startswith("#") else None
        if above is None:
            continue
        first = lines[s.lineno - 1]
        assert s.lineno not in comments, f"{path.name}:{s.lineno}: two spec comments"
        if end == s.lineno:  # on one line: the comment above only where it does not fit at its end
            assert len(first) + 2 + len(above) > 88, f"{path.name}:{s.lineno}: the comment fits on the line"
        else:
            assert not _comment_fits_after_a_call_bracket(first, above), f"{path.name}:{s.lineno}: fits on line 1"


def test_split_statements_carry_their_spec_line_first():
    """The check above looks at real splits: the shipped specs have many statements split with the comment
    on their first line."""
    count = 0
    for path in GENERATED:
        source = path.read_text(encoding="utf-8")
        comments = _spec_comments(source)
        count += sum(
            1 for s in _statements(ast.parse(source)) if _first_lines_end(s) > s.lineno and s.lineno in comments
        )
    assert count >= 20


def test_an_error_in_a_split_backward_statement_names_its_spec_line(monkeypatch):
    from generated.swish_function import SwishFunctional

    source = (ROOT / "generated" / "swish_function.py").read_text(encoding="utf-8")
    assert "grad_mul = torch.ops.aten.sigmoid_backward(  # swish_function.layer:9\n" in source  # split
    layer = SwishFunctional(3)
    y = layer(torch.randn(4, 3, requires_grad=True))

    def broken_sigmoid_backward(*args, **kwargs):
        raise RuntimeError("sigmoid_backward broke")

    monkeypatch.setattr(torch.ops.aten, "sigmoid_backward", broken_sigmoid_backward)
    with pytest.raises(RuntimeError, match="sigmoid_backward broke") as failure:
        y.sum().backward()
    text = "".join(traceback.format_exception(failure.value))
    assert "grad_mul = torch.ops.aten.sigmoid_backward(  # swish_function.layer:9" in text


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


def test_the_comment_ends_the_statement_and_the_layout_moves_it_to_the_first_line():
    from layerdsl.codegen.spec_lines import with_spec_line
    from layerdsl.driver.layout import format_python

    assert with_spec_line(["y = x"], 0, "specs/a.layer", 7) == ["y = x  # a.layer:7"]
    assert with_spec_line(["y = x"], 0, "specs/a.layer", 0) == ["y = x"]  # a statement the compiler made
    long = "        grad_mul = torch.ops.aten.sigmoid_backward(grad_out, s).mul_(x)"
    text = "class A:\n    def f(self):\n" + "\n".join(with_spec_line([long], 0, "specs/swish_function.layer", 9)) + "\n"
    assert format_python(text).splitlines()[2:] == [
        "        grad_mul = torch.ops.aten.sigmoid_backward(  # swish_function.layer:9",
        "            grad_out, s",
        "        ).mul_(x)",
    ]
    kept = "        y = first_operand_name * second_operand_name + third_operand_name * fourth_one"
    text = "class A:\n    def f(self):\n" + "\n".join(with_spec_line([kept], 0, "specs/swish_function.layer", 9)) + "\n"
    assert format_python(text).splitlines()[2:] == ["        # swish_function.layer:9", kept]  # no call to split in
