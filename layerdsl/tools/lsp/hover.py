"""Hover: the markdown shown for what the cursor is on (declarations with their shapes and the example
values, operations with their signatures and docs, initialisers, layers of other files)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

from lsprotocol import types as T

from layerdsl.ir import nodes as N
from layerdsl.language.ops import OPS, Op
from layerdsl.language.tables import INITS
from layerdsl.semantics.evaluate import NotConstant, evaluate, example_values
from layerdsl.semantics.shape_check import binding_at
from layerdsl.semantics.shapes import show
from layerdsl.tools.lsp.documents import Analysis, LayerServer
from layerdsl.tools.lsp.navigation import Target, resolve, resolve_callee, under_cursor
from layerdsl.tools.lsp.positions import span_text, to_range

DECORATORS = {
    "function": 'also emit a torch.autograd.Function; `@function(save = "inputs")` saves only the inputs',
    "surrogate": 'a hand-written backward that is deliberately not the true derivative: `@surrogate("why")`',
}


def _example_shape(shape: N.Shape, env: Mapping[str, Any]) -> list[int | str] | None:
    """The dims of `shape` with the example values ("..." for an ellipsis); None when one is not an int."""
    values: list[int | str] = []
    for d in shape.dims:
        if isinstance(d, N.EllipsisItem):
            values.append("...")
            continue
        try:
            v = evaluate(d, env)
        except (NotConstant, ArithmeticError, TypeError):
            return None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool):
            return None
        values.append(v)
    return values


def _example_shape_line(shape: N.Shape | None, layer: N.Layer) -> str | None:
    """The line saying a shape with the layer's example values, and its element count when it has no `...`."""
    values = _example_shape(shape, example_values(layer)) if shape is not None else None
    if values is None:
        return None
    line = f"- shape with the example values: [{', '.join(map(str, values))}]"
    sizes = [v for v in values if isinstance(v, int)]
    if len(sizes) == len(values):
        count = math.prod(sizes)
        line += f", {count:,} element{'s' if count != 1 else ''}"
    return line


_DTYPE_DOC = {
    "float": "the module's floating dtype (float32 by default)",
    "long": "torch.long (int64)",
    "int": "torch.int (int32)",
    "bool": "torch.bool",
}


def _expr_text(source: str, e: N.Expr) -> str:
    """The source of an expression on one line (a wrapped list is joined back)."""
    try:
        text = span_text(source, e.span)
    except Exception:
        return "…"
    if "\n" in text and '"""' not in text:
        text = re.sub(r"\s*#[^\n]*", "", text)
        text = re.sub(r"\s*\n\s*", " ", text)
        text = re.sub(r"([(\[]) ", r"\1", text)
        text = re.sub(r",? ([)\]])", r"\1", text)
    return text


def _shape_text(source: str, shape: N.Shape | None) -> str:
    return span_text(source, shape.span) if shape is not None else "[...]"


def init_signature(name: str) -> str:
    spec = INITS[name]
    params = [f"{p} = {d}" if d else p for p, d in spec.params]
    if spec.fan_based:
        params += ["fan_in = …", "fan_out = …"]
    return f"{name}({', '.join(params)})" if params else name


def layer_signature(layer: N.Layer, source: str) -> str:
    args = []
    for a in layer.args:
        s = f"{a.name}: {a.type}"
        if a.default is not None:
            s += f" = {_expr_text(source, a.default)}"
        args.append(s)
    return f"layer {layer.name}({', '.join(args)})"


_MARKDOWN = re.compile(r"([\\*_\[\]<>#|~])")


def prose(text: str) -> str:
    """Text shown as markdown with its markdown characters escaped (`_` in `in_features` must not start
    an emphasis), except inside `code` spans, which markdown shows as written."""
    parts = text.split("`")
    return "`".join(_MARKDOWN.sub(r"\\\1", p) if i % 2 == 0 else p for i, p in enumerate(parts))


def _code(text: str) -> str:
    return f"```layer\n{text}\n```"


def _local_shape(a: Analysis, target: Target) -> str | None:
    """A forward local's shape as the static shape pass inferred it where it is first bound (None: the
    document has not checked clean, or the shape is unknown)."""
    checked = a.shapes.get(target.layer.name)
    if checked is None or target.span is None:
        return None
    found = binding_at(checked, target.span.line, target.span.col)
    if found is None or found.name != target.name or "<" in show(found.shape):
        return None
    return show(found.shape)


def hover_markdown(a: Analysis, target: Target) -> str | None:
    """The hover text for `target` (None: nothing to say)."""
    layer = target.layer
    src = a.sources.get(layer.path, a.text) if layer.path != a.path else a.text
    match target:
        case Target(node=N.Tensor() as tensor):
            return _tensor_hover(src, tensor, layer)
        case Target(node=N.Arg() as arg):
            return _arg_hover(src, arg, layer)
        case Target(node=N.Let() as let):
            return _let_hover(src, let, layer)
        case Target(kind="sub", node=N.Sub() as sub):
            return _sub_hover(a, src, sub, layer)
        case Target(node=N.Input() as inp):
            return _input_hover(src, inp, layer)
        case Target(kind="let", node=N.Name() as var):
            return _loop_variable_hover(var, layer)
        case Target(kind="local"):
            shape = _local_shape(a, target)
            head = f"(local) {target.name}" + (f": {shape}" if shape else "")
            return _code(head) + "\na name bound by an assignment in forward or backward"
        case Target(kind="dim"):
            lines = [_code(f"(dim) {target.name}: int"), "a symbolic size, bound from the inputs' shapes at run time"]
            env = example_values(layer)
            if target.name in env:
                lines.append(f"- example: {env[target.name]}")
            return "\n".join(lines)
        case Target(kind="grad"):
            return _code(f"(gradient) {target.name}") + "\nthe incoming gradient of one output of forward"
        case Target(kind="index"):
            return _code(f"(index) {target.name}") + "\nan index variable of this index-notation statement"
        case Target(kind="op", node=Op() as op):
            return "\n".join([_code(op.signature), prose(op.doc), f"- PyTorch: `{op.torch}`"])
        case Target(kind="op-param", node=Op() as op):
            p = op.param(target.name)
            if p is None:
                return _code(op.signature)
            default = f" = {p.default}" if p.default is not None else ""
            return _code(f"(parameter of {op.name}) {p.name}{default}") + f"\n{op.signature}"
        case Target(kind="reduce"):
            reduction = OPS.get(target.name)
            return (
                _code(f"{target.name}[INDEX, ...](EXPR)")
                + f"\nindex-notation reduction: {prose(reduction.doc) if reduction else prose(target.name)} over the listed indices"
            )
        case Target(kind="init") if target.name in INITS:
            return _init_hover(target.name)
        case Target(kind="layer", node=N.Layer() as other):
            return _layer_hover(a, other)
        case Target(kind="nn"):
            return _code(f"nn.{target.name}") + f"\nthe PyTorch layer `torch.nn.{target.name}`"
        case Target(kind="const"):
            return _code(f"(constant) {target.name}") + ("\nπ = 3.14159…" if target.name == "pi" else "\ninfinity")
        case Target(kind="training"):
            return _code("training: bool") + "\ntrue while the module is in training mode"
        case Target(kind="decorator"):
            return _code(f"@{target.name}") + (
                f"\n{prose(DECORATORS[target.name])}" if target.name in DECORATORS else ""
            )
    return None


def _loop_variable_hover(var: N.Name, layer: N.Layer) -> str:
    """The `k` of a member loop, or the `i` of a list of subs' `range`."""
    if any(t.repeat is not None and t.repeat.var is var for t in layer.tensors):
        what = "the variable of a member loop: each value declares one param of each family"
    else:
        what = "the variable of a list of subs: it names nothing (each item is built alike)"
    return _code(f"(loop variable) {var.id}: int") + f"\n{what}"


def _tensor_hover(src: str, t: N.Tensor, layer: N.Layer) -> str:
    kind = t.kind if t.persistent or t.kind == "param" else "transient buffer"
    dtype_prefix = t.dtype if t.dtype != "float" and t.kind == "buffer" else ""
    head = f"{kind} {t.name}: {dtype_prefix}{_shape_text(src, t.shape)}"
    if t.init is not None:
        head += f" = {_init_text(src, t.init)}"
    if t.cond is not None:
        head += f" if {_expr_text(src, t.cond)}"
    lines = [_code(head), f"- dtype: {_DTYPE_DOC.get(t.dtype, t.dtype)}"]
    shape_line = _example_shape_line(t.shape, layer)
    if shape_line is not None:
        lines.append(shape_line)
    if t.init is None:
        default = "kaiming_uniform(a = sqrt(5))" if t.kind == "param" and len(t.shape.dims) >= 2 else "zeros"
        lines.append(f"- init (default): {default}")
    elif t.init.name in INITS:
        lines.append(f"- init: {t.init.name}: {INITS[t.init.name].doc}")
    if t.cond is not None:
        lines.append(f"- optional: registered as None unless `{_expr_text(src, t.cond)}`")
    return "\n".join(lines)


def _arg_hover(src: str, arg: N.Arg, layer: N.Layer) -> str:
    head = f"(argument) {arg.name}: {arg.type}"
    if arg.default is not None:
        head += f" = {_expr_text(src, arg.default)}"
    lines = [
        _code(head),
        f"- type: {arg.type}",
        "- default: " + (f"`{_expr_text(src, arg.default)}`" if arg.default is not None else "none (required)"),
    ]
    ex = next((e for e in layer.examples if e.name == arg.name), None)
    if ex is not None:
        lines.append(f"- example: `{_expr_text(src, ex.value)}`")
    lines.append(f"- argument of layer `{layer.name}`")
    return "\n".join(lines)


def _let_hover(src: str, let: N.Let, layer: N.Layer) -> str:
    lines = [_code(f"let {let.name} = {_expr_text(src, let.value)}"), "a constant computed once at construction"]
    value = example_values(layer).get(let.name)
    if isinstance(value, (int, float)):
        lines.append(f"- with the example values: {value:g}")
    return "\n".join(lines)


def _sub_hover(a: Analysis, src: str, sub: N.Sub, layer: N.Layer) -> str:
    lines = [_code(f"sub {sub.name} = {_expr_text(src, sub.call)}")]
    callee = resolve_callee(a, layer, sub.call)
    if callee is not None and callee.kind == "layer" and callee.layer.docstring:
        lines.append(prose(callee.layer.docstring))
    elif callee is not None and callee.kind == "nn":
        lines.append(f"a `torch.nn.{callee.name}` submodule")
    return "\n".join(lines)


def _input_hover(src: str, inp: N.Input, layer: N.Layer) -> str:
    dtype_prefix = inp.dtype if inp.dtype != "float" else ""
    lines = [
        _code(f"(input) {inp.name}: {dtype_prefix}{_shape_text(src, inp.shape)}"),
        f"- dtype: {_DTYPE_DOC.get(inp.dtype, inp.dtype)}",
    ]
    shape_line = _example_shape_line(inp.shape, layer)
    if shape_line is not None:
        lines.append(shape_line)
    return "\n".join(lines)


def _init_hover(name: str) -> str:
    spec = INITS[name]
    lines = [_code(f"(initialiser) {init_signature(name)}"), prose(spec.doc)]
    if spec.fan_based:
        lines.append("fan-based: `fan_in =` / `fan_out =` state the fans of a layout that is not torch's [out, in]")
    return "\n".join(lines)


def _layer_hover(a: Analysis, other: N.Layer) -> str:
    osrc = a.sources.get(other.path, a.text) if other.path != a.path else a.text
    lines = [_code(layer_signature(other, osrc))]
    if other.docstring:
        lines.append(prose(other.docstring))
    if other.path != a.path:
        lines.append(f"- defined in `{os.path.relpath(other.path, a.root) if a.root else other.path}`")
    return "\n".join(lines)


def _init_text(source: str, init: N.Init) -> str:
    parts = [_expr_text(source, x) for x in init.args] + [
        f"{k.name} = {_expr_text(source, k.value)}" for k in init.kwargs
    ]
    return f"{init.name}({', '.join(parts)})" if parts else init.name


def hover_at(ls: LayerServer, uri: str, position: T.Position) -> T.Hover | None:
    """The hover for the cursor at `position`, from the last analysis that parsed."""
    found = under_cursor(ls, uri, position)
    if found is None:
        return None
    a, occ, layer = found
    target = resolve(a, occ, layer)
    if target is None:
        return None
    text = hover_markdown(a, target)
    if not text:
        return None
    return T.Hover(
        contents=T.MarkupContent(kind=T.MarkupKind.Markdown, value=text), range=to_range(occ.span, a.text, ls.codec())
    )
