"""A new user's first hour: the shipped `generated` package imported as a user's own would be, run-time
requirements (`require`), the messages of run-time checks, and the documents a user reads first.

The checkout's root is on sys.path for the tests because pyproject.toml says so (`pythonpath = ["."]`),
as a user's project root is when they run Python there: `import generated.lenet` then imports the
committed package, not one the editable install exposes (it exposes `layerdsl` only).
"""

from __future__ import annotations

import importlib
import re
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from layerdsl.driver.cli import main
from layerdsl.testing import layer_checks as checks

ROOT = Path(__file__).resolve().parent.parent

BATCH_NORM = """\
# torch.nn.BatchNorm1d written as a spec, with its check of the training batch.
layer SpecBatchNorm(num_features: int, eps: float = 1e-5, momentum: float = 0.1) {
    param weight: [num_features] = ones
    param bias: [num_features] = zeros
    buffer running_mean: [num_features] = zeros
    buffer running_var: [num_features] = ones

    example(num_features = 3)

    forward(x: [B, num_features]) -> [B, num_features] {
        require B > 1 if training, "Expected more than 1 value per channel when training"
        if training {
            mu = mean(x, 0)
            update running_mean = (1 - momentum) * running_mean + momentum * mu
            update running_var = (1 - momentum) * running_var + momentum * var(x, 0)
            y = (x - mu) / sqrt(var(x, 0, correction = 0) + eps)
        } else {
            y = (x - running_mean) / sqrt(running_var + eps)
        }
        return y * weight + bias
    }
}
"""

SCALED_FUNCTION = """\
@function
layer ScaledExp(n: int) {
    param weight: [n] = ones
    example(n = 4)

    forward(x: [B, n]) -> [B, n] {
        require B >= 2 if training
        return exp(x * weight)
    }
}
"""

TRAILING_DOTS = """\
layer PerChannel(channels: int) {
    param scale: [channels] = ones
    example(channels = 3)

    forward(x: [B, channels, ...]) -> [B, channels, ...] {
        return x * 2.0
    }
}
"""


def generated_module(tmp_path: Path, package: str, spec_name: str, text: str):
    """`text` written as `spec_name` (a .layer file), generated into the package `package` and imported."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / spec_name).write_text(text, encoding="utf-8")
    checks.generate_package([str(specs)], tmp_path / "out", package)
    return importlib.import_module(f"{package}.{Path(spec_name).stem}")


# ---------------------------------------------------------------- the shipped package, as a user imports it


def test_the_shipped_generated_package_is_imported_from_the_checkout():
    import generated.lenet

    assert Path(generated.lenet.__file__).resolve() == ROOT / "generated" / "lenet.py"


def test_a_literal_dim_is_stated_once_in_the_input_check():
    from generated.lenet import LeNet

    with pytest.raises(ValueError) as failure:
        LeNet()(torch.randn(2, 3, 28, 28))
    assert str(failure.value) == "LeNet: input 'x' has size 3 at dim 1, expected 1"


def test_the_editable_install_exposes_the_layerdsl_package_only():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wheel = config["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["packages"] == ["layerdsl"]
    assert wheel["dev-mode-exact"] is True  # no .pth with the checkout's root
    # A `layerdsl/` folder in site-packages (force-included grammars) would shadow the exact mapping.
    assert "force-include" not in wheel
    assert (ROOT / wheel["hooks"]["custom"].get("path", "hatch_build.py")).is_file()


# ---------------------------------------------------------------- require


def test_require_raises_as_batch_norm_does_for_a_training_batch_of_one(tmp_path):
    module = generated_module(tmp_path, "first_hour_batch_norm", "spec_batch_norm.layer", BATCH_NORM)
    spec, reference = module.SpecBatchNorm(3), nn.BatchNorm1d(3)

    with pytest.raises(ValueError) as ours:
        spec(torch.randn(1, 3))
    with pytest.raises(ValueError) as torchs:
        reference(torch.randn(1, 3))
    torch_says = str(torchs.value).split(",")[0]
    assert str(ours.value).startswith(f"SpecBatchNorm: {torch_says} (")
    line = BATCH_NORM.splitlines().index('        require B > 1 if training, "' + torch_says + '"') + 1
    assert f"`require B > 1` at specs/spec_batch_norm.layer:{line}; got B = 1" in str(ours.value)
    assert torch.equal(spec.running_var, torch.ones(3)), "the failed call left the running statistics alone"

    x = torch.randn(8, 3)
    torch.testing.assert_close(spec(x), reference(x))
    torch.testing.assert_close(spec.running_mean, reference.running_mean)
    torch.testing.assert_close(spec.running_var, reference.running_var)

    spec.eval(), reference.eval()
    one = torch.randn(1, 3)
    torch.testing.assert_close(spec(one), reference(one))  # the requirement holds in training only


def test_require_is_one_integer_compare_in_the_generated_forward(tmp_path):
    module = generated_module(tmp_path, "first_hour_require_code", "spec_batch_norm.layer", BATCH_NORM)
    source = Path(module.__file__).read_text(encoding="utf-8")
    forward = source[source.index("    def forward(self") :]
    assert re.search(r"^        if self\.training and B <= 1:  # spec_batch_norm\.layer:\d+$", forward, flags=re.M)
    assert forward.count("B = x.shape[0]") == 1


def test_require_in_a_function_layer_is_checked_before_apply(tmp_path):
    module = generated_module(tmp_path, "first_hour_require_function", "scaled_exp.layer", SCALED_FUNCTION)
    layer = module.ScaledExp(4)
    with pytest.raises(ValueError, match=r"ScaledExp: requires B >= 2 \(`require B >= 2` at .*; got B = 1\)"):
        layer(torch.randn(1, 4))
    layer.eval()
    assert layer(torch.randn(1, 4)).shape == (1, 4)
    with pytest.raises(ValueError, match="requires B >= 2"):  # the functional form checks it too
        module.scaled_exp(torch.randn(1, 4), layer.weight, training=True)
    assert module.scaled_exp(torch.randn(1, 4), layer.weight).shape == (1, 4)
    source = Path(module.__file__).read_text(encoding="utf-8")
    assert "ScaledExpFunction.apply(x, weight)" in source  # `training` is not passed to the Function


def test_require_in_the_canonical_layout(tmp_path, capsys):
    spec = tmp_path / "a.layer"
    spec.write_text(
        BATCH_NORM.replace('require B > 1 if training, "Expected', 'require   B>1  if training ,  "Expected'),
        encoding="utf-8",
    )
    assert main(["fmt", str(spec)]) == 0
    assert spec.read_text(encoding="utf-8") == BATCH_NORM


def test_require_checks_the_example_statically(tmp_path, capsys):
    spec = tmp_path / "heads.layer"
    spec.write_text(
        textwrap.dedent("""\
            layer Heads(features: int, num_heads: int = 2) {
                example(features = 8)

                forward(x: [B, features]) -> [B, features] {
                    require features % num_heads == 0, "features must divide into heads"
                    return x
                }
            }
            """),
        encoding="utf-8",
    )
    assert main(["check", str(spec)]) == 0
    spec.write_text(spec.read_text(encoding="utf-8").replace("features = 8", "features = 7"), encoding="utf-8")
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "heads.layer:5:17: error: the example breaks this requirement: features % num_heads == 0 is false" in err
    assert "hint: features must divide into heads" in err


# ---------------------------------------------------------------- shapes with a trailing `...`


def test_trailing_dots_stand_for_the_last_dims(tmp_path):
    module = generated_module(tmp_path, "first_hour_trailing_dots", "per_channel.layer", TRAILING_DOTS)
    layer = module.PerChannel(3)
    assert layer(torch.ones(2, 3, 5, 7)).shape == (2, 3, 5, 7)
    assert layer(torch.ones(2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match="at dim 1, expected channels = 3"):
        layer(torch.ones(2, 4, 5))


# ---------------------------------------------------------------- what a user reads first


def test_the_language_reference_stands_alone():
    text = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    assert "LANGUAGE.md" not in text and not re.search(r"\bcontract\b", text, re.IGNORECASE)
    assert re.search(r"^#+ .*`require`", text, re.MULTILINE), "the require statement has a section"
    assert "[B, C, ...]" in text, "a trailing `...` is documented"


def test_the_readme_says_how_to_use_layerdsl_in_a_project():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Using layerdsl in your project") :]
    section = section[: section.index("\n## ", 1)]
    for needed in ("layerdsl gen", "--check", "pre-commit", "import"):
        assert needed in section, needed


def test_the_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```sh\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert block is not None
    commands = [line for line in block[1].splitlines() if line and not line.startswith("#")]
    assert commands == [
        "pip install torch==2.13.0 && pip install -e . && layerdsl gen specs/ -o generated/",
        'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -q',
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ".ci/readme-commands" in ci  # runs them in a fresh virtual environment
