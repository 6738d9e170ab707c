"""Derivation diagnostics: what `layerdsl gen` would refuse in a document's `@function` layers ("cannot
derive through this ... yet", with a hint), from `autodiff.plan.plan_backwards`, as `codegen.module` plans
a file: the document's checked spec against the layers its folder sees.

Planning takes up to seconds (a Transformer stack), so it runs in a worker thread, never on the event
loop, once the checker's diagnostics of a version are clean and published (after the edit's debounce,
`diagnostics.schedule`): the checker's answer is never delayed, and the refusals follow. One planning runs
at a time per document (one worker in all: planning is pure Python, a second thread would only share its
core); a newer edit supersedes it: the latest version is planned next. A crash in planning is the
server's internal-error diagnostic.

So that an edit does not make the refusals blink out for the seconds of a re-plan, each `@function` layer
is planned on its own and its refusals are cached (`LayerServer.plans`) under what planning it depends on
(`Reach`): the text of the layer and of the document's layers it names, transitively, and the other files
its layers come from. The spans are kept relative to the layer they lie in, so an edit elsewhere (a
comment, another layer, lines added above) republishes the cached refusals at once, at their new lines,
with the checker's diagnostics of the new version. A layer whose text (or a layer it reaches) changed is
planned again; until then its previous refusals stay where the edit moved them, each only while the
lines it covers are unchanged (an editor moves a marker with the text around it; one on edited text may
be wrong, so it goes), and only while the layer is still `@function`. The new plan replaces them."""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from layerdsl.diagnostics import Diagnostic, Span
from layerdsl.ir import nodes as N
from layerdsl.tools.lsp.documents import Analysis, LayerServer, internal

log = logging.getLogger(__name__)

_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="layerdsl-plan")

MAX_CACHED_PLANS = 512  # layers' refusals kept (the least recently used go first)
_NAME = re.compile(r"[A-Za-z_]\w*")


@dataclass(frozen=True)
class Reach:
    """What planning one `@function` layer of a document depends on: `key` (the document's path, the text
    and first column of the layer and of each of the document's layers it names, transitively, and the
    text of each other file defining a layer it names), and the lines each of those document layers spans
    now (`lines`, 1-based first and last, in the key's order: the `@function` layer first)."""

    layer: N.Layer
    key: tuple
    lines: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Cached:
    """A refusal of a cached plan: its span relative to the start of the document's layer `anchor` (an index
    into `Reach.lines`), or as it is when it lies in no layer of the document (`anchor` None)."""

    anchor: int | None
    diagnostic: Diagnostic


def _layer_text(a: Analysis, layer: N.Layer) -> tuple[str, int, int] | None:
    """The layer's text in the document (its decorators to its closing brace), its first line and column."""
    extent = a.extents.get(id(layer))
    if extent is None:
        return None
    text = "\n".join(a.text.split("\n")[extent.line - 1 : extent.end_line])[extent.col - 1 :]
    end = text.rfind("}")
    return (text[: end + 1] if end >= 0 else text.rstrip()), extent.line, extent.col


def reaches(a: Analysis) -> list[Reach] | None:
    """The `Reach` of each `@function` layer of `a`, in the document's order (None after a syntax error)."""
    if a.spec is None or a.workset is None or a.partial:
        return None
    mine: dict[str, list[N.Layer]] = {}
    for layer in a.spec.layers:
        mine.setdefault(layer.name, []).append(layer)
    elsewhere: dict[str, list[N.SpecFile]] = {}
    for f in a.workset.needed + a.workset.clashing:
        for layer in f.layers:
            elsewhere.setdefault(layer.name, []).append(f)
    out = []
    for layer in a.spec.layers:
        found = _layer_text(a, layer) if layer.is_function else None
        if found is None:
            continue
        texts, files = [found], {}
        seen, done, todo = {id(layer)}, set(), set(_NAME.findall(found[0]))
        while todo:  # in the order of the names, so that the same texts make the same key
            name = min(todo)
            todo.discard(name)
            done.add(name)
            more: set[str] = set()
            for other in mine.get(name, []):
                if id(other) not in seen and (t := _layer_text(a, other)) is not None:
                    seen.add(id(other))
                    texts.append(t)
                    more |= set(_NAME.findall(t[0]))
            for f in elsewhere.get(name, []):
                if f.path not in files:
                    files[f.path] = f.source
                    more |= set(_NAME.findall(f.source))
            todo |= more - done
        key = (a.path, tuple((t, col) for t, _, col in texts), tuple(sorted(files.items())))
        lines = tuple((line, line + t.count("\n")) for t, line, _ in texts)
        out.append(Reach(layer, key, lines))
    return out


def _relative(reach: Reach, problems: list[Diagnostic], path: str) -> list[Cached]:
    """`problems` (spans in the document at `path`) placed relative to the document's layers of `reach`."""
    out = []
    for d in problems:
        inside = [i for i, (first, last) in enumerate(reach.lines) if first <= d.span.line <= last]
        if d.path != path or not inside:
            out.append(Cached(None, replace(d, source=None)))
        else:
            shift = 1 - reach.lines[inside[0]][0]
            out.append(Cached(inside[0], replace(d, span=_shifted(d.span, shift), source=None)))
    return out


def _shifted(span: Span, lines: int) -> Span:
    return Span(span.line + lines, span.col, span.end_line + lines, span.end_col)


def _placed(reach: Reach, cached: list[Cached], a: Analysis) -> list[Diagnostic]:
    """A cached plan's refusals at their lines in `a`'s text."""
    out = []
    for c in cached:
        d = c.diagnostic
        span = d.span if c.anchor is None else _shifted(d.span, reach.lines[c.anchor][0] - 1)
        out.append(replace(d, span=span, source=a.text if d.path == a.path else None))
    return out


def _lookup(ls: LayerServer, a: Analysis, reach: Reach) -> list[Cached] | None:
    """The refusals of `reach` planned for `a`, else cached (a plan of the same reach for any version)."""
    if reach.key in a.planned:
        return a.planned[reach.key]
    hit = ls.plans.get(reach.key)
    if hit is not None:
        ls.plans.move_to_end(reach.key)
    return hit


def _store(ls: LayerServer, reach: Reach, cached: list[Cached]) -> None:
    ls.plans[reach.key] = cached
    ls.plans.move_to_end(reach.key)
    while len(ls.plans) > MAX_CACHED_PLANS:
        ls.plans.popitem(last=False)


def _clean(a: Analysis) -> bool:
    """Whether `a` is checked clean, so that its `@function` layers can be planned."""
    return a.checked and a.program is not None and not a.diagnostics and a.spec is not None


def needs_planning(ls: LayerServer, a: Analysis) -> bool:
    """Whether `a` is checked clean and has `@function` layers whose refusals are not cached."""
    return a.derivation is None and _clean(a) and any(_lookup(ls, a, r) is None for r in reaches(a) or [])


def refusals(ls: LayerServer, uri: str, a: Analysis) -> list[Diagnostic]:
    """The refusals to publish with `a`'s own diagnostics: each `@function` layer's cached ones, at their
    lines now; for a layer not planned yet, those shown before that the edits left in place. Once every
    layer of a clean version is planned, they are `a.derivation`."""
    if a.derivation is not None:
        return a.derivation
    found = reaches(a)
    before = ls.refusals_shown.get(uri)
    owned: list[tuple[str, Diagnostic]] = []
    pending: set[str] = set()
    if found is None:  # a syntax error: what was shown stays where the edits left it, until it parses
        pending = {name for name, _ in before[1]} if before is not None else set()
    for reach in found or []:
        cached = _lookup(ls, a, reach)
        if cached is None:
            pending.add(reach.layer.name)
        else:
            owned += [(reach.layer.name, d) for d in _placed(reach, cached, a)]
    if pending:
        owned += _carried(before, a, pending)
    elif _clean(a) and found:  # every layer planned: this version's refusals are known
        a.derivation = _unique([d for _, d in owned])
    ls.refusals_shown[uri] = (a.text, owned)
    return _unique([d for _, d in owned])


def _carried(
    before: tuple[str, list[tuple[str, Diagnostic]]] | None, a: Analysis, layers: set[str]
) -> list[tuple[str, Diagnostic]]:
    """The refusals shown before for `layers` (by the name of the `@function` layer they are of), moved to
    where the edits since took their lines; those covering an edited line are dropped."""
    if before is None:
        return []
    old_text, shown = before
    ours = [(name, d) for name, d in shown if name in layers and d.path == a.path]
    if not ours:
        return []
    moved: dict[int, int] = {}  # 1-based line before -> line now, for each line the edits kept
    matcher = difflib.SequenceMatcher(None, old_text.split("\n"), a.text.split("\n"), autojunk=False)
    for i, j, n in matcher.get_matching_blocks():
        for k in range(n):
            moved[i + k + 1] = j + k + 1
    out = []
    for name, d in ours:
        first = moved.get(d.span.line)
        covered = range(d.span.line, max(d.span.end_line, d.span.line) + 1)
        if first is not None and all(moved.get(line) == first + line - d.span.line for line in covered):
            out.append((name, replace(d, span=_shifted(d.span, first - d.span.line), source=a.text)))
    return out


def _unique(found: list[Diagnostic]) -> list[Diagnostic]:
    """Each location and message once (as `plan_backwards` reports a file's problems)."""
    seen: set[tuple[str, int, int, str]] = set()
    out = []
    for d in found:
        if (where := (d.path, d.span.line, d.span.col, d.message)) not in seen:
            seen.add(where)
            out.append(d)
    return out


def plan_layer(a: Analysis, layer: N.Layer) -> list[Diagnostic]:
    """The refusals of planning one `@function` layer of `a` (run in the worker: reads the IR, never
    changes it)."""
    from layerdsl.autodiff.plan import plan_backwards

    assert a.spec is not None and a.program is not None
    try:
        alone = N.SpecFile(a.spec.path, a.spec.source, [layer])
        _, problems = plan_backwards([alone], a.program.seen_from(a.path).layers)
        return problems
    except Exception as exc:  # a planner bug: report it, never crash
        log.error("planning failed on %s:\n%s", a.path, traceback.format_exc())
        return [internal(a.path, a.text, exc, layer.span)]


def derivation_problems(a: Analysis) -> list[Diagnostic]:
    """The refusals of planning all of `a`'s `@function` layers, as `gen` reports them."""
    assert a.spec is not None
    return _unique([d for layer in a.spec.layers if layer.is_function for d in plan_layer(a, layer)])


def plan_later(ls: LayerServer, uri: str, a: Analysis, publish: Callable[[LayerServer, str], None]) -> None:
    """Plan the `@function` layers of `a` (the document's current analysis) whose refusals are not cached,
    in the worker, unless the document's planning is under way (its end plans the latest version); cache
    what it finds (a superseded version's plans too: they are keyed by what they depend on), then
    `publish` the document's diagnostics if its current analysis is checked."""
    if uri in ls.planning or not needs_planning(ls, a):
        return
    todo = [r for r in reaches(a) or [] if _lookup(ls, a, r) is None]

    def plan() -> list[list[Diagnostic]]:
        return [plan_layer(a, r.layer) for r in todo]

    future = asyncio.get_event_loop().run_in_executor(_worker, plan)
    ls.planning[uri] = future

    def done(f: asyncio.Future) -> None:
        if ls.planning.get(uri) is f:
            del ls.planning[uri]
        if f.cancelled():
            return
        exc = f.exception()
        if exc is not None:
            log.error("planning failed on %s: %s", a.path, exc)
            found = [[internal(a.path, a.text, exc, r.layer.span)] for r in todo]
        else:
            found = f.result()
        for reach, problems in zip(todo, found):
            a.planned[reach.key] = _relative(reach, problems, a.path)  # kept whatever the cache drops
            _store(ls, reach, a.planned[reach.key])
        current = ls.analyses.get(uri)
        doc = ls.workspace.text_documents.get(uri)
        if doc is None or current is None:  # closed meanwhile
            return
        if _current(current, doc) and current.checked:  # else the publish of the latest version plans it
            publish(ls, uri)

    future.add_done_callback(done)


def _current(a: Analysis, doc) -> bool:
    """Whether `a` is the analysis of the document's text now."""
    return a.version == doc.version and a.text == doc.source
