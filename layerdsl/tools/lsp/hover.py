"""Hover: the markdown shown for what the cursor is on (declarations with their shapes and the example
values, operations with their signatures and docs, initialisers, layers of other files)."""

from __future__ import annotations

import math
import os
import re

from lsprotocol import types as T

from layerdsl.ir import nodes as N
from layerdsl.language.ops import CALLABLE, OPS
from layerdsl.language.tables import INITS
from layerdsl.tools.lsp.documents import Analysis, LayerServer
from layerdsl.tools.lsp.navigation import Target, ref_at, resolve, resolve_callee
from layerdsl.tools.lsp.positions import from_position, span_text, to_range

DECORATORS = {
    "function": 'also emit a torch.autograd.Function; `@function(save = "inputs")` saves only the inputs',
    "surrogate": 'a hand-written backward that is deliberately not the true derivative: `@surrogate("why")`',
}


def _eval(expr, env: dict):
    match expr:
        case N.Num(value=v):
            return v
        case N.Bool(value=v):
            return v
        case N.Name(id=i):
            if i in env:
                return env[i]
            if i == "pi":
                return math.pi
            if i == "inf":
                return math.inf
            raise KeyError(i)
        case N.UnaryOp(op=op, operand=o):
            v = _eval(o, env)
            return -v if op == "-" else +v
        case N.BinOp(op=op, left=l, right=r):
            x, y = _eval(l, env), _eval(r, env)
            return {
                "+": lambda: x + y,
                "-": lambda: x - y,
                "*": lambda: x * y,
                "/": lambda: x / y,
                "//": lambda: x // y,
                "%": lambda: x % y,
                "**": lambda: x**y,
            }[op]()
        case N.Call(func=f, args=args, kwargs=[]) if f in CALLABLE and CALLABLE[f].scalar:
            fn = {"abs": abs, "round": round, "max": max, "min": min}.get(CALLABLE[f].scalar)
            if fn is None and CALLABLE[f].scalar.startswith("math."):
                fn = getattr(math, CALLABLE[f].scalar[5:])
            return fn(*[_eval(x, env) for x in args])
    raise ValueError("not computable")


def example_env(layer: N.Layer) -> dict:
    from layerdsl.semantics.checker import literal_value

    env = {}
    for a in layer.args:
        if a.default is not None:
            try:
                env[a.name] = literal_value(a.default)
            except Exception:
                pass
    for ex in layer.examples:
        try:
            env[ex.name] = literal_value(ex.value)
        except Exception:
            pass
    for let in layer.lets:
        try:
            env[let.name] = _eval(let.value, env)
        except Exception:
            pass
    return env


def _shape_values(shape: N.Shape | None, env: dict) -> tuple[list | None, int | None]:
    if shape is None:
        return None, None
    values = []
    for d in shape.dims:
        if isinstance(d, N.EllipsisItem):
            values.append("...")
            continue
        try:
            v = _eval(d, env)
        except Exception:
            return None, None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool):
            return None, None
        values.append(v)
    if "..." in values:
        return values, None
    return values, math.prod(values)


_DTYPE_DOC = {
    "float": "the module's floating dtype (float32 by default)",
    "long": "torch.long (int64)",
    "int": "torch.int (int32)",
    "bool": "torch.bool",
}


def _expr_text(source: str, e) -> str:
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


def _code(text: str) -> str:
    return f"```layer\n{text}\n```"


def hover_markdown(a: Analysis, target: Target) -> str | None:
    layer = target.layer
    src = a.sources.get(layer.path, a.text) if layer is not None and layer.path != a.path else a.text
    k = target.kind
    if k in ("param", "buffer"):
        t: N.Tensor = target.node
        kind = t.kind if t.persistent or t.kind == "param" else "transient buffer"
        dtype_prefix = t.dtype if t.dtype != "float" and t.kind == "buffer" else ""
        head = f"{kind} {t.name}: {dtype_prefix}{_shape_text(src, t.shape)}"
        if t.init is not None:
            head += f" = {_init_text(src, t.init)}"
        if t.cond is not None:
            head += f" if {_expr_text(src, t.cond)}"
        lines = [_code(head), f"- dtype: {_DTYPE_DOC.get(t.dtype, t.dtype)}"]
        values, count = _shape_values(t.shape, example_env(layer))
        if values is not None:
            lines.append(
                f"- shape with the example values: [{', '.join(map(str, values))}]"
                + (f", {count:,} element{'s' if count != 1 else ''}" if count is not None else "")
            )
        if t.init is None:
            lines.append(
                f"- init (default): {'kaiming_uniform(a = sqrt(5))' if t.kind == 'param' and len(t.shape.dims) >= 2 else 'zeros'}"
            )
        elif t.init.name in INITS:
            lines.append(f"- init: {t.init.name}: {INITS[t.init.name].doc}")
        if t.cond is not None:
            lines.append(f"- optional: registered as None unless `{_expr_text(src, t.cond)}`")
        return "\n".join(lines)
    if k == "arg":
        arg: N.Arg = target.node
        head = f"(argument) {arg.name}: {arg.type}"
        if arg.default is not None:
            head += f" = {_expr_text(src, arg.default)}"
        lines = [
            _code(head),
            f"- type: {arg.type}",
            "- default: " + (f"`{_expr_text(src, arg.default)}`" if arg.default is not None else "none (required)"),
        ]
        ex = next((e for e in layer.examples if e.name == arg.name), None) if layer else None
        if ex is not None:
            lines.append(f"- example: `{_expr_text(src, ex.value)}`")
        if layer is not None:
            lines.append(f"- argument of layer `{layer.name}`")
        return "\n".join(lines)
    if k == "let":
        let: N.Let = target.node
        lines = [_code(f"let {let.name} = {_expr_text(src, let.value)}"), "a constant computed once at construction"]
        env = example_env(layer)
        if let.name in env:
            lines.append(
                f"- with the example values: {env[let.name]:g}" if isinstance(env[let.name], (int, float)) else ""
            )
        return "\n".join(x for x in lines if x)
    if k == "sub":
        sub: N.Sub = target.node
        lines = [_code(f"sub {sub.name} = {_expr_text(src, sub.call)}")]
        callee = resolve_callee(a, layer, sub.call.func, "construction")
        if callee is not None and callee.kind == "layer" and callee.node.docstring:
            lines.append(callee.node.docstring)
        elif callee is not None and callee.kind == "nn":
            lines.append(f"a `torch.nn.{callee.name}` submodule")
        return "\n".join(lines)
    if k == "input":
        inp: N.Input = target.node
        dtype_prefix = inp.dtype if inp.dtype != "float" else ""
        lines = [
            _code(f"(input) {inp.name}: {dtype_prefix}{_shape_text(src, inp.shape)}"),
            f"- dtype: {_DTYPE_DOC.get(inp.dtype, inp.dtype)}",
        ]
        values, count = _shape_values(inp.shape, example_env(layer))
        if values is not None:
            lines.append(
                f"- shape with the example values: [{', '.join(map(str, values))}]"
                + (f", {count:,} element{'s' if count != 1 else ''}" if count is not None else "")
            )
        return "\n".join(lines)
    if k == "local":
        return _code(f"(local) {target.name}") + "\na name bound by an assignment in forward or backward"
    if k == "dim":
        lines = [_code(f"(dim) {target.name}: int"), "a symbolic size, bound from the inputs' shapes at run time"]
        env = example_env(layer) if layer else {}
        if target.name in env:
            lines.append(f"- example: {env[target.name]}")
        return "\n".join(lines)
    if k == "grad":
        return _code(f"(gradient) {target.name}") + "\nthe incoming gradient of one output of forward"
    if k == "index":
        return _code(f"(index) {target.name}") + "\nan index variable of this index-notation statement"
    if k == "op":
        op = target.node
        return "\n".join([_code(op.signature), op.doc, f"- PyTorch: `{op.torch}`"])
    if k == "op-param":
        op = target.node
        p = op.param(target.name)
        if p is None:
            return _code(op.signature)
        return (
            _code(f"(parameter of {op.name}) {p.name}" + (f" = {p.default}" if p.default is not None else ""))
            + f"\n{op.signature}"
        )
    if k == "reduce":
        op = OPS.get(target.name)
        return (
            _code(f"{target.name}[INDEX, ...](EXPR)")
            + f"\nindex-notation reduction: {op.doc if op else target.name} over the listed indices"
        )
    if k == "init":
        if target.name not in INITS:
            return None
        spec = INITS[target.name]
        lines = [_code(f"(initialiser) {init_signature(target.name)}"), spec.doc]
        if spec.fan_based:
            lines.append("fan-based: `fan_in =` / `fan_out =` state the fans of a layout that is not torch's [out, in]")
        return "\n".join(lines)
    if k == "layer":
        other: N.Layer = target.node
        osrc = a.sources.get(other.path, a.text) if other.path != a.path else a.text
        lines = [_code(layer_signature(other, osrc))]
        if other.docstring:
            lines.append(other.docstring)
        if other.path != a.path:
            lines.append(f"- defined in {os.path.relpath(other.path, a.root) if a.root else other.path}")
        return "\n".join(lines)
    if k == "nn":
        return _code(f"nn.{target.name}") + f"\nthe PyTorch layer `torch.nn.{target.name}`"
    if k == "const":
        return _code(f"(constant) {target.name}") + ("\nπ = 3.14159…" if target.name == "pi" else "\ninfinity")
    if k == "training":
        return _code("training: bool") + "\ntrue while the module is in training mode"
    if k == "decorator":
        return _code(f"@{target.name}") + (f"\n{DECORATORS[target.name]}" if target.name in DECORATORS else "")
    return None


def _init_text(source: str, init: N.Init) -> str:
    parts = [_expr_text(source, x) for x in init.args] + [
        f"{k.name} = {_expr_text(source, k.value)}" for k in init.kwargs
    ]
    return f"{init.name}({', '.join(parts)})" if parts else init.name


def hover_at(ls: LayerServer, uri: str, position: T.Position) -> T.Hover | None:
    """The hover for the cursor at `position`, from the last analysis that parsed."""
    a = ls.usable(uri)
    if a is None:
        return None
    line, col = from_position(ls.workspace.get_text_document(uri).source, position, ls.codec())
    hit = ref_at(a, line, col)
    if hit is None:
        return None
    ref, layer = hit
    target = resolve(a, ref, layer)
    if target is None:
        return None
    text = hover_markdown(a, target)
    if not text:
        return None
    return T.Hover(
        contents=T.MarkupContent(kind=T.MarkupKind.Markdown, value=text), range=to_range(ref.span, a.text, ls.codec())
    )
