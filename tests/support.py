"""What several test files share: a spec's text compiled as `layerdsl gen` compiles a file, and run."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file
from layerdsl.testing.layer_checks import generate_package

TORCH_NN_SPECS = Path(__file__).resolve().parent.parent / "specs" / "torch_nn"


def compile_spec(text: str, stem: str = "spec") -> dict:
    """The namespace of the module generated from spec `text` (as file `<stem>.layer`), executed; its source
    under "SOURCE"."""
    spec = parse_file(f"{stem}.layer", text)
    namespace: dict = {}
    source = emit_file(spec, check_program([spec]), f"{stem}.layer", {})
    namespace["SOURCE"] = source
    exec(compile(source, f"{stem}.py", "exec"), namespace)
    return namespace


def torch_nn_with_and_without_function(
    root: Path, files: list[str], layer: str, package: str
) -> tuple[ModuleType, ModuleType]:
    """The packages generated from `files` of specs/torch_nn, first with `@function` added to `layer`, then
    as written (the plain module: autograd)."""
    out = []
    for function in (True, False):
        folder = root / ("function" if function else "plain") / "torch_nn"
        folder.mkdir(parents=True)
        for name in files:
            text = (TORCH_NN_SPECS / name).read_text()
            if function:
                text = text.replace(f"\nlayer {layer}(", f"\n@function\nlayer {layer}(")
            (folder / name).write_text(text)
        name = f"{package}_{'function' if function else 'plain'}"
        generate_package([str(folder.parent)], root / "packages", name)
        out.append(importlib.import_module(name))
    return out[0], out[1]
