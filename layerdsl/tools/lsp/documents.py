"""Open documents: their text, the other specs of their workspace folder, and the analysis (parse and
check) of each document version, cached; the `LayerServer` that holds them."""

from __future__ import annotations

import copy
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from layerdsl.diagnostics import Diagnostic, Span, SpecError
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk
from layerdsl.syntax import PartialParse, parse_partial

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


def _span_from_meta(meta) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


class LayerServer(LanguageServer):
    """The language server's state: the workspace's documents and their analyses."""

    def __init__(self) -> None:
        super().__init__("layerdsl", _version())
        self.analyses: dict[str, Analysis] = {}  # uri -> the latest analysis
        self.last_good: dict[str, Analysis] = {}  # uri -> the latest analysis that parsed
        self._disk: dict[str, tuple[tuple[int, int], str]] = {}  # path -> ((mtime_ns, size), text)
        self._parsed: dict[str, tuple[str, N.SpecFile | None]] = {}  # path -> (text, pristine parse)
        self._scan: dict[str, tuple[float, list[str]]] = {}  # root -> (time, spec paths)
        self.generation = 0  # bumped whenever any spec may have changed
        self._gen_of: dict[str, int] = {}
        self.published: dict[str, list] = {}  # uri -> the diagnostics last published (see diagnostics.publish)

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
        spec, diags, _ = parse_document(path, text)
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
            if t is None:
                continue
            other = self.pristine(p, t)
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
            lambda s: [copy_spec(f) for f in ws.near] + [s] + [copy_spec(f) for f in far_needed],
            lambda s: [s] + [copy_spec(f) for f in ws.needed],
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
        spec, diagnostics, tree = parse_document(path, text)
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
                if checked is not spec:  # re-parsed after a crash elsewhere (the tree is still this text's)
                    analysis.spec = spec = checked
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

    def codec(self):
        return self.workspace.position_codec

    def forget_scans(self) -> None:
        """Files may have appeared or gone: look for the workspace's specs again."""
        self._scan.clear()

    def forget(self, uri: str) -> None:
        """The document was closed."""
        self.generation += 1
        self.analyses.pop(uri, None)
        self.last_good.pop(uri, None)
        self.published.pop(uri, None)


def _internal(path: str, text: str, exc: Exception | None, span: Span | None = None) -> Diagnostic:
    return Diagnostic(
        path,
        span or Span.point(1, 1),
        f"layerdsl internal error: {type(exc).__name__}: {exc}",
        "please report this bug; the spec itself may be fine",
        source=text,
    )
