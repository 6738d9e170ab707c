"""Evaluating constant expressions: dims, lets and conditions, given the values of the names they use.

What a construction expression may be (literals, `pi`, `inf`, arguments, lets, dims, arithmetic,
comparisons, `and`/`or`/`not` and the operations that have a spelling on numbers) is computed here
with Python's own arithmetic, as the generated module would compute it: an operation on numbers by the
very Python form the generated code writes (its row's `scalar_template`: torch's nan and inf where `math`
raises), so that the checker's values are the module's.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import statements, walk
from layerdsl.language.number_forms import specialised
from layerdsl.language.ops import CALLABLE, OPS, Op, filled
from layerdsl.language.tables import CONSTANTS


class NotConstant(ValueError):
    """The expression cannot be evaluated from the values given (an unknown name, a tensor operation,
    a division by zero, ...)."""


def evaluate(expr: N.Expr, env: Mapping[str, Any]) -> Any:
    """The value of `expr`, its names taken from `env` (then from the constants `pi` and `inf`)."""
    match expr:
        case N.Num(value=v) | N.Str(value=v) | N.Bool(value=v):
            return v
        case N.NoneLit():
            return None
        case N.IfExp(cond=c, then=a, orelse=b):
            return evaluate(a, env) if evaluate(c, env) else evaluate(b, env)
        case N.ListExpr(items=items):
            return tuple(evaluate(i, env) for i in items)
        case N.Name(id=i):
            if i in env:
                return env[i]
            if i in CONSTANTS:
                return getattr(math, i)
            raise NotConstant(f"no value for '{i}'")
        case N.UnaryOp(op=op, operand=o):
            v = evaluate(o, env)
            return -v if op == "-" else +v
        case N.Not(operand=o):
            return not evaluate(o, env)
        case N.BoolOp(op="and", left=l, right=r):
            return evaluate(l, env) and evaluate(r, env)
        case N.BoolOp(op="or", left=l, right=r):
            return evaluate(l, env) or evaluate(r, env)
        case N.BinOp(op=op, left=l, right=r) if op in _BINARY:
            if op in OPERATOR_ROWS and not written_plainly(expr):
                row = OPERATOR_ROWS[op]
                return _number_function(row.name, number_form(row, [l, r]))(evaluate(l, env), evaluate(r, env))
            try:
                return _bounded(_BINARY[op](evaluate(l, env), evaluate(r, env)))
            except ZeroDivisionError:
                raise NotConstant("division by zero") from None
        case N.Compare(ops=ops, operands=operands):
            values = [evaluate(o, env) for o in operands]
            if None in values and set(ops) <= {"==", "!="}:  # `momentum == none`
                return all((a is b) == (op == "==") for op, a, b in zip(ops, values, values[1:]))
            return all(_COMPARE[op](a, b) for op, a, b in zip(ops, values, values[1:]))
        case N.Call(func=f, args=args, kwargs=[], sub=False) if f in CALLABLE and CALLABLE[f].scalar:
            values = [evaluate(a, env) for a in args]
            if CALLABLE[f].scalar_template is not None and not written_as_math(expr):
                return _number_function(f, number_form(CALLABLE[f], args))(*values)
            try:
                return _math_function(f)(*values)
            except (ValueError, OverflowError) as e:  # a negative count: the generated code raises too
                raise NotConstant(f"{CALLABLE[f].scalar}() of {values}: {e}") from None
    raise NotConstant("not a constant expression")


def example_seeds(layer: N.Layer) -> list[dict[str, N.Expr]]:
    """The configurations a layer's `example(...)` lines give, the first line's first: a later line gives
    what differs from the first (the rest is the first's), and a value written as a list (`n = [3, 8]`)
    gives one configuration per item (several lists: every combination). Repeats are left out."""
    lines: dict[int, dict[str, N.Expr]] = {}
    for ex in layer.examples:
        lines.setdefault(ex.group, {})[ex.name] = ex.value
    first = lines.pop(min(lines), {}) if lines else {}
    seeds, seen = [], set()
    for line in [first, *(lines[g] for g in sorted(lines))]:
        given = first | line
        choices = [example_choices(layer, name, v) for name, v in given.items()]
        for values in itertools.product(*choices):
            seed = dict(zip(given, values))
            key = tuple((name, spec_text(value)) for name, value in seed.items())
            if key not in seen:
                seen.add(key)
                seeds.append(seed)
    return seeds


def example_choices(layer: N.Layer, name: str, value: N.Expr) -> list[N.Expr]:
    """The values an example's `name = value` gives: the items of a list, except where the list is itself
    the value (an `ints` argument's `[2, 3]`; several of those are a list of lists)."""
    if not isinstance(value, N.ListExpr):
        return [value]
    arg = layer.arg(name)
    if arg is not None and arg.base_type == "ints" and not any(isinstance(i, N.ListExpr) for i in value.items):
        return [value]
    return list(value.items)


def seed_differences(seed: Mapping[str, N.Expr], first: Mapping[str, N.Expr]) -> list[tuple[str, str]]:
    """What an example gives differently from the first: (name, value as spec text)."""
    return [(k, spec_text(v)) for k, v in seed.items() if k not in first or spec_text(v) != spec_text(first[k])]


def example_values(layer: N.Layer, seed: Mapping[str, N.Expr] | None = None) -> dict[str, Any]:
    """The values an example gives (the first, unless `seed` is one of `example_seeds`): argument
    defaults, then its values, then the lets computed from those (a value that cannot be computed is left out)."""
    env: dict[str, Any] = {}
    for a in layer.args:
        if a.default is not None:
            _put(env, a.name, a.default)
    for name, value in (example_seeds(layer)[0] if seed is None else seed).items():
        _put(env, name, value)
    for let in layer.lets:
        _put(env, let.name, let.value)
    return env


def _put(env: dict[str, Any], name: str, expr: N.Expr) -> None:
    try:
        env[name] = evaluate(expr, env)
    except (NotConstant, ArithmeticError, TypeError):
        pass


def written_as_math(call: N.Call) -> bool:
    """Whether the generated code writes an operation on numbers that has a `scalar_template` by its plain
    `math` spelling: where the operand is in that function's domain whatever values the arguments take (a
    constant this computes; an int is a count or a size, never negative), as torch's own modules write
    `1 / math.sqrt(fan_in)`. Elsewhere the template gives torch's nan and inf where `math` raises."""
    if call.func in ("maximum", "minimum"):  # Python's max and min, where no operand can be nan
        return all(_never_nan(a) for a in call.args)
    if len(call.args) != 1 or call.func not in CALLABLE:
        return False
    operand = call.args[0]
    try:
        value = evaluate(operand, {})
    except (NotConstant, ArithmeticError, TypeError, ValueError):
        in_domain = _IN_DOMAIN.get(call.func)
        return in_domain is not None and in_domain(operand)
    try:
        _math_function(call.func)(value)
    except (ValueError, OverflowError, TypeError):
        return False
    return True


def written_plainly(e: N.BinOp) -> bool:
    """Whether the generated code writes an operation on numbers by its Python operator, not its row's
    `scalar_template` (torch's inf and nan where Python raises or gives a complex number): an operation on a
    tensor; one on constants Python computes; `//` and `%` of ints (torch's integer division by zero raises
    too); `/`, `//` and `%` by a count, and `**` of a count (`count`): a zero count there raises Python's
    ZeroDivisionError, as a negative one under `sqrt` raises math's error; `**` to a whole number >= 0
    (`_natural`); and one whose form, specialised on its constant operands, is the operator (`a / -2.0`)."""
    if e.op not in OPERATOR_ROWS or e.kind not in (N.Kind.INT, N.Kind.FLOAT):
        return True
    try:
        value = _BINARY[e.op](evaluate(e.left, {}), evaluate(e.right, {}))
    except (NotConstant, ArithmeticError, TypeError, ValueError):
        pass
    else:
        return not isinstance(value, complex)
    if e.op in ("//", "%") and _whole(e.left) and _whole(e.right):  # ints never inf nor nan: Python's int division
        return True
    if count(e.left if e.op == "**" else e.right) or (e.op == "**" and _natural(e.right)):
        return True
    row = OPERATOR_ROWS[e.op]
    return number_form(row, [e.left, e.right]) == f"{{{row.params[0].name}^}} {e.op} {{{row.params[1].name}^}}"


def _natural(e: N.Expr) -> bool:
    """Whether `e` is a whole number >= 0: an int (a count), or a constant such as `2` or `2.0`. A power of
    it never is complex nor divides by zero: it differs from torch's only past the largest float, where
    Python raises OverflowError (the let's line named) and torch gives inf, as `a ** 2` in torch's own
    modules raises."""
    value = _constant(e)
    if value is None:
        return counted_int(e)
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0 and float(value).is_integer()


def number_form(op: Op, args: list[N.Expr]) -> str:
    """The Python form an operation on numbers is written by: its row's `scalar_template` with the conditions
    its constant operands decide folded (`language/number_forms.py`), the generated code's and the checker's."""
    assert op.scalar_template is not None, "an operation with a template"
    values = {p.name: _constant(a) for p, a in zip(op.params, args)}
    return specialised(op.scalar_template, {name: v for name, v in values.items() if v is not None})


def _constant(e: N.Expr) -> Any:
    """The value of `e` where it is a constant (a literal, `pi`, what operations make of them), else None."""
    try:
        return evaluate(e, {})
    except (NotConstant, ArithmeticError, TypeError, ValueError):
        return None


def count(e: N.Expr) -> bool:
    """Whether `e` is a count or a size (an int: never negative), a number > 0, or what `sqrt`, `abs`, `+`,
    `*`, `/` and `**` make of those: a number that is zero only where a count is."""
    match e:
        case N.Num(value=v):
            return v > 0
        case N.Name(id=i) if i in CONSTANTS and e.ref in (N.Ref.CONST, N.Ref.UNRESOLVED):
            return True
        case N.BinOp(op="+" | "*" | "/" | "**", left=l, right=r):
            return count(l) and count(r)
        case N.Call(func="sqrt" | "abs" | "floor" | "ceil", args=[a]):  # floor of a float: an int, not a count
            return count(a)
    return counted_int(e)


def counted_int(e: N.Expr) -> bool:
    """Whether `e` is an int that is a count or a size: never negative, inf nor nan. Int arguments and dims are
    (torch's own modules take an int argument for a count: `nn.Linear(-3, 2)` raises), int literals >= 0, an
    int let or local whose every definition is one (`mark_counts`), `size(...)`, and what `+`, `*`, `//`, `%`,
    `**`, `abs`, `maximum`, `minimum` and a conditional make of counts, and `floor`, `ceil` and `round` of a
    finite number >= 0. Not a difference or a negation (`n - m`, `-n`), nor `floor(a)` of a float argument
    (negative, or inf and nan kept as they are)."""
    match e:
        case N.Num(value=v):
            return isinstance(v, int) and v >= 0
        case N.Name():
            return e.kind == N.Kind.INT and (e.ref in (N.Ref.ARG, N.Ref.DIM) or e.count)
        case N.BinOp(op="+" | "*" | "//" | "%" | "**", left=l, right=r):
            return counted_int(l) and counted_int(r)
        case N.IfExp(then=a, orelse=b):
            return counted_int(a) and counted_int(b)
        case N.Call(func="abs", args=[a]):
            return _whole(a)
        case N.Call(func="maximum" | "minimum", args=args):
            return all(counted_int(a) for a in args)
        case N.Call(func="floor" | "ceil" | "round", args=[a]):
            return _finite(a) and _nonnegative(a)
        case N.Call(func="reduced_numel"):  # a derivation's count of the elements a reduction combined
            return True
        case N.Call(func=f):
            return f in CALLABLE and CALLABLE[f].shape == "size"
    return False


def _whole(e: N.Expr) -> bool:
    """Whether `e` is an int that is never inf nor nan (it may be negative): `_finite`'s, of kind int."""
    return e.kind == N.Kind.INT and _finite(e)


def mark_counts(layer: N.Layer) -> None:
    """Marks each int let and local whose every definition is a count (`counted_int`; a `for` variable of a
    `range` whose start and stop are counts) on its names (`N.Name.count`), for the predicates above: an int made
    otherwise (`floor(a)` of a float, `n - m`, `-n`) may be negative, zero where it divides, inf or nan. Run by
    the checker after the lets (before the examples are computed) and after forward and backward."""
    defs: dict[str, list[N.Expr | None]] = {}
    for let in layer.lets:
        defs.setdefault(let.name, []).append(let.value)
    for t in layer.tensors:
        if t.repeat is not None:
            defs.setdefault(t.repeat.var.id, []).append(t.repeat.iter)
    for block in (layer.forward, layer.backward):
        if block is None:
            continue
        for stmt in statements(block.body):
            match stmt:
                case N.Assign(target=target, value=value):
                    defs.setdefault(target, []).append(value)
                case N.For(var=var, iter=it):
                    defs.setdefault(var, []).append(it if isinstance(it, N.Call) and it.func == "range" else None)
                case N.Unpack(targets=targets):
                    for target, _ in targets:
                        defs.setdefault(target, []).append(None)
                case N.IndexAssign(target=target):
                    defs.setdefault(target, []).append(None)
    names = [n for n in walk(layer) if isinstance(n, N.Name) and n.ref in (N.Ref.LET, N.Ref.LOCAL)]
    counted = set(defs)
    while True:  # the largest set whose definitions are counts given it (a local may be defined by itself)
        for n in names:
            n.count = n.id in counted
        kept = {name for name in counted if all(_defines_count(d) for d in defs[name])}
        if kept == counted:
            return
        counted = kept


def _defines_count(value: N.Expr | None) -> bool:
    """Whether a definition gives a count: an int value that is one, or a `range(...)` (its variable lies
    between start and stop, or from 0)."""
    if isinstance(value, N.Call) and value.func == "range":
        return len(value.args) == 1 or all(counted_int(a) for a in value.args[:2])
    return value is not None and value.kind == N.Kind.INT and counted_int(value)


def may_raise(e: N.Expr) -> bool:
    """Whether the Python form of a number expression may raise for some values of the arguments (a zero
    count dividing, math's error at a negative count): where it divides, takes a power or calls an operation.
    Sums, differences, products, comparisons and conditionals of numbers never raise."""
    return any(isinstance(n, N.Call) or isinstance(n, N.BinOp) and n.op in OPERATOR_ROWS for n in walk(e))


def _never_nan(e: N.Expr) -> bool:
    """Whether `e` is never nan: an int, a number that is not, `_finite`'s."""
    try:
        value = evaluate(e, {})
    except (NotConstant, ArithmeticError, TypeError, ValueError):
        return _finite(e)
    return value == value


def _nonnegative(e: N.Expr) -> bool:
    """Whether `e` is never negative: numbers >= 0, ints (counts and sizes), `pi`, `inf`, and what
    `+`, `*`, `/`, `//`, `%`, `**` and `abs` make of them."""
    match e:
        case N.Num(value=v):
            return v >= 0
        case N.Name(id=i):
            return counted_int(e) or (i in CONSTANTS and e.ref in (N.Ref.CONST, N.Ref.UNRESOLVED))
        case N.BinOp(op="+" | "*" | "/" | "//" | "%" | "**", left=l, right=r):
            return _nonnegative(l) and _nonnegative(r)
        case N.Call(func=f):
            return f == "abs" or (f in CALLABLE and CALLABLE[f].shape == "size")
    return False


def _finite(e: N.Expr) -> bool:
    """Whether `e` is never inf or nan: finite numbers, ints, `pi`, and their sums, differences, products
    and quotients."""
    match e:
        case N.Num(value=v):
            return math.isfinite(v)
        case N.Name(id=i):
            return counted_int(e) or (i == "pi" and e.ref in (N.Ref.CONST, N.Ref.UNRESOLVED))
        case N.UnaryOp(operand=o):
            return _finite(o)
        case N.BinOp(op="+" | "-" | "*", left=l, right=r):
            return _finite(l) and _finite(r)
        case N.BinOp(op="/" | "//" | "%", left=l, right=r):  # by zero: raises where written plainly, else inf or nan
            return _finite(l) and _finite(r) and written_plainly(e)
        case N.IfExp(then=a, orelse=b):
            return _finite(a) and _finite(b)
        case N.Call(func="abs", args=[a]):
            return _finite(a)
        case N.Call(func="floor" | "ceil" | "round", args=[a]):
            return _finite(a)
        case N.Call(func=f):
            return f in CALLABLE and CALLABLE[f].shape == "size"
    return False


# the operations whose `math` function takes every value an operand of the form tested gives
_IN_DOMAIN: dict[str, Callable[[N.Expr], bool]] = {
    "sqrt": _nonnegative,
    "sin": _finite,
    "cos": _finite,
    "tan": _finite,
    "floor": _finite,
    "ceil": _finite,
    "round": _finite,
}


def _math_function(name: str) -> Callable[..., Any]:
    """Operation `name` on numbers by its `scalar` spelling (`math.sqrt`, `max`)."""
    spelling = CALLABLE[name].scalar
    assert spelling is not None, "only the operations with a spelling on numbers are evaluated"
    return getattr(math, spelling[len("math.") :]) if spelling.startswith("math.") else _BUILTINS[spelling]


@functools.cache
def _number_function(name: str, template: str) -> Callable[..., Any]:
    """Operation `name` on numbers by `template`, the Python form the generated code writes (`number_form`),
    made a function once."""
    params = [p.name for p in OPS[name].params]
    form = filled(template, lambda name, tight: name)
    function: Callable[..., Any] = eval(f"lambda {', '.join(params)}: {form}", {"math": math, **_BUILTINS})
    return function


_BUILTINS: dict[str, Callable[..., Any]] = {"abs": abs, "round": round, "max": max, "min": min}

# Integers a spec computes are sizes and counts: anything far beyond int64 is a mistake, and computing it
# (`2 ** 99999999`) would take minutes and gigabytes.
MAX_BITS = 1024


def _bounded(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise NotConstant(f"the value is too large (over {MAX_BITS} bits)")
    return value


def _power(base: Any, exponent: Any) -> Any:
    """`base ** exponent`, refused before it is computed when an integer result would be too large."""
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0:
        if exponent * (abs(base).bit_length() - 1) > MAX_BITS:
            raise NotConstant(f"the value is too large (over {MAX_BITS} bits)")
    return operator.pow(base, exponent)


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": _power,
}


# the operators whose operations on numbers have a `scalar_template`: their rows
OPERATOR_ROWS = {op.operator: op for op in OPS.values() if op.operator and op.scalar_template is not None}

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
