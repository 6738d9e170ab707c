"""`layerdsl lsp`: a language server for `.layer` specs (pygls 2), over stdio; this module only wires
the features to the protocol.

Features: diagnostics from the real parser and checker, debounced and re-checked only for the changed
document and the open documents that depend on it (`documents`, `diagnostics`; of the other specs of
its folder only those that may define a layer it names are parsed, the others when a feature looks a
name up: `layer_index`), then the derivation refusals of a clean document's `@function` layers, planned
in a worker (`derivation`), hover (`hover`), completion by context, a layer's docstring on resolving its
item (`completion`), go to definition (`navigation`), find references, rename and document highlight
(`references`; of a family of params, `family_rename`), quick fixes (`actions`), semantic tokens (`semantic_tokens`), inlay hints with inferred
shapes (`inlay_hints`), signature help (`signature_help`), folding ranges (`folding`), document and
workspace symbols (`symbols`, `workspace_symbols`), formatting (`layerdsl fmt`'s layout: `formatting`)
and the `layerdsl.showGenerated` command (`show_generated`). The stdio framing is hardened against
hostile input (`framing`). A spec over the parser's limits is outlined, navigated and hovered by a
bounded line scan (`outline_scan`).

Every analysis is cached per document version. No request may crash the server: a half-typed document
is parsed with its failing lines blanked, so every feature answers from the current text.
"""

from __future__ import annotations

import functools
import logging
import traceback

from lsprotocol import types as T
from pygls.exceptions import JsonRpcInvalidParams

from layerdsl.deep_stack import on_deep_stack
from layerdsl.tools.lsp.actions import code_actions
from layerdsl.tools.lsp.completion import completion_items, resolve_item
from layerdsl.tools.lsp.diagnostics import clear, publish_all, republish, schedule
from layerdsl.tools.lsp.documents import LayerServer
from layerdsl.tools.lsp.family_rename import (
    family_highlights,
    family_references,
    family_rename,
    prepare_family_rename,
)
from layerdsl.tools.lsp.folding import folding_ranges
from layerdsl.tools.lsp.formatting import format_document
from layerdsl.tools.lsp.framing import serve_stdio
from layerdsl.tools.lsp.hover import hover_at
from layerdsl.tools.lsp.inlay_hints import inlay_hints
from layerdsl.tools.lsp.navigation import definition_at
from layerdsl.tools.lsp.outline_scan import scanned_at
from layerdsl.tools.lsp.references import RenameError, highlights, prepare_rename, references, rename
from layerdsl.tools.lsp.semantic_tokens import LEGEND, semantic_tokens
from layerdsl.tools.lsp.show_generated import SHOW_GENERATED, show_generated
from layerdsl.tools.lsp.signature_help import signature_help
from layerdsl.tools.lsp.symbols import document_symbols
from layerdsl.tools.lsp.workspace_symbols import workspace_symbols

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
    if (scanned := scanned_at(ls, params.text_document.uri)) is not None:  # over the size limit
        return scanned.hover(params.position)
    return hover_at(ls, params.text_document.uri, params.position)


@server.feature(T.TEXT_DOCUMENT_COMPLETION, T.CompletionOptions(trigger_characters=[".", "@"], resolve_provider=True))
@_safe()
def completion(ls: LayerServer, params: T.CompletionParams):
    items = completion_items(ls, params.text_document.uri, params.position)
    return T.CompletionList(is_incomplete=False, items=items)


@server.feature(T.COMPLETION_ITEM_RESOLVE)
def completion_resolve(ls: LayerServer, item: T.CompletionItem):
    try:
        return resolve_item(ls, item)
    except Exception:
        log.error("layerdsl completion_resolve failed:\n%s", traceback.format_exc())
        return item


@server.feature(T.TEXT_DOCUMENT_DEFINITION)
@_safe()
def definition(ls: LayerServer, params: T.DefinitionParams):
    if (scanned := scanned_at(ls, params.text_document.uri)) is not None:  # over the size limit
        return scanned.definition(params.position)
    return definition_at(ls, params.text_document.uri, params.position)


@server.feature(T.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
@_safe()
def symbols(ls: LayerServer, params: T.DocumentSymbolParams):
    if (scanned := scanned_at(ls, params.text_document.uri)) is not None:  # over the size limit
        return scanned.symbols()
    a = ls.usable(params.text_document.uri)
    if a is None:
        return []
    return document_symbols(a, ls.codec())


@server.feature(T.TEXT_DOCUMENT_FORMATTING)
@_safe()
def formatting(ls: LayerServer, params: T.DocumentFormattingParams):
    return format_document(ls, params.text_document.uri)


@server.feature(T.TEXT_DOCUMENT_REFERENCES)
@_safe([])
def find_references(ls: LayerServer, params: T.ReferenceParams):
    family = family_references(ls, params)
    return family if family is not None else references(ls, params)


@server.feature(T.TEXT_DOCUMENT_DOCUMENT_HIGHLIGHT)
@_safe([])
def document_highlight(ls: LayerServer, params: T.DocumentHighlightParams):
    family = family_highlights(ls, params.text_document.uri, params.position)
    return family if family is not None else highlights(ls, params.text_document.uri, params.position)


@server.feature(T.TEXT_DOCUMENT_PREPARE_RENAME)
def prepare_rename_request(ls: LayerServer, params: T.PrepareRenameParams):
    try:
        family = prepare_family_rename(ls, params.text_document.uri, params.position)
        return family or prepare_rename(ls, params.text_document.uri, params.position)
    except RenameError as exc:  # a builtin's name: the client shows why
        raise JsonRpcInvalidParams(str(exc)) from None
    except Exception:
        log.error("layerdsl prepare_rename failed:\n%s", traceback.format_exc())
        return None


@server.feature(T.TEXT_DOCUMENT_RENAME)
def rename_request(ls: LayerServer, params: T.RenameParams):
    try:
        family = family_rename(ls, params)
        return family if family is not None else rename(ls, params)
    except RenameError as exc:
        raise JsonRpcInvalidParams(str(exc)) from None
    except Exception:
        log.error("layerdsl rename failed:\n%s", traceback.format_exc())
        return None


@server.feature(T.TEXT_DOCUMENT_CODE_ACTION, T.CodeActionOptions(code_action_kinds=[T.CodeActionKind.QuickFix]))
@_safe([])
def code_action(ls: LayerServer, params: T.CodeActionParams):
    return code_actions(ls, params)


@server.feature(T.TEXT_DOCUMENT_SEMANTIC_TOKENS_FULL, LEGEND)
@_safe()
def semantic_tokens_full(ls: LayerServer, params: T.SemanticTokensParams):
    return semantic_tokens(ls, params.text_document.uri)


@server.feature(T.TEXT_DOCUMENT_INLAY_HINT)
@_safe([])
def inlay_hint(ls: LayerServer, params: T.InlayHintParams):
    return inlay_hints(ls, params.text_document.uri, params.range)


@server.feature(T.TEXT_DOCUMENT_SIGNATURE_HELP, T.SignatureHelpOptions(trigger_characters=["(", ","]))
@_safe()
def signature(ls: LayerServer, params: T.SignatureHelpParams):
    return signature_help(ls, params.text_document.uri, params.position)


@server.feature(T.TEXT_DOCUMENT_FOLDING_RANGE)
@_safe([])
def folding(ls: LayerServer, params: T.FoldingRangeParams):
    return folding_ranges(ls.workspace.get_text_document(params.text_document.uri).source)


@server.feature(T.WORKSPACE_SYMBOL)
@_safe([])
def workspace_symbol(ls: LayerServer, params: T.WorkspaceSymbolParams):
    return workspace_symbols(ls, params.query)


server.command(SHOW_GENERATED)(show_generated)


def serve() -> None:
    """Run the language server on stdin/stdout until the client says exit."""
    logging.basicConfig(level=logging.WARNING, format="layerdsl-lsp %(levelname)s: %(message)s")
    on_deep_stack(lambda: serve_stdio(server))  # the handlers run on its event loop, on this deep stack
