"""Navigation: what is where in a layer (references with their kind and context), what a name means
there (`resolve_name`, `resolve`), and go to definition."""

from __future__ import annotations

from dataclasses import dataclass

from lsprotocol import types as T
from pygls.uris import from_fs_path

from layerdsl.diagnostics import Span
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk
from layerdsl.language.ops import CALLABLE
from layerdsl.language.tables import CONSTANTS, INITS
from layerdsl.tools.lsp.documents import Analysis, LayerServer
from layerdsl.tools.lsp.positions import contains, from_position, span_size, to_range


@dataclass
class Ref:
    span: Span
    kind: str  # layer | arg | tensor | sub | let | input | grad | example | init | name | call | kwarg | reduce | target | decorator
    name: str
    node: object
    ctx: str = ""  # construction | forward | backward | shape


def layer_refs(layer: N.Layer) -> list[Ref]:
    refs: list[Ref] = [Ref(layer.span, "layer", layer.name, layer)]
    for d in layer.decorators:
        refs.append(
            Ref(Span(d.span.line, d.span.col, d.span.line, d.span.col + 1 + len(d.name)), "decorator", d.name, d)
        )
    for a in layer.args:
        refs.append(Ref(a.span, "arg", a.name, a))
        if a.default is not None:
            _expr_refs(a.default, "construction", refs)
    for t in layer.tensors:
        refs.append(Ref(t.span, "tensor", t.name, t))
        for d in t.shape.dims:
            if isinstance(d, N.Expr):
                _expr_refs(d, "construction", refs)
        if t.init is not None:
            refs.append(Ref(t.init.span, "init", t.init.name, t.init))
            for v in t.init.args:
                _expr_refs(v, "construction", refs)
            for k in t.init.kwargs:
                refs.append(Ref(k.span, "kwarg", k.name, t.init, "construction"))
                _expr_refs(k.value, "construction", refs)
        if t.cond is not None:
            _expr_refs(t.cond, "construction", refs)
    for s in layer.subs:
        refs.append(Ref(s.span, "sub", s.name, s))
        _expr_refs(s.call, "construction", refs)
    for let in layer.lets:
        refs.append(Ref(let.span, "let", let.name, let))
        _expr_refs(let.value, "construction", refs)
    for ex in layer.examples:
        refs.append(Ref(ex.span, "example", ex.name, ex))
        _expr_refs(ex.value, "example", refs)
    if layer.forward is not None:
        fwd = layer.forward
        for inp in fwd.inputs:
            refs.append(Ref(inp.span, "input", inp.name, inp))
            if inp.shape is not None:
                for d in inp.shape.dims:
                    if isinstance(d, N.Expr):
                        _expr_refs(d, "shape", refs)
        for shape in fwd.outputs or []:
            for d in shape.dims:
                if isinstance(d, N.Expr):
                    _expr_refs(d, "shape", refs)
        _body_refs(fwd.body, "forward", refs)
    if layer.backward is not None:
        for name, span in layer.backward.grads:
            refs.append(Ref(span, "grad", name, layer.backward))
        _body_refs(layer.backward.body, "backward", refs)
    return refs


def _body_refs(body: list[N.Stmt], ctx: str, refs: list[Ref]) -> None:
    for stmt in statements(body):
        if isinstance(stmt, (N.Assign, N.IndexAssign, N.Update, N.Grad)):
            refs.append(Ref(stmt.target_span, "target", stmt.target, stmt, ctx))
        if isinstance(stmt, N.IndexAssign):
            for i in stmt.indices:
                refs.append(Ref(i.span, "index", i.id, stmt, ctx))
        match stmt:
            case N.Assign(value=v) | N.IndexAssign(value=v) | N.Update(value=v) | N.Grad(value=v):
                _expr_refs(v, ctx, refs)
            case N.If(cond=c):
                _expr_refs(c, ctx, refs)
            case N.Return(values=vs):
                for v in vs:
                    _expr_refs(v, ctx, refs)


def statements(body):
    for stmt in body:
        yield stmt
        if isinstance(stmt, N.If):
            yield from statements(stmt.body)
            yield from statements(stmt.orelse)


def _expr_refs(expr, ctx: str, refs: list[Ref]) -> None:
    for node in walk(expr):
        if isinstance(node, N.Name):
            refs.append(Ref(node.span, "name", node.id, node, ctx))
        elif isinstance(node, N.Call):
            refs.append(Ref(node.func_span, "call", node.func, node, ctx))
            for k in node.kwargs:
                refs.append(Ref(k.span, "kwarg", k.name, node, ctx))
        elif isinstance(node, N.Reduce):
            s = node.span
            refs.append(Ref(Span(s.line, s.col, s.line, s.col + len(node.op)), "reduce", node.op, node, ctx))


def layer_at(a: Analysis, line: int) -> N.Layer | None:
    if a.spec is None:
        return None
    best = None
    for layer in a.spec.layers:
        ext = a.extents.get(id(layer))
        last = ext.end_line - 1 if ext is not None and ext.end_col == 1 else (ext.end_line if ext else 0)
        if ext is not None and ext.line <= line <= last:  # (an extent ends where the next line starts)
            return layer
        start = ext.line if ext else layer.span.line
        if start <= line:
            best = layer
    return best


def ref_at(a: Analysis, line: int, col: int) -> tuple[Ref, N.Layer] | None:
    layer = layer_at(a, line)
    if layer is None:
        return None
    hits = [r for r in layer_refs(layer) if contains(r.span, line, col)]
    if not hits:
        return None
    # a span under the cursor before one that just ends at it (the cursor after a word); then the innermost
    hits.sort(key=lambda r: ((r.span.end_line, r.span.end_col) == (line, col), span_size(r.span)))
    return hits[0], layer


# ---------------------------------------------------------------- resolving names


@dataclass
class Target:
    kind: str  # arg | param | buffer | sub | let | input | local | dim | grad | index | layer | op | init | nn | const | training | reduce | decorator | example
    name: str
    layer: N.Layer | None = None
    node: object = None
    span: Span | None = None  # where it is declared
    path: str | None = None  # the file of that declaration (None: this document)


def _first_binding(body: list[N.Stmt], name: str) -> N.Stmt | None:
    for stmt in statements(body):
        if isinstance(stmt, (N.Assign, N.IndexAssign)) and stmt.target == name:
            return stmt
    return None


def _dim_decl(layer: N.Layer, name: str) -> N.Name | None:
    if layer.forward is None:
        return None
    for inp in layer.forward.inputs:
        if inp.shape is None:
            continue
        for d in inp.shape.dims:
            if isinstance(d, N.Name) and d.id == name:
                return d
    return None


def resolve_name(layer: N.Layer, name: str, ctx: str, ref: str = "", at: N.Stmt | None = None) -> Target | None:
    """What `name` means at a place of kind `ctx` in `layer` (`ref` is the checker's answer when it ran)."""
    arg = layer.arg(name)
    tensor = layer.tensor(name)
    let = next((x for x in layer.lets if x.name == name), None)
    sub = next((x for x in layer.subs if x.name == name), None)
    fwd, bwd = layer.forward, layer.backward
    inp = next((i for i in fwd.inputs if i.name == name), None) if fwd else None
    candidates = {
        "arg": (lambda: Target("arg", name, layer, arg, arg.span)) if arg else None,
        "param": (lambda: Target(tensor.kind, name, layer, tensor, tensor.span)) if tensor else None,
        "buffer": (lambda: Target(tensor.kind, name, layer, tensor, tensor.span)) if tensor else None,
        "let": (lambda: Target("let", name, layer, let, let.span)) if let else None,
        "sub": (lambda: Target("sub", name, layer, sub, sub.span)) if sub else None,
        "input": (lambda: Target("input", name, layer, inp, inp.span)) if inp else None,
    }
    if ref in candidates and candidates[ref] is not None:
        return candidates[ref]()
    if ctx in ("construction", "example"):
        order = ["arg", "let"]
    else:
        local_stmt = None
        if fwd is not None:
            local_stmt = _first_binding(fwd.body, name)
        if local_stmt is None and bwd is not None and ctx == "backward":
            local_stmt = _first_binding(bwd.body, name)
        if ref in ("", "local") and local_stmt is not None:
            return Target("local", name, layer, local_stmt, local_stmt.target_span)
        if bwd is not None and ctx == "backward":
            for g, span in bwd.grads:
                if g == name:
                    return Target("grad", name, layer, bwd, span)
        if ref in ("", "dim") or ctx == "shape":
            d = _dim_decl(layer, name)
            if d is not None and not (arg or tensor or let or inp):
                return Target("dim", name, layer, d, d.span)
        order = ["input", "param", "let", "sub", "arg"]
    for kind in order:
        if candidates.get(kind) is not None:
            return candidates[kind]()
    if ctx == "example":
        d = _dim_decl(layer, name)
        if d is not None:
            return Target("dim", name, layer, d, d.span)
        if inp is not None:
            return Target("input", name, layer, inp, inp.span)
    if name == "training":
        return Target("training", name, layer)
    if name in CONSTANTS:
        return Target("const", name, layer)
    return None


def resolve(a: Analysis, ref: Ref, layer: N.Layer) -> Target | None:
    k = ref.kind
    if k == "layer":
        return Target("layer", ref.name, layer, layer, layer.span, layer.path)
    if k in ("arg", "sub", "let", "input"):
        return Target(k, ref.name, layer, ref.node, ref.span)
    if k == "tensor":
        return Target(ref.node.kind, ref.name, layer, ref.node, ref.span)
    if k == "grad":
        return Target("grad", ref.name, layer, ref.node, ref.span)
    if k == "decorator":
        return Target("decorator", ref.name, layer, ref.node)
    if k == "init":
        return Target("init", ref.name, layer, ref.node)
    if k == "reduce":
        return Target("reduce", ref.name, layer, ref.node)
    if k == "example":
        t = resolve_name(layer, ref.name, "example")
        return t
    if k == "index":
        stmt = ref.node
        first = next((i for i in stmt.indices if i.id == ref.name), None)
        return Target("index", ref.name, layer, stmt, first.span if first else ref.span)
    if k == "target":
        stmt = ref.node
        if isinstance(stmt, (N.Assign, N.IndexAssign)):
            bound = resolve_name(layer, ref.name, ref.ctx, "local")
            return bound or Target("local", ref.name, layer, stmt, stmt.target_span)
        return resolve_name(layer, ref.name, ref.ctx, "buffer" if isinstance(stmt, N.Update) else "")
    if k == "name":
        node: N.Name = ref.node
        if ref.ctx == "forward" or ref.ctx == "backward":
            if node.ref == "index":
                stmt = next(
                    (
                        s
                        for s in statements(_body(layer, ref.ctx))
                        if isinstance(s, N.IndexAssign) and within(node.span, s.span)
                    ),
                    None,
                )
                if stmt is not None:
                    first = next((i for i in stmt.indices if i.id == node.id), None)
                    return Target("index", node.id, layer, stmt, first.span if first else node.span)
        return resolve_name(layer, node.id, ref.ctx, node.ref)
    if k == "call":
        return resolve_callee(a, layer, ref.name, ref.ctx)
    if k == "kwarg":
        call = ref.node
        if isinstance(call, N.Init):
            spec = INITS.get(call.name)
            return Target("init", call.name, layer, call) if spec else None
        callee = resolve_callee(a, layer, call.func, ref.ctx)
        if callee is None:
            return None
        if callee.kind == "layer":
            target_layer: N.Layer = callee.node
            arg = target_layer.arg(ref.name)
            if arg is not None:
                return Target("arg", arg.name, target_layer, arg, arg.span, target_layer.path)
            return callee
        if callee.kind == "op":
            return Target("op-param", ref.name, layer, callee.node)
        return callee
    return None


def _body(layer: N.Layer, ctx: str) -> list[N.Stmt]:
    if ctx == "backward" and layer.backward is not None:
        return layer.backward.body
    return layer.forward.body if layer.forward is not None else []


def within(inner: Span, outer: Span) -> bool:
    return (outer.line, outer.col) <= (inner.line, inner.col) and (inner.end_line, inner.end_col) <= (
        outer.end_line,
        outer.end_col,
    )


def resolve_callee(a: Analysis, layer: N.Layer, func: str, ctx: str) -> Target | None:
    if func.startswith("nn."):
        return Target("nn", func[3:], layer)
    sub = next((s for s in layer.subs if s.name == func), None)
    if sub is not None and ctx in ("forward", "backward"):
        return Target("sub", func, layer, sub, sub.span)
    if func in CALLABLE:
        return Target("op", func, layer, CALLABLE[func])
    other = a.layers.get(func)
    if other is not None:
        return Target("layer", func, other, other, other.span, other.path)
    return None


def definition_at(ls: LayerServer, uri: str, position: T.Position) -> T.Location | None:
    """Where what the cursor is on is declared, in this document or another spec file."""
    a = ls.usable(uri)
    if a is None:
        return None
    line, col = from_position(ls.workspace.get_text_document(uri).source, position, ls.codec())
    hit = ref_at(a, line, col)
    if hit is None:
        return None
    ref, layer = hit
    target = resolve(a, ref, layer)
    if target is None or target.span is None:
        return None
    path = target.path or (target.layer.path if target.layer is not None else a.path)
    if path == a.path or not path:
        return T.Location(uri=a.uri, range=to_range(target.span, a.text, ls.codec()))
    source = a.sources.get(path) or ls.disk_text(path) or ""
    return T.Location(uri=from_fs_path(path), range=to_range(target.span, source, ls.codec()))
