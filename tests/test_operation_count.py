"""The derivation's operation limit counted before the subs are inlined (autodiff/operation_count.py): past
it, the refusal says so where the tape would have; under it (the tape computing a repeated operation once),
and where the subs' own Functions are composed instead, nothing changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.autodiff.sub_calls import CallPlan
from layerdsl.driver import cli
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file


def _doubling_chain(depth: int) -> str:
    """`depth` layers, each calling its sub twice (`s(s(x))`), `@function` on the top one: 2^(depth-1) calls
    of the bottom one's `tanh`."""
    layers = []
    for k in range(depth - 1):
        top = "@function\n" if k == 0 else ""
        layers.append(
            f"{top}layer A{k}() {{\n    sub s = A{k + 1}()\n    forward(x: [B, D]) {{\n        return s(s(x))\n"
            "    }\n}\n"
        )
    layers.append(f"layer A{depth - 1}() {{\n    forward(x: [B, D]) {{\n        return tanh(x)\n    }}\n}}\n")
    return "\n".join(layers)


def _check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    spec = tmp_path / "counted.layer"
    spec.write_text(text, encoding="utf-8")
    code = cli.main(["check", str(spec)])
    return code, capsys.readouterr().err


def test_past_the_limit_the_count_refuses_where_the_tape_would(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAYERDSL_NO_CACHE", "1")
    text = _doubling_chain(11)  # 1,024 calls of A10's tanh
    code, err = _check(tmp_path, text, capsys)
    assert code == 1
    line = text.splitlines().index("        return tanh(x)") + 1
    (error,) = [e for e in err.split("\n\n") if "error:" in e] or [err]
    assert error.startswith(
        f"counted.layer:{line}:16: error: a derived backward goes through at most 600 operations, and this forward"
        " has more than 600 once its subs inlined (the time to derive it grows with their square) (in the sub 's',"
        " inlined into 'A0')"
    ), err
    # the way out through the sub whose backward derives, as for a tape counted in full
    assert "hint: put @function on A10 instead of A0: its backward derives" in error


# A loop of a written count whose steps read values it does not change: its 64 copies write 11 operations
# each (704), of which the tape computes the 7 that read only `x` and `w` once (263 in all): it derives.
INVARIANT_STEPS = """\
@function
layer Invariant(d: int) {
    param w: [d, d]
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for t in range(64) {
            h = tanh(h * (x @ w) + sin(x) * cos(x) + exp(x) * sigmoid(x))
        }
        return h
    }
}
"""


def test_a_loop_s_operations_on_what_it_does_not_change_are_counted_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAYERDSL_NO_CACHE", "1")
    code, err = _check(tmp_path, INVARIANT_STEPS, capsys)
    assert code == 0, err


# A @function layer calling a @function sub four times: inlined, 4 x 193 operations (past the limit); the
# sub's own backward derives, so the layer's Function runs its Function four times instead.
COMPOSED = """\
@function
layer Block(d: int) {
    param w: [d]
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = x
        for t in range(64) {
            h = tanh(h) * w + h
        }
        return h
    }
}

@function
layer Four(d: int) {
    sub blk = Block(d)
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = blk(x)
        h = blk(h)
        h = blk(h)
        return blk(h)
    }
}
"""


def test_subs_whose_backwards_derive_are_composed_however_long_their_inlining_would_be():
    spec = parse_file("composed.layer", COMPOSED)
    check_program([spec])
    plans, problems = plan_backwards([spec])
    assert not problems
    assert isinstance(plans["Four"], CallPlan)
    assert [c.layer.name for c in plans["Four"].calls] == ["Block"] * 4


def test_a_composed_layer_past_the_limit_is_emitted_from_its_inlined_forward(tmp_path, monkeypatch):
    # the module's forward checks the inlined members' devices under its own name, as before the count
    monkeypatch.setenv("LAYERDSL_NO_CACHE", "1")
    spec = tmp_path / "composed.layer"
    spec.write_text(COMPOSED, encoding="utf-8")
    assert cli.main(["gen", str(spec), "-o", str(tmp_path / "out")]) == 0
    code = (tmp_path / "out" / "composed.py").read_text(encoding="utf-8")
    assert "Four: input 'x' is on" in code
