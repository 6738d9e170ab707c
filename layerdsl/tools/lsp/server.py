"""`layerdsl lsp`: a language server for `.layer` specs (pygls 2), over stdio.

Features: diagnostics from the real parser and checker (with the other specs of the workspace folder, so
that cross-file `sub` layers resolve), hover, completion, go to definition, document symbols, formatting
(`layerdsl fmt`'s layout) and the `layerdsl.showGenerated` command, which returns the generated Python.

Every analysis is cached per document version. No request may crash the server: a half-typed document
gives diagnostics (and whatever features the last good parse still supports), never an exception.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from lsprotocol import types as T
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path

from layerdsl.diagnostics import Diagnostic, Reporter, Span, SpecError
from layerdsl.ir import nodes as N
from layerdsl.language.ops import CALLABLE, OPS
from layerdsl.language.tables import CONSTANTS, INITS, NN_LAYERS

log = logging.getLogger(__name__)

SHOW_GENERATED = "layerdsl.showGenerated"
SOURCE = "layerdsl"
_SKIP_DIRS = {"node_modules", "__pycache__", "venv", "site-packages"}
_MAX_SPECS = 2000
_SCAN_SECONDS = 0.5

MEMBER_KEYWORDS = ("param", "buffer", "transient", "sub", "let", "example", "forward", "backward")
STATEMENT_KEYWORDS = ("return", "if", "else", "update", "grad")
EXPRESSION_KEYWORDS = ("true", "false", "none", "and", "or", "not", "if")
ARG_TYPES = ("int", "float", "bool", "str")
DTYPE_NAMES = ("float", "long", "int", "bool")
DECORATORS = {
    "function": 'also emit a torch.autograd.Function; `@function(save = "inputs")` saves only the inputs',
    "surrogate": 'a hand-written backward that is deliberately not the true derivative: `@surrogate("why")`',
}


# ---------------------------------------------------------------- parsing and checking


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("layerdsl")
    except Exception:  # not installed: running from a checkout
        return "0.1.0"


def parse_partial(path: str, text: str):
    """Like parser.parse_file, but keeps what it built: (spec or None, diagnostics, lark tree or None).
    The spec is None only on a syntax error; with builder errors it holds every layer built."""
    from lark.exceptions import UnexpectedInput

    from layerdsl.syntax.parser import _Builder, _describe_syntax_error, lark_parser

    reporter = Reporter(path, text)
    try:
        tree = lark_parser().parse(text)
    except UnexpectedInput as exc:
        span, message, hint = _describe_syntax_error(exc, text)
        reporter.error(span, message, hint)
        return None, reporter.diagnostics, None
    try:
        layers = _Builder(reporter).transform(tree)
    except Exception as exc:  # a builder bug: report it, never crash
        orig = getattr(exc, "orig_exc", exc)
        log.error("layerdsl builder failed on %s:\n%s", path, traceback.format_exc())
        reporter.error(
            Span.point(1, 1), f"layerdsl internal error while reading this spec: {type(orig).__name__}: {orig}"
        )
        return None, reporter.diagnostics, tree
    return N.SpecFile(path, text, layers), reporter.diagnostics, tree


@dataclass
class Analysis:
    """Everything the features need about one version of one document."""

    uri: str
    version: int | None
    path: str
    text: str
    spec: N.SpecFile | None  # None on a syntax error
    diagnostics: list[Diagnostic]
    layers: dict[str, N.Layer] = field(default_factory=dict)  # every visible layer: this file's and the workspace's
    sources: dict[str, str] = field(default_factory=dict)  # path -> text of every file a layer came from
    extents: dict[int, Span] = field(default_factory=dict)  # id(layer) -> its whole extent in this file
    root: str = ""


@dataclass
class Workset:
    root: str
    sources: dict[str, str] = field(default_factory=dict)
    near: list[N.SpecFile] = field(default_factory=list)  # pristine
    needed: list[N.SpecFile] = field(default_factory=list)  # pristine, only the layers the document needs
    layers: dict[str, N.Layer] = field(default_factory=dict)  # pristine, every layer, nearest first


def _copy(f: N.SpecFile) -> N.SpecFile:
    return N.SpecFile(f.path, f.source, copy.deepcopy(f.layers))


def _sub_calls(layers) -> set[str]:
    """The layer names called by the subs of `layers` (nn.X excluded)."""
    names = set()
    for layer in layers:
        for sub in layer.subs:
            for node in N.walk(sub.call):
                if isinstance(node, N.Call) and not node.func.startswith("nn.") and node.func != "?":
                    names.add(node.func)
    return names


def _span_from_meta(meta) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


class LayerServer(LanguageServer):
    def __init__(self):
        super().__init__("layerdsl", _version())
        self.analyses: dict[str, Analysis] = {}  # uri -> the latest analysis
        self.last_good: dict[str, Analysis] = {}  # uri -> the latest analysis that parsed
        self._disk: dict[str, tuple[tuple[int, int], str]] = {}  # path -> ((mtime_ns, size), text)
        self._parsed: dict[str, tuple[str, N.SpecFile | None]] = {}  # path -> (text, pristine parse)
        self._scan: dict[str, tuple[float, list[str]]] = {}  # root -> (time, spec paths)
        self.generation = 0  # bumped whenever any spec may have changed
        self._gen_of: dict[str, int] = {}
        self._published: dict[str, list] = {}  # uri -> what was last published

    # -- files of the workspace

    def root_for(self, path: str) -> str:
        candidates = []
        try:
            for folder in self.workspace.folders.values():
                p = to_fs_path(folder.uri)
                if p:
                    candidates.append(p)
            if self.workspace.root_path:
                candidates.append(self.workspace.root_path)
        except Exception:
            pass
        best = ""
        for c in candidates:
            c = os.path.abspath(c)
            if (path == c or path.startswith(c.rstrip(os.sep) + os.sep)) and len(c) > len(best):
                best = c
        return best or os.path.dirname(os.path.abspath(path))

    def spec_paths(self, root: str) -> list[str]:
        now = time.monotonic()
        hit = self._scan.get(root)
        if hit is not None and now - hit[0] < 2.0:
            return hit[1]
        found: list[str] = []
        deadline = now + _SCAN_SECONDS  # a workspace folder may be huge (a home folder): look briefly
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
            for f in sorted(filenames):
                if f.endswith(".layer"):
                    found.append(os.path.join(dirpath, f))
            if len(found) > _MAX_SPECS or time.monotonic() > deadline:
                log.warning("stopped looking for .layer files under %s after %d", root, len(found))
                break
        self._scan[root] = (now, found)
        return found

    def open_texts(self) -> dict[str, str]:
        out = {}
        for uri, doc in list(self.workspace.text_documents.items()):
            path = to_fs_path(uri)
            if path:
                out[os.path.abspath(path)] = doc.source
        return out

    def disk_text(self, path: str) -> str | None:
        try:
            st = os.stat(path)
            key = (st.st_mtime_ns, st.st_size)
            hit = self._disk.get(path)
            if hit is not None and hit[0] == key:
                return hit[1]
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        self._disk[path] = (key, text)
        return text

    def pristine(self, path: str, text: str) -> N.SpecFile | None:
        """Another spec file, parsed once per text and never checked (copies are: the checker annotates)."""
        hit = self._parsed.get(path)
        if hit is not None and hit[0] == text:
            return hit[1]
        try:
            spec, diags, _ = parse_partial(path, text)
        except Exception:
            spec, diags = None, [None]
        spec = spec if spec is not None and not diags else None
        self._parsed[path] = (text, spec)
        return spec

    def workset(self, path: str, text: str, spec: N.SpecFile | None) -> Workset:
        """The other specs that matter to the document at `path`.

        `near` are the specs of its own folder, checked with it in full (as `layerdsl gen` on that folder
        would); `needed` are the layers its subs use, transitively, found in its folder first and then in
        the rest of the workspace folder, nearest first; `layers` indexes every layer of the workspace."""
        root = self.root_for(path)
        here = os.path.dirname(path)
        opened = self.open_texts()
        paths = [os.path.abspath(p) for p in self.spec_paths(root)]
        paths += [p for p in opened if p.endswith(".layer") and os.path.dirname(p) == here and p not in paths]
        others = sorted(
            (p for p in set(paths) if p != path),
            key=lambda q: (os.path.dirname(q) != here, len(Path(os.path.relpath(q, here)).parts), q),
        )
        ws = Workset(root=root, sources={path: text})
        index: dict[str, tuple[str, N.Layer]] = {}
        for p in others:
            t = opened.get(p)
            if t is None:
                t = self.disk_text(p)
            other = self.pristine(p, t) if t is not None else None
            if other is None:
                continue
            ws.sources[p] = t
            if os.path.dirname(p) == here:
                ws.near.append(other)
            for layer in other.layers:
                index.setdefault(layer.name, (p, layer))
                ws.layers.setdefault(layer.name, layer)
        mine = {layer.name for layer in spec.layers} if spec is not None else set()
        todo = list(_sub_calls(spec.layers)) if spec is not None else []
        needed: dict[str, list[N.Layer]] = {}
        done = set(mine)
        while todo:
            name = todo.pop()
            if name in done or name not in index:
                continue
            done.add(name)
            p, layer = index[name]
            needed.setdefault(p, []).append(layer)
            todo += _sub_calls([layer])
        ws.needed = [N.SpecFile(p, ws.sources[p], layers) for p, layers in needed.items()]
        return ws

    def check(self, path: str, text: str, spec: N.SpecFile, ws: Workset) -> tuple[list[Diagnostic], N.SpecFile, object]:
        """Check the document with its folder (and the layers it needs from elsewhere): its diagnostics,
        the checked spec and the program. A checker crash caused by another file is retried without it."""
        from layerdsl.semantics.checker import check_program

        far_needed = [f for f in ws.needed if os.path.dirname(f.path) != os.path.dirname(path)]
        attempts = [
            lambda s: [_copy(f) for f in ws.near] + [s] + [_copy(f) for f in far_needed],
            lambda s: [s] + [_copy(f) for f in ws.needed],
        ]
        crash: Exception | None = None
        for attempt, make in enumerate(attempts):
            if attempt > 0:
                fresh, diags, _ = parse_partial(path, text)
                if fresh is None or diags:
                    break
                spec = fresh
            files = make(spec)
            try:
                program = check_program(files)
                return [], spec, program
            except SpecError as exc:
                return [d for d in exc.diagnostics if os.path.abspath(d.path) == path], spec, None
            except Exception as exc:  # a checker bug: try without the rest of the folder
                log.error("check failed (attempt %d):\n%s", attempt + 1, traceback.format_exc())
                crash = exc
        where = spec.layers[0].span if spec.layers else Span.point(1, 1)
        return [_internal(path, text, crash, where)], spec, None

    # -- analysis

    def analyze(self, uri: str) -> Analysis:
        doc = self.workspace.get_text_document(uri)
        cached = self.analyses.get(uri)
        if (
            cached is not None
            and cached.version == doc.version
            and cached.text == doc.source
            and self._gen_of.get(uri) == self.generation
        ):
            return cached
        analysis = self._analyze(uri, doc.version, doc.source)
        self.analyses[uri] = analysis
        self._gen_of[uri] = self.generation
        if analysis.spec is not None:
            self.last_good[uri] = analysis
        return analysis

    def _analyze(self, uri: str, version: int | None, text: str) -> Analysis:
        path = os.path.abspath(to_fs_path(uri) or uri)
        try:
            spec, diagnostics, tree = parse_partial(path, text)
        except Exception as exc:
            log.error("parse failed:\n%s", traceback.format_exc())
            return Analysis(uri, version, path, text, None, [_internal(path, text, exc)])
        analysis = Analysis(uri, version, path, text, spec, list(diagnostics))
        try:
            ws = self.workset(path, text, spec)
            analysis.sources, analysis.root = ws.sources, ws.root
            analysis.layers = dict(ws.layers)
            if spec is not None:
                for layer in spec.layers:
                    analysis.layers[layer.name] = layer
            if spec is not None and not diagnostics:
                found, checked, _ = self.check(path, text, spec, ws)
                analysis.diagnostics += found
                if checked is not spec:  # re-parsed after a crash elsewhere
                    analysis.spec = spec = checked
                    tree = None
                    try:
                        from layerdsl.syntax.parser import lark_parser

                        tree = lark_parser().parse(text)
                    except Exception:
                        pass
                    for layer in spec.layers:
                        analysis.layers[layer.name] = layer
        except Exception as exc:  # never crash: say so, keep serving
            log.error("analysis failed:\n%s", traceback.format_exc())
            analysis.diagnostics.append(_internal(path, text, exc))
        if analysis.spec is not None and tree is not None:
            layer_trees = [c for c in tree.children if getattr(c, "data", None) == "layer"]
            for layer, lt in zip(analysis.spec.layers, layer_trees):
                analysis.extents[id(layer)] = _span_from_meta(lt.meta)
        return analysis

    def usable(self, uri: str) -> Analysis | None:
        """The current analysis when it parsed, else the last one that did (for half-typed documents)."""
        a = self.analyze(uri)
        if a.spec is not None:
            return a
        return self.last_good.get(uri)

    # -- diagnostics

    def publish(self, uri: str, force: bool = True) -> None:
        try:
            a = self.analyze(uri)
            diagnostics = [lsp_diagnostic(d, a.text, self.codec()) for d in a.diagnostics]
            version = a.version
        except Exception as exc:
            log.error("diagnostics failed:\n%s", traceback.format_exc())
            diagnostics = [
                T.Diagnostic(
                    T.Range(T.Position(0, 0), T.Position(0, 1)),
                    f"layerdsl internal error: {exc}",
                    severity=T.DiagnosticSeverity.Error,
                    source=SOURCE,
                )
            ]
            version = None
        key = [
            (d.range.start.line, d.range.start.character, d.range.end.line, d.range.end.character, d.message)
            for d in diagnostics
        ]
        if not force and self._published.get(uri) == key:
            return
        self._published[uri] = key
        self.text_document_publish_diagnostics(
            T.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics, version=version)
        )

    def publish_others(self, uri: str) -> None:
        for other in list(self.workspace.text_documents):
            if other != uri and other.endswith(".layer"):
                self.publish(other, force=False)

    def codec(self):
        return self.workspace.position_codec


def _internal(path: str, text: str, exc: Exception | None, span: Span | None = None) -> Diagnostic:
    return Diagnostic(
        path,
        span or Span.point(1, 1),
        f"layerdsl internal error: {type(exc).__name__}: {exc}",
        "please report this bug; the spec itself may be fine",
        source=text,
    )


# ---------------------------------------------------------------- positions


def _lines(text: str) -> list[str]:
    return text.split("\n")


def to_position(lines: list[str], line: int, col: int, codec) -> T.Position:
    """A 1-based line and column in code points (Span's convention) as an LSP position."""
    line0 = max(line - 1, 0)
    col0 = max(col - 1, 0)
    text = lines[line0].rstrip("\r") if line0 < len(lines) else ""
    units = codec.client_num_units(text[:col0]) + max(0, col0 - len(text))
    return T.Position(line=line0, character=units)


def to_range(span: Span, text: str, codec) -> T.Range:
    lines = _lines(text)
    start = to_position(lines, span.line, span.col, codec)
    end = to_position(lines, max(span.end_line, span.line), span.end_col, codec)
    if (end.line, end.character) < (start.line, start.character):
        end = start
    return T.Range(start=start, end=end)


def from_position(text: str, pos: T.Position, codec) -> tuple[int, int]:
    """An LSP position as a 1-based line and column in code points."""
    lines = _lines(text)
    if pos.line >= len(lines):
        return len(lines), len(lines[-1]) + 1 if lines else 1
    line = lines[pos.line]
    units = 0
    col = 0
    for ch in line:
        if units >= pos.character:
            break
        units += codec.client_num_units(ch)
        col += 1
    return pos.line + 1, col + 1


def lsp_diagnostic(d: Diagnostic, text: str, codec) -> T.Diagnostic:
    message = d.message + (f"\nhint: {d.hint}" if d.hint else "")
    severity = T.DiagnosticSeverity.Warning if d.severity == "warning" else T.DiagnosticSeverity.Error
    return T.Diagnostic(range=to_range(d.span, text, codec), message=message, severity=severity, source=SOURCE)


def _contains(span: Span, line: int, col: int) -> bool:
    return (span.line, span.col) <= (line, col) <= (span.end_line, span.end_col)


def _size(span: Span) -> tuple[int, int]:
    return (span.end_line - span.line, span.end_col - span.col if span.end_line == span.line else 10**6)


def _text(source: str, span: Span) -> str:
    lines = source.split("\n")
    if span.line == span.end_line:
        return lines[span.line - 1][span.col - 1 : span.end_col - 1] if span.line <= len(lines) else ""
    parts = (
        [lines[span.line - 1][span.col - 1 :]]
        + lines[span.line : span.end_line - 1]
        + [lines[span.end_line - 1][: span.end_col - 1]]
    )
    return "\n".join(parts)


# ---------------------------------------------------------------- what is where


@dataclass
class Ref:
    span: Span
    kind: str  # layer | arg | tensor | sub | let | input | grad | example | init | name | call | kwarg | reduce | target | decorator
    name: str
    node: object
    ctx: str = ""  # construction | forward | backward | shape


def layer_refs(layer: N.Layer) -> list[Ref]:
    refs: list[Ref] = [Ref(layer.span, "layer", layer.name, layer)]
    for d in layer.decorators:
        refs.append(
            Ref(Span(d.span.line, d.span.col, d.span.line, d.span.col + 1 + len(d.name)), "decorator", d.name, d)
        )
    for a in layer.args:
        refs.append(Ref(a.span, "arg", a.name, a))
        if a.default is not None:
            _expr_refs(a.default, "construction", refs)
    for t in layer.tensors:
        refs.append(Ref(t.span, "tensor", t.name, t))
        for d in t.shape.dims:
            if isinstance(d, N.Expr):
                _expr_refs(d, "construction", refs)
        if t.init is not None:
            refs.append(Ref(t.init.span, "init", t.init.name, t.init))
            for v in t.init.args:
                _expr_refs(v, "construction", refs)
            for k in t.init.kwargs:
                refs.append(Ref(k.span, "kwarg", k.name, t.init, "construction"))
                _expr_refs(k.value, "construction", refs)
        if t.cond is not None:
            _expr_refs(t.cond, "construction", refs)
    for s in layer.subs:
        refs.append(Ref(s.span, "sub", s.name, s))
        _expr_refs(s.call, "construction", refs)
    for let in layer.lets:
        refs.append(Ref(let.span, "let", let.name, let))
        _expr_refs(let.value, "construction", refs)
    for ex in layer.examples:
        refs.append(Ref(ex.span, "example", ex.name, ex))
        _expr_refs(ex.value, "example", refs)
    if layer.forward is not None:
        fwd = layer.forward
        for inp in fwd.inputs:
            refs.append(Ref(inp.span, "input", inp.name, inp))
            if inp.shape is not None:
                for d in inp.shape.dims:
                    if isinstance(d, N.Expr):
                        _expr_refs(d, "shape", refs)
        for shape in fwd.outputs or []:
            for d in shape.dims:
                if isinstance(d, N.Expr):
                    _expr_refs(d, "shape", refs)
        _body_refs(fwd.body, "forward", refs)
    if layer.backward is not None:
        for name, span in layer.backward.grads:
            refs.append(Ref(span, "grad", name, layer.backward))
        _body_refs(layer.backward.body, "backward", refs)
    return refs


def _body_refs(body: list[N.Stmt], ctx: str, refs: list[Ref]) -> None:
    for stmt in _stmts(body):
        if isinstance(stmt, (N.Assign, N.IndexAssign, N.Update, N.Grad)):
            refs.append(Ref(stmt.target_span, "target", stmt.target, stmt, ctx))
        if isinstance(stmt, N.IndexAssign):
            for i in stmt.indices:
                refs.append(Ref(i.span, "index", i.id, stmt, ctx))
        match stmt:
            case N.Assign(value=v) | N.IndexAssign(value=v) | N.Update(value=v) | N.Grad(value=v):
                _expr_refs(v, ctx, refs)
            case N.If(cond=c):
                _expr_refs(c, ctx, refs)
            case N.Return(values=vs):
                for v in vs:
                    _expr_refs(v, ctx, refs)


def _stmts(body):
    for stmt in body:
        yield stmt
        if isinstance(stmt, N.If):
            yield from _stmts(stmt.body)
            yield from _stmts(stmt.orelse)


def _expr_refs(expr, ctx: str, refs: list[Ref]) -> None:
    for node in N.walk(expr):
        if isinstance(node, N.Name):
            refs.append(Ref(node.span, "name", node.id, node, ctx))
        elif isinstance(node, N.Call):
            refs.append(Ref(node.func_span, "call", node.func, node, ctx))
            for k in node.kwargs:
                refs.append(Ref(k.span, "kwarg", k.name, node, ctx))
        elif isinstance(node, N.Reduce):
            s = node.span
            refs.append(Ref(Span(s.line, s.col, s.line, s.col + len(node.op)), "reduce", node.op, node, ctx))


def layer_at(a: Analysis, line: int) -> N.Layer | None:
    if a.spec is None:
        return None
    best = None
    for layer in a.spec.layers:
        ext = a.extents.get(id(layer))
        last = ext.end_line - 1 if ext is not None and ext.end_col == 1 else (ext.end_line if ext else 0)
        if ext is not None and ext.line <= line <= last:  # (an extent ends where the next line starts)
            return layer
        start = ext.line if ext else layer.span.line
        if start <= line:
            best = layer
    return best


def ref_at(a: Analysis, line: int, col: int) -> tuple[Ref, N.Layer] | None:
    layer = layer_at(a, line)
    if layer is None:
        return None
    hits = [r for r in layer_refs(layer) if _contains(r.span, line, col)]
    if not hits:
        return None
    # a span under the cursor before one that just ends at it (the cursor after a word); then the innermost
    hits.sort(key=lambda r: ((r.span.end_line, r.span.end_col) == (line, col), _size(r.span)))
    return hits[0], layer


# ---------------------------------------------------------------- resolving names


@dataclass
class Target:
    kind: str  # arg | param | buffer | sub | let | input | local | dim | grad | index | layer | op | init | nn | const | training | reduce | decorator | example
    name: str
    layer: N.Layer | None = None
    node: object = None
    span: Span | None = None  # where it is declared
    path: str | None = None  # the file of that declaration (None: this document)


def _first_binding(body: list[N.Stmt], name: str) -> N.Stmt | None:
    for stmt in _stmts(body):
        if isinstance(stmt, (N.Assign, N.IndexAssign)) and stmt.target == name:
            return stmt
    return None


def _dim_decl(layer: N.Layer, name: str) -> N.Name | None:
    if layer.forward is None:
        return None
    for inp in layer.forward.inputs:
        if inp.shape is None:
            continue
        for d in inp.shape.dims:
            if isinstance(d, N.Name) and d.id == name:
                return d
    return None


def resolve_name(layer: N.Layer, name: str, ctx: str, ref: str = "", at: N.Stmt | None = None) -> Target | None:
    """What `name` means at a place of kind `ctx` in `layer` (`ref` is the checker's answer when it ran)."""
    arg = layer.arg(name)
    tensor = layer.tensor(name)
    let = next((x for x in layer.lets if x.name == name), None)
    sub = next((x for x in layer.subs if x.name == name), None)
    fwd, bwd = layer.forward, layer.backward
    inp = next((i for i in fwd.inputs if i.name == name), None) if fwd else None
    candidates = {
        "arg": (lambda: Target("arg", name, layer, arg, arg.span)) if arg else None,
        "param": (lambda: Target(tensor.kind, name, layer, tensor, tensor.span)) if tensor else None,
        "buffer": (lambda: Target(tensor.kind, name, layer, tensor, tensor.span)) if tensor else None,
        "let": (lambda: Target("let", name, layer, let, let.span)) if let else None,
        "sub": (lambda: Target("sub", name, layer, sub, sub.span)) if sub else None,
        "input": (lambda: Target("input", name, layer, inp, inp.span)) if inp else None,
    }
    if ref in candidates and candidates[ref] is not None:
        return candidates[ref]()
    if ctx in ("construction", "example"):
        order = ["arg", "let"]
    else:
        local_stmt = None
        if fwd is not None:
            local_stmt = _first_binding(fwd.body, name)
        if local_stmt is None and bwd is not None and ctx == "backward":
            local_stmt = _first_binding(bwd.body, name)
        if ref in ("", "local") and local_stmt is not None:
            return Target("local", name, layer, local_stmt, local_stmt.target_span)
        if bwd is not None and ctx == "backward":
            for g, span in bwd.grads:
                if g == name:
                    return Target("grad", name, layer, bwd, span)
        if ref in ("", "dim") or ctx == "shape":
            d = _dim_decl(layer, name)
            if d is not None and not (arg or tensor or let or inp):
                return Target("dim", name, layer, d, d.span)
        order = ["input", "param", "let", "sub", "arg"]
    for kind in order:
        if candidates.get(kind) is not None:
            return candidates[kind]()
    if ctx == "example":
        d = _dim_decl(layer, name)
        if d is not None:
            return Target("dim", name, layer, d, d.span)
        if inp is not None:
            return Target("input", name, layer, inp, inp.span)
    if name == "training":
        return Target("training", name, layer)
    if name in CONSTANTS:
        return Target("const", name, layer)
    return None


def resolve(a: Analysis, ref: Ref, layer: N.Layer) -> Target | None:
    k = ref.kind
    if k == "layer":
        return Target("layer", ref.name, layer, layer, layer.span, layer.path)
    if k in ("arg", "sub", "let", "input"):
        return Target(k, ref.name, layer, ref.node, ref.span)
    if k == "tensor":
        return Target(ref.node.kind, ref.name, layer, ref.node, ref.span)
    if k == "grad":
        return Target("grad", ref.name, layer, ref.node, ref.span)
    if k == "decorator":
        return Target("decorator", ref.name, layer, ref.node)
    if k == "init":
        return Target("init", ref.name, layer, ref.node)
    if k == "reduce":
        return Target("reduce", ref.name, layer, ref.node)
    if k == "example":
        t = resolve_name(layer, ref.name, "example")
        return t
    if k == "index":
        stmt = ref.node
        first = next((i for i in stmt.indices if i.id == ref.name), None)
        return Target("index", ref.name, layer, stmt, first.span if first else ref.span)
    if k == "target":
        stmt = ref.node
        if isinstance(stmt, (N.Assign, N.IndexAssign)):
            bound = resolve_name(layer, ref.name, ref.ctx, "local")
            return bound or Target("local", ref.name, layer, stmt, stmt.target_span)
        return resolve_name(layer, ref.name, ref.ctx, "buffer" if isinstance(stmt, N.Update) else "")
    if k == "name":
        node: N.Name = ref.node
        if ref.ctx == "forward" or ref.ctx == "backward":
            if node.ref == "index":
                stmt = next(
                    (
                        s
                        for s in _stmts(_body(layer, ref.ctx))
                        if isinstance(s, N.IndexAssign) and _within(node.span, s.span)
                    ),
                    None,
                )
                if stmt is not None:
                    first = next((i for i in stmt.indices if i.id == node.id), None)
                    return Target("index", node.id, layer, stmt, first.span if first else node.span)
        return resolve_name(layer, node.id, ref.ctx, node.ref)
    if k == "call":
        return resolve_callee(a, layer, ref.name, ref.ctx)
    if k == "kwarg":
        call = ref.node
        if isinstance(call, N.Init):
            spec = INITS.get(call.name)
            return Target("init", call.name, layer, call) if spec else None
        callee = resolve_callee(a, layer, call.func, ref.ctx)
        if callee is None:
            return None
        if callee.kind == "layer":
            target_layer: N.Layer = callee.node
            arg = target_layer.arg(ref.name)
            if arg is not None:
                return Target("arg", arg.name, target_layer, arg, arg.span, target_layer.path)
            return callee
        if callee.kind == "op":
            return Target("op-param", ref.name, layer, callee.node)
        return callee
    return None


def _body(layer: N.Layer, ctx: str) -> list[N.Stmt]:
    if ctx == "backward" and layer.backward is not None:
        return layer.backward.body
    return layer.forward.body if layer.forward is not None else []


def _within(inner: Span, outer: Span) -> bool:
    return (outer.line, outer.col) <= (inner.line, inner.col) and (inner.end_line, inner.end_col) <= (
        outer.end_line,
        outer.end_col,
    )


def resolve_callee(a: Analysis, layer: N.Layer, func: str, ctx: str) -> Target | None:
    if func.startswith("nn."):
        return Target("nn", func[3:], layer)
    sub = next((s for s in layer.subs if s.name == func), None)
    if sub is not None and ctx in ("forward", "backward"):
        return Target("sub", func, layer, sub, sub.span)
    if func in CALLABLE:
        return Target("op", func, layer, CALLABLE[func])
    other = a.layers.get(func)
    if other is not None:
        return Target("layer", func, other, other, other.span, other.path)
    return None


# ---------------------------------------------------------------- hover text


def _eval(expr, env: dict):
    match expr:
        case N.Num(value=v):
            return v
        case N.Bool(value=v):
            return v
        case N.Name(id=i):
            if i in env:
                return env[i]
            if i == "pi":
                return math.pi
            if i == "inf":
                return math.inf
            raise KeyError(i)
        case N.UnaryOp(op=op, operand=o):
            v = _eval(o, env)
            return -v if op == "-" else +v
        case N.BinOp(op=op, left=l, right=r):
            x, y = _eval(l, env), _eval(r, env)
            return {
                "+": lambda: x + y,
                "-": lambda: x - y,
                "*": lambda: x * y,
                "/": lambda: x / y,
                "//": lambda: x // y,
                "%": lambda: x % y,
                "**": lambda: x**y,
            }[op]()
        case N.Call(func=f, args=args, kwargs=[]) if f in CALLABLE and CALLABLE[f].scalar:
            fn = {"abs": abs, "round": round, "max": max, "min": min}.get(CALLABLE[f].scalar)
            if fn is None and CALLABLE[f].scalar.startswith("math."):
                fn = getattr(math, CALLABLE[f].scalar[5:])
            return fn(*[_eval(x, env) for x in args])
    raise ValueError("not computable")


def example_env(layer: N.Layer) -> dict:
    from layerdsl.semantics.checker import literal_value

    env = {}
    for a in layer.args:
        if a.default is not None:
            try:
                env[a.name] = literal_value(a.default)
            except Exception:
                pass
    for ex in layer.examples:
        try:
            env[ex.name] = literal_value(ex.value)
        except Exception:
            pass
    for let in layer.lets:
        try:
            env[let.name] = _eval(let.value, env)
        except Exception:
            pass
    return env


def _shape_values(shape: N.Shape | None, env: dict) -> tuple[list | None, int | None]:
    if shape is None:
        return None, None
    values = []
    for d in shape.dims:
        if isinstance(d, N.EllipsisItem):
            values.append("...")
            continue
        try:
            v = _eval(d, env)
        except Exception:
            return None, None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool):
            return None, None
        values.append(v)
    if "..." in values:
        return values, None
    return values, math.prod(values)


_DTYPE_DOC = {
    "float": "the module's floating dtype (float32 by default)",
    "long": "torch.long (int64)",
    "int": "torch.int (int32)",
    "bool": "torch.bool",
}


def _expr_text(source: str, e) -> str:
    """The source of an expression on one line (a wrapped list is joined back)."""
    try:
        text = _text(source, e.span)
    except Exception:
        return "…"
    if "\n" in text and '"""' not in text:
        text = re.sub(r"\s*#[^\n]*", "", text)
        text = re.sub(r"\s*\n\s*", " ", text)
        text = re.sub(r"([(\[]) ", r"\1", text)
        text = re.sub(r",? ([)\]])", r"\1", text)
    return text


def _shape_text(source: str, shape: N.Shape | None) -> str:
    return _text(source, shape.span) if shape is not None else "[...]"


def init_signature(name: str) -> str:
    spec = INITS[name]
    params = [f"{p} = {d}" if d else p for p, d in spec.params]
    if spec.fan_based:
        params += ["fan_in = …", "fan_out = …"]
    return f"{name}({', '.join(params)})" if params else name


def layer_signature(layer: N.Layer, source: str) -> str:
    args = []
    for a in layer.args:
        s = f"{a.name}: {a.type}"
        if a.default is not None:
            s += f" = {_expr_text(source, a.default)}"
        args.append(s)
    return f"layer {layer.name}({', '.join(args)})"


def _code(text: str) -> str:
    return f"```layer\n{text}\n```"


def hover_markdown(a: Analysis, target: Target) -> str | None:
    layer = target.layer
    src = a.sources.get(layer.path, a.text) if layer is not None and layer.path != a.path else a.text
    k = target.kind
    if k in ("param", "buffer"):
        t: N.Tensor = target.node
        kind = t.kind if t.persistent or t.kind == "param" else "transient buffer"
        dtype_prefix = t.dtype if t.dtype != "float" and t.kind == "buffer" else ""
        head = f"{kind} {t.name}: {dtype_prefix}{_shape_text(src, t.shape)}"
        if t.init is not None:
            head += f" = {_init_text(src, t.init)}"
        if t.cond is not None:
            head += f" if {_expr_text(src, t.cond)}"
        lines = [_code(head), f"- dtype: {_DTYPE_DOC.get(t.dtype, t.dtype)}"]
        values, count = _shape_values(t.shape, example_env(layer))
        if values is not None:
            lines.append(
                f"- shape with the example values: [{', '.join(map(str, values))}]"
                + (f", {count:,} element{'s' if count != 1 else ''}" if count is not None else "")
            )
        if t.init is None:
            lines.append(
                f"- init (default): {'kaiming_uniform(a = sqrt(5))' if t.kind == 'param' and len(t.shape.dims) >= 2 else 'zeros'}"
            )
        elif t.init.name in INITS:
            lines.append(f"- init: {t.init.name}: {INITS[t.init.name].doc}")
        if t.cond is not None:
            lines.append(f"- optional: registered as None unless `{_expr_text(src, t.cond)}`")
        return "\n".join(lines)
    if k == "arg":
        arg: N.Arg = target.node
        head = f"(argument) {arg.name}: {arg.type}"
        if arg.default is not None:
            head += f" = {_expr_text(src, arg.default)}"
        lines = [
            _code(head),
            f"- type: {arg.type}",
            "- default: " + (f"`{_expr_text(src, arg.default)}`" if arg.default is not None else "none (required)"),
        ]
        ex = next((e for e in layer.examples if e.name == arg.name), None) if layer else None
        if ex is not None:
            lines.append(f"- example: `{_expr_text(src, ex.value)}`")
        if layer is not None:
            lines.append(f"- argument of layer `{layer.name}`")
        return "\n".join(lines)
    if k == "let":
        let: N.Let = target.node
        lines = [_code(f"let {let.name} = {_expr_text(src, let.value)}"), "a constant computed once at construction"]
        env = example_env(layer)
        if let.name in env:
            lines.append(
                f"- with the example values: {env[let.name]:g}" if isinstance(env[let.name], (int, float)) else ""
            )
        return "\n".join(x for x in lines if x)
    if k == "sub":
        sub: N.Sub = target.node
        lines = [_code(f"sub {sub.name} = {_expr_text(src, sub.call)}")]
        callee = resolve_callee(a, layer, sub.call.func, "construction")
        if callee is not None and callee.kind == "layer" and callee.node.docstring:
            lines.append(callee.node.docstring)
        elif callee is not None and callee.kind == "nn":
            lines.append(f"a `torch.nn.{callee.name}` submodule")
        return "\n".join(lines)
    if k == "input":
        inp: N.Input = target.node
        dtype_prefix = inp.dtype if inp.dtype != "float" else ""
        lines = [
            _code(f"(input) {inp.name}: {dtype_prefix}{_shape_text(src, inp.shape)}"),
            f"- dtype: {_DTYPE_DOC.get(inp.dtype, inp.dtype)}",
        ]
        values, count = _shape_values(inp.shape, example_env(layer))
        if values is not None:
            lines.append(
                f"- shape with the example values: [{', '.join(map(str, values))}]"
                + (f", {count:,} element{'s' if count != 1 else ''}" if count is not None else "")
            )
        return "\n".join(lines)
    if k == "local":
        return _code(f"(local) {target.name}") + "\na name bound by an assignment in forward or backward"
    if k == "dim":
        lines = [_code(f"(dim) {target.name}: int"), "a symbolic size, bound from the inputs' shapes at run time"]
        env = example_env(layer) if layer else {}
        if target.name in env:
            lines.append(f"- example: {env[target.name]}")
        return "\n".join(lines)
    if k == "grad":
        return _code(f"(gradient) {target.name}") + "\nthe incoming gradient of one output of forward"
    if k == "index":
        return _code(f"(index) {target.name}") + "\nan index variable of this index-notation statement"
    if k == "op":
        op = target.node
        return "\n".join([_code(op.signature), op.doc, f"- PyTorch: `{op.torch}`"])
    if k == "op-param":
        op = target.node
        p = op.param(target.name)
        if p is None:
            return _code(op.signature)
        return (
            _code(f"(parameter of {op.name}) {p.name}" + (f" = {p.default}" if p.default is not None else ""))
            + f"\n{op.signature}"
        )
    if k == "reduce":
        op = OPS.get(target.name)
        return (
            _code(f"{target.name}[INDEX, ...](EXPR)")
            + f"\nindex-notation reduction: {op.doc if op else target.name} over the listed indices"
        )
    if k == "init":
        if target.name not in INITS:
            return None
        spec = INITS[target.name]
        lines = [_code(f"(initialiser) {init_signature(target.name)}"), spec.doc]
        if spec.fan_based:
            lines.append("fan-based: `fan_in =` / `fan_out =` state the fans of a layout that is not torch's [out, in]")
        return "\n".join(lines)
    if k == "layer":
        other: N.Layer = target.node
        osrc = a.sources.get(other.path, a.text) if other.path != a.path else a.text
        lines = [_code(layer_signature(other, osrc))]
        if other.docstring:
            lines.append(other.docstring)
        if other.path != a.path:
            lines.append(f"- defined in {os.path.relpath(other.path, a.root) if a.root else other.path}")
        return "\n".join(lines)
    if k == "nn":
        return _code(f"nn.{target.name}") + f"\nthe PyTorch layer `torch.nn.{target.name}`"
    if k == "const":
        return _code(f"(constant) {target.name}") + ("\nπ = 3.14159…" if target.name == "pi" else "\ninfinity")
    if k == "training":
        return _code("training: bool") + "\ntrue while the module is in training mode"
    if k == "decorator":
        return _code(f"@{target.name}") + (f"\n{DECORATORS[target.name]}" if target.name in DECORATORS else "")
    return None


def _init_text(source: str, init: N.Init) -> str:
    parts = [_expr_text(source, x) for x in init.args] + [
        f"{k.name} = {_expr_text(source, k.value)}" for k in init.kwargs
    ]
    return f"{init.name}({', '.join(parts)})" if parts else init.name


# ---------------------------------------------------------------- completion

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")


def _scan_depths(text: str) -> tuple[int, int]:
    """Brace depth and bracket depth at the end of `text`, skipping strings and comments."""
    braces = brackets = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == '"':
            if text.startswith('"""', i):
                j = text.find('"""', i + 3)
                i = n if j < 0 else j + 3
            else:
                j = i + 1
                while j < n and text[j] not in '"\n':
                    j += 2 if text[j] == "\\" else 1
                i = j + 1
            continue
        if c == "{":
            braces += 1
        elif c == "}":
            braces = max(0, braces - 1)
        elif c in "([":
            brackets += 1
        elif c in ")]":
            brackets = max(0, brackets - 1)
        i += 1
    return braces, brackets


def _item(
    label: str, kind: T.CompletionItemKind, detail: str | None = None, doc: str | None = None, sort: str = "5"
) -> T.CompletionItem:
    return T.CompletionItem(
        label=label,
        kind=kind,
        detail=detail,
        documentation=T.MarkupContent(kind=T.MarkupKind.Markdown, value=doc) if doc else None,
        sort_text=f"{sort}{label}",
    )


def _op_items() -> list[T.CompletionItem]:
    return [_item(op.name, T.CompletionItemKind.Function, op.signature, op.doc, "3") for op in CALLABLE.values()]


def _keyword_items(words) -> list[T.CompletionItem]:
    return [_item(w, T.CompletionItemKind.Keyword, sort="2") for w in words]


def _regex_names(text: str) -> dict[str, str]:
    """Names declared in the text, found without parsing (for half-typed documents)."""
    names: dict[str, str] = {}
    for m in re.finditer(r"^\s*(?:transient\s+)?(param|buffer|sub|let)\s+([A-Za-z_]\w*)", text, re.M):
        names.setdefault(m.group(2), m.group(1))
    for m in re.finditer(r"^\s*([A-Za-z_]\w*)\s*(?:\[[^\]]*\])?\s*=[^=]", text, re.M):
        names.setdefault(m.group(1), "local")
    return names


def completion_items(server: LayerServer, uri: str, pos: T.Position) -> list[T.CompletionItem]:
    doc = server.workspace.get_text_document(uri)
    text = doc.source
    line, col = from_position(text, pos, server.codec())
    lines = _lines(text)
    current = lines[line - 1] if line - 1 < len(lines) else ""
    prefix = current[: col - 1]
    offset = sum(len(l) + 1 for l in lines[: line - 1]) + len(prefix)
    braces, brackets = _scan_depths(text[:offset])
    word = _WORD.search(prefix)
    before = prefix[: len(prefix) - len(word.group())] if word else prefix
    a = server.usable(uri)

    # nn. layers in a sub
    if re.search(r"\bnn\.[A-Za-z0-9_]*$", prefix):
        return [
            _item(name, T.CompletionItemKind.Class, f"torch.nn.{name}", f"the PyTorch layer `torch.nn.{name}`")
            for name in NN_LAYERS
        ]
    if before.rstrip().endswith("."):
        return []
    # decorators
    if re.match(r"^\s*@[A-Za-z_]*$", prefix):
        return [_item(n, T.CompletionItemKind.Function, f"@{n}", d) for n, d in DECORATORS.items()]
    # initialisers after `=` in a param or buffer line
    m = re.match(r"^\s*(?:transient\s+)?(param|buffer)\b(.*)$", prefix)
    if (
        m
        and brackets == 0
        and re.search(r"(?<![=!<>])=\s*[A-Za-z_]*$", m.group(2))
        and "if" not in m.group(2).split("=")[-1].split()
    ):
        return [_item(n, T.CompletionItemKind.Constructor, init_signature(n), s.doc, "1") for n, s in INITS.items()]
    # the type of an argument
    if brackets > 0 and re.search(r"^\s*(?:@\w+\s*)?layer\b", current) and re.search(r":\s*[A-Za-z_]*$", prefix):
        return _keyword_items(ARG_TYPES)
    # a layer or nn.X after `sub NAME =`
    if re.match(r"^\s*sub\s+[A-Za-z_]\w*\s*=\s*[A-Za-z_]*$", prefix):
        layers = sorted(a.layers) if a else []
        items = [_item("nn.", T.CompletionItemKind.Module, "torch.nn layers", sort="1")]
        for name in layers:
            target = a.layers[name]
            items.append(_item(name, T.CompletionItemKind.Class, f"layer {name}", target.docstring, "2"))
        return items
    # `else` after the `}` of an if
    if brackets == 0 and braces >= 2 and before.strip() == "}":
        return _keyword_items(["else"])
    # the dtype of a buffer or an input, before its shape
    if re.search(r"^\s*(?:transient\s+)?buffer\s+\w+\s*:\s*[A-Za-z_]*$", prefix) or (
        brackets > 0 and re.match(r"^\s*forward\s*\(", current) and re.search(r"\w+\s*:\s*[A-Za-z_]*$", prefix)
    ):
        return _keyword_items(DTYPE_NAMES)
    # example values: arguments, dims and inputs, and the input distributions
    if brackets > 0 and re.match(r"^\s*example\s*\(", current) and re.search(r"(?:\(|,)\s*[A-Za-z_]*$", prefix):
        return _example_items(a, line)
    # the start of a line: keywords that may stand there
    if brackets == 0 and before.strip() == "":
        if braces == 0:
            return _keyword_items(["layer"]) + [
                _item(f"@{n}", T.CompletionItemKind.Keyword, None, d, "2") for n, d in DECORATORS.items()
            ]
        if braces == 1:
            return _keyword_items(MEMBER_KEYWORDS)
        return _keyword_items(STATEMENT_KEYWORDS) + _name_items(a, text, line, True)
    # an expression
    in_body = braces >= 2
    items = _op_items() + _keyword_items(EXPRESSION_KEYWORDS) + _name_items(a, text, line, in_body)
    return items


def _example_items(a: Analysis | None, line: int) -> list[T.CompletionItem]:
    layer = layer_at(a, line) if a is not None else None
    items = []
    if layer is not None:
        for arg in layer.args:
            items.append(_item(arg.name, T.CompletionItemKind.Variable, f"argument: {arg.type}", sort="1"))
        if layer.forward is not None:
            for inp in layer.forward.inputs:
                items.append(
                    _item(
                        inp.name, T.CompletionItemKind.Variable, "input: uniform(a, b) or normal(mean, std)", sort="2"
                    )
                )
            for d in _dims(layer):
                items.append(_item(d, T.CompletionItemKind.TypeParameter, "dim", sort="1"))
    return items


def _dims(layer: N.Layer) -> list[str]:
    names = {a.name for a in layer.args} | {t.name for t in layer.tensors} | {l.name for l in layer.lets}
    out: list[str] = []
    for inp in layer.forward.inputs if layer.forward else []:
        for d in inp.shape.dims if inp.shape is not None else []:
            if isinstance(d, N.Name) and d.id not in names and d.id not in out and d.id not in CONSTANTS:
                out.append(d.id)
    return out


def _name_items(a: Analysis | None, text: str, line: int, in_body: bool) -> list[T.CompletionItem]:
    names: dict[str, tuple[T.CompletionItemKind, str]] = {}
    kinds = {
        "arg": T.CompletionItemKind.Variable,
        "param": T.CompletionItemKind.Field,
        "buffer": T.CompletionItemKind.Field,
        "let": T.CompletionItemKind.Constant,
        "sub": T.CompletionItemKind.Module,
        "input": T.CompletionItemKind.Variable,
        "local": T.CompletionItemKind.Variable,
        "dim": T.CompletionItemKind.TypeParameter,
    }
    layer = layer_at(a, line) if a is not None else None
    if layer is not None:
        for arg in layer.args:
            names[arg.name] = (kinds["arg"], f"argument: {arg.type}")
        for let in layer.lets:
            names[let.name] = (kinds["let"], "let")
        if in_body:
            for t in layer.tensors:
                names[t.name] = (kinds[t.kind], t.kind)
            for s in layer.subs:
                names[s.name] = (kinds["sub"], "sub")
            if layer.forward is not None:
                for inp in layer.forward.inputs:
                    names[inp.name] = (kinds["input"], "input")
                    if inp.shape is not None:
                        for d in inp.shape.dims:
                            if isinstance(d, N.Name) and d.id not in names:
                                names[d.id] = (kinds["dim"], "dim")
                for stmt in _stmts(layer.forward.body):
                    if isinstance(stmt, (N.Assign, N.IndexAssign)):
                        names.setdefault(stmt.target, (kinds["local"], "local"))
    if in_body:
        for name, kind in _regex_names(text).items():
            names.setdefault(name, (kinds.get(kind, T.CompletionItemKind.Variable), kind))
        names.setdefault("training", (T.CompletionItemKind.Constant, "true in training mode"))
    for c in CONSTANTS:
        names.setdefault(c, (T.CompletionItemKind.Constant, "constant"))
    return [_item(n, k, d, sort="1") for n, (k, d) in names.items()]


# ---------------------------------------------------------------- symbols


def document_symbols(a: Analysis, codec) -> list[T.DocumentSymbol]:
    out = []
    text = a.text
    lines = _lines(text)
    nlines = len(lines)

    def rng(span: Span) -> T.Range:
        span = Span(min(span.line, nlines), span.col, min(span.end_line, nlines), span.end_col)
        return to_range(span, text, codec)

    for layer in a.spec.layers if a.spec else []:
        extent = a.extents.get(id(layer), layer.span)
        children = []
        for t in layer.tensors:
            kind = T.SymbolKind.Field if t.kind == "param" else T.SymbolKind.Variable
            children.append(
                T.DocumentSymbol(
                    name=t.name,
                    kind=kind,
                    detail=t.kind if t.persistent else "transient buffer",
                    range=rng(t.span),
                    selection_range=rng(t.span),
                )
            )
        for s in layer.subs:
            children.append(
                T.DocumentSymbol(
                    name=s.name,
                    kind=T.SymbolKind.Module,
                    detail=f"sub {s.call.func}",
                    range=rng(s.span),
                    selection_range=rng(s.span),
                )
            )
        for let in layer.lets:
            children.append(
                T.DocumentSymbol(
                    name=let.name,
                    kind=T.SymbolKind.Constant,
                    detail="let",
                    range=rng(let.span),
                    selection_range=rng(let.span),
                )
            )
        for name, block in (("forward", layer.forward), ("backward", layer.backward)):
            if block is not None:
                sel = Span(block.span.line, block.span.col, block.span.line, block.span.col + len(name))
                children.append(
                    T.DocumentSymbol(
                        name=name, kind=T.SymbolKind.Method, range=rng(block.span), selection_range=rng(sel)
                    )
                )
        children.sort(key=lambda s: (s.range.start.line, s.range.start.character))
        full = extent if _within(layer.span, extent) else layer.span
        out.append(
            T.DocumentSymbol(
                name=layer.name,
                kind=T.SymbolKind.Class,
                detail=layer_signature(layer, text)[6:],
                range=rng(full),
                selection_range=rng(layer.span),
                children=children,
            )
        )
    return out


# ---------------------------------------------------------------- generated Python


def generated_python(server: LayerServer, uri: str) -> str:
    from layerdsl.codegen.module import emit_file
    from layerdsl.driver.pipeline import _relative, format_python
    from layerdsl.semantics.checker import Program, check_program

    path = os.path.abspath(to_fs_path(uri) or uri)
    try:
        text = server.workspace.get_text_document(uri).source
    except Exception:
        text = None
    if text is None or (text == "" and os.path.exists(path)):
        text = server.disk_text(path) or ""
    root = server.root_for(path)
    shown = Path(os.path.relpath(path, root)).as_posix()
    spec, diagnostics, _ = parse_partial(path, text)
    if spec is None or diagnostics:
        return _cannot(shown, diagnostics)
    ws = server.workset(path, text, spec)
    files = [spec] + [_copy(f) for f in ws.needed]  # only what this spec uses: others cannot get in the way
    try:
        program = check_program(files)
    except SpecError as exc:
        mine = [d for d in exc.diagnostics if os.path.abspath(d.path) == path]
        if mine:
            return _cannot(shown, mine)
        program = Program(files)  # problems only in layers it uses: still emit this spec
        for f in files:
            for layer in f.layers:
                program.layers.setdefault(layer.name, layer)
    module = {}
    for f in files:
        parts = Path(os.path.relpath(f.path, root)).with_suffix("").parts
        for layer in f.layers:
            module[layer.name] = parts
    here = Path(os.path.relpath(path, root)).with_suffix("").parts
    imports = {name: _relative(here, parts) for name, parts in module.items() if parts != here}
    return format_python(emit_file(spec, program, shown, imports))


def _cannot(shown: str, diagnostics: list[Diagnostic]) -> str:
    n = len(diagnostics)
    lines = [f"# layerdsl: no Python generated for {shown}: {n} error{'s' if n != 1 else ''}", "#"]
    for d in diagnostics:
        d = Diagnostic(shown, d.span, d.message, d.hint, d.severity, d.source)
        lines += ["# " + line for line in d.render().splitlines()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the server

server = LayerServer()


def _safe(default=None):
    """Run a feature; on any exception log it and answer `default` (the server must never crash)."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception:
                log.error("layerdsl %s failed:\n%s", fn.__name__, traceback.format_exc())
                try:
                    server.window_log_message(
                        T.LogMessageParams(
                            type=T.MessageType.Error,
                            message=f"layerdsl {fn.__name__} failed:\n{traceback.format_exc()}",
                        )
                    )
                except Exception:
                    pass
                return default

        return run

    return wrap


def _republish(ls: LayerServer, uri: str) -> None:
    """A document changed: diagnostics for it and for the open documents that may depend on it."""
    ls.generation += 1
    ls.publish(uri)
    ls.publish_others(uri)


@server.feature(T.TEXT_DOCUMENT_DID_OPEN)
@_safe()
def did_open(ls: LayerServer, params: T.DidOpenTextDocumentParams):
    _republish(ls, params.text_document.uri)


@server.feature(T.TEXT_DOCUMENT_DID_CHANGE)
@_safe()
def did_change(ls: LayerServer, params: T.DidChangeTextDocumentParams):
    _republish(ls, params.text_document.uri)


@server.feature(T.TEXT_DOCUMENT_DID_SAVE)
@_safe()
def did_save(ls: LayerServer, params: T.DidSaveTextDocumentParams):
    ls._scan.clear()
    _republish(ls, params.text_document.uri)


@server.feature(T.TEXT_DOCUMENT_DID_CLOSE)
@_safe()
def did_close(ls: LayerServer, params: T.DidCloseTextDocumentParams):
    uri = params.text_document.uri
    ls.generation += 1
    ls.analyses.pop(uri, None)
    ls.last_good.pop(uri, None)
    ls._published.pop(uri, None)
    ls.text_document_publish_diagnostics(T.PublishDiagnosticsParams(uri=uri, diagnostics=[]))


@server.feature(T.WORKSPACE_DID_CHANGE_WATCHED_FILES)
@_safe()
def did_change_watched(ls: LayerServer, params: T.DidChangeWatchedFilesParams):
    ls.generation += 1
    ls._scan.clear()
    for uri in list(ls.workspace.text_documents):
        ls.publish(uri, force=False)


@server.feature(T.TEXT_DOCUMENT_HOVER)
@_safe()
def hover(ls: LayerServer, params: T.HoverParams):
    a = ls.usable(params.text_document.uri)
    if a is None:
        return None
    line, col = from_position(
        ls.workspace.get_text_document(params.text_document.uri).source, params.position, ls.codec()
    )
    hit = ref_at(a, line, col)
    if hit is None:
        return None
    ref, layer = hit
    target = resolve(a, ref, layer)
    if target is None:
        return None
    text = hover_markdown(a, target)
    if not text:
        return None
    return T.Hover(
        contents=T.MarkupContent(kind=T.MarkupKind.Markdown, value=text), range=to_range(ref.span, a.text, ls.codec())
    )


@server.feature(T.TEXT_DOCUMENT_COMPLETION, T.CompletionOptions(trigger_characters=[".", "@"]))
@_safe()
def completion(ls: LayerServer, params: T.CompletionParams):
    items = completion_items(ls, params.text_document.uri, params.position)
    return T.CompletionList(is_incomplete=False, items=items)


@server.feature(T.TEXT_DOCUMENT_DEFINITION)
@_safe()
def definition(ls: LayerServer, params: T.DefinitionParams):
    a = ls.usable(params.text_document.uri)
    if a is None:
        return None
    line, col = from_position(
        ls.workspace.get_text_document(params.text_document.uri).source, params.position, ls.codec()
    )
    hit = ref_at(a, line, col)
    if hit is None:
        return None
    ref, layer = hit
    target = resolve(a, ref, layer)
    if target is None or target.span is None:
        return None
    path = target.path or (target.layer.path if target.layer is not None else a.path)
    if path == a.path or not path:
        return T.Location(uri=a.uri, range=to_range(target.span, a.text, ls.codec()))
    source = a.sources.get(path) or ls.disk_text(path) or ""
    return T.Location(uri=from_fs_path(path), range=to_range(target.span, source, ls.codec()))


@server.feature(T.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
@_safe()
def symbols(ls: LayerServer, params: T.DocumentSymbolParams):
    a = ls.usable(params.text_document.uri)
    if a is None:
        return []
    return document_symbols(a, ls.codec())


@server.feature(T.TEXT_DOCUMENT_FORMATTING)
@_safe()
def formatting(ls: LayerServer, params: T.DocumentFormattingParams):
    from layerdsl.tools.fmt.formatter import FormatError, format_source

    doc = ls.workspace.get_text_document(params.text_document.uri)
    text = doc.source
    try:
        formatted = format_source(text, os.path.basename(doc.path or "spec.layer"))
    except (SpecError, FormatError):
        return None  # the diagnostics already say why
    if formatted == text:
        return []
    lines = _lines(text)
    end = T.Position(line=len(lines) - 1, character=ls.codec().client_num_units(lines[-1]))
    return [T.TextEdit(range=T.Range(start=T.Position(0, 0), end=end), new_text=formatted)]


@server.command(SHOW_GENERATED)
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


def serve() -> None:
    """Run the language server on stdin/stdout until the client says exit."""
    logging.basicConfig(level=logging.WARNING, format="layerdsl-lsp %(levelname)s: %(message)s")
    server.start_io()
