"""What round 16's user's and attacker's trial found (custom layers written plain and under `@function`, then
hostile names, inputs and folders): each test fails on the code before its fix."""

from __future__ import annotations

import re

import pytest
import torch

from layerdsl.diagnostics import SpecError
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file
from tests.support import compile_spec, saved_bytes


def _errors(files: dict[str, str]) -> list[str]:
    """The rendered diagnostics of checking `files` (path -> text) as one run; [] when clean."""
    try:
        check_program([parse_file(path, text) for path, text in files.items()])
    except SpecError as e:
        return [d.render() for d in e.diagnostics]
    return []


# ---------------------------------------------------------------- fixed here

# A `let` of type int "stands for its value" (docs/language.md, "Symbolic dims"), but the sizes written in
# reshape(), new_zeros() and expand() kept the let's name: `reshape(x @ w, [B, hidden])` of a [B, 4 * n]
# was an error ("[B, 4 * n] has 4 * B * n elements, [B, hidden] has B * hidden").
LET_SIZES = """\
layer LetSizes(n: int, h: int) {
    param w: [n, 4 * n]
    param v: [n, n // h]
    let hidden = 4 * n
    let head_dim = n // h
    example(n = 4, h = 2)

    forward(x: [B, n]) {
        a = reshape(x @ w, [B, hidden])
        b = new_zeros(x, [B, head_dim]) + x @ v
        c = expand(x[:, :1], [B, head_dim]) + x @ v
        return a, b, c
    }
}
"""


def test_an_int_let_in_written_sizes_stands_for_its_value():
    assert _errors({"let_sizes.layer": LET_SIZES}) == []
    ns = compile_spec(LET_SIZES, "let_sizes")
    a, b, c = ns["LetSizes"](4, 2)(torch.randn(3, 4))
    assert a.shape == (3, 16) and b.shape == c.shape == (3, 2)


# A symbolic dim named like a step the derivation names (`th` for a tanh) in a forward with a run-time loop
# (or an `if training`): the segments' tapes were built from `dataclasses.replace` copies of the layer, which
# dropped its symbolic dims (an `init=False` field), so a step took the dim's name and the Function read the
# dim where it meant the tanh (RuntimeError in tanh_backward) or the reverse (TypeError in new_zeros).
DIM_NAMED_LIKE_A_STEP = """\
@function
layer DimNamedLikeAStep(d: int) {
    param w: [d, d]
    example(d = 3)

    forward(x: [th, d]) -> [th, d] {
        h = new_zeros(x, [d])
        for t in range(th) {
            h = h + x[t] @ w
        }
        return tanh(h) * x
    }
}
"""


@pytest.mark.parametrize("where", ["loop", "if"])
def test_a_symbolic_dim_named_like_a_derivation_step_keeps_its_name(where):
    text = DIM_NAMED_LIKE_A_STEP
    if where == "if":
        text = text.replace(
            "for t in range(th) {\n            h = h + x[t] @ w\n        }",
            "if training {\n            h = h * 3.0\n        }",
        ).replace("return tanh(h) * x", "return tanh(x @ w + h) * x + new_zeros(x, [th, d])")
    ns = compile_spec(text, "dim_named_like_a_step")
    layer = ns["DimNamedLikeAStep"](3).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


# Layers that build each other (A holds a B, which holds an A) were accepted: `gen` wrote modules importing
# each other (ImportError), and `check` of an `@function` one recursed until a RecursionError (exit 123, a
# traceback).
BUILDS_A = """\
@function
layer BuildsA(d: int) {
    sub b = BuildsB(d)
    example(d = 3)

    forward(x: [B, d]) -> [B, d] {
        return b(x)
    }
}
"""
BUILDS_B = """\
layer BuildsB(d: int) {
    sub inner = nn.Sequential(nn.ReLU(), BuildsA(d))
    example(d = 3)

    forward(x: [B, d]) -> [B, d] {
        return inner(x)
    }
}
"""


def test_layers_that_build_each_other_are_a_located_error():
    errors = _errors({"specs/a.layer": BUILDS_A, "specs/b.layer": BUILDS_B})
    assert len(errors) == 2
    assert errors[0].startswith("specs/a.layer:3:13: error: layer 'BuildsA' would contain itself: BuildsA → BuildsB")
    assert errors[1].startswith("specs/b.layer:2:42: error: layer 'BuildsB' would contain itself: BuildsB → BuildsA")


def test_the_cli_reports_layers_that_build_each_other_without_a_traceback(tmp_path, capsys):
    from layerdsl.driver import cli

    (tmp_path / "a.layer").write_text(BUILDS_A, encoding="utf-8")
    (tmp_path / "b.layer").write_text(BUILDS_B, encoding="utf-8")
    assert cli.main(["check", str(tmp_path)]) == 1
    assert "Traceback" not in capsys.readouterr().err


# `-> [B, k], [B, k]` said only "unexpected ','; expected '{'"; a lone "\r" line end (an old Mac file) said
# "unexpected character '\r'" with no hint.
def test_several_outputs_without_parentheses_get_a_hint():
    text = "layer Two(d: int) {\n    forward(x: [B, d]) -> [B, d], [B, d] {\n        return x, x\n    }\n}\n"
    (error,) = _errors({"two.layer": text})
    assert "hint: several outputs are written in parentheses: `-> ([B, n], [B, n])`" in error


def test_a_file_with_lone_carriage_returns_gets_a_hint():
    text = "layer Mac(d: int) {\r    forward(x: [B, d]) {\r        return x\r    }\r}\r"
    (error,) = _errors({"mac.layer": text})
    assert "not a lone '\\r'" in error


# `reduction: str | "mean" | "sum"` (what torch's documentation reads like) was refused with the hint
# 'and an fn argument: `activation: fn | "relu" = "relu"`', which does not say what to write.
def test_string_choices_on_a_str_argument_hint_at_a_plain_str():
    text = 'layer Loss(reduction: str | "mean" | "sum" = "mean") {\n    forward(x: [B]) {\n        return x\n    }\n}\n'
    (error,) = _errors({"loss.layer": text})
    assert 'hint: a str argument takes any string: write `reduction: str = "mean"`' in error


# An error on a long line printed the whole line (a 20,000-character one too) and as many carets.
def test_a_diagnostic_on_a_very_long_line_shows_the_part_around_it():
    items = ", ".join(["x"] * 1000)
    text = f"layer Long() {{\n    forward(x: [B, D]) {{\n        return cat([{items}, sqr(x), {items}], dim = 0)\n    }}\n}}\n"
    (error,) = _errors({"long.layer": text})
    excerpt, carets = error.splitlines()[1:3]
    assert len(excerpt) < 600 and "sqr(x)" in excerpt
    assert excerpt.index("sqr") == carets.index("^") and carets.strip() == "^^^"


# `layerdsl gen specs specs/a.layer` (a folder and a file in it, as a hook passing file names may give them)
# read the file twice: "this spec and specs/a.layer would both generate a.py" and "defined twice", about one file.
def test_a_spec_given_twice_is_read_once(tmp_path, capsys):
    from layerdsl.driver import cli

    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "swish.layer").write_text(
        "layer Swish() {\n    forward(x: [B, D]) {\n        return x * sigmoid(x)\n    }\n}\n", encoding="utf-8"
    )
    out = tmp_path / "out"
    assert (
        cli.main(["gen", str(specs), str(specs / "swish.layer"), f"{specs}/../specs", "-o", str(out)]) == 0
    ), capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".layerdsl-manifest", "__init__.py", "swish.py"]


# ---------------------------------------------------------------- fixed in autodiff/ and codegen/

# clamp() of a costly value: the Function keeps the matmul's result AND the clamped output, to compare them
# in backward (`clam == mm`), where autograd keeps the input alone and relu(x @ w) keeps a bool mask. 1.5x
# what autograd keeps.
CLAMPED_MATMUL = """\
@function
layer ClampedMatmul(d: int) {
    param w: [d, d]
    example(d = 3)

    forward(x: [B, d]) -> [B, d] {
        return clamp(x @ w, -1.0, 1.0)
    }
}
"""


def test_a_clamped_matmul_keeps_no_more_than_autograd():
    ns = compile_spec(CLAMPED_MATMUL, "clamped_matmul")
    layer = ns["ClampedMatmul"](3).double()
    x = torch.randn(64, 3, dtype=torch.float64, requires_grad=True)
    ours = saved_bytes(lambda: layer(x), layer)
    assert ours <= saved_bytes(lambda: torch.clamp(x @ layer.w, -1.0, 1.0), layer)


# Scores whose static shape is unknown (q sliced by an int local): the backward reads them for their shape only
# (`grad.sum_to_size(mm1.shape)`), yet the Function keeps them whole: 1.9x what autograd keeps at T = 64.
SHAPE_ONLY_SCORES = """\
@function
layer ShapeOnlyScores(d: int) {
    param w: [d, d]
    example(d = 4)

    forward(x: [B, T, d]) {
        h = d // 2
        q = (x @ w)[..., :h]
        return softmax(q @ transpose(q, -2, -1) * 0.5, dim = -1)
    }
}
"""


def test_scores_read_only_for_their_shape_are_not_kept():
    ours = compile_spec(SHAPE_ONLY_SCORES, "shape_only_f")["ShapeOnlyScores"](4).double()
    theirs = compile_spec(SHAPE_ONLY_SCORES.replace("@function\n", ""), "shape_only_p")["ShapeOnlyScores"](4).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 64, 4, dtype=torch.float64, requires_grad=True)
    assert saved_bytes(lambda: ours(x), ours) <= saved_bytes(lambda: theirs(x), theirs)


# `@function(save = "inputs")` "saves only inputs and parameters ... Nothing extra is returned"; a forward
# with a run-time loop returned and saved the per-step values (and the carried state), as `auto` does. Its
# backward now runs the forward again (tests/test_function_save_inputs_loops.py).
SCAN_INPUTS = """\
@function(save = "inputs")
layer ScanInputs(d: int) {
    param a: [d] = zeros
    example(d = 3)

    forward(x: [B, T, d]) -> [B, T, d] {
        decay = sigmoid(a)
        h = new_zeros(x, [B, d])
        ys = []
        for t in range(T) {
            h = decay * h + x[:, t]
            ys.append(h)
        }
        return stack(ys, dim = 1)
    }
}
"""


def test_save_inputs_keeps_only_the_inputs_of_a_loop():
    ns = compile_spec(SCAN_INPUTS, "scan_inputs")
    layer = ns["ScanInputs"](3).double()
    x = torch.randn(2, 50, 3, dtype=torch.float64, requires_grad=True)
    assert saved_bytes(lambda: layer(x), layer) <= x.numel() * x.element_size()


# A Function's forward annotates every `let` it takes as `float`: `let group = n // 2` is `group: float`.
INT_LET = """\
@function
layer IntLet(n: int) {
    let group = n // 2
    example(n = 4)

    forward(x: [B, n]) {
        return reshape(x, [B, group, -1]) * 2.0
    }
}
"""


def test_an_int_let_is_annotated_int_in_the_function():
    source = compile_spec(INT_LET, "int_let")["SOURCE"]
    assert re.search(r"\bgroup: int\b", source) and not re.search(r"\bgroup: float\b", source)


# where(mask, 1.0, 0.0) (a top-1 one-hot gate) is torch.where of two Python numbers: a tensor of torch's
# default dtype, float32 from a float64 layer (`layerdsl test` fails its shapes check; `check` says nothing).
ONE_HOT_TOP = """\
layer OneHotTop(n: int) {
    example(n = 4)

    forward(x: [B, n]) -> [B, n] {
        return where(x == amax(x, dim = -1, keepdim = true), 1.0, 0.0)
    }
}
"""


def test_where_of_two_numbers_has_the_inputs_dtype():
    layer = compile_spec(ONE_HOT_TOP, "one_hot_top")["OneHotTop"](4)
    assert layer(torch.randn(3, 4, dtype=torch.float64)).dtype == torch.float64


# The same with the name a run-time loop gives the value it carries (`h1 = h`, the `h` before the loop): a dim
# `h1` is overwritten by it in the Function's forward, and `range(h1)` of a tensor fails (TypeError).
def test_a_symbolic_dim_named_like_a_loops_carried_value_keeps_its_name():
    text = DIM_NAMED_LIKE_A_STEP.replace("th", "h1")
    ns = compile_spec(text, "dim_named_like_a_carried_value")
    layer = ns["DimNamedLikeAStep"](3).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


# `update steps = steps + 0.5` of a `long[]` buffer: the float value is cast by `copy_` and truncated, so the
# count never moves (0 after any number of steps); `check` says nothing. A float value into an int or bool
# buffer should be a located error (or the cast written out in the spec).
FLOAT_INTO_LONG = """\
layer HalfSteps(d: int) {
    buffer steps: long[] = zeros
    example(d = 3)

    forward(x: [B, d]) -> [B, d] {
        if training {
            update steps = steps + 0.5
        }
        return x * 2.0
    }
}
"""


def test_a_float_update_of_a_long_buffer_is_an_error():
    assert any("steps" in e for e in _errors({"half_steps.layer": FLOAT_INTO_LONG}))


def test_an_integer_update_of_a_long_buffer_is_accepted():
    assert _errors({"whole_steps.layer": FLOAT_INTO_LONG.replace("steps + 0.5", "steps + 1")}) == []
