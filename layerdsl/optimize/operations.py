"""What the op table says about an operation node in a backward: its operands, what autograd keeps when
it records the operation, whether the result is a fresh tensor, and which tensors its dtype comes from."""

from __future__ import annotations

import functools
from typing import TypeGuard

from layerdsl.autodiff.formulas import formula
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import children
from layerdsl.language.ops import KEPT_BY_AUTOGRAD, OPERATORS, OPS, Op, shape_args

ALIASING = ("sum_to", "expand_reduced", "narrow", "select")  # results that may share the operand's storage

_BY_METHOD = {op.inplace: op for op in OPS.values() if op.inplace}


def row(e) -> Op | None:
    """The op table row of an operation node (None for anything else)."""
    match e:
        case N.BinOp(op=op):
            return OPERATORS.get(op)
        case N.UnaryOp(op="-"):
            return OPERATORS["neg"]
        case N.Call(func=f):
            return OPS.get(f)
        case N.InPlace(method=m):
            return _BY_METHOD.get(m)
    return None


def operands(e) -> list[tuple[str | None, N.Expr]]:
    """(parameter name, operand) for each direct operand of an operation node."""
    op = row(e)
    match e:
        case N.BinOp(left=l, right=r):
            return [("input", l), ("exponent" if e.op == "**" else "other", r)]
        case N.UnaryOp(operand=o):
            return [("input", o)]
        case N.Call(args=args, kwargs=kwargs):
            params = [p.name for p in op.params] if op else []
            out = [(params[i] if i < len(params) else None, a) for i, a in enumerate(args)]
            out += [(k.name, k.value) for k in kwargs]
            return [(p, item) for p, a in out for item in (a.items if isinstance(a, N.ListExpr) else [a])]
        case N.InPlace(target=t, args=args):
            params = [p.name for p in op.params] if op else []
            return [(params[i] if i < len(params) else None, a) for i, a in enumerate([t, *args])]
    return [(None, c) for c in children(e) if isinstance(c, N.Expr)]


def is_product(e: N.Expr) -> TypeGuard[N.BinOp]:
    """A product of two tensors."""
    return isinstance(e, N.BinOp) and e.op == "*" and e.left.kind == "tensor" and e.right.kind == "tensor"


# ------------------------------------------------------------------ what an operation's derivative reads


def saved(node) -> frozenset[str]:
    """Operands (and "result") that autograd keeps when it records this operation: what the derivative
    formulas of its tensor operands read (a number operand gets no gradient, so its formula is not used)."""
    op = row(node)
    if op is None:
        return frozenset({"result"} | {p for p, _ in operands(node) if p})
    tensors = tuple(sorted(p for p, o in operands(node) if p and o.kind == "tensor"))
    return _saved_by(op.name, tensors)


@functools.cache
def _saved_by(name: str, tensors: tuple[str, ...]) -> frozenset[str]:
    op = OPS[name]
    if op.name == "einsum" or not op.grads:
        return frozenset(p.name for p in op.params) | {"result"}
    out = set(KEPT_BY_AUTOGRAD.get(name, ())) & set(tensors)
    for param, text in op.grads.items():
        if text is not None and param in tensors:
            out |= set(_value_reads(formula(op.name, param)))
    return frozenset(out)


def _value_reads(e) -> list[str]:
    """Names a formula reads as values: `sum`'s derivative reads only its input's shape (autograd keeps
    the sizes, not the tensor)."""
    if isinstance(e, N.Name):
        return [e.id]
    skip = shape_args(e) if isinstance(e, N.Call) else ()
    operands = (
        [c for i, c in enumerate(e.args) if i not in skip] + [k.value for k in e.kwargs]
        if isinstance(e, N.Call)
        else children(e)
    )
    return [n for c in operands if isinstance(c, N.Expr) for n in _value_reads(c)]


def result_saved(e) -> bool:
    """Whether autograd keeps the result of operation `e` when it records it."""
    return "result" in saved(e)


def keeps_operand(node, param: str | None, operand: N.Name, graph: bool) -> bool:
    """Whether operation `node` keeps `operand`: the result may be a view of it, or autograd records
    the operation (`graph`) and saves it."""
    if isinstance(node, N.Call) and any(node.args[i] is operand for i in shape_args(node)):
        return False  # only its shape is read
    op = row(node)
    if op is None or param is None or op.name in ALIASING or op.shape in ("view", "transpose"):
        return True
    return graph and param in saved(node)


def fresh_node(e) -> bool:
    """An operation whose result is a new tensor (not a view of an operand)."""
    if isinstance(e, N.InPlace):
        return fresh_node(e.target) or isinstance(e.target, N.Name)
    if isinstance(e, (N.BinOp, N.UnaryOp)):
        return e.kind == "tensor" and row(e) is not None
    if isinstance(e, N.Call):
        op = OPS.get(e.func)
        return op is not None and bool(op.torch) and op.shape in ("elementwise", "matmul", "reduce", "softmax")
    return False


# ------------------------------------------------------------------ dtypes


COMPLEX = "<complex>"  # a dtype source: the value is complex (a Fourier transform's)


def dtype_sources(e, known: dict[str, frozenset[str]], memo: dict[int, tuple] | None = None) -> frozenset[str]:
    """The tensors a backward starts from whose dtypes `e`'s dtype is promoted from (`known` expands names
    bound on the way). Comparisons, `where`'s condition and arguments read only for their shape add
    nothing; `extremum_mask` (a count ratio) has torch's default dtype, which nothing dominates. `memo`,
    when given, keeps each sub-expression's sources by node identity (valid while `known` and the nodes
    stay as they are: `optimize.inplace` keeps one per statement)."""
    if memo is not None and (hit := memo.get(id(e))) is not None:
        return hit[1]
    out: set[str] = set()

    def go(n):
        if isinstance(n, N.Name) and n.kind == "tensor":
            out.update(known.get(n.id, {n.id}))
        elif isinstance(n, N.Compare):
            return
        elif isinstance(n, N.Call) and n.func == "extremum_mask":
            out.add("<default dtype>")
        elif isinstance(n, N.Call) and n.func in ("real", "irfft"):  # complex in, real out
            out.update(dtype_sources(n.args[0], known, memo) - {COMPLEX})
        elif isinstance(n, N.Call) and n.func in ("fft", "ifft", "rfft"):  # a complex result: nothing real dominates it
            out.update(dtype_sources(n.args[0], known, memo) | {COMPLEX})
        elif isinstance(n, N.Call):
            skip = shape_args(n) or ((0,) if n.func == "where" else ())  # where's condition is a mask
            for i, a in enumerate(n.args):
                if i not in skip:
                    sub(a)
            for k in n.kwargs:
                sub(k.value)
        else:
            for c in children(n):
                sub(c)

    def memoised(n) -> None:
        out.update(dtype_sources(n, known, memo))

    sub = go if memo is None else memoised
    go(e)
    result = frozenset(out)
    if memo is not None:
        memo[id(e)] = (e, result)  # the node kept alive: its id is not reused meanwhile
    return result
