"""The README's editor picture is drawn from what layerdsl reports: editors/screenshot/spec_annotations.py
gives the sample's shape error with its hint, and inlay hints for the clean layer only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "editors" / "screenshot"


def annotations(spec: Path) -> dict:
    run = subprocess.run(
        [sys.executable, str(HERE / "spec_annotations.py"), str(spec)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(run.stdout)


def test_the_sample_shows_the_shape_error_and_the_clean_layers_hints():
    spec = HERE / "diagnostics_sample.layer"
    lines = spec.read_text(encoding="utf-8").splitlines()
    found = annotations(spec)
    [error] = found["diagnostics"]
    assert lines[error["line"] - 1][error["col"] - 1 : error["end_col"] - 1] == "x @ w1"
    assert "inner dims n and hidden differ" in error["message"]
    assert error["hint"] == "did you mean transpose(w1, 0, 1)?"
    placed = [(lines[h["line"] - 1][: h["col"] - 1].strip(), h["label"]) for h in found["hints"]]
    assert placed == [("h", ": [B, hidden]"), ("y", ": [B, out]"), ("return y", "-> [B, out]")]


def test_a_clean_spec_has_hints_and_no_diagnostics(tmp_path):
    spec = tmp_path / "twice.layer"
    spec.write_text(
        "layer Twice(n: int) {\n    example(n = 3)\n\n"
        "    forward(x: [B, n]) -> [B, n] {\n        y = x + x\n        return y\n    }\n}\n",
        encoding="utf-8",
    )
    found = annotations(spec)
    assert found["diagnostics"] == []
    assert [(h["line"], h["col"], h["label"]) for h in found["hints"]] == [(5, 10, ": [B, n]"), (6, 17, "-> [B, n]")]
