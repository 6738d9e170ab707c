"""Emission of `<Name>Function(torch.autograd.Function)` for `@function` layers.

The forward is the tape of `derive.linearize` with single-use cheap steps folded back into their
consumer; costly intermediates the backward reads are returned as extra outputs (so double backward sees
them) and saved. The backward is derived (`derive.derive`) or hand-written, guarded by
`ctx.needs_input_grad`, and reads only what it needs: inputs and parameters, saved costly results, and
cheap intermediates recomputed from them.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from layerdsl.autodiff.derive import Linearizer, NotDerivable, Step, Tape, derive
from layerdsl.autodiff.shapes import infer_shapes, same_shape_leaf
from layerdsl.codegen.pyexpr import PyExpr, Spelling
from layerdsl.diagnostics import SpecError
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.language.ops import OPS, shape_args
from layerdsl.optimize import (
    Facts,
    Stmt,
    addcmul_form,
    dtype_sources,
    fresh_node,
    guarded_addcmul,
    optimize,
    substitute,
    unary_in_place,
)


def emit_function_class(emitter, functional) -> dict:
    layer = emitter.layer
    try:
        return FunctionEmitter(emitter).emit()
    except NotDerivable as exc:
        from layerdsl.diagnostics import Diagnostic

        raise SpecError([Diagnostic(layer.path, exc.span, exc.message, exc.hint)]) from None


class FunctionEmitter:
    def __init__(self, emitter):
        self.e = emitter
        self.layer = emitter.layer
        self.kwargs = emitter.function_kwargs()  # numbers passed through apply: arguments, lets, training
        dec = self.layer.decorator("function")
        save = next((k.value.value for k in dec.kwargs if k.name == "save"), "auto")
        self.save_inputs_only = save == "inputs"

    # ---------------------------------------------------------------- the pieces

    def emit(self) -> dict:
        layer = self.layer
        tape = Linearizer(layer, self.e.optional, deriving=layer.backward is None).run()
        tape.shapes = infer_shapes(tape, layer)
        self.tape = tape
        self.exact = frozenset(_compared_exactly(tape))  # rounded as written, in forward and backward alike
        n_out = len(tape.outputs)
        grads = (
            [n for n, _ in layer.backward.grads]
            if layer.backward
            else [f"grad_{_out_name(o, i)}" for i, o in enumerate(tape.outputs)]
        )
        if layer.backward is None:
            incoming = _incoming(tape, grads)
            body, reads = self.derived_backward(tape, derive(tape, grads), incoming)
            saved, extra = self.saving(tape, reads)
            if extra:  # returned intermediates get gradients of their own (for double backward)
                extra_grads = {v: f"grad_{v}_out" for v in extra}
                if n_out == 1:
                    # Those gradients are None (grads are not materialised) except in double backward: the
                    # main derivation ignores them, and each has its own section, run when it is given.
                    self.split = True
                    rare = [(v, g, derive(tape, [], {v: g})) for v, g in extra_grads.items()]
                    body, reads = self.derived_backward(tape, derive(tape, grads), incoming, rare)
                else:
                    incoming.update({g: v for v, g in extra_grads.items()})
                    body, reads = self.derived_backward(tape, derive(tape, grads, extra_grads), incoming)
                saved, extra = self.saving(tape, reads)
        else:
            body, reads = self.handwritten_backward(tape, grads)
            saved, extra = self.saving(tape, reads)
        fwd_body = self.forward_body(tape, extra)
        leaves = tape.leaves
        name = f"{layer.name}Function"
        inputs_unpack = leaves + self.kwargs
        return {
            "name": name,
            "doc": f"`{layer.name}` as an autograd.Function with a {'hand-written' if layer.backward else 'derived'} backward.",
            "forward_params": [f"{l}: Tensor" if self._is_required(l) else f"{l}: Tensor | None" for l in leaves]
            + [self._kw_param(k) for k in self.kwargs],
            "forward_body": fwd_body,
            "returns": (
                "Tensor" if n_out + len(extra) == 1 else f"tuple[{', '.join(['Tensor'] * (n_out + len(extra)))}]"
            ),
            "setup_body": self.setup_body(tape, saved, extra, inputs_unpack),
            "backward_params": ["ctx"] + grads + [f"grad_{x}_out" for x in extra],
            "backward_body": body,
            "apply_params": inputs_unpack,
            "n_outputs": n_out,
            "extra": extra,
        }

    def _is_required(self, leaf: str) -> bool:
        return leaf not in self.e.optional

    def _kw_param(self, k: str) -> str:
        if k == "training":
            return "training: bool"
        arg = self.layer.arg(k)
        return f"{k}: {arg.type}" if arg else f"{k}: float"

    # ---------------------------------------------------------------- saving

    def saving(self, tape: Tape, reads: dict[str, set[str]]) -> tuple[list[tuple[str, set[str]]], list[str]]:
        """(tensors to save with the leaves needing them, costly intermediates returned as extra outputs)."""
        order = {v: i for i, v in enumerate(tape.leaves + [s.var for s in tape.steps])}
        outputs = {o.id for o in tape.outputs if isinstance(o, N.Name)}
        saved = sorted(reads.items(), key=lambda kv: order[kv[0]])
        extra = [v for v, _ in saved if v not in tape.leaves and v not in outputs]
        return saved, extra

    def needs(self, leaves: set[str], tape: Tape) -> str | None:
        """The `ctx.needs_input_grad` condition for work that only these leaves' gradients need."""
        wanted = [l for l in tape.leaves if l in tape.differentiable]
        if not leaves or set(wanted) <= leaves:
            return None
        idx = [tape.leaves.index(l) for l in wanted if l in leaves]
        return " or ".join(f"ctx.needs_input_grad[{i}]" for i in idx)

    # ---------------------------------------------------------------- forward

    def prelude(self, tape: Tape, names: set[str], ex: PyExpr, dim_spelling) -> list[str]:
        """Dims and number locals the code reads, bound before it: `n = x.shape[-1]`, `h = n // 2`."""
        numbers = dict(tape.numbers)
        wanted, frontier = set(), [n for n in names if n in numbers or n in self.dim_source]
        while frontier:
            n = frontier.pop()
            if n in wanted:
                continue
            wanted.add(n)
            if n in numbers:
                frontier += [m.id for m in N.walk(numbers[n]) if isinstance(m, N.Name)]
        lines = [f"{d} = {dim_spelling(d)}" for d in self.dim_source if d in wanted]
        lines += [f"{n} = {ex(e)}" for n, e in tape.numbers if n in wanted]
        self.dims_read = getattr(self, "dims_read", set()) | {d for d in self.dim_source if d in wanted}
        return lines

    @property
    def dim_source(self) -> dict[str, str]:
        """Each symbolic dim, as read from the first input that declares it."""
        out: dict[str, str] = {}
        for inp in self.layer.forward.inputs:
            dims = inp.shape.dims if inp.shape else []
            ell = next((k for k, d in enumerate(dims) if isinstance(d, N.EllipsisItem)), None)
            for k, d in enumerate(dims):
                if isinstance(d, N.Name) and d.id in getattr(self.layer, "symbolic_dims", []) and d.id not in out:
                    pos = k if ell is None or k < ell else k - len(dims)
                    out[d.id] = f"{inp.name}.shape[{pos}]"
        return out

    def forward_body(self, tape: Tape, extra: list[str]) -> list[str]:
        keep = set(extra) | {s.var for s in tape.steps if s.guard}
        exprs = {}
        uses = _use_counts(tape)
        spelling = Spelling({}, training="training")
        ex = PyExpr(spelling, call_hook=self._internal)
        read = {n.id for s in tape.steps for n in N.walk(s.expr) if isinstance(n, N.Name)}
        read |= {n.id for o in tape.outputs for n in N.walk(o) if isinstance(n, N.Name)}
        lines = self.prelude(tape, read, ex, lambda d: self.dim_source[d])
        exact = self.exact
        roots: dict[str, frozenset[str]] = {}
        owned: set[str] = set()  # temporaries read once, holding a buffer of their own

        def out(e: N.Expr) -> str:
            return ex(unary_in_place(e, owned, lambda t: bool(dtype_sources(t, roots) & tape.differentiable)))

        def bind(var: str, e: N.Expr | None) -> None:  # `var` now holds `e`'s result
            if uses.get(var, 0) == 1 and var not in extra and e is not None and fresh_node(e):
                owned.add(var)

        for s in tape.steps:
            roots[s.var] = roots.get(s.base, frozenset({s.base})) if s.guard else dtype_sources(s.expr, roots)
            if s.guard:
                base = exprs.pop(s.base, None)
                merged = (
                    None if base is None or s.var in exact else guarded_addcmul(_squares(base), s.expr, s.base, s.guard)
                )
                if merged is not None:
                    lines += [
                        f"if {s.guard} is not None:",
                        f"    {s.var} = {out(merged)}",
                        "else:",
                        f"    {s.var} = {out(_squares(base))}",
                    ]
                    bind(s.var, base)
                    continue
                lines.append(f"{s.var} = {out(base) if base is not None else s.base}")
                lines += [f"if {s.guard} is not None:", f"    {s.var} = {out(_replace_name(s.expr, s.base, s.var))}"]
                bind(s.var, base)
                continue
            expr = _squares(substitute(s.expr, exprs))
            if s.var not in exact:  # a max/min reads the value as the backward recomputes it: as written
                expr = addcmul_form(expr)
            if s.var in keep | exact or uses.get(s.var, 0) != 1 or s.var in self._spec_locals():
                lines.append(f"{s.var} = {out(expr)}")
                bind(s.var, expr)
            else:
                exprs[s.var] = expr
        outs = [out(substitute(o, exprs)) if isinstance(o, N.Name) else ex(o) for o in tape.outputs]
        return lines + [f"return {', '.join(outs + extra)}"]

    def _spec_locals(self) -> set[str]:
        return {s.target for s in self.layer.forward.body if isinstance(s, N.Assign)}

    def setup_body(self, tape: Tape, saved, extra, unpack) -> list[str]:
        shapes = getattr(self, "shape_on_ctx", {})
        saved_names = {v for v, _ in saved}
        dims = sorted(getattr(self, "backward_dims", set()))
        used = saved_names | set(shapes) | set(self.kwargs) | {self.dim_source[d].split(".")[0] for d in dims}
        lines = []
        if any(u in used for u in unpack):
            names = [u if u in used else "_" for u in unpack]
            lines.append(f"{', '.join(names)}{',' if len(names) == 1 else ''} = inputs")
        outs = [o.id if isinstance(o, N.Name) and o.id in saved_names else "_" for o in tape.outputs]
        outs += [e if e in saved_names else "_" for e in extra]
        if any(v in outs for v in saved_names):
            lines.append(f"{outs[0]} = output" if len(outs) == 1 else f"{', '.join(outs)} = output")
        if getattr(self, "split", False):
            lines.append("ctx.set_materialize_grads(False)")
        for k in self.kwargs:
            lines.append(f"ctx.{k} = {k}")
        for name in shapes:
            lines.append(f"ctx.{name}_shape = {name}.shape")
        for d in dims:
            lines.append(f"ctx.{d} = {self.dim_source[d]}")
        if saved:
            items = []
            for var, leaves in saved:
                cond = self.needs(leaves, tape)
                items.append(var if cond is None else f"{var} if {cond} else None")
            lines.append(f"ctx.save_for_backward({', '.join(items)})")
        return lines

    # ---------------------------------------------------------------- derived backward

    def derived_backward(
        self, tape: Tape, bwd, incoming: dict[str, str], rare=()
    ) -> tuple[list[str], dict[str, set[str]]]:
        """Lines of the backward and, for each forward tensor it reads, which leaves need it. `rare`: the
        derivations from extra outputs' gradients, each run only when that gradient is given."""
        main = Section(self._derived_items(bwd, tape), incoming)
        if rare:
            main.cond = " and ".join(f"{g} is not None" for g in incoming)
        sections = [main]
        for var, grad, rbwd in rare:
            renamed = {f"grad_{l}": self._fresh(tape, f"grad_{l}_from_{var}") for l in tape.leaves}
            items = [(lv, renamed.get(t, t), _renamed(e, renamed)) for lv, t, e in self._derived_items(rbwd, tape)]
            produced = {t for _, t, _ in items}
            accumulate = {l: renamed[f"grad_{l}"] for l in tape.leaves if renamed[f"grad_{l}"] in produced}
            sections.append(Section(items, {grad: var}, f"{grad} is not None", accumulate, rare=True))
        return self._backward(tape, sections)

    def _derived_items(self, bwd, tape: Tape) -> list[tuple[set[str], str, N.Expr]]:
        for s in bwd.stmts:
            s.expr = self._shape_only(s.expr, tape)
        items = [(s.leaves, s.var, s.expr) for s in bwd.stmts]
        return items + [({l}, f"grad_{l}", B.name(g)) for l, g in bwd.leaf_grads.items() if g != f"grad_{l}"]

    @staticmethod
    def _fresh(tape: Tape, name: str) -> str:
        taken = set(tape.leaves) | {s.var for s in tape.steps}
        while name in taken:
            name += "_"
        return name

    def _backward(self, tape: Tape, sections: list[Section]) -> tuple[list[str], dict[str, set[str]]]:
        """Shared by derived and hand-written backwards. Each section's items are (leaves, target, expr) in
        order, and its `incoming` maps each incoming gradient it reads to the forward value it is the
        gradient of. Sections share what is saved; each recomputes what it needs itself."""
        reads: dict[str, set[str]] = {}
        outputs = {o.id for o in tape.outputs if isinstance(o, N.Name)}

        def reader(recompute: dict[str, set[str]], rare: bool):
            def read(var: str, leaves: set[str]):
                step = tape.step(var)
                # A hand-written backward ignores the gradients of extra outputs (and a rare section comes
                # after the extra outputs are chosen), so for double backward to stay right they recompute
                # even costly intermediates from what is saved.
                costly_saved = step is not None and step.costly and self.layer.backward is None and not rare
                keep = (
                    step is None
                    or not self.save_inputs_only
                    and (var in outputs or costly_saved)
                    or rare
                    and var in reads
                )
                if keep:
                    reads.setdefault(var, set()).update(leaves)
                    return
                grows = not leaves <= recompute.get(var, set())
                recompute.setdefault(var, set()).update(leaves)
                if grows:
                    for n in _value_names(step.expr):
                        if tape.step(n) or n in tape.leaves:
                            read(n, leaves)
                    if step.guard:
                        read(step.guard, leaves)

            return read

        readers = []
        shape_uses: dict[str, set[str]] = {}
        for sec in sections:
            read = reader(sec.recompute, sec.rare)
            readers.append(read)
            for leaves, _, expr in sec.items:
                for n in _value_names(expr):
                    if tape.step(n) or n in tape.leaves:
                        read(n, leaves)
                for n in _shape_names(expr):
                    shape_uses.setdefault(n, set()).update(leaves)
        recomputed = {v for sec in sections for v in sec.recompute}
        self.shape_on_ctx = {
            n: l for n, l in shape_uses.items() if n not in reads and n not in recomputed and n in tape.leaves
        }
        for sec, read in zip(sections, readers):
            for leaves, _, expr in sec.items:
                for n in _shape_names(expr):
                    if n not in self.shape_on_ctx:
                        read(n, leaves)
        ex = PyExpr(Spelling({k: f"ctx.{k}" for k in self.kwargs}, training="ctx.training"), call_hook=self._internal)
        order = {v: i for i, v in enumerate(tape.leaves + [s.var for s in tape.steps])}
        read_names = {n.id for sec in sections for _, _, e in sec.items for n in N.walk(e) if isinstance(n, N.Name)}
        read_names |= {n.id for s in tape.steps if s.var in recomputed for n in N.walk(s.expr) if isinstance(n, N.Name)}
        self.dims_read = set()
        lines = self.prelude(tape, read_names, ex, lambda d: f"ctx.{d}")
        self.backward_dims = set(self.dims_read)
        saved = sorted(reads, key=lambda v: order.get(v, 1 << 30))
        if saved:
            lines.append(f"{', '.join(saved)}{',' if len(saved) == 1 else ''} = ctx.saved_tensors")
        grads = [f"grad_{l}" for l in tape.leaves if l in tape.differentiable]
        always = {t for lv, t, _ in sections[0].items if self.needs(lv, tape) is None}
        guarded = [g for g in grads if g not in always or len(sections) > 1]
        if guarded:
            lines.append(" = ".join(guarded) + " = None")
        for sec in sections:
            body = self._section(tape, sec, ex, set(reads))
            lines += body if sec.cond is None else [f"if {sec.cond}:", *("    " + line for line in body)]
        returns = [f"grad_{l}" if l in tape.differentiable else "None" for l in tape.leaves] + ["None"] * len(
            self.kwargs
        )
        lines.append(f"return {', '.join(returns)}")
        return lines, reads

    def _section(self, tape: Tape, sec: Section, ex: PyExpr, saved: set[str]) -> list[str]:
        stmts = [
            t for s in tape.steps if s.var in sec.recompute for t in self._recompute_stmts(s, sec.recompute[s.var])
        ]
        stmts += [Stmt(target, expr, leaves) for leaves, target, expr in sec.items]
        facts = self._facts(tape, sec.incoming, saved | set(sec.accumulate.values()))
        unrecorded, schedule = self._optimized(
            copy.deepcopy(stmts), dataclasses.replace(facts, graph=False), sec, ex, tape
        )
        recorded, _ = self._optimized(stmts, facts, sec, ex, tape, schedule)
        return _by_grad_mode(recorded, unrecorded)

    def _optimized(self, stmts: list[Stmt], facts: Facts, sec: Section, ex: PyExpr, tape: Tape, prefer: int = 0):
        stmts, schedule = optimize(stmts, facts, prefer)
        blocks = [(s.leaves, _render(s, ex)) for s in stmts]
        for leaf, part in sec.accumulate.items():  # add to what the main section found (or None)
            blocks.append(({leaf}, [f"grad_{leaf} = {part} if grad_{leaf} is None else grad_{leaf} + {part}"]))
        return self._guarded(blocks, tape), schedule

    def _recompute_stmts(self, s: Step, leaves: set[str]) -> list[Stmt]:
        if s.guard:  # `var = base`, then `var = var + member` when the optional member is present
            return [
                Stmt(s.var, B.name(s.base), leaves, recompute=True),
                Stmt(s.var, _replace_name(s.expr, s.base, s.var), leaves, recompute=True, guard=s.guard),
            ]
        return [Stmt(s.var, _squares(s.expr), leaves, recompute=True)]

    def _facts(self, tape: Tape, incoming: dict[str, str], kept: set[str]) -> Facts:
        """What the fusion pass may assume about the names a backward starts with."""
        shapes = {f"grad_{v}": shape for v, shape in tape.shapes.items()}  # a gradient has its value's shape
        shapes.update(tape.shapes)
        shapes.update({g: tape.shapes.get(v) for g, v in incoming.items()})
        returned = {f"grad_{l}" for l in tape.leaves}
        outputs = [o.id for o in tape.outputs if isinstance(o, N.Name)]
        full = [tape.shapes.get(n) for n in [i.name for i in self.layer.forward.inputs] + outputs]
        sources: dict[str, frozenset[str]] = {}
        for step in tape.steps:  # with an optional member, only what holds when it is absent
            sources[step.var] = (
                sources.get(step.base, frozenset({step.base})) if step.guard else dtype_sources(step.expr, sources)
            )
        return Facts(
            roots={**sources, **{g: sources.get(v, frozenset({v})) | {g} for g, v in incoming.items()}},
            shapes=shapes,
            kept=set(tape.leaves) | kept | set(incoming) | returned,
            foldable={s.var for s in tape.steps} - set(tape.env.values()),
            full=[f for f in full if f],
            incoming=set(incoming),
            floating=frozenset(tape.differentiable) | set(incoming),
            exact=self.exact,
        )

    def _guarded(self, items, tape: Tape) -> list[str]:
        lines, current, block = [], None, []
        for leaves, code in items + [(None, None)]:
            cond = self.needs(leaves, tape) if leaves is not None else "<end>"
            if cond != current and block:
                lines += block if current is None else [f"if {current}:", *("    " + c for c in block)]
                block = []
            current = cond
            if code:
                block += code
        return lines

    def _shape_only(self, e: N.Expr, tape: Tape) -> N.Expr:
        """Arguments of the internal helpers that only give a shape: use a leaf of the same static shape."""
        for node in N.walk(e):
            if isinstance(node, N.Call):
                for i in shape_args(node):
                    arg = node.args[i]
                    if isinstance(arg, N.Name) and arg.id not in tape.leaves:
                        same = same_shape_leaf(tape, arg.id)
                        if same is not None:
                            node.args[i] = B.name(same)
        return e

    # ---------------------------------------------------------------- hand-written backward

    def handwritten_backward(self, tape: Tape, grads: list[str]) -> tuple[list[str], dict[str, set[str]]]:
        """The spec's backward block; forward locals it uses are recomputed or saved like derived ones."""
        leaves_all = {l for l in tape.leaves if l in tape.differentiable}
        env = tape.env  # forward local -> the tape var holding it
        items = []
        for stmt in self.layer.backward.body:
            if isinstance(stmt, N.Assign):  # a local of the backward, needed by any gradient
                items.append((set(leaves_all), stmt.target, _rename_locals(stmt.value, env)))
            elif isinstance(stmt, N.Grad) and isinstance(stmt.value, N.NoneLit):
                continue
            elif isinstance(stmt, N.Grad):
                items.append(({stmt.target}, f"grad_{stmt.target}", _rename_locals(stmt.value, env)))
            else:
                raise NotDerivable(
                    stmt.span,
                    "a backward block holds `NAME = ...` and `grad NAME = ...` statements",
                    "compute both branches and choose with where()",
                )
        return self._backward(tape, [Section(items, _incoming(tape, grads))])

    # ---------------------------------------------------------------- internal helpers

    def _internal(self, c: N.Call, ex: PyExpr) -> str | None:
        f = c.func
        if f not in OPS or not OPS[f].internal:
            return None
        a = c.args
        if f == "sum_to":
            # `*shape` where the rank is known to be at least 1: torch parses separate ints faster than a Size.
            rank = self.tape.shapes.get(a[1].id) if isinstance(a[1], N.Name) else None
            star = "*" if rank else ""
            return f"{ex.wrap(a[0], 14)}.sum_to_size({star}{self._shape(a[1], ex)})"
        if f == "shape_of":
            return self._shape(a[0], ex)
        if f == "expand_reduced":
            g, inp, dim, keepdim = a
            return f"{self._unsqueeze(ex.wrap(g, 14), dim, keepdim, ex)}.expand({self._shape(inp, ex)})"
        if f == "reduced_view":
            g, _, dim, keepdim = a
            return self._unsqueeze(ex.wrap(g, 14), dim, keepdim, ex)
        if f == "reduced_numel":
            inp, dim = a
            shape = self._shape(inp, ex)
            if isinstance(dim, N.NoneLit):
                return f"{shape}.numel()"
            if isinstance(dim, N.ListExpr):
                return "(" + " * ".join(f"{shape}[{ex(d)}]" for d in dim.items) + ")"
            return f"{shape}[{ex(dim)}]"
        if f == "extremum_mask":
            inp, res, dim, keepdim = a
            mask = f"({ex(inp)} == {self._unsqueeze(ex.wrap(res, 14), dim, keepdim, ex)})"
            dims = ex(dim) if not isinstance(dim, N.NoneLit) else "None"
            return f"({mask} / {mask}.sum({dims}, keepdim=True))"
        return None

    def _shape(self, e: N.Expr, ex: PyExpr) -> str:
        """A tensor's shape: from the tensor when the backward has it, else as kept on ctx."""
        if isinstance(e, N.Name) and e.id in getattr(self, "shape_on_ctx", ()):
            return f"ctx.{e.id}_shape"
        return f"{ex(e)}.shape"

    def _unsqueeze(self, g: str, dim: N.Expr, keepdim: N.Expr, ex: PyExpr) -> str:
        if isinstance(keepdim, N.Bool) and keepdim.value or isinstance(dim, N.NoneLit):
            return g
        if isinstance(dim, N.ListExpr):
            for d in sorted(dim.items, key=lambda d: d.value if isinstance(d, N.Num) else 0):
                g = f"{g}.unsqueeze({ex(d)})"
            return g
        if isinstance(keepdim, N.Bool):
            return f"{g}.unsqueeze({ex(dim)})"
        return f"({g} if {ex(keepdim)} else {g}.unsqueeze({ex(dim)}))"


@dataclass
class Section:
    """Statements of a backward that run together: the main derivation, or (run only when the gradient of
    an extra output is given) the derivation from that gradient, added to the main one's results."""

    items: list[tuple[set[str], str, N.Expr]]
    incoming: dict[str, str]
    cond: str | None = None
    accumulate: dict[str, str] = field(default_factory=dict)  # leaf -> the name holding this section's part
    rare: bool = False
    recompute: dict[str, set[str]] = field(default_factory=dict)


def _compared_exactly(tape: Tape) -> set[str]:
    """Values a max/min reads, directly or through other steps: the backward compares their recomputation
    with the saved extremum, so forward and backward write them alike, as the spec does (`Facts.exact`)."""
    by_var = {s.var: s for s in tape.steps}
    frontier = [
        n
        for s in tape.steps
        if s.op and any("extremum_mask" in (f or "") for f in s.op.grads.values())
        for n in _value_names(s.expr)
    ]
    exact: set[str] = set()
    while frontier:
        name = frontier.pop()
        if name in by_var and name not in exact:
            exact.add(name)
            frontier += _value_names(by_var[name].expr)
    return exact


def _by_grad_mode(recorded: list[str], unrecorded: list[str]) -> list[str]:
    """One body when it is the same whether or not autograd records the backward; else the lines both
    share once, and the rest in two branches. Grad mode is on in a backward exactly when it is being
    recorded (`create_graph=True`); then no value an earlier operation keeps may be updated in place."""
    if recorded == unrecorded:
        return recorded
    a, b = _blocks(recorded), _blocks(unrecorded)
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    only_a, only_b = a[head : len(a) - tail], b[head : len(b) - tail]
    if len(only_a) == len(only_b) and all(
        x[0] == y[0] and _one_body(x) and _one_body(y) for x, y in zip(only_a, only_b)
    ):
        branch = []  # the same guards in the same order: branch inside each
        for x, y in zip(only_a, only_b):
            branch += [x[0], *("    " + line for line in _by_grad_mode(_dedented(x[1:]), _dedented(y[1:])))]
    else:
        branch = _branches(only_a, only_b)
    return (
        [line for block in a[:head] for line in block]
        + branch
        + [line for block in a[len(a) - tail :] for line in block]
    )


def _branches(only_a: list[list[str]], only_b: list[list[str]]) -> list[str]:
    why = "# create_graph=True: autograd records this backward, so nothing it saves is updated in place"
    if not only_a:
        return [why, "if not torch.is_grad_enabled():", *_indented(only_b)]
    return [why, "if torch.is_grad_enabled():", *_indented(only_a)] + (["else:", *_indented(only_b)] if only_b else [])


def _blocks(lines: list[str]) -> list[list[str]]:
    """Top-level statements, each with the indented lines it owns."""
    out: list[list[str]] = []
    for line in lines:
        if (line.startswith(" ") or line.startswith(("else:", "elif "))) and out:
            out[-1].append(line)
        else:
            out.append([line])
    return out


def _one_body(block: list[str]) -> bool:
    """`if ...:` with an indented body and no `else`."""
    return block[0].endswith(":") and all(line.startswith("    ") for line in block[1:])


def _dedented(lines: list[str]) -> list[str]:
    return [line[4:] for line in lines]


def _indented(blocks: list[list[str]]) -> list[str]:
    return ["    " + line for block in blocks for line in block]


def _renamed(e: N.Expr, names: dict[str, str]) -> N.Expr:
    e = copy.deepcopy(e)
    for n in N.walk(e):
        if isinstance(n, N.Name) and n.id in names:
            n.id = names[n.id]
    return e


def _render(s: Stmt, ex: PyExpr) -> list[str]:
    lines = [f"{s.target} = {ex(s.expr)}"]
    if s.guard:
        lines = [f"if {s.guard} is not None:", "    " + lines[0]]
        if s.otherwise is not None:
            lines += ["else:", f"    {s.target} = {ex(s.otherwise)}"]
    if s.unscaled is not None:
        lines.insert(0, f"# {s.target} without the factor {ex(s.unscaled)}: its readers apply it")
    return lines + ([f"del {', '.join(s.dels)}"] if s.dels else [])


def _squares(e: N.Expr) -> N.Expr:
    """`x ** 2` as `x * x`: the same value (ATen computes it so), without wrapping the 2 in a tensor,
    which costs about 1 µs a call at small shapes."""
    e = N.map_children(e, _squares)
    if (
        isinstance(e, N.BinOp)
        and e.op == "**"
        and isinstance(e.right, N.Num)
        and e.right.value == 2
        and isinstance(e.left, N.Name)
    ):
        out = N.BinOp(e.span, "*", e.left, copy.deepcopy(e.left))
        out.kind = e.kind
        return out
    return e


def _value_names(e) -> list[str]:
    """Names read as values (not only for their shape)."""
    out = []

    def go(n):
        if isinstance(n, N.Name):
            out.append(n.id)
            return
        if isinstance(n, N.Call) and shape_args(n):
            for i, a in enumerate(n.args):
                if i not in shape_args(n):
                    go(a)
            return
        for c in N.children(n):
            go(c)

    go(e)
    return out


def _shape_names(e) -> list[str]:
    out = []
    for n in N.walk(e):
        if isinstance(n, N.Call):
            out += [n.args[i].id for i in shape_args(n) if isinstance(n.args[i], N.Name)]
    return out


def _rename_locals(e: N.Expr, env: dict[str, str]) -> N.Expr:
    e = copy.deepcopy(e)
    for n in N.walk(e):
        if isinstance(n, N.Name) and n.ref == "local" and n.id in env:
            n.id = env[n.id]
    return e


def _incoming(tape: Tape, grads: list[str]) -> dict[str, str]:
    """Each incoming gradient, with the forward value it is the gradient of."""
    return {g: o.id for g, o in zip(grads, tape.outputs) if isinstance(o, N.Name)}


def _out_name(o, i) -> str:
    return "out" if i == 0 else f"out{i}"


def _use_counts(tape: Tape) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in tape.steps:
        for n in N.walk(s.expr):
            if isinstance(n, N.Name):
                counts[n.id] = counts.get(n.id, 0) + 1
    for o in tape.outputs:
        if isinstance(o, N.Name):
            counts[o.id] = counts.get(o.id, 0) + 1
    return counts


def _replace_name(e: N.Expr, old: str, new: str) -> N.Expr:
    e = copy.deepcopy(e)
    for n in N.walk(e):
        if isinstance(n, N.Name) and n.id == old:
            n.id = new
    return e
