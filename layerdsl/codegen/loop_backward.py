"""The backward of a loop Function (`function_loops.LoopFunction`), written from the derived steps.

One `BackwardWriter` writes the backward, or one section of it (the outputs' gradients, or the extra
outputs'), given what forward returns: a straight segment's derived statements, a `Choice`'s side
again, and for a loop the body's derived statements for t = T - 1, ..., 0 over the saved stacks. A step
recomputes the views it reads, and the cheap elementwise values of what it keeps anyway (`recomputable`),
rather than keeping a stack of them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from layerdsl.autodiff.loop_ints import sized_per_step
from layerdsl.autodiff.loop_lists import not_of_this_loop
from layerdsl.autodiff.loops import UNBOUND, Choice, Join, Loop, Straight
from layerdsl.autodiff.nest import Nest
from layerdsl.autodiff.plan import dtype_tested
from layerdsl.autodiff.reverse import Backward, derive
from layerdsl.autodiff.tape import Step, Tape
from layerdsl.codegen import flat_steps, function_nest
from layerdsl.codegen.function import VIEWS
from layerdsl.codegen.function_members import unpacked_with_held
from layerdsl.codegen.loop_steps import sized_leaves, step_statements
from layerdsl.codegen.pyexpr import Spelling
from layerdsl.codegen.spec_lines import with_spec_line, without_spec_lines
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import spec_text
from layerdsl.ir.visit import clone, map_children, walk
from layerdsl.language.ops import shape_args

if TYPE_CHECKING:
    from layerdsl.codegen.function_loops import LoopFunction


@dataclasses.dataclass
class Reads:
    """What one writing of the backward reads of the forward."""

    once: set[str] = dataclasses.field(default_factory=set)  # values read as they are after forward
    per_step: dict[int, set[str]] = dataclasses.field(default_factory=dict)  # loop index -> body values
    shapes: set[str] = dataclasses.field(default_factory=set)  # values (after forward) read for their shape
    # where each value is read by value: the side of a Choice ((segment, 0 or 1)) or None (elsewhere)
    sides: dict[str, set[tuple[int, int] | None]] = dataclasses.field(default_factory=dict)
    # loop index -> the body values of `per_step` read by value (the others only for their shape)
    by_value: dict[int, set[str]] = dataclasses.field(default_factory=dict)
    output_shapes: set[str] = dataclasses.field(default_factory=set)  # outputs whose zeros are made (their shape)
    # values whose zeros the double backward makes of their shape, with a given gradient's dtype
    given_shapes: set[str] = dataclasses.field(default_factory=set)
    # values read by value outside the steps of the forward's own loops, and inside them, by loop index; and
    # each such loop's range as backward writes it (`loop_starts`: saved only where a step runs)
    outside: set[str] = dataclasses.field(default_factory=set)
    in_loops: dict[str, set[int]] = dataclasses.field(default_factory=dict)
    trips: dict[int, str] = dataclasses.field(default_factory=dict)


class BackwardWriter:
    """One writing of the backward (or of one section of it), given the values returned as extra outputs."""

    def __init__(self, fn: LoopFunction, once: set[str], per_step: dict[int, set[str]], mode: str):
        self.fn = fn
        # "all": every incoming gradient; "main": the outputs' only; "rare": the extra outputs' only
        self.mode = mode
        self.plan = fn.plan
        self.once = once
        self.per_step = per_step
        self.reads = Reads()
        self.state: dict[str, str] = {}  # gradient -> "set" (holds a tensor) or "maybe" (None when no step ran)
        self.maybe_none: set[str] = set()  # gradients to start as None
        ctx = fn.names.ctx_value
        dims = list(self.fn.helper.dims)
        spelling = Spelling({k: ctx(k) for k in [*fn.kwargs, *dims]}, training=ctx("training"))
        self.spelling = spelling
        self.ex = fn.helper.python(spelling)
        self.values = set(self.plan.shapes) | set(self.plan.leaves)
        self.current = self.reads.once  # where `read` records what the statements read
        self.step_by_value: set[str] = set()  # what a loop step's statements read by value (not for a shape)
        # the values of the loop being written (the carried ones, the body's, its picks `x[t]`): read per step
        self.step_body: set[str] = set()
        # Views of inputs and parameters (`transpose(w, 0, 1)`): recomputed in backward, not returned
        leaves = set(self.plan.leaves)
        self.views = {
            s.var: s
            for seg in self.plan.segments
            if isinstance(seg, Straight)
            for s in seg.tape.steps
            if s.op is not None and s.op.shape in VIEWS and operands(s) <= leaves
        }
        self.recomputed: set[str] = set()
        self.kept_whole = fn.outputs | set(self.views)  # read as themselves even for a shape
        self.side: tuple[int, int] | None = None  # the side of a Choice being written
        # by side of a Choice: its values computed again there where read, not kept (`choice_slices.side_masks`)
        self.side_views: dict[tuple[int, int], dict[str, Step]] = {}
        self.picked: dict[int, set[str]] = {}  # id of a tape -> the picks taken out of it (`step_picks`)
        # Views of inputs, parameters and picked slices in the loop being written (`transpose(w_l[k], 0, 1)`):
        # recomputed at each step of backward, not kept per step
        self.step_views: dict[str, Step] = {}
        self.step_recomputed: set[str] = set()
        # a view read in a nest's steps only (`x[t]`, `step_picks`): the key its leaves' reads count under there
        self.view_loops: dict[str, int] = {}
        self.step_loop: int | None = None  # the index of the loop whose step's statements are being derived
        self.own_loop: int | None = None  # the index of the forward's own loop being written (not a nest's)
        differentiable = [l for l in self.plan.leaves if l in self.plan.differentiable]
        self.needs = {l: f"ctx.needs_input_grad[{self.plan.leaves.index(l)}]" for l in differentiable}

    def guard(self, leaves) -> str | None:
        """The test of `ctx.needs_input_grad` under which a statement needed by the gradients of `leaves`
        (of a loop's body: values computed from the layer's leaves) runs; None when every gradient needs it."""
        needed = {l for v in leaves for l in self.fn.sources.get(v, {v} & set(self.needs))}
        if not needed or needed >= set(self.needs):
            return None
        return " or ".join(self.needs[l] for l in self.needs if l in needed)

    def write(self) -> list[str]:
        lines: list[str] = []
        if self.mode != "rare":
            for g in self.plan.grads:
                self.state[g] = "set"
        else:  # added to what the outputs' gradients gave (or None)
            for g in self.leaf_grads():
                self.state[g] = "maybe"
        for seg in reversed(self.plan.segments):
            if isinstance(seg, Straight):
                lines += self.straight(seg)
            elif isinstance(seg, Choice):
                lines += self.choice(seg)
            elif isinstance(seg, Nest):
                lines += function_nest.backward(self, seg)
            else:
                self.own_loop = self.fn.loops.index(seg)
                lines += self.loop(seg)
                self.own_loop = None
        return lines

    def leaf_grads(self) -> list[str]:
        return [f"grad_{l}" for l in self.plan.leaves if l in self.plan.differentiable]

    def declared(self) -> list[str]:
        grads = self.leaf_grads()
        declared = [g for g in grads if self.state.get(g) != "set"] + sorted(self.maybe_none - set(grads))
        return [" = ".join(declared) + " = None"] if declared else []

    def head(self, writers: list[BackwardWriter]) -> list[str]:
        """The saved tensors unpacked, the dims and numbers, the views recomputed (for every section)."""
        saved = self.saved_names([w.reads for w in writers])
        head: list[str] = []
        again: list[str] = []
        if self.fn.recomputing:  # save = "inputs": the inputs and parameters the forward run again reads
            read = {v for w in writers for v in w.reads.once | w.reads.shapes | w.recomputed}
            again = self.fn.recompute(self.once, self.per_step, self.spelling, read)
            text = without_spec_lines("\n".join(again))
            spelled = [l for l in self.plan.leaves if re.search(rf"(?<![.\w]){re.escape(l)}\b", text)]
            saved = self.fn.unpacked = [l for l in self.plan.leaves if l in saved or l in spelled]
        if saved:
            head += unpacked_with_held(saved, self.fn.held)
            ends = self.fn.ends_in_buffers(saved, self.per_step)
            head += [
                f"{v} = {function_nest.end_row(self.fn, v, buffer)} if {v} is None else {v}"
                for v, buffer in ends.items()
            ]
        head += [] if again else self.fn.placeholders_again()  # the forward run again binds them
        head += self.fn.prelude(self.ex, lambda d: self.fn.names.ctx_value(d))
        if again:  # it binds the views of the inputs too
            return head + again
        recomputed = {v for w in writers for v in w.recomputed}
        for var, step in self.views.items():
            if var in recomputed:
                head += with_spec_line([f"{var} = {self.ex(step.expr)}"], 0, self.fn.e.spec_path, step.expr.span.line)
        return head

    def saved_names(self, reads: list[Reads]) -> list[str]:
        once = {v for r in reads for v in r.once}
        leaves = [l for l in self.plan.leaves if l in once]
        outputs = [o.id for o in self.plan.outputs if isinstance(o, N.Name) and o.id in once]
        if self.fn.recomputing:  # nothing but inputs and parameters is saved (those read for their shape too)
            shapes = {v for r in reads for v in r.shapes}
            return [l for l in self.plan.leaves if l in once or l in shapes]
        extra = self.fn.extra_outputs(self.once, self.per_step)
        return leaves + outputs + [x for x in extra if x not in self.fn.shape_only]

    # ---------------------------------------------------------------- gradients

    def acc(self, value: str) -> str:
        return f"grad_{value}"

    def accumulate(self, value: str, grad: str, conditional: bool) -> list[str]:
        """`grad` added to the gradient of `value` (or that gradient, when it is the first)."""
        target = self.acc(value)
        if target == grad:  # written as the gradient itself (the first share)
            self.state[target] = "maybe" if conditional else "set"
            if conditional:
                self.maybe_none.add(target)
            return []
        st = self.state.get(target)
        if st == "set":
            return [f"{target} = {target} + {grad}"]
        if st is None and not conditional:
            self.state[target] = "set"
            return [f"{target} = {grad}"]
        self.maybe_none.add(target)
        self.state[target] = "maybe"
        return [f"{target} = {grad} if {target} is None else {target} + {grad}"]

    def statements(
        self, bwd: Backward, tape: Tape, where: str, conditional: bool = True
    ) -> tuple[list[str], dict[str, str]]:
        """The derived statements, each leaf's gradient written to a name of its own where the gradient
        summed so far (or, in a loop, the incoming one of the same name) must stay; and each leaf's
        gradient var. A leaf's gradient is never read by the statements after it."""
        renamed: dict[str, str] = {}
        lines: list[str] = []
        guarded: list[str] = []  # the statements under the last guard
        last: str | None = None
        # through the optimisation passes; a loop step's statements run when their gradients are needed
        needs = self.guard if where == "t" else lambda _: None
        at_hand = dict.fromkeys(self.fn.helper.dims, N.Ref.DIM) | dict.fromkeys(self.fn.kwargs, N.Ref.ARG)
        sized_by = sized_leaves(self.fn.layer, self.fn.e.inlined, self.plan.leaves, self.fn.helper.maybe_absent)
        whole = {*self.plan.leaves, *self.views, *self.step_views}  # at hand: their shapes read from them
        # a carried value's static shape is its start's, not every step's; a merged local's, one side's
        if function_nest.choices(self.plan.segments) or any(
            self.fn.first_broadcast(loop, c) for loop in self.fn.loops for c in loop.carried
        ):
            whole = set(self.plan.shapes)
        stmts = step_statements(bwd, self.plan.shapes, self.fn.layer, needs, at_hand, whole, sized_by)
        if where == "t" and self.step_loop is not None:  # a comparison read from its mask kept per step
            stmts = self.fn.step_masked(self.step_loop, stmts)
        for s in stmts:
            targets = []
            for var in s.target.split(", "):  # several: one kernel's results (`joint_gradients`)
                leaf = var.removeprefix("grad_")
                direct = where != "t" and self.state.get(var) is None  # the first share: the gradient itself
                if var.startswith("grad_") and leaf in bwd.leaf_grads and leaf in tape.leaves and not direct:
                    hint = f"grad_{leaf}_t" if where == "t" else f"grad_{leaf}_part"
                    renamed[var] = self.fn.name(hint, key=(where, leaf))
                targets.append(renamed.get(var, var))
            target = ", ".join(targets)
            self.read(s.expr)
            code = with_spec_line([f"{target} = {self.ex(s.expr)}"], 0, self.fn.e.spec_path, s.span.line)
            guard = self.guard(s.leaves) if where == "t" else None  # a step's statements: what is needed
            if guard != last:
                lines += under(last, guarded)
                guarded, last = [], guard
            guarded += code
        lines += under(last, guarded)
        return lines, {leaf: renamed.get(g, g) for leaf, g in bwd.leaf_grads.items()}

    def read(self, expr: N.Expr) -> None:
        if self.own_loop is None:  # outside the loops' steps, by value or for a shape (`w.shape[-2]`)
            self.reads.outside |= {n.id for n in walk(expr) if isinstance(n, N.Name)}
        shaped = {
            id(a)
            for c in walk(expr)
            if isinstance(c, N.Call)
            for i in shape_args(c)
            if isinstance(a := c.args[i], N.Name)
        }
        sized = _sized(expr)
        for n in walk(expr):
            if isinstance(n, N.Name) and n.id in self.fn.meta_leaves:  # on the meta device: its shape alone
                self.reads.shapes.add(n.id)
            elif (
                isinstance(n, N.Name)
                and id(n) in shaped
                and (self.current is self.reads.once or n.id not in self.step_body)
                and n.id in self.values
                and n.id not in self.kept_whole
            ):
                self.reads.shapes.add(n.id)  # only its shape: kept on ctx where nothing reads it otherwise
            elif isinstance(n, N.Name) and n.id in self.step_views:
                self.step_recomputed.add(n.id)
                self.read(self.step_views[n.id].expr)
            elif isinstance(n, N.Name) and n.id in self.views:  # recomputed from the leaves it views
                self.recomputed.add(n.id)
                own, self.own_loop = self.own_loop, self.view_loops.get(n.id)  # (else outside the loops)
                self.read(self.views[n.id].expr)
                self.own_loop = own
            elif isinstance(n, N.Name) and n.id in self.values:
                self.current.add(n.id)
                if self.own_loop is not None:
                    self.reads.in_loops.setdefault(n.id, set()).add(self.own_loop)
                if self.current is self.reads.once:
                    self.reads.sides.setdefault(n.id, set()).add(self.side)
                elif id(n) not in shaped | sized:  # (a step's value kept of its shape alone: `size` of it works)
                    self.step_by_value.add(n.id)

    def computed_again(
        self,
        views: list[Step],
        reshaped: set[str],
        derived: list[str],
        flat: dict[str, list[str]] | None = None,
        loop: Loop | None = None,
    ) -> list[str]:
        """The lines of a step of backward computing `views` again, before its `derived` lines. A value of the
        step's own shape (`reshaped`) that they read only for its shape (`sum`'s gradient expanded to it),
        computed elementwise from one tensor (`sin(x[:t + 1])`), is bound to that tensor, of its shape.
        `flat`: the lines binding the values of `loop`'s step kept flattened (`flat_read`), in the step's
        order among them (`exp(s)` computed again after `s` is read back)."""
        lines = {v.var: self.fn.steps(Tape([v], [], [], set()), self.ex) for v in views}
        out: list[str] = []
        order = {s.var: k for k, s in enumerate(loop.tape.steps)} if loop is not None else {}
        waiting = dict(flat or {})
        for v in views:
            for u in [u for u in waiting if order.get(u, -1) < order.get(v.var, -1)]:
                out += waiting.pop(u)
            args = operands(v)
            if v.var in reshaped and v.op is not None and v.op.shape == "elementwise" and len(args) == 1:
                others = [line for u, written in lines.items() if u != v.var for line in written]
                if not re.search(
                    rf"(?<![.\w]){re.escape(v.var)}\b(?!\.shape\b)", without_spec_lines("\n".join(others + derived))
                ):
                    (arg,) = args
                    lines[v.var] = [f"{v.var} = {self.ex(B.name(arg))}  # of its shape: only that is read"]
            out += lines[v.var]
        return out + [line for u in waiting for line in waiting[u]]

    # ---------------------------------------------------------------- segments

    def choice(self, seg: Choice, at: int | None = None, before: tuple[list[str], list[str]] = ([], [])) -> list[str]:
        """The backward of the side forward ran: the merged locals' gradients given to the values that side
        left in them; a gradient one side gives and the other not is None after the `if` when that ran.
        `at`: its key (by default, its index among the forward's segments; `function_nest.choice_key`)."""
        at = self.plan.segments.index(seg) if at is None else at
        head: list[str] = []
        if self.mode != "main":  # a merged local returned as an extra output: its gradient from there
            for name in seg.merged:  # (a side's own under its name: that side's steps give it, `step_choices`)
                if name in self.once and name not in self.fn.outputs and name not in seg.merged[name]:
                    head += self.accumulate(name, self.fn.grad_out(name), conditional=False)
        start = dict(self.state)
        sides, states = [], []
        for k, tape in enumerate(seg.sides()):
            self.state = dict(start)
            own = {s.var for s in tape.steps}
            lines: list[str] = list(before[k])  # (a side's rows read, `function_nest.side_rows`)
            for name, values in seg.merged.items():
                if self.mode != "main" and name in self.once and name not in self.fn.outputs and values[k] != name:
                    if name in values and values[k] != UNBOUND:  # the other side's own under its name: this side's
                        lines += self.accumulate(name, self.fn.grad_out(name), conditional=False)
                given = (self.state if name in values else start).get(self.acc(name))
                # (None when this side ran: no gradient; the side's own value under the merged name: its own)
                if given is None or values[k] in (UNBOUND, name):
                    continue
                if values[k] in own and self.acc(values[k]) not in self.state:  # two merged names may hold it
                    lines.append(f"{self.acc(values[k])} = {self.acc(name)}")
                    self.state[self.acc(values[k])] = given
                else:
                    lines += self.accumulate(values[k], self.acc(name), conditional=given == "maybe")
            self.side = (at, k)
            derived = self.straight(Straight(tape), where=f"{at} {('then', 'else')[k]}")
            lines += self.side_again((at, k)) + derived
            self.side = None
            sides.append(lines)
            renamed = {m for m, values in seg.merged.items() if m in values}  # a side's own (`step_choices`)
            states.append({g: st for g, st in self.state.items() if g.removeprefix("grad_") not in own | renamed})
        self.state = {}
        for g in dict.fromkeys([*states[0], *states[1]]):
            then, orelse = states[0].get(g), states[1].get(g)
            self.state[g] = then if then is not None and then == orelse else "maybe"
            if then != orelse and None in (then, orelse):  # defined on one side only: None on the other
                self.maybe_none.add(g)
        kept = {m: self.fn.names.ctx_shape(m) for m in self.fn.presence_tested}  # None when not given
        kept |= {f: self.fn.names.ctx_value(f) for f in self.fn.flags_tested}
        kept |= {dtype_name(leaf): self.fn.dtype_field(leaf) for leaf in self.fn.dtype_tested}
        ex = self.fn.helper.python(dataclasses.replace(self.spelling, names=self.spelling.names | kept))
        test = ex(dtypes_named(seg.cond))
        negated = f"not {test}" if re.fullmatch(r"[\w.]+", test) else f"not ({test})"
        self.fn.side_tests |= {(at, 0): test, (at, 1): negated}
        return head + if_else([f"if {test}:"], sides[0], sides[1])

    def side_again(self, side: tuple[int, int]) -> list[str]:
        """The lines computing again, at the start of a side's backward, its values of `side_views` it read."""
        again = [s for v, s in self.side_views.get(side, {}).items() if v in self.recomputed]
        return [line for s in again for line in self.fn.steps(Tape([s], [], [], set()), self.ex)]

    def straight(self, seg: Straight, where: str | None = None) -> list[str]:
        """`where`: the key of the names it introduces (by default, the segment's index)."""
        tape = seg.tape
        own = {s.var for s in tape.steps}
        sure: list[tuple[N.Expr, str]] = []
        maybe: list[tuple[N.Expr, str]] = []
        if seg.returns and self.mode != "rare":
            sure += list(zip(self.plan.outputs, self.plan.grads))
        for s in tape.steps:
            st = self.state.get(self.acc(s.var))
            if st == "set" and not (seg.returns and s.var in self.fn.outputs):
                sure.append((B.name(s.var), self.acc(s.var)))
            elif st == "maybe":
                maybe.append((B.name(s.var), self.acc(s.var)))
        # A gradient only a later loop or side of an `if` gave (None when none did) keeps a name of its
        # own: the sections' statements name the segment's own gradients `grad_<var>` too.
        lines: list[str] = []
        for k, (var, g) in enumerate(maybe):
            kept = self.fn.name(f"{g}_from_later")
            lines.append(f"{kept} = {g}")
            maybe[k] = (var, kept)
        # (and a nest's `x[t]` taken out of this tape as a leaf, `step_picks`: its kept value's gradient here)
        mine = own | self.picked.get(id(tape), set())
        extra = {v: self.fn.grad_out(v) for v in mine if v in self.once and v not in self.fn.outputs}
        extra = {} if self.mode == "main" else extra
        for group, cond in [(sure, None)] + [([m], f"{m[1]} is not None") for m in maybe]:
            outs = dataclasses.replace(tape, outputs=[o for o, _ in group])
            bwd = derive(outs, [g for _, g in group], extra if cond is None else None)
            at = where or f"{self.plan.segments.index(seg)}"
            key = at + ("" if cond is None else f" {group[0][1]}")
            body, grads = self.statements(bwd, tape, key, conditional=cond is not None)
            for leaf, g in grads.items():
                if leaf not in own:
                    body += self.accumulate(leaf, g, conditional=cond is not None)
            lines += body if cond is None else ([f"if {cond}:"] + ["    " + line for line in body] if body else [])
        return lines

    def after_earlier(self, loop: Loop | Nest, j: Join, at: str) -> str:
        """Index `at` of `loop`'s items in join `j`'s parts, after those of the loops before it that append
        to the same list (`loops.Loop.before`): their items counted (each step's, `Loop.before_per`; a step's
        one of a stack of one item of each step's), one range where they run in a row alike."""
        bounds = loop.before.get(j.items, [])
        if not bounds or j.alone is not None:  # (a stack of its own items only)
            return at
        pers = loop.before_per.get(j.items, [1] * len(bounds)) if j.of_step is None else [1] * len(bounds)
        starts = [b[0] if len(b) == 2 else B.num(0) for b in bounds]
        stops = [b[-1] for b in bounds]
        in_row = all(spec_text(stop) == spec_text(start) for stop, start in zip(stops, starts[1:]))
        if len(set(pers)) == 1 and in_row and all(len(b) <= 2 for b in bounds):  # (a range with a step: counted)
            bounds, pers = [[starts[0], stops[-1]]], pers[:1]  # a loop split where its `if`s turn: its pieces in a row
        counts = [
            f"{f'{per} * ' if per > 1 else ''}len(range({', '.join(self.ex(b) for b in each)}))"
            for per, each in zip(pers, bounds)
        ]
        return f"{at} + {' + '.join(counts)}"

    def loop(self, loop: Loop) -> list[str]:
        k = self.fn.loops.index(loop)
        kept = self.per_step.get(k, set())
        lines: list[str] = []
        if self.mode != "main":
            for c in loop.carried:
                if c in self.once and c not in self.fn.outputs:
                    lines += self.accumulate(c, self.fn.grad_out(c), conditional=False)
            for j in loop.joins:
                if j.name in self.once and j.name not in self.fn.outputs:
                    lines += self.accumulate(j.name, self.fn.grad_out(j.name), conditional=False)
        requiring = [c for c in loop.carried if c in self.plan.requires]
        for c in requiring:
            st = self.state.get(self.acc(c))
            if st != "set":  # nothing after the loop reads it (or only a loop after it): zeros to start
                g = self.acc(c)
                if self.mode == "rare" and c in self.fn.outputs:  # not kept for this: its shape, on ctx
                    self.reads.output_shapes.add(c)
                    zeros = f"{self.fn.name('given')}.new_zeros({self.fn.names.ctx_shape(c)})"
                elif self.mode == "main":  # its shape only (kept on ctx), the given gradient's dtype
                    shape = B.call("shape_of", B.name(c))
                    self.read(shape)
                    zeros = f"{self.plan.grads[0]}.new_zeros({self.ex(shape)})"
                else:
                    self.read(B.name(c))
                    zeros = f"torch.zeros_like({c})"
                lines.append(f"{g} = {zeros}" if st is None else f"{g} = {zeros} if {g} is None else {g}")
                self.state[g] = "set"
        # Each step's share of the gradient of what the loop's lists are joined into
        items: dict[tuple[str, int], list[str]] = {}
        step_index = loop.var if plain_range(loop) else self.fn.name("step")
        for j in loop.joins:
            if self.state.get(self.acc(j.name)) is None:
                continue
            parts = self.fn.name(f"grad_{j.name}_parts")
            count = f"len({self.fn.trip(loop, self.ex)})"
            cut = f"unbind({self.ex(j.dim)})" if j.func == "stack" else f"tensor_split({count}, {self.ex(j.dim)})"
            if self.state[self.acc(j.name)] == "maybe":  # given only by a later loop, which may take no step
                self.read(B.name(j.name))
                g = self.acc(j.name)
                lines.append(f"{g} = torch.zeros_like({j.name}) if {g} is None else {g}")
                self.state[g] = "set"
            lines.append(f"{parts} = {self.acc(j.name)}.{cut}")
            # the items appended before the loop come first (`loops.Join.heads`): theirs, then the steps',
            # `per` of them each step (`loops.Loop.more`)
            per = 1 + len(loop.more.get(j.items, []))
            for i in [] if not_of_this_loop(loop, j) else range(per) if j.of_step is None else [j.of_step]:
                at = step_index if per == 1 else f"{per} * {step_index} + {i}" if i else f"{per} * {step_index}"
                at = step_index if j.of_step is not None else at
                at = f"{at} + {len(j.heads)}" if j.heads else at
                items.setdefault((j.items, i), []).append(f"{parts}[{self.after_earlier(loop, j, at)}]")
            for i, head in enumerate(j.heads):
                if head in self.plan.requires:
                    lines += self.accumulate(head, f"{parts}[{i}]", conditional=False)
        for j in loop.later_joins:  # a later loop's join of a list this one appends to first: cut there
            if self.state.get(self.acc(j.name)) is not None and not not_of_this_loop(loop, j):
                parts = self.fn.name(f"grad_{j.name}_parts")
                per = 1 + len(loop.more.get(j.items, []))  # a step's items (`Loop.more`), or its one of a stack's
                for i in range(per) if j.of_step is None else [j.of_step]:
                    at = step_index if per == 1 or j.of_step is not None else f"{per} * {step_index}"
                    at = f"{at} + {i}" if i and j.of_step is None else at
                    at = f"{at} + {len(j.heads)}" if j.heads else at
                    items.setdefault((j.items, i), []).append(f"{parts}[{self.after_earlier(loop, j, at)}]")
        outputs: list[tuple[N.Expr, str]] = [(B.name(loop.updates[c]), self.acc(c)) for c in requiring]
        body: list[str] = []
        for (name, i), parts_at in items.items():
            item_grad = self.fn.name(f"grad_{name}_item" if i == 0 else f"grad_{name}_item{i}")
            body.append(f"{item_grad} = {' + '.join(parts_at)}")
            outputs.append((loop.appended[name] if i == 0 else loop.more[name][i - 1], item_grad))
        # a number the loop carries, as this step started with it (recorded in the prelude), then the step's
        recorded = [f"{c} = {self.fn.number_record(loop, c)}[{step_index}]" for c in loop.carried_numbers]
        body = recorded + [f"{n} = {self.ex(e)}" for n, e in loop.numbers] + body
        extra_grads: dict[str, str] = {}
        per_step_names = {c: self.fn.name(f"{c}_t") for c in loop.carried}
        reshaped = sized_per_step(loop, self.plan.shapes)  # of a step's own shape: computed again, not kept
        # (or kept flattened, where computing them again would keep what they are computed from: `flat_steps`)
        # (a loop of the forward's own: a nest's inner loop's steps are stacked over the outer steps, one shape)
        top = self.own_loop is not None and any(seg is loop for seg in self.plan.segments)
        flat = flat_steps.flat_values(loop, reshaped, set(self.plan.leaves)) if top else set()
        if top:
            self.fn.flat_steps[k] = flat
        flat_kept = [v for v in self.fn.per_step_order(loop, kept) if v in flat]
        for v in flat_kept:
            if v in self.plan.requires and self.mode != "main":
                extra_grads[v] = self.fn.name(f"grad_{v}_step")
        for v in self.fn.per_step_order(loop, kept):
            if v in flat:
                continue
            slot = f"{self.fn.stacked(v)}[{step_index}]"
            given = f"{self.fn.grad_out(self.fn.stacked(v))}[{step_index}]"
            if v in loop.carried:  # step 0's: the start itself (the buffer holds the later steps')
                self.read(B.name(loop.carried[v]))
                start = self.ex(B.name(loop.carried[v]))
                slot = f"{self.fn.stacked(v)}[{step_index} - 1] if {step_index} > 0 else {start}"
                grad = self.fn.grad_out(self.fn.stacked(v))
                given = f"{grad}[{step_index} - 1] if {step_index} > 0 else torch.zeros_like({start})"
            if v in self.fn.widenable(loop, kept):  # step 0's on its own, when it came out smaller
                first = self.fn.first(v)
                at_first = f"{step_index} == 0 and {first} is not None"
                slot = f"{first} if {at_first} else {slot}"
                given = f"{self.fn.grad_out(first)} if {at_first} else {given}"
            body.append(f"{per_step_names.get(v, v)} = {slot}")
            if v in self.plan.requires and self.mode != "main":
                extra_grads[v] = self.fn.name(f"grad_{v}_step")
                body.append(f"{extra_grads[v]} = {given}")
        for c in loop.carried:  # the step before's value (its gradient flows back through that step's)
            if c in kept and (update := self.fn.previous_step(loop, c, kept)) is not None:
                self.read(B.name(loop.carried[c]))
                start = self.ex(B.name(loop.carried[c]))
                previous = f"{self.fn.stacked(update)}[{step_index} - 1]"
                body.append(f"{per_step_names[c]} = {previous} if {step_index} > 0 else {start}")
        tape = dataclasses.replace(loop.tape, outputs=[o for o, _ in outputs])
        bwd = derive(tape, [g for _, g in outputs], extra_grads)
        body_values = set(loop.carried) | {s.var for s in loop.tape.steps}
        self.current, self.step_by_value, self.step_body = set(), set(), body_values | set(loop.picks)
        sources = set(self.plan.leaves) | set(loop.picks) | (from_before(loop) if top else set())
        self.step_views = {}
        for s in loop.tape.steps:  # in order: a view of a view of a leaf is one too
            if s.op is not None and s.op.shape in VIEWS and operands(s) <= sources | set(self.step_views):
                self.step_views[s.var] = s
            elif s.var in reshaped and s.var not in flat:
                self.step_views[s.var] = s
        self.step_recomputed = set()
        after_loop = self.ex  # a carried value read per step by a name of its own (its own holds the last)
        self.ex = self.fn.helper.python(dataclasses.replace(self.spelling, names=self.spelling.names | per_step_names))
        self.step_loop = k
        derived, grads = self.statements(bwd, tape, "t")
        cheap = recomputable(loop, self.step_by_value & body_values) | views_of_read(loop, self.step_by_value)
        if cheap:  # written again, recomputing them from what the step keeps anyway
            plain_views = self.step_views
            self.step_views = {s.var: s for s in loop.tape.steps if s.var in plain_views or s.var in cheap}
            self.current, self.step_by_value, self.step_recomputed = set(), set(), set()
            derived, grads = self.statements(bwd, tape, "t")
        from_cats = read_from_cats(loop, reshaped, self.step_recomputed, self.step_by_value)
        if from_cats:  # written again, reading them back from the `cat`s the step keeps anyway
            self.step_views = {v: from_cats.get(v, s) for v, s in self.step_views.items()}
            self.current, self.step_by_value, self.step_recomputed = set(), set(), set()
            derived, grads = self.statements(bwd, tape, "t")
        flat_read = self.flat_read(loop, flat_kept)
        self.step_loop = None
        views = [s for v, s in self.step_views.items() if v in self.step_recomputed]
        self.step_views = {}
        picked = [p for p in loop.picks if p in self.current]  # picked again from what is saved once
        for p in picked:
            self.read(loop.picks[p].expr)
        body += [f"{p} = {self.ex(loop.picks[p].expr)}" for p in picked]
        body += self.computed_again(views, reshaped, derived, flat_read, loop) + derived
        self.ex = after_loop
        self.step_body = set()
        self.reads.per_step.setdefault(k, set()).update(self.current & body_values)
        self.reads.by_value.setdefault(k, set()).update(self.step_by_value & body_values)
        self.reads.once |= self.current - body_values - set(loop.picks)
        self.current = self.reads.once
        rows: dict[str, str] = {}
        for leaf, g in grads.items():
            if leaf in loop.picks:  # one slice of the picked value's gradient per step
                rows[leaf] = self.fn.name(f"grad_{leaf}_steps")
                body += under(self.guard([leaf]), [f"{rows[leaf]}.append({g})"])
            elif leaf not in loop.carried:
                body += under(self.guard([leaf]), self.accumulate(leaf, g, conditional=True))
        # The carried values' gradients, for the step before (at once: one may be another's)
        before = [(self.acc(c), grads.get(c, f"torch.zeros_like({self.acc(c)})"), self.guard([c])) for c in requiring]
        new = [(t, g if guard is None else f"{g} if {guard} else {t}") for t, g, guard in before if t != g]
        if new:
            body.append(f"{', '.join(t for t, _ in new)} = {', '.join(g for _, g in new)}")
        self.reads.trips[k] = self.fn.trip(loop, self.ex)
        if plain_range(loop):
            head = f"for {loop.var} in reversed({self.fn.trip(loop, self.ex)}):"
        else:
            head = f"for {step_index}, {loop.var} in reversed(list(enumerate({self.fn.trip(loop, self.ex)}))):"
        lines += [f"{r} = []" for r in rows.values()]
        for v in flat_kept:  # each step's value cut back from the end (`flat_read`), as the steps run in reverse
            buffer = self.fn.stacked(v)
            lines.append(f"{self.fn.name(f'{v}_end')} = 0 if {buffer} is None else {buffer}.shape[0]")
        lines += with_spec_line([head], 0, self.fn.e.spec_path, loop.span.line)
        lines += ["    " + line for line in body or ["pass"]]
        for p, r in rows.items():  # the slices in order: the value's gradient, when the loop took a step
            step = loop.picks[p]
            src, dim = step.args["input"], step.args["dim"]
            assert isinstance(src, N.Name)
            fresh = self.state.get(self.acc(src.id)) is None
            whole = self.acc(src.id) if fresh else self.fn.name(f"grad_{src.id}_picked")
            taken = self.accumulate(src.id, whole, conditional=True)
            # a step's slice at t (`x[t]`) in reverse of the order backward ran, at T - 1 - t as it ran
            in_order = f"{r}[::-1]" if isinstance(step.args["index"], N.Name) else r
            lines += [f"if {r}:", f"    {whole} = torch.stack({in_order}, dim={self.ex(dim)})"]
            lines += ["    " + t for t in taken]
        for c in requiring:  # the gradient of the value the carried one starts as
            if loop.carried[c] in self.plan.requires:
                lines += self.accumulate(loop.carried[c], self.to_start(loop, c, c in grads), conditional=False)
        return lines

    def flat_read(self, loop: Loop, flat: list[str]) -> dict[str, list[str]]:
        """A step's lines binding the values kept flattened (`flat_steps`), and their extra outputs' gradients
        (`extra_grads`), cut back from the end of their buffers at the shape of their operands (views read
        only for their shape, computed again). Each step moves the end back by its value's size."""
        out: dict[str, list[str]] = {}
        for v in flat:
            lines = out[v] = []
            args = flat_steps.operands(loop, v)
            for a in args:
                self.read(B.call("shape_of", B.name(a)))
            shape, end = self.fn.name(f"{v}_shape"), self.fn.name(f"{v}_end")
            lines += [f"{shape} = {flat_steps.shape_of([self.ex(B.name(a)) for a in args])}"]
            lines += [f"{end} = {end} - {shape}.numel()"]
            lines += [f"{v} = {self.fn.stacked(v)}[{end}:{end} + {shape}.numel()].view({shape})"]
            if v in self.plan.requires and self.mode != "main":
                grad = self.fn.grad_out(self.fn.stacked(v))
                lines += [f"{self.fn.name(f'grad_{v}_step')} = {grad}[{end}:{end} + {shape}.numel()].view({shape})"]
        return out

    def to_start(self, loop: Loop, c: str, read: bool) -> str:
        """The gradient of the value carried value `c` starts as: `c`'s, summed to the start's shape where
        no step reads `c` (`read`) and the start may be smaller than the steps make it (`h = z[l] * 1.0` of
        [d], [B, d] after a first step `h = tanh(x[t] @ w)`): each step's zeros have the steps' shape."""
        if read or self.fn.first_broadcast(loop, c) is None:
            return self.acc(c)
        shape = B.call("shape_of", B.name(loop.carried[c]))
        self.read(shape)
        return f"{self.acc(c)}.sum_to_size({self.ex(shape)})"


MAX_SAVING_SIDES = 3  # the sides of `if`s a value is saved for, tested in setup_context (more: always saved)


def plain_range(loop: Loop) -> bool:
    """Whether the loop is `for t in range(n)` (one bound), whose index backward can count down itself."""
    return len(loop.bounds) == 1


def if_else(head: list[str], then: list[str], orelse: list[str]) -> list[str]:
    """`head` (an `if ...:` line) over `then`, and `else:` over `orelse` when it has lines."""
    lines = head + ["    " + line for line in then or ["pass"]]
    return lines + (["else:", *("    " + line for line in orelse)] if orelse else [])


def under(guard: str | None, lines: list[str]) -> list[str]:
    """`lines`, under `if guard:` when there is one."""
    if guard is None or not lines:
        return lines
    return [f"if {guard}:", *("    " + line for line in lines)]


def dtype_name(leaf: str) -> str:
    return f"{leaf}.is_floating_point"  # no spec name has a dot: the backward spells it as the ctx field


def dtypes_named(cond: N.Expr) -> N.Expr:
    """`cond` with each `is_floating_point(m)` as a name (`dtype_name`), which backward spells as ctx's."""

    def go(e: N.Expr) -> N.Expr:
        if isinstance(e, N.Call) and e.func == "is_floating_point" and dtype_tested(e):
            name = N.Name(e.span, dtype_name(dtype_tested(e)[0]))
            name.ref, name.kind = N.Ref.LOCAL, N.Kind.BOOL
            return name
        return map_children(e, go)

    return go(cond)


def recomputable(loop: Loop, read: set[str]) -> set[str]:
    """The body values a step of backward reads by value (`read`) that it recomputes rather than keeps per
    step: a cheap elementwise step whose tensor operands the step keeps anyway or recomputes too (`1 - z`
    beside `z`). Keeping it would cost a buffer of every step's value, recomputing it one pass over one
    step's; it adds nothing to what is kept. A carried value's next value and an appended item stay kept
    (the next step's carried value and the joined list are read from their buffers)."""
    fixed = set(loop.updates.values())
    fixed |= {e.id for e in [*loop.appended.values(), *sum(loop.more.values(), [])] if isinstance(e, N.Name)}
    cheap: set[str] = set()
    for s in loop.tape.steps:
        elementwise = s.op is not None and s.op.shape == "elementwise" and s.op.cost == "cheap"
        if elementwise and s.var in read and s.var not in fixed and not s.guard and not s.by_mask:
            if (args := operands(s)) and args <= read:
                cheap.add(s.var)
    return cheap


def from_before(loop: Loop) -> set[str]:
    """The values a loop's body reads from before the loop, the same at every step (not the carried ones): a
    view of one in a step (`unsqueeze(xs[:, t], 1)`) is computed again from it in backward, where it is kept
    once, as autograd keeps a view's base, rather than kept per step as a copy."""
    return set(loop.tape.leaves) - set(loop.carried)


def views_of_read(loop: Loop, read: set[str]) -> set[str]:
    """The body values that are views (`unsqueeze(h, 1)`) of a value a step of backward reads by value
    (`read`, kept per step anyway): computed again from it, rather than each step's view kept as a copy
    beside it (autograd keeps their base once). Not a carried value's next value nor an appended item
    (read back from their buffers), as in `recomputable`."""
    fixed = set(loop.updates.values())
    fixed |= {e.id for e in [*loop.appended.values(), *sum(loop.more.values(), [])] if isinstance(e, N.Name)}
    return {
        s.var
        for s in loop.tape.steps
        if s.op is not None
        and s.op.shape in VIEWS
        and s.var not in fixed
        and not s.guard
        and not s.by_mask
        and (args := operands(s))
        and args <= read
    }


def read_from_cats(loop: Loop, reshaped: set[str], recomputed: set[str], by_value: set[str]) -> dict[str, Step]:
    """The values of a step's own shape (`reshaped`) that backward computes again (`recomputed`), other than
    views, that are a part of a `cat` of the step that it reads by value (`by_value`, kept per step): each as
    a step reading it back from there (`narrow(cat, dim, offset, size)`, its offset and size from the other
    parts' sizes, which are computed before it), so that what it is computed from need not be kept
    (`sigmoid(h[:, n:])` in `cat([h[:, :n], sigmoid(h[:, n:])], dim = 1) @ w`: `h`, then read only for its
    shape)."""
    out: dict[str, Step] = {}
    order = {s.var: k for k, s in enumerate(loop.tape.steps)}
    for c in loop.tape.steps:
        parts = c.args.get("tensors")
        if c.op is None or c.op.name != "cat" or c.var not in by_value or c.var in reshaped:
            continue
        if not isinstance(parts, N.ListExpr) or not all(isinstance(p, N.Name) for p in parts.items):
            continue
        names = [p.id for p in parts.items if isinstance(p, N.Name)]
        dim = c.args.get("dim", B.num(0))
        for k, v in enumerate(names):
            step = loop.tape.step(v)
            if v not in reshaped or v not in recomputed or v in out or names.count(v) > 1 or step is None:
                continue
            if step.op is not None and step.op.shape in VIEWS:
                continue  # (cheap, from what it views)
            others = names[:k] + names[k + 1 :]
            if not all(o in order and order[o] < order[v] for o in others):
                continue  # (their sizes are read before it is bound)
            sizes = [B.call("reduced_numel", B.name(o), clone(dim)) for o in others]
            for e in sizes:
                e.kind = N.Kind.INT
            offset: N.Expr = B.num(0)
            for e in sizes[:k]:
                offset = clone(e) if isinstance(offset, N.Num) else B.binop("+", offset, clone(e))
                offset.kind = N.Kind.INT
            size: N.Expr = B.call("reduced_numel", B.name(c.var), clone(dim))
            size.kind = N.Kind.INT
            for e in sizes:
                size = B.binop("-", size, e)
                size.kind = N.Kind.INT
            expr = B.call("narrow", B.name(c.var), clone(dim), offset, size, span=step.expr.span)
            expr.kind = N.Kind.TENSOR
            out[v] = dataclasses.replace(step, expr=expr, args={"input": B.name(c.var)})
    return out


def operands(step) -> set[str]:
    """The names of the tensors a step reads."""
    return {n.id for a in step.args.values() for n in walk(a) if isinstance(n, N.Name) and n.kind == N.Kind.TENSOR}


def _sized(expr: N.Expr) -> set[int]:
    """The ids of the names `expr` reads only a size of (`size_at(mm, -1)`: a chunk's cut, `tape._part_slices`)."""
    return {
        id(c.args[0])
        for c in walk(expr)
        if isinstance(c, N.Call) and c.func == "size_at" and c.args and isinstance(c.args[0], N.Name)
    }
