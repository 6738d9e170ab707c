"""Optional members read in a forward that keeps a loop: the loop specialised on which members are built.

Whether a member is built is a construction-time fact, the same for every copy of a copied layer, every
member of a family and every step, so a forward with loops is planned once per combination of built and
not-built members (`loops.member_choice` takes one member at a time: a branch of the Function on
`b is not None`, tested at the top of its forward). On the side where a member is not built:

- a side of an `if` that reads it other than as an operand that may be none cannot run: the checker
  proved each such read to be on a side whose condition builds the member (a copied layer's
  `if kdim == embed_dim { w_q, w_k, w_v = chunk(in_proj_weight, 3) }`), so the `if` is its other side;
- a member without which no way through the `if`s left can run (each reads it other than as an operand
  that may be none) is built there: required on that side, not one more combination;
- the reads left as operands that may be none are dropped (`a + b` is `a`, a norm's `weight` is none).

The combinations are counted before any is planned, and refused past MAX_MEMBER_COMBINATIONS.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

from layerdsl.autodiff.tape import NotDerivable
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import map_children, walk
from layerdsl.language.ops import OPS

# combinations of built and not-built members a forward with loops is planned for, each a loop Function
# of its own (TransformerEncoder: its copies' biases, a fused or a split projection, its norm's weight and
# bias make 24), as many as the sides of `if`s a Function takes (`loops.MAX_BRANCH_PLANS`)
MAX_MEMBER_COMBINATIONS = 32
HINT = "drop @function (autograd derives the loop)"


def without_members(body: list[N.Stmt], absent: set[str]) -> list[N.Stmt]:
    """`body` as it runs when the members `absent` are not built: the sides of `if`s that read one other
    than as an operand that may be none left out, and those operands dropped. NotDerivable at a read that
    no `if` leaves out."""
    kept = _runnable(body, absent)
    if kept is None:
        raise _unbuilt(_guarded(body, absent)[0])
    left: list[N.Expr] = []  # `b - a`: `-a` when b is not built, which a derived backward does not write
    out = [_dropped(s, absent, left, left) for s in kept]
    if left:
        raise _unskipped(left[0])
    return out


Chooser = Callable[[N.Layer, set[str]], "tuple[N.Expr, N.Layer, N.Layer] | None"]


def members_to_choose(layer: N.Layer, optional: set[str], choose: Chooser) -> tuple[N.Layer, set[str]]:
    """`layer` with the optional members (of `optional`) that its forward cannot run without required (each
    way through its `if`s reads them other than as an operand that may be none), and the optional names left.
    NotDerivable when planning it for each combination of built and not-built members that `choose`
    (`loops.member_choice`) splits it into would make more than MAX_MEMBER_COMBINATIONS."""
    layer, optional = _proven_built(layer, optional)
    split: list[N.Expr] = []
    if _combinations(layer, optional, choose, MAX_MEMBER_COMBINATIONS, split) > MAX_MEMBER_COMBINATIONS:
        assert layer.forward is not None
        names = [spec_text(n) for n in split]
        read = next(n for s in layer.forward.body for n in walk(s) if isinstance(n, N.Name) and n.id == names[-1])
        raise NotDerivable(
            read.span,
            "a derived backward through a loop is planned once per combination of built and not-built optional"
            f" members: these make more than {MAX_MEMBER_COMBINATIONS} ({', '.join(dict.fromkeys(names))};"
            " not derived yet)",
            f"build fewer members conditionally, or {HINT}",
        )
    return layer, optional


def read_outside_ifs(body: list[N.Stmt]) -> set[str]:
    """The names `body` reads outside its `if`s (in its loops' bodies too)."""
    found: set[str] = set()
    for s in body:
        if isinstance(s, N.For):
            found |= {n.id for n in walk(s.iter) if isinstance(n, N.Name)} | read_outside_ifs(s.body)
        elif not isinstance(s, N.If):
            found |= {n.id for n in walk(s) if isinstance(n, N.Name)}
    return found


def _proven_built(layer: N.Layer, optional: set[str]) -> tuple[N.Layer, set[str]]:
    """`members_to_choose`'s first part: the members no way through the `if`s runs without, required."""
    assert layer.forward is not None
    members = {t.name for t in layer.tensors if t.cond is not None and t.name in optional}
    proven = {m for m in members if _runnable(layer.forward.body, {m}) is None}  # no side runs without it
    if not proven:
        return layer, optional
    tensors = [dataclasses.replace(t, cond=None) if t.name in proven else t for t in layer.tensors]
    return layer.replaced(tensors=tensors), optional - proven


def _combinations(layer: N.Layer, optional: set[str], choose: Chooser, limit: int, split: list[N.Expr]) -> int:
    """How many combinations planning `layer` makes, counted up to just past `limit`; `split`: the members
    split on, in order (the last one passes the limit)."""
    choice = choose(layer, optional)
    if choice is None:
        return 1
    cond, built, absent = choice
    split.append(next(n for n in walk(cond) if isinstance(n, N.Name)))
    count = 0
    for side in (built, absent):
        required = {t.name for t in side.tensors if t.cond is None}
        side, left = _proven_built(side, optional - required)
        count += _combinations(side, left, choose, limit - count, split)
        if count > limit:
            break
    return count


def _runnable(body: list[N.Stmt], absent: set[str]) -> list[N.Stmt] | None:
    """`body` with each `if` whose side reads an absent member (other than as an operand that may be none)
    as its other side; None when a read is left outside every `if`."""
    out: list[N.Stmt] = []
    for s in body:
        if isinstance(s, N.If) and not _guarded([s.cond], absent):
            then, orelse = _runnable(s.body, absent), _runnable(s.orelse, absent)
            if then is None and orelse is None:
                return None
            if then is None:
                out += orelse or []
            elif orelse is None:
                out += then
            else:
                out.append(dataclasses.replace(s, body=then, orelse=orelse))
        elif isinstance(s, N.For):
            steps = _runnable(s.body, absent)
            if steps is None:
                return None
            out.append(dataclasses.replace(s, body=steps))
        elif _guarded([s], absent):
            return None
        else:
            out.append(s)
    return out


def _guarded(nodes: list, absent: set[str]) -> list[N.Expr]:
    """The reads of absent members in `nodes` other than as operands that may be none, in order."""
    found: list[N.Expr] = []
    for node in nodes:
        _dropped(node, absent, found, [])
    return found


def _dropped(node, absent: set[str], found: list[N.Expr], on_the_left: list[N.Expr] | None = None):
    """`node` with the absent members' reads as operands that may be none dropped: `a + b`, `a - b`,
    `a * b`, `a / b` are `a`, `b + a` and `b * a` are `a`, an op's parameter that takes none is none.
    `b - a` and `b / a` (`-a` and `1 / a` when b is not built) are left, the read appended to `on_the_left`;
    every other read is appended to `found` (and left)."""

    def absent_name(e) -> bool:
        e = e.value if isinstance(e, N.Subscript) else e
        return isinstance(e, N.Name) and e.id in absent

    def go(e):
        if isinstance(e, N.BinOp) and e.op in ("+", "-", "*", "/") and absent_name(e.right):
            return go(e.left)
        if isinstance(e, N.BinOp) and e.op in ("+", "*") and absent_name(e.left):
            return go(e.right)
        if isinstance(e, N.BinOp) and e.op in ("-", "/") and absent_name(e.left) and on_the_left is not None:
            on_the_left.append(e.left)
            e = copy.copy(e)
            e.right = go(e.right)
            return e
        if isinstance(e, N.Call) and not e.sub and e.func in OPS:  # an operand that may be none (a norm's weight)
            params = OPS[e.func].params
            takes_none = {p.name for p in params if p.default == "none"}
            e = copy.copy(e)
            e.args = [
                _none(a) if absent_name(a) and k < len(params) and params[k].name in takes_none else a
                for k, a in enumerate(e.args)
            ]
            e.kwargs = [_none_keyword(kw) if absent_name(kw.value) and kw.name in takes_none else kw for kw in e.kwargs]
        if absent_name(e):
            found.append(e)
            return e
        return map_children(e, go) if isinstance(e, (N.Expr, N.Stmt)) else e

    return go(node)


def _member(read: N.Expr) -> str:
    return spec_text(read.value if isinstance(read, N.Subscript) else read)  # a family's `b_l[k]`: b_l


def _unbuilt(read: N.Expr) -> NotDerivable:
    member = _member(read)
    return NotDerivable(
        read.span,
        f"a derived backward through a loop reads the optional member '{member}' where no `if` proves it built,"
        " other than as an operand that may be none (`a + b` is `a` when b is not built)",
        f"read it inside the `if` that builds it, or {HINT}",
    )


def _unskipped(read: N.Expr) -> NotDerivable:
    member = _member(read)
    return NotDerivable(
        read.span,
        f"a derived backward through a loop reads the optional member '{member}' as the right operand of"
        " - and / only (`a - b` is `a` when b is not built; `b - a` is not skipped)",
        f"write `-(a - {member})`, or {HINT}",
    )


def _none_keyword(kw: N.Keyword) -> N.Keyword:
    kw = copy.copy(kw)
    kw.value = _none(kw.value)
    return kw


def _none(at: N.Expr) -> N.NoneLit:
    none = N.NoneLit(at.span)
    none.kind = N.Kind.NONE
    return none
