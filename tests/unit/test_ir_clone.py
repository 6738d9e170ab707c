"""`ir.visit.clone`, the fast deep copy derivation and fusion use: the same copy `copy.deepcopy` makes."""

from __future__ import annotations

import copy
from pathlib import Path

from layerdsl.diagnostics import Span
from layerdsl.driver.pipeline import check
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import clone, walk

ROOT = Path(__file__).resolve().parents[2]


def _layers() -> list[N.Layer]:
    _, files, _ = check([str(ROOT / "specs")])
    return [layer for f in files for layer in f.layers]


def test_clone_equals_deepcopy_and_shares_no_node():
    layers = _layers()
    assert layers
    for layer in layers:
        copied = clone(layer)
        assert repr(copied) == repr(copy.deepcopy(layer)) == repr(layer)
        originals = {id(n) for n in walk(layer)}
        assert originals.isdisjoint(id(n) for n in walk(copied))


def test_clone_keeps_an_object_reached_twice_shared_once():
    name = N.Name(Span(1, 1, 1, 2), "x")
    copied = clone([name, name, {"a": [name]}])
    assert copied[0] is copied[1] is copied[2]["a"][0]
    assert copied[0] is not name and copied[0].id == "x"
