"""Completion: what may be typed at the cursor, found from the text before it (the document may be
half-typed) and from the last analysis that parsed."""

from __future__ import annotations

import re

from lsprotocol import types as T

from layerdsl.ir import nodes as N
from layerdsl.ir.visit import statements
from layerdsl.language.ops import CALLABLE
from layerdsl.language.tables import CONSTANTS, INITS, NN_LAYERS
from layerdsl.tools.lsp.documents import Analysis, LayerServer
from layerdsl.tools.lsp.hover import DECORATORS, init_signature
from layerdsl.tools.lsp.navigation import layer_at
from layerdsl.tools.lsp.positions import from_position, text_lines

MEMBER_KEYWORDS = ("param", "buffer", "transient", "sub", "let", "example", "forward", "backward")
STATEMENT_KEYWORDS = ("return", "if", "else", "update", "grad", "require")
EXPRESSION_KEYWORDS = ("true", "false", "none", "and", "or", "not", "if")
ARG_TYPES = ("int", "float", "bool", "str")
DTYPE_NAMES = ("float", "long", "int", "bool")

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
    lines = text_lines(text)
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
        layers = a.layers if a is not None else {}
        items = [_item("nn.", T.CompletionItemKind.Module, "torch.nn layers", sort="1")]
        for name in sorted(layers):
            items.append(_item(name, T.CompletionItemKind.Class, f"layer {name}", layers[name].docstring, "2"))
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
                for stmt in statements(layer.forward.body):
                    if isinstance(stmt, (N.Assign, N.IndexAssign)):
                        names.setdefault(stmt.target, (kinds["local"], "local"))
    if in_body:
        for name, kind in _regex_names(text).items():
            names.setdefault(name, (kinds.get(kind, T.CompletionItemKind.Variable), kind))
        names.setdefault("training", (T.CompletionItemKind.Constant, "true in training mode"))
    for c in CONSTANTS:
        names.setdefault(c, (T.CompletionItemKind.Constant, "constant"))
    return [_item(n, k, d, sort="1") for n, (k, d) in names.items()]
