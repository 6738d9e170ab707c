"""The IR: plain dataclasses for layers, members, statements and expressions.

The parser builds these from the Lark tree; the checker annotates names with what they refer to
(`Name.ref`) and expressions with their kind (`Expr.kind`); the derivation and index passes rewrite
statement lists; the emitter turns them into Python.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from layerdsl.diagnostics import Span

NOWHERE = Span(0, 0, 0, 0)  # the span of a node the compiler made (not from a spec)

# ---------------------------------------------------------------- expressions


@dataclass(eq=False)
class Expr:
    span: Span
    # Filled in by the checker: "tensor", "int", "float", "bool", "str", "none" or "list".
    kind: str = field(default="", init=False, repr=False, compare=False)


@dataclass(eq=False)
class Num(Expr):
    value: int | float
    text: str


@dataclass(eq=False)
class Str(Expr):
    value: str


@dataclass(eq=False)
class Bool(Expr):
    value: bool


@dataclass(eq=False)
class NoneLit(Expr):
    pass


@dataclass(eq=False)
class Name(Expr):
    id: str
    # Filled in by the checker: what the name refers to ("input", "local", "param", "buffer", "arg",
    # "let", "dim", "sub", "training", "const", "index").
    ref: str = field(default="", init=False, repr=False, compare=False)


@dataclass(eq=False)
class BinOp(Expr):
    op: str
    left: Expr
    right: Expr


@dataclass(eq=False)
class UnaryOp(Expr):
    op: str
    operand: Expr


@dataclass(eq=False)
class Compare(Expr):
    ops: list[str]
    operands: list[Expr]


@dataclass(eq=False)
class BoolOp(Expr):
    op: str  # "and" | "or"
    left: Expr
    right: Expr


@dataclass(eq=False)
class Not(Expr):
    operand: Expr


@dataclass(eq=False)
class Keyword:
    name: str
    value: Expr
    span: Span


@dataclass(eq=False)
class Call(Expr):
    func: str  # a built-in op, a sub's name, a layer's name or "nn.X"
    func_span: Span
    args: list[Expr]
    kwargs: list[Keyword]


@dataclass(eq=False)
class InPlace(Expr):
    """`target.method(args)`: an in-place update that only generated backwards use (never parsed)."""

    method: str  # "mul_", "sigmoid_", ...
    target: Expr
    args: list[Expr]


@dataclass(eq=False)
class Slice:
    span: Span
    lower: Expr | None
    upper: Expr | None
    step: Expr | None


@dataclass(eq=False)
class EllipsisItem:
    span: Span


SubscriptItem = Expr | Slice | EllipsisItem


@dataclass(eq=False)
class Subscript(Expr):
    value: Expr
    items: list[SubscriptItem]


@dataclass(eq=False)
class ListExpr(Expr):
    items: list[Expr]


@dataclass(eq=False)
class Indexed(Expr):
    """A tensor written with one index per axis inside an index statement: `x[b, i]`."""

    name: Name
    indices: list[Name]


@dataclass(eq=False)
class Reduce(Expr):
    """`sum|mean|amax|amin[i, j](body)` inside an index statement."""

    op: str
    indices: list[Name]
    body: Expr


# ---------------------------------------------------------------- statements


@dataclass(eq=False)
class Stmt:
    span: Span


@dataclass(eq=False)
class Assign(Stmt):
    target: str
    target_span: Span
    value: Expr


@dataclass(eq=False)
class IndexAssign(Stmt):
    target: str
    target_span: Span
    indices: list[Name]
    value: Expr


@dataclass(eq=False)
class Update(Stmt):
    target: str
    target_span: Span
    value: Expr


@dataclass(eq=False)
class If(Stmt):
    cond: Expr
    body: list[Stmt]
    orelse: list[Stmt]


@dataclass(eq=False)
class Return(Stmt):
    values: list[Expr]


@dataclass(eq=False)
class Grad(Stmt):
    target: str
    target_span: Span
    value: Expr  # NoneLit for `grad x = none`


# ---------------------------------------------------------------- layers


@dataclass(eq=False)
class Shape:
    span: Span
    dims: list[Expr | EllipsisItem]

    @property
    def has_ellipsis(self) -> bool:
        return any(isinstance(d, EllipsisItem) for d in self.dims)


@dataclass(eq=False)
class Arg:
    name: str
    span: Span
    type: str
    type_span: Span
    default: Expr | None


@dataclass(eq=False)
class Init:
    name: str
    span: Span
    args: list[Expr]
    kwargs: list[Keyword]


@dataclass(eq=False)
class Tensor:
    """A `param`, `buffer` or `transient buffer`."""

    kind: str  # "param" | "buffer"
    name: str
    span: Span
    dtype: str
    shape: Shape
    init: Init | None
    cond: Expr | None
    persistent: bool = True


@dataclass(eq=False)
class Sub:
    name: str
    span: Span
    call: Call


@dataclass(eq=False)
class Let:
    name: str
    span: Span
    value: Expr


@dataclass(eq=False)
class ExampleValue:
    name: str
    span: Span
    value: Expr  # a literal, or a Call to uniform/normal for an input


@dataclass(eq=False)
class Input:
    name: str
    span: Span
    dtype: str
    shape: Shape | None


@dataclass(eq=False)
class Forward:
    span: Span
    inputs: list[Input]
    outputs: list[Shape] | None
    body: list[Stmt]


@dataclass(eq=False)
class Backward:
    span: Span
    grads: list[tuple[str, Span]]
    body: list[Stmt]


@dataclass(eq=False)
class Decorator:
    name: str
    span: Span
    args: list[Expr]
    kwargs: list[Keyword]


@dataclass(eq=False)
class Layer:
    name: str
    span: Span
    path: str
    decorators: list[Decorator]
    args: list[Arg]
    docstring: str | None = None
    tensors: list[Tensor] = field(default_factory=list)
    subs: list[Sub] = field(default_factory=list)
    lets: list[Let] = field(default_factory=list)
    examples: list[ExampleValue] = field(default_factory=list)
    forward: Forward | None = None
    backward: Backward | None = None

    def decorator(self, name: str) -> Decorator | None:
        return next((d for d in self.decorators if d.name == name), None)

    @property
    def is_function(self) -> bool:
        return self.decorator("function") is not None

    def arg(self, name: str) -> Arg | None:
        return next((a for a in self.args if a.name == name), None)

    def tensor(self, name: str) -> Tensor | None:
        return next((t for t in self.tensors if t.name == name), None)

    @property
    def params(self) -> list[Tensor]:
        return [t for t in self.tensors if t.kind == "param"]

    @property
    def buffers(self) -> list[Tensor]:
        return [t for t in self.tensors if t.kind == "buffer"]


@dataclass(eq=False)
class SpecFile:
    path: str  # as shown in diagnostics and the generated header
    source: str
    layers: list[Layer]


def map_children(e, fn):
    """A shallow copy of expression `e` with `fn` applied to each direct sub-expression."""
    e = copy.copy(e)
    for attr in ("left", "right", "operand", "target"):
        if isinstance(getattr(e, attr, None), Expr):
            setattr(e, attr, fn(getattr(e, attr)))
    if isinstance(e, (Call, InPlace)):
        e.args = [fn(a) for a in e.args]
    if isinstance(e, Call):
        e.kwargs = [Keyword(k.name, fn(k.value), k.span) for k in e.kwargs]
    if isinstance(e, Compare):
        e.operands = [fn(o) for o in e.operands]
    if isinstance(e, ListExpr):
        e.items = [fn(i) for i in e.items]
    return e


def walk(node):
    """Yield `node` and every expression below it (statements are descended into too)."""
    yield node
    for child in children(node):
        yield from walk(child)


def children(node) -> list:
    match node:
        case BinOp(left=l, right=r) | BoolOp(left=l, right=r):
            return [l, r]
        case UnaryOp(operand=o) | Not(operand=o):
            return [o]
        case Compare(operands=ops):
            return list(ops)
        case Call(args=args, kwargs=kwargs):
            return list(args) + [k.value for k in kwargs]
        case InPlace(target=t, args=args):
            return [t, *args]
        case Subscript(value=v, items=items):
            out = [v]
            for it in items:
                if isinstance(it, Slice):
                    out += [e for e in (it.lower, it.upper, it.step) if e is not None]
                elif isinstance(it, Expr):
                    out.append(it)
            return out
        case ListExpr(items=items):
            return list(items)
        case Indexed(name=n, indices=idx):
            return [n, *idx]
        case Reduce(indices=idx, body=b):
            return [*idx, b]
        case Assign(value=v) | IndexAssign(value=v) | Update(value=v) | Grad(value=v):
            return [v]
        case If(cond=c, body=b, orelse=o):
            return [c, *b, *o]
        case Return(values=vs):
            return list(vs)
    return []
