"""A sub that holds or copies a layer argument (`sub norm = norm`, `sub layers = [copy(encoder_layer) for i
in range(n)]`), inlined under `@function`: its layer is known (the argument's type), its arguments are
the caller's. They become run-time values of the Function: each argument the sub's forward reads is an
argument of the inlined layer (`layers_d`, `norm_eps`), which the module reads back from the instance it
holds (every copy has the same arguments, so the first: `self.layers[0].d`) and passes to `apply`, as it
passes its own arguments. So an `if` on one is a branch on a run-time configuration value, a member's
shape is over them, and an optional member is given when the instance has it (`self.layers[0].b1 is not
None`). Whether an optional layer argument is given at all (`if norm != none`) is one more such value.

Members built under one condition (`bias` and, of a held LayerNorm, `elementwise_affine and bias` with
`elementwise_affine` true) share one such value, read from the first of them: built together by
construction, they are one combination, not several, where a derived backward through the loop over copies
is planned once per combination of built members (`loop_members`).

Read back rather than kept by the outer module at construction: the plain module's forward calls the
instances, which read their own attributes when called, so the Function sees what the plain forward would
(an attribute changed after construction included), and the outer module keeps nothing of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerdsl.diagnostics import Span
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import NOWHERE
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import clone, map_children

KINDS = {
    "int": N.Kind.INT,
    "float": N.Kind.FLOAT,
    "bool": N.Kind.BOOL,
    "str": N.Kind.STR,
    "ints": N.Kind.LIST,
    "fn": N.Kind.FN,
    "object": N.Kind.OBJECT,
}


@dataclass(frozen=True)
class HeldArgument:
    """A run-time value the module reads from a sub holding a layer argument: its argument `attribute`,
    or whether its member `attribute` is built (`member`), or whether the sub is given at all (None); read
    from item 0 of a list of copies when `first`."""

    holder: str  # the sub: `self.<holder>`
    given: str  # the layer argument it holds
    attribute: str | None
    member: bool = False
    first: bool = False  # a list of copies (`self.layers[0].d`; None for an empty list)
    optional: bool = False  # the layer argument may be none (`self.norm.eps if self.norm is not None ...`)
    cond: N.Expr | None = None  # a member's: when the held layer builds it, over its arguments


def constructed(held: HeldArgument, given: N.Expr | None, arguments: dict[str, N.Expr]) -> N.Expr:
    """The value `held` stands for when the layer argument is given, where the sub is built, as `given`:
    none (`arguments` empty), or a construction of the layer whose arguments are `arguments` (over the
    building layer's names)."""
    span = given.span if given is not None else NOWHERE
    if given is None or isinstance(given, N.NoneLit):
        return _literal(N.NoneLit(span), N.Kind.NONE) if held.attribute and not held.member else _false(span)
    if held.attribute is None:
        return _literal(N.Bool(span, True), N.Kind.BOOL)
    if held.member:
        return over_values(held.cond, arguments) if held.cond is not None else _literal(N.Bool(span, True), N.Kind.BOOL)
    return clone(arguments[held.attribute])


def _false(span: Span) -> N.Expr:
    return _literal(N.Bool(span, False), N.Kind.BOOL)


def _literal(e: N.Expr, kind: N.Kind) -> N.Expr:
    e.kind = kind
    return e


def held_argument(name: str, arg: N.Arg, span: Span) -> tuple[N.Arg, N.Name]:
    """The inlined layer's argument `name` standing for the held layer's `arg`, and a read of it."""
    kind = N.Kind.UNKNOWN if arg.choices and arg.base_type != "fn" else KINDS.get(arg.base_type, N.Kind.UNKNOWN)
    declared = N.Arg(name, span, arg.type, span, None, arg.choices)
    read = N.Name(span, name)
    read.ref, read.kind = N.Ref.ARG, kind
    return declared, read


def given_flag(name: str, span: Span) -> tuple[N.Arg, N.Name]:
    """The inlined layer's bool argument `name`: whether an optional layer argument, or a member of a
    held layer, is given."""
    declared = N.Arg(name, span, "bool", span, None)
    read = N.Name(span, name)
    read.ref, read.kind = N.Ref.ARG, N.Kind.BOOL
    return declared, read


def over_values(e: N.Expr, values: dict[str, N.Expr]) -> N.Expr:
    """`e` (over the held layer's arguments and lets) over the values standing for them."""
    if isinstance(e, N.Name) and e.ref in (N.Ref.ARG, N.Ref.LET) and e.id in values:
        return clone(values[e.id])
    return map_children(e, lambda c: over_values(c, values) if isinstance(c, N.Expr) else c)


def none_test(cond: N.Expr) -> tuple[str, bool] | None:
    """`norm != none` / `norm == none` of a layer argument: its name and whether the test is "given"."""
    if not (isinstance(cond, N.Compare) and len(cond.ops) == 1 and cond.ops[0] in ("!=", "==")):
        return None
    left, right = cond.operands
    if isinstance(left, N.NoneLit):
        left, right = right, left
    if isinstance(left, N.Name) and left.kind in (N.Kind.LAYER, N.Kind.SUB) and isinstance(right, N.NoneLit):
        return left.id, cond.ops[0] == "!="
    return None


def built_together(cond: N.Expr | None) -> str:
    """The key of a held layer's member's condition (over its arguments): members of one key are built
    together. `true and bias` is `bias` (a held sub's condition given `elementwise_affine = true`)."""
    if cond is None:
        return ""
    terms, kept = [cond], []
    while terms:
        term = terms.pop()
        if isinstance(term, N.BoolOp) and term.op == "and":
            terms += [term.right, term.left]
        elif not (isinstance(term, N.Bool) and term.value):
            kept.append(spec_text(term))
    return " and ".join(kept)
