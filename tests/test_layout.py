"""`gen` lays out the generated code without running black on most of it (driver/layout.py): black must leave
the result unchanged, for every spec the tests know and for random ones."""

from __future__ import annotations

import re
from pathlib import Path

import black
import pytest
from hypothesis import HealthCheck, given, settings

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.codegen.module import emit_file
from layerdsl.diagnostics import SpecError
from layerdsl.driver.layout import format_python
from layerdsl.driver.pipeline import check, emit_modules
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file
from tests.test_differential import SPEC, expr

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ["specs", "tests/configuration_specs", "tests/shape_corpus"]


def _black(text: str) -> str:
    return black.format_str(text, mode=black.Mode())


_SPEC_COMMENT = re.compile(r"  # [\w.-]+\.layer:\d+$", re.M)


def assert_laid_out_as_black_does(text: str) -> None:
    """Without the spec comments, the layout is black's; with them, black leaves the layout unchanged (black
    itself would move a comment that does not fit to the end of the statement's last line)."""
    bare = _SPEC_COMMENT.sub("", text)
    assert format_python(bare) == _black(bare)
    laid_out = format_python(text)
    assert _black(laid_out) == laid_out


def _emitted(paths: list[str]) -> dict[Path, str]:
    sources, files, program = check(paths)
    plans, problems = plan_backwards(files)
    assert not problems
    return emit_modules(sources, files, program, plans)


def _spec_files() -> list[Path]:
    return [p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.layer"))]


def test_the_shipped_specs_are_laid_out_as_black_does():
    emitted = _emitted([str(ROOT / "specs")])
    assert emitted
    for text in emitted.values():
        assert_laid_out_as_black_does(text)


@pytest.mark.parametrize("spec", _spec_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_each_corpus_spec_is_laid_out_as_black_does(spec):
    try:
        emitted = _emitted([str(spec)])
    except SpecError:
        pytest.skip("a spec that uses layers of other files")
    for text in emitted.values():
        assert_laid_out_as_black_does(text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr(depth=4))
def test_random_expressions_are_laid_out_as_black_does(case):
    body, _ = case
    spec = parse_file("random.layer", SPEC.format(body=body))
    text = emit_file(spec, check_program([spec]), "random.layer", {})
    assert_laid_out_as_black_does(text)


@pytest.mark.parametrize(
    "line",
    [
        "        raise ValueError(f\"Layer: input 'x' has size {x.shape[1]} at dim 1, expected in_features = {w}\")",
        "    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None) -> None:",
        "        self.weight = nn.Parameter(torch.empty((in_features, in_features, out_features), **factory_kwargs))",
        "        ctx.save_for_backward(x if ctx.needs_input_grad[0] else None, weight if ctx.needs_input_grad[1] else None)",
        '__all__ = ["AttentionScores", "attention_scores", "AttentionScoresFunctional", "attention_scores_functional"]',
        '        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias}"',
        "        grad_x = grad_x_from_sigma2 if grad_x is None else grad_x + grad_x_from_sigma2_and_a_bit_more",
        "        return grad_x_from_sigma2 if grad_x is None else grad_x + grad_x_from_sigma2_and_a_bit_more",
        "        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2] or done:",
        "        if x.dtype != self.weight.dtype and not torch.is_autocast_enabled(x.device.type) and y is None:",
        "        if x.dtype != self.weight.dtype and not torch.is_autocast_enabled(x.device.type) and y:",
        "            while first_condition_is_long and second_condition_is_long or third_condition_here(x):",
        '        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias}, more"',
        "                grad_x = grad_x_from_sigma2_is_long if grad_x is None else grad_x + grad_x_from_sigma2",
        "                grad_sub = (grad_div / sqrt).addcmul_(grad_add.div_(-(x.shape[2] * x.shape[3])), sub)",
        "                grad_x = grad_mul1.mul_(rsqr).addcmul_(grad_add.div_(-x.shape[-1]), x, value=2)",
        "        y = first_operand_with_a_long_name * second_operand_name + third_operand_name_is_long",
        "        y = first_operand_with_a_long_name * second_operand_name + torch.sqrt(third_operand_is_x)",
        "        y = first_operand_with_a_long_name_that_keeps_going + torch.sqrt(third_operand_is_x, dim)",
        "        return first_operand_with_a_long_name + second_operand_name + torch.sqrt(third_op)[0]",
        "        if x.dtype != self.weight.dtype and not torch.is_autocast_enabled(x.device.type):",
        "        if self.first_flag_with_a_long_name is not None and not self.second_flag_with_long_name:",
        "        while self.first_flag_with_a_long_name not in some_collection_of_flags and flag_two:",
        "        y = torch.sum((grad_div * sub).div_(alig2 * alig2), dim=[-2, -1], keepdim=True).neg_()",
        "        y = torch.einsum('bi,bj->bij', x, x) + something_long_enough_to_need_a_split * another_factor_here",
    ],
)
def test_each_split_form_matches_black(line):
    depth = (len(line) - len(line.lstrip())) // 4
    headers = ["class A:", "def g(self):"] + ["if x:"] * depth
    text = 'f"{x}"\n\n\n' + "".join(f"{'    ' * d}{headers[d]}\n" for d in range(depth)) + line + "\n"
    if line.endswith(":"):
        text += "    " * (depth + 1) + "pass\n"
    assert format_python(text) == _black(text)


@pytest.mark.parametrize(
    "line, above",
    [
        (
            "        grad_x = grad_x_from_sigma2 if grad_x is None else grad_x + grad_x_from_sigma2  # spec.layer:3",
            True,
        ),
        ("        grad_mul = torch.ops.aten.sigmoid_backward(grad_out, s).mul_(x)  # swish_function.layer:9", False),
        ("            grad_bias = 0.5 * grad_addition.sum_to_size(bias_shape)  # my_layer_function.layer:13", False),
        ("                self.running_mean.copy_(self.num_batches_tracked + 1)  # running_center.layer:13", False),
        ("        grad_sub = 2 / x.shape[-1] * grad_sigma2_out * (x - mu_of_x)  # channel_norm.layer:12", True),
        ("        loss = torch.where(target != 1, torch.clamp(margin - input, min=0), 0, more)  # loss.layer:3", False),
        ("        grad_weight = (grad_out * (x * rsqr_of_x)).sum_to_size(*weight.shape)  # rms_norm.layer:9", True),
    ],
)
def test_a_spec_comment_goes_on_the_first_line_where_black_keeps_it(line, above):
    """A statement the comment makes too long is split with the comment after its first line's bracket
    or keeps it on a line of its own `above` it: black leaves either unchanged."""
    depth = (len(line) - len(line.lstrip())) // 4
    headers = ["class A:", "def g(self):"] + ["if x:"] * depth
    text = "".join(f"{'    ' * d}{headers[d]}\n" for d in range(depth)) + line + "\n"
    laid_out = format_python(text)
    assert _black(laid_out) == laid_out
    statement = laid_out.splitlines()[depth:]
    comment = line[line.rindex("  # ") + 2 :]
    assert sum(comment in x for x in statement) == 1
    if above:
        assert statement[0].strip() == comment
    else:
        assert statement[0].endswith(f"(  {comment}") and len(statement) > 2


def test_a_statement_over_several_lines_is_left_to_black():
    text = "def f():\n    return (\n        1\n    )\n"
    assert format_python(text) == _black(text) == "def f():\n    return 1\n"


def test_gen_reads_specs_with_the_parsers_size_bound():
    from layerdsl.driver.output import READ_LIMIT
    from layerdsl.syntax.parser import MAX_SOURCE_CHARS

    assert READ_LIMIT == MAX_SOURCE_CHARS


def test_a_long_clause_that_cannot_stand_alone_is_left_to_black():
    cond = " or ".join(f"ctx.needs_input_grad[{i}]" for i in range(5))
    text = f"if a:\n    pass\nelif {cond} and (x := 1):\n    pass\n"
    assert format_python(text) == _black(text)


@pytest.mark.parametrize("value", ["fan_in", "it's", 'say "hi"', "both ' and \"", "two '' one \"", "a\\b'", "\n\t"])
def test_string_literals_are_written_in_blacks_quotes(value):
    from layerdsl.codegen.pyexpr import PyExpr, Spelling
    from layerdsl.ir import nodes as N

    literal = PyExpr(Spelling())(N.Str(N.NOWHERE, value))
    assert eval(literal) == value
    assert _black(f"x = {literal}\n") == f"x = {literal}\n"
