"""Completion: what may be typed at the cursor, found from the text before it (the document may be
half-typed) and from the last analysis that parsed."""

from __future__ import annotations

import re

from lsprotocol import types as T

from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import Ref
from layerdsl.language.ops import CALLABLE
from layerdsl.language.tables import CONSTANTS, INITS, NN_LAYERS
from layerdsl.semantics import scopes
from layerdsl.tools.lsp.documents import Analysis, LayerServer
from layerdsl.tools.lsp.hover import DECORATORS, init_signature
from layerdsl.tools.lsp.navigation import layer_at
from layerdsl.tools.lsp.positions import from_position, text_lines
from layerdsl.tools.lsp.scanning import depths, open_bracket

MEMBER_KEYWORDS = ("param", "buffer", "transient", "sub", "init", "let", "example", "forward", "backward", "for")
STATEMENT_KEYWORDS = ("return", "if", "else", "update", "grad", "require", "for")
EXPRESSION_KEYWORDS = ("true", "false", "none", "and", "or", "not", "if")
ARG_TYPES = ("int", "float", "bool", "str", "ints", "tensor", "object", "fn")
DTYPE_NAMES = ("float", "long", "int", "bool")

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")


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


def resolve_item(server: LayerServer, item: T.CompletionItem) -> T.CompletionItem:
    """A layer's completion item with its docstring, its spec parsed now (the list names the layers of
    specs not parsed yet)."""
    data = item.data if isinstance(item.data, dict) else {}
    uri, name = data.get("uri"), data.get("layer")
    if isinstance(uri, str) and isinstance(name, str) and uri in server.workspace.text_documents:
        a = server.usable(uri)
        layer = a.layers.get(name) if a is not None else None
        if layer is not None and layer.docstring:
            item.documentation = T.MarkupContent(kind=T.MarkupKind.Markdown, value=layer.docstring)
    return item


def completion_items(server: LayerServer, uri: str, pos: T.Position) -> list[T.CompletionItem]:
    doc = server.workspace.get_text_document(uri)
    text = doc.source
    line, col = from_position(text, pos, server.codec())
    lines = text_lines(text)
    current = lines[line - 1] if line - 1 < len(lines) else ""
    prefix = current[: col - 1]
    offset = sum(len(l) + 1 for l in lines[: line - 1]) + len(prefix)
    braces, brackets = depths(text[:offset])
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
        items = [_item("nn.", T.CompletionItemKind.Module, "torch.nn layers", sort="1")]
        for name in a.layers.names() if a is not None else []:  # without parsing the other specs
            item = _item(name, T.CompletionItemKind.Class, f"layer {name}", sort="2")
            item.data = {"uri": uri, "layer": name}  # its docstring: `resolve_item`
            items.append(item)
        return items
    # `else` after the `}` of an if
    if brackets == 0 and braces >= 2 and before.strip() == "}":
        return _keyword_items(["else"])
    if brackets == 0 and before.strip() == "}":  # right after a layer's or a member's block: nothing follows
        return []
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
        starts = [w for w in STATEMENT_KEYWORDS if w != "else"]  # `else` only after an if's `}` (above)
        return _keyword_items(starts) + _name_items(a, line, col)
    opened = open_bracket(text[:offset])
    # dims inside a declared shape: arguments, lets and the dims bound so far
    if opened is not None and opened[0] == "[" and _declares_shape(text[: opened[1]]):
        return _name_items(a, line, col, (Ref.ARG, Ref.LET, Ref.DIM))
    # an expression
    items = _op_items() + _keyword_items(EXPRESSION_KEYWORDS) + _name_items(a, line, col)
    # the arguments of a call: its keywords first
    if opened is not None and opened[0] == "(" and re.search(r"[(,]\s*$", before):
        callee = CALLEE.search(text[: opened[1]])
        if callee is not None:
            items = _keyword_argument_items(a, callee.group(1)) + items
    return items


def _declares_shape(text: str) -> bool:
    """Whether a `[` written after `text` opens a declared shape: a member's, an input's or an output's."""
    statement = text[text.rfind("\n") + 1 :]
    return bool(
        re.match(r"\s*(?:transient\s+)?(?:param|buffer)\s+\w+\s*:\s*(?:\w+\s*)?$", statement)
        or re.search(r"^\s*forward\s*\(.*:\s*(?:\w+\s*)?$", statement)
        or re.search(r"->\s*(?:\(\s*)?(?:\[[^\]]*\]\s*,\s*)*$", statement)
    )


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


_REF_KINDS = {
    Ref.ARG: T.CompletionItemKind.Variable,
    Ref.PARAM: T.CompletionItemKind.Field,
    Ref.BUFFER: T.CompletionItemKind.Field,
    Ref.LET: T.CompletionItemKind.Constant,
    Ref.SUB: T.CompletionItemKind.Module,
    Ref.INPUT: T.CompletionItemKind.Variable,
    Ref.LOCAL: T.CompletionItemKind.Variable,
    Ref.DIM: T.CompletionItemKind.TypeParameter,
    Ref.INDEX: T.CompletionItemKind.TypeParameter,
}


def _name_items(a: Analysis | None, line: int, col: int, only: tuple[Ref, ...] = ()) -> list[T.CompletionItem]:
    """The names in scope at the cursor (by `semantics.scopes`, on the current text's IR), then
    `training` where the module's mode is visible, and the constants; only kinds `only` when given."""
    names: dict[str, tuple[T.CompletionItemKind, str]] = {}
    layer = layer_at(a, line) if a is not None else None
    construction = bool(only) and not (set(only) - set(scopes.CONSTRUCTION))
    if layer is not None:
        scope = scopes.scope_at(layer, line, col)
        construction = construction or scope.construction
        for name in scope:
            binding = scope.binding(name)
            if binding is None or (only and binding.ref not in only):
                continue
            detail = f"argument: {binding.decl.type}" if isinstance(binding.decl, N.Arg) else binding.ref.value
            names[name] = (_REF_KINDS.get(binding.ref, T.CompletionItemKind.Variable), detail)
    if not construction and not only:
        names.setdefault("training", (T.CompletionItemKind.Constant, "true in training mode"))
    for c in CONSTANTS:
        names.setdefault(c, (T.CompletionItemKind.Constant, "constant"))
    return [_item(n, k, d, sort="1") for n, (k, d) in names.items()]


CALLEE = re.compile(r"((?:nn\.)?[A-Za-z_]\w*)\s*$")


def _keyword_argument_items(a: Analysis | None, callee: str) -> list[T.CompletionItem]:
    """`name = ` for each keyword the callee takes: an operation's parameters, an initialiser's, a
    layer's arguments."""
    words: list[tuple[str, str]] = []
    if callee in CALLABLE:
        words = [(p.name, f"parameter of {callee}") for p in CALLABLE[callee].params]
    elif callee in INITS:
        spec = INITS[callee]
        words = [(name, f"parameter of {callee}") for name, _ in spec.params]
        if spec.fan_based:
            words += [("fan_in", "the fan in, for a layout that is not [out, in]"), ("fan_out", "the fan out")]
    elif a is not None and callee in a.layers:
        words = [(arg.name, f"argument of {callee}: {arg.type}") for arg in a.layers[callee].args]
    items = []
    for name, detail in words:
        item = _item(name, T.CompletionItemKind.Property, detail, sort="0")
        item.insert_text = f"{name} = "
        items.append(item)
    return items
