"""Static shapes over symbolic dims: the one set of shape rules every stage uses.

A shape is a tuple of dims, or None when it is unknown. A dim is the canonical text of its expression's
polynomial normal form (`"in_features"`, `"2 * n"`, `"H - k + 1"`, `"1"`): `n + n`, `2 * n` and `n * 2` all
read `"2 * n"`, so two dims are equal exactly when their polynomials are (what is not a polynomial, like
`n // 2`, is one opaque factor). Three texts are special:

- `"..."` stands for the leading group of an input declared `[..., n]`: zero or more dims, always first.
  In a derivation's shapes (`declared_shape(..., own_group=True)`) each input's group is its own (a
  `Group` naming it): `x: [..., d]` and `q: [..., d]` may have different leading dims, which broadcast
  (`x + q` has the group of both), while what is computed from `x` alone keeps x's group and equals x's
  shape. Every group equals the plain text `GROUP` (`GROUP in shape` asks whether a shape has one);
- `"1"` is a dim of size 1, which broadcasts against any other;
- `"<x>"`, alone in a shape, stands for the whole shape of input `x` declared without one: equal only to
  itself, and broadcast only with numbers.

A Python number has the shape `()`. The rules compute the shape an operation gives when it runs; where that
depends on what is unknown statically (two different symbolic dims may or may not be equal, an index may
fall inside `...`), the answer is None rather than a guess. `expr_shape` gives an IR expression's shape from
the shapes of the names it reads; the rest are the rules for one kind of operation each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.language.ops import OPS, Op

Dim = str
Shape = tuple[Dim, ...] | None

GROUP = "..."  # the leading group of dims of an input declared `[..., n]`
ONE = "1"  # a dim of size 1


class Group(str):
    """The leading group of the inputs `owners` (one input's own, or the broadcast of several): the text
    `...`, equal to `GROUP` and to the group of the same inputs, not to another input's group."""

    owners: frozenset[str]

    def __new__(cls, owners: Iterable[str]) -> Group:
        group = super().__new__(cls, GROUP)
        group.owners = frozenset(owners)
        return group

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Group):
            return self.owners == other.owners
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__  # equal to GROUP, so hashed as it is

    def __reduce__(self):
        return Group, (tuple(sorted(self.owners)),)


def _joined(a: Dim, b: Dim) -> Dim | None:
    """The group two groups broadcast to (their inputs' together); None when one is not a group. The
    plain `GROUP` (a group of no known input) is taken as equal to any."""
    if isinstance(a, Group) and isinstance(b, Group):
        return a if a.owners >= b.owners else b if b.owners >= a.owners else Group(a.owners | b.owners)
    return None


def dim_text(dim: N.Expr | N.EllipsisItem, subst: Mapping[str, Poly] | None = None) -> Dim:
    """The canonical text of a declared dim (`...` for the leading group); `subst` replaces names."""
    return GROUP if isinstance(dim, N.EllipsisItem) else poly_text(poly(dim, subst))


# ------------------------------------------------------------------ symbolic dims: a polynomial normal form

Monomial = tuple[tuple[str, int], ...]  # (factor, power) pairs sorted by factor; () is the constant term
Poly = tuple[tuple[Monomial, int], ...]  # (monomial, nonzero coefficient) pairs sorted by monomial

_POLYS: dict[Dim, Poly] = {}  # canonical text -> its polynomial, for every text this module has written


def _normal(terms: Mapping[Monomial, int]) -> Poly:
    return tuple(sorted((m, c) for m, c in terms.items() if c != 0))


def constant(value: int) -> Poly:
    return _normal({(): value})


def atom(name: str) -> Poly:
    return ((((name, 1),), 1),)


def poly_add(a: Poly, b: Poly, sign: int = 1) -> Poly:
    terms = dict(a)
    for m, c in b:
        terms[m] = terms.get(m, 0) + sign * c
    return _normal(terms)


def poly_mul(a: Poly, b: Poly) -> Poly:
    terms: dict[Monomial, int] = {}
    for ma, ca in a:
        for mb, cb in b:
            powers = dict(ma)
            for f, k in mb:
                powers[f] = powers.get(f, 0) + k
            m = tuple(sorted(powers.items()))
            terms[m] = terms.get(m, 0) + ca * cb
    return _normal(terms)


def as_int(p: Poly) -> int | None:
    """The value of a constant polynomial; None when it has a symbol."""
    if not p:
        return 0
    return p[0][1] if len(p) == 1 and p[0][0] == () else None


def poly(e: N.Expr, subst: Mapping[str, Poly] | None = None) -> Poly:
    """The normal form of integer expression `e`; `subst` gives names a value. Operations that are not
    sums, differences or products of whole numbers (`//`, `%`, calls) become one opaque factor."""
    match e:
        case N.Num(value=int() as v):
            return constant(v)
        case N.Name(id=name):
            return subst[name] if subst and name in subst else atom(name)
        case N.UnaryOp(op="-", operand=operand):
            return poly_mul(constant(-1), poly(operand, subst))
        case N.UnaryOp(op="+", operand=operand):
            return poly(operand, subst)
        case N.BinOp(op="+" | "-" | "*" as op, left=left, right=right):
            a, b = poly(left, subst), poly(right, subst)
            return poly_mul(a, b) if op == "*" else poly_add(a, b, 1 if op == "+" else -1)
        case N.BinOp(op="**", left=left, right=N.Num(value=int() as k)) if 0 <= k <= 8:
            out = constant(1)
            for _ in range(k):
                out = poly_mul(out, poly(left, subst))
            return out
        case N.BinOp(op="//", left=left, right=right):
            a, b = poly(left, subst), poly(right, subst)
            if as_int(a) is not None and as_int(b):
                return constant(as_int(a) // as_int(b))  # type: ignore[operator]
            return atom(f"{_operand(a)} // {_operand(b)}")
    return atom(f"({spec_text(e)})")


def renamed(shape: Shape, equal: Mapping[str, str]) -> Shape:
    """`shape` with the symbols of `equal` replaced by theirs (under `if kdim == embed_dim`, kdim is embed_dim)."""
    return substituted(shape, {name: atom(other) for name, other in equal.items()})


def substituted(shape: Shape, subst: Mapping[str, Poly]) -> Shape:
    """`shape` with the symbols of `subst` replaced by their values (a `let`'s name by its value)."""
    if shape is None or not subst:
        return shape
    out = []
    for d in shape:
        if d == GROUP:
            out.append(d)
            continue
        total: Poly = constant(0)
        for monomial, c in text_poly(d):
            term = constant(c)
            for factor, k in monomial:
                for _ in range(k):
                    term = poly_mul(term, subst.get(factor) or atom(factor))
            total = poly_add(total, term)
        out.append(poly_text(total))
    return tuple(out)


def _operand(p: Poly) -> str:
    """`p`'s text as an operand of `//`: in parentheses unless it is a number or one symbol."""
    text = poly_text(p)
    return text if text.isidentifier() or text.isdigit() else f"({text})"


def poly_text(p: Poly) -> Dim:
    """The canonical spec text of a polynomial: terms with symbols in factor order, the constant last."""
    if not p:
        text = "0"
    else:
        parts: list[str] = []
        for m, c in sorted(p, key=lambda t: (t[0] == (), t[0])):
            # a quotient beside a coefficient, another factor, a power or a leading minus is parenthesised:
            # the text is read back as Python (`2 * (d // 4)`, not `2 * d // 4`, which is `(2 * d) // 4`)
            alone = len(m) == 1 and m[0][1] == 1 and (c == 1 or c == -1 and bool(parts))
            factors = [_factor(f, alone) if k == 1 else f"{_factor(f, False)} ** {k}" for f, k in m]
            body = " * ".join(([str(abs(c))] if abs(c) != 1 or not factors else []) + factors)
            if not parts:
                parts.append(body if c > 0 else f"-{body}")
            else:
                parts.append(f"{'+' if c > 0 else '-'} {body}")
        text = " ".join(parts)
    _POLYS.setdefault(text, p)
    return text


def _factor(f: str, alone: bool) -> str:
    """An opaque factor's text in a term: a quotient (`d // 4`, written without parentheses) in them
    unless it is the term."""
    return f if alone or " // " not in f or _wrapped(f) else f"({f})"


def _wrapped(text: str) -> bool:
    """Whether `text` is one parenthesised expression (`(a // b)`, not `(a // b) // c`)."""
    depth = 0
    for k, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return k == len(text) - 1 and ch == ")"
    return False


def text_poly(dim: Dim) -> Poly:
    """The polynomial of a dim this module wrote (an unknown text is one opaque factor)."""
    if dim in _POLYS:
        return _POLYS[dim]
    return constant(int(dim)) if dim.lstrip("-").isdigit() else atom(dim)


def dim_difference(a: Dim, b: Dim) -> int | None:
    """`a - b` when it is a constant (then the dims are equal exactly when it is 0); None otherwise."""
    return as_int(poly_add(text_poly(a), text_poly(b), -1))


def declared_shape(
    shape: N.Shape | None, name: str, subst: Mapping[str, Poly] | None = None, *, own_group: bool = False
) -> tuple[Dim, ...]:
    """The shape declared for input or tensor `name` (`subst` gives names such as lets a value); an input
    declared without one, or a member shaped by an `ints` argument, gets an opaque shape. With `own_group`,
    a `...` is `name`'s own `Group` (a derivation must tell two inputs' leading dims apart to sum each
    gradient back to its operand); without, the plain `GROUP`, equal to every group (the checker proves a
    shape by its dims after the group)."""
    if shape is None or shape.spread is not None:
        return (f"<{name}>",)
    group = Group([name]) if own_group else GROUP
    return tuple(group if isinstance(d, N.EllipsisItem) else dim_text(d, subst) for d in shape.dims)


def opaque(shape: Sequence[Dim]) -> bool:
    """Whether `shape` is the whole shape of an input declared without one (`<x>`)."""
    return any(d.startswith("<") for d in shape)


_opaque = opaque


# ------------------------------------------------------------------ rules


def broadcast(shapes: Iterable[Shape]) -> Shape:
    """The shape operands broadcast to (numbers, `()`, broadcast with anything); None when an operand's
    shape is unknown or two dims cannot be shown to broadcast (different symbols, or a `...` group against
    dims it may or may not cover)."""
    out: list[Dim] = []
    for shape in shapes:
        if shape is None:
            return None
        if not shape:
            continue
        if not out:
            out = list(shape)
            continue
        if GROUP in out and GROUP in shape and len(out) != len(shape):
            return None
        long, short = (out, list(shape)) if len(out) >= len(shape) else (list(shape), out)
        if GROUP in short and len(short) != len(long) or _opaque(short) and short != long:
            return None
        for i in range(1, len(short) + 1):
            joined = _joined(short[-i], long[-i])
            if joined is not None:
                long[-i] = joined
                continue
            if short[-i] != long[-i] and ONE not in (short[-i], long[-i]):
                return None
            if long[-i] == ONE:
                long[-i] = short[-i]
        out = long
    return tuple(out)


def matmul(a: Shape, b: Shape) -> Shape:
    """`a @ b` as torch.matmul computes it: a vector operand (1-D) loses its dim in the result, leading
    (batch) dims broadcast. The inner dims are assumed to agree (the result does not depend on them)."""
    if a is None or b is None or not a or not b or _opaque(a) or _opaque(b):
        return None
    if GROUP in b and len(b) < 3:
        return None  # `[..., k]` may be a vector or a stack of matrices
    if len(b) == 1:
        return a[:-1]  # a matrix (or a stack) times a vector; also vector · vector = ()
    if len(a) == 1:
        return b[:-2] + b[-1:]
    batch = broadcast([a[:-2], b[:-2]])
    return None if batch is None else batch + (a[-2], b[-1])


def reduce(shape: Shape, dims: Sequence[int] | None, keepdim: bool) -> Shape:
    """A reduction over `dims` (None: over every dim), which are dropped or, with `keepdim`, kept as 1."""
    if shape is None or _opaque(shape):
        return None
    if dims is None:
        if not keepdim:
            return ()
        return None if GROUP in shape else (ONE,) * len(shape)
    positions = [p for p in (_position(shape, d) for d in dims) if p is not None]
    if len(positions) < len(dims):
        return None
    out = list(shape)
    for p in sorted(set(positions), reverse=True):
        if keepdim:
            out[p] = ONE
        else:
            del out[p]
    return tuple(out)


def _position(shape: tuple[Dim, ...], dim: int) -> int | None:
    """Where `dim` (negative counts from the end) is in `shape`; None when it may fall in a `...` group. The
    dims before a group are counted from the start (`0` of `[T, ..., d]` is T), those after it from the end."""
    if GROUP in shape:
        group = shape.index(GROUP)
        return dim if 0 <= dim < group else len(shape) + dim if -(len(shape) - group) < dim < 0 else None
    if not -len(shape) <= dim < len(shape):
        return None
    return dim % len(shape)


def transpose(shape: Shape, dim0: int, dim1: int) -> Shape:
    """`shape` with two dims swapped."""
    if shape is None or _opaque(shape):
        return None
    p0, p1 = _position(shape, dim0), _position(shape, dim1)
    if p0 is None or p1 is None:
        return None
    out = list(shape)
    out[p0], out[p1] = out[p1], out[p0]
    return tuple(out)


def permute(shape: Shape, dims: Sequence[int]) -> Shape:
    """`shape`'s dims in the order `dims` gives."""
    if (
        shape is None
        or GROUP in shape
        or _opaque(shape)
        or sorted(d % max(len(shape), 1) for d in dims) != list(range(len(shape)))
    ):
        return None
    return tuple(shape[d] for d in dims)


def align(shape: Shape, new_axis: Sequence[bool]) -> Shape:
    """A broadcasting view `x[:, none]`: a size-1 dim where `new_axis` is true, the next dim of `shape`
    elsewhere; dims left over follow."""
    if shape is None or _opaque(shape) or sum(not n for n in new_axis) > len(shape):
        return None
    out, rest = [], list(shape)
    for new in new_axis:
        out.append(ONE if new else rest.pop(0))
    return tuple(out + rest)


def einsum(equation: str, shapes: Sequence[Shape]) -> Shape:
    """The result of `einsum(equation, operands)` (explicit `->` form, no `...`)."""
    inputs, arrow, output = equation.partition("->")
    specs = inputs.split(",")
    if not arrow or len(specs) != len(shapes):
        return None
    sizes: dict[str, Dim] = {}
    for spec, shape in zip(specs, shapes):
        if shape is None or GROUP in shape or _opaque(shape) or len(shape) != len(spec):
            return None
        sizes.update(zip(spec, shape))
    return tuple(sizes[c] for c in output) if all(c in sizes for c in output) else None


def show(shape: Shape) -> str:
    """`[B, n]` (`?` when unknown; `<x>` for the shape of an input declared without one)."""
    if shape is None:
        return "?"
    return shape[0] if len(shape) == 1 and opaque(shape) else "[" + ", ".join(shape) + "]"


KEEP = "-1"  # an expand() size that keeps the input's dim


def expand_sizes(items: Sequence[N.Expr]) -> list[Dim] | None:
    """An expand() call's target sizes as dims (`KEEP` for -1); None when one is not an int expression."""
    if not all(i.kind == "int" or isinstance(i, N.Num) for i in items):
        return None
    return [KEEP if _value(i) == -1 else dim_text(i) for i in items]


def expand_problem(shape: Shape, sizes: Sequence[Dim]) -> str | None:
    """What breaks torch's rule for `expand(x, sizes)`, if anything: aligned from the right, each size equals
    the input's dim, or the input's dim is 1, or it is -1 (keeps it); sizes before the input's dims add
    new leading dims, which -1 cannot give. Dims a `...` group may cover are not compared."""
    if shape is None or _opaque(shape):
        return None
    if len(sizes) < len(shape) and GROUP not in shape:
        given = f"{len(sizes)} size" + ("s" if len(sizes) != 1 else "")
        return f"{given} for {len(shape)} dims (expand() keeps every dim and may add leading ones)"
    for i, size in enumerate(reversed(sizes), start=1):
        if i > len(shape):
            if size == KEEP and GROUP not in shape:
                return "-1 at a new leading dim (it keeps an input dim; a new one needs its size)"
            continue
        dim = shape[-i]
        if dim == GROUP:
            return None
        if size not in (KEEP, dim) and dim != ONE:
            return f"size {size} at dim {len(sizes) - i} of an input whose dim there is {dim} (not 1)"
    return None


def expand(shape: Shape, sizes: Sequence[Dim]) -> Shape:
    """The shape of `expand(x, sizes)`: the sizes, -1 replaced by the input's dim (None where unknown)."""
    if KEEP not in sizes:
        return tuple(sizes)
    if shape is None or GROUP in shape or len(sizes) < len(shape):
        return None
    kept = [None] * (len(sizes) - len(shape)) + list(shape)
    out = [dim if size == KEEP else size for size, dim in zip(sizes, kept)]
    return None if None in out else tuple(d for d in out if d is not None)


def mismatch(a: Shape, b: Shape) -> tuple[Dim, Dim] | None:
    """The first pair of dims (from the right) that makes `a` and `b` fail to broadcast: neither equal
    nor 1. Dims a `...` group or an opaque shape may cover are not compared."""
    if a is None or b is None or _opaque(a) or _opaque(b):
        return None
    for i in range(1, min(len(a), len(b)) + 1):
        da, db = a[-i], b[-i]
        if GROUP in (da, db):
            return None
        if da != db and ONE not in (da, db):
            return da, db
    return None


def inner_dims(a: Shape, b: Shape) -> tuple[Dim, Dim] | None:
    """The two dims `a @ b` contracts (None when one may fall in a `...` group or is unknown)."""
    if a is None or b is None or not a or not b or _opaque(a) or _opaque(b):
        return None
    left = a[-1]
    if len(b) == 1:
        right = b[0]
    elif GROUP in b and len(b) < 3:
        return None
    else:
        right = b[-2]
    return None if GROUP in (left, right) else (left, right)


def position(shape: Shape, dim: int) -> int | None:
    """Where `dim` (negative counts from the end) is in `shape`; None when unknown or out of range."""
    if shape is None or _opaque(shape):
        return None
    return _position(shape, dim)


def in_range(shape: Shape, dim: int, extra: int = 0) -> bool:
    """Whether `dim` can name a dim of `shape` (of `shape` with `extra` more dims); true when unknown."""
    if shape is None or _opaque(shape) or GROUP in shape:
        return True
    rank = len(shape) + extra
    return -max(rank, 1) <= dim < max(rank, 1)


def flatten(shape: Shape, start: int, end: int) -> Shape:
    """`flatten(x, start, end)`: the dims start..end as one, their product."""
    if shape is None or _opaque(shape) or not shape:
        return None if shape is None or _opaque(shape) else (ONE,)
    p0, p1 = _position(shape, start), _position(shape, end)
    if p0 is None or p1 is None or p0 > p1 or GROUP in shape[p0 : p1 + 1]:
        return None
    product = constant(1)
    for d in shape[p0 : p1 + 1]:
        product = poly_mul(product, text_poly(d))
    return shape[:p0] + (poly_text(product),) + shape[p1 + 1 :]


def unsqueeze(shape: Shape, dim: int) -> Shape:
    if shape is None or _opaque(shape):
        return None
    if dim < 0:
        dim += len(shape) + 1
    if not 0 <= dim <= len(shape) or GROUP in shape[:dim]:
        return None
    return shape[:dim] + (ONE,) + shape[dim:]


def squeeze(shape: Shape, dim: int | None) -> Shape:
    """Size-1 dims dropped (only `dim` when given); None when a dim may or may not be 1."""
    if shape is None or _opaque(shape):
        return None
    if dim is None:
        if GROUP in shape or any(d != ONE and as_int(text_poly(d)) is None for d in shape):
            return None
        return tuple(d for d in shape if d != ONE)
    p = _position(shape, dim)
    if p is None:
        return None
    if shape[p] == ONE:
        return shape[:p] + shape[p + 1 :]
    return shape if as_int(text_poly(shape[p])) is not None else None


def concat(shapes: Sequence[Shape], dim: int, new: bool) -> Shape:
    """`cat` (`new`: `stack`) of operands that agree on every other dim (checked by `concat_mismatch`)."""
    if not shapes or any(s is None or _opaque(s) or GROUP in s for s in shapes):
        return None
    first = shapes[0]
    assert first is not None
    if new:
        stacked = unsqueeze(first, dim) if all(s == first for s in shapes) else None
        p = None if stacked is None else (dim if dim >= 0 else dim + len(stacked))
        return None if stacked is None or p is None else stacked[:p] + (str(len(shapes)),) + stacked[p + 1 :]
    p = _position(first, dim)
    if p is None or any(s is None or len(s) != len(first) for s in shapes):
        return None
    total = constant(0)
    for s in shapes:
        assert s is not None
        total = poly_add(total, text_poly(s[p]))
    return first[:p] + (poly_text(total),) + first[p + 1 :]


def concat_mismatch(shapes: Sequence[Shape], dim: int, new: bool) -> tuple[int, Shape, Shape] | None:
    """The first operand (its position) whose shape does not fit the first's for `cat`/`stack`."""
    known = [(k, s) for k, s in enumerate(shapes) if s is not None and not _opaque(s) and GROUP not in s]
    if len(known) < 2:
        return None
    k0, first = known[0]
    p = _position(first, dim)
    for k, s in known[1:]:
        if len(s) != len(first):
            return k, first, s
        if any(a != b for j, (a, b) in enumerate(zip(first, s)) if new or j != p):
            return k, first, s
    return None


def fft(name: str, shape: Shape, n: Dim | None, dim: int) -> Shape:
    """The size of a transform's last dim: `n` (or the input's), halved plus one for `rfft`, `2 (n - 1)`
    for `irfft`."""
    if shape is None or _opaque(shape):
        return None
    p = _position(shape, dim)
    if p is None:
        return None
    size = text_poly(n if n is not None else shape[p])
    if name == "rfft":
        out = poly_add(atom(f"{_operand(size)} // 2"), constant(1)) if as_int(size) is None else None
        out = out if out is not None else constant(as_int(size) // 2 + 1)  # type: ignore[operator]
    elif name == "irfft" and n is None:
        out = poly_mul(constant(2), poly_add(size, constant(-1)))
    else:
        out = size
    return shape[:p] + (poly_text(out),) + shape[p + 1 :]


def conv(inp: Shape, weight: Shape, stride: int, padding: int, dilation: int, spatial: int) -> Shape:
    """`conv1d`/`conv2d`: `[B, C, L...]` with weight `[O, C / groups, k...]` gives `[B, O, L'...]`,
    L' = (L + 2 padding - dilation (k - 1) - 1) // stride + 1."""
    if inp is None or weight is None or _opaque(inp) or _opaque(weight) or GROUP in weight:
        return None
    if len(weight) != spatial + 2 or len(inp) != spatial + 2 or GROUP in inp:
        return None
    sizes = []
    for size, k in zip(inp[2:], weight[2:]):
        span = poly_add(
            text_poly(size),
            poly_add(constant(2 * padding - 1), poly_mul(constant(-dilation), poly_add(text_poly(k), constant(-1)))),
        )
        if stride == 1:
            sizes.append(poly_text(poly_add(span, constant(1))))
        else:
            whole = as_int(span)
            quotient = constant(whole // stride) if whole is not None else atom(f"{_operand(span)} // {stride}")
            sizes.append(poly_text(poly_add(quotient, constant(1))))
    return (inp[0], weight[0], *sizes)


def _windows(size: Dim, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool = False) -> Dim | None:
    """How many windows of `kernel` (dilated, stride apart) fit in `size` padded on both sides: pooling's
    output size. With ceil_mode a last partial window counts if it starts inside the input or the left
    padding (decidable only for a known size)."""
    span = poly_add(text_poly(size), constant(2 * padding - dilation * (kernel - 1) - 1))
    whole = as_int(span)
    if whole is not None:
        if whole < 0:
            return None
        count = -(-whole // stride) + 1 if ceil_mode else whole // stride + 1
        if ceil_mode and (count - 1) * stride >= whole - padding + dilation * (kernel - 1) + 1:
            count -= 1  # the last window would start in the right padding
        return str(count)
    if ceil_mode and stride != 1:
        return None
    quotient = span if stride == 1 else atom(f"{_operand(span)} // {stride}")
    return poly_text(poly_add(quotient, constant(1)))


def _per_dim(value, spatial: int) -> list[int] | None:
    """A pooling or convolution argument for each of `spatial` dims: an int for all, or one each."""
    if type(value) is int:
        return [value] * spatial
    if isinstance(value, list) and len(value) == spatial and all(type(v) is int for v in value):
        return value
    return None


def pool(inp: Shape, spatial: int, kernel, stride, padding, dilation, ceil_mode) -> Shape:
    """max/avg/lp pooling over the last `spatial` dims of `[N, C, L...]` or `[C, L...]` (stride none: the
    kernel size)."""
    sizes = [_per_dim(v, spatial) for v in (kernel, kernel if stride is None else stride, padding, dilation)]
    if (
        inp is None
        or _opaque(inp)
        or len(inp) < spatial + 1
        or GROUP in inp[-spatial:]
        or not isinstance(ceil_mode, bool)
    ):
        return None
    kernels, strides, paddings, dilations = sizes
    if kernels is None or strides is None or paddings is None or dilations is None:
        return None
    out: list[Dim] = []
    for d, k, s, p, dil in zip(inp[-spatial:], kernels, strides, paddings, dilations):
        size = _windows(d, k, s, p, dil, ceil_mode)
        if size is None:
            return None
        out.append(size)
    return inp[:-spatial] + tuple(out)


def adaptive_pool(inp: Shape, spatial: int, output_size) -> Shape:
    """Adaptive pooling: the last `spatial` dims become output_size (an int for all, or one each; none
    keeps a dim)."""
    if inp is None or _opaque(inp) or len(inp) < spatial + 1 or GROUP in inp[-spatial:]:
        return None
    sizes = [output_size] * spatial if type(output_size) is int else output_size
    if not isinstance(sizes, list) or len(sizes) != spatial or not all(v is None or type(v) is int for v in sizes):
        return None
    return inp[:-spatial] + tuple(d if v is None else str(v) for d, v in zip(inp[-spatial:], sizes))


def fractional_pool(inp: Shape, spatial: int, output_size, output_ratio) -> Shape:
    """Fractional max pooling: the last `spatial` dims become output_size (an int for all, or one each), or
    int(size * output_ratio) where the size is known."""
    if inp is None or _opaque(inp) or len(inp) < spatial + 1 or GROUP in inp[-spatial:]:
        return None
    sizes = _per_dim(output_size, spatial)
    if sizes is not None:
        return inp[:-spatial] + tuple(str(v) for v in sizes)
    ratios = [output_ratio] * spatial if isinstance(output_ratio, (int, float)) else output_ratio
    if not isinstance(ratios, list) or len(ratios) != spatial:
        return None
    if not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ratios):
        return None
    known = [as_int(text_poly(d)) for d in inp[-spatial:]]
    if any(k is None for k in known):
        return None
    return inp[:-spatial] + tuple(str(int(k * r)) for k, r in zip(known, ratios) if k is not None)


def padded(inp: Shape, widths) -> Shape:
    """`pad(x, [left, right, top, bottom, ...])`: the last dim grows by the first pair, the one before by
    the second, and so on."""
    if inp is None or _opaque(inp) or not isinstance(widths, list) or len(widths) % 2:
        return None
    if not all(type(w) is int for w in widths) or len(widths) // 2 > len(inp) or GROUP in inp[-(len(widths) // 2) :]:
        return None
    out = list(inp)
    for k in range(len(widths) // 2):
        out[-1 - k] = poly_text(poly_add(text_poly(out[-1 - k]), constant(widths[2 * k] + widths[2 * k + 1])))
    return tuple(out)


def conv_transpose(inp: Shape, weight: Shape, spatial: int, stride, padding, output_padding, groups, dilation) -> Shape:
    """`[B, C, L...]` with weight `[C, O / groups, k...]` gives `[B, O, L'...]`,
    L' = (L - 1) stride - 2 padding + dilation (k - 1) + output_padding + 1."""
    strides, paddings, extra, dilations = (_per_dim(v, spatial) for v in (stride, padding, output_padding, dilation))
    if inp is None or weight is None or _opaque(inp) or _opaque(weight) or GROUP in weight or GROUP in inp:
        return None
    if len(weight) != spatial + 2 or len(inp) != spatial + 2 or type(groups) is not int:
        return None
    if strides is None or paddings is None or extra is None or dilations is None:
        return None
    sizes = []
    for size, k, s, p, op, d in zip(inp[2:], weight[2:], strides, paddings, extra, dilations):
        grown = poly_add(poly_mul(poly_add(text_poly(size), constant(-1)), constant(s)), constant(op + 1 - 2 * p - d))
        sizes.append(poly_text(poly_add(grown, poly_mul(constant(d), text_poly(k)))))
    return (inp[0], poly_text(poly_mul(constant(groups), text_poly(weight[1]))), *sizes)


def _spatial_dims(op: Op) -> int:
    """How many dims a pooling row pools: the k of `max_pool{k}d`, `max_pool{k}d_indices`, `..._with_indices`."""
    return int(op.name.removesuffix("_indices").removesuffix("_with")[-2])


def parts(op: Op, args: Mapping[str, N.Expr], inp: Shape) -> tuple[list[Shape] | None, str | None]:
    """chunk/split: the shape of each part (None when not known here), or why the dim does not cut so."""
    dim = _literal(op, args, "dim")
    p = None if inp is None or _opaque(inp) or type(dim) is not int else _position(inp, dim)
    if inp is None or p is None:
        return None, None
    size, whole = text_poly(inp[p]), as_int(text_poly(inp[p]))
    if op.name == "chunk":
        chunks = _literal(op, args, "chunks")
        if type(chunks) is not int or chunks < 1:
            return None, None
        if whole is not None and whole % chunks:
            return None, f"dim {dim} has size {whole}, which does not cut into {chunks} equal parts"
        if not all(c % chunks == 0 for _, c in size):
            return None, f"dim {dim} has size {inp[p]}, which does not cut into {chunks} equal parts"
        sizes = [tuple((m, c // chunks) for m, c in size)] * chunks
    else:
        sections = args.get("sizes")
        if isinstance(sections, N.ListExpr) and all(i.kind == "int" or isinstance(i, N.Num) for i in sections.items):
            sizes = [text_poly(dim_text(i)) for i in sections.items]
            total: Poly = constant(0)
            for part in sizes:
                total = poly_add(total, part)
            if total != size:
                return None, f"the parts add up to {poly_text(total)}, dim {dim} has size {inp[p]}"
        elif (step := _literal(op, args, "sizes")) is not None and type(step) is int and step > 0 and whole is not None:
            sizes = [constant(min(step, whole - k)) for k in range(0, whole, step)]
        else:
            return None, None
    return [inp[:p] + (poly_text(part),) + inp[p + 1 :] for part in sizes], None


def halved(inp: Shape, dim) -> Shape:
    """glu: the two halves of `dim` make one."""
    if inp is None or _opaque(inp) or type(dim) is not int:
        return None
    p = _position(inp, dim)
    if p is None:
        return None
    size = text_poly(inp[p])
    if all(c % 2 == 0 for _, c in size):  # `2 * n` halves to `n`
        half = tuple((m, c // 2) for m, c in size)
    else:
        whole = as_int(size)
        half = constant(whole // 2) if whole is not None else atom(f"{_operand(size)} // 2")
    return inp[:p] + (poly_text(half),) + inp[p + 1 :]


# ------------------------------------------------------------------ operations and expressions


def op_shape(
    op: Op, args: Mapping[str, N.Expr], shape_of: Callable[[N.Expr], Shape], items: Sequence | None = None
) -> Shape:
    """The shape of operation `op` applied to `args` (parameter name -> operand; absent ones take their
    defaults). `shape_of` gives an operand's shape; `items` are an `align` view's subscript items."""
    if op.shape == "elementwise":
        return broadcast(shape_of(args[p.name]) for p in op.params if p.tensor and p.name in args)
    if op.shape == "softmax":
        return shape_of(args["input"])
    if op.shape == "reduce":
        dims, keepdim = _literal(op, args, "dim"), _literal(op, args, "keepdim")
        if dims == [] and op.name in ("amax", "amin"):
            dims = None  # torch reduces over every dim
        if not isinstance(keepdim, bool) or not _dims(dims):
            return None
        return reduce(shape_of(args["input"]), None if dims is None else _as_list(dims), keepdim)
    if op.shape == "matmul":
        return matmul(shape_of(args["input"]), shape_of(args["other"]))
    if op.shape == "transpose":
        d0, d1 = _literal(op, args, "dim0"), _literal(op, args, "dim1")
        if not (type(d0) is int and type(d1) is int):
            return None
        return transpose(shape_of(args["input"]), d0, d1)
    if op.name == "align" and items is not None:
        return align(shape_of(args["input"]), [isinstance(i, N.NoneLit) for i in items])
    if op.name == "permute":
        dims = _literal(op, args, "dims")
        return permute(shape_of(args["input"]), dims) if isinstance(dims, list) and _dims(dims) else None
    if op.name == "einsum":
        equation, operands = args.get("equation"), args.get("operands")
        if not (isinstance(equation, N.Str) and isinstance(operands, N.ListExpr)):
            return None
        return einsum(equation.value, [shape_of(o) for o in operands.items])
    if op.name == "flatten":
        start, end = _literal(op, args, "start_dim"), _literal(op, args, "end_dim")
        return flatten(shape_of(args["input"]), start, end) if type(start) is int and type(end) is int else None
    if op.name in ("unsqueeze", "squeeze"):
        dim = _literal(op, args, "dim")
        if op.name == "unsqueeze":
            return unsqueeze(shape_of(args["input"]), dim) if type(dim) is int else None
        return squeeze(shape_of(args["input"]), dim) if dim is None or type(dim) is int else None
    if op.name == "expand" and isinstance(args.get("size"), N.ListExpr):
        sizes = expand_sizes(args["size"].items)  # type: ignore[attr-defined]
        return expand(shape_of(args["input"]), sizes) if sizes is not None else None
    if op.name == "new_zeros" and isinstance(args.get("size"), N.ListExpr):
        sizes = args["size"].items  # type: ignore[attr-defined]
        return tuple(dim_text(i) for i in sizes) if all(i.kind == "int" for i in sizes) else None
    if op.name == "reshape" and isinstance(args.get("shape"), N.ListExpr):
        items = args["shape"].items  # type: ignore[attr-defined]
        if all(i.kind == "int" or isinstance(i, N.Num) for i in items) and not any(_value(i) == -1 for i in items):
            return tuple(dim_text(i) for i in items)
        return None
    if op.shape == "concat":
        dim, tensors = _literal(op, args, "dim"), args.get("tensors")
        if type(dim) is not int or not isinstance(tensors, N.ListExpr):
            return None
        return concat([shape_of(t) for t in tensors.items], dim, new=op.name == "stack")
    if op.shape == "fft":
        dim, n = _literal(op, args, "dim"), args.get("n")
        if type(dim) is not int:
            return None
        size = None if n is None or isinstance(n, N.NoneLit) else dim_text(n)
        return fft(op.name, shape_of(args["input"]), size, dim)
    if op.shape == "loss":
        return _loss(op, args, shape_of)
    if op.shape == "conv":
        values = [_literal(op, args, k) for k in ("stride", "padding", "dilation", "groups")]
        if not all(type(v) is int for v in values):
            return None
        stride, padding, dilation, _ = values
        return conv(shape_of(args["input"]), shape_of(args["weight"]), stride, padding, dilation, int(op.name[4]))
    if op.shape in ("pool", "adaptive_pool", "conv_transpose"):
        return _pooling_shape(op, args, shape_of)
    if op.shape == "fractional_pool":
        spatial = _spatial_dims(op)
        size, ratio = _literal(op, args, "output_size"), _literal(op, args, "output_ratio")
        return fractional_pool(shape_of(args["input"]), spatial, size, ratio)
    if op.shape == "pad":
        return padded(shape_of(args["input"]), _literal(op, args, "pad"))
    if op.shape == "glu":
        return halved(shape_of(args["input"]), _literal(op, args, "dim"))
    if op.name in ("slice", "select"):
        return _one_dim_index(op, args, shape_of(args["input"]))
    if op.shape in INDEX_RULES or op.name == "unflatten":
        return _indexing(op, args, shape_of)
    if op.name in ("sum_to", "expand_reduced"):
        return shape_of(args["input"])  # the gradient takes its input's shape
    if op.name == "reduced_view":  # a reduction's gradient with the reduced dims back as size 1
        dims = _literal(op, args, "dim")
        if dims is None:
            return shape_of(args["grad"])  # nothing to restore: the view is the gradient itself
        return reduce(shape_of(args["input"]), _as_list(dims), keepdim=True) if _dims(dims) else None
    return None


def window_problem(op: Op, args: Mapping[str, N.Expr], shape_of: Callable[[N.Expr], Shape]) -> tuple[str, str] | None:
    """(message, hint) when a pooling window, a padding or glu's halving cannot fit the input's known sizes."""
    inp = shape_of(args["input"])
    if inp is None or _opaque(inp):
        return None
    if op.shape == "glu":
        dim = _literal(op, args, "dim")
        p = _position(inp, dim) if type(dim) is int else None
        size = as_int(text_poly(inp[p])) if p is not None else None
        if size is not None and size % 2:
            return f"glu halves dim {dim}, of odd size {size}", "glu splits input into two equal halves along dim"
        return None
    if op.shape == "pad":
        widths = _literal(op, args, "pad")
        if isinstance(widths, list) and len(widths) % 2:
            return (
                f"pad takes pairs of widths, got {len(widths)}",
                "(left, right) for the last dim, then the one before",
            )
        return None
    if op.shape != "pool":
        return None
    spatial = _spatial_dims(op)
    kernel = _per_dim(_literal(op, args, "kernel_size"), spatial)
    padding = _per_dim(_literal(op, args, "padding"), spatial)
    dilation = _per_dim(_literal(op, args, "dilation"), spatial) if op.param("dilation") else [1] * spatial
    if kernel is None or padding is None or dilation is None or len(inp) < spatial + 1 or GROUP in inp[-spatial:]:
        return None
    for k, p, d, dim_size in zip(kernel, padding, dilation, inp[-spatial:]):
        if k < 1:
            return f"a kernel size must be positive, got {k}", "a window covers at least one element"
        if p > k // 2:
            return f"padding {p} is more than half the kernel size {k}", "torch pads at most half a window"
        known = as_int(text_poly(dim_size))
        if known is not None and known + 2 * p < d * (k - 1) + 1:
            return (
                f"a window of {d * (k - 1) + 1} does not fit a dim of size {known} padded by {p}",
                "make the input larger or the kernel smaller",
            )
    return None


def _pooling_shape(op: Op, args: Mapping[str, N.Expr], shape_of: Callable[[N.Expr], Shape]) -> Shape:
    """Pooling (`max_pool2d`, `adaptive_avg_pool1d`, ...) and transposed convolution: the digit before the
    final `d` of the name is the number of spatial dims."""
    spatial = _spatial_dims(op)
    value = {p.name: _literal(op, args, p.name) for p in op.params if not p.tensor}
    inp = shape_of(args["input"])
    if op.shape == "adaptive_pool":
        return adaptive_pool(inp, spatial, value["output_size"])
    if op.shape == "conv_transpose":
        names = ("stride", "padding", "output_padding", "groups", "dilation")
        return conv_transpose(inp, shape_of(args["weight"]), spatial, *(value[n] for n in names))
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
    return pool(inp, spatial, *(value.get(n, 1 if n == "dilation" else 0) for n in names))


def _loss(op: Op, args: Mapping[str, N.Expr], shape_of: Callable[[N.Expr], Shape]) -> Shape:
    """A loss: a scalar for the reductions "mean" and "sum"; for "none", one value per sample: the input
    without its class dim (dim 1, or the only one), without its last dim (the multi-label and margin losses:
    a row of class scores), log_probs without its time and class dims (ctc_loss), or the broadcast of input
    and target (gaussian_nll_loss). None when the reduction is known only at run time."""
    given = args.get("reduction")
    param = op.param("reduction")
    if isinstance(given, N.Str):
        reduction = given.value
    elif given is None and param is not None and param.default is not None:
        reduction = param.default.strip('"')
    else:
        return None
    if reduction in ("mean", "sum"):
        return ()
    if reduction != "none":
        return None
    if op.name == "gaussian_nll_loss":
        return broadcast([shape_of(args["input"]), shape_of(args["target"])])
    shape = shape_of(args["log_probs" if op.name == "ctc_loss" else "input"])
    if shape is None or _opaque(shape):
        return None
    if op.name == "ctc_loss":  # log_probs [T, N, C] -> [N]; unbatched [T, C] -> []
        if GROUP in shape or len(shape) not in (2, 3):
            return None
        return shape[1:2] if len(shape) == 3 else ()
    if op.name in ("cross_entropy", "nll_loss"):
        if GROUP not in shape and len(shape) == 1:
            return ()
        p = _position(shape, 1)
        return None if p is None else shape[:p] + shape[p + 1 :]
    p = _position(shape, -1)
    return None if p is None else shape[:p]


LOSS_REDUCTIONS = ("mean", "sum", "none")


def loss_problem(
    op: Op, args: Mapping[str, N.Expr], shape_of: Callable[[N.Expr], Shape]
) -> tuple[N.Expr | None, str, str] | None:
    """What is statically wrong with a loss call, as (the argument at fault, message, hint): a reduction
    that is not "mean", "sum" or "none", or (cross_entropy, nll_loss) a class-index target whose shape is
    not the input's without its class dim."""
    given = args.get("reduction")
    if isinstance(given, N.Str) and given.value not in LOSS_REDUCTIONS:
        return (
            given,
            f'reduction "{given.value}" is not one of "mean", "sum", "none"',
            'reduction is "mean", "sum" or "none"',
        )
    if op.name not in ("cross_entropy", "nll_loss"):
        return None
    inp, target = shape_of(args["input"]), shape_of(args["target"])
    if inp is None or target is None or _opaque(inp) or _opaque(target) or GROUP in inp or GROUP in target:
        return None
    if op.name == "cross_entropy" and len(target) == len(inp):
        return None  # class probabilities: broadcast with input (checked like an elementwise operation)
    per_sample = inp[:1] + inp[2:] if len(inp) > 1 else ()
    if target != per_sample:
        return (
            args["target"],
            f"target is {show(target)} but input {show(inp)} takes class indices of shape {show(per_sample)}",
            "the target has the input's shape without its class dim (dim 1)",
        )
    return None


def _one_dim_index(op: Op, args: Mapping[str, N.Expr], shape: Shape) -> Shape:
    """`slice` (a dim sized by its bounds) or `select` (a dim dropped) along one dim."""
    dim = _literal(op, args, "dim")
    if shape is None or _opaque(shape) or type(dim) is not int:
        return None
    p = _position(shape, dim)
    if p is None:
        return None
    if op.name == "select":
        return shape[:p] + shape[p + 1 :]
    size = slice_size(args.get("start"), args.get("end"), args.get("step"), shape[p])
    return None if size is None else shape[:p] + (size,) + shape[p + 1 :]


INDEX_RULES = ("gather", "scatter", "index_select", "one_hot", "arange", "embedding", "index")


def _indexing(op: Op, args: Mapping[str, N.Expr], shape_of: Callable[[N.Expr], Shape]) -> Shape:
    """The ops that pick or place elements by an index tensor, and the ones that make indices."""
    if op.shape == "arange":
        return arange(args.get("start"), args.get("end"), args.get("step"))
    if op.shape == "one_hot":
        n = args.get("num_classes")
        inp = shape_of(args["input"])
        if inp is None or _opaque(inp) or n is None or _value(n) == -1 or n.kind not in ("int", "unknown"):
            return None  # -1: the largest class index plus one, known only at run time
        return inp + (dim_text(n),)
    if op.shape == "embedding":
        inp, weight = shape_of(args["input"]), shape_of(args["weight"])
        if inp is None or weight is None or _opaque(inp) or _opaque(weight) or len(weight) != 2:
            return None
        return inp + (weight[1],)
    if op.shape in ("gather", "scatter"):  # gather: index's shape; scatter: input's
        return shape_of(args["index" if op.shape == "gather" else "input"])
    dim = _literal(op, args, "dim")
    inp = shape_of(args["input"])
    if inp is None or _opaque(inp) or type(dim) is not int:
        return None
    p = _position(inp, dim)
    if p is None:
        return None
    if op.name == "unflatten":
        sizes = args.get("sizes")
        if not isinstance(sizes, N.ListExpr) or any(_value(i) == -1 for i in sizes.items):
            return None
        product = constant(1)
        for i in sizes.items:
            product = poly_mul(product, poly(i))
        if product != text_poly(inp[p]):
            return None  # `[2, n // 2]` splits n only when n is even: known at run time
        return inp[:p] + tuple(dim_text(i) for i in sizes.items) + inp[p + 1 :]
    index = shape_of(args["index"])
    if index is None or _opaque(index) or GROUP in index:
        return None
    return inp[:p] + index + inp[p + 1 :]  # index_select (a 1-d index) and one tensor index at dim


def arange(start: N.Expr | None, end: N.Expr | None, step: N.Expr | None) -> Shape:
    """`arange(n)`: [n]; `arange(a, b)`: [b - a]; another step: known at run time."""
    if step is not None and not isinstance(step, N.NoneLit) and _value(step) != 1:
        return None
    if isinstance(end, N.NoneLit):  # as a derived backward's tape gives the default
        end = None
    if start is None or any(
        e is not None and e.kind != N.Kind.INT and not (isinstance(e, N.Num) and type(e.value) is int)
        for e in (start, end)
    ):
        return None
    if end is None:
        return (dim_text(start),)
    return (poly_text(poly_add(poly(end), poly(start), -1)),)


def slice_size(lower: N.Expr | None, upper: N.Expr | None, step: N.Expr | None, dim: Dim) -> Dim | None:
    """The size of `[lower:upper:step]` over a dim of size `dim`: None when the step is not 1 or a bound
    may pass the end (then the size is known only at run time)."""
    if step is not None and not isinstance(step, N.NoneLit) and not (isinstance(step, N.Num) and step.value == 1):
        whole = all(b is None or isinstance(b, N.NoneLit) for b in (lower, upper))
        if not (whole and isinstance(step, N.Num) and type(step.value) is int and step.value > 1):
            return None
        last = poly_add(text_poly(dim), constant(-1))  # `[::s]` keeps (dim - 1) // s + 1 elements
        known = as_int(last)
        quotient = constant(known // step.value) if known is not None else atom(f"{_operand(last)} // {step.value}")
        return poly_text(poly_add(quotient, constant(1)))
    size = text_poly(dim)

    def bound(e: N.Expr | None, default: Poly) -> Poly | None:
        if e is None or isinstance(e, N.NoneLit):
            return default
        if e.kind not in ("int", "unknown") and not isinstance(e, N.Num):
            return None
        p = poly(e)
        value = as_int(p)
        return poly_add(size, p) if value is not None and value < 0 else p

    low, high = bound(lower, constant(0)), bound(upper, size)
    if low is None or high is None or not _at_most(high, dim):
        return None
    if not (_at_least_zero(low) and _at_least_zero(poly_add(high, low, -1))):
        return None  # torch clamps a bound before the start or past the other: `x[-10:]` on 5 keeps 5, not 10
    return poly_text(poly_add(high, low, -1))


def _at_least_zero(p: Poly) -> bool:
    """Whether `p` is provably >= 0 for dims of at least 1 (the slice `x[1:]` of a dim `n` keeps `n - 1`):
    a constant >= 0, or positive coefficients whose sum with the constant is >= 0. A term with a quotient
    or remainder (`n // 2`, 0 for n = 1) counts as 0, not 1: `x[::3]` of a dim B keeps `(B - 1) // 3 + 1`,
    so `x[::3][-2:]` keeps 2 only for B >= 4 (torch keeps what there is)."""
    value = as_int(p)
    if value is not None:
        return value >= 0
    terms = dict(p)
    rest = [c for m, c in terms.items() if m != ()]
    least = sum(c for m, c in terms.items() if m != () and not any(_may_be_zero(name) for name, _ in m))
    return all(c > 0 for c in rest) and terms.get((), 0) + least >= 0


def _may_be_zero(factor: str) -> bool:
    """Whether an opaque factor may be 0 for dims of at least 1: a quotient or a remainder."""
    return " // " in factor or " % " in factor


def _at_most(bound: Poly, dim: Dim) -> bool:
    """Whether a slice bound is provably at most `dim` (dims are never negative): `dim - c` with c >= 0,
    a constant no larger than a constant dim, a multiple of a dim no larger than its multiple (`n` of
    `4 * n`), or `dim // c`."""
    gap = dict(poly_add(text_poly(dim), bound, -1))  # dim - bound: no term of it negative
    if all(c >= 0 for c in gap.values()):
        return True
    head, _, divisor = poly_text(bound).rpartition(" // ")
    return head in (dim, f"({dim})") and divisor.isdigit() and int(divisor) >= 1


def expr_shape(e: N.Expr, env: Mapping[str, Shape], sub: Callable[[N.Expr], Shape] | None = None) -> Shape:
    """The shape of IR expression `e`, given the shapes of the tensors it names (a name missing from `env`
    has an unknown shape). Numbers have the shape `()`. `sub`, when given, gives the shapes of `e`'s
    sub-expressions (a memo of them: `optimize.statements.MemoShapes`)."""

    def shape_of(x: N.Expr) -> Shape:
        return expr_shape(x, env) if sub is None else sub(x)

    if e.kind in ("int", "float", "bool"):
        return ()
    match e:
        case N.Name(id=name) if e.kind == "tensor":
            return env.get(name)
        case N.Name() | N.Num() | N.Bool():
            return ()
        case N.BinOp(op="@", left=left, right=right):
            return matmul(shape_of(left), shape_of(right))
        case N.BinOp(left=left, right=right):
            return broadcast([shape_of(left), shape_of(right)])
        case N.Compare(operands=operands):
            return broadcast(shape_of(o) for o in operands)
        case N.UnaryOp(operand=operand) | N.InPlace(target=operand):
            return shape_of(operand)
        case N.Call(func=func) if func in OPS and not e.sub:
            return op_shape(OPS[func], call_args(OPS[func], e), shape_of, e.items)
    return None


def call_args(op: Op, call: N.Call) -> dict[str, N.Expr]:
    """A call's operands by parameter name: positional ones in signature order, then the keywords."""
    args = {p.name: a for p, a in zip(op.params, call.args)}
    args.update((k.name, k.value) for k in call.kwargs)
    return args


_VARIABLE = object()  # an argument whose value is not known statically


def literal(op: Op, args: Mapping[str, N.Expr], name: str):
    """A constant argument as a Python value (a list for a list), its default when absent; otherwise a
    marker that is neither None, an int, a bool nor a list."""
    return _literal(op, args, name)


def _literal(op: Op, args: Mapping[str, N.Expr], name: str):
    """A constant argument as a Python value (a list for a list), its default when absent, else `_VARIABLE`."""
    if name in args:
        return _value(args[name])
    p = op.param(name)
    default = p.default if p is not None else None
    literals: dict[str, object] = {"none": None, "true": True, "false": False, "[]": []}
    if default in literals:
        return literals[default]
    return int(default) if default is not None and default.lstrip("-").isdigit() else _VARIABLE


def _value(e: N.Expr):
    match e:
        case N.Num(value=v) | N.Bool(value=v):
            return v
        case N.NoneLit():
            return None
        case N.UnaryOp(op="-", operand=N.Num(value=v)):
            return -v
        case N.ListExpr(items=items):
            values = [_value(i) for i in items]
            return _VARIABLE if any(v is _VARIABLE for v in values) else values
    return _VARIABLE


def _dims(dims) -> bool:
    """Whether `dims` is None, an int or a list of ints (a constant `dim` argument)."""
    return dims is None or type(dims) is int or isinstance(dims, list) and all(type(d) is int for d in dims)


def _as_list(dims: int | list[int]) -> list[int]:
    return dims if isinstance(dims, list) else [dims]
