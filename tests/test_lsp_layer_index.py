"""The language server's lazy layer index (tools/lsp/layer_index.py) answers as `Namespace` over every spec
parsed would (the nearest folder, ties ambiguous, a document's own layers first), over random folder trees
with specs that only mention a name in a comment and broken ones; and it parses only the specs that may
define the name looked up."""

from __future__ import annotations

import random

from layerdsl.ir import nodes as N
from layerdsl.semantics.scopes import Namespace
from layerdsl.syntax import parse_partial
from layerdsl.tools.lsp.layer_index import LayerIndex, VisibleLayers, defined_names

NAMES = ["Alpha", "Beta", "Gamma", "Delta"]
FOLDERS = ["/w", "/w/a", "/w/a/b", "/w/a/c", "/w/d", "/w/d/e"]


def _layer(name: str) -> str:
    return f"layer {name}() {{\n    forward(x) {{\n        return x\n    }}\n}}\n"


def _parse(path: str, text: str) -> N.SpecFile | None:
    spec, problems, _ = parse_partial(path, text)
    return spec if spec is not None and not problems else None


def _tree(rng: random.Random) -> dict[str, str]:
    """Spec files by path: each defines some names, mentions another in a comment, or is broken."""
    files = {}
    for k in range(rng.randint(3, 14)):
        folder = rng.choice(FOLDERS)
        parts = [_layer(name) for name in rng.sample(NAMES, rng.randint(0, 2))]
        if rng.random() < 0.3:
            parts.insert(0, f"# layer {rng.choice(NAMES)} is elsewhere\n")
        text = "\n".join(parts) or "# nothing\n"
        if rng.random() < 0.15:
            text += "layer Broken( {\n"
        files[f"{folder}/f{k}.layer"] = text
    return files


def test_the_lazy_index_answers_as_namespace_over_every_spec():
    for seed in range(60):
        rng = random.Random(seed)
        files = _tree(rng)
        path = f"{rng.choice(FOLDERS)}/doc.layer"
        own = _parse(path, "\n".join(_layer(name) for name in rng.sample(NAMES, rng.randint(0, 1))))
        assert own is not None
        parsed = [f for p, text in files.items() if (f := _parse(p, text)) is not None]
        namespace = Namespace([*own.layers, *(layer for f in parsed for layer in f.layers)])
        index = LayerIndex(path, own.layers, files, _parse, lambda p, text: defined_names(text))
        visible = VisibleLayers(index, own.layers)
        for name in NAMES + ["Nowhere"]:
            for user in [path, *files]:
                expected = [(layer.path, layer.name) for layer in namespace.candidates(name, user)]
                got = [(layer.path, layer.name) for layer in index.candidates(name, user)]
                assert got == expected, (seed, name, user)
            meant = namespace.visible(path).get(name)
            assert (visible.get(name) is not None) == (meant is not None), (seed, name)
            if meant is not None:
                assert (visible[name].path, visible[name].name) == (meant.path, meant.name)
            assert [layer.path for layer in index.ambiguous(name)] == [
                layer.path for layer in namespace.candidates(name, path) if len(namespace.candidates(name, path)) > 1
            ]


def test_a_lookup_parses_only_the_specs_that_may_define_the_name():
    files = {f"/w/f{k}.layer": _layer(f"Other{k}") for k in range(50)}
    files["/w/up/helper.layer"] = _layer("Helper")
    files["/w/note.layer"] = "# layer Helper lives in up/\n" + _layer("Noted")
    parsed: list[str] = []

    def parse(p: str, text: str) -> N.SpecFile | None:
        parsed.append(p)
        return _parse(p, text)

    index = LayerIndex("/w/doc.layer", [], files, parse, lambda p, text: defined_names(text))
    [helper] = index.candidates("Helper", "/w/doc.layer")
    assert helper.path == "/w/up/helper.layer"
    assert sorted(parsed) == ["/w/note.layer", "/w/up/helper.layer"]
    assert "Other7" in VisibleLayers(index, []).names() and len(parsed) == 2  # names without parsing
