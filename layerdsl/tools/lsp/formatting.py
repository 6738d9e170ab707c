"""Formatting: the whole document in `layerdsl fmt`'s layout, as one edit."""

from __future__ import annotations

import os

from lsprotocol import types as T

from layerdsl.diagnostics import SpecError
from layerdsl.tools.fmt.formatter import FormatError, format_source
from layerdsl.tools.lsp.documents import LayerServer
from layerdsl.tools.lsp.positions import text_lines


def format_document(ls: LayerServer, uri: str) -> list[T.TextEdit] | None:
    """The edits that format the document: none when it is formatted already, None when it cannot be
    formatted (the diagnostics say why)."""
    doc = ls.workspace.get_text_document(uri)
    text = doc.source
    try:
        formatted = format_source(text, os.path.basename(doc.path or "spec.layer"))
    except (SpecError, FormatError):
        return None
    if formatted == text:
        return []
    lines = text_lines(text)
    end = T.Position(line=len(lines) - 1, character=ls.codec().client_num_units(lines[-1]))
    return [T.TextEdit(range=T.Range(start=T.Position(0, 0), end=end), new_text=formatted)]
