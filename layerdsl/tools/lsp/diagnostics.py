"""Diagnostics: the analysis's diagnostics as LSP diagnostics, published for a document and for the
open documents that may depend on it; a clean document's derivation refusals follow from a worker
(`derivation`)."""

from __future__ import annotations

import asyncio
import logging
import traceback

from lsprotocol import types as T

from layerdsl.diagnostics import Diagnostic
from layerdsl.tools.lsp.derivation import needs_planning, plan_later, refusals
from layerdsl.tools.lsp.documents import LayerServer
from layerdsl.tools.lsp.positions import to_range

log = logging.getLogger(__name__)

SOURCE = "layerdsl"


def lsp_diagnostic(d: Diagnostic, text: str, codec, version: int | None = None) -> T.Diagnostic:
    """`d` for the client; its `data` holds the hint the quick fixes read and the version of the document
    it was found in (actions.py offers no fix for another version's diagnostic)."""
    message = d.message + (f"\nhint: {d.hint}" if d.hint else "")
    severity = T.DiagnosticSeverity.Warning if d.severity == "warning" else T.DiagnosticSeverity.Error
    data = {"version": version} | ({"hint": d.hint} if d.hint else {})
    return T.Diagnostic(
        range=to_range(d.span, text, codec), message=message, severity=severity, source=SOURCE, data=data
    )


def publish(ls: LayerServer, uri: str, force: bool = True) -> None:
    """Publish the document's diagnostics (unless `force` is False and they have not changed)."""
    a = None
    try:
        a = ls.analyze(uri)
        found = a.diagnostics + refusals(ls, uri, a)
        diagnostics = [lsp_diagnostic(d, a.text, ls.codec(), a.version) for d in found]
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
    if force or ls.published.get(uri) != key:
        ls.published[uri] = key
        ls.text_document_publish_diagnostics(
            T.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics, version=version)
        )
    if a is not None and needs_planning(ls, a):  # the refusals follow (derivation.py)
        plan_later(ls, uri, a, lambda ls, uri: publish(ls, uri, force=False))


def current_diagnostics(ls: LayerServer, uri: str) -> list[T.Diagnostic]:
    """The diagnostics of the document's current version: its analysis's and the derivation refusals
    shown for its text (without planning or publishing anything)."""
    a = ls.analyze(uri)
    shown = ls.refusals_shown.get(uri)
    if a.derivation is not None:
        found = a.diagnostics + a.derivation
    else:
        found = a.diagnostics + ([d for _, d in shown[1]] if shown is not None and shown[0] == a.text else [])
    return [lsp_diagnostic(d, a.text, ls.codec(), a.version) for d in found]


DEBOUNCE_SECONDS = 0.15  # diagnostics wait this long after an edit; a newer edit restarts the wait


def republish(ls: LayerServer, uri: str) -> None:
    """A document changed: diagnostics for it, then for the open documents that depend on it (those
    that use or also define one of its layers, before or after the change)."""
    before = ls.analyses.get(uri)
    names = before.names if before is not None else set()
    publish(ls, uri)
    after = ls.analyses.get(uri)
    names |= after.names if after is not None else set()
    for other in ls.dependents(uri, names):
        ls.stale.add(other)
        publish(ls, other, force=False)


def schedule(ls: LayerServer, uri: str, delay: float = DEBOUNCE_SECONDS) -> None:
    """Publish the document's diagnostics after an edit: at once after a pause in typing (the edit
    before it is more than `delay` seconds old), else `delay` seconds from now unless the document
    changes again first, so that a burst of keystrokes is checked once, after its last one."""
    loop = asyncio.get_event_loop()
    now = loop.time()
    pending = ls.pending.pop(uri, None)
    if pending is not None:
        pending.cancel()
    last = ls.last_edit.get(uri)
    ls.last_edit[uri] = now

    def run() -> None:
        ls.pending.pop(uri, None)
        try:
            if uri in ls.workspace.text_documents:
                republish(ls, uri)
        except Exception:
            log.error("diagnostics failed:\n%s", traceback.format_exc())

    typing = pending is not None or (last is not None and now - last < delay)
    ls.pending[uri] = loop.call_later(delay, run) if typing else loop.call_soon(run)


def publish_all(ls: LayerServer) -> None:
    """Files on disk changed: diagnostics for every open document whose diagnostics changed."""
    ls.forget_scans()
    ls.stale.update(ls.analyses)
    for uri in list(ls.workspace.text_documents):
        publish(ls, uri, force=False)


def clear(ls: LayerServer, uri: str) -> None:
    """The document was closed: forget it and clear its diagnostics."""
    ls.forget(uri)
    ls.text_document_publish_diagnostics(T.PublishDiagnosticsParams(uri=uri, diagnostics=[]))
