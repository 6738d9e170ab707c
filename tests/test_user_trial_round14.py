"""What round 14's user's and attacker's trial found, and `layerdsl test`'s function-vs-autograd check for
`@function` layers without a functional form (subs, buffer updates): their Function is compared with the
same spec compiled without `@function`, given the same parameters and buffers (outputs, gradients of the
inputs and of every parameter, the subs' too, buffers after the step, second derivatives). Each comparison
must fail when the generated Function is wrong: a wrong gradient or buffer update is injected into the
generated source before it is imported."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from layerdsl.driver import cli
from layerdsl.testing import layer_checks as checks

RESIDUAL = """\
@function
layer Residual(n: int, hidden: int) {
    sub fc1 = Dense(n, hidden)
    sub fc2 = Dense(hidden, n)
    example(n = 4, hidden = 6)

    forward(x: [B, n]) -> [B, n] {
        return x + fc2(tanh(fc1(x)))
    }
}
"""

DENSE = """\
layer Dense(i: int, o: int) {
    param weight: [o, i]
    param bias: [o] = zeros
    example(i = 3, o = 5)

    forward(x: [..., i]) -> [..., o] {
        return x @ transpose(weight, 0, 1) + bias
    }
}
"""

# a buffer update (EmaCenter) and subs (Residual): neither layer has a functional form
SPECS = {
    "ema_center.layer": """\
@function
layer EmaCenter(n: int, momentum: float = 0.1) {
    buffer running_mean: [n] = zeros
    param scale: [n] = ones
    example(n = 4)

    forward(x: [B, n]) -> [B, n] {
        if training {
            mu = mean(x, dim = 0)
            update running_mean = (1 - momentum) * running_mean + momentum * mu
        } else {
            mu = running_mean
        }
        return (x - mu) * scale
    }
}
""",
    "residual.layer": RESIDUAL + "\n" + DENSE,
}


def generated(root: Path, package: str, edit: tuple[str, str, str] | None = None) -> dict[str, checks.Case]:
    """SPECS generated as `package` under `root`; `edit`: (module, text, replacement) made in the generated
    source before anything imports it."""
    specs = root / "specs"
    specs.mkdir(parents=True)
    for name, text in SPECS.items():
        (specs / name).write_text(text, encoding="utf-8")
    cases = {c.name: c for c in checks.generate_package([str(specs)], root, package)}
    if edit is not None:
        module, old, new = edit
        path = root / package / f"{module}.py"
        source = path.read_text(encoding="utf-8")
        assert old in source, f"the generated source no longer has {old!r}"
        path.write_text(source.replace(old, new), encoding="utf-8")
        importlib.invalidate_caches()
    return cases


@pytest.mark.parametrize("layer", ["EmaCenter", "Residual"])
def test_a_layer_without_functional_form_is_compared_with_its_plain_module(tmp_path, layer):
    cases = generated(tmp_path, f"layerdsl_trial14_intact_{layer.lower()}")
    result, detail = checks.run_check("function-vs-autograd", cases[layer], f"layerdsl_trial14_intact_{layer.lower()}")
    assert (result, detail.split(":")[0]) == ("ok", "as the plain module"), detail
    assert "second derivatives agree" in detail


# (layer, module, generated text, its wrong replacement, what the check says)
INJECTED = [
    (  # the mean's share of grad_x with its sign flipped
        "EmaCenter",
        "ema_center",
        "(grad_mu / -ctx.x_shape[0]).unsqueeze(0)",
        "(grad_mu / ctx.x_shape[0]).unsqueeze(0)",
        "gradients of input 0 differ",
    ),
    (  # the buffer's new value wrong, every output right
        "EmaCenter",
        "ema_center",
        "new_running_mean = (1 - momentum) * running_mean + momentum * mu",
        "new_running_mean = (1 - momentum) * running_mean + 2 * momentum * mu",
        "buffer running_mean differs",
    ),
    (  # a sub's parameter's gradient doubled
        "Residual",
        "residual",
        "grad_fc2_bias = grad_out.sum_to_size(",
        "grad_fc2_bias = 2 * grad_out.sum_to_size(",
        "gradients of fc2.bias differ",
    ),
]


@pytest.mark.parametrize(("layer", "module", "old", "new", "message"), INJECTED, ids=["grad", "buffer", "sub"])
def test_a_wrong_function_fails_the_comparison(tmp_path, layer, module, old, new, message):
    package = f"layerdsl_trial14_wrong_{layer.lower()}_{abs(hash(new)) % 10**6}"
    cases = generated(tmp_path, package, (module, old, new))
    result, detail = checks.run_check("function-vs-autograd", cases[layer], package)
    assert result == "FAIL"
    assert message in detail


def test_layerdsl_test_reports_the_comparison(tmp_path, capsys):
    specs = tmp_path / "specs"
    specs.mkdir()
    for name, text in SPECS.items():
        (specs / name).write_text(text, encoding="utf-8")
    assert cli.main(["test", str(specs), "--example-only"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if "function-vs-autograd" in line]
    assert {(row[0], row[2], row[3]) for row in rows} == {("EmaCenter", "ok", "as"), ("Residual", "ok", "as")}


def test_plain_twin_blanks_decorators_and_backward_in_place():
    """The plain twin's text keeps every other statement at its line and column (its errors, if any, point
    at the spec's lines)."""
    from layerdsl.syntax.parser import parse_file

    text = """\
@function(save = "inputs")
layer Scaled(n: int) {
    param w: [n]
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
    plain = checks.without_functions(parse_file("scaled.layer", text))
    assert plain.count("\n") == text.count("\n")
    assert "@function" not in plain and "backward" not in plain and "grad x" not in plain
    assert plain.splitlines()[5] == text.splitlines()[5]
    assert not parse_file("scaled.layer", plain).layers[0].is_function


# A matmul with a vector operand under @function: the table's formulas transpose the vector (`IndexError:
# Dimension out of range`) or take a batched gradient for a matrix (`Expected size for first two dimensions
# of batch2 tensor`), so every backward below crashed.
VECTOR_PRODUCTS = """\
@function
layer MatVec2(d: int) {
    param q: [d]
    example(d = 4)
    forward(x: [B, d]) -> [B] {
        return x @ q
    }
}

@function
layer MatVec3(d: int) {
    param q: [d]
    example(d = 4)
    forward(x: [B, T, d]) -> [B, T] {
        return x @ q
    }
}

@function
layer VecMatStack(d: int, k: int, b: int) {
    param w: [b, d, k]
    example(d = 4, k = 3, b = 2)
    forward(x: [d]) -> [b, k] {
        return x @ w
    }
}

@function
layer Dot(d: int) {
    param q: [d]
    example(d = 4)
    forward(x: [d]) -> [] {
        return x @ q
    }
}

@function
layer AttentionPool(d: int) {
    param q: [d] = normal(0, 0.02)
    example(d = 4)
    forward(x: [B, T, d], mask: bool[B, T]? = none) -> [B, d] {
        scores = x @ q
        if mask != none {
            scores = where(mask, -1e9, scores)
        }
        p = softmax(scores, dim = 1)
        return sum(x * unsqueeze(p, -1), dim = 1)
    }
}
"""


@pytest.fixture(scope="module")
def vector_products(tmp_path_factory) -> dict[str, checks.Case]:
    specs = tmp_path_factory.mktemp("vector_products") / "specs"
    specs.mkdir()
    (specs / "vector_products.layer").write_text(VECTOR_PRODUCTS, encoding="utf-8")
    return {c.name: c for c in checks.generate_package([str(specs)], specs.parent, "layerdsl_trial14_vectors")}


@pytest.mark.parametrize("layer", ["MatVec2", "MatVec3", "VecMatStack", "Dot", "AttentionPool"])
@pytest.mark.parametrize("check", ["gradcheck", "gradgradcheck", "function-vs-autograd"])
def test_a_matmul_with_a_vector_operand_derives(vector_products, layer, check):
    result, detail = checks.run_check(check, vector_products[layer], "layerdsl_trial14_vectors")
    assert result == "ok", detail


# A layer that reads a buffer after updating it from the batch: the read passes no gradient (as in the
# plain module), so finite differences, which see the update, disagree with autograd itself; gradcheck
# failed such a layer in training. The Function is still compared with plain autograd.
EMA_SCALE = """\
@function
layer EmaScale(n: int, momentum: float = 0.05) {
    buffer running_sq: [n] = ones
    param gain: [n] = ones
    example(n = 6)

    forward(x: [B, n]) -> [B, n] {
        if training {
            update running_sq = (1 - momentum) * running_sq + momentum * mean(x * x, dim = 0)
        }
        return x * gain / sqrt(running_sq + 1e-5)
    }
}
"""


def test_a_buffer_read_after_its_update_skips_finite_differences_in_training_only(tmp_path):
    from dataclasses import replace

    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "ema_scale.layer").write_text(EMA_SCALE, encoding="utf-8")
    (case,) = checks.generate_package([str(specs)], tmp_path, "layerdsl_trial14_ema_scale")
    for check in ("gradcheck", "gradgradcheck"):
        result, detail = checks.run_check(check, case, "layerdsl_trial14_ema_scale")
        assert (result, detail.split(":")[0]) == (
            "skip",
            "forward reads buffer 'running_sq' in the call that updates it (training)",
        )
        evaluated = replace(case, config=checks.Config({}, case.dims(), case.lead(), training=False))
        assert checks.run_check(check, evaluated, "layerdsl_trial14_ema_scale")[0] == "ok"
    assert checks.run_check("function-vs-autograd", case, "layerdsl_trial14_ema_scale")[0] == "ok"


def test_show_compiles_a_spec_with_the_layers_of_its_folder(tmp_path, capsys):
    """`layerdsl show SPEC` of a spec whose sub is another file's layer said "unknown layer" (with a hint to
    pass that file too, which `show` cannot take): it now compiles the spec with its folder, as `gen` does."""
    specs = tmp_path / "specs"
    specs.mkdir()
    for name, text in SPECS.items():
        (specs / name).write_text(text, encoding="utf-8")
    (specs / "dense.layer").write_text(DENSE, encoding="utf-8")
    (specs / "residual.layer").write_text(RESIDUAL, encoding="utf-8")
    assert cli.main(["show", str(specs / "residual.layer"), "--layer", "Residual"]) == 0
    shown = capsys.readouterr().out
    assert "class ResidualFunction(torch.autograd.Function):" in shown and "class Dense(" not in shown
    assert cli.main(["show", str(specs / "residual.layer"), "--shapes"]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("Residual  (specs/residual.layer:") and "Dense" not in listing
    (specs / "residual.layer").write_text("layer Broken {\n", encoding="utf-8")  # its own error, as before
    assert cli.main(["show", str(specs / "residual.layer")]) == 1


def test_many_flags_do_not_multiply_the_matrix(tmp_path):
    """Twelve `bool` arguments made 4,096 flag combinations (32,768 configurations; twenty made over four
    million, and `layerdsl test` ran for hours): past 64 combinations the matrix takes the defaults, all
    true, all false and each flag flipped alone."""
    from layerdsl.testing.configurations import configurations

    flags = ", ".join(f"f{k}: bool = {'true' if k % 2 else 'false'}" for k in range(12))
    ifs = "\n".join(f"        if f{k} {{\n            h = tanh(h * w + {k})\n        }}" for k in range(12))
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "flags.layer").write_text(
        f"layer Flags(d: int, {flags}) {{\n    param w: [d]\n    example(d = 3)\n"
        f"    forward(x: [B, d]) -> [B, d] {{\n        h = x\n{ifs}\n        return h\n    }}\n}}\n",
        encoding="utf-8",
    )
    (case,) = checks.generate_package([str(specs)], tmp_path, "layerdsl_trial14_flags")
    seen = {tuple(c.args.values()) for c in configurations(case)}
    defaults = tuple(bool(k % 2) for k in range(12))
    assert len(seen) == 15
    assert {defaults, (True,) * 12, (False,) * 12} <= seen
    assert all(sum(a != b for a, b in zip(values, defaults)) in (0, 1, 6) for values in seen)


def test_a_long_straight_function_compiles(tmp_path, capsys):
    """100 statements `h = h * w + k` under @function: the Function's forward folded them into one
    expression 200 levels deep and the gradient of `w` was a chain of 100 terms; the passes after them
    recursed past Python's limit (an internal error). Folding stops at a depth, and a long sum is a
    balanced tree."""
    body = "\n".join(f"        h = h * w + {k}" for k in range(100))
    spec = tmp_path / "straight.layer"
    spec.write_text(
        f"@function\nlayer Straight(n: int) {{\n    param w: [n]\n    example(n = 3)\n"
        f"    forward(x: [B, n]) -> [B, n] {{\n        h = x\n{body}\n        return h\n    }}\n}}\n",
        encoding="utf-8",
    )
    assert cli.main(["show", str(spec)]) == 0
    code = capsys.readouterr().out
    assert "class StraightFunction(torch.autograd.Function):" in code
    compile(code, "straight.py", "exec")  # and Python's own parser takes it


def test_an_example_too_big_to_check_fails_before_anything_is_allocated(tmp_path):
    """`example(n = 1000000)` for a `[n, n]` weight: `layerdsl test` asked for 8 TB (a machine with that
    much swap would try); each check now fails at once, naming the count."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "huge.layer").write_text(
        "layer Huge(n: int) {\n    param w: [n, n]\n    example(n = 1000000)\n"
        "    forward(x: [B, n]) -> [B, n] {\n        return x @ w\n    }\n}\n",
        encoding="utf-8",
    )
    (case,) = checks.generate_package([str(specs)], tmp_path, "layerdsl_trial14_huge")
    assert checks.example_elements(case) == 10**12 + 3 * 10**6
    result, detail = checks.run_check("shapes", case, "layerdsl_trial14_huge")
    assert (result, detail.split(" (")[0]) == ("FAIL", "the example's tensors hold 1,000,003,000,000 elements")


def test_show_of_a_spec_naming_an_unknown_layer_reports_its_own_error_not_its_folders(tmp_path, capsys):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.layer").write_text(RESIDUAL.replace("Dense(", "Dens("), encoding="utf-8")
    (specs / "broken.layer").write_text("layer Broken(n: int) {\n    forward(x) {\n        return sqr(x)\n    }\n}\n")
    assert cli.main(["show", str(specs / "a.layer")]) == 1
    errors = capsys.readouterr().err
    assert "unknown layer 'Dens'" in errors and "sqr" not in errors
