"""Reverse-mode derivation over the IR of a `@function` layer's forward.

1. `linearize` turns forward's statements into a tape of single-operation steps (SSA), keeping the
   spec's local names for the steps that bind them.
2. `derive` walks the tape backwards; for each step and each operand that needs a gradient it
   instantiates the operation table's formula (parsed once into IR), reduces broadcast gradients back to
   the operand's shape, and accumulates.
3. `simplify` folds constants and removes multiplications by one and additions of zero.
The result says, for every leaf (input or parameter), which backward statements its gradient needs, so
the emitter can guard them with `ctx.needs_input_grad` and save only what the needed gradients read.
"""

from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import dataclass, field

from lark import Lark

from layerdsl.diagnostics import Reporter, Span
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.language.ops import CALLABLE, OPERATORS, OPS, Op
from layerdsl.resources import resource_dir

NOWHERE = N.NOWHERE


LOWERED = ("einsum", "permute", "align")  # ops that index notation lowers to


class NotDerivable(Exception):
    """Forward uses something the derivation cannot go through; carries the location and a message."""

    def __init__(self, span: Span, message: str, hint: str = "write `backward(grad_y) { grad x = ... }`"):
        super().__init__(message)
        self.span = span
        self.message = message
        self.hint = hint


# ------------------------------------------------------------------ formulas


@functools.cache
def _formula_parser() -> Lark:
    grammar = (resource_dir("grammars") / "layer.lark").read_text(encoding="utf-8")
    return Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
        start="expr",
        cache=True,
    )


@functools.cache
def formula(op_name: str, param: str) -> N.Expr:
    """The op table's derivative formula for one operand, as IR (cached; copy before use)."""
    from layerdsl.syntax.parser import _Builder

    text = OPS[op_name].grads[param]
    tree = _formula_parser().parse(text)
    return _Builder(Reporter("<ops.py>", text)).transform(tree)


def parse_default(text: str) -> N.Expr:
    from layerdsl.syntax.parser import _Builder

    return _Builder(Reporter("<ops.py>", text)).transform(_formula_parser().parse(text))


# ------------------------------------------------------------------ the tape


@dataclass(eq=False)
class Step:
    var: str
    op: Op | None  # None: a non-differentiable computation (comparisons) kept as written
    args: dict[str, N.Expr]  # op parameter -> operand (a Name of a var, or a constant expression)
    expr: N.Expr  # the step as one IR expression over operand names
    guard: str | None = None  # an optional member: when it is None the step is `var = base`
    base: str | None = None

    @property
    def costly(self) -> bool:
        return self.op is not None and self.op.cost == "costly"


@dataclass
class Tape:
    steps: list[Step]
    outputs: list[N.Expr]  # Names of vars (or inputs)
    leaves: list[str]  # inputs and tensors, in Function.apply order
    differentiable: set[str]  # leaves that can have a gradient
    kinds: dict[str, str] = field(default_factory=dict)

    def step(self, var: str) -> Step | None:
        return next((s for s in self.steps if s.var == var), None)


class Linearizer:
    def __init__(self, layer: N.Layer, optional: set[str], deriving: bool = True):
        self.deriving = deriving  # with a hand-written backward, ops without derivatives are fine
        self.layer = layer
        self.optional = optional
        self.steps: list[Step] = []
        self.env: dict[str, str] = {}  # spec local -> current var
        self.taken = {a.name for a in layer.args} | {t.name for t in layer.tensors} | {l.name for l in layer.lets}
        self.taken |= {i.name for i in layer.forward.inputs} | set(getattr(layer, "symbolic_dims", []))
        self.counter = itertools.count(1)
        self.numbers: list[tuple[str, N.Expr]] = []

    def fresh(self, hint: str) -> str:
        name = hint
        while name in self.taken:
            name = f"{hint}{next(self.counter)}"
        self.taken.add(name)
        return name

    def run(self) -> Tape:
        fwd = self.layer.forward
        outputs: list[N.Expr] = []
        for stmt in fwd.body:
            match stmt:
                case N.Assign(target=t, value=v) if v.kind != "tensor":
                    self.numbers.append((t, v))  # a number (from dims and arguments): computed as written
                case N.Assign(target=t, value=v):
                    self.env[t] = self.value(v, hint=t, target=t)
                case N.Return(values=vs):
                    outputs = [B.name(self.value(v, hint="out")) if v.kind == "tensor" else v for v in vs]
                case N.If():
                    raise NotDerivable(stmt.span, "a derived backward cannot go through `if`; write a backward block")
                case N.Update():
                    raise NotDerivable(stmt.span, "@function layers cannot update buffers")
                case N.IndexAssign():
                    from layerdsl.semantics.index_notation import linearize_index_assign

                    self.env[stmt.target] = linearize_index_assign(self, stmt)
        leaves = [i.name for i in fwd.inputs] + [t.name for t in self.layer.tensors]
        diff = {i.name for i in fwd.inputs if i.dtype == "float"} | {t.name for t in self.layer.params}
        tape = Tape(self.steps, outputs, leaves, diff)
        tape.env = dict(self.env)
        tape.numbers = list(self.numbers)
        return tape

    def value(self, e: N.Expr, hint: str = "t", target: str | None = None) -> str:
        """Emit steps computing `e`; return the var holding it (an input or param name for leaves)."""
        operand = self.operand(e, "t")
        if isinstance(operand, N.Name) and operand.ref in ("local",) and target is None:
            return operand.id
        if isinstance(operand, N.Name):
            if (
                target is not None
                and operand.id != target
                and operand.ref == "local"
                and self._is_fresh_step(operand.id)
            ):
                self.steps[-1].var = self.fresh(target)  # the last step is this local's value: name it so
                return self.steps[-1].var
            return operand.id
        raise NotDerivable(e.span, "forward returns or binds a number, not a tensor")

    def _is_fresh_step(self, var: str) -> bool:
        return bool(self.steps) and self.steps[-1].var == var and var not in self.env.values()

    def operand(self, e: N.Expr, hint: str) -> N.Expr:
        if e.kind != "tensor":
            return e  # a number: an argument, let, dim or literal
        match e:
            case N.Name(id=i, ref=ref):
                if ref == "local":
                    return B.name(self.env[i], e.span)
                return B.name(i, e.span, ref)
            case N.BinOp(op=op, left=l, right=r):
                row = OPERATORS[op]
                return self.add(
                    row,
                    {"input": self.operand(l, hint), "other" if op != "**" else "exponent": self.operand(r, hint)},
                    hint,
                    e,
                )
            case N.UnaryOp(op="-", operand=o):
                return self.add(OPERATORS["neg"], {"input": self.operand(o, hint)}, hint, e)
            case N.UnaryOp(op="+", operand=o):
                return self.operand(o, hint)
            case N.Call(func=f) if f in CALLABLE or f in LOWERED:
                op = OPS[f]
                args = {}
                for p, a in zip(op.params, e.args):
                    if p.tensors and isinstance(a, N.ListExpr):
                        items = N.ListExpr(a.span, [self.operand(i, hint) for i in a.items])
                        items.kind = "list"
                        args[p.name] = items
                        continue
                    args[p.name] = self.operand(a, hint) if (p.tensor or p.tensors) else a
                for k in e.kwargs:
                    p = op.param(k.name)
                    args[k.name] = self.operand(k.value, hint) if (p.tensor or p.tensors) else k.value
                for p in op.params:
                    if p.name not in args and p.default is not None:
                        args[p.name] = parse_default(p.default)
                if f == "align":
                    return self.add(op, args, hint, e, items=e.items)
                if self.deriving and any(isinstance(v, N.ListExpr) for v in args.values()) and op.shape == "concat":
                    raise NotDerivable(
                        e.span, f"a derived backward cannot go through {f}() yet; write a backward block"
                    )
                return self.add(op, args, hint, e)
            case N.Compare(ops=ops, operands=operands):
                new = N.Compare(e.span, ops, [self.operand(o, hint) for o in operands])
                new.kind = "tensor"
                return self.opaque(new, hint)
            case N.Subscript():
                raise NotDerivable(e.span, "a derived backward cannot go through indexing yet; write a backward block")
            case N.Call(func=f):
                raise NotDerivable(e.func_span, f"a derived backward cannot go through '{f}'")
        raise NotDerivable(e.span, "a derived backward cannot go through this expression")

    def add(self, op: Op, args: dict[str, N.Expr], hint: str, source: N.Expr, items=None) -> N.Name:
        for pname, formula_text in op.grads.items():
            operand = args.get(pname)
            if (
                self.deriving
                and formula_text is None
                and isinstance(operand, N.Name)
                and operand.kind == "tensor"
                and self._needs_grad(operand)
            ):
                raise NotDerivable(
                    source.span,
                    f"{op.name}() has no derivative; write a backward block (or mark a deliberate surrogate with @surrogate)",
                )
        guard, base = None, None
        member = next((a for a in args.values() if isinstance(a, N.Name) and a.id in self.optional), None)
        if member is not None and op.operator in ("+", "-", "*", "/"):
            guard = member.id
            other = args["other"] if args["input"] is member else args["input"]
            base = other.id if isinstance(other, N.Name) else None
            if base is None or (op.operator in ("-", "/") and args["input"] is member):
                raise NotDerivable(
                    source.span, f"a derived backward needs the optional '{member.id}' on the right of {op.operator}"
                )
        expr = _op_expr(op, args, source)
        if items is not None:
            expr.items = items
        if guard is None:  # the same operation on the same operands is computed once
            key = B.key(expr)
            for s in self.steps:
                if s.guard is None and s.op is op and B.key(s.expr) == key:
                    return B.name(s.var, source.span)
        var = self.fresh(_hint_for(op, hint))
        self.steps.append(Step(var, op, args, expr, guard, base))
        return B.name(var, source.span)

    def opaque(self, expr: N.Expr, hint: str) -> N.Name:
        var = self.fresh("mask")
        self.steps.append(Step(var, None, {}, expr))
        return B.name(var, expr.span)

    def _needs_grad(self, operand: N.Name) -> bool:
        diff = {i.name for i in self.layer.forward.inputs if i.dtype == "float"} | {t.name for t in self.layer.params}
        if operand.id in diff:
            return True
        step = next((s for s in self.steps if s.var == operand.id), None)
        if step is None:
            return False
        return (
            any(isinstance(a, N.Name) and a.kind == "tensor" and self._needs_grad(a) for a in step.args.values())
            if step.op
            else False
        )


def _hint_for(op: Op, hint: str) -> str:
    return (
        hint if hint not in ("t", "out") else {"matmul": "mm", "sigmoid": "s", "tanh": "th"}.get(op.name, op.name[:4])
    )


def _op_expr(op: Op, args: dict[str, N.Expr], source: N.Expr) -> N.Expr:
    """The step as an expression, in operator form where the op is one."""
    if op.operator == "neg":
        e = N.UnaryOp(source.span, "-", args["input"])
    elif op.operator:
        e = N.BinOp(source.span, op.operator, args["input"], args.get("other", args.get("exponent")))
    elif op.template:  # written by its template: every argument in signature order
        e = N.Call(source.span, op.name, source.span, [args[p.name] for p in op.params if p.name in args], [])
    else:
        e = N.Call(source.span, op.name, source.span, [], [N.Keyword(k, v, source.span) for k, v in args.items()])
        e.args = [v for p in op.params if (v := args.get(p.name)) is not None and (p.tensor or p.tensors)]
        e.kwargs = [
            N.Keyword(p.name, args[p.name], source.span)
            for p in op.params
            if not (p.tensor or p.tensors) and p.name in args and not _is_default(op, p.name, args[p.name])
        ]
    e.kind = "tensor"
    return e


def _is_default(op: Op, pname: str, value: N.Expr) -> bool:
    p = op.param(pname)
    if p.default is None:
        return False
    return _same(value, parse_default(p.default))


def _same(a, b) -> bool:
    match a, b:
        case N.Num(value=x), N.Num(value=y):
            return x == y
        case N.Bool(value=x), N.Bool(value=y):
            return x == y
        case N.NoneLit(), N.NoneLit():
            return True
        case N.Name(id=x), N.Name(id=y):
            return x == y
    return False


# ------------------------------------------------------------------ reverse mode


@dataclass(eq=False)
class GradStmt:
    var: str  # the gradient variable it binds
    expr: N.Expr
    leaves: set[str] = field(default_factory=set)  # leaves whose gradient needs it


@dataclass
class Backward:
    stmts: list[GradStmt]
    leaf_grads: dict[str, str]  # leaf -> gradient var


def derive(tape: Tape, grad_names: list[str], extra_grads: dict[str, str] | None = None) -> Backward:
    """`extra_grads`: intermediates the forward also returns (to save them), with their incoming gradient's
    name; those gradients are zero in a first backward and matter in double backward."""
    contributions: dict[str, list[tuple[N.Expr, str | None]]] = {}
    requires = _requires_grad(tape)
    for out, g in zip(tape.outputs, grad_names):
        if isinstance(out, N.Name) and out.id in requires:
            contributions.setdefault(out.id, []).append((B.name(g), None))
    for var, g in (extra_grads or {}).items():
        if var in requires:
            contributions.setdefault(var, []).append((B.name(g), None))
    stmts: list[GradStmt] = []
    grad_var: dict[str, str] = {}

    def gradient_of(var: str) -> N.Expr | None:
        parts = contributions.get(var)
        if not parts:
            return None
        if len(parts) == 1 and parts[0][1] is None and isinstance(parts[0][0], N.Name):
            grad_var[var] = parts[0][0].id
            return parts[0][0]
        total = None
        name = f"grad_{var}"
        for expr, count in _merge_terms([e for e, _ in parts]):
            term = expr if count == 1 else _scale(count, expr)
            total = term if total is None else B.binop("+", total, term)
        stmts.append(GradStmt(name, simplify(total)))
        grad_var[var] = name
        return B.name(name)

    for step in reversed(tape.steps):
        if step.op is None or step.var not in requires:
            continue
        g = gradient_of(step.var)
        if g is None:
            continue
        if step.op.name == "einsum":
            for operand, expr in _einsum_grads(step, g):
                if operand.id in requires:
                    contributions.setdefault(operand.id, []).append((expr, None))
            continue
        for pname, operand in step.args.items():
            if not (isinstance(operand, N.Name) and operand.id in requires):
                continue
            f = step.op.grads.get(pname)
            expr = instantiate(f and formula(step.op.name, pname), step, g)
            expr = simplify(expr)
            if step.op.shape == "elementwise" and _may_broadcast(tape, step, operand):
                expr = B.call("sum_to", expr, B.name(operand.id))
            elif step.op.shape == "matmul" and _may_batch(tape, step):
                expr = B.call("sum_to", expr, B.name(operand.id))
            contributions.setdefault(operand.id, []).append((expr, None))
    for leaf in tape.leaves:
        if leaf in tape.differentiable and leaf in requires:
            g = gradient_of(leaf)
            if g is not None and not (isinstance(g, N.Name) and g.id == f"grad_{leaf}"):
                stmts.append(GradStmt(f"grad_{leaf}", g))
                grad_var[leaf] = f"grad_{leaf}"
    _mark_leaves(stmts, tape)
    return Backward(stmts, {l: grad_var[l] for l in tape.leaves if l in grad_var})


def _requires_grad(tape: Tape) -> set[str]:
    req = set(tape.differentiable)
    for step in tape.steps:
        if step.op is not None and any(isinstance(a, N.Name) and a.id in req for a in _flat(step.args.values())):
            req.add(step.var)
    return req


def _flat(values):
    for v in values:
        if isinstance(v, N.ListExpr):
            yield from v.items
        else:
            yield v


def _may_broadcast(tape: Tape, step: Step, operand: N.Name) -> bool:
    """Whether operand's gradient may need summing back (its shape may differ from the result's)."""
    shapes = getattr(tape, "shapes", {})
    a, r = shapes.get(operand.id), shapes.get(step.var)
    return a is None or r is None or a != r


def _einsum_grads(step: Step, grad: N.Expr):
    """For y = einsum("s1,s2->so", a, b): the gradient of a is einsum("so,s2->s1", grad, b)."""
    spec = step.args["equation"].value
    ins, out = spec.split("->")
    ins = ins.split(",")
    operands = step.args["operands"].items
    for k, operand in enumerate(operands):
        if not isinstance(operand, N.Name):
            continue
        others = [(s, o) for j, (s, o) in enumerate(zip(ins, operands)) if j != k]
        available = set(out) | {c for s, _ in others for c in s}
        if not set(ins[k]) <= available:
            raise NotDerivable(
                step.expr.span,
                "a derived backward cannot go through a sum over an index only one tensor has; write a backward block",
            )
        eq = N.Str(NOWHERE, ",".join([out] + [s for s, _ in others]) + "->" + ins[k])
        eq.kind = "str"
        tensors = N.ListExpr(NOWHERE, [copy.deepcopy(grad)] + [copy.deepcopy(o) for _, o in others])
        tensors.kind = "list"
        call = N.Call(NOWHERE, "einsum", NOWHERE, [eq, tensors], [])
        call.kind = "tensor"
        yield operand, call


def _may_batch(tape: Tape, step: Step) -> bool:
    """Whether a matmul broadcasts batch dims (so an operand's gradient must be summed back)."""
    shapes = getattr(tape, "shapes", {})
    a = shapes.get(getattr(step.args["input"], "id", None))
    b = shapes.get(getattr(step.args["other"], "id", None))
    return a is None or b is None or "..." in a or "..." in b or len(a) != len(b)


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


def instantiate(template: N.Expr | None, step: Step, grad: N.Expr) -> N.Expr:
    if template is None:
        raise NotDerivable(step.expr.span, f"{step.op.name}() has no derivative")
    subst = {**step.args, "grad": grad, "result": B.name(step.var)}

    def go(e):
        if isinstance(e, N.Name) and e.id in subst:
            return copy.deepcopy(subst[e.id])
        e = N.map_children(e, go)
        if isinstance(e, N.Name) and e.id in ("pi", "inf"):
            e.ref, e.kind = "const", "float"
        return e

    out = go(template)
    _kinds(out)
    return out


def _kinds(e) -> str:
    """Re-derive kinds in an instantiated formula: tensor if any operand is."""
    kids = [_kinds(c) for c in N.children(e) if isinstance(c, N.Expr)]
    if isinstance(e, N.Name):
        if not e.kind:
            e.kind = "tensor"
    elif isinstance(e, N.Num):
        e.kind = "float" if isinstance(e.value, float) else "int"
    elif isinstance(e, (N.Bool,)):
        e.kind = "bool"
    elif isinstance(e, N.NoneLit):
        e.kind = "none"
    elif isinstance(e, N.Call) and e.func in OPS and OPS[e.func].internal:
        e.kind = "tensor" if e.func not in ("reduced_numel", "shape_of") else "int"
    else:
        e.kind = "tensor" if "tensor" in kids else ("float" if "float" in kids else (kids[0] if kids else "float"))
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
    for n in N.walk(s.expr):
        if isinstance(n, N.Name) and n.id in by_var:
            _mark(by_var[n.id], leaf, by_var, seen)


# ------------------------------------------------------------------ simplification


def _is(e, v) -> bool:
    return isinstance(e, N.Num) and e.value == v


def simplify(e: N.Expr) -> N.Expr:
    """Constant folding and the identities x*1, x+0, x-0, x/1, --x, x**1."""
    match e:
        case N.BinOp(op=op, left=l, right=r):
            l, r = simplify(l), simplify(r)
            if isinstance(l, N.Num) and isinstance(r, N.Num) and op in ("+", "-", "*", "/", "**"):
                try:
                    return B.num(
                        {
                            "+": l.value + r.value,
                            "-": l.value - r.value,
                            "*": l.value * r.value,
                            "/": l.value / r.value,
                            "**": l.value**r.value,
                        }[op]
                    )
                except ZeroDivisionError:
                    pass
            if op == "*" and _is(l, 1) or op in ("+",) and _is(l, 0):
                return r
            if op in ("*", "/") and _is(r, 1) or op in ("+", "-") and _is(r, 0) or op == "**" and _is(r, 1):
                return l
            if op == "*" and _is(l, -1):
                return simplify(_neg(r))
            if op == "-" and _is(l, 0):
                return simplify(_neg(r))
            if op == "**" and _is(r, 2) and isinstance(l, N.Name):
                return B.binop("*", l, copy.deepcopy(l))
            out = N.BinOp(e.span, op, l, r)
            out.kind = e.kind
            return out
        case N.UnaryOp(op="-", operand=o):
            o = simplify(o)
            if isinstance(o, N.Num):
                return B.num(-o.value)
            if isinstance(o, N.UnaryOp) and o.op == "-":
                return o.operand
            return _neg(o)
        case N.Call():
            c = copy.copy(e)
            c.args = [simplify(a) for a in e.args]
            c.kwargs = [N.Keyword(k.name, simplify(k.value), k.span) for k in e.kwargs]
            return c
    return e


def _neg(o: N.Expr) -> N.Expr:
    u = N.UnaryOp(NOWHERE, "-", o)
    u.kind = o.kind
    return u
