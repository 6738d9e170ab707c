"""Reverse-mode derivation over the tape of a `@function` layer's forward.

`derive` walks the tape backwards; for each step and each operand that needs a gradient it instantiates
the operation table's formula (`formulas`), reduces broadcast gradients back to the operand's shape, and
accumulates; `simplify` tidies each result. What it cannot derive is collected, not raised at once: the
gradient of that operand is left out (an opaque value, as the linearizer's), the walk goes on, and every
independent problem is raised together (`tape.refusal`, each location once). The result says, for every leaf (input or parameter), which
backward statements its gradient needs, so the emitter can guard them with `ctx.needs_input_grad` and save
only what the needed gradients read.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from layerdsl.autodiff.formulas import Underivable, fold, formula, rank_branches
from layerdsl.autodiff.simplify import simplify
from layerdsl.autodiff.tape import NotDerivable, Step, Tape, refusal
from layerdsl.diagnostics import Span
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import NOWHERE
from layerdsl.ir.visit import children, clone, map_children, walk
from layerdsl.language.ops import OPS, RankCase
from layerdsl.semantics.evaluate import evaluate
from layerdsl.semantics.shapes import expr_shape


@dataclass(eq=False)
class GradStmt:
    """`var = expr` in a backward, needed by the gradients of `leaves`."""

    var: str  # the gradient variable it binds
    expr: N.Expr
    leaves: set[str] = field(default_factory=set)  # leaves whose gradient needs it
    span: Span = NOWHERE  # the spec expression it comes from (its generated line names that line)


@dataclass
class Backward:
    """A derived backward: its statements in order, and the variable holding each leaf's gradient."""

    stmts: list[GradStmt]
    leaf_grads: dict[str, str]  # leaf -> gradient var


def derive(tape: Tape, grad_names: list[str], extra_grads: dict[str, str] | None = None) -> Backward:
    """`extra_grads`: intermediates the forward also returns (to save them), with their incoming gradient's
    name; those gradients are zero in a first backward and matter in double backward. Raises NotDerivable
    carrying every problem (`NotDerivable.every`)."""
    contributions: dict[str, list[tuple[N.Expr, str | None]]] = {}
    requires = _requires_grad(tape)
    problems: list[NotDerivable] = []
    complex_vars = complex_values(tape, problems)
    for out, grad_name in zip(tape.outputs, grad_names):
        if isinstance(out, N.Name) and out.id in requires:
            contributions.setdefault(out.id, []).append((B.name(grad_name), None))
    for var, grad_name in (extra_grads or {}).items():
        if var in requires:
            contributions.setdefault(var, []).append((B.name(grad_name), None))
    stmts: list[GradStmt] = []
    grad_var: dict[str, str] = {}
    # The spec expression a gradient comes from: its last reader in the forward (the first one derived).
    source: dict[str, Span] = {}

    def gradient_of(var: str) -> N.Expr | None:
        parts = contributions.get(var)
        if not parts:
            return None
        if len(parts) == 1 and parts[0][1] is None and isinstance(parts[0][0], N.Name):
            grad_var[var] = parts[0][0].id
            return parts[0][0]
        name = f"grad_{var}"
        terms = [expr if count == 1 else _scale(count, expr) for expr, count in _merge_terms([e for e, _ in parts])]
        stmts.append(GradStmt(name, simplify(_sum(terms)), span=source.get(var, NOWHERE)))
        grad_var[var] = name
        return B.name(name)

    for step in reversed(tape.steps):
        if step.op is None or step.var not in requires:
            continue
        g = gradient_of(step.var)
        if g is None:
            continue
        for pname, listed in step.args.items():
            param = step.op.param(pname)
            if not (isinstance(listed, N.ListExpr) and param is not None and param.tensors):
                continue  # cat, stack, einsum; not the index tensors of `x[i, j]`, which need none
            needed = [(k, i) for k, i in enumerate(listed.items) if isinstance(i, N.Name) and i.id in requires]
            if needed and step.op.grads.get(pname) is None:
                problems.append(NotDerivable(step.expr.span, f"{step.op.name}() has no derivative"))
                continue
            for k, item in needed:
                try:
                    part = _item_grad(step, pname, k, item, g)
                except Underivable as exc:
                    problems.append(NotDerivable(step.expr.span, str(exc)))
                    continue
                contributions.setdefault(item.id, []).append((part, None))
                source.setdefault(item.id, step.expr.span)
        for pname, operand in step.args.items():
            if not (isinstance(operand, N.Name) and operand.id in requires):
                continue
            if not step.op.grads.get(pname):
                problems.append(NotDerivable(step.expr.span, f"{step.op.name}() has no derivative"))
                continue
            shapes = {p: _shape_of(tape, a) for p, a in step.args.items()}
            try:
                branches = [
                    (tests, _operand_grad(tape, step, complex_vars, g, pname, case))
                    for tests, case in rank_branches(step.op.name, pname, shapes)
                ]
            except NotDerivable as exc:
                problems.append(exc)
                continue
            expr = branches[-1][1]
            for tests, chosen in reversed(branches[:-1]):  # `a if other.ndim == 1 else b`: a rank asked at run time
                expr = _if_ranks(step, tests, chosen, expr)
            if step.guard is not None and operand.id == step.base and step.op.operator in ("*", "/"):
                expr = _unless_absent(step.guard, g, expr)
            contributions.setdefault(operand.id, []).append((expr, None))
            source.setdefault(operand.id, step.expr.span)
    for leaf in tape.leaves:
        if leaf in tape.differentiable and leaf in requires:
            g = gradient_of(leaf)
            if g is not None and not (isinstance(g, N.Name) and g.id == f"grad_{leaf}"):
                stmts.append(GradStmt(f"grad_{leaf}", g, span=source.get(leaf, NOWHERE)))
                grad_var[leaf] = f"grad_{leaf}"
    if problems:
        raise refusal(problems)
    _mark_leaves(stmts, tape)
    return Backward(stmts, {l: grad_var[l] for l in tape.leaves if l in grad_var})


CHAINED_TERMS = 16  # a longer sum is summed as a balanced tree: the passes after this one recurse over it


def _sum(terms: list[N.Expr]) -> N.Expr:
    """`a + b + c + ...`, written left to right; past CHAINED_TERMS terms, as a balanced tree (a value read
    by 300 statements has 300 gradient terms: a chain that deep exhausts Python's recursion)."""
    if len(terms) > CHAINED_TERMS:
        half = len(terms) // 2
        return B.binop("+", _sum(terms[:half]), _sum(terms[half:]))
    total = terms[0]
    for term in terms[1:]:
        total = B.binop("+", total, term)
    return total


def _operand_grad(
    tape: Tape, step: Step, complex_vars: set[str], g: N.Expr, pname: str, case: RankCase | None
) -> N.Expr:
    """One operand's gradient by the row's formula, or by one of its rank cases."""
    assert step.op is not None
    operand = step.args[pname]
    assert isinstance(operand, N.Name)
    template = formula(step.op.name, pname, case)
    expr = simplify(instantiate(template, _conjugated(step, complex_vars, template), g))
    if step.var in complex_vars and operand.id not in complex_vars:
        expr = B.call("real", expr)  # a real operand's gradient is the real part
    if case is None and (
        step.op.shape == "elementwise"
        and _may_broadcast(tape, step, pname)
        or step.op.shape == "matmul"
        and _may_batch(tape, step)
    ):  # summed back to the operand's shape (a rank case's formula has that shape already)
        expr = B.call("sum_to", expr, B.name(operand.id))
    return expr


def _if_ranks(step: Step, tests: dict[str, str], then: N.Expr, orelse: N.Expr) -> N.Expr:
    """`then if other.ndim == 1 else orelse`: `then` where the operands have the ranks of a rank case's
    patterns ("1": `== 1`, "2+": `>= 2`)."""
    conds: list[N.Expr] = []
    for param, pattern in tests.items():
        operand = step.args[param]
        assert isinstance(operand, N.Name)
        rank = N.Rank(NOWHERE, B.name(operand.id))
        rank.kind = N.Kind.INT
        cond = N.Compare(NOWHERE, [">=" if pattern.endswith("+") else "=="], [rank, B.num(int(pattern.rstrip("+")))])
        cond.kind = N.Kind.BOOL
        conds.append(cond)
    test = conds[0]
    for more in conds[1:]:
        test = N.BoolOp(NOWHERE, "and", test, more)
        test.kind = N.Kind.BOOL
    chosen = N.IfExp(NOWHERE, test, then, orelse)
    chosen.kind = N.Kind.TENSOR
    return chosen


def _unless_absent(member: str, grad: N.Expr, expr: N.Expr) -> N.Expr:
    """`base * member` with an optional member is `base` when it is None: its gradient passes unchanged."""
    absent = N.Compare(NOWHERE, ["=="], [B.name(member), N.NoneLit(NOWHERE)])
    absent.kind = N.Kind.BOOL
    chosen = N.IfExp(NOWHERE, absent, grad, expr)
    chosen.kind = N.Kind.TENSOR
    return chosen


_TRANSFORMS = ("fft", "ifft", "rfft", "irfft")
# Not holomorphic: on complex values their formulas (written for real ones) do not hold.
_REAL_ONLY = ("abs", "relu", "clamp", "maximum", "minimum", "amax", "amin", "sign", "softmax", "log_softmax")


def complex_values(tape: Tape, problems: list[NotDerivable] | None = None) -> set[str]:
    """Tape vars holding complex values: what `fft`, `ifft` and `rfft` return, and what is computed from
    it (`irfft` returns a real signal). An operation that has no derivative on them goes to `problems`
    (raised when None)."""
    out: set[str] = set()
    for step in tape.steps:
        if step.op is None or step.op.name in ("irfft", "real"):
            continue
        operands = [a for a in _flat(step.args.values()) if isinstance(a, N.Name)]
        if step.op.name in _TRANSFORMS or any(a.id in out for a in operands):
            if step.op.name in _REAL_ONLY and step.op.name != "abs":
                problem = NotDerivable(step.expr.span, f"{step.op.name}() of a complex value has no derivative")
                if problems is None:
                    raise problem
                problems.append(problem)
            out.add(step.var)
    return out


def _conjugated(step: Step, complex_vars: set[str], template: N.Expr) -> Step:
    """The step with the complex operands (and result) that `template` reads as values conjugated: for a
    function that is holomorphic in them, torch's gradient is the incoming one times the conjugate
    derivative. The Fourier transforms' formulas are written as adjoints already."""
    if step.op is None or step.op.name in _TRANSFORMS or not complex_vars:
        return step
    if step.op.name == "abs" and any(isinstance(a, N.Name) and a.id in complex_vars for a in step.args.values()):
        raise NotDerivable(step.expr.span, "abs() of a complex value has no derivative here")
    values = set(_value_reads(template))
    args = {
        p: B.call("conj", a) if isinstance(a, N.Name) and a.id in complex_vars and p in values else a
        for p, a in step.args.items()
    }
    conj_result = step.var in complex_vars and "result" in values
    if args == step.args and not conj_result:
        return step
    return dataclasses.replace(step, args=args, conj_result=conj_result)


def _value_reads(e: N.Expr) -> list[str]:
    """Names a formula reads as values (not only for their shape)."""
    if isinstance(e, N.Name):
        return [e.id]
    if isinstance(e, N.Call):
        skip = OPS[e.func].shape_args if e.func in OPS else ()
        kids = [c for i, c in enumerate(e.args) if i not in skip] + [k.value for k in e.kwargs]
    else:
        kids = [c for c in children(e) if isinstance(c, N.Expr)]
    return [n for c in kids for n in _value_reads(c)]


def _requires_grad(tape: Tape) -> set[str]:
    req = set(tape.differentiable)
    for step in tape.steps:
        if step.op is None or not step.op.grads:  # a comparison, a dropout mask: no gradient flows
            continue
        if any(isinstance(a, N.Name) and a.id in req for a in _flat(step.args.values())):
            req.add(step.var)
    return req


def _flat(values):
    for v in values:
        if isinstance(v, N.ListExpr):
            yield from v.items
        else:
            yield v


def _may_broadcast(tape: Tape, step: Step, pname: str) -> bool:
    """Whether operand's gradient may need summing back (its shape may differ from the result's). Where the
    static shapes are unknown (a dim sliced by an argument), an operand whose every other operand is a
    number, a 0-dim tensor or itself (`s * 0.5`, `relu(s)`, `s * s`) has the result's shape: nothing to sum."""
    shapes, operand = tape.shapes, step.args[pname]
    assert isinstance(operand, N.Name)
    a, r = shapes.get(operand.id), shapes.get(step.var)
    if a is not None and r is not None:
        return a != r
    return any(_widens(other, operand.id, shapes) for p, other in step.args.items() if p != pname)


def _widens(e: N.Expr, operand: str, shapes: dict[str, tuple | None]) -> bool:
    """Whether `e`, broadcast against `operand`, may give a larger shape: not for a number (or another
    constant argument), a 0-dim tensor, or the operand itself."""
    if isinstance(e, N.Name) and e.id == operand:
        return False
    if isinstance(e, (N.Num, N.Bool, N.Str, N.NoneLit)) or e.kind in _CONSTANT_KINDS:
        return False
    return not (e.kind == N.Kind.TENSOR and expr_shape(e, shapes) == ())


_CONSTANT_KINDS = (N.Kind.INT, N.Kind.FLOAT, N.Kind.BOOL, N.Kind.STR, N.Kind.NONE)


def _item_grad(step: Step, pname: str, k: int, item: N.Name, grad: N.Expr) -> N.Expr:
    """The table's formula for a list operand at its `k`-th tensor, which the formula names `item`, at
    `index` (cat's, stack's and einsum's per-tensor gradients). Raises Underivable (`formulas.fold`)."""
    assert step.op is not None
    bound = dataclasses.replace(step, args={**step.args, "item": item, "index": B.num(k)})
    return simplify(fold(instantiate(formula(step.op.name, pname), bound, grad)))


def _may_batch(tape: Tape, step: Step) -> bool:
    """Whether a matmul broadcasts batch dims (so an operand's gradient must be summed back)."""
    a, b = _shape_of(tape, step.args["input"]), _shape_of(tape, step.args["other"])
    return a is None or b is None or "..." in a or "..." in b or len(a) != len(b)


def _shape_of(tape: Tape, operand: N.Expr) -> tuple | None:
    """A tensor operand's static shape, when known."""
    return tape.shapes.get(operand.id) if isinstance(operand, N.Name) else None


def _scale(count: int, expr: N.Expr) -> N.Expr:
    """`count * expr`, with the number applied to the leftmost factor (`2 * g * x`: the small tensor
    is scaled before the product is formed)."""
    if isinstance(expr, N.BinOp) and expr.op == "*":
        return B.binop("*", _scale(count, expr.left), expr.right)
    return B.binop("*", B.num(count), expr)


def _merge_terms(terms: list[N.Expr]) -> list[tuple[N.Expr, int]]:
    """Identical terms of a sum, counted: `g * x + g * x` becomes `2 * (g * x)`."""
    out: dict[str, list] = {}
    for t in terms:
        key = B.key(t)
        if key in out:
            out[key][1] += 1
        else:
            out[key] = [t, 1]
    return [(t, n) for t, n in out.values()]


def instantiate(template: N.Expr, step: Step, grad: N.Expr) -> N.Expr:
    """A derivative formula for one step: its parameters, `grad` and `result` replaced by what they are there."""
    result: N.Expr = B.call("conj", B.name(step.var)) if step.conj_result else B.name(step.var)
    subst = {**step.args, "grad": grad, "result": result}

    def go(e):
        if isinstance(e, N.Name) and e.id in subst:
            return clone(subst[e.id])
        e = map_children(e, go)
        if isinstance(e, N.Name) and e.id in ("pi", "inf"):
            e.ref, e.kind = N.Ref.CONST, N.Kind.FLOAT
        return e

    out = go(template)
    _kinds(out)
    return _number_choices(out, grad)


def _number_choices(e: N.Expr, grad: N.Expr) -> N.Expr:
    """`e` with each `where` whose condition a number operand decides (pow's `exponent == 0` in `x ** 2` or
    `x ** p`, `input == 0` in `2.0 ** y`) as the side a literal picks, or a Python conditional (torch.where
    takes no Python bool); `c * m` of a literal `c` is m or false, `where(c * m, a, b)` of a number
    condition `c` is `where(m, a, b) if c else b`. A zero picked for a tensor is `0 * grad`
    (a gradient is a tensor)."""
    e = map_children(e, lambda c: _number_choices(c, grad))
    if isinstance(e, N.Compare) and all(isinstance(o, N.Num) for o in e.operands):
        return _bool(bool(evaluate(e, {})))
    if isinstance(e, N.BinOp) and e.op == "*":
        for known, other in ((e.left, e.right), (e.right, e.left)):
            if isinstance(known, N.Bool):
                return other if known.value else known
    if not (isinstance(e, N.Call) and e.func == "where"):
        return e
    cond, then, orelse = e.args
    if isinstance(cond, N.BinOp) and cond.op == "*" and N.Kind.TENSOR in (cond.left.kind, cond.right.kind):
        number, mask = (cond.left, cond.right) if cond.left.kind != N.Kind.TENSOR else (cond.right, cond.left)
        if number.kind == N.Kind.TENSOR:
            return e
        both = copy.copy(e)  # `where(m, a, b) if c else b`
        both.args = [mask, then, orelse]
        cond, then = number, both
    elif cond.kind == N.Kind.TENSOR:
        return e
    if e.kind == N.Kind.TENSOR:
        then, orelse = _zero_as_tensor(then, grad), _zero_as_tensor(orelse, grad)
    if isinstance(cond, N.Bool):
        return then if cond.value else orelse
    chosen = N.IfExp(e.span, cond, then, orelse)
    chosen.kind = e.kind
    return chosen


def _bool(value: bool) -> N.Bool:
    out = N.Bool(NOWHERE, value)
    out.kind = N.Kind.BOOL
    return out


def _zero_as_tensor(e: N.Expr, grad: N.Expr) -> N.Expr:
    if not (isinstance(e, N.Num) and e.value == 0):
        return e
    out = B.binop("*", e, clone(grad))
    out.kind = N.Kind.TENSOR
    return out


def _kinds(e: N.Expr) -> N.Kind:
    """Re-derive kinds in an instantiated formula: tensor if any operand is."""
    kids = [_kinds(c) for c in children(e) if isinstance(c, N.Expr)]
    if isinstance(e, N.Name):
        if not e.kind:
            e.kind = N.Kind.TENSOR
    elif isinstance(e, N.Num):
        e.kind = N.Kind.FLOAT if isinstance(e.value, float) else N.Kind.INT
    elif isinstance(e, (N.Bool,)):
        e.kind = N.Kind.BOOL
    elif isinstance(e, N.NoneLit):
        e.kind = N.Kind.NONE
    elif isinstance(e, N.Call) and e.func in OPS and OPS[e.func].internal:
        e.kind = N.Kind.TENSOR if e.func not in ("reduced_numel", "shape_of") else N.Kind.INT
    elif N.Kind.TENSOR in kids:
        e.kind = N.Kind.TENSOR
    else:
        e.kind = N.Kind.FLOAT if N.Kind.FLOAT in kids else (kids[0] if kids else N.Kind.FLOAT)
    return e.kind


def _mark_leaves(stmts: list[GradStmt], tape: Tape) -> None:
    by_var = {s.var: s for s in stmts}
    for s in stmts:
        if s.var.startswith("grad_") and s.var[5:] in tape.leaves:
            _mark(s, s.var[5:], by_var, set())


def _mark(s: GradStmt, leaf: str, by_var, seen) -> None:
    if id(s) in seen:
        return
    seen.add(id(s))
    s.leaves.add(leaf)
    for n in walk(s.expr):
        if isinstance(n, N.Name) and n.id in by_var:
            _mark(by_var[n.id], leaf, by_var, seen)
