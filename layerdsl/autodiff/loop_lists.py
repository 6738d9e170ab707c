"""Lists a loop of a run-time count appends to, in the forms `loops.Planner` derives once rewritten here.

- `x[t:t + 1]` in the loop's body, of a value from outside it whose dim there is the loop's count (`x: [T,
  B, d]` in `for t in range(T)`), is `unsqueeze(x[t], 0)`: the same item, of size 1 at that dim at every
  step, which the planner then knows (a slice bounded by the loop's variable has a size it cannot prove), so
  what each step appends to a list is stacked step by step (`unit_slices`).
- `L[i]` of a list after the loop appending to it, an int `i` (`outs[-1]`, `outs[0]`), is `stack(L, dim =
  0)[i]`, when every item of the list has one known shape: a join as `stack(L)` is, whose gradient is cut
  back into the steps' items (`item_read`). Where the list may hold too few items for `i` (none appended
  before the loop for `outs[0]`), the join records the read (`ItemRead`, `mark_item_read`): the Function
  checks the list's length before the stack, raising the plain module's IndexError (`codegen.function_checks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from layerdsl.autodiff.tape import NotDerivable
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import clone, map_children, names_bound, statements, walk
from layerdsl.semantics.shapes import GROUP, Shape, dim_text


def unit_slices(
    loop: N.For,
    shape_of: Callable[[str], Shape],
    nonnegative: Callable[[N.Expr], bool],
    at_most: Callable[[N.Expr, str], bool] | None = None,
) -> list[N.Stmt]:
    """`loop`'s body with each `x[..., t:t + 1, ...]` of a value x from outside it, whose dim there is the
    loop's stop (`for t in range(T)`, `range(a, T)` of an `a` that `nonnegative` proves >= 0), or a stop that
    `at_most(stop, dim)` proves no more than it (a split loop's `range(0, t_at)`, `loop_split.stop_at_most`),
    written as `unsqueeze(x[..., t, ...], k)` (k: the dims the result keeps before it). `shape_of`: a name's
    shape before the loop (None where unknown)."""
    it = loop.iter
    if not (isinstance(it, N.Call) and it.func == "range" and len(it.args) in (1, 2)):
        return loop.body
    if len(it.args) == 2 and not nonnegative(it.args[0]):
        return loop.body
    stop = dim_text(it.args[-1])
    bound = names_bound(loop.body) | {loop.var}

    def go(e):
        e = map_children(e, go)
        if not isinstance(e, N.Subscript) or not isinstance(e.value, N.Name) or e.value.id in bound:
            return e
        shape = shape_of(e.value.id)
        for p, item in enumerate(e.items):
            if _unit(item, loop.var) and _plain_before(e.items[:p]) and shape is not None and p < len(shape):
                within = shape[p] == stop or at_most is not None and at_most(it.args[-1], shape[p])
                if not within or GROUP in shape[:p]:  # counted from the front: no `...` before it
                    continue
                var = N.Name(item.span, loop.var)
                var.ref = N.Ref.LOCAL
                index = B.int_valued(var)
                picked = N.Subscript(e.span, e.value, [*e.items[:p], index, *e.items[p + 1 :]])
                picked.kind = e.kind
                kept = sum(isinstance(i, N.Slice) for i in e.items[:p])
                out = B.call("unsqueeze", picked, B.num(kept), span=e.span)
                return out
        return e

    out = [go(s) for s in loop.body]
    return out if any(a is not b for a, b in zip(out, loop.body)) else loop.body


def _unit(item: N.SubscriptItem, var: str) -> bool:
    """`t:t + 1` of the loop's variable `t`."""
    if not isinstance(item, N.Slice) or item.step is not None or item.lower is None or item.upper is None:
        return False
    lower, upper = item.lower, item.upper
    return (
        isinstance(lower, N.Name)
        and lower.id == var
        and isinstance(upper, N.BinOp)
        and upper.op == "+"
        and isinstance(upper.left, N.Name)
        and upper.left.id == var
        and isinstance(upper.right, N.Num)
        and upper.right.value == 1
    )


def _plain_before(items: list[N.SubscriptItem]) -> bool:
    """Whether each item is a slice or an int index (each takes one dim of the value, in order)."""
    return all(isinstance(i, N.Slice) or isinstance(i, N.Expr) and i.kind == N.Kind.INT for i in items)


def nonnegative_int(e: N.Expr, body: list[N.Stmt]) -> bool:
    """Whether the int `e` is proven >= 0: a number >= 0, a dim, or a local `body` binds once to such (a
    split loop's `t_at = minimum(1, T)`), `minimum` of such, `maximum` of one such."""
    if isinstance(e, N.Num):
        return isinstance(e.value, int) and e.value >= 0
    if isinstance(e, N.Name) and e.ref == N.Ref.DIM:
        return True
    if isinstance(e, N.Name):
        values = [s.value for s in statements(body) if isinstance(s, N.Assign) and s.target == e.id]
        return len(values) == 1 and nonnegative_int(values[0], body)
    if isinstance(e, N.Call) and e.func in ("minimum", "maximum") and len(e.args) == 2:
        proven = [nonnegative_int(a, body) for a in e.args]
        return all(proven) if e.func == "minimum" else any(proven)
    return False


def item_read(
    e: N.Expr,
    lists: set[str],
    shapes_of: Callable[[str], list[Shape] | None],
    heads_of: Callable[[str], list[str]],
    count_of: Callable[[str], N.Expr | None] = lambda name: None,
) -> N.Expr:
    """`L[i]` (an int `i`) of a list of `lists` as the value appended before its loops there (`heads_of(L)`,
    in order), or else as `stack(L, dim = 0)[i]`; NotDerivable where the list's items may differ in shape
    (`stack` would raise where the list reads), and for another read of the list. `shapes_of(L)`: the
    shapes of every item L may hold (before its loops, each step's), None where one is unknown. An index
    computed from the count of L's loops' steps (`count_of(L)`, where each step appends one item) is read
    where it is the last item (`L[T - 1]` of a loop over `range(T)`: `L[-1]`, `last_by_count`)."""
    if not (isinstance(e, N.Subscript) and isinstance(e.value, N.Name) and e.value.id in lists):
        return e
    name = e.value.id
    at = _int_literal(e.items[0]) if len(e.items) == 1 else None
    heads = heads_of(name)
    if at is None and len(e.items) == 1 and isinstance(e.items[0], N.Expr):
        at = last_by_count(e, e.items[0], count_of(name), len(heads))
    if at is not None and 0 <= at < len(heads):  # appended before the loop: that value itself
        return B.name(heads[at], e.span)
    if at is None:
        raise NotDerivable(
            e.span,
            f"a derived backward reads an item of the list '{name}', which a loop whose count is known only when"
            f" forward runs appends to, at an int written in the spec only (`{name}[-1]`, `{name}[0]`)",
            f"stack({name}, dim = ...) and index that",
        )
    shapes = shapes_of(name)
    if not shapes or any(s is None or s != shapes[0] for s in shapes):
        seen = sorted({"?" if s is None else f"[{', '.join(map(str, s))}]" for s in shapes or [None]})
        raise NotDerivable(
            e.span,
            f"a derived backward reads '{spec_text(e)}' as an item of the stack of '{name}', so its items must"
            f" have one shape known before forward runs (not derived yet: they are {', '.join(seen)})",
            f"stack({name}, dim = ...) and index that, or give its items one shape",
        )
    listed = B.name(name, e.value.span)
    listed.kind = N.Kind.LIST
    stacked = N.Call(e.span, "stack", e.span, [listed], [N.Keyword("dim", B.num(0), e.span)])
    stacked.kind = N.Kind.TENSOR
    index = clone(e.items[0]) if _int_literal(e.items[0]) is not None else B.num(at)
    out = N.Subscript(e.span, stacked, [index])
    out.kind = e.kind
    return out


def last_by_count(e: N.Subscript, index: N.Expr, count: N.Expr | None, heads: int) -> int | None:
    """-1 where `index` (of `e`, `L[index]`) is `count + k` (`T - 1`, `T`) of the count of items the
    loops append to L after its `heads`, that is its last item (k = heads - 1: another k may count from
    the end where the list is short, and from the front where it is long); None for another index that
    does not read the count. NotDerivable for another `count + k`."""
    if count is None:
        return None
    said = spec_text(count)
    if spec_text(index) == said:
        k: int | None = 0
    elif isinstance(index, N.BinOp) and index.op in "+-" and spec_text(index.left) == said:
        k = _int_literal(index.right)
        k = None if k is None else k if index.op == "+" else -k
    else:
        return None
    if k == heads - 1:
        return -1
    last = f"{said} - 1" if heads == 0 else f"{said} + {heads - 1}" if heads > 1 else said
    raise NotDerivable(
        e.span,
        f"a derived backward reads '{spec_text(e)}' of the list '{spec_text(e.value)}', at an index computed from"
        f" the count of the loop appending to it, as its last item only (`{spec_text(e.value)}[{last}]`)",
        f"index it by an int written in the spec counted from the end (`{spec_text(e.value)}[-1]`,"
        f" `{spec_text(e.value)}[-2]`)",
    )


@dataclass
class ItemRead:
    """`L[at]` of a list a loop appends to, read as an item of a join (`stack(L, dim = 0)`, `item_read`)
    where the list may hold too few items for `at`: its spec text and line, for the length check."""

    at: int
    text: str
    line: int


def mark_item_read(spec: N.Expr, read: N.Expr, out: N.Expr, joins_of: Callable[[str], list[Any]]) -> None:
    """Record on its join (`joins_of(L)`: the joins of the list L, each with `name` and `item`) that `spec`
    (`L[i]`) is read as `read` (`item_read`'s, `stack(L, dim = 0)[i]`), become `out` (`join[i]`), where the
    list may hold too few items: none of the items appended before the loop is `L[i]` itself."""
    if read is spec or not isinstance(read, N.Subscript) or not isinstance(out, N.Subscript):
        return
    if not (isinstance(spec, N.Subscript) and isinstance(spec.value, N.Name) and isinstance(out.value, N.Name)):
        return
    at = _int_literal(read.items[0])  # (`last_by_count`'s -1 for an index computed from the count)
    if at is None:
        return
    for join in joins_of(spec.value.id):
        if join.name == out.value.id:
            join.item = ItemRead(at, spec_text(spec), spec.span.line)


def uneven_steps(loops: list, name: str, shapes: dict[str, Shape]) -> str | None:
    """Why the steps of `loops` in a row appending to the list `name` cannot be stacked item by item for a
    `cat` of it (`loops.Planner.cat_of_steps`): they append a different number of items a step, or items
    of different shapes at one place of a step; None when they can."""
    per = {1 + len(loop.more.get(name, [])) for loop in loops}
    if len(per) > 1:
        return (
            f"the loops in a row appending to it append {' and '.join(map(str, sorted(per)))} items a step (not"
            " derived yet)"
        )
    for i in range(per.pop() if per else 0):
        items = [[loop.appended[name], *loop.more.get(name, [])][i] for loop in loops]
        seen = {shapes.get(v.id) if isinstance(v, N.Name) else None for v in items}
        if len(seen) > 1:
            return "the loops in a row appending to it append items of different shapes (not derived yet)"
    return None


def refuse_items_in_loop(loop: N.For, lists: set[str]) -> None:
    """NotDerivable at `L[i]` (an int `i` written in the spec) in `loop`'s body of a list of `lists`, which
    loops before it filled (a loop's body picks from such a list at its variable only); one it appends to
    itself reads the step's items."""
    lists = lists - {s.target for s in statements(loop.body) if isinstance(s, N.Append)}
    for e in walk(loop):
        if isinstance(e, N.Subscript) and isinstance(e.value, N.Name) and e.value.id in lists:
            if len(e.items) == 1 and _int_literal(e.items[0]) is not None:
                name = e.value.id
                raise NotDerivable(
                    e.span,
                    f"a derived backward reads an item of the list '{name}' at an int in the body of a later loop"
                    " (not derived yet)",
                    f"bind it before the loop (`last = {spec_text(e)}`) and read that in the loop",
                )


def refuse_lists_read_while_growing(body: list[N.Stmt]) -> None:
    """NotDerivable at a read, in a kept loop's body, of a list made before the loop that the body appends to
    (`stack(keys)`, `outs[-1]`, `outs[t]` while `outs.append(h)`): the tape takes such a list as the items
    appended before the loop, so each step would read the same (or no) items and their gradient would not
    reach the steps that appended them. A list made in the body (a nest's per-layer `outputs = []`) is new
    each step: its reads there are the inner loop's."""
    for loop in (s for s in statements(body) if isinstance(s, N.For)):
        inner = list(statements(loop.body))
        made = {s.target for s in inner if isinstance(s, N.Assign) and isinstance(s.value, N.ListExpr)}
        growing = {s.target for s in inner if isinstance(s, N.Append)} - made
        for stmt in loop.body:
            read = next((n for n in walk(stmt) if isinstance(n, N.Name) and n.id in growing), None)
            if read is not None:
                raise NotDerivable(
                    read.span,
                    f"a derived backward cannot read the list '{read.id}' in the body of the loop that appends"
                    " to it (it grows each step; not derived yet)",
                    "carry what a step reads in a local bound before the loop (`last = h`), or drop @function",
                )


def alike(shapes: list[Shape]) -> bool:
    """Whether `shapes` (a list's items') are one shape, known and without a `...` group."""
    return bool(shapes) and shapes[0] is not None and GROUP not in shapes[0] and all(s == shapes[0] for s in shapes)


def _int_literal(item: N.SubscriptItem) -> int | None:
    if isinstance(item, N.UnaryOp) and item.op == "-" and (inner := _int_literal(item.operand)) is not None:
        return -inner
    return item.value if isinstance(item, N.Num) and type(item.value) is int else None


def reads_list(e: N.Node, lists: set[str]) -> bool:
    return any(isinstance(n, N.Name) and n.id in lists for n in walk(e))


@dataclass
class ListedItems:
    """A list forward makes, whose stack at dim 0 an item is read of (`item_of_list`)."""

    name: str
    heads: int  # the items appended before its loop
    rows: list[str | None]  # each item a step appends: the buffer holding it at every step (None where none)
    earlier: bool  # loops before its own append to it too (their items come first)


def item_of_list(e: N.Expr, lists: dict[str, ListedItems]) -> str | None:
    """`J[i]` (an int `i`) of a join J of `lists` (`stack(L, dim = 0)` of a list forward makes, `item_read`'s),
    as the list's item itself, not a view of the stack (a copy of every item, which backward would keep whole
    where it reads the item): a row of the buffer holding that item of each step where there is one (kept
    anyway; after a loop of too few steps `L[i]` counted from the end is an item before it), else the item
    in the list (a view: an output of its own). None for another expression."""
    if not (isinstance(e, N.Subscript) and isinstance(e.value, N.Name) and e.value.id in lists):
        return None
    at = _int_literal(e.items[0]) if len(e.items) == 1 else None
    if at is None:
        return None
    listed = lists[e.value.id]
    item, per = f"{listed.name}[{at}]", len(listed.rows)
    as_is = f"{item}.view_as({item})"
    if at >= 0:  # (`item_read` read the heads as themselves; the length is checked before: `ItemRead`)
        row = listed.rows[(at - listed.heads) % per] if not listed.earlier and at >= listed.heads else None
        return as_is if row is None else f"{row}[{(at - listed.heads) // per}]"
    back = -at - 1  # items after it in the list
    row = listed.rows[per - 1 - back % per]
    if row is None:
        return as_is
    step = back // per
    enough = f"{row} is not None" + (f" and len({row}) > {step}" if step else "")
    return f"{row}[{-step - 1}] if {enough} else {as_is}"


def stacked_shape(shape: Shape, at: int, count: str) -> Shape:
    """The shape of a stack at `at` of items of `shape`, `count` of them (None where unknown, or with a `...`
    group)."""
    if shape is None or GROUP in shape:
        return None
    place = at if at >= 0 else len(shape) + 1 + at
    return (*shape[:place], count, *shape[place:]) if 0 <= place <= len(shape) else None


def stacked_alone(loop: Any, j: Any, ex: Callable[[N.Expr], str]) -> str:
    """Forward's `Join.alone` stack (`loops.Planner.cat_by_loops`), after `loop`, the last of the loops in a
    row appending to the list: the `j.of_step`-th items of the steps of the `j.alone`-th of them, cut out
    of the list after the heads and the items of the loops before it (their counts, times their items a
    step, `Loop.before_per`). After a loop of no steps, an item of the list with an empty dim at `j.dim`,
    and where the list is empty the spec's cat() raising (torch's)."""
    name, dim = j.items, ex(j.dim)
    bounds = [*loop.before.get(name, []), list(loop.bounds)]
    pers = [*loop.before_per.get(name, []), 1 + len(loop.more.get(name, []))]

    def count(k: int) -> str:
        return f"len(range({', '.join(ex(b) for b in bounds[k])}))"

    start = [str(len(loop.heads.get(name, [])) + j.of_step)]
    start += [f"{pers[k]} * {count(k)}" if pers[k] > 1 else count(k) for k in range(j.alone)]
    first, per = " + ".join(start), pers[j.alone]
    steps = f"{name}[{first}:{first} + {f'{per} * ' if per > 1 else ''}{count(j.alone)}{f':{per}' if per > 1 else ''}]"
    empty = f"({name}[0].unsqueeze({dim}).narrow({dim}, 0, 0) if {name} else torch.cat({name}, dim={dim}))"
    return f"torch.stack({steps}, dim={dim}) if {count(j.alone)} else {empty}"


def not_of_this_loop(loop: Any, j: Any) -> bool:
    """Whether `j` is a `Join.alone` stack of the items of another loop than `loop` of those in a row
    appending to its list (the place of `loop` among them: the loops before it, `Loop.before`)."""
    return j.alone is not None and j.alone != len(loop.before.get(j.items, []))


def counted_items(loops: list, name: str, body: list[N.Stmt]) -> N.Expr | None:
    """The count of the items `loops` (in a row, of the forward `body`, none holding a loop) append to the list
    `name`, where each appends one a step: S of a lone loop over `range(S)` or `range(0, S)`, or of pieces of one loop
    split where its `if`s turn (`range(0, a)`, `range(a, b)`, ..., `range(z, S)`, each bound between
    `minimum(k, S)` of ints k in order, `loop_split`); an S `nonnegative_int` proves >= 0. None otherwise."""
    if not loops or any(loop.more.get(name) for loop in loops):
        return None  # (several items a step)
    bounds = [loop.bounds for loop in loops]
    if any(len(b) > 2 for b in bounds) or len(bounds[0]) == 2 and _int_literal(bounds[0][0]) != 0:
        return None
    stop = bounds[-1][-1]
    if not nonnegative_int(stop, body):
        return None
    ks = []
    for before, after in zip(bounds, bounds[1:]):
        if len(after) != 2 or spec_text(before[-1]) != spec_text(after[0]):
            return None
        value = _bound_value(after[0], body)
        if not (isinstance(value, N.Call) and value.func == "minimum" and len(value.args) == 2):
            return None
        k = _int_literal(value.args[0])
        if k is None or k < 0 or spec_text(value.args[1]) != spec_text(stop):
            return None
        ks.append(k)
    return stop if ks == sorted(ks) else None


def _bound_value(e: N.Expr, body: list[N.Stmt]) -> N.Expr | None:
    """The value a local `e` is bound to once in `body` (None where another expression, or bound again)."""
    if not isinstance(e, N.Name):
        return None
    values = [s.value for s in statements(body) if isinstance(s, N.Assign) and s.target == e.id]
    return values[0] if len(values) == 1 else None
