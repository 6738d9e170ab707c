"""The `layerdsl.showGenerated` command: the Python that `layerdsl gen` would write for a spec, or the
errors that keep it from being generated, as a comment."""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path

from pygls.uris import from_fs_path, to_fs_path

from layerdsl.diagnostics import Diagnostic, SpecError
from layerdsl.tools.lsp.documents import LayerServer, copy_spec, parse_document

log = logging.getLogger(__name__)

SHOW_GENERATED = "layerdsl.showGenerated"


def generated_python(server: LayerServer, uri: str) -> str:
    """The generated Python of the spec at `uri` (imported here: the emitter and black are slow to load,
    and most sessions never ask)."""
    from layerdsl.codegen.module import emit_file
    from layerdsl.driver.pipeline import format_python, relative_import
    from layerdsl.semantics.checker import Program, check_program
    from layerdsl.semantics.scopes import Namespace

    path = os.path.abspath(to_fs_path(uri) or uri)
    try:
        text = server.workspace.get_text_document(uri).source
    except Exception:
        text = None
    if text is None or (text == "" and os.path.exists(path)):
        text = server.disk_text(path) or ""
    root = server.root_for(path)
    shown = Path(os.path.relpath(path, root)).as_posix()
    spec, diagnostics, _ = parse_document(path, text)
    if spec is None or diagnostics:
        return _cannot(shown, diagnostics)
    ws = server.workset(path, text, spec)
    files = [spec] + [copy_spec(f) for f in ws.needed]  # only what this spec uses: others cannot get in the way
    try:
        program = check_program(files)
    except SpecError as exc:
        mine = [d for d in exc.diagnostics if os.path.abspath(d.path) == path]
        if mine:
            return _cannot(shown, mine)
        # problems only in layers it uses: still emit this spec
        namespace = Namespace(layer for f in files for layer in f.layers)
        program = Program(files, dict(namespace.primary), namespace=namespace)
    module = {}  # id(layer) -> its module
    for f in files:
        parts = Path(os.path.relpath(f.path, root)).with_suffix("").parts
        for layer in f.layers:
            module[id(layer)] = parts
    here = Path(os.path.relpath(path, root)).with_suffix("").parts
    seen = program.seen_from(spec.path).layers  # as its folder sees the names
    found = {name: module[id(layer)] for name, layer in seen.items() if id(layer) in module}
    imports = {name: relative_import(here, parts) for name, parts in found.items() if parts != here}
    return format_python(emit_file(spec, program, shown, imports))


def _cannot(shown: str, diagnostics: list[Diagnostic]) -> str:
    n = len(diagnostics)
    lines = [f"# layerdsl: no Python generated for {shown}: {n} error{'s' if n != 1 else ''}", "#"]
    for d in diagnostics:
        d = Diagnostic(shown, d.span, d.message, d.hint, d.severity, d.source)
        lines += ["# " + line for line in d.render().splitlines()]
    return "\n".join(lines) + "\n"


def show_generated(ls: LayerServer, *args):
    """`layerdsl.showGenerated` with arguments `[uri]`: the generated Python of that spec, as a string."""
    uri = args[0] if args else None
    while isinstance(uri, (list, tuple)) and uri:
        uri = uri[0]
    if isinstance(uri, dict):
        uri = uri.get("uri") or uri.get("external") or uri.get("path")
    if not isinstance(uri, str) or not uri:
        return "# layerdsl.showGenerated needs the spec's URI as its argument\n"
    if "://" not in uri:
        uri = from_fs_path(os.path.abspath(uri))
    try:
        return generated_python(ls, uri)
    except Exception as exc:
        log.error("showGenerated failed:\n%s", traceback.format_exc())
        return f"# layerdsl: internal error while generating Python: {type(exc).__name__}: {exc}\n"
