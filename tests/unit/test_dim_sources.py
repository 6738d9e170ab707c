"""Where the output checks read each dim: a value computed from the body being written (the module's
forward or the functional form), not state left by whichever input checks were written last."""

from __future__ import annotations

from layerdsl.codegen.module import LayerEmitter
from layerdsl.codegen.pyexpr import Spelling
from layerdsl.driver.pipeline import check

SPEC = """\
layer Pick(n: int) {
    param w: [n] = ones

    example(n = 3)

    forward(x: [B, n], y: [B, m]) -> [B, m] {
        return reshape(x * w, [-1, m])
    }
}
"""


def test_the_dim_sources_do_not_depend_on_what_was_written_before(tmp_path):
    (tmp_path / "pick.layer").write_text(SPEC, encoding="utf-8")
    _, files, program = check([str(tmp_path)])
    emitter = LayerEmitter(files[0].layers[0], program, None)
    functional, module = Spelling({}, training="training"), emitter.module_spelling()
    before = emitter.dim_sources(functional, on_self=False)
    emitter.shape_checks(module, on_self=True)  # what the module's forward writes
    assert emitter.dim_sources(functional, on_self=False) == before
    assert before["n"] == "w.shape[0]" and before["B"] == "x.shape[0]" and before["m"] == "m"  # the body reads m
    assert emitter.dim_sources(module, on_self=True)["n"] == "self.n"


def test_a_functional_form_checks_its_output_against_its_own_names(tmp_path):
    (tmp_path / "pick.layer").write_text(SPEC, encoding="utf-8")
    _, files, program = check([str(tmp_path)])
    emitter = LayerEmitter(files[0].layers[0], program, None)
    assert program.shapes["Pick"].unproven == {0}  # a reshape to -1: the pass cannot prove the output
    functional = "\n".join(emitter.output_checks(["out"], Spelling({}, training="training"), on_self=False) or [])
    assert "_out0.shape[0] != x.shape[0]" in functional and "_out0.shape[1] != m" in functional
