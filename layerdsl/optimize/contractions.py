"""Einsum contractions of a backward: like terms merged, products of three or more tensors split into pairs
in the order a cost model picks, and a pair that several contractions share computed once.

A derived backward holds one einsum per operand of each forward einsum, each over the incoming gradient and
every other operand. For `y[b, k] = sum[i, j](w[i, j, k] * x[b, i] * x[b, j])` that is

    grad_x = einsum("bk,ijk,bj->bi", g, w, x) + einsum("bk,ijk,bi->bj", g, w, x)
    grad_w = einsum("bk,bi,bj->ijk", g, x, x)

Two rewrites make it what an expert writes:

1. **Like terms merge.** Two einsum terms of one sum that are the same product once their indices are
   renamed, except for one operand, become one term over the sum of those operands (the second permuted
   to the first's indices): `einsum("bk,ijk,bj->bi", g, w + w.permute(1, 0, 2), x)`. The sum costs one
   pass over the operand; the term it removes read that operand and more.
2. **Pairwise order by cost.** Each product of three or more tensors becomes a chain of two-operand
   einsums. Every contraction tree of every product is priced (multiply-adds plus elements read and
   written, at the example's sizes) and the cheapest combination is kept, where a pair that two products
   share (the same tensors, the same indices up to renaming) is computed once, as a statement of its own.
   Above, `x ⊗ g` (`einsum("bj,bk->bjk", x, g)`) is shared by both gradients, and each gradient is then one
   matrix product whose inner dimension is large.

The order only decides speed: every order computes the same value at every size. Sizes the example does not
give take `DEFAULT_SIZE`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import NOWHERE
from layerdsl.ir.visit import map_children
from layerdsl.language.naming import fresh_name
from layerdsl.language.tables import FORBIDDEN
from layerdsl.optimize.statements import Facts, Shapes, Stmt, names
from layerdsl.semantics.shapes import Shape, expr_shape, text_poly

DEFAULT_SIZE = 64  # a dim the example leaves open (a batch)
MOVED = 1  # the cost of an element read or written, in multiply-adds
# A batched product that also sums (`bij,bj->bi`) runs as one small matrix product per batch element, several
# times slower per multiply-add than one large product (bench_functions.py, QuadraticForm's forward orders).
BATCHED = 4
MAX_PLANS = 4096  # combinations priced jointly; beyond, each product picks its order alone
MAX_SPLIT = 5  # products of more tensors keep the left-to-right order
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class Operand:
    expr: N.Expr
    key: str  # structural: two operands with the same key hold the same tensor


@dataclass
class Term:
    """One einsum: `letters[k]` index `operands[k]`; the result has the axes `out`."""

    letters: list[str]
    operands: list[Operand]
    out: str
    scale: tuple[str, N.Expr | None] = ("", None)  # `c * term` ("*"), `term * c` ("*r"), `-term` ("-")


@dataclass(frozen=True)
class Pair:
    """A two-operand contraction node of a plan: its inputs are leaves (operand positions) or pairs."""

    left: Pair | int
    right: Pair | int
    kept: str  # the result's indices, in the term's letters


# ------------------------------------------------------------------ the pass


def plan_contractions(stmts: list[Stmt], facts: Facts) -> list[Stmt]:
    """The statements with like einsum terms merged and every product of 3+ tensors split into pairs."""
    shapes = Shapes(facts)
    sized: dict[str, int] = {}
    found: list[tuple[Stmt, list[N.Expr], list[Term | None]]] = []
    merged_any = False
    for s in stmts:
        parts = list(_summands(s.expr))
        terms = [_term(p) for p in parts]
        if any(t is not None for t in terms):
            for t in terms:
                if t is not None:
                    _learn_sizes(t, shapes.of, facts.sizes, sized)
            merged = _merged(terms)
            merged_any = merged_any or merged != terms
            found.append((s, parts, merged))
        shapes.learn(s)
    products = [t for _, _, terms in found for t in terms if t is not None and len(t.operands) >= 3]
    if not products and not merged_any:
        return stmts
    choice = _choose(products, sized)
    taken = {n for s in stmts for n in names(s.expr)} | {s.target for s in stmts} | set(facts.shapes) | FORBIDDEN
    made: dict[str, str] = {}  # a shared pair's canonical key -> the name of its statement
    out: list[Stmt] = []
    for s in stmts:
        entry = next((f for f in found if f[0] is s), None)
        if entry is not None:
            _, parts, terms = entry
            new_parts = [p for p in parts if _term(p) is None]
            for t in terms:
                if t is None:
                    continue
                pair = choice.get(id(t))
                if pair is None:
                    product: N.Expr = _einsum(t.letters, [o.expr for o in t.operands], t.out)
                else:
                    product = _emit_pair(pair, t, s, out, made, taken)
                new_parts.append(_rescaled(t, product))
            total = new_parts[0]
            for p in new_parts[1:]:
                total = B.binop("+", total, p)
            s.expr = total
        out.append(s)
    _needed_with_readers(out, set(made.values()))
    return out


def _summands(e: N.Expr) -> Iterator[N.Expr]:
    if isinstance(e, N.BinOp) and e.op == "+":
        yield from _summands(e.left)
        yield from _summands(e.right)
    else:
        yield e


def _term(e: N.Expr) -> Term | None:
    """`einsum("ab,bc->ac", p, q)` (times a number, or negated) as a Term, else None."""
    match e:
        case N.BinOp(op="*", left=c, right=N.Call() as call) if c.kind != N.Kind.TENSOR:
            return _scaled(_einsum_term(call), ("*", c))
        case N.BinOp(op="*", left=N.Call() as call, right=c) if c.kind != N.Kind.TENSOR:
            return _scaled(_einsum_term(call), ("*r", c))
        case N.UnaryOp(op="-", operand=N.Call() as call):
            return _scaled(_einsum_term(call), ("-", None))
    return _einsum_term(e)


def _scaled(t: Term | None, scale: tuple[str, N.Expr | None]) -> Term | None:
    if t is not None:
        t.scale = scale
    return t


def _rescaled(t: Term, e: N.Expr) -> N.Expr:
    kind, c = t.scale
    if kind == "-":
        negated = N.UnaryOp(NOWHERE, "-", e)
        negated.kind = N.Kind.TENSOR
        return negated
    if c is not None:
        return B.binop("*", c, e) if kind == "*" else B.binop("*", e, c)
    return e


def _scale_key(t: Term) -> tuple[str, str]:
    kind, c = t.scale
    return kind, "" if c is None else B.key(c)


def _einsum_term(e: N.Expr) -> Term | None:
    """`einsum("ab,bc->ac", p, q)` as a Term (explicit output, one letter per axis), else None."""
    if not (isinstance(e, N.Call) and e.func == "einsum" and len(e.args) == 2):
        return None
    equation, listed = e.args
    if not (isinstance(equation, N.Str) and isinstance(listed, N.ListExpr) and "->" in equation.value):
        return None
    inputs, out = equation.value.split("->")
    letters = inputs.split(",")
    if len(letters) != len(listed.items) or "." in equation.value:
        return None
    return Term(letters, [Operand(o, B.key(o)) for o in listed.items], out)


def _learn_sizes(t: Term, shape_of: Callable[[N.Expr], Shape], given: Mapping[str, int], sized: dict[str, int]) -> None:
    """The size of each of the term's letters at the example's sizes, under the operand's key and letter."""
    for letters, o in zip(t.letters, t.operands):
        shape = shape_of(o.expr)
        for pos in range(len(letters)):
            size = _size(shape[pos], given) if shape is not None and pos < len(shape) else DEFAULT_SIZE
            sized.setdefault(f"{o.key}#{pos}", size)


def _size(dim: str, given: Mapping[str, int]) -> int:
    total = 0
    for monomial, coeff in text_poly(dim):
        value = coeff
        for factor, power in monomial:
            value *= given.get(factor, DEFAULT_SIZE) ** power
        total += value
    return max(total, 1)


def einsum_operands_in_cheapest_order(e: N.Expr, shapes: Mapping[str, Shape], given: Mapping[str, int]) -> N.Expr:
    """`e` with each einsum of three or more operands given them in the order whose left-to-right contraction
    the cost model prices cheapest (torch.einsum contracts left to right unless opt_einsum is installed). For a
    Function's forward, which runs without a graph: under autograd the order also decides what is kept."""
    if isinstance(e, N.Call) and (t := _einsum_term(e)) is not None and 3 <= len(t.operands) <= 6:
        sized: dict[str, int] = {}
        _learn_sizes(t, lambda o: expr_shape(o, shapes), given, sized)
        orders = list(itertools.permutations(range(len(t.operands))))  # the spec's order first: it wins ties
        order = min(orders, key=lambda order: _chain_cost(t, order, sized))
        return _einsum([t.letters[k] for k in order], [t.operands[k].expr for k in order], t.out)
    return map_children(e, lambda c: einsum_operands_in_cheapest_order(c, shapes, given))


def _chain_cost(t: Term, order: tuple[int, ...], sized: Mapping[str, int]) -> int:
    reordered = Term([t.letters[k] for k in order], [t.operands[k] for k in order], t.out)
    return sum(_cost(pair, reordered, sized) for pair in _pairs(_left_to_right(reordered)))


# ------------------------------------------------------------------ like terms


def _merged(terms: list[Term | None]) -> list[Term | None]:
    """Pairs of terms that differ in one operand become one term over that operand's sum, while any do."""
    terms = list(terms)
    changed = True
    while changed:
        changed = False
        for a, b in itertools.combinations(range(len(terms)), 2):
            ta, tb = terms[a], terms[b]
            if ta is None or tb is None:
                continue
            merged = _merge(ta, tb)
            if merged is not None:
                terms[a], terms[b] = merged, None
                changed = True
                break
    return terms


def _merge(ta: Term, tb: Term) -> Term | None:
    """`ta + tb` as one term, when they are the same product (indices renamed) but for one operand."""
    if len(ta.operands) != len(tb.operands) or len(ta.out) != len(tb.out) or _scale_key(ta) != _scale_key(tb):
        return None
    for k in range(len(ta.operands)):
        rename = _renaming(ta, tb, k)
        if rename is None or not set(tb.letters[k]) <= set(rename):
            continue
        mapped = "".join(rename[c] for c in tb.letters[k])
        if sorted(mapped) != sorted(ta.letters[k]) or len(set(mapped)) != len(mapped):
            continue
        other = tb.operands[k].expr
        if mapped != ta.letters[k]:
            dims = [mapped.index(c) for c in ta.letters[k]]  # other.permute(dims) is indexed like ta's operand
            inverse = [dims.index(p) for p in range(len(dims))]
            other = B.call("permute", other, _ints(dims), _ints(inverse))
        total = B.binop("+", ta.operands[k].expr, other)
        operands = list(ta.operands)
        operands[k] = Operand(total, B.key(total))
        return Term(list(ta.letters), operands, ta.out, ta.scale)
    return None


def _renaming(ta: Term, tb: Term, skip: int) -> dict[str, str] | None:
    """tb's letters renamed to ta's: the output position by position, then each operand but `skip`, which must
    be the same tensor in both; None when no consistent renaming exists."""
    rename: dict[str, str] = {}

    def bind(src: str, dst: str) -> bool:
        for s, d in zip(src, dst):
            if rename.setdefault(s, d) != d:
                return False
        return True

    if not bind(tb.out, ta.out):
        return None
    for k, (oa, ob) in enumerate(zip(ta.operands, tb.operands)):
        if k == skip:
            continue
        if oa.key != ob.key or len(ta.letters[k]) != len(tb.letters[k]) or not bind(tb.letters[k], ta.letters[k]):
            return None
    if len(set(rename.values())) != len(rename):
        return None
    return rename


def _ints(values: list[int]) -> N.ListExpr:
    out = N.ListExpr(NOWHERE, [B.num(v) for v in values])
    out.kind = N.Kind.LIST
    return out


# ------------------------------------------------------------------ pairwise orders and their cost


def _trees(leaves: list[Pair | int], term: Term) -> Iterator[Pair]:
    """Every contraction tree over `leaves` (each node keeps the indices the rest or the output needs)."""
    if len(leaves) == 1:
        node = leaves[0]
        assert isinstance(node, Pair)
        yield node
        return
    for a, b in itertools.combinations(range(len(leaves)), 2):
        rest = [leaf for k, leaf in enumerate(leaves) if k not in (a, b)]
        needed = set(term.out) | {c for leaf in rest for c in _indices(leaf, term)}
        joined = _indices(leaves[a], term) + _indices(leaves[b], term)
        kept = term.out if not rest else "".join(sorted({c for c in joined if c in needed}))
        yield from _trees([Pair(leaves[a], leaves[b], kept), *rest], term)


def _indices(node: Pair | int, term: Term) -> str:
    return term.letters[node] if isinstance(node, int) else node.kept


def _canonical(node: Pair | int, term: Term) -> tuple[str, dict[str, str]]:
    """A key equal for two nodes that compute the same tensor with the same axis order (their indices
    renamed), and the renaming of `term`'s letters it uses."""
    leaves = list(_leaves(node))
    best: tuple[str, dict[str, str]] | None = None
    for order in itertools.permutations(leaves):
        rename: dict[str, str] = {}
        for k in order:
            for c in term.letters[k]:
                rename.setdefault(c, LETTERS[len(rename)])
        text = ",".join(f"{term.operands[k].key}[{''.join(rename[c] for c in term.letters[k])}]" for k in order)
        text += "->" + "".join(rename[c] for c in _indices(node, term))
        if best is None or text < best[0]:
            best = (text, rename)
        if len(leaves) > 5:  # enough for a key; a missed share only costs speed
            break
    assert best is not None
    return best


def _leaves(node: Pair | int) -> Iterator[int]:
    if isinstance(node, int):
        yield node
    else:
        yield from _leaves(node.left)
        yield from _leaves(node.right)


def _pairs(node: Pair | int) -> Iterator[Pair]:
    if isinstance(node, Pair):
        yield from _pairs(node.left)
        yield from _pairs(node.right)
        yield node


def _letter_size(term: Term, c: str, sized: Mapping[str, int]) -> int:
    known = (
        sized.get(f"{o.key}#{letters.index(c)}") for letters, o in zip(term.letters, term.operands) if c in letters
    )
    return next((size for size in known if size is not None), DEFAULT_SIZE)


def _cost(pair: Pair, term: Term, sized: Mapping[str, int]) -> int:
    """Multiply-adds of one pairwise contraction, plus the elements it reads and writes."""

    def elements(indices: str) -> int:
        return _product(_letter_size(term, c, sized) for c in indices)

    left, right = _indices(pair.left, term), _indices(pair.right, term)
    flops = elements("".join(dict.fromkeys(left + right)))
    batch = set(left) & set(right) & set(pair.kept)
    if batch and set(left + right) - set(pair.kept):
        flops *= BATCHED  # one small matrix product per batch element: at memory speed, not a GEMM's
    copy = 0 if _gemm_order(left, right, pair.kept) is not None else elements(pair.kept)
    return flops + MOVED * (elements(left) + elements(right) + elements(pair.kept) + copy)


def _gemm_order(left: str, right: str, kept: str) -> bool | None:
    """Whether a batched matrix product writes `kept` in place with its operands as given (False) or swapped
    (True); None when the result must be permuted (a copy)."""
    batch = "".join(c for c in kept if c in left and c in right)
    free_left = "".join(c for c in left if c in kept and c not in right)
    free_right = "".join(c for c in right if c in kept and c not in left)
    if kept == batch + free_left + free_right:
        return False
    if kept == batch + free_right + free_left:
        return True
    return None


def _product(values) -> int:
    total = 1
    for v in values:
        total *= v
    return total


def _choose(products: list[Term], sized: Mapping[str, int]) -> dict[int, Pair]:
    """A tree per product (by `id`): the cheapest combination, a pair shared between trees priced once;
    ties keep the earlier tree (the spec's left-to-right order first). A product of more than `MAX_SPLIT`
    tensors keeps the left-to-right order (the trees grow as (2n - 3)!!)."""
    options = [
        (
            [_left_to_right(t)]
            + [tree for tree in _trees(list(range(len(t.operands))), t) if tree != _left_to_right(t)]
            if len(t.operands) <= MAX_SPLIT
            else [_left_to_right(t)]
        )
        for t in products
    ]
    priced = {  # each tree's pairs: (a key equal for pairs computing the same tensor, cost)
        id(tree): [(_canonical(p, t)[0] if p is not tree else str(id(t)), _cost(p, t, sized)) for p in _pairs(tree)]
        for opts, t in zip(options, products)
        for tree in opts
    }

    def total(trees: list[Pair]) -> int:
        return sum(dict(item for tree in trees for item in priced[id(tree)]).values())

    if _product(len(o) for o in options) <= MAX_PLANS:
        best = min(itertools.product(*options), key=lambda trees: total(list(trees)))
        return {id(t): tree for t, tree in zip(products, best)}
    chosen: list[Pair] = []
    for opts in options:  # too many: each picks the cheapest given those before it
        chosen.append(min(opts, key=lambda tree: total([*chosen, tree])))
    return {id(t): tree for t, tree in zip(products, chosen)}


def _left_to_right(t: Term) -> Pair:
    node: Pair | int = 0
    for k in range(1, len(t.operands)):
        rest = set(t.out) | {c for letters in t.letters[k + 1 :] for c in letters}
        joined = _indices(node, t) + t.letters[k]
        kept = t.out if k == len(t.operands) - 1 else "".join(sorted({c for c in joined if c in rest}))
        node = Pair(node, k, kept)
    assert isinstance(node, Pair)
    return node


# ------------------------------------------------------------------ writing the plan


def _emit_pair(pair: Pair, t: Term, user: Stmt, out: list[Stmt], made: dict[str, str], taken: set[str]) -> N.Expr:
    """The einsum of `pair` (its inner pairs written as statements before `user`, each once)."""
    operands, letters = [], []
    for node in _written_order(pair, t):
        letters.append(_indices(node, t))
        if isinstance(node, int):
            operands.append(t.operands[node].expr)
        else:
            operands.append(_shared(node, t, user, out, made, taken))
    return _einsum(letters, operands, pair.kept)


def _written_order(pair: Pair, t: Term) -> tuple[Pair | int, Pair | int]:
    """The pair's two inputs in the spec's order, unless the other order writes the result's axes in place."""
    first, second = sorted((pair.left, pair.right), key=lambda node: min(_leaves(node)))
    if _gemm_order(_indices(first, t), _indices(second, t), pair.kept):
        return second, first
    return first, second


def _shared(pair: Pair, t: Term, user: Stmt, out: list[Stmt], made: dict[str, str], taken: set[str]) -> N.Name:
    """The name of the statement computing `pair` (in canonical axis order), written when first needed."""
    key, _ = _canonical(pair, t)
    if key in made:
        return B.name(made[key])
    expr = _emit_pair(pair, t, user, out, made, taken)
    name = fresh_name(_hint(pair, t, made), taken)
    taken.add(name)
    made[key] = name
    out.append(Stmt(name, expr, set(user.leaves), span=user.span))
    return B.name(name)


def _hint(pair: Pair, t: Term, made: Mapping[str, str]) -> str:
    """What the pair holds: `x_outer_g` (every index kept, each side has its own), `x_times_g` (every index
    kept, one side's all shared), `x_dot_g` (an index summed), after its operands' names."""
    parts = []
    for node in _written_order(pair, t):
        if isinstance(node, Pair):
            parts.append(made[_canonical(node, t)[0]])
        else:
            e = t.operands[node].expr
            parts.append(e.id if isinstance(e, N.Name) else "sum")
    left, right = _indices(pair.left, t), _indices(pair.right, t)
    if set(left + right) - set(pair.kept):
        how = "dot"
    else:
        how = "outer" if set(left) - set(right) and set(right) - set(left) else "times"
    return f"{parts[0]}_{how}_{parts[1]}"


def _needed_with_readers(stmts: list[Stmt], shared: set[str]) -> None:
    """A shared pair is computed whenever a statement reading it is (the leaves of its readers, unioned)."""
    for k in reversed(range(len(stmts))):
        s = stmts[k]
        if s.target in shared:
            for reader in stmts[k + 1 :]:
                if s.target in names(reader.expr):
                    s.leaves |= reader.leaves


def _einsum(letters: list[str], operands: list[N.Expr], out: str) -> N.Call:
    """`einsum("<letters>-><out>", operands)`, the letters renamed a, b, c... only if the term's are not single
    lower-case letters already (they are, from index notation)."""
    eq = N.Str(NOWHERE, ",".join(letters) + "->" + out)
    eq.kind = N.Kind.STR
    listed = N.ListExpr(NOWHERE, list(operands))
    listed.kind = N.Kind.LIST
    return B.call("einsum", eq, listed)
