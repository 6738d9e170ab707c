"""Open documents: their text, the other specs of their workspace folder, and the analysis (parse and
check) of each document version, cached; the `LayerServer` that holds them."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import re
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from layerdsl.diagnostics import Diagnostic, Span, SpecError
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk
from layerdsl.semantics.checker import Program
from layerdsl.semantics.shape_check import LayerShapes
from layerdsl.syntax import PartialParse, parse_file, parse_partial
from layerdsl.syntax.parser import over_size_limit
from layerdsl.tools.lsp.layer_index import LayerIndex, VisibleLayers, defined_names
from layerdsl.tools.lsp.scanning import depths

log = logging.getLogger(__name__)

_SKIP_DIRS = {"node_modules", "__pycache__", "venv", "site-packages"}
_MAX_SPECS = 2000
_SCAN_SECONDS = 0.5


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("layerdsl")
    except Exception:  # not installed: running from a checkout
        return "0.1.0"


def parse_document(path: str, text: str) -> PartialParse:
    """The syntax stage's partial parse (as the CLI reads the text), except that it never raises: a
    builder crash is an internal-error diagnostic."""
    try:
        return parse_partial(path, text)
    except Exception as exc:  # a builder bug: report it, never crash
        log.error("layerdsl builder failed on %s:\n%s", path, traceback.format_exc())
        message = f"layerdsl internal error while reading this spec: {type(exc).__name__}: {exc}"
        return PartialParse(None, [Diagnostic(path, Span.point(1, 1), message, source=text)], None)


def limit_at_start(d: Diagnostic, text: str) -> Diagnostic:
    """The limit's diagnostic on the document's first line, where the user sees it (the first token over
    the limit may be thousands of lines down), saying what the server reads of it
    (outline_scan.py)."""
    where = f" (the first token over it is at line {d.span.line}, column {d.span.col})" if d.span.line > 1 else ""
    first = text.split("\n", 1)[0].rstrip()
    return replace(
        d,
        span=Span(1, 1, 1, len(first) + 1) if first else Span.point(1, 1),
        message=f"{d.message}{where}: the language server reads only its declarations, line by line (outline,"
        " go to definition, hover), until it is under the limit (no other diagnostics, no completion)",
    )


MAX_REPAIRS = 8  # lines blanked while looking for a parse of a half-typed text
_LAYER_HEADER = re.compile(r"^\s*(?:@.*)?\blayer\b")


def recover(path: str, text: str, error: Diagnostic) -> PartialParse:
    """A partial parse of a text with a syntax error, for the features, in which every position is the
    current text's: the braces left open are closed after the end, and the failing line is blanked (never
    a layer's header) until the rest parses; failing that, the layers the parser's own salvaging keeps
    (without their extents). The syntax error stays the only diagnostic."""
    lines = text.split("\n")
    line = None
    for _ in range(MAX_REPAIRS + 1):
        if line is not None:
            if not 1 <= line <= len(lines) or _LAYER_HEADER.match(lines[line - 1]) or not lines[line - 1].strip():
                break
            lines[line - 1] = ""
        repaired = "\n".join(lines)
        spec, diags, tree = parse_document(path, repaired + "\n}" * depths(repaired)[0])
        if spec is not None:
            return PartialParse(N.SpecFile(path, text, spec.layers), [error], tree)
        if not diags:
            break
        line = diags[0].span.line
    salvaged = parse_file(path, text)
    return PartialParse(N.SpecFile(path, text, salvaged.layers) if salvaged.layers else None, [error], None)


@dataclass
class Analysis:
    """Everything the features need about one version of one document."""

    uri: str
    version: int | None
    path: str
    text: str
    spec: N.SpecFile | None  # None on a syntax error
    diagnostics: list[Diagnostic]
    layers: VisibleLayers = field(default_factory=lambda: VisibleLayers(None, []))  # this file's and the others'
    sources: dict[str, str] = field(default_factory=dict)  # path -> text of every spec file found
    extents: dict[int, Span] = field(default_factory=dict)  # id(layer) -> its whole extent in this file
    root: str = ""
    partial: bool = False  # the IR is a repaired parse of a text with a syntax error
    checked: bool = False  # the checker's diagnostics are in `diagnostics`
    uses: set[str] = field(default_factory=set)  # the other files' layers it needs, transitively
    workset: Workset | None = None
    shapes: dict[str, LayerShapes] = field(default_factory=dict)  # the static shape pass's, once checked clean
    program: Program | None = None  # the checker's, once checked clean
    derivation: list[Diagnostic] | None = None  # its `@function` layers' refusals, once all planned (derivation.py)
    planned: dict[tuple, list] = field(default_factory=dict)  # its layers' plans, by reach (derivation.py)

    @property
    def names(self) -> set[str]:
        """The names of the layers this document defines."""
        return {layer.name for layer in self.spec.layers} if self.spec is not None else set()


@dataclass
class Workset:
    root: str
    sources: dict[str, str] = field(default_factory=dict)  # path -> text of the document and every spec found
    needed: list[N.SpecFile] = field(default_factory=list)  # pristine, only the layers the document needs
    uses: set[str] = field(default_factory=set)  # names of the layers in `needed`
    clashing: list[N.SpecFile] = field(default_factory=list)  # pristine near files defining one of its names
    index: LayerIndex | None = None  # every layer its folder sees, parsed on demand


def copy_spec(f: N.SpecFile) -> N.SpecFile:
    return N.SpecFile(f.path, f.source, copy.deepcopy(f.layers))


def _sub_calls(layers) -> set[str]:
    """The layer names called by the subs of `layers` (nn.X excluded)."""
    names = set()
    for layer in layers:
        for sub in layer.subs:
            for node in walk(sub.call):
                if isinstance(node, N.Call) and not node.func.startswith("nn.") and node.func != "?":
                    names.add(node.func)
    return names


def _nearest_first(here: str, path: str) -> tuple[bool, int, str]:
    """The order of the other specs: those of the folder `here` first, then by the steps to them, then by
    path (`relpath` only for those of other folders: a folder may hold thousands)."""
    if os.path.dirname(path) == here:
        return False, 1, path
    return True, len(Path(os.path.relpath(path, here)).parts), path


def _span_from_meta(meta) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


class LayerServer(LanguageServer):
    """The language server's state: the workspace's documents and their analyses."""

    def __init__(self) -> None:
        super().__init__("layerdsl", _version())
        self.analyses: dict[str, Analysis] = {}  # uri -> the latest analysis
        self.pending: dict[str, asyncio.Handle] = {}  # uri -> its debounced diagnostics
        self.last_edit: dict[str, float] = {}  # uri -> the event loop's time of its last edit
        self.stale: set[str] = set()  # uris whose analysis must be redone though their text is the same
        self._disk: dict[str, tuple[tuple[int, int], str]] = {}  # path -> ((mtime_ns, size), text)
        self._parsed: dict[str, tuple[str, N.SpecFile | None]] = {}  # path -> (text, pristine parse)
        self._repaired: dict[str, tuple[str, N.SpecFile | None]] = {}  # path -> (text, repaired parse)
        self._names: dict[str, tuple[str, set[str]]] = {}  # path -> (text, the layer names it may define)
        self._scan: dict[str, tuple[float, list[str]]] = {}  # root -> (time, spec paths)
        self.published: dict[str, list] = {}  # uri -> the diagnostics last published (see diagnostics.publish)
        self.planning: dict[str, asyncio.Future] = {}  # uri -> its planning in progress (derivation.py)
        self.plans: OrderedDict[tuple, list] = OrderedDict()  # a `@function` layer's reach -> its refusals
        self.refusals_shown: dict[str, tuple[str, list]] = {}  # uri -> (text, refusals last shown, by layer)
        self._newer: dict[str, Workset] = {}  # path -> a workset made since its analysis (`current_workset`)

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

    def defined_names(self, path: str, text: str) -> set[str]:
        """The names of the layers another spec file may define (layer_index.py), found once per text."""
        hit = self._names.get(path)
        if hit is not None and hit[0] == text:
            return hit[1]
        names = defined_names(text)
        self._names[path] = (text, names)
        return names

    def pristine(self, path: str, text: str) -> N.SpecFile | None:
        """Another spec file, parsed once per text and never checked (copies are: the checker annotates)."""
        hit = self._parsed.get(path)
        if hit is not None and hit[0] == text:
            return hit[1]
        spec, diags, _ = parse_document(path, text)
        spec = spec if spec is not None and not diags else None
        self._parsed[path] = (text, spec)
        return spec

    def readable(self, path: str, text: str) -> tuple[N.SpecFile | None, bool]:
        """Another spec file as the features read it: its pristine parse, or failing that its repaired one
        (`recover`, as for an open document), once per text; True when repaired."""
        spec = self.pristine(path, text)
        if spec is not None:
            return spec, False
        hit = self._repaired.get(path)
        if hit is None or hit[0] != text:
            spec, diags, _ = parse_document(path, text)
            repaired = recover(path, text, diags[0]).spec if diags and not over_size_limit(diags[0]) else spec
            hit = self._repaired[path] = (text, repaired)
        return hit[1], True

    def readable_spec(self, path: str, text: str) -> N.SpecFile | None:
        """`readable`'s spec only (a `LayerIndex`'s parse)."""
        return self.readable(path, text)[0]

    def workset(self, path: str, text: str, spec: N.SpecFile | None, sources: dict[str, str] | None = None) -> Workset:
        """The other specs that matter to the document at `path`.

        `needed` are the layers its subs use, transitively, each name resolved from the folder of the spec
        using it as `gen` resolves it (semantics/scopes.py, `Namespace`: its own folder first, then the
        nearest; every candidate of an ambiguous name); `clashing` the specs of its own folder that define
        a layer of one of its names (`gen` on that folder reports the clash); `index` finds every other
        layer the document's folder sees. Only the specs that may define a name looked up are parsed
        (layer_index.py): a folder may hold thousands. `sources`: `sources_for`'s, when just read."""
        root = self.root_for(path)
        ws = Workset(root=root, sources=sources if sources is not None else self.sources_for(path, text, root))
        own = list(spec.layers) if spec is not None else []
        files = {p: t for p, t in ws.sources.items() if p != path}
        ws.index = index = LayerIndex(path, own, files, self.pristine, self.defined_names)
        mine = {layer.name for layer in own}
        todo = [(name, path) for name in _sub_calls(own)]
        needed: dict[str, list[N.Layer]] = {}
        done: set[int] = set()
        wanted = {name for name, _ in todo}
        while todo:
            name, user = todo.pop()
            wanted.add(name)
            # every candidate of an ambiguous name, so that the check reports the ambiguity as `gen` does
            for layer in index.candidates(name, user):
                if layer.path == path or id(layer) in done:
                    continue
                done.add(id(layer))
                needed.setdefault(layer.path, []).append(layer)
                todo += [(called, layer.path) for called in _sub_calls([layer])]
        ws.needed = [N.SpecFile(p, ws.sources[p], layers) for p, layers in needed.items()]
        ws.uses = wanted - mine  # found or not: a file that defines one later changes this one
        ws.clashing = index.near_defining(mine)
        return ws

    def sources_for(self, path: str, text: str, root: str) -> dict[str, str]:
        """The text of the document at `path` and of every other spec under `root` (the open documents of
        its folder too), as the editor has them: those of its folder first, then the nearest."""
        here = os.path.dirname(path)
        opened = self.open_texts()
        paths = [os.path.abspath(p) for p in self.spec_paths(root)]
        paths += [p for p in opened if p.endswith(".layer") and os.path.dirname(p) == here and p not in paths]
        others = sorted((p for p in set(paths) if p != path), key=lambda q: _nearest_first(here, q))
        sources = {path: text}
        for p in others:
            t = opened.get(p)
            if t is None:
                t = self.disk_text(p)
            if t is not None:
                sources[p] = t
        return sources

    def current_workset(self, a: Analysis) -> Workset:
        """The analysis's workset while the workspace's specs are still those it read, else the one made
        for them since, else a fresh one (specs opened or saved since the analysis): a workset's index is
        built once per state of the workspace (building one reads every spec's text)."""
        root = a.workset.root if a.workset is not None else self.root_for(a.path)
        sources = self.sources_for(a.path, a.text, root)
        for ws in (a.workset, self._newer.get(a.path)):
            if ws is not None and ws.index is not None and ws.sources == sources:
                return ws
        ws = self._newer[a.path] = self.workset(a.path, a.text, a.spec, sources)
        return ws

    def check(
        self, path: str, text: str, spec: N.SpecFile, ws: Workset
    ) -> tuple[list[Diagnostic], N.SpecFile, Program | None]:
        """Check the document with the layers it needs from other files (and the files of its folder that
        define a layer of the same name, which `gen` on the folder would report): its diagnostics, the
        checked spec and the program. Only this document is checked in full, so that a keystroke costs
        one file's check. A checker crash caused by another file is retried without the others."""
        from layerdsl.semantics.checker import check_program

        needed = {f.path for f in ws.needed}
        clashing = [f for f in ws.clashing if f.path not in needed]
        attempts = [
            lambda s: sorted([s] + [copy_spec(f) for f in clashing + ws.needed], key=lambda f: f.path),
            lambda s: [s],
        ]
        crash: Exception | None = None
        for attempt, make in enumerate(attempts):
            if attempt > 0:
                fresh, diags, _ = parse_document(path, text)
                if fresh is None or diags:
                    break
                spec = fresh
            files = make(spec)
            try:
                program = check_program(files)
                return [], spec, program
            except SpecError as exc:
                return [d for d in exc.diagnostics if os.path.abspath(d.path) == path], spec, None
            except Exception as exc:  # a checker bug: try without the other files
                log.error("check failed (attempt %d):\n%s", attempt + 1, traceback.format_exc())
                crash = exc
        where = spec.layers[0].span if spec.layers else Span.point(1, 1)
        return [internal(path, text, crash, where)], spec, None

    # -- analysis

    def analyze(self, uri: str, check: bool = True) -> Analysis:
        """The document's current analysis, cached per version: its parse (repaired after a syntax
        error), the workspace's layers it sees, and with `check` the checker's diagnostics."""
        doc = self.workspace.get_text_document(uri)
        cached = self.analyses.get(uri)
        if cached is None or cached.version != doc.version or cached.text != doc.source or uri in self.stale:
            cached = self._parse(uri, doc.version, doc.source)
            self.analyses[uri] = cached
            self._newer.pop(cached.path, None)
            self.stale.discard(uri)
        if check and not cached.checked:
            self._check(cached)
        return cached

    def _parse(self, uri: str, version: int | None, text: str) -> Analysis:
        path = os.path.abspath(to_fs_path(uri) or uri)
        spec, diagnostics, tree = parse_document(path, text)
        limited = spec is None and bool(diagnostics) and over_size_limit(diagnostics[0])
        if limited:  # nothing to repair: say so where the user looks
            diagnostics = [limit_at_start(diagnostics[0], text)]
        partial = spec is None and bool(diagnostics) and not limited
        if partial:
            spec, diagnostics, tree = recover(path, text, diagnostics[0])
        analysis = Analysis(uri, version, path, text, spec, list(diagnostics), partial=partial)
        try:
            ws = self.workset(path, text, spec)
            analysis.workset, analysis.uses = ws, ws.uses
            analysis.sources, analysis.root = ws.sources, ws.root
            analysis.layers = VisibleLayers(ws.index, spec.layers if spec is not None else [])
        except Exception as exc:  # never crash: say so, keep serving
            log.error("analysis failed:\n%s", traceback.format_exc())
            analysis.diagnostics.append(internal(path, text, exc))
            analysis.checked = True
        if analysis.spec is not None and tree is not None:
            layer_trees = [c for c in tree.children if getattr(c, "data", None) == "layer"]
            for layer, lt in zip(analysis.spec.layers, layer_trees):
                analysis.extents[id(layer)] = _span_from_meta(lt.meta)
        return analysis

    def _check(self, analysis: Analysis) -> None:
        """Add the checker's diagnostics (only for a document that parsed without problems)."""
        analysis.checked = True
        spec, ws = analysis.spec, analysis.workset
        if spec is None or analysis.partial or analysis.diagnostics or ws is None:
            return
        try:
            found, checked, program = self.check(analysis.path, analysis.text, spec, ws)
        except Exception as exc:  # never crash: say so, keep serving
            log.error("check failed:\n%s", traceback.format_exc())
            analysis.diagnostics.append(internal(analysis.path, analysis.text, exc))
            return
        analysis.diagnostics += found
        analysis.program = program
        if program is not None:
            analysis.shapes = {
                layer.name: program.shapes[program.key(layer)]
                for layer in checked.layers
                if program.key(layer) in program.shapes
            }
        if checked is not spec:  # re-parsed after a crash elsewhere (the tree is still this text's)
            extents = {
                id(new): analysis.extents[id(old)]
                for old, new in zip(spec.layers, checked.layers)
                if id(old) in analysis.extents
            }
            analysis.spec, analysis.extents = checked, extents
            analysis.layers = VisibleLayers(analysis.layers.index, checked.layers)

    def usable(self, uri: str) -> Analysis | None:
        """The current text's analysis (unchecked is enough), when it has an IR: after a syntax error,
        the repaired parse of the current text (never an older version's tree)."""
        a = self.analyze(uri, check=False)
        return a if a.spec is not None else None

    def dependents(self, uri: str, names: set[str]) -> list[str]:
        """The other open documents whose analysis may change when layers named `names` change: those
        that use one of them, or define one (a clash)."""
        out = []
        for other, a in list(self.analyses.items()):
            if other != uri and (a.uses & names or a.names & names):
                out.append(other)
        return out

    def codec(self):
        return self.workspace.position_codec

    def forget_scans(self) -> None:
        """Files may have appeared or gone: look for the workspace's specs again."""
        self._scan.clear()

    def forget(self, uri: str) -> None:
        """The document was closed."""
        self.analyses.pop(uri, None)
        self.stale.discard(uri)
        pending = self.pending.pop(uri, None)
        if pending is not None:
            pending.cancel()
        self.published.pop(uri, None)
        self.planning.pop(uri, None)  # its result is only cached
        self.refusals_shown.pop(uri, None)
        self._newer.pop(os.path.abspath(to_fs_path(uri) or uri), None)


def internal(path: str, text: str, exc: BaseException | None, span: Span | None = None) -> Diagnostic:
    return Diagnostic(
        path,
        span or Span.point(1, 1),
        f"layerdsl internal error: {type(exc).__name__}: {exc}",
        "please report this bug; the spec itself may be fine",
        source=text,
    )
