"""Derivation diagnostics: what `layerdsl gen` would refuse in a document's `@function` layers ("cannot
derive through this ... yet", with a hint), from `autodiff.plan.plan_backwards`, as `codegen.module` plans
a file: the document's checked spec against the layers its folder sees.

Planning takes up to seconds (a Transformer stack), so it runs in a worker thread, never on the event
loop, once the checker's diagnostics of a version are clean and published (after the edit's debounce,
`diagnostics.schedule`): the checker's answer is never delayed, and the refusals follow, published
with the checker's for the version they were planned for. One planning runs at a time per document (one
worker in all: planning is pure Python, a second thread would only share its core); a newer edit
supersedes it: its result is dropped unless the document is still at that version, and the latest
version is planned next. A crash in planning is the server's internal-error diagnostic."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from layerdsl.diagnostics import Diagnostic
from layerdsl.tools.lsp.documents import Analysis, LayerServer, internal

log = logging.getLogger(__name__)

_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="layerdsl-plan")


def needs_planning(a: Analysis) -> bool:
    """Whether `a` is checked clean, has `@function` layers, and is not planned yet."""
    return (
        a.derivation is None
        and a.checked
        and a.program is not None
        and not a.diagnostics
        and a.spec is not None
        and any(layer.is_function for layer in a.spec.layers)
    )


def derivation_problems(a: Analysis) -> list[Diagnostic]:
    """The refusals of planning `a`'s `@function` layers (run in the worker: reads the IR, never changes it)."""
    from layerdsl.autodiff.plan import plan_backwards

    assert a.spec is not None and a.program is not None
    try:
        _, problems = plan_backwards([a.spec], a.program.seen_from(a.path).layers)
        return problems
    except Exception as exc:  # a planner bug: report it, never crash
        log.error("planning failed on %s:\n%s", a.path, traceback.format_exc())
        where = next(layer.span for layer in a.spec.layers if layer.is_function)
        return [internal(a.path, a.text, exc, where)]


def plan_later(ls: LayerServer, uri: str, a: Analysis, publish: Callable[[LayerServer, str], None]) -> None:
    """Plan `a` (the document's current analysis) in the worker, unless the document's planning is under
    way (its end plans the latest version); then `publish` the document's diagnostics if `a` is still its
    current analysis."""
    if uri in ls.planning or not needs_planning(a):
        return
    future = asyncio.get_event_loop().run_in_executor(_worker, derivation_problems, a)
    ls.planning[uri] = future

    def done(f: asyncio.Future) -> None:
        if ls.planning.get(uri) is f:
            del ls.planning[uri]
        if f.cancelled():
            return
        current = ls.analyses.get(uri)
        doc = ls.workspace.text_documents.get(uri)
        if doc is None or current is None:  # closed meanwhile
            return
        if current is not a or not _current(a, doc):  # superseded: this version's refusals are dropped
            if _current(current, doc):  # the latest version, checked meanwhile: plan it (else its publish will)
                plan_later(ls, uri, current, publish)
            return
        exc = f.exception()
        a.derivation = f.result() if exc is None else [internal(a.path, a.text, exc)]
        publish(ls, uri)

    future.add_done_callback(done)


def _current(a: Analysis, doc) -> bool:
    """Whether `a` is the analysis of the document's text now."""
    return a.version == doc.version and a.text == doc.source
