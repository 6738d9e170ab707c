"""What an editor draws over a spec, as layerdsl computes it: the spec's diagnostics and, for each layer
without errors, the inlay hints with the inferred shapes after each binding. Printed as JSON for
render.mjs:

    PYTHONPATH=<checkout> python editors/screenshot/spec_annotations.py SPEC.layer

    {"diagnostics": [{"line", "col", "end_line", "end_col", "severity", "message", "hint"}],
     "hints": [{"line", "col", "label"}]}

Lines and columns are 1-based, end columns exclusive; a hint goes before column `col` (right after the
bound name, or after the returned expression).
"""

from __future__ import annotations

import json
import sys

from layerdsl.diagnostics import Diagnostic, SpecError
from layerdsl.driver.pipeline import check, find_sources, load
from layerdsl.ir import nodes as N
from layerdsl.semantics.checker import Program, check_program
from layerdsl.semantics.shape_check import check_layer_shapes, shape_hints


def spec_diagnostics(spec: str) -> list[Diagnostic]:
    """Every diagnostic `layerdsl check SPEC` reports."""
    try:
        check([spec])
    except SpecError as exc:
        return exc.diagnostics
    return []


def checked_files(spec: str) -> tuple[list[N.SpecFile], Program | None]:
    """The parsed spec with its names resolved by the checker, and the program when it has no error."""
    files, _ = load(find_sources([spec]))
    try:
        return files, check_program(files)
    except SpecError:
        return files, None  # the checker resolved the names of the clean layers all the same


def layer_hints(spec: str, diagnostics: list[Diagnostic]) -> list[tuple[N.Span, str]]:
    """The inlay hints of every layer whose lines hold no diagnostic (a layer with an error gets none, as
    the checker computes no shapes for it)."""
    files, program = checked_files(spec)
    hints: list[tuple[N.Span, str]] = []
    for f in files:
        layers = {layer.name: layer for layer in f.layers}
        for layer, end in zip(f.layers, [*(later.span.line for later in f.layers[1:]), 1 << 30]):
            if any(layer.span.line <= d.span.line < end for d in diagnostics):
                continue
            shapes = program.shapes.get(layer.name) if program else check_layer_shapes(layer, layers)
            if shapes is not None:
                hints += shape_hints(shapes)
    return hints


def editor_annotations(spec: str) -> dict:
    """The diagnostics and inlay hints of `spec`, as JSON-ready data."""
    diagnostics = spec_diagnostics(spec)
    return {
        "diagnostics": [
            {
                "line": d.span.line,
                "col": d.span.col,
                "end_line": d.span.end_line,
                "end_col": d.span.end_col,
                "severity": d.severity,
                "message": d.message,
                "hint": d.hint,
            }
            for d in diagnostics
        ],
        "hints": [
            {"line": span.end_line, "col": span.end_col, "label": label}
            for span, label in layer_hints(spec, diagnostics)
        ],
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python spec_annotations.py SPEC.layer")
    json.dump(editor_annotations(sys.argv[1]), sys.stdout, ensure_ascii=False, indent=2)
    print()
