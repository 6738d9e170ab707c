"""Emission of `<Name>Function(torch.autograd.Function)` for `@function` layers.

Written from the layer's `BackwardPlan` (`autodiff.plan`). The forward is the plan's tape with single-use
cheap steps folded back into their consumer; costly intermediates the backward reads are returned as
extra outputs (so double backward sees them) and saved. The backward is derived or hand-written, guarded by
`ctx.needs_input_grad`, and reads only what it needs: inputs and parameters, saved costly results, and
cheap intermediates recomputed from them.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from layerdsl.autodiff.inputs import with_tuples_split, without_callable_sides
from layerdsl.autodiff.loops import LoopPlan
from layerdsl.autodiff.plan import BackwardPlan, BranchPlan, Plan, dtype_tested
from layerdsl.autodiff.reverse import Backward, derive
from layerdsl.autodiff.shape_sources import broadcast_leaves, dim_size, leaf_size, with_static_shapes
from layerdsl.autodiff.shapes import same_shape_leaf
from layerdsl.autodiff.sub_calls import CallPlan
from layerdsl.autodiff.tape import Step, Tape
from layerdsl.autodiff.unroll import measured_sizes
from layerdsl.codegen.function_branches import chosen_lines
from layerdsl.codegen.function_buffers import always_updated, recomputed_read, returned_values, updated_buffers
from layerdsl.codegen.function_checks import check_lines, checks_by_step, read_vars
from layerdsl.codegen.function_sub_calls import emit_composed_function
from layerdsl.codegen.joint_gradients import joint_calls
from layerdsl.codegen.names import FunctionNames
from layerdsl.codegen.norm_loss_grads import norm_loss_grad, read_for_class_dim
from layerdsl.codegen.pyexpr import PREC, PyExpr, Spelling, float_like
from layerdsl.codegen.recorded_recompute import recomputable_when_recorded, recomputation
from layerdsl.codegen.spec_lines import with_spec_line
from layerdsl.codegen.spelling_reads import Read, Recording
from layerdsl.diagnostics import Span
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import NOWHERE
from layerdsl.ir.printer import ATOM
from layerdsl.ir.visit import children, clone, map_children, walk
from layerdsl.language.ops import OPS, shape_args
from layerdsl.language.tables import python_type
from layerdsl.optimize import (
    Facts,
    Mask,
    Pricing,
    ReadGraph,
    SavingCost,
    Stmt,
    addcmul_form,
    chosen_saves,
    dtype_sources,
    einsum_operands_in_cheapest_order,
    elements,
    explicit_sums,
    fresh_node,
    guarded_addcmul,
    mask_candidates,
    mean_of_squares_as_norm,
    prepared,
    replaced,
    scheduled,
    substitute,
    unary_in_place,
    walk_reads,
)
from layerdsl.semantics.evaluate import example_values
from layerdsl.semantics.shapes import GROUP, expr_shape, opaque


def emit_function_class(emitter, plan: Plan) -> dict:
    """The pieces of `<Name>Function` for the template, from the layer's backward plan."""
    from layerdsl.codegen import function_loops  # it builds on FunctionEmitter

    if isinstance(plan, BranchPlan) and function_loops.loop_sides(plan):  # `if`s on configuration, loops
        return function_loops.emit_branching_loop_function(emitter, plan)
    if isinstance(plan, BranchPlan):
        return emit_branching_function(emitter, plan)
    if isinstance(plan, LoopPlan):
        return function_loops.emit_loop_function(emitter, plan)
    if isinstance(plan, CallPlan):  # the subs' Functions composed
        return emit_composed_function(emitter, plan)
    return FunctionEmitter(emitter, plan).emit()


class FunctionEmitter:
    """One straight-line plan's Function. A side of a branching forward (`emit_branching_function`) is
    emitted with the names of every side in `scope`, and returns every side's extra outputs (`returned`,
    None for those it does not compute) so that all sides share one signature."""

    def __init__(
        self,
        emitter,
        plan: BackwardPlan,
        scope: set[str] | None = None,
        returned: list[str] | None = None,
        buffers: list[str] | None = None,
    ):
        self.e = emitter
        self.layer = emitter.layer
        forward = with_tuples_split(self.layer).forward  # a tuple input's tensors: inputs of their own
        assert forward is not None
        self.forward: N.Forward = forward
        self.optional = emitter.optional | {i.name for i in self.forward.inputs if i.optional}
        self.plan = plan
        self.tape = plan.tape
        self.kwargs = emitter.function_kwargs()  # numbers passed through apply: arguments, lets, training
        dec = self.layer.decorator("function")
        save = next((k.value.value for k in dec.kwargs if k.name == "save"), "auto")
        self.save_inputs_only = save == "inputs"
        self.exact = frozenset(_compared_exactly(plan.tape))  # rounded as written, in forward and backward alike
        # What writing the backward decides, read when writing `setup_context`:
        self.split = False  # extra outputs' gradients have sections of their own (grads not materialised)
        self.unmaterialised = False  # the extra outputs are all indices or masks: their grads not materialised
        # intermediates returned only for the masks computed from them (`mm` of `x * (x @ w > 0)`): no
        # gradient reaches them (the masks are bool), so they get no double-backward section
        self.mask_sources: frozenset[str] = frozenset()
        self.shape_on_ctx: dict[str, set[str]] = {}  # leaves the backward needs only the shape of
        self.shapes_read: set[str] | None = None  # those whose shape on ctx the backward written reads (`_shape`)
        self.shape_sources: dict[str, list[str]] = {}  # ... and intermediates, as their leaves' broadcast
        self.backward_dims: set[str] = set()  # symbolic dims the backward reads (kept on ctx)
        # Flags and inputs that may be a tuple of ints: passed as they are, kept on ctx (not saved) for backward
        self.plain_inputs = [i.name for i in self.forward.inputs if i.flag is not None or i.takes_ints]
        self.backward_plain: set[str] = set()  # those the backward reads
        self.backward_kwargs: set[str] = set(self.kwargs)  # the arguments and lets the backward reads (on ctx)
        # `size_at` of a dim no shape names, and `x.ndim`: dims of their own, named as the plan names them
        self.measured = measured_sizes(without_callable_sides(with_tuples_split(self.layer)))
        self.dims = [*self.layer.symbolic_dims, *self.measured]  # what forward reads from input shapes
        self.names = FunctionNames(scope or self._scope_names(), self.kwargs + self.plain_inputs + self.dims)
        self.returned = returned
        # The buffers whose new values forward returns last (`codegen.function_buffers`): every side's.
        self.buffers = updated_buffers(plan, [b.name for b in self.layer.buffers]) if buffers is None else buffers
        self.sometimes_updated: set[str] = set()  # the buffers some side of the forward leaves as they are
        # A side returning fewer outputs than another (`return_indices`) returns None for the rest, whose
        # gradients backward takes under these names.
        self.padding: list[str] = []
        self.in_training = False  # a side of `if training`: dropout needs no mode check of its own
        self.mask_when_dropping = True  # dropout's mask drawn only in training with p > 0 (else None)
        self.saved_cheap: frozenset[str] | None = None  # cheap intermediates saved, not recomputed (`_backward`)
        # those returned non-differentiable, computed again in a recorded backward (`codegen.recorded_recompute`)
        self.recorded_recompute: frozenset[str] | None = None
        self.named: dict[tuple[str, ...], str] = {}  # the gradients this emitter names, by what they are of
        self.masks: dict[str, Mask] = {}  # comparisons and signs saved small, by name
        self.mask_values: dict[str, N.Expr] = {}  # each mask as setup_context computes it
        self.mask_names: dict[str, str] = {}  # each comparison's mask's name, by the comparison's key
        # Leaves that may be none: no stand-in for another value's shape (`same_shape_leaf`).
        optional = [i.name for i in emitter.forward.inputs if i.optional]
        self.maybe_absent = {*optional, *(t.name for t in self.layer.tensors if t.cond is not None)}

    def _scope_names(self) -> set[str]:
        """Every name of the layer's spec and tape the Function's methods may hold."""
        tape = self.tape
        values = tape.leaves + [s.var for s in tape.steps]
        names = set(values) | {f"grad_{v}" for v in values} | set(self.kwargs) | set(self.dims)
        names |= {n for n, _ in tape.numbers} | set(self.plan.grads) | {s.var for s in self.plan.written}
        return names

    def gradient_name(self, hint: str, *of: str) -> str:
        """The name of a gradient the emitter introduces (of a returned intermediate, or a part of one)."""
        if of not in self.named:
            self.named[of] = self.names.local(hint)
        return self.named[of]

    def python(self, spelling: Spelling) -> PyExpr:
        """IR expressions of this Function as Python, the internal ops (`sum_to`, ...) written out."""
        return PyExpr(spelling, call_hook=self._internal)

    # ---------------------------------------------------------------- the pieces

    def emit(self) -> dict:
        layer, plan, tape = self.layer, self.plan, self.tape
        n_out = len(tape.outputs)
        grads = plan.grads
        if plan.derived is not None:
            body, reads = self.derived_backward(tape, plan.derived, dict(plan.incoming))
            saved, extra = self.saving(tape, reads)
            # The extra outputs' gradients get sections of their own, which change what backward reads, and so
            # which intermediates are returned. Sections are added until every returned one has its own
            # (a growing set: this ends); if they leave some unread, returning only the rest is tried.
            sections: list[str] = []
            while not set(extra) <= set(sections):
                sections = list(dict.fromkeys(sections + extra))
                body, reads, saved, extra = self.settle(tape, sections)
            if extra != sections:
                trial = self.settle(tape, extra)
                if trial[3] == extra:
                    sections = extra
                body, reads, saved, extra = trial if sections == extra else self.settle(tape, sections)
            extra = sections
        else:
            body, reads = self.handwritten_backward(tape)
            saved, extra = self.saving(tape, reads)
        returned = extra if self.returned is None else self.returned
        fwd_body = self.forward_body(tape, extra, returned)
        leaves = tape.leaves
        name = f"{layer.name}Function"
        inputs_unpack = leaves + self.kwargs
        return {
            "name": name,
            "doc": f"`{layer.name}` as an autograd.Function with a {'hand-written' if layer.backward else 'derived'} backward.",
            "forward_params": [self._leaf_param(l) for l in leaves] + [self._kw_param(k) for k in self.kwargs],
            "forward_body": fwd_body,
            "returns": _tuple_hint(self._return_types(n_out, returned, extra)),
            "return_types": self._return_types(n_out, returned, extra),
            "setup_body": self.setup_body(tape, saved, returned, inputs_unpack),
            "backward_params": ["ctx"]
            + grads
            + self.padding
            + [self.gradient_name(f"grad_{x}_out", x) for x in returned]
            + (["*_"] if self.buffers else []),  # the new buffer values: not differentiable
            "backward_body": body,
            "apply_params": inputs_unpack,
            "n_outputs": n_out,
            "inputs": self.names.inputs,
            "output": self.names.output,
            "cls": self.names.cls,
            "extra": returned,
            "computed_extra": extra,
            "updates": self.buffers,
            "probes": (self.names.local("transforms_active"), self.names.local("compiling")),  # apply's fast path
            "caught": self.names.local("error"),  # apply's forward-mode error, said again
        }

    def _return_types(self, n_out: int, returned: list[str], extra: list[str]) -> list[str]:
        types = ["Tensor"] * n_out + ["None"] * len(self.padding) + [_returned_type(x, extra) for x in returned]
        return types + ["Tensor | None" if b in self.sometimes_updated else "Tensor" for b in self.buffers]

    def _updated_names(self) -> list[str]:
        """The name setup_context gives each new buffer value this side returns (`_` for None)."""
        values = returned_values(self.tape.updates, self.buffers, self.tape.leaves)
        return [v if v.isidentifier() and v != "None" else "_" for v in values]

    @staticmethod
    def _never_differentiable(var: str, tape: Tape) -> bool:
        """An intermediate of an integer or bool dtype: max pooling's indices, a dropout mask."""
        step = tape.step(var)
        return step is not None and step.op is not None and step.op.cost in ("kept", "random")

    def _is_required(self, leaf: str) -> bool:
        return leaf not in self.optional

    def _leaf_param(self, leaf: str) -> str:
        inp = next((i for i in self.forward.inputs if i.name == leaf), None)
        if inp is not None and inp.flag is not None:
            return f"{leaf}: bool"
        if inp is not None and inp.takes_ints:
            return f"{leaf}: Tensor | tuple[int, ...]"
        return f"{leaf}: Tensor" if self._is_required(leaf) else f"{leaf}: Tensor | None"

    def _kw_param(self, k: str) -> str:
        if k == "training":
            return "training: bool"
        arg = self.layer.arg(k)
        if arg is not None and arg.base_type == "fn":  # a callable runs the plain forward (`codegen.module`)
            given = (["str"] if arg.choices else []) + (["None"] if arg.maybe_none else [])
            return f"{k}: {' | '.join(given)}"
        if arg is not None:
            return f"{k}: {python_type(arg.type)}"
        kind = next((l.value.kind for l in self.layer.lets if l.name == k), None)
        return f"{k}: {kind.value if kind in N.NUMBERS else 'float'}"

    # ---------------------------------------------------------------- choosing a side

    def branch_condition(self, method: str):
        """How `forward`/`setup_context` (arguments and input shapes at hand) or `backward` (`ctx`) spell
        a branch condition."""
        if method == "backward":
            ctx = self.names.ctx_value
            kept = {k: ctx(k) for k in [*self.kwargs, *self.plain_inputs, *self.dims]}
            kept |= {i: self.names.ctx_shape(i) for i in self._optional_inputs}  # None when not given
            spelling = Spelling(kept, training=ctx("training"))

            def dtype_kept(c: N.Call, ex: PyExpr) -> str | None:  # `is_floating_point(mask)`, kept on ctx
                if c.func == "is_floating_point" and isinstance(c.args[0], N.Name):
                    return self._dtype_field(c.args[0].id)
                return self._internal(c, ex)

            return PyExpr(spelling, call_hook=dtype_kept)
        spelling = Spelling(dict(self.dim_source), training="training")
        return PyExpr(spelling, call_hook=self._internal)

    def _dtype_field(self, leaf: str) -> str:
        return self.names.ctx_value(f"{leaf}_is_floating_point")

    def branching_setup(self, plan: BranchPlan, bodies: list[list[str]]) -> list[str]:
        """setup_context of a branching forward: the arguments and dims the conditions read, kept on `ctx`
        for backward, then each side's own saving under its conditions."""
        read = {
            "training" if n.ref == "training" else n.id
            for cond in _conditions(plan)
            for n in walk(cond)
            if isinstance(n, N.Name)
        }
        dims = [d for d in self.dim_source if d in read]
        on_ctx = {k: f"{self.names.ctx_value(k)} = {k}" for k in self.kwargs}
        kept: list[str] = []
        for d in dims:
            source = self.dim_source[d]
            kept += self.located([f"{self.names.ctx_value(d)} = {source}"], self._declared_line(source.split(".")[0]))
        tested = [i for i in self._optional_inputs if i in read]  # `if m != none`: backward tests m's shape
        for i in tested:  # located as each side's own keeping of it, which then goes (`line not in kept`)
            kept += self.located(
                [f"{self.names.ctx_shape(i)} = None if {i} is None else {i}.shape"], self._declared_line(i)
            )
        typed = list(dict.fromkeys(leaf for cond in _conditions(plan) for leaf in dtype_tested(cond)))
        for leaf in typed:  # `if is_floating_point(m)`: backward tests what forward found
            test = f"{leaf}.is_floating_point()"
            kept.append(
                f"{self._dtype_field(leaf)} = {leaf} is not None and {test}"
                if leaf in self.e.optional
                else f"{self._dtype_field(leaf)} = {test}"
            )
        flags = [f for f in self.plain_inputs if f in read]  # `if need_weights`: backward tests the flag kept
        kept += [f"{self.names.ctx_value(f)} = {f}" for f in flags]
        used = (read & set(self.kwargs)) | {self.dim_source[d].split(".")[0] for d in dims} | set(tested) | set(typed)
        used |= set(flags)
        unpacking = f" = {self.names.inputs}"
        own: list[list[str]] = []
        for body in bodies:
            own.append([])
            for line in body:
                if line.endswith(unpacking):
                    used |= {n.strip() for n in line[: -len(unpacking)].split(",")}
                elif line not in kept and line not in on_ctx.values():
                    own[-1].append(line)
        # an argument the conditions or a side's backward reads: kept once, before the sides
        kept = [line for k, line in on_ctx.items() if k in read or any(line in body for body in bodies)] + kept
        unpack = self.tape.leaves + self.kwargs
        names = [u if u in used else "_" for u in unpack]
        head = [f"{', '.join(names)}{',' if len(names) == 1 else ''}{unpacking}"] if used - {"_"} else []
        return head + kept + _chosen(plan, iter(own), self.branch_condition("setup_context"), ends_in_return=False)

    @property
    def _optional_inputs(self) -> list[str]:  # and members: whether each is given, kept on ctx for backward
        return [i.name for i in self.forward.inputs if i.optional] + [t.name for t in self.layer.tensors if t.cond]

    def settle(
        self, tape: Tape, extra: list[str]
    ) -> tuple[list[str], dict[str, set[str]], list[tuple[str, set[str]]], list[str]]:
        """The backward derived with sections for the returned intermediates `extra`, what it reads, and the
        saving that follows: (body, reads, saved, intermediates worth returning)."""
        skipped = self.mask_sources
        body, reads = self.backward_with_extra_grads(tape, extra)
        saved, returned = self.saving(tape, reads)
        if skipped & reads.keys():  # one returned for a mask is read after all: its section is needed
            self.mask_sources = frozenset()
            body, reads = self.backward_with_extra_grads(tape, extra)
            saved, returned = self.saving(tape, reads)
        return body, reads, saved, returned

    def backward_with_extra_grads(self, tape: Tape, extra: list[str]) -> tuple[list[str], dict[str, set[str]]]:
        """The derived backward when the intermediates `extra` are returned as outputs: each gets a gradient
        of its own (for double backward), in a section of its own when the layer has one output."""
        incoming = dict(self.plan.incoming)
        self.split = self.unmaterialised = False
        if not extra:
            return self.derived_backward(tape, self.plan.derived, incoming)
        undifferentiated = self.mask_sources | (self.recorded_recompute or frozenset())
        extra_grads = {v: self.gradient_name(f"grad_{v}_out", v) for v in extra if v not in undifferentiated}
        if len(tape.outputs) == 1:
            # Those gradients are None (grads are not materialised) except in double backward: the main
            # derivation ignores them, and each has its own section, run when it is given.
            rare = [(v, g, derive(tape, [], {v: g})) for v, g in extra_grads.items()]
            rare = [(v, g, b) for v, g, b in rare if b.stmts or b.leaf_grads]  # not a dropout mask
            self.split = bool(rare)  # else grad_out is materialised: the main section reads it as given
            # Indices and masks (int64, bool) never get a gradient: not materialising theirs (zeros) leaves
            # grad_out, the only one there can be, defined whenever backward runs.
            self.unmaterialised = not rare and all(
                self._never_differentiable(v, tape) or v in undifferentiated for v in extra
            )
            return self.derived_backward(tape, self.plan.derived, incoming, rare)
        incoming.update({g: v for v, g in extra_grads.items()})
        return self.derived_backward(tape, derive(tape, self.plan.grads, extra_grads), incoming)

    # ---------------------------------------------------------------- saving

    def saving(self, tape: Tape, reads: dict[str, set[str]]) -> tuple[list[tuple[str, set[str]]], list[str]]:
        """(tensors to save with the leaves needing them, costly intermediates returned as extra outputs)."""
        order = {v: i for i, v in enumerate(tape.leaves + [s.var for s in tape.steps] + list(self.masks))}
        outputs = {o.id for o in tape.outputs if isinstance(o, N.Name)}
        saved = sorted(reads.items(), key=lambda kv: order[kv[0]])
        extra = [v for v, _ in saved if v not in tape.leaves and v not in outputs and v not in self.masks]
        # a costly intermediate a mask is computed from (`clamp(x @ w)`'s): returned, the mask saved instead
        for_masks = {
            n.id for m, _ in saved if m in self.masks for n in walk(self.mask_values[m]) if isinstance(n, N.Name)
        }
        for_masks = {v for v in for_masks if tape.step(v)}
        extra += sorted(for_masks - outputs - set(extra), key=lambda v: order[v])
        self.mask_sources = frozenset(for_masks - outputs - reads.keys())
        return saved, extra

    def needs(self, leaves: set[str], tape: Tape) -> str | None:
        """The `ctx.needs_input_grad` condition for work that only these leaves' gradients need."""
        wanted = [l for l in tape.leaves if l in tape.differentiable]
        if not leaves or set(wanted) <= leaves:
            return None
        idx = [tape.leaves.index(l) for l in wanted if l in leaves]
        return " or ".join(f"ctx.needs_input_grad[{i}]" for i in idx)

    # ---------------------------------------------------------------- forward

    def prelude(
        self, tape: Tape, names: set[str], ex: PyExpr, dim_spelling, spelled: Collection[str] = ()
    ) -> tuple[list[str], set[str]]:
        """Dims and number locals the code reads, bound before it (`n = x.shape[-1]`, `h = n // 2`), and
        the dims among them. `spelled`: names `ex` writes otherwise (`ctx.n`), bound by no line."""
        numbers: dict[str, list[N.Expr]] = {}  # a local bound more than once (`s = s + ...`): every value
        for n, e in tape.numbers:
            numbers.setdefault(n, []).append(e)
        wanted, frontier = set(), [n for n in names if n in numbers or n in self.dim_source]
        while frontier:
            n = frontier.pop()
            if n in wanted:
                continue
            wanted.add(n)
            frontier += [m.id for e in numbers.get(n, []) for m in walk(e) if isinstance(m, N.Name)]
        wanted -= set(spelled)
        lines = [f"{d} = {dim_spelling(d)}" for d in self.dim_source if d in wanted]
        for n, e in tape.numbers:
            if n in wanted:
                lines += self.located([f"{n} = {ex(e)}"], e.span.line)
        return lines, {d for d in self.dim_source if d in wanted}

    @property
    def dim_source(self) -> dict[str, str]:
        """Each symbolic dim, as read from the first input that declares it, and each measured size."""
        out: dict[str, str] = {}
        for inp in self.forward.inputs:
            dims = inp.shape.dims if inp.shape else []
            ell = next((k for k, d in enumerate(dims) if isinstance(d, N.EllipsisItem)), None)
            for k, d in enumerate(dims):
                if isinstance(d, N.Name) and d.id in self.layer.symbolic_dims and d.id not in out:
                    pos = k if ell is None or k < ell else k - len(dims)
                    out[d.id] = f"{inp.name}.shape[{pos}]"
        return out | self.measured

    def forward_body(self, tape: Tape, extra: list[str], returned: list[str]) -> list[str]:
        keep = set(extra) | {s.var for s in tape.steps if s.guard}
        exprs: dict[str, N.Expr] = {}
        uses = _use_counts(tape)
        for s in tape.steps:  # a value whose rank is read at run time is computed once, into a name
            if isinstance(s.expr, N.Call) and (twice := read_for_class_dim(s.expr, self._static_rank)):
                uses[twice] = 2
        spelling = Spelling({}, training="training", float_like=float_like(self.layer))
        ex = PyExpr(spelling, call_hook=self._internal)
        read = {n.id for s in tape.steps for n in walk(s.expr) if isinstance(n, N.Name)}
        read |= {n.id for o in tape.outputs for n in walk(o) if isinstance(n, N.Name)}
        read |= {v for check in tape.checks for v in read_vars(check)}
        lines, _ = self.prelude(tape, read, ex, lambda d: self.dim_source[d])
        exact = self.exact
        roots: dict[str, frozenset[str]] = {}
        owned: set[str] = set()  # temporaries read once, holding a buffer of their own

        def out(e: N.Expr) -> str:
            return ex(unary_in_place(e, owned, lambda t: bool(dtype_sources(t, roots) & tape.differentiable)))

        def bind(var: str, e: N.Expr | None) -> None:  # `var` now holds `e`'s result
            if uses.get(var, 0) == 1 and var not in extra and e is not None and fresh_node(e):
                owned.add(var)

        paired = with_second_results(tape)
        checks = checks_by_step(tape, paired)  # the subs' `require`s on computed values, once those are bound
        keep |= {v for check in tape.checks for v in read_vars(check)}
        for k, s in enumerate(tape.steps):
            lines += [line for check in checks.get(k - 1, []) for line in self.check(check, ex)]
            roots[s.var] = _step_sources(s, roots)
            if s.var in paired.values():
                continue  # bound with its second result, below
            if s.var in paired:  # one call returns both: `pool, argmax = F.max_pool2d(..., return_indices=True)`
                first = next(t for t in tape.steps if t.var == paired[s.var])
                seconds = [v for v, m in paired.items() if m == first.var]  # `out, mean, rstd = ...`
                if s.var == seconds[0]:
                    call = returning_second_results(first, exprs)
                    lines += self.located([f"{', '.join([first.var, *seconds])} = {out(call)}"], s.expr.span.line)
                roots[first.var] = roots[s.var]
                continue
            if s.guard:
                assert s.base is not None  # a step on an optional member always has a base (Linearizer.add)
                base = exprs.pop(s.base, None)
                if (
                    base is not None
                    and s.var not in exact
                    and (merged := guarded_addcmul(_squares(base), s.expr, s.base, s.guard)) is not None
                ):
                    lines += [
                        f"if {s.guard} is not None:",
                        f"    {s.var} = {out(merged)}",
                        "else:",
                        f"    {s.var} = {out(_squares(base))}",
                    ]
                    bind(s.var, base)
                    continue
                lines += self.located([f"{s.var} = {out(base) if base is not None else s.base}"], s.expr.span.line)
                update = f"    {s.var} = {out(_replace_name(s.expr, s.base, s.var))}"
                lines += with_spec_line([f"if {s.guard} is not None:", update], 1, self.e.spec_path, s.expr.span.line)
                bind(s.var, base)
                continue
            expr = mean_of_squares_as_norm(_squares(substitute(s.expr, exprs)), roots)
            expr = einsum_operands_in_cheapest_order(expr, tape.shapes, _example_sizes(self.layer))  # no graph here
            if s.var not in exact:  # a max/min reads the value as the backward recomputes it: as written
                expr = addcmul_form(expr)
            new_buffer_value = s.var in tape.updates.values()  # returned by name, for the module to write
            spec_local = s.var in self._spec_locals()
            if s.var in keep | exact or uses.get(s.var, 0) != 1 or new_buffer_value or spec_local or _deep(expr):
                lines += self.located([f"{s.var} = {out(expr)}"], s.expr.span.line)
                bind(s.var, expr)
            else:
                exprs[s.var] = expr
        lines += [line for check in checks.get(len(tape.steps) - 1, []) for line in self.check(check, ex)]
        outs = [out(substitute(o, exprs)) if isinstance(o, N.Name) else ex(o) for o in tape.outputs]
        # an input returned as it is goes out as a view of it: torch refuses to save one returned as-is
        outs = [f"{o}.view_as({o})" if o in tape.leaves else o for o in outs]
        outs += ["None"] * len(self.padding)
        returns = [s.span.line for s in self.forward.body if isinstance(s, N.Return)]
        outs += [x if x in extra else "None" for x in returned]
        outs += returned_values(tape.updates, self.buffers, tape.leaves)
        return lines + self.located([f"return {', '.join(outs)}"], returns[-1] if returns else 0)

    def check(self, check: N.Require, ex: PyExpr) -> list[str]:
        """A sub's `require` on computed values, at the line of the sub's spec stating it."""
        return self.located(check_lines(check, ex, self.layer), check.span.line)

    def located(self, lines: list[str], line: int) -> list[str]:
        """`lines` (one statement) naming the spec line it computes."""
        return with_spec_line(lines, 0, self.e.spec_path, line)

    def _declared_line(self, name: str) -> int:
        """The spec line declaring an input or a tensor member."""
        declared = [*self.forward.inputs, *self.layer.tensors]
        return next((d.span.line for d in declared if d.name == name), 0)

    def _spec_locals(self) -> set[str]:
        return {s.target for s in self.forward.body if isinstance(s, N.Assign)}

    def setup_body(self, tape: Tape, saved, extra, unpack) -> list[str]:
        shapes = {n: l for n, l in self.shape_on_ctx.items() if self.shapes_read is None or n in self.shapes_read}
        saved_names = {v for v, _ in saved}
        dims = sorted(self.backward_dims)
        used = saved_names | set(shapes) | self.backward_kwargs | {self.dim_source[d].split(".")[0] for d in dims}
        used |= {leaf for name, sources in self.shape_sources.items() if name in shapes for leaf in sources}
        used |= self.backward_plain
        masks = {v: self.mask_values[v] for v in saved_names if v in self.masks}
        used |= {n.id for e in masks.values() for n in walk(e) if isinstance(n, N.Name)}
        lines = []
        if any(u in used for u in unpack):
            names = [u if u in used else "_" for u in unpack]
            lines.append(f"{', '.join(names)}{',' if len(names) == 1 else ''} = {self.names.inputs}")
        indices = [o.id for o in tape.outputs if isinstance(o, N.Name) and self._never_differentiable(o.id, tape)]
        outs = [o.id if isinstance(o, N.Name) and o.id in used | set(indices) else "_" for o in tape.outputs]
        outs += ["_"] * len(self.padding)
        outs += [e if e in used and e not in outs else "_" for e in extra]  # None if another side's output
        updated = [v for v in self._updated_names() if v != "_"]
        outs += self._updated_names()
        if any(v != "_" for v in outs):
            lines.append(
                f"{outs[0]} = {self.names.output}" if len(outs) == 1 else f"{', '.join(outs)} = {self.names.output}"
            )
        seconds = [
            e
            for e in extra
            if e in saved_names
            and ((step := tape.step(e)) and step.op and step.op.cost == "kept" or e in (self.recorded_recompute or ()))
        ]
        # indices, statistics: no gradient of their own (ATen's kernels differentiate through them; a recorded
        # backward computes a saved cheap value again); no gradient flows into a buffer. One call: each call
        # replaces the set the one before marked.
        seconds = list(dict.fromkeys(indices + seconds + updated))
        if seconds:
            lines.append(f"ctx.mark_non_differentiable({', '.join(seconds)})")
        if self.split or self.unmaterialised:
            lines.append("ctx.set_materialize_grads(False)")
        for k in self.kwargs:
            if k in self.backward_kwargs:
                lines.append(f"{self.names.ctx_value(k)} = {k}")
        for f in sorted(self.backward_plain):
            lines.append(f"{self.names.ctx_value(f)} = {f}")
        for name in shapes:
            if name in self.shape_sources:
                sources = ", ".join(f"{leaf}.shape" for leaf in self.shape_sources[name])
                shape = sources if len(self.shape_sources[name]) == 1 else f"torch.broadcast_shapes({sources})"
                step = tape.step(name)
                assert step is not None  # an intermediate
                lines += self.located([f"{self.names.ctx_shape(name)} = {shape}"], step.expr.span.line)
                continue
            if name in self.optional:  # an absent member has no shape, and needs no gradient
                kept = f"{self.names.ctx_shape(name)} = None if {name} is None else {name}.shape"
            else:
                kept = f"{self.names.ctx_shape(name)} = {name}.shape"
            lines += self.located([kept], self._declared_line(name))
        for d in dims:
            source = self.dim_source[d]
            lines += self.located([f"{self.names.ctx_value(d)} = {source}"], self._declared_line(source.split(".")[0]))
        if saved:
            items = []
            ex = PyExpr(Spelling(), call_hook=self._internal)
            for var, leaves in saved:
                cond = self.needs(leaves, tape)
                if var in masks:
                    value = ex(masks[var]) + (".to(torch.int8)" if self.masks[var].dtype == "int8" else "")
                    lines.append(f"{var} = {value}" if cond is None else f"{var} = {value} if {cond} else None")
                    items.append(var)
                else:
                    items.append(var if cond is None else f"{var} if {cond} else None")
            lines += self._why_saved(tape, saved)
            lines.append(f"ctx.save_for_backward({', '.join(items)})")
        return lines

    def _why_saved(self, tape: Tape, saved) -> list[str]:
        """One comment line per saved tensor: what it holds and which gradients read it."""
        ex = PyExpr(Spelling())
        every = [l for l in tape.leaves if l in tape.differentiable]
        lines = []
        for var, leaves in saved:
            readers = "every gradient" if set(every) <= leaves else ", ".join(f"grad_{l}" for l in every if l in leaves)
            what = var
            if var in self.masks:
                what = f"{var} = {ex(self.mask_values[var])}, as {self.masks[var].dtype}"
            elif var not in tape.leaves:
                step = tape.step(var)
                if any(isinstance(o, N.Name) and o.id == var for o in tape.outputs):
                    what = f"{var} (an output)"
                elif step is not None and step.op is not None and step.op.cost == "random":
                    drawn = "int64: where the maxima are" if step.op.name.endswith("_indices") else "bool"
                    what = f"{var} (drawn at random, as {drawn}: never recomputed)"
                elif step is not None and step.op is not None and step.op.cost == "kept":
                    what = f"{var} ({_KEPT.get(step.op.name.rsplit('_', 1)[-1], step.op.doc)})"
                elif var in (self.recorded_recompute or ()):
                    what = f"{var} (saved, not differentiable: a recorded backward computes it again)"
                elif var in (self.saved_cheap or ()):
                    what = f"{var} (saved: recomputing it would keep as many bytes or more)"
                else:
                    what = f"{var} (costly to recompute)"
            lines.append(f"# saves {what}: read by {readers}")
        return lines

    # ---------------------------------------------------------------- derived backward

    def derived_backward(
        self, tape: Tape, bwd, incoming: dict[str, str], rare=()
    ) -> tuple[list[str], dict[str, set[str]]]:
        """Lines of the backward and, for each forward tensor it reads, which leaves need it. `rare`: the
        derivations from extra outputs' gradients, each run only when that gradient is given."""
        main = Section(self._derived_items(bwd, tape), incoming)
        if rare or self.split or self.unmaterialised:  # grads are not materialised: the main one may be None too
            main.cond = " and ".join(f"{g} is not None" for g in incoming)
        sections = [main]
        for var, grad, rbwd in rare:
            renamed = {f"grad_{l}": self.gradient_name(f"grad_{l}_from_{var}", l, var) for l in tape.leaves}
            items = [
                (lv, renamed.get(t, t), _renamed(e, renamed), span)
                for lv, t, e, span in self._derived_items(rbwd, tape)
            ]
            produced = {t for _, t, _, _ in items}
            accumulate = {l: renamed[f"grad_{l}"] for l in tape.leaves if renamed[f"grad_{l}"] in produced}
            sections.append(Section(items, {grad: var}, f"{grad} is not None", accumulate, rare=True))
        return self._backward(tape, sections)

    def _derived_items(self, bwd: Backward, tape: Tape) -> list[Item]:
        """The derivation's statements (copies: writing them out updates expressions in place)."""
        items = [(set(s.leaves), s.var, self._shape_only(clone(s.expr), tape), s.span) for s in bwd.stmts]
        return items + [({l}, f"grad_{l}", B.name(g), NOWHERE) for l, g in bwd.leaf_grads.items() if g != f"grad_{l}"]

    def _backward(self, tape: Tape, sections: list[Section]) -> tuple[list[str], dict[str, set[str]]]:
        """Shared by derived and hand-written backwards. Each section's items are (leaves, target, expr, span) in
        order, and its `incoming` maps each incoming gradient it reads to the forward value it is the
        gradient of. Sections share what is saved; each recomputes what it needs itself."""
        sections = [self._sums_resolved(tape, sec) for sec in sections]
        sections = [self._static_shapes(tape, sec) for sec in sections]
        sections = self._masked(tape, sections)
        if self.saved_cheap is None:  # chosen once, by the first derivation: later ones save alike
            self.saved_cheap = self._chosen_saves(tape, sections)
        reads = self._reads(tape, sections, self.masks)
        if self.recorded_recompute is None:  # found with the first derivation's reads, as the saves are
            self.recorded_recompute = self._recomputable_when_recorded(tape, reads)
        recomputed = {v for sec in sections for v in sec.recompute}
        ctx = self.names.ctx_value
        kept = {k: ctx(k) for k in [*self.kwargs, *self.plain_inputs]}
        read = Read()  # what the backward's lines read, as they are written
        self.shapes_read = set()
        ex = PyExpr(Recording(kept, training=ctx("training"), read=read), call_hook=self._internal)
        order = {v: i for i, v in enumerate(tape.leaves + [s.var for s in tape.steps] + list(self.masks))}
        read_names = {n.id for sec in sections for _, _, e, _ in sec.items for n in walk(e) if isinstance(n, N.Name)}
        read_names |= {n.id for s in tape.steps if s.var in recomputed for n in walk(s.expr) if isinstance(n, N.Name)}
        lines, self.backward_dims = self.prelude(tape, read_names, ex, ctx)
        self.backward_plain = {f for f in self.plain_inputs if f in read_names}
        saved = sorted(reads, key=lambda v: order.get(v, 1 << 30))
        if saved:
            lines.append(
                f"({saved[0]},) = ctx.saved_tensors" if len(saved) == 1 else f"{', '.join(saved)} = ctx.saved_tensors"
            )
        lines += self._recorded_recompute_lines(tape, reads, ex)
        grads = [f"grad_{l}" for l in tape.leaves if l in tape.differentiable]
        always = {t for lv, t, _, _ in sections[0].items if self.needs(lv, tape) is None}
        guarded = [g for g in grads if g not in always or len(sections) > 1 or sections[0].cond]
        if guarded:
            lines.append(" = ".join(guarded) + " = None")
        for sec in sections:
            body = self._section(tape, sec, ex, set(reads), depth=0 if sec.cond is None else 1)
            lines += body if sec.cond is None else [f"if {sec.cond}:", *("    " + line for line in body)]
        self.backward_kwargs = {k for k in self.kwargs if k in read.spelt or k == "training"}  # `training=`: unnamed
        returns = [f"grad_{l}" if l in tape.differentiable else "None" for l in tape.leaves] + ["None"] * len(
            self.kwargs
        )
        lines.append(f"return {', '.join(returns)}")
        return lines, reads

    def _never_recomputed(self, tape: Tape, var: str) -> bool:
        """A mask, a value drawn at random or a kernel's second result, or a step of no op."""
        step = tape.step(var)
        return var in self.masks or step is not None and (step.op is None or step.op.cost in ("random", "kept"))

    def _recomputable_when_recorded(self, tape: Tape, reads: dict[str, set[str]]) -> frozenset[str]:
        names = _ExprNames()
        return recomputable_when_recorded(
            tape,
            self.saved_cheap or (),
            reads,
            lambda var: self._recompute_reads(tape, var, names),
            lambda var: self._never_recomputed(tape, var),
        )

    def _recorded_recompute_lines(self, tape: Tape, reads: dict[str, set[str]], ex: PyExpr) -> list[str]:
        """The saved cheap values marked non-differentiable, computed again from what is saved when autograd
        records the backward, so that double backward differentiates through them."""
        again = [v for v in reads if v in (self.recorded_recompute or ())]
        if not again:
            return []
        names = _ExprNames()
        steps: dict[int, Step] = {}
        for v in again:
            chain = recomputation(
                tape,
                v,
                self.saved_cheap or (),
                reads,
                lambda var: self._recompute_reads(tape, var, names),
                lambda var: self._never_recomputed(tape, var),
            )
            assert chain is not None  # recomputable_when_recorded found it so, on the same reads
            steps.update({id(s): s for s in chain})
        leaves = set().union(*(reads[v] for v in again))
        stmts = [t for s in tape.steps if id(s) in steps for t in self._recompute_stmts(s, leaves, tape)]
        facts = self._facts(tape, {}, set(reads))  # the saved values the sections read after: never deleted
        stmts = prepared(stmts, facts)
        for s in stmts:  # no full-size `x * x` for a mean of squares (the forward's norm, left unchanged)
            s.expr = mean_of_squares_as_norm(s.expr, facts.roots, graph=True)
        stmts, _ = scheduled(stmts, facts)
        body = [code for s in stmts for code in _code(s, self.e.spec_path)]
        why = Comment(f"recorded (create_graph=True): {', '.join(again)} again, for double backward to differentiate")
        return If("torch.is_grad_enabled()", [why, *body]).lines(ex)

    def _chosen_saves(self, tape: Tape, sections: list[Section]) -> frozenset[str]:
        """The cheap intermediates worth saving (`optimize.saving`): each is returned as an extra output, as
        a costly one is. None for a hand-written backward or `save = "inputs"`."""
        self.saved_cheap = frozenset()
        if self.layer.backward is not None or self.save_inputs_only:
            return self.saved_cheap
        sizes = _example_sizes(self.layer)

        names = _ExprNames()  # each pricing reads the same expressions: their names are found once
        counted: dict[str, int] = {}

        def size(var: str) -> int:
            if var not in counted:
                counted[var] = elements(tape.shapes.get(var), sizes)
            return counted[var]

        def cost(saved: frozenset[str]) -> SavingCost:
            self.saved_cheap = saved
            reads = set(self._reads(tape, sections, self.masks, names))
            kept = sum(size(v) for v in reads if v not in self.masks)
            redone = sum(size(v) for sec in sections for v in sec.recompute if passes(v))
            return SavingCost(4 * kept, redone)

        passing: dict[str, bool] = {}

        def passes(var: str) -> bool:  # recomputing it is a pass over memory (a view is not)
            if var not in passing:
                step = tape.step(var)
                passing[var] = (
                    step is not None and step.op is not None and not step.guard and step.op.shape not in VIEWS
                )
            return passing[var]

        cost(frozenset())
        candidates = [v for sec in sections for v in sec.recompute if passes(v)]
        if any(sec.rare or not all(lv for lv, _, _, _ in sec.items) for sec in sections):
            return chosen_saves(candidates, cost)
        # which leaves read a value does not matter here: each choice is priced on a graph found once
        pricing = Pricing(self._read_graph(tape, sections, names), size, passes, self.masks)
        return chosen_saves(candidates, pricing.cost, pricing.each)

    def _read_graph(self, tape: Tape, sections: list[Section], names: _ExprNames) -> ReadGraph:
        """What `_reads` walks, as a graph (`optimize.saving.ReadGraph`) for sections none of which is rare."""
        plain, leaves, masks = set(self.plain_inputs), set(tape.leaves), self.masks
        outputs = {o.id for o in tape.outputs if isinstance(o, N.Name)}
        edges = {s.var: self._recompute_reads(tape, s.var, names) for s in tape.steps if tape.step(s.var) is s}
        always = {v for v in edges if self._kept_anyway(tape, v, masks, outputs, rare=False)}
        starts = [
            [
                n
                for _, _, e, _ in sec.items
                for n in names.values(e)
                if (tape.step(n) or n in leaves or n in masks) and n not in plain
            ]
            for sec in sections
        ]
        shape_uses = list(dict.fromkeys(n for sec in sections for _, _, e, _ in sec.items for n in names.shapes(e)))
        absent = [*self.maybe_absent, *self.plain_inputs]
        on_ctx = {n for n in shape_uses if n in leaves or broadcast_leaves(tape, n, absent) is not None}
        shape_starts = [[n for _, _, e, _ in sec.items for n in names.shapes(e) if n not in plain] for sec in sections]
        return ReadGraph(edges, always, starts, shape_starts, shape_uses, on_ctx)

    def _reads(
        self, tape: Tape, sections: list[Section], masks: dict[str, Mask], names: _ExprNames | None = None
    ) -> dict[str, set[str]]:
        """For each forward tensor the backward reads (saved, or a mask computed when saving), which leaves
        need it; fills each section's `recompute` and `self.shape_on_ctx`. `names`: the expressions' names,
        found before (while the expressions are unchanged)."""
        names = _ExprNames() if names is None else names
        reads: dict[str, set[str]] = {}
        outputs = {o.id for o in tape.outputs if isinstance(o, N.Name)}

        def reader(recompute: dict[str, set[str]], rare: bool):
            def kept(var: str) -> bool:
                return (
                    self._kept_anyway(tape, var, masks, outputs, rare)
                    or not self.save_inputs_only
                    and var in (self.saved_cheap or ())
                    and not rare
                    or rare
                    and var in reads
                )

            def read(start: list[str], leaves: set[str]) -> None:
                # a bool or ints, kept on ctx (`backward_plain`), is neither saved nor recomputed
                walk_reads([n for n in start if n not in self.plain_inputs], leaves, kept, edges, reads, recompute)

            return read

        def edges(var: str) -> list[str]:
            return self._recompute_reads(tape, var, names)

        readers = []
        shape_uses: dict[str, set[str]] = {}
        for sec in sections:
            sec.recompute.clear()
            read = reader(sec.recompute, sec.rare)
            readers.append(read)
            for leaves, _, expr, _ in sec.items:
                read([n for n in names.values(expr) if tape.step(n) or n in tape.leaves or n in masks], leaves)
                for n in names.shapes(expr):
                    shape_uses.setdefault(n, set()).update(leaves)
        recomputed = {v for sec in sections for v in sec.recompute}
        self.shape_on_ctx = {
            n: l for n, l in shape_uses.items() if n not in reads and n not in recomputed and n in tape.leaves
        }
        self.shape_sources = {  # an elementwise intermediate's shape: its leaves' broadcast, not the value
            n: src
            for n in shape_uses
            if n not in reads.keys() | recomputed | set(tape.leaves)
            and (src := broadcast_leaves(tape, n, [*self.maybe_absent, *self.plain_inputs])) is not None
        }
        self.shape_on_ctx.update({n: shape_uses[n] for n in self.shape_sources})
        for sec, read in zip(sections, readers):
            for leaves, _, expr, _ in sec.items:
                read([n for n in names.shapes(expr) if n not in self.shape_on_ctx], leaves)
        return reads

    def _kept_anyway(self, tape: Tape, var: str, masks: dict[str, Mask], outputs: set[str], rare: bool) -> bool:
        """Whether the backward reads `var` saved whatever cheap intermediates are chosen."""
        step = tape.step(var)
        # A hand-written backward ignores the gradients of extra outputs (and a rare section comes after the
        # extra outputs are chosen), so for double backward to stay right they recompute even costly
        # intermediates from what is saved.
        costly_saved = step is not None and step.costly and self.layer.backward is None and not rare
        return (
            var in masks
            or step is None
            or step.op is not None
            and step.op.cost in ("random", "kept")  # drawn once, or a second result: never recomputed
            or not self.save_inputs_only
            and (var in outputs or costly_saved)
        )

    def _recompute_reads(self, tape: Tape, var: str, names: _ExprNames) -> list[str]:
        """The forward values recomputing `var` reads (a bool or ints, kept on ctx, is not one)."""
        step = tape.step(var)
        assert step is not None  # a leaf (no step) is always kept
        found = [n for n in names.values(step.expr) if tape.step(n) or n in tape.leaves]
        return [n for n in found + ([step.guard] if step.guard else []) if n not in self.plain_inputs]

    def _sums_resolved(self, tape: Tape, sec: Section) -> Section:
        """`sum_to(g, t)` between known shapes as the plain sum it is, before deciding what to save: `t`
        is then not read at all (`x - mean(x)` saves nothing)."""
        stmts = [Stmt(target, expr, leaves, span=span) for leaves, target, expr, span in sec.items]
        explicit_sums(stmts, self._facts(tape, sec.incoming, set()))
        return dataclasses.replace(sec, items=[(s.leaves, s.target, s.expr, s.span) for s in stmts])

    def _static_shapes(self, tape: Tape, sec: Section) -> Section:
        """An intermediate read only for its shape, with no input or parameter of that shape, as its static
        shape in the symbolic dims (`(3 * B, n)`): the intermediate is then not recomputed, nor what it is
        computed from saved."""
        dims = self.dim_source
        # a dim the spec writes with an int argument (`[B, T, heads, head_dim]`): the Function has it
        at_hand = dict.fromkeys(dims, N.Ref.DIM) | {
            a.name: N.Ref.ARG for a in self.layer.args if a.type == "int" and a.name in self.kwargs
        }

        leaves = [leaf for leaf in tape.leaves if leaf not in self.optional]

        def replaced(var: str) -> bool:
            return tape.step(var) is not None and same_shape_leaf(tape, var, self.maybe_absent) is None

        def size_of(dim: str) -> N.Expr | None:
            return leaf_size(dim, leaves, tape.shapes) or dim_size(dim, at_hand)

        def go(e: N.Expr) -> N.Expr:
            return with_static_shapes(e, tape.shapes, replaced, size_of)

        return dataclasses.replace(sec, items=[(lv, t, go(e), span) for lv, t, e, span in sec.items])

    def _masked(self, tape: Tape, sections: list[Section]) -> list[Section]:
        """The sections with comparisons (and signs) of forward values read from masks saved in their
        smallest form, each where that saves fewer bytes than the float tensors it is computed from;
        sets `self.masks`."""
        outputs = {o.id for o in tape.outputs if isinstance(o, N.Name)}
        derived = self.layer.backward is None and not self.save_inputs_only

        def available(var: str) -> bool:  # at hand in setup_context (a costly step: returned for its mask)
            step = tape.step(var)
            costly = derived and step is not None and step.costly and not step.guard
            return var in tape.leaves or not self.save_inputs_only and var in outputs or costly

        def opaque(var: str) -> bool:
            step = tape.step(var)
            return step is not None and step.op is None and not available(var)

        exprs = [e for sec in sections for _, _, e, _ in sec.items]
        forward = lambda n: tape.step(n) is not None or n in tape.leaves  # noqa: E731
        found: dict[str, Mask] = {}
        computed: dict[str, N.Expr] = {}
        step = lambda n: None if (s := tape.step(n)) is None else s.expr  # noqa: E731
        for mask in mask_candidates(exprs, forward, opaque, step):
            value = self._computed_from(mask.value, tape, available)
            if value is None:
                continue
            if not opaque(mask.name):  # named once: each settling of the sections finds it again
                key = B.key(mask.expr)
                if key not in self.mask_names:
                    self.mask_names[key] = self.names.local(mask.name)
                mask = dataclasses.replace(mask, name=self.mask_names[key])
            found[mask.name] = mask
            computed[mask.name] = value

        def weight(masks: dict[str, Mask]) -> int:
            return _saved_weight(self._reads(tape, self._with_masks(sections, masks), masks), masks)

        # All masks at once (a `maximum` needs three before its operand is no longer read), then each one
        # dropped that saves nothing (`relu(x) * x` reads x anyway).
        chosen = dict(found)
        for name in list(found):
            fewer = {k: m for k, m in chosen.items() if k != name}
            if weight(fewer) <= weight(chosen):
                chosen = fewer
        sections = self._with_masks(sections, chosen)
        self._reads(tape, sections, chosen)
        self.masks = chosen
        self.mask_values = {k: computed[k] for k in chosen}
        return sections

    @staticmethod
    def _with_masks(sections: list[Section], masks: dict[str, Mask]) -> list[Section]:
        def masked(e: N.Expr) -> N.Expr:
            for mask in masks.values():
                e = replaced(e, mask)
            return e

        return [
            dataclasses.replace(sec, items=[(lv, t, masked(e), span) for lv, t, e, span in sec.items], recompute={})
            for sec in sections
        ]

    def _computed_from(self, e: N.Expr, tape: Tape, available) -> N.Expr | None:
        """`e` in terms of what setup_context has (inputs, outputs, arguments), through cheap steps only;
        None when it would need a costly one or an optional member."""
        if isinstance(e, N.Name) and e.kind == "tensor":
            step = tape.step(e.id)
            if available(e.id) or step is None and e.id in tape.leaves:
                return e
            if step is None or step.costly or step.guard:
                return None
            return self._computed_from(_squares(clone(step.expr)), tape, available)
        if isinstance(e, N.Name) and e.id not in self.kwargs:
            return None  # a dim or number local: not at hand in setup_context
        failed = False

        def go(c):
            nonlocal failed
            out = self._computed_from(c, tape, available) if isinstance(c, N.Expr) else c
            failed = failed or out is None
            return c if out is None else out

        out = map_children(e, go)
        return None if failed else out

    def _section(self, tape: Tape, sec: Section, ex: PyExpr, saved: set[str], depth: int) -> list[str]:
        stmts = [
            t
            for s in tape.steps
            if s.var in sec.recompute
            for t in self._recompute_stmts(s, sec.recompute[s.var], tape)
        ]
        stmts += [Stmt(target, expr, leaves, span=span) for leaves, target, expr, span in sec.items]
        facts = self._facts(tape, sec.incoming, saved | set(sec.accumulate.values()))
        stmts = prepared(stmts, facts)  # the same for both grad modes
        unrecorded, schedule = self._optimized(clone(stmts), dataclasses.replace(facts, graph=False), sec, ex, tape)
        recorded, _ = self._optimized(stmts, facts, sec, ex, tape, schedule)
        return [line for code in by_grad_mode(recorded, unrecorded) for line in code.lines(ex, depth)]

    def _optimized(
        self, stmts: list[Stmt], facts: Facts, sec: Section, ex: PyExpr, tape: Tape, prefer: int = 0
    ) -> tuple[list[Code], int]:
        """One grad mode's statements (`prepared`), each under the `ctx.needs_input_grad` guard of the leaves
        needing it."""
        stmts, schedule = scheduled(stmts, facts, prefer)
        stmts = joint_calls(stmts, lambda leaves: self.needs(leaves, tape))  # one kernel's gradients: one call
        parts = [(s.leaves, _code(s, self.e.spec_path)) for s in stmts]
        for leaf, part in sec.accumulate.items():  # add to what the main section found (or None)
            parts.append(({leaf}, [Accumulate(leaf, part)]))
        return self._guarded(parts, tape), schedule

    def _recompute_stmts(self, s: Step, leaves: set[str], tape: Tape) -> list[Stmt]:
        if s.guard:  # `var = base`, then `var = var + member` when the optional member is present
            assert s.base is not None  # a step on an optional member always has a base (Linearizer.add)
            return [
                Stmt(s.var, B.name(s.base), leaves, recompute=True, span=s.expr.span),
                Stmt(
                    s.var, _replace_name(s.expr, s.base, s.var), leaves, recompute=True, guard=s.guard, span=s.expr.span
                ),
            ]
        return [Stmt(s.var, _squares(recomputed_read(s, tape)), leaves, recompute=True, span=s.expr.span)]

    def _facts(self, tape: Tape, incoming: dict[str, str], kept: set[str]) -> Facts:
        """What the fusion pass may assume about the names a backward starts with."""
        shapes = {f"grad_{v}": shape for v, shape in tape.shapes.items()}  # a gradient has its value's shape
        shapes.update(tape.shapes)
        shapes.update({g: tape.shapes.get(v) for g, v in incoming.items()})
        returned = {f"grad_{l}" for l in tape.leaves}
        outputs = [o.id for o in tape.outputs if isinstance(o, N.Name)]
        full = [tape.shapes.get(n) for n in [i.name for i in self.forward.inputs] + outputs]
        sources: dict[str, frozenset[str]] = {}
        for step in tape.steps:  # with an optional member, only what holds when it is absent
            sources[step.var] = _step_sources(step, sources)
        return Facts(
            roots={
                **sources,
                **{g: sources.get(v, frozenset({v})) | {g} for g, v in incoming.items()},
                **{m: frozenset() for m in self.masks},  # a bool or int8 mask: any float operand dominates it
            },
            shapes=shapes,
            kept=set(tape.leaves) | kept | set(incoming) | returned,
            foldable={s.var for s in tape.steps} - set(tape.env.values()),
            full=[f for f in full if f],
            incoming=set(incoming),
            floating=frozenset(tape.differentiable) | set(incoming),
            exact=self.exact,
            sizes=_example_sizes(self.layer),
        )

    def _guarded(self, parts: list[tuple[set[str], list[Code]]], tape: Tape) -> list[Code]:
        """Consecutive statements needed by the same leaves share one guard."""
        out: list[Code] = []
        for cond, group in itertools.groupby(parts, key=lambda part: self.needs(part[0], tape)):
            codes = [code for _, codes in group for code in codes]
            out += codes if cond is None else [If(cond, codes)]
        return out

    def _dropout(self, f: str, args: dict[str, N.Expr], ex: PyExpr) -> str:
        """dropout's mask (`dropout_mask`) or the input it keeps, scaled (`dropout_apply`), as torch's dropout
        computes them: a mask drawn only where it draws (training, 0 < p < 1: else the caller's random stream
        would move), and at p = 1 the input times 0 (no mask, no division by 1 - p, which double backward would
        turn into 0 / 0)."""
        given = args.get("p")
        p = ex.wrap(given, PREC["-"] + 1) if given is not None else "0.5"
        written = given.value if isinstance(given, N.Num) else None

        def when(test: str | bool) -> str | bool:  # in training, and `test` (p's, decided where p is written)
            mode = [] if self.in_training else [ex.sp.training]
            return False if test is False else " and ".join(mode + ([] if test is True else [str(test)])) or True

        # p past 1 draws, so that bernoulli_ refuses it (the plain module's dropout raises there too)
        draws = when(f"{p} > 0 and {p} != 1" if written is None else 0 < written < 1)
        zeroes = when(f"{p} == 1" if written is None else written == 1)
        x = ex(args["input"])
        if f == "dropout_mask":
            # a stack per step takes no None, so it keeps every element where none is drawn
            kept = "None" if self.mask_when_dropping else f"torch.ones_like({x}, dtype=torch.bool)"
            mask = f"torch.empty_like({x}, dtype=torch.bool).bernoulli_(1 - {p})"
            return _either(draws, mask, kept)
        dropped = f"torch.where({ex(args['mask'])}, {ex.wrap(args['input'], PREC['/'])} / (1 - {p}), 0)"
        zeroed = f"{ex.wrap(args['input'], PREC['*'])} * 0"
        return _either(draws, dropped, _either(zeroes, zeroed, x, nested=True))

    def _shape_only(self, e: N.Expr, tape: Tape) -> N.Expr:
        """Arguments of the internal helpers that only give a shape: use a leaf of the same static shape."""
        for node in walk(e):
            if isinstance(node, N.Call):
                for i in shape_args(node):
                    arg = node.args[i]
                    if isinstance(arg, N.Name) and arg.id not in tape.leaves:
                        same = same_shape_leaf(tape, arg.id, self.maybe_absent)
                        if same is not None:
                            node.args[i] = B.name(same)
        return e

    # ---------------------------------------------------------------- hand-written backward

    def handwritten_backward(self, tape: Tape) -> tuple[list[str], dict[str, set[str]]]:
        """The spec's backward block; forward locals it uses are recomputed or saved like derived ones."""
        items = [(set(s.leaves), s.var, clone(s.expr), s.span) for s in self.plan.written]
        return self._backward(tape, [Section(items, self.plan.incoming)])

    # ---------------------------------------------------------------- internal helpers

    def _internal(self, c: N.Call, ex: PyExpr) -> str | None:
        f = c.func
        if f not in OPS or not OPS[f].internal:
            return None
        leaves = [*self.forward.inputs, *self.layer.tensors]
        floating = {leaf.name: leaf.dtype == "float" for leaf in leaves}
        written = norm_loss_grad(c, ex, floating, lambda e: self._shape(e, ex), self._static_rank, self.maybe_absent)
        if written is not None:  # a norm's or a loss's gradient
            return written
        a = c.args
        if f == "sum_to":
            # `*shape` where the rank is known to be at least 1: torch parses separate ints faster than a Size
            # (a `...` alone may be no dim: `sum_to_size()` with no size is an error).
            summed_to = self.tape.shapes.get(a[1].id) if isinstance(a[1], N.Name) else None
            star = "*" if summed_to and any(d != GROUP for d in summed_to) else ""
            return f"{ex.wrap(a[0], ATOM)}.sum_to_size({star}{self._shape(a[1], ex)})"
        if f == "shape_of":
            return self._shape(a[0], ex)
        if OPS[f].torch.startswith("torch.nn.grad."):  # its input or weight given by the shape
            shaped = [self._shape(x, ex) if i in OPS[f].shape_args else ex(x) for i, x in enumerate(a)]
            return f"{OPS[f].torch}({', '.join(shaped)})"
        if f in ("dropout_mask", "dropout_apply"):  # p may be a keyword (the tape writes it so)
            args = dict(zip([p.name for p in OPS[f].params], a)) | {k.name: k.value for k in c.kwargs}
            return self._dropout(f, args, ex)
        if f.endswith("_indices") or f in _POOLING_GRADIENTS:
            return self._pooling(c, ex)
        if f == "transform_length":  # n, else the input's size along dim
            n, inp, dim = a
            return f"{self._shape(inp, ex)}[{ex(dim)}]" if isinstance(n, N.NoneLit) else ex(n)
        if f == "resize":
            return self._resized(a, ex)
        if f == "hermitian_weights":
            grad, length = ex.wrap(a[0], ATOM), ex.wrap(a[2], ATOM)
            ones, twos = f"{grad}.new_ones", f"{grad}.new_full((({length} - 1) // 2,), 2)"
            weights = f"torch.cat([{ones}(1), {twos}, {ones}(1 - {length} % 2)])"
            return f"{weights}.reshape({self._trailing_ones(a[1], f'{grad}.dim()', ex)})"
        if f == "select":  # stack's gradient: one operand's part
            return f"{ex.wrap(a[0], ATOM)}.select({ex(a[1])}, {ex(a[2])})"
        if f in ("slice_backward", "select_backward"):  # the ATen kernels take the input's sizes
            bounds = [_slice_bound(b, ex) if not isinstance(b, N.NoneLit) else "0" for b in a[2:]]
            if f == "slice_backward" and isinstance(a[4], N.NoneLit):  # to the end of the dim
                bounds[2] = f"{self._shape(a[1], ex)}[{ex(a[2])}]"
            if f == "slice_backward" and isinstance(a[5], N.NoneLit):
                bounds[3] = "1"
            return f"torch.ops.aten.{f}({ex(a[0])}, {self._shape(a[1], ex)}, {', '.join(bounds)})"
        if f in ("gather_backward", "index_select_backward", "index_backward", "embedding_backward"):
            return self._index_gradient(f, a, ex)
        if f == "index_many_backward":  # `x[:, i, j]`: one index per dim from dim, None for a whole one before
            picked_grad, picked_from, first, indices = a
            assert isinstance(indices, N.ListExpr), "the tape lists the index tensors"
            places = ["None"] * (_int_literal(first) or 0) + [ex(i) for i in indices.items]
            zeros = f"{ex.wrap(picked_grad, ATOM)}.new_zeros({self._shape(picked_from, ex)})"
            return f"torch.ops.aten.index_put({zeros}, [{', '.join(places)}], {ex(picked_grad)}, True)"
        if f == "expand_reduced":
            g, inp, dim, keepdim = a
            return f"{self._unsqueeze(ex.wrap(g, ATOM), dim, keepdim, ex)}.expand({self._shape(inp, ex)})"
        if f == "reduced_view":
            g, _, dim, keepdim = a
            return self._unsqueeze(ex.wrap(g, ATOM), dim, keepdim, ex)
        if f == "reduced_numel":
            inp, dim = a
            at = _int_literal(dim)
            if isinstance(inp, N.ListExpr) and at is not None and -len(inp.items) <= at < len(inp.items):
                return ex.wrap(inp.items[at], ATOM)  # a static shape's dim
            if isinstance(dim, N.NoneLit) and isinstance(inp, N.ListExpr):  # a static shape: its dims' product
                factors = [ex.wrap(d, PREC["*"] + 1) for d in inp.items if _int_literal(d) != 1]
                return "1" if not factors else factors[0] if len(factors) == 1 else f"({' * '.join(factors)})"
            shape = self._shape(inp, ex)
            if isinstance(dim, N.NoneLit):
                return f"{shape}.numel()"
            if isinstance(dim, N.ListExpr):
                return "(" + " * ".join(f"{shape}[{ex(d)}]" for d in dim.items) + ")"
            return f"{shape}[{ex(dim)}]"
        if f == "extremum_mask":
            inp, res, dim, keepdim = a
            mask = f"({ex(inp)} == {self._unsqueeze(ex.wrap(res, ATOM), dim, keepdim, ex)})"
            dims = ex(dim) if not isinstance(dim, N.NoneLit) else "None"
            return f"({mask} / {mask}.sum({dims}, keepdim=True))"
        return None

    def _static_rank(self, e: N.Expr) -> int | None:
        shape = self.tape.shapes.get(e.id) if isinstance(e, N.Name) else expr_shape(e, self.tape.shapes)
        return len(shape) if shape is not None and "..." not in shape and not opaque(shape) else None

    def _index_gradient(self, f: str, a: list[N.Expr], ex: PyExpr) -> str:
        """The gradient of an op that picks elements by index: zeros of the input's shape (only the shape is
        kept) with the gradient added where the elements came from."""
        if f == "embedding_backward":  # ATen's: padding_idx -1 for none, a negative one counted from the end
            grad, indices, weight, padding_idx, scale = a
            rows = f"{self._shape(weight, ex)}[0]"
            pad = ex.wrap(padding_idx, PREC["%"] + 1)
            if isinstance(padding_idx, N.NoneLit):
                pad = "-1"
            elif (
                padding_idx.kind != "int"
                and not isinstance(padding_idx, N.Num)
                or self._argument(padding_idx, "maybe_none")
            ):
                pad = f"(-1 if {ex(padding_idx)} is None else {pad} % {rows})"
            elif not (isinstance(padding_idx, N.Num) and padding_idx.value >= 0):
                pad = f"{pad} % {rows}"
            return f"torch.ops.aten.embedding_backward({ex(grad)}, {ex(indices)}, {rows}, {pad}, {ex(scale)}, False)"
        grad, inp, dim, index = a
        zeros = f"{ex.wrap(grad, ATOM)}.new_zeros({self._shape(inp, ex)})"
        if f == "gather_backward":
            return f"{zeros}.scatter_add({ex(dim)}, {ex(index)}, {ex(grad)})"
        if f == "index_select_backward":
            return f"{zeros}.index_add({ex(dim)}, {ex(index)}, {ex(grad)})"
        at = _int_literal(dim)  # index_put takes one index per leading dim: None for a whole one
        rank = len(inp.items) if isinstance(inp, N.ListExpr) else self._static_rank(inp)
        if at is not None and at < 0 and rank is not None:
            at += rank
        if at is not None and at >= 0:
            places = f"[{'None, ' * at}{ex(index)}]"
        else:
            places = f"[None] * (len({self._shape(inp, ex)}) + {ex.wrap(dim, PREC['+'] + 1)}) + [{ex(index)}]"
        return f"torch.ops.aten.index_put({zeros}, {places}, {ex(grad)}, True)"

    def _pooling(self, c: N.Call, ex: PyExpr) -> str:
        """Pooling's, padding's and prelu's helpers. ATen's backward kernels read the input only for its
        shape: they get a stand-in of that shape (one element, expanded), so that the input is not saved."""
        f, a = c.func, c.args
        if f.endswith("_indices"):  # alone (the forward binds it with the pooled values)
            first = N.Call(c.span, f.removesuffix("_indices"), c.func_span, c.args, c.kwargs)
            first.kind = c.kind
            return f"{ex(_returning_indices(first))}[1]"
        if f == "kernel_numel":
            size, dims = a
            if isinstance(size, N.ListExpr):
                return "(" + " * ".join(ex.wrap(i, PREC["*"] + 1) for i in size.items) + ")"
            if size.kind in ("int", "float") or isinstance(size, N.Num):
                return ex.wrap(size, ATOM) if ex(dims) == "1" else f"{ex.wrap(size, PREC['**'] + 1)} ** {ex(dims)}"
            if self._argument(size, "ints"):  # an int or a tuple of ints
                power = ex(size) if ex(dims) == "1" else f"{ex.wrap(size, PREC['**'] + 1)} ** {ex(dims)}"
                return f"({power} if isinstance({ex(size)}, int) else torch.Size({ex(size)}).numel())"
            return f"torch.Size({ex(size)}).numel()"  # a list argument
        if f == "channel_view":  # weight [C] (or [1]) along dim 1 of input: `weight.view(-1, 1, 1)`
            weight, inp = ex.wrap(a[0], ATOM), a[1]
            rank = self._static_rank(inp)
            if rank is not None:
                return weight if rank <= 2 else f"{weight}.view(-1{', 1' * (rank - 2)})"
            return f"{weight}.view(-1, *(1,) * (len({self._shape(inp, ex)}) - 2))"
        if f == "pad_backward" and isinstance(a[3], N.Str) and a[3].value == "constant":  # a crop: no shape read
            widths = a[2]  # a negative width crops
            if isinstance(widths, N.ListExpr):
                return f"F.pad({ex(a[0])}, [{', '.join(_negated(w, ex) for w in widths.items)}])"
            return f"F.pad({ex(a[0])}, [-w for w in {ex(widths)}])"
        grad, shape = ex.wrap(a[0], ATOM), self._shape(a[1], ex)
        stand_in = f"{_dtype_name(a[0], ex)}.new_empty(()).expand({shape})"
        if f == "max_pool_backward":  # the gradient added where the maxima were, in the flattened pooled dims
            _, _, indices, dims = a
            d, at = ex(dims), ex.wrap(indices, ATOM)
            zeros = f"{grad}.new_zeros({shape})"  # a fresh buffer: added to in place
            if d == "1":  # one pooled dim, the last: the indices count along it as they are
                return f"{zeros}.scatter_add_(-1, {at}, {grad})"
            return f"{zeros}.flatten(-{d}).scatter_add_(-1, {at}.flatten(-{d}), {grad}.flatten(-{d})).view({shape})"
        if f == "pad_backward":
            _, _, widths, mode = a
            assert isinstance(mode, N.Str), "the tape checks pad's mode"
            if mode.value == "circular":
                assert isinstance(widths, N.ListExpr), "the tape checks circular pad's widths"
                return _circular_pad_gradient(ex(a[0]), shape, widths.items, _dtype_name(a[0], ex), ex)
            kernel = {"reflect": "reflection_pad", "replicate": "replication_pad"}[mode.value]
            if isinstance(widths, N.ListExpr):
                return f"torch.ops.aten.{kernel}{len(widths.items) // 2}d_backward({grad}, {stand_in}, {ex(widths)})"
            kernels = ", ".join(f"torch.ops.aten.{kernel}{k}d_backward" for k in (1, 2, 3))
            return f"({kernels})[len({ex(widths)}) // 2 - 1]({grad}, {stand_in}, {ex(widths)})"
        spatial = _int_literal(a[-1])
        assert spatial in (1, 2, 3), "the pooling rows name their dims"
        if spatial == 1:  # ATen's 1-D pooling is its 2-D pooling over a dim of size 1
            grad, stand_in = f"{grad}.unsqueeze(-2)", f"{stand_in}.unsqueeze(-2)"
        kernel = f"{'avg_pool' if f == 'avg_pool_backward' else '_adaptive_avg_pool'}{max(spatial, 2)}d_backward"
        args = [grad, stand_in]
        if f == "avg_pool_backward":
            size, stride, padding, ceil_mode, count_include_pad, divisor = a[2:8]
            if isinstance(stride, N.NoneLit):
                stride = N.ListExpr(NOWHERE, [])  # ATen's default: the kernel size
            args += [self._pooling_arg(x, spatial, lead, ex) for x, lead in ((size, 1), (stride, 1), (padding, 0))]
            if self._argument(stride, "maybe_none"):  # `stride: ints? = none`: the kernel size when none
                args[3] = f"{self._pooling_arg(size, spatial, 1, ex)} if {ex(stride)} is None else {args[3]}"
            args += [ex(ceil_mode), ex(count_include_pad), ex(divisor)]
        call = f"torch.ops.aten.{kernel}({', '.join(args)})"
        return f"{call}.squeeze(-2)" if spatial == 1 else call

    def _pooling_arg(self, value: N.Expr, dims: int, lead: int, ex: PyExpr) -> str:
        """A size, stride or padding for ATen's kernel: 1-D ones get a leading `lead` (for the dim of size 1)."""
        if dims > 1:
            return ex(value)
        if isinstance(value, N.ListExpr):
            return f"[{', '.join([str(lead)] * bool(value.items) + [ex(i) for i in value.items])}]"
        if value.kind in ("int",) or isinstance(value, N.Num):
            return f"[{lead}, {ex(value)}]"
        if self._argument(value, "ints"):  # an int or a tuple of ints
            return f"[{lead}, *(({ex(value)},) if isinstance({ex(value)}, int) else {ex(value)})]"
        return f"[{lead}, *{ex(value)}]"

    def _argument(self, value: N.Expr, what: str) -> bool:
        """Whether `value` is an argument of the layer that may hold none (`maybe_none`), or an int as well
        as a tuple of ints (`ints`)."""
        arg = self.layer.arg(value.id) if isinstance(value, N.Name) and value.ref == N.Ref.ARG else None
        if arg is None:
            return False
        return arg.maybe_none if what == "maybe_none" else arg.base_type == "ints"

    def _resized(self, a: list[N.Expr], ex: PyExpr) -> str:
        """`resize(g, like, dim, size, length)`: `g` cut or zero-padded along dim from `size` to `length`
        (F.pad pads the last dims first; a negative amount cuts)."""
        g, like, dim, size, length = a
        if ex(size) == ex(length):
            return ex(g)
        rank = f"len({self._shape(like, ex)})"
        before = self._trailing_ones(dim, rank, ex, pairs=True)
        return f"F.pad({ex(g)}, {before}(0, {ex(length)} - {ex.wrap(size, PREC['*'] + 1)}))"

    @staticmethod
    def _trailing_ones(dim: N.Expr, rank: str, ex: PyExpr, pairs: bool = False) -> str:
        """For a dim: the shape `(-1, 1, 1)` that puts a vector along it (`pairs`: the `(0, 0) * k + `
        F.pad needs to skip the dims after it). `rank` is the rank's Python, for a dim counted from the front."""
        value = _int_literal(dim)
        if value is not None and value < 0:
            after = -value - 1
            if pairs:
                return f"(0, 0) * {after} + " if after else ""
            return ", ".join(["-1"] + ["1"] * after)
        after_text = f"({rank} - {ex(dim)} - 1)"
        if pairs:
            return f"(0, 0) * {after_text} + "
        return f"(-1,) + (1,) * {after_text}"

    def _shape(self, e: N.Expr, ex: PyExpr) -> str:
        """A tensor's shape: from the tensor when the backward has it, else as kept on ctx (or its static
        shape in the dims, a list)."""
        if isinstance(e, N.ListExpr):
            return f"({', '.join(ex(d) for d in e.items)}{',' if len(e.items) == 1 else ''})"
        if isinstance(e, N.Name) and e.id in self.shape_on_ctx:
            if self.shapes_read is not None:
                self.shapes_read.add(e.id)
            return self.names.ctx_shape(e.id)
        return f"{ex(e)}.shape"

    def _unsqueeze(self, g: str, dim: N.Expr, keepdim: N.Expr, ex: PyExpr) -> str:
        if isinstance(keepdim, N.Bool) and keepdim.value or isinstance(dim, N.NoneLit):
            return g
        if isinstance(dim, N.ListExpr):
            # Dims counted from the front in increasing order, then those from the end from the last one
            # back: each is then where it ends up (`[-2, -1]` is `unsqueeze(-1).unsqueeze(-2)`).
            for d in sorted(dim.items, key=_unsqueeze_order):
                g = f"{g}.unsqueeze({ex(d)})"
            return g
        if isinstance(keepdim, N.Bool):
            return f"{g}.unsqueeze({ex(dim)})"
        return f"({g} if {ex(keepdim)} else {g}.unsqueeze({ex(dim)}))"


VIEWS = ("view", "transpose")  # shape rules of ops that only view their operand (no pass over memory)
Item = tuple[set[str], str, N.Expr, Span]  # a backward statement: (leaves needing it, target, value, spec source)


@dataclass
class Section:
    """Statements of a backward that run together: the main derivation, or (run only when the gradient of
    an extra output is given) the derivation from that gradient, added to the main one's results."""

    items: list[Item]
    incoming: dict[str, str]
    cond: str | None = None
    accumulate: dict[str, str] = field(default_factory=dict)  # leaf -> the name holding this section's part
    rare: bool = False
    recompute: dict[str, set[str]] = field(default_factory=dict)


# Folding single-use values into their reader stops at this depth: the passes after it recurse over the
# expression (a spec's 100 statements `h = h * w + k`, each rebinding `h`, made one expression 200 deep).
FOLD_DEPTH = 24


def _deep(e: N.Expr) -> bool:
    """Whether `e` is nested more than FOLD_DEPTH levels (found without recursion)."""
    stack: list[tuple[N.Node, int]] = [(e, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > FOLD_DEPTH:
            return True
        stack += [(c, depth + 1) for c in children(node)]
    return False


def _returned_type(var: str, extra: list[str]) -> str:
    return "Tensor" if var in extra else "Tensor | None"


def _dtype_name(grad: N.Expr, ex: PyExpr) -> str:
    """A tensor with the dtype and device of gradient expression `grad`, written once: a gradient it reads."""
    names = [n for n in walk(grad) if isinstance(n, N.Name) and n.kind == "tensor"]
    return ex(next((n for n in names if n.id.startswith("grad")), names[0])) if names else ex.wrap(grad, ATOM)


def _circular_pad_gradient(grad: str, shape: str, widths: list[N.Expr], like: str, ex: PyExpr) -> str:
    """Circular pad's gradient: for each padded dim from the last, every element of `grad` is added to the
    input element it copies (`index_add` at the wrapped positions: the borders fold back onto the ends; a
    negative width crops first, as F.pad does, and the rest wraps within what is left)."""
    pairs = len(widths) // 2
    sizes = [f"{shape}[{-k - 1}]" for k in range(pairs)]  # the input's, dim -1 first
    padded = [_sum_of(sizes[k], widths[2 * k], widths[2 * k + 1], ex) for k in range(pairs)]
    for k in range(pairs):
        left, right = widths[2 * k], widths[2 * k + 1]
        crop_left, crop_right, shift = (
            _clipped(w, ex, negate) for w, negate in ((left, True), (right, True), (left, False))
        )
        period = sizes[k] + "".join(f" - {c}" for c in (crop_left, crop_right) if c != "0")
        positions = f"torch.arange({padded[k]}, device={like}.device)" + (f" - {shift}" if shift != "0" else "")
        positions = f"({positions}) % ({period})" if period != sizes[k] else f"({positions}) % {period}"
        positions += f" + {crop_left}" if crop_left != "0" else ""
        folded = [f"*{shape}[:-{pairs}]", *reversed(padded[k + 1 :]), *reversed(sizes[: k + 1])]
        zeros = shape if k == pairs - 1 else f"({', '.join(folded)})"  # the last fold gives the input's shape
        grad = f"{like}.new_zeros({zeros}).index_add({-k - 1}, {positions}, {grad})"
    return grad


def _sum_of(size: str, left: N.Expr, right: N.Expr, ex: PyExpr) -> str:
    """`size + left + right`, the literal widths added up."""
    literals = [_int_literal(w) for w in (left, right)]
    if None not in literals:
        total = sum(w for w in literals if w is not None)
        return size if total == 0 else f"{size} {'+' if total > 0 else '-'} {abs(total)}"
    return f"{size} + {ex.wrap(left, PREC['+'] + 1)} + {ex.wrap(right, PREC['+'] + 1)}"


def _clipped(width: N.Expr, ex: PyExpr, negate: bool) -> str:
    """`max(width, 0)` (`max(-width, 0)` when negate), worked out for a literal width."""
    value = _int_literal(width)
    if value is not None:
        return str(max(-value if negate else value, 0))
    return f"max({_negated(width, ex) if negate else ex(width)}, 0)"


def _negated(e: N.Expr, ex: PyExpr) -> str:
    value = _int_literal(e)
    return str(-value) if value is not None else f"-{ex.wrap(e, PREC['unary'])}"


_KEPT = {"indices": "where the maxima are, as int64: read instead of the input"}  # else the row's doc

_POOLING_GRADIENTS = (
    "max_pool_backward",
    "avg_pool_backward",
    "adaptive_avg_pool_backward",
    "pad_backward",
    "channel_view",
    "kernel_numel",
)


def with_second_results(tape: Tape) -> dict[str, str]:
    """Steps that are a call's second result (a max pooling's indices, a norm's statistics), and the step
    of its first, in the order the call returns them."""
    return {
        second.id: s.var
        for s in tape.steps
        if s.op is not None
        for k in (("indices",) if f"{s.op.name}_indices" in OPS else s.op.statistics)
        if isinstance(second := s.args.get(k), N.Name)
    }


def returning_second_results(first: Step, exprs: dict[str, N.Expr]) -> N.Call:
    """The call that returns a step's result with its second results (`Op.statistics`, or max pooling's
    indices)."""
    assert first.op is not None, "a step with second results is an op's"
    if not first.op.statistics:
        return _returning_indices(substitute(first.expr, exprs))
    row = OPS[f"{first.op.name}_with_statistics"]
    return B.call(row.name, *[substitute(first.args[p.name], exprs) for p in row.params], span=first.expr.span)


def _returning_indices(call: N.Expr) -> N.Call:
    """A max pooling call that also returns where the maxima are."""
    assert isinstance(call, N.Call), "a pooling step is a call"
    flag = N.Bool(NOWHERE, True)
    flag.kind = N.Kind.BOOL
    out = dataclasses.replace(call, kwargs=[*call.kwargs, N.Keyword("return_indices", flag, NOWHERE)])
    out.kind = call.kind
    return out


def _example_sizes(layer: N.Layer) -> dict[str, int]:
    """The integer arguments and dims the layer's first example gives (the sizes cost models price at)."""
    return {k: v for k, v in example_values(layer).items() if isinstance(v, int) and not isinstance(v, bool)}


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


def _unsqueeze_order(dim: N.Expr) -> tuple[bool, int]:
    value = _int_literal(dim) or 0
    return (value < 0, abs(value))


INT64 = (-(2**63), 2**63 - 1)  # what an ATen int argument holds


def _slice_bound(e: N.Expr, ex: PyExpr) -> str:
    """A bound of a slice's gradient: a written int past int64 (which Python's slicing takes, and ATen's
    kernels refuse) as the nearest that int64 holds, which slices alike."""
    value = _int_literal(e)
    if value is None or INT64[0] <= value <= INT64[1]:
        return ex(e)
    return str(min(max(value, INT64[0]), INT64[1]))


def _int_literal(e: N.Expr) -> int | None:
    """`3` or `-1` as an int; None for anything else."""
    if isinstance(e, N.UnaryOp) and e.op == "-":
        inner = _int_literal(e.operand)
        return None if inner is None else -inner
    return e.value if isinstance(e, N.Num) and isinstance(e.value, int) else None


def _saved_weight(reads: dict[str, set[str]], masks: dict[str, Mask]) -> int:
    """What saving these costs, counting a float tensor as four masks (a bool or an int8 per element)."""
    return sum(1 if v in masks else 4 for v in reads)


def _renamed(e: N.Expr, names: dict[str, str]) -> N.Expr:
    e = clone(e)
    for n in walk(e):
        if isinstance(n, N.Name) and n.id in names:
            n.id = names[n.id]
    return e


def _squares(e: N.Expr) -> N.Expr:
    """`x ** 2` as `x * x`: the same value (ATen computes it so), without wrapping the 2 in a tensor,
    which costs about 1 µs a call at small shapes."""
    e = map_children(e, _squares)
    if (
        isinstance(e, N.BinOp)
        and e.op == "**"
        and isinstance(e.right, N.Num)
        and e.right.value == 2
        and isinstance(e.left, N.Name)
    ):
        out = N.BinOp(e.span, "*", e.left, clone(e.left))
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
        for c in children(n):
            go(c)

    go(e)
    return out


def _shape_names(e) -> list[str]:
    out = []
    for n in walk(e):
        if isinstance(n, N.Call):
            out += [a.id for i in shape_args(n) if isinstance(a := n.args[i], N.Name)]
    return out


class _ExprNames:
    """`_value_names` and `_shape_names` of expressions, each found once (for expressions not changed
    in between): pricing each choice of saves reads every statement again."""

    def __init__(self) -> None:
        self.found: dict[int, tuple[N.Expr, list[str], list[str]]] = {}  # id -> (expr, kept alive, ...)

    def values(self, e: N.Expr) -> list[str]:
        return self._of(e)[1]

    def shapes(self, e: N.Expr) -> list[str]:
        return self._of(e)[2]

    def _of(self, e: N.Expr) -> tuple[N.Expr, list[str], list[str]]:
        if id(e) not in self.found:
            self.found[id(e)] = (e, _value_names(e), _shape_names(e))
        return self.found[id(e)]


def _step_sources(step: Step, sources: dict[str, frozenset[str]]) -> frozenset[str]:
    """The names a step's dtype comes from; for a step on an optional member, its base's (the member may
    be absent)."""
    if step.guard:
        assert step.base is not None  # a step on an optional member always has a base (Linearizer.add)
        return sources.get(step.base, frozenset({step.base}))
    return dtype_sources(step.expr, sources)


def _use_counts(tape: Tape) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in tape.steps:
        for n in walk(s.expr):
            if isinstance(n, N.Name):
                counts[n.id] = counts.get(n.id, 0) + 1
    for o in tape.outputs:
        if isinstance(o, N.Name):
            counts[o.id] = counts.get(o.id, 0) + 1
    return counts


def _replace_name(e: N.Expr, old: str, new: str) -> N.Expr:
    e = clone(e)
    for n in walk(e):
        if isinstance(n, N.Name) and n.id == old:
            n.id = new
    return e


# ------------------------------------------------------------------ the backward's code, in both grad modes
# Each grad mode's optimised statements become code (below), written out once both are known: `key` says
# whether two pieces of code are the same, so the statements both modes share are written once.


@dataclass(eq=False)
class Assign:
    """`target = expr`, naming the spec line it comes from."""

    target: str
    expr: N.Expr
    spec_path: str | None = None
    spec_line: int = 0

    def key(self) -> tuple:
        return ("=", self.target, B.key(self.expr))

    def lines(self, ex: PyExpr, depth: int = 0) -> list[str]:
        return with_spec_line([f"{self.target} = {ex(self.expr)}"], 0, self.spec_path, self.spec_line)


@dataclass(eq=False)
class Unscaled:
    """The note before a value that lacks a factor its readers apply (`optimize.scales`)."""

    target: str
    factor: N.Expr

    def key(self) -> tuple:
        return ("#", self.target, B.key(self.factor))

    def lines(self, ex: PyExpr, depth: int = 0) -> list[str]:
        return [f"# {self.target} without the factor {ex(self.factor)}: its readers apply it"]


@dataclass(frozen=True)
class Comment:
    """`# text`."""

    text: str

    def key(self) -> tuple:
        return ("#", self.text)

    def lines(self, ex: PyExpr, depth: int = 0) -> list[str]:
        return [f"# {self.text}"]


@dataclass(frozen=True)
class Delete:
    """`del names`: temporaries dead from here on."""

    names: tuple[str, ...]

    def key(self) -> tuple:
        return ("del", self.names)

    def lines(self, ex: PyExpr, depth: int = 0) -> list[str]:
        return [f"del {', '.join(self.names)}"]


@dataclass(frozen=True)
class Accumulate:
    """A rare section's part of a leaf's gradient, added to what the main section found (or None)."""

    leaf: str
    part: str

    def key(self) -> tuple:
        return ("+=", self.leaf, self.part)

    def lines(self, ex: PyExpr, depth: int = 0) -> list[str]:
        g = f"grad_{self.leaf}"
        return [f"{g} = {self.part} if {g} is None else {g} + {self.part}"]


@dataclass(eq=False)
class If:
    """`if cond:` with its body, and an `else:` when `orelse` has code."""

    cond: str
    body: list[Code]
    orelse: list[Code] = field(default_factory=list)

    def key(self) -> tuple:
        return ("if", self.cond, tuple(c.key() for c in self.body), tuple(c.key() for c in self.orelse))

    def lines(self, ex: PyExpr, depth: int = 0) -> list[str]:
        lines = [f"if {self.cond}:", *_indented(self.body, ex, depth + 1)]
        return lines + (["else:", *_indented(self.orelse, ex, depth + 1)] if self.orelse else [])


Code = Assign | Unscaled | Comment | Delete | Accumulate | If


def _indented(codes: list[Code], ex: PyExpr, depth: int) -> list[str]:
    return ["    " + line for code in codes for line in code.lines(ex, depth)]


def _code(s: Stmt, spec_path: str | None) -> list[Code]:
    """One optimised statement as code: its note, the assignment (guarded by its optional member), its `del`."""
    codes: list[Code] = [Unscaled(s.target, s.unscaled)] if s.unscaled is not None else []
    assign = Assign(s.target, s.expr, spec_path, s.span.line)
    if s.guard:
        otherwise: list[Code] = (
            [Assign(s.target, s.otherwise, spec_path, s.span.line)] if s.otherwise is not None else []
        )
        codes.append(If(f"{s.guard} is not None", [assign], otherwise))
    else:
        codes.append(assign)
    return codes + ([Delete(tuple(s.dels))] if s.dels else [])


def by_grad_mode(recorded: list[Code], unrecorded: list[Code]) -> list[Code]:
    """One body when it is the same whether or not autograd records the backward; else the statements
    both share once, and the rest in two branches, as deep inside the guards both have as possible. Grad
    mode is on in a backward exactly when it is being recorded (`create_graph=True`); then no value an
    earlier operation keeps may be updated in place."""
    a, b = [c.key() for c in recorded], [c.key() for c in unrecorded]
    if a == b:
        return recorded
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    only_a, only_b = recorded[head : len(a) - tail], unrecorded[head : len(b) - tail]
    guards = _same_guards(only_a, only_b)
    branch: list[Code] = (
        [If(x.cond, by_grad_mode(x.body, y.body)) for x, y in guards]
        if guards is not None
        else _branches(only_a, only_b)
    )
    return recorded[:head] + branch + recorded[len(a) - tail :]


def _same_guards(recorded: list[Code], unrecorded: list[Code]) -> list[tuple[If, If]] | None:
    """The pairs when both are the same `if COND:`s, each with one body and no `else` (the grad modes can
    branch inside); else None."""
    if len(recorded) != len(unrecorded):
        return None
    pairs = []
    for x, y in zip(recorded, unrecorded):
        if not (isinstance(x, If) and isinstance(y, If) and x.cond == y.cond and not x.orelse and not y.orelse):
            return None
        pairs.append((x, y))
    return pairs


def _branches(recorded: list[Code], unrecorded: list[Code]) -> list[Code]:
    why = Comment("create_graph=True: autograd records this backward, so nothing it saves is updated in place")
    if not recorded:
        return [why, If("not torch.is_grad_enabled()", unrecorded)]
    return [why, If("torch.is_grad_enabled()", recorded, unrecorded)]


# ---------------------------------------------------------------- a forward that branches


def emit_branching_function(emitter, plan: BranchPlan) -> dict:
    """The Function of a forward with `if`s on configuration values: each side of the branches is emitted
    as a straight-line Function, and forward, setup_context and backward each choose the side by the same
    condition (forward and setup_context from the arguments and input shapes, backward from `ctx`). All
    sides return the same outputs (None for an intermediate only another side saves)."""
    sides = plan.sides()
    first = [FunctionEmitter(emitter, side) for side in sides]
    scope = set().union(*(f._scope_names() for f in first))
    returned = list(dict.fromkeys(x for f in first for x in f.emit()["computed_extra"]))
    buffers = updated_buffers(plan, [b.name for b in emitter.layer.buffers])
    emitters = [FunctionEmitter(emitter, side, scope, returned, buffers) for side in sides]
    longest = max(sides, key=lambda side: len(side.tape.outputs))
    for f, in_training in zip(emitters, _training_sides(plan)):
        f.in_training = in_training
        f.padding = longest.grads[len(f.tape.outputs) :]
        f.sometimes_updated = {b for b in buffers if not always_updated(plan, b)}
    pieces = [f.emit() for f in emitters]
    head = emitters[0]
    fn = dict(pieces[0])
    for key in ("forward_params", "backward_params", "inputs", "output"):
        assert all(p[key] == fn[key] for p in pieces), f"the sides of a branching Function differ in {key}"
    fn["returns"] = _union_returns(pieces)
    fn["n_outputs"] = len(longest.tape.outputs)
    fn["forward_body"] = _chosen(plan, iter(p["forward_body"] for p in pieces), head.branch_condition("forward"))
    fn["backward_body"] = _chosen(plan, iter(p["backward_body"] for p in pieces), head.branch_condition("backward"))
    fn["setup_body"] = head.branching_setup(plan, [p["setup_body"] for p in pieces])
    return fn


def _training_sides(plan: Plan, known: bool = False) -> list[bool]:
    """For each side, whether the branches choosing it hold only in training (`if training`)."""
    if not isinstance(plan, BranchPlan):
        return [known]
    cond = plan.cond
    training = isinstance(cond, N.Name) and cond.ref == "training"
    return _training_sides(plan.then, known or training) + _training_sides(plan.orelse, known)


def _conditions(plan: Plan) -> list[N.Expr]:
    if not isinstance(plan, BranchPlan):
        return []
    return [plan.cond, *_conditions(plan.then), *_conditions(plan.orelse)]


def _union_returns(pieces: list[dict]) -> str:
    """Each returned value's type over the sides: `Tensor | None` where some side returns None for it."""
    types = []
    for each in zip(*(p["return_types"] for p in pieces)):
        both = {part for t in each for part in t.split(" | ")}
        types.append(each[0] if len(set(each)) == 1 else "Tensor | None" if both == {"Tensor", "None"} else each[0])
    return _tuple_hint(types)


def _tuple_hint(types: list[str]) -> str:
    return types[0] if len(types) == 1 else f"tuple[{', '.join(types)}]"


def _chosen(plan: Plan, sides: Iterator[list[str]], cond: PyExpr, ends_in_return: bool = True) -> list[str]:
    """The sides' lines (taken in order from `sides`), each under the conditions choosing it; `cond`
    spells a condition (`codegen.function_branches` writes what two sides share once)."""
    if not isinstance(plan, BranchPlan):
        return list(next(sides))
    then = _chosen(plan.then, sides, cond, ends_in_return)
    orelse = _chosen(plan.orelse, sides, cond, ends_in_return)
    return chosen_lines(cond(plan.cond), then, orelse, ends_in_return)


def _either(cond: str | bool, then: str, orelse: str, nested: bool = False) -> str:
    """`then if cond else orelse` (`then` or `orelse` alone where `cond` is decided), parenthesized unless
    `nested` in another's `else`."""
    if isinstance(cond, bool):
        return then if cond else orelse
    chosen = f"{then} if {cond} else {orelse}"
    return chosen if nested else f"({chosen})"
