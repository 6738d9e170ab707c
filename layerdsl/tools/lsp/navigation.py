"""Navigation: what is where in a layer (the occurrences of names, with their kind), what each means
(`resolve`: names through the checker's scoping, `semantics.scopes`), and go to definition."""

from __future__ import annotations

from dataclasses import dataclass

from lsprotocol import types as T
from pygls.uris import from_fs_path

from layerdsl.diagnostics import Span
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import Ref
from layerdsl.ir.visit import statements, walk
from layerdsl.language.ops import CALLABLE, Op
from layerdsl.language.tables import INITS
from layerdsl.semantics import scopes
from layerdsl.tools.lsp.documents import Analysis, LayerServer
from layerdsl.tools.lsp.positions import contains, from_position, span_size, to_range


@dataclass
class Occurrence:
    """A place in a layer's text that names something."""

    span: Span
    kind: str  # layer | arg | type | loop | repeat | tensor | sub | sub-ref | member | let | input | grad | example | init | name | call | kwarg | reduce | target | index | decorator
    name: str
    node: N.Node  # the declaration, or the node the name is part of


def layer_occurrences(layer: N.Layer) -> list[Occurrence]:
    """Every place in `layer` that names something, declarations and uses."""
    found: list[Occurrence] = [Occurrence(layer.span, "layer", layer.name, layer)]
    for dec in layer.decorators:
        at = dec.span
        found.append(Occurrence(Span(at.line, at.col, at.line, at.col + 1 + len(dec.name)), "decorator", dec.name, dec))
    for a in layer.args:
        found.append(Occurrence(a.span, "arg", a.name, a))
        _type_occurrence(a, found)
        if a.default is not None:
            _expr_occurrences(a.default, found)
    loops: set[int] = set()  # the member loops met (one loop declares several families)
    for t in layer.tensors:
        if t.repeat is not None and id(t.repeat) not in loops:
            loops.add(id(t.repeat))
            _repeat_occurrences(t.repeat, found)
        found.append(Occurrence(t.span, "tensor", t.name, t))
        _family_index_occurrence(t, found)
        _shape_occurrences(t.shape, found)
        if t.init is not None:
            _init_occurrences(t.init, found)
        if t.cond is not None:
            _expr_occurrences(t.cond, found)
    for sub in layer.subs:
        found.append(Occurrence(sub.span, "sub", sub.name, sub))
        _expr_occurrences(sub.call, found)
        if sub.repeat is not None:  # `sub blocks = [Block(d) for i in range(depth)]`
            _repeat_occurrences(sub.repeat, found)
    for reinit in layer.reinits:
        if reinit.sub_span is not None and reinit.member_span is not None:
            found.append(Occurrence(reinit.sub_span, "sub-ref", reinit.sub, reinit))
            found.append(Occurrence(reinit.member_span, "member", reinit.member, reinit))
        if reinit.init is not None:
            _init_occurrences(reinit.init, found)
    for redraw in layer.redraws:
        if redraw.init is not None:
            _init_occurrences(redraw.init, found)
        if redraw.cond is not None:
            _expr_occurrences(redraw.cond, found)
    for let in layer.lets:
        found.append(Occurrence(let.span, "let", let.name, let))
        _expr_occurrences(let.value, found)
    for ex in layer.examples:
        found.append(Occurrence(ex.span, "example", ex.name, ex))
        _expr_occurrences(ex.value, found)
    if layer.forward is not None:
        fwd = layer.forward
        for inp in fwd.inputs:
            found.append(Occurrence(inp.span, "input", inp.name, inp))
            for part in inp.parts or inp.alternatives or [inp]:  # a tuple input's shapes, or its alternatives
                if part.shape is not None:
                    _shape_occurrences(part.shape, found)
        for shape in fwd.outputs or []:
            _shape_occurrences(shape, found)
        _body_occurrences(fwd.body, found)
    if layer.backward is not None:
        for name, span in layer.backward.grads:
            found.append(Occurrence(span, "grad", name, layer.backward))
        _body_occurrences(layer.backward.body, found)
    return found


def _repeat_occurrences(repeat: N.Repeat, found: list[Occurrence]) -> None:
    """The `i in range(n)` of a member loop or of a list of subs: its variable's declaration, its bounds."""
    found.append(Occurrence(repeat.var.span, "repeat", repeat.var.id, repeat))
    _expr_occurrences(repeat.iter, found)


def _family_index_occurrence(t: N.Tensor, found: list[Occurrence]) -> None:
    """The `k` of `param w_l{k}`: a use of the member loop's variable inside the family's name."""
    opened, closed = t.written.find("{"), t.written.find("}")
    if opened < 0 or closed <= opened + 1 or t.span.line != t.span.end_line:
        return
    at = t.span
    span = Span(at.line, at.col + opened + 1, at.line, at.col + closed)
    found.append(Occurrence(span, "name", t.written[opened + 1 : closed], t))


def _type_occurrence(arg: N.Arg, found: list[Occurrence]) -> None:
    """An argument's type when it may name a layer (`encoder_layer: TransformerEncoderLayer?`)."""
    name = arg.type.rstrip("?")
    if name.isidentifier() and arg.type_span is not None:
        at = arg.type_span
        found.append(Occurrence(Span(at.line, at.col, at.line, at.col + len(name)), "type", name, arg))


def _init_occurrences(init: N.Init, found: list[Occurrence]) -> None:
    found.append(Occurrence(init.span, "init", init.name, init))
    for v in init.args:
        _expr_occurrences(v, found)
    for k in init.kwargs:
        found.append(Occurrence(k.span, "kwarg", k.name, init))
        _expr_occurrences(k.value, found)


def _shape_occurrences(shape: N.Shape, found: list[Occurrence]) -> None:
    if shape.spread is not None:  # `param weight: normalized_shape`
        _expr_occurrences(shape.spread, found)
    for d in shape.dims:
        if isinstance(d, N.Expr):
            _expr_occurrences(d, found)


def _body_occurrences(body: list[N.Stmt], found: list[Occurrence]) -> None:
    for stmt in statements(body):
        match stmt:
            case N.Assign() | N.Update() | N.Grad():
                found.append(Occurrence(stmt.target_span, "target", stmt.target, stmt))
                _expr_occurrences(stmt.value, found)
            case N.IndexAssign():
                found.append(Occurrence(stmt.target_span, "target", stmt.target, stmt))
                found += [Occurrence(i.span, "index", i.id, i) for i in stmt.indices]
                _expr_occurrences(stmt.value, found)
            case N.Unpack(targets=targets, value=value):
                found += [Occurrence(span, "target", name, stmt) for name, span in targets]
                _expr_occurrences(value, found)
            case N.Append():
                found.append(Occurrence(stmt.target_span, "target", stmt.target, stmt))
                _expr_occurrences(stmt.value, found)
            case N.For():
                found.append(Occurrence(stmt.var_span, "loop", stmt.var, stmt))
                _expr_occurrences(stmt.iter, found)
            case N.Require(cond=c, guard=g):
                _expr_occurrences(c, found)
                if g is not None:
                    _expr_occurrences(g, found)
            case N.If(cond=c):
                _expr_occurrences(c, found)
            case N.Return(values=vs):
                for v in vs:
                    _expr_occurrences(v, found)


def _expr_occurrences(expr: N.Expr, found: list[Occurrence]) -> None:
    for node in walk(expr):
        if isinstance(node, N.Name):
            found.append(Occurrence(node.span, "name", node.id, node))
        elif isinstance(node, N.Call):
            found.append(Occurrence(node.func_span, "call", node.func, node))
            found += [Occurrence(k.span, "kwarg", k.name, node) for k in node.kwargs]
        elif isinstance(node, N.Reduce):
            s = node.span
            found.append(Occurrence(Span(s.line, s.col, s.line, s.col + len(node.op)), "reduce", node.op, node))


def layer_at(a: Analysis, line: int) -> N.Layer | None:
    """The layer of the analysed document that holds `line` (the one above it, between layers)."""
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


def occurrence_at(a: Analysis, line: int, col: int) -> tuple[Occurrence, N.Layer] | None:
    """The occurrence under the cursor at `line`:`col`, with its layer."""
    layer = layer_at(a, line)
    if layer is None:
        return None
    hits = [o for o in layer_occurrences(layer) if contains(o.span, line, col)]
    if not hits:
        return None
    # a span under the cursor before one that just ends at it (the cursor after a word); then the innermost
    hits.sort(key=lambda o: ((o.span.end_line, o.span.end_col) == (line, col), span_size(o.span)))
    return hits[0], layer


# ---------------------------------------------------------------- what an occurrence means


@dataclass
class Target:
    """What an occurrence means: a declaration of `layer` (which may be another file's layer), an
    operation, an initialiser, ...; `span` is where it is declared (None: nowhere to go)."""

    kind: str  # arg | param | buffer | sub | let | input | local | dim | grad | index | layer | op | op-param | init | nn | const | training | reduce | decorator
    name: str
    layer: N.Layer
    node: N.Node | Op | None = None
    span: Span | None = None


def resolve(a: Analysis, occ: Occurrence, layer: N.Layer) -> Target | None:
    """What the occurrence `occ` of `layer` means."""
    node = occ.node
    match occ.kind:
        case "layer" | "arg" | "sub" | "let" | "input":
            return Target(occ.kind, occ.name, layer, node, occ.span)
        case "tensor" if isinstance(node, N.Tensor):
            return Target(node.kind, occ.name, layer, node, occ.span)
        case "grad":
            return Target("grad", occ.name, layer, node, occ.span)
        case "decorator" | "init" | "reduce":
            return Target(occ.kind, occ.name, layer, node)
        case "name" | "example" | "index":
            return resolve_name(layer, occ.name, occ.span)
        case "target":
            bound = resolve_name(layer, occ.name, occ.span)
            if bound is None and isinstance(node, (N.Assign, N.IndexAssign)):  # the first binding of a local
                return Target(Ref.LOCAL, occ.name, layer, node, node.target_span)
            if bound is None and isinstance(node, N.Unpack):
                return Target(Ref.LOCAL, occ.name, layer, node, occ.span)
            return bound
        case "loop" if isinstance(node, N.For):  # bound in its body only
            return Target(Ref.LOCAL, occ.name, layer, node, occ.span)
        case "repeat" if isinstance(node, N.Repeat):  # an int, as the checker binds a member loop's
            return Target(Ref.LET, occ.name, layer, node.var, occ.span)
        case "call" if isinstance(node, N.Call):
            return resolve_callee(a, layer, node)
        case "type":
            other = a.layers.get(occ.name)
            return Target("layer", occ.name, other, other, other.span) if other is not None else None
        case "kwarg":
            return _resolve_keyword(a, layer, occ.name, node)
        case "sub-ref" | "member" if isinstance(node, N.Reinit):
            return _resolve_member_ref(a, layer, node, occ.kind == "member")
    return None


def _resolve_member_ref(a: Analysis, layer: N.Layer, reinit: N.Reinit, member: bool) -> Target | None:
    """`init out_proj.bias = ...`: the sub `out_proj`, or the member `bias` of the sub's layer."""
    sub = next((s for s in layer.subs if s.name == reinit.sub), None)
    if sub is None:
        return None
    if not member:
        return Target("sub", sub.name, layer, sub, sub.span)
    other = a.layers.get(sub.call.func)
    tensor = other.tensor(reinit.member) if other is not None else None
    if other is None or tensor is None:
        return None
    return Target(tensor.kind, tensor.name, other, tensor, tensor.span)


def resolve_name(layer: N.Layer, name: str, at: Span) -> Target | None:
    """What `name` written at `at` refers to, by the checker's scoping rules."""
    binding = scopes.resolve(layer, name, at.line, at.col)
    if binding is not None:
        kind = "grad" if isinstance(binding.decl, N.Backward) else binding.ref
        return Target(kind, name, layer, binding.decl, binding.span)
    ref = scopes.scope_at(layer, at.line, at.col).lookup(name)
    if ref in (Ref.TRAINING, Ref.CONST):
        return Target(ref, name, layer)
    return None


def resolve_callee(a: Analysis, layer: N.Layer, call: N.Call) -> Target | None:
    """What `call` calls: a torch.nn layer, an operation, a sub or a layer (in the checker's order)."""
    func = call.func
    if func.startswith("nn."):
        return Target("nn", func[3:], layer)
    binding = scopes.resolve(layer, func, call.func_span.line, call.func_span.col)
    if binding is not None and binding.ref == Ref.SUB:  # a sub named like an operation hides it
        return Target("sub", func, layer, binding.decl, binding.span)
    if func in CALLABLE:
        return Target("op", func, layer, CALLABLE[func])
    other = a.layers.get(func)
    if other is not None:
        return Target("layer", func, other, other, other.span)
    return None


def _resolve_keyword(a: Analysis, layer: N.Layer, name: str, owner: N.Node) -> Target | None:
    """What the keyword `name` of an initialiser or a call names."""
    if isinstance(owner, N.Init):
        return Target("init", owner.name, layer, owner) if owner.name in INITS else None
    if not isinstance(owner, N.Call):
        return None
    callee = resolve_callee(a, layer, owner)
    if callee is not None and callee.kind == "layer":
        arg = callee.layer.arg(name)
        return Target("arg", arg.name, callee.layer, arg, arg.span) if arg is not None else callee
    if callee is not None and callee.kind == "op":
        return Target("op-param", name, layer, callee.node)
    return callee


def under_cursor(ls: LayerServer, uri: str, position: T.Position) -> tuple[Analysis, Occurrence, N.Layer] | None:
    """The document's current analysis and the occurrence at the client's `position`, with its layer."""
    a = ls.usable(uri)
    if a is None:
        return None
    line, col = from_position(ls.workspace.get_text_document(uri).source, position, ls.codec())
    hit = occurrence_at(a, line, col)
    return None if hit is None else (a, *hit)


def definition_at(ls: LayerServer, uri: str, position: T.Position) -> T.Location | list[T.Location] | None:
    """Where what the cursor is on is declared, in this document or another spec file; every layer an
    ambiguous layer name may mean (the checker reports the name), for the user to pick the one meant."""
    found = under_cursor(ls, uri, position)
    if found is None:
        return None
    a, occ, layer = found
    target = resolve(a, occ, layer)
    if target is None and occ.kind == "call" and a.workset is not None and a.workset.index is not None:
        return [location(ls, a, other.path, other.span) for other in a.workset.index.ambiguous(occ.name)] or None
    if target is None or target.span is None:
        return None
    return location(ls, a, target.layer.path, target.span)


def location(ls: LayerServer, a: Analysis, path: str, span: Span) -> T.Location:
    """The LSP location of `span` in the spec file at `path` (the analysed document's, when it is)."""
    if path == a.path or not path:
        return T.Location(uri=a.uri, range=to_range(span, a.text, ls.codec()))
    source = a.sources.get(path) or ls.disk_text(path) or ""
    return T.Location(uri=from_fs_path(path), range=to_range(span, source, ls.codec()))
