"""A folder is a namespace of layer names: a spec's sub (or layer argument type) names the layer of its own
folder first, then of the nearest folder (those above winning a tie); two other folders as near as each
other make the name ambiguous (tests/error_corpus/ambiguous_layer). `gen`, its cache, the package
`__init__`s and the language server all resolve names that way."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from lsprotocol import types as T

from layerdsl.driver.cli import main
from layerdsl.semantics.scopes import Namespace, folder_distance
from layerdsl.syntax import parse_file

# Two layers named Scale: the top folder's multiplies by a weight, the inner folder's adds a bias.
TOP_SCALE = textwrap.dedent("""\
    layer Scale(features: int) {
        param weight: [features] = ones
        example(features = 4)
        forward(x: [B, features]) -> [B, features] {
            return x * weight
        }
    }
    """)
INNER_SCALE = textwrap.dedent("""\
    layer Scale(features: int) {
        param bias: [features] = zeros
        example(features = 4)
        forward(x: [B, features]) -> [B, features] {
            return x + bias
        }
    }
    """)


def user(name: str) -> str:
    return textwrap.dedent(f"""\
        layer {name}() {{
            sub scale = Scale(4)
            example()
            forward(x: [B, 4]) -> [B, 4] {{
                return scale(x)
            }}
        }}
        """)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """specs/scale.layer and specs/inner/scale.layer define Scale; a user of it in each folder, and one in
    a folder below inner."""
    specs = tmp_path / "specs"
    (specs / "inner" / "deeper").mkdir(parents=True)
    (specs / "scale.layer").write_text(TOP_SCALE, encoding="utf-8")
    (specs / "top_user.layer").write_text(user("TopUser"), encoding="utf-8")
    (specs / "inner" / "scale.layer").write_text(INNER_SCALE, encoding="utf-8")
    (specs / "inner" / "inner_user.layer").write_text(user("InnerUser"), encoding="utf-8")
    (specs / "inner" / "deeper" / "deep_user.layer").write_text(user("DeepUser"), encoding="utf-8")
    return tmp_path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("LAYERDSL_CACHE_DIR", str(folder))
    monkeypatch.delenv("LAYERDSL_NO_CACHE", raising=False)
    return folder


def gen(workspace: Path, package: str = "gen_ns") -> Path:
    out = workspace / package
    assert main(["gen", str(workspace / "specs"), "-o", str(out)]) == 0
    return out


def imported(workspace: Path, package: str):
    sys.path.insert(0, str(workspace))
    try:
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]
        return importlib.import_module(package)
    finally:
        sys.path.remove(str(workspace))


def test_the_nearest_folder_wins(workspace: Path, cache: Path):
    out = gen(workspace)
    assert "from .scale import Scale" in (out / "top_user.py").read_text()
    assert "from .scale import Scale" in (out / "inner" / "inner_user.py").read_text()
    assert "from ..scale import Scale" in (out / "inner" / "deeper" / "deep_user.py").read_text()  # inner's
    pkg = imported(workspace, "gen_ns")
    # each package re-exports the Scale its own folder sees; the root's is the top folder's
    assert [*pkg.Scale(4).state_dict()] == ["weight"]
    assert [*pkg.inner.Scale(4).state_dict()] == ["bias"]
    assert pkg.inner.deeper.DeepUser is importlib.import_module("gen_ns.inner.deeper.deep_user").DeepUser
    assert "Scale" in pkg.__all__ and "Scale" in pkg.inner.__all__
    init = (out / "__init__.py").read_text()
    assert "from .scale import Scale" in init and "from .inner.scale import Scale" not in init
    assert "from .inner.inner_user import InnerUser" in init
    # the users run the Scale they resolved
    x = torch.randn(2, 4)
    assert torch.equal(pkg.TopUser()(x), x) and [*pkg.TopUser().state_dict()] == ["scale.weight"]
    assert [*pkg.InnerUser().state_dict()] == ["scale.bias"]
    assert [*pkg.inner.deeper.DeepUser().state_dict()] == ["scale.bias"]


def test_a_root_package_leaves_out_a_name_ambiguous_at_its_folder(workspace: Path, cache: Path):
    """Scale only in two sibling folders: each folder's package re-exports its own, the root neither."""
    specs = workspace / "specs"
    (specs / "scale.layer").unlink()
    (specs / "top_user.layer").unlink()
    (specs / "other").mkdir()
    (specs / "other" / "scale.layer").write_text(TOP_SCALE, encoding="utf-8")
    out = gen(workspace)
    init = (out / "__init__.py").read_text()
    assert "Scale," not in init and '"Scale"' not in init and "InnerUser" in init
    assert '"Scale"' in (out / "other" / "__init__.py").read_text()
    pkg = imported(workspace, "gen_ns")
    other = importlib.import_module("gen_ns.other")
    assert not hasattr(pkg, "Scale") and [*other.Scale(4).state_dict()] == ["weight"]


def test_two_layers_of_one_name_in_one_folder_are_still_an_error(workspace: Path, capsys):
    (workspace / "specs" / "inner" / "again.layer").write_text(TOP_SCALE, encoding="utf-8")
    assert main(["check", str(workspace / "specs")]) == 1
    err = capsys.readouterr().err
    assert (
        "specs/inner/scale.layer:1:7: error: layer 'Scale' is defined twice: here and at specs/inner/again.layer" in err
    )
    assert err.count("error:") == 1


def test_a_nearer_definition_added_later_regenerates_only_its_users(workspace: Path, cache: Path, capsys):
    """The cache keys a module by the layers its folder sees: a Scale added to the inner folder changes
    what inner_user.py imports, and nothing of the top folder's modules."""
    inner = workspace / "specs" / "inner" / "scale.layer"
    inner.unlink()
    out = gen(workspace)
    assert "from ..scale import Scale" in (out / "inner" / "inner_user.py").read_text()
    top = (out / "top_user.py").stat().st_mtime_ns
    inner.write_text(INNER_SCALE, encoding="utf-8")
    capsys.readouterr()
    gen(workspace)
    assert "from .scale import Scale" in (out / "inner" / "inner_user.py").read_text()
    assert "from ..scale import Scale" in (out / "inner" / "deeper" / "deep_user.py").read_text()
    assert (out / "top_user.py").stat().st_mtime_ns == top  # unchanged, not rewritten
    inner.write_text(INNER_SCALE.replace("zeros", "ones"), encoding="utf-8")
    gen(workspace)
    assert "nn.init.ones_(self.bias)" in (out / "inner" / "scale.py").read_text()
    assert (out / "top_user.py").stat().st_mtime_ns == top
    assert main(["gen", str(workspace / "specs"), "-o", str(out), "--check"]) == 0


def test_folder_distance_prefers_the_folders_above():
    assert folder_distance(("a", "b"), ("a", "b")) == (0, 0)
    assert folder_distance(("a", "b"), ("a",)) == (1, 0)
    assert folder_distance(("a", "b"), ("a", "b", "c")) == (1, 1)  # as far, but below: the folder above wins
    assert folder_distance(("a", "b"), ("a", "c")) == (2, 1)
    parent, child = (parse_file(p, TOP_SCALE).layers[0] for p in ("a/s.layer", "a/b/c/s.layer"))
    names = Namespace([child, parent])
    assert names.candidates("Scale", "a/b/u.layer") == [parent]
    assert names.candidates("Scale", "a/b/c/d/u.layer") == [child]
    assert names.key(parent) == "Scale" and names.key(child) == "a/b/c/Scale"


# ---------------------------------------------------------------- the language server agrees


def server_on(root: Path):
    from pygls.workspace import Workspace

    from layerdsl.tools.lsp.documents import LayerServer

    srv = LayerServer()
    srv.protocol._workspace = Workspace(
        root.as_uri(), T.TextDocumentSyncKind.Incremental, [T.WorkspaceFolder(root.as_uri(), "ws")]
    )
    return srv


def opened(srv, path: Path) -> str:
    uri = path.as_uri()
    text = path.read_text(encoding="utf-8")
    srv.workspace.put_text_document(T.TextDocumentItem(uri=uri, language_id="layer", version=1, text=text))
    return uri


def test_the_language_server_goes_to_the_layer_gen_uses(workspace: Path):
    from layerdsl.tools.lsp.navigation import definition_at
    from layerdsl.tools.lsp.show_generated import generated_python

    srv = server_on(workspace)
    specs = workspace / "specs"
    for path, target in [
        (specs / "top_user.layer", specs / "scale.layer"),
        (specs / "inner" / "inner_user.layer", specs / "inner" / "scale.layer"),
        (specs / "inner" / "deeper" / "deep_user.layer", specs / "inner" / "scale.layer"),
    ]:
        uri = opened(srv, path)
        assert srv.analyze(uri).diagnostics == []
        location = definition_at(srv, uri, T.Position(line=1, character=18))  # on `Scale(4)`
        assert location is not None and location.uri == target.as_uri(), path
    code = generated_python(srv, (specs / "inner" / "deeper" / "deep_user.layer").as_uri())
    assert "from ..scale import Scale" in code


def test_the_language_server_reports_an_ambiguous_name_as_gen_does(workspace: Path, capsys):
    specs = workspace / "specs"
    (specs / "scale.layer").unlink()
    (specs / "other").mkdir()
    (specs / "other" / "scale.layer").write_text(TOP_SCALE, encoding="utf-8")
    assert main(["check", str(specs)]) == 1
    err = capsys.readouterr().err
    assert "specs/top_user.layer:2:17: error: layer 'Scale' is ambiguous here" in err
    srv = server_on(workspace)
    (d,) = srv.analyze(opened(srv, specs / "top_user.layer")).diagnostics
    assert (d.span.line, d.span.col) == (2, 17) and d.message.startswith("layer 'Scale' is ambiguous here")
    assert srv.analyze(opened(srv, specs / "inner" / "inner_user.layer")).diagnostics == []


def test_references_and_rename_keep_to_the_layer_each_folder_sees(workspace: Path):
    from layerdsl.tools.lsp.references import references

    srv = server_on(workspace)
    specs = workspace / "specs"
    for scale, users in [
        (specs / "inner" / "scale.layer", {"inner_user.layer", "deep_user.layer"}),
        (specs / "scale.layer", {"top_user.layer"}),
    ]:
        uri = opened(srv, scale)
        params = T.ReferenceParams(
            text_document=T.TextDocumentIdentifier(uri=uri),
            position=T.Position(line=0, character=7),  # on the layer's name
            context=T.ReferenceContext(include_declaration=False),
        )
        assert {Path(loc.uri).name for loc in references(srv, params)} == users, scale


def test_function_layers_of_one_name_get_their_own_backward(tmp_path: Path, cache: Path):
    """The backward plans and the static shapes are kept per layer (`folder/Name` for the deeper one)."""
    specs = tmp_path / "specs"
    (specs / "inner").mkdir(parents=True)
    twice = "@function\nlayer Times() {\n    forward(x: [B, 4]) -> [B, 4] {\n        return x * F\n    }\n}\n"
    (specs / "times.layer").write_text(twice.replace("F", "2.0"), encoding="utf-8")
    (specs / "inner" / "times.layer").write_text(twice.replace("F", "3.0"), encoding="utf-8")
    gen(tmp_path)
    pkg = imported(tmp_path, "gen_ns")
    x = torch.randn(2, 4, requires_grad=True)
    inner = importlib.import_module("gen_ns.inner")
    for module, factor in [(pkg.Times, 2.0), (inner.Times, 3.0)]:
        (grad,) = torch.autograd.grad(module()(x).sum(), x)
        assert torch.equal(grad, torch.full_like(x, factor)), module
