"""The IR: plain dataclasses for layers, members, statements and expressions.

The parser builds these from the Lark tree; the checker annotates names with what they refer to
(`Name.ref`, a `Ref`) and expressions with their kind (`Expr.kind`, a `Kind`); the derivation and index
passes rewrite statement lists; the emitter turns them into Python. Every result a pass leaves on a
node is a field declared here. `visit` traverses these nodes generically, from their fields.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from layerdsl.diagnostics import Diagnostic, Span

NOWHERE = Span(0, 0, 0, 0)  # the span of a node the compiler made (not from a spec)


class _Word(str, enum.Enum):
    """An enum of words that compares, hashes and formats as its word (`Kind.INT == "int"`)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Kind(_Word):
    """What an expression's value is, as the checker infers it."""

    UNKNOWN = ""  # not inferred yet, or unknown after an error (no follow-on errors about it)
    TENSOR = "tensor"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    STR = "str"
    NONE = "none"
    LIST = "list"
    TUPLE = "tuple"  # a tuple input (`hx: ([B, H], [B, H])`): unpacked with `h, c = hx`
    SUB = "sub"  # the kind the checker gives a sub's name (it can only be called)
    OBJECT = "object"  # an `object` argument: an opaque Python value, only passed on to an operation
    SUBS = "subs"  # a list of subs (`sub layers = [Block(d) for i in range(n)]`): iterated by `for`
    LAYER = "layer"  # a layer-instance argument (`encoder_layer: TransformerEncoderLayer`): held or copied by a sub
    FN = "fn"  # a callable argument (`activation: fn | "relu"`): called on one tensor


class Ref(_Word):
    """What a name refers to, as the checker resolves it."""

    UNRESOLVED = ""  # not resolved yet
    UNKNOWN = "unknown"  # no declaration: reported
    INPUT = "input"
    LOCAL = "local"
    PARAM = "param"
    BUFFER = "buffer"
    ARG = "arg"
    LET = "let"
    DIM = "dim"
    SUB = "sub"
    SUB_MEMBER = "sub member"  # `linear.weight`: a param or buffer of a sub that is a spec layer
    TRAINING = "training"
    CONST = "const"
    INDEX = "index"


NUMBERS = (Kind.INT, Kind.FLOAT, Kind.BOOL)
MEMBERS = (Ref.PARAM, Ref.BUFFER)


class Node:
    """Base of every IR node: what `visit` descends into. A `Keyword` or a `Slice` is a part of its
    node (`visit` descends through it to its expressions); an `EllipsisItem` is a marker."""


# ---------------------------------------------------------------- expressions


@dataclass(eq=False)
class Expr(Node):
    span: Span
    # Filled in by the checker.
    kind: Kind = field(default=Kind.UNKNOWN, init=False, repr=False, compare=False)


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
    # Filled in by the checker.
    ref: Ref = field(default=Ref.UNRESOLVED, init=False, repr=False, compare=False)
    # An int let or local whose every definition is a count (never negative, inf nor nan): `semantics/evaluate.py`'s
    # `mark_counts`. Int arguments and dims are counts by their ref.
    count: bool = field(default=False, init=False, repr=False, compare=False)


@dataclass(eq=False)
class FamilyName(Name):
    """`weight_ih_l{k}`: the member of a family (params declared in a `for` over the layer's members) that
    the int `index` picks; `id` is the family's key, `weight_ih_l{}`."""

    prefix: str = ""
    index: Name | None = None
    suffix: str = ""

    @property
    def written(self) -> str:
        return f"{self.prefix}{{{self.index.id if self.index else ''}}}{self.suffix}"


def family_key(written: str) -> str:
    """`weight_ih_l{k}_reverse` -> `weight_ih_l{}_reverse`: what names a family whatever its index is called."""
    head, _, rest = written.partition("{")
    return f"{head}{{}}{rest.partition('}')[2]}" if rest else written


@dataclass(eq=False)
class IfExp(Expr):
    """`input_size if k == 0 else hidden_size`: only in a member's dims and a `let` (construction values)."""

    cond: Expr
    then: Expr
    orelse: Expr


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
    # An `align` view made by the index-notation lowering: the subscript items it is written with
    # (`e[:, None]`); None for every other call.
    items: list[SubscriptItem] | None = field(default=None, init=False, repr=False, compare=False)
    # A call of one of the layer's subs (set by the checker): a sub may be named like an operation
    # (`sub norm = LayerNorm(d)`), and then `norm(x)` calls the sub.
    sub: bool = field(default=False, init=False, repr=False, compare=False)
    # A chunk or split whose number of parts the shape check found from the static shapes (set by it): the
    # Function then need not check that torch's call gives as many parts as names.
    parts_proven: bool = field(default=False, init=False, repr=False, compare=False)


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
class TupleExpr(Expr):
    """`(h, c)`: tensors passed together to a sub's tuple input."""

    items: list[Expr]


@dataclass(eq=False)
class Rank(Expr):
    """`x.ndim`: the number of dims of a tensor, an int known at run time (`if x.ndim == 2 { ... }`)."""

    value: Name


@dataclass(eq=False)
class ListExpr(Expr):
    items: list[Expr]


@dataclass(eq=False)
class Spread(Expr):
    """`*out_features` in a list: an `ints` argument's ints, in place."""

    value: Name


@dataclass(eq=False)
class ListComp(Expr):
    """`[Block(d) for i in range(n)]`: only a sub's value (a list of layers, an nn.ModuleList)."""

    item: Expr
    var: Name
    iter: Expr


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
class Stmt(Node):
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
class Unpack(Stmt):
    """`h, c = hx`: a tuple input, or a call of a sub that returns several tensors, one name each."""

    targets: list[tuple[str, Span]]
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
class For(Stmt):
    """`for t in range(T) { ... }` (`range` with 1 to 3 int bounds) or `for layer in layers { ... }` (a list
    of subs): the loop variable is an int, or a sub that can only be called."""

    var: str
    var_span: Span
    iter: Expr
    body: list[Stmt]
    # the locals the body carries from step to step whose sizes forward reads as their first value's
    # (`autodiff.local_sizes`): a derived backward's forward checks that each step keeps their shape
    shapes_kept: tuple[str, ...] = ()


@dataclass(eq=False)
class Append(Stmt):
    """`outputs.append(h)`: a list local (`outputs = []`) grows by one tensor (stacked or cat-ed later)."""

    target: str
    target_span: Span
    value: Expr


@dataclass(eq=False)
class Require(Stmt):
    """`require B > 1 if training, "message"`: one integer comparison that must hold when `guard` does (always
    when it is None); the generated forward raises a ValueError naming the layer when it fails."""

    cond: Expr
    guard: Expr | None
    message: Str | None


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
class Shape(Node):
    span: Span
    dims: list[Expr | EllipsisItem]
    # `param weight: normalized_shape`: a member whose shape is an `ints` argument (then `dims` is empty).
    spread: Name | None = None

    @property
    def has_ellipsis(self) -> bool:
        return any(isinstance(d, EllipsisItem) for d in self.dims)


@dataclass(eq=False)
class Arg(Node):
    name: str
    span: Span
    type: str  # "int", "float", "bool", "str", "ints", each maybe with "?" (`float?`: may be none); "[int?]"
    type_span: Span
    default: Expr | None
    choices: tuple[str, ...] = ()  # `padding: int | "same" | "valid"`: the strings it may also be

    @property
    def maybe_none(self) -> bool:
        return self.type.endswith("?")

    @property
    def none_entries(self) -> bool:
        """`output_size: [int?]`: an `ints` whose entries may be none (torch's `(None, 7)`: keep that size)."""
        return self.type.startswith("[int?]")

    @property
    def base_type(self) -> str:
        """The type without its `?` and its length: `ints` for `ints[4]?` (and for `[int?]`)."""
        return "ints" if self.none_entries else self.type.removesuffix("?").split("[")[0]

    @property
    def length(self) -> int | None:
        """`ints[4]`: the number of ints (an int given is repeated to it); None without a length."""
        text = self.type.removesuffix("?")
        return int(text[text.index("[") + 1 : -1]) if "[" in text and not self.none_entries else None


@dataclass(eq=False)
class Init(Node):
    name: str
    span: Span
    args: list[Expr]
    kwargs: list[Keyword]


@dataclass(eq=False)
class Tensor(Node):
    """A `param`, `buffer` or `transient buffer`."""

    kind: Ref  # Ref.PARAM or Ref.BUFFER
    name: str
    span: Span
    dtype: str
    shape: Shape
    init: Init | None
    cond: Expr | None
    persistent: bool = True
    # A member of a family: declared in `for k in range(n) { param weight_l{k}: ... }` (`name` is the family's
    # key, `weight_l{}`; `written` as in the spec); one loop's members share one Repeat.
    repeat: Repeat | None = None
    written: str = ""

    @property
    def named_by_condition(self) -> bool:
        """`param bias: [n] = zeros if bias`, or `... if affine and bias`: the member takes the name of a
        `bool` argument that its condition requires (the condition, or one of its `and` terms)."""
        terms, found = [self.cond], False
        while terms:
            term = terms.pop()
            if isinstance(term, BoolOp) and term.op == "and":
                terms += [term.left, term.right]
            found = found or (isinstance(term, Name) and term.id == self.name)
        return found


@dataclass(eq=False)
class Sub(Node):
    name: str
    span: Span
    call: Call
    # `sub layers = [Block(d) for i in range(n)]`: the list's loop (`call` is its item); an nn.ModuleList.
    repeat: Repeat | None = None
    # `sub norm = norm` (the instance as given) or `copy(encoder_layer)` (a deep copy, `copied`): the
    # layer argument the sub holds. The checker then sets `call` to its layer with no arguments, which is
    # what the forward's calls of the sub are checked against.
    given: Name | None = None
    copied: bool = False


@dataclass(eq=False)
class Reinit(Node):
    """`init out_proj.bias = zeros`: reset_parameters re-initialises a member of a sub (a spec layer), as
    torch's MultiheadAttention zeroes `out_proj.bias` after its Linear drew it. `after` is the number of
    this layer's own params and buffers declared before it: the re-initialisation comes after their draws."""

    sub: str
    member: str
    span: Span
    init: Init | None
    after: int = 0
    sub_span: Span | None = None  # where `out_proj` and `bias` are written (the language server's names)
    member_span: Span | None = None


@dataclass(eq=False)
class Repeat(Node):
    """The `for i in range(n)` of a list of subs: the loop variable and its `range(...)` call."""

    var: Name
    iter: Call


@dataclass(eq=False)
class Redraw(Node):
    """`init parameters = xavier_uniform if ndim > 1`: at the end of __init__, every parameter of the layer
    and its subs (in `parameters()` order) whose number of dims passes `cond` is drawn again by `init`."""

    span: Span
    target: Name  # `parameters`, the one target there is
    init: Init | None
    cond: Expr | None


@dataclass(eq=False)
class Let(Node):
    name: str
    span: Span
    value: Expr


@dataclass(eq=False)
class ExampleValue(Node):
    name: str
    span: Span
    value: Expr  # a literal, or a Call to uniform/normal for an input; or a list of those (one per configuration)
    group: int = 0  # which `example(...)` line of the layer it is on (0: the first)


@dataclass(eq=False)
class Input(Node):
    name: str
    span: Span
    dtype: str
    shape: Shape | None
    # `mask: bool[B, T]? = none`: the input may be left out (None in Python); the checker proves it present
    # (`if mask != none { ... }`) before most uses.
    optional: bool = False
    # `hx: ([B, H], [B, H])`: a tuple of tensors (then `dtype` and `shape` are the first one's).
    parts: list[Input] | None = None
    # `targets: long[N, S] | long[L]`: tensors of different ranks, one of which is given (then `dtype` and
    # `shape` are the first one's); a dim first named in one binds nothing outside it.
    alternatives: list[Input] | None = None
    # `lengths: long[N] | ints`: a tuple of ints may be given instead, passed on to an operation parameter
    # that takes one (`Op.int_tuples`).
    takes_ints: bool = False
    # `need_weights: bool = true`: a flag, a plain bool rather than a tensor (then `shape` is None); its default.
    flag: Bool | None = None
    # `n: int`: a type an input cannot have, reported by the parser (its uses then get no follow-on errors).
    mistyped: bool = False


@dataclass(eq=False)
class Forward(Node):
    span: Span
    inputs: list[Input]
    outputs: list[Shape] | None
    body: list[Stmt]
    # `-> ([L, E], [L, S]?)`: the positions of the outputs that may be none (`return out, none`); without `->`,
    # the checker adds those that a `return` leaves none
    optional_outputs: set[int] = field(default_factory=set)


@dataclass(eq=False)
class Backward(Node):
    span: Span
    grads: list[tuple[str, Span]]
    body: list[Stmt]


@dataclass(eq=False)
class Decorator(Node):
    name: str
    span: Span
    args: list[Expr]
    kwargs: list[Keyword]


@dataclass(eq=False)
class Layer(Node):
    name: str
    span: Span
    path: str
    decorators: list[Decorator]
    args: list[Arg]
    docstring: str | None = None
    tensors: list[Tensor] = field(default_factory=list)
    subs: list[Sub] = field(default_factory=list)
    reinits: list[Reinit] = field(default_factory=list)
    lets: list[Let] = field(default_factory=list)
    redraws: list[Redraw] = field(default_factory=list)
    examples: list[ExampleValue] = field(default_factory=list)
    forward: Forward | None = None
    backward: Backward | None = None
    # Filled in by the checker: the symbolic dims its input shapes bind, in order of first appearance. A
    # field of `__init__` so that `dataclasses.replace` keeps them: a copy without them named a step like a dim.
    symbolic_dims: list[str] = field(default_factory=list, repr=False)

    def replaced(self, **changes) -> Layer:
        """A copy with `changes` (as `dataclasses.replace`), with its own list of symbolic dims."""
        out = replace(self, **changes)
        out.symbolic_dims = list(self.symbolic_dims)
        return out

    def with_body(self, body: list[Stmt], **changes) -> Layer:
        """A copy whose forward runs `body` (and with `changes`), its symbolic dims kept."""
        assert self.forward is not None
        return self.replaced(forward=replace(self.forward, body=body), **changes)

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
        return [t for t in self.tensors if t.kind == Ref.PARAM]

    @property
    def buffers(self) -> list[Tensor]:
        return [t for t in self.tensors if t.kind == Ref.BUFFER]


@dataclass(eq=False)
class SpecFile(Node):
    path: str  # as shown in diagnostics and the generated header
    source: str
    layers: list[Layer]
    # Filled in by the parser: problems that left a usable IR, reported with the checker's.
    problems: list[Diagnostic] = field(default_factory=list)
    # Filled in by the parser: layers lost to a syntax error (their uses get no follow-on errors).
    broken: set[str] = field(default_factory=set)
