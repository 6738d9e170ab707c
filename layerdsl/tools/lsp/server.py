"""`layerdsl lsp`: a language server for `.layer` specs (pygls 2), over stdio; this module only wires
the features to the protocol.

Features: diagnostics from the real parser and checker (with the other specs of the workspace folder, so
that cross-file `sub` layers resolve: `documents`, `diagnostics`), hover (`hover`), completion
(`completion`), go to definition (`navigation`), document symbols (`symbols`), formatting
(`layerdsl fmt`'s layout: `formatting`) and the `layerdsl.showGenerated` command, which returns the
generated Python (`show_generated`).

Every analysis is cached per document version. No request may crash the server: a half-typed document
gives diagnostics (and whatever features the last good parse still supports), never an exception.
"""

from __future__ import annotations

import functools
import logging
import traceback

from lsprotocol import types as T

from layerdsl.tools.lsp.completion import completion_items
from layerdsl.tools.lsp.diagnostics import clear, publish_all, republish, schedule
from layerdsl.tools.lsp.documents import LayerServer
from layerdsl.tools.lsp.formatting import format_document
from layerdsl.tools.lsp.framing import serve_stdio
from layerdsl.tools.lsp.hover import hover_at
from layerdsl.tools.lsp.navigation import definition_at
from layerdsl.tools.lsp.show_generated import SHOW_GENERATED, show_generated
from layerdsl.tools.lsp.symbols import document_symbols

log = logging.getLogger(__name__)

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


@server.feature(T.TEXT_DOCUMENT_DID_OPEN)
@_safe()
def did_open(ls: LayerServer, params: T.DidOpenTextDocumentParams):
    republish(ls, params.text_document.uri)


@server.feature(T.TEXT_DOCUMENT_DID_CHANGE)
@_safe()
def did_change(ls: LayerServer, params: T.DidChangeTextDocumentParams):
    schedule(ls, params.text_document.uri)


@server.feature(T.TEXT_DOCUMENT_DID_SAVE)
@_safe()
def did_save(ls: LayerServer, params: T.DidSaveTextDocumentParams):
    ls.forget_scans()
    republish(ls, params.text_document.uri)


@server.feature(T.TEXT_DOCUMENT_DID_CLOSE)
@_safe()
def did_close(ls: LayerServer, params: T.DidCloseTextDocumentParams):
    clear(ls, params.text_document.uri)


@server.feature(T.WORKSPACE_DID_CHANGE_WATCHED_FILES)
@_safe()
def did_change_watched(ls: LayerServer, params: T.DidChangeWatchedFilesParams):
    publish_all(ls)


@server.feature(T.TEXT_DOCUMENT_HOVER)
@_safe()
def hover(ls: LayerServer, params: T.HoverParams):
    return hover_at(ls, params.text_document.uri, params.position)


@server.feature(T.TEXT_DOCUMENT_COMPLETION, T.CompletionOptions(trigger_characters=[".", "@"]))
@_safe()
def completion(ls: LayerServer, params: T.CompletionParams):
    items = completion_items(ls, params.text_document.uri, params.position)
    return T.CompletionList(is_incomplete=False, items=items)


@server.feature(T.TEXT_DOCUMENT_DEFINITION)
@_safe()
def definition(ls: LayerServer, params: T.DefinitionParams):
    return definition_at(ls, params.text_document.uri, params.position)


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
    return format_document(ls, params.text_document.uri)


server.command(SHOW_GENERATED)(show_generated)


def serve() -> None:
    """Run the language server on stdin/stdout until the client says exit."""
    logging.basicConfig(level=logging.WARNING, format="layerdsl-lsp %(levelname)s: %(message)s")
    serve_stdio(server)
