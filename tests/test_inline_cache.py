"""Subs inlined once per `gen`: within `inline_cache.reused_inlining()` the emitter's inlining of a
`@function` layer with subs is a copy of the plan's, reused only where every sub layer looked up is the
same; the generated module is the same as with two inlinings."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

import layerdsl.autodiff.inline as inline
from layerdsl.autodiff import inline_cache
from layerdsl.autodiff.inline import inline_subs
from layerdsl.driver import pipeline
from layerdsl.ir.printer import spec_text
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

SPEC = """
layer Scale(d: int) {
    param gain: [d] = uniform(0.5, 1.5)
    example(d = 4)
    forward(x: [..., d]) -> [..., d] {
        return x * gain
    }
}

@function
layer Twice(d: int) {
    sub first = Scale(d)
    sub second = Scale(d)
    example(d = 4)
    forward(x: [B, d]) -> [B, d] {
        return tanh(second(first(x)))
    }
}
"""

OTHER_SCALE = """
layer Scale(d: int) {
    param gain: [d] = uniform(0.5, 1.5)
    example(d = 4)
    forward(x: [..., d]) -> [..., d] {
        return x + gain
    }
}
"""


@pytest.fixture
def counted(monkeypatch) -> list[str]:
    """The layers inlined (not copied from an earlier inlining), by name."""
    calls: list[str] = []
    original = inline._inlined

    def counting(layer, layers):
        calls.append(layer.name)
        return original(layer, layers)

    monkeypatch.setattr(inline, "_inlined", counting)
    return calls


def _layers(text: str, path: str) -> dict:
    spec = parse_file(path, text)
    check_program([spec])
    return {layer.name: layer for layer in spec.layers}


def test_a_layer_is_inlined_once_against_the_same_sub_layers(counted):
    layers = _layers(SPEC, "twice.layer")
    with inline_cache.reused_inlining():
        first = inline_subs(layers["Twice"], layers)
        second = inline_subs(layers["Twice"], dict(layers))  # another mapping, the same layers
    assert counted.count("Twice") == 1
    assert first is not second and first.layer is not second.layer  # a copy: a caller may rewrite it
    assert first.layer.forward is not None and second.layer.forward is not None
    assert [spec_text(s.value) for s in first.layer.forward.body if hasattr(s, "value")] == [
        spec_text(s.value) for s in second.layer.forward.body if hasattr(s, "value")
    ]
    assert first.paths == second.paths


def test_a_sub_layer_that_differs_is_inlined_again(counted):
    layers = _layers(SPEC, "twice.layer")
    other = dict(layers, Scale=_layers(OTHER_SCALE, "other.layer")["Scale"])
    with inline_cache.reused_inlining():
        inline_subs(layers["Twice"], layers)
        inline_subs(layers["Twice"], other)
    assert counted.count("Twice") == 2


def test_without_the_scope_every_inlining_is_computed(counted):
    layers = _layers(SPEC, "twice.layer")
    inline_subs(layers["Twice"], layers)
    inline_subs(layers["Twice"], layers)
    assert counted.count("Twice") == 2


class _NoCache:
    def load_run(self, run):
        return None

    def get(self, entry):
        return None

    def put(self, entry, value):
        pass

    def save_run(self, run, entries):
        pass


def test_gen_inlines_once_and_writes_the_same_module(tmp_path: Path, counted, monkeypatch):
    monkeypatch.setenv("LAYERDSL_JOBS", "1")  # emitted in this process, where the inlinings are counted
    (tmp_path / "twice.layer").write_text(SPEC, encoding="utf-8")
    reused = pipeline.generate([str(tmp_path)], _NoCache())
    assert counted.count("Twice") == 1
    monkeypatch.setattr(inline_cache, "reused_inlining", contextlib.nullcontext)
    counted.clear()
    twice = pipeline.generate([str(tmp_path)], _NoCache())
    assert counted.count("Twice") == 2
    assert reused == twice
