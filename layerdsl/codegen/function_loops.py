"""The autograd.Function of a `@function` layer whose forward keeps a loop (`autodiff.loops.LoopPlan`).

Forward runs the segments in order; a loop runs its body once per step in Python, appending what the
body's backward reads to one list per value, stacked after the loop. Every forward value the backward
reads besides the inputs and parameters is returned as an extra output (a stacked list is one), so that
double backward sees it, and each extra output's gradient flows back through the value it holds.

Backward runs the segments in reverse: a straight segment's derived statements, and for a loop, the
body's derived statements for t = T - 1, ..., 0, with each step's saved values picked from the stacks.
The loop-carried values' gradients are carried from step to step; the gradients of values read from
outside the loop are summed over the steps. A gradient that only a loop gives is None when the loop takes
no step, so what is derived from it runs under `if grad is not None`. An `if` of its own (`Choice`) runs
the side its condition picks, in forward and again in backward.
"""

from __future__ import annotations

import dataclasses
import re

from layerdsl.autodiff.loops import UNBOUND, Choice, Loop, LoopPlan, Straight, presence, segment_steps
from layerdsl.autodiff.plan import BackwardPlan, BranchPlan, dtype_tested
from layerdsl.autodiff.reverse import Backward, derive
from layerdsl.autodiff.shapes import step_shape
from layerdsl.autodiff.tape import Step, Tape
from layerdsl.codegen.function import VIEWS, FunctionEmitter, returning_second_results, with_second_results
from layerdsl.codegen.function_branches import chosen_lines
from layerdsl.codegen.loop_steps import sized_leaves, step_statements
from layerdsl.codegen.pyexpr import PyExpr, Spelling
from layerdsl.codegen.spec_lines import with_spec_line
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import and_terms
from layerdsl.ir.visit import map_children, walk
from layerdsl.language.ops import shape_args
from layerdsl.language.tables import python_type

MAX_ROUNDS = 6  # derivations until what backward reads settles (a growing set: it ends sooner)


def emit_loop_function(emitter, plan: LoopPlan) -> dict:
    """The pieces of `<Name>Function` for the template, from a forward with loops."""
    return LoopFunction(emitter, plan).emit()


def loop_sides(plan) -> list[LoopPlan] | None:
    """The sides of a forward with loops that branches on configuration values (`if final_relu`), every
    side a LoopPlan; None when a side is not one."""
    if isinstance(plan, LoopPlan):
        return [plan]
    if not isinstance(plan, BranchPlan):
        return None
    then, orelse = loop_sides(plan.then), loop_sides(plan.orelse)
    return None if then is None or orelse is None else then + orelse


def emit_branching_loop_function(emitter, plan: BranchPlan) -> dict:
    """The Function of a forward with loops and `if`s on configuration values: each side a Function with
    loops (`LoopFunction`), forward, setup_context and backward each choosing the side by the condition
    (forward and setup_context from the arguments, backward from `ctx`). Every side returns the extra
    outputs of all (None for those it does not compute), their gradients named alike in every side."""
    sides = loop_sides(plan)
    assert sides is not None
    returned = list(dict.fromkeys(x for side in sides for x in LoopFunction(emitter, side).emit()["extra"]))
    shared: dict[tuple, str] = {}
    functions = [LoopFunction(emitter, side, returned, shared) for side in sides]
    _same_parameter_names(functions)
    pieces = [f.emit() for f in functions]
    fn = dict(pieces[0])
    n_out = {p["n_outputs"] for p in pieces}
    assert len(n_out) == 1, "the checker gives every side of a layer's forward the same outputs"
    for key in ("forward_params", "backward_params", "apply_params"):
        assert all(p[key] == fn[key] for p in pieces), f"the sides of a branching Function differ in {key}"
    head = functions[0]
    forward_cond = head.helper.branch_condition("forward")
    on_ctx = head.helper.branch_condition("backward")
    # `b != none` of an optional member (`autodiff.loops.member_choice`) or input: what forward found, on ctx
    given = {
        m: head.names.ctx_value(f"{m}_given")
        for c in _conditions(plan)
        for term in _presence_terms(c)
        if (m := _presence_of(term))
    }
    fn["forward_params"] = [  # a member or input some side goes without is None there
        f"{p.split(':')[0]}: Tensor | None" if p.split(":")[0] in given else p for p in fn["forward_params"]
    ]

    def backward_cond(c: N.Expr) -> str:
        tested = presence(c)
        if isinstance(c, N.BoolOp) and len(terms := _presence_terms(c)) > 1:  # a tuple input's
            return f" {c.op} ".join(backward_cond(t) for t in terms)
        if tested is None:
            return on_ctx(c)
        return given[tested[0]] if tested[1] else f"not {given[tested[0]]}"

    bodies = iter([p["forward_body"] for p in pieces])
    fn["forward_body"] = _chosen(plan, bodies, forward_cond)
    read = {n.id for c in _conditions(plan) for n in walk(c) if isinstance(n, N.Name)}
    unpack = [l if l in read else "_" for l in head.plan.leaves] + head.kwargs  # what the conditions read
    kept = [f"{flag} = {m} is not None" for m, flag in given.items()]
    fn["setup_body"] = [f"{', '.join(unpack)} = {head.names.inputs}", *dict.fromkeys(kept)] + _chosen(
        plan, iter([p["setup_body"] for p in pieces]), forward_cond
    )
    fn["backward_body"] = _chosen(plan, iter([p["backward_body"] for p in pieces]), backward_cond)
    fn["returns"] = f"tuple[{', '.join(['Tensor'] * n_out.pop() + ['Tensor | None'] * len(returned))}]"
    return fn


def _same_parameter_names(functions: list[LoopFunction]) -> None:
    """`setup_context`'s `inputs` and `output` named alike in every side (one side's local may be `output`):
    each the first of `output`, `output_`, ... that no side's names take otherwise."""
    for field in ("inputs", "output"):
        name = field
        while any(name in f.names.taken and name != getattr(f.names, field) for f in functions):
            name += "_"
        for f in functions:
            f.names.taken.add(name)
            setattr(f.names, field, name)


def _conditions(plan) -> list[N.Expr]:
    if not isinstance(plan, BranchPlan):
        return []
    return [plan.cond, *_conditions(plan.then), *_conditions(plan.orelse)]


def _presence_of(cond: N.Expr) -> str | None:
    """The member or input `m` of a condition `m != none` or `m == none` (None for one on arguments)."""
    tested = presence(cond)
    return tested[0] if tested else None


def _presence_terms(cond: N.Expr) -> list[N.Expr]:
    """The presence tests `cond` joins with one operator (`hx_0 != none and hx_1 != none`: a tuple input's,
    `autodiff.inputs`); `[cond]` for another condition."""
    if not isinstance(cond, N.BoolOp):
        return [cond]
    terms: list[N.Expr] = []
    for side in (cond.left, cond.right):
        terms += _presence_terms(side) if isinstance(side, N.BoolOp) and side.op == cond.op else [side]
    return terms if all(_presence_of(t) for t in terms) else [cond]


def _chosen(plan, sides, cond) -> list[str]:
    """The sides' lines (taken in order from `sides`) under `if <cond>: ... else: ...`, what they begin and
    end with written once (`function_branches.chosen_lines`)."""
    if not isinstance(plan, BranchPlan):
        return list(next(sides))
    then, orelse = _chosen(plan.then, sides, cond), _chosen(plan.orelse, sides, cond)
    return chosen_lines(cond(plan.cond), then, orelse, ends_in_return=False)


@dataclasses.dataclass
class _Reads:
    """What one writing of the backward reads of the forward."""

    once: set[str] = dataclasses.field(default_factory=set)  # values read as they are after forward
    per_step: dict[int, set[str]] = dataclasses.field(default_factory=dict)  # loop index -> body values
    shapes: set[str] = dataclasses.field(default_factory=set)  # values (after forward) read for their shape
    # where each value is read by value: the side of a Choice ((segment, 0 or 1)) or None (elsewhere)
    sides: dict[str, set[tuple[int, int] | None]] = dataclasses.field(default_factory=dict)


class LoopFunction:
    """One Function: the forward as segments (`LoopPlan`), written out with a loop for each loop."""

    def __init__(
        self, emitter, plan: LoopPlan, returned: list[str] | None = None, shared: dict[tuple, str] | None = None
    ):
        """`returned`: every side's extra outputs, when this is a side of a branching forward (None for
        those this side does not compute); `shared`: the names the sides share (their gradients')."""
        self.e = emitter
        self.returned = returned
        self.layer = emitter.layer
        self.plan = plan
        self.kwargs: list[str] = emitter.function_kwargs()
        steps = [s for seg in plan.segments for s in segment_steps(seg)]
        numbers = plan.numbers + [n for seg in plan.segments if isinstance(seg, Loop) for n in seg.numbers]
        merged = Tape(steps, plan.outputs, plan.leaves, plan.differentiable, numbers=numbers, shapes=plan.shapes)
        self.helper = FunctionEmitter(emitter, BackwardPlan(merged, plan.grads, {}, None, []))
        self.names = self.helper.names
        self.names.taken |= set(plan.shapes) | {f"grad_{v}" for v in plan.shapes}
        for seg in plan.segments:
            if isinstance(seg, Loop):
                self.names.taken |= {seg.var, *seg.appended, *(n for n, _ in seg.numbers)}
        self.loops = [seg for seg in plan.segments if isinstance(seg, Loop)]
        self.helper.mask_when_dropping = not self.loops  # no mask kept per step (a stack takes no None)
        self.own: dict[tuple, str] = {} if shared is None else shared  # names it introduces, by what they hold
        self.outputs = {o.id for o in plan.outputs if isinstance(o, N.Name)}
        self.backward_dims: set[str] = set()
        self.sources = _gradient_sources(plan)
        self.shape_only: set[str] = set()  # values backward reads only the shape of: their shape kept on ctx
        # values only sides of Choices read (at most MAX_SAVING_SIDES): saved when one of them runs
        self.saved_on: dict[str, list[tuple[int, int]]] = {}
        self.leaf_shapes: set[str] = set()  # inputs and members backward reads only the shape of
        self.side_tests: dict[tuple[int, int], str] = {}  # each side's condition, as backward spells it
        # `if m != none` of an optional input, an `if` of its own: backward tests m's shape, kept on ctx
        tested = [presence(t) for seg in plan.segments if isinstance(seg, Choice) for t in and_terms(seg.cond)]
        self.presence_tested = list(dict.fromkeys(t[0] for t in tested if t is not None))
        # a flag input (`if not need_weights`) and a dtype (`if is_floating_point(mask)`): kept on ctx too
        read = {
            n.id for seg in plan.segments if isinstance(seg, Choice) for n in walk(seg.cond) if isinstance(n, N.Name)
        }
        assert self.layer.forward is not None
        self.flags_tested = [i.name for i in self.layer.forward.inputs if i.flag is not None and i.name in read]
        conds = [seg.cond for seg in plan.segments if isinstance(seg, Choice)]
        self.dtype_tested = list(dict.fromkeys(leaf for cond in conds for leaf in dtype_tested(cond)))

    def dtype_field(self, leaf: str) -> str:
        return self.names.ctx_value(f"{leaf}_is_floating_point")

    def dim_source(self, dim: str) -> str:
        """How forward measures `dim`: of an optional input (a segmented forward's), None when not given."""
        source = self.helper.dim_source[dim]
        leaf = source.split(".")[0]
        return f"None if {leaf} is None else {source}" if leaf in self.presence_tested else source

    def name(self, hint: str, key: tuple = ()) -> str:
        """A name this Function introduces: the same for the same hint (and key) in every writing."""
        which = (hint, *key)
        if which not in self.own:
            self.names.taken |= set(self.own.values())  # another side's (a side's step count: `n_steps`)
            self.own[which] = self.names.local(hint)
        return self.own[which]

    # ---------------------------------------------------------------- the pieces

    def emit(self) -> dict:
        once: set[str] = set()
        per_step: dict[int, set[str]] = {}
        for _ in range(MAX_ROUNDS):
            body, reads = self.backward(once, per_step)
            grown = (reads.once | reads.shapes) - set(self.plan.leaves) - self.outputs
            new_steps = {k: v | per_step.get(k, set()) for k, v in reads.per_step.items()}
            if grown <= once and all(new_steps[k] <= per_step.get(k, set()) for k in new_steps):
                break
            once |= grown
            per_step = new_steps
        else:  # not settled in MAX_ROUNDS: written once more with everything read so far
            body, reads = self.backward(once, per_step)
        body, reads = self.shapes_kept(body, reads, once, per_step)
        extra = self.extra_outputs(once, per_step)
        returned = extra if self.returned is None else self.returned
        saved_leaves = [l for l in self.plan.leaves if l in reads.once]
        layer, plan = self.layer, self.plan
        n_out = len(plan.outputs)
        leaves = plan.leaves
        return {
            "name": f"{layer.name}Function",
            "doc": f"`{layer.name}` as an autograd.Function with a derived backward, its loops run as loops.",
            "forward_params": [f"{l}: {self._tensor_type(l)}" for l in leaves]
            + [self._kw_param(k) for k in self.kwargs],
            "forward_body": self.forward([x if x in extra else "None" for x in returned], per_step),
            "returns": (
                "Tensor"
                if n_out + len(returned) == 1
                else f"tuple[{', '.join(['Tensor'] * n_out + ['Tensor'] * len(returned))}]"
            ),
            "setup_body": self.setup(saved_leaves, [x if x in extra else "_" for x in returned], reads, extra),
            "backward_params": ["ctx", *plan.grads, *(self.grad_out(x) for x in returned)],
            "backward_body": body,
            "apply_params": leaves + self.kwargs,
            "n_outputs": n_out,
            "inputs": self.names.inputs,
            "output": self.names.output,
            "cls": self.names.cls,
            "extra": returned,
            "computed_extra": extra,
            "updates": [],  # a loop layer updates no buffer (`autodiff.loops` refuses one)
            "probes": (self.names.local("transforms_active"), self.names.local("compiling")),
        }

    def shapes_kept(
        self, body: list[str], reads: _Reads, once: set[str], per_step: dict[int, set[str]]
    ) -> tuple[list[str], _Reads]:
        """The backward written again, saving less: a value it reads only the shape of (`reshape(g, q.shape)`)
        is returned (for setup_context to take its shape) but not saved, its shape kept on ctx; a value only
        one side of an `if` reads (`gelu`'s input) is saved only when that side runs. Their gradients, as
        extra outputs', are unchanged. A value the written code still spells itself stays saved."""
        candidates = (reads.shapes - reads.once) & once
        self.leaf_shapes = (reads.shapes - reads.once) & set(self.plan.leaves)
        self.saved_on = {v: sides for v in once & reads.once if (sides := _only_sides(reads.sides.get(v, set())))}
        if not candidates and not self.saved_on and not self.leaf_shapes:
            return body, reads
        self.shape_only = candidates
        self.helper.shape_on_ctx = {v: set() for v in candidates | set(self.saved_on) | self.leaf_shapes}
        body, reads = self.backward(once, per_step)
        text = "\n".join(body)
        spelled = {v for v in candidates | self.leaf_shapes if re.search(rf"(?<![.\w]){re.escape(v)}\b", text)}
        if spelled:  # saved after all (a leaf: read as itself)
            self.shape_only = candidates - spelled
            self.leaf_shapes -= spelled
            self.helper.shape_on_ctx = {v: set() for v in self.shape_only | set(self.saved_on) | self.leaf_shapes}
            body, reads = self.backward(once, per_step)
            reads.once |= spelled & set(self.plan.leaves)
        return body, reads

    def _tensor_type(self, leaf: str) -> str:
        assert self.layer.forward is not None
        optional = {i.name for i in self.layer.forward.inputs if i.optional}
        return "Tensor | None" if leaf in optional and leaf in self.presence_tested else "Tensor"

    def _kw_param(self, k: str) -> str:
        if k == "training":
            return "training: bool"
        arg = self.layer.arg(k)
        return f"{k}: {python_type(arg.type)}" if arg else f"{k}: float"

    def extra_outputs(self, once: set[str], per_step: dict[int, set[str]]) -> list[str]:
        """The values returned besides the layer's outputs, in the order forward computes them."""
        out: list[str] = []
        for seg in self.plan.segments:
            if isinstance(seg, Straight):
                out += [s.var for s in seg.tape.steps if s.var in once]
            elif isinstance(seg, Choice):  # a side's values are None when the other side ran
                out += [s.var for s in segment_steps(seg) if s.var in once]
                out += [m for m in seg.merged if m in once]
            else:
                k = self.loops.index(seg)
                order = self.per_step_order(seg, per_step.get(k, set()))
                out += [self.stacked(v) for v in order] + [self.first(v) for v in self.widenable(seg, order)]
                out += [c for c in seg.carried if c in once]
                out += [j.name for j in seg.joins if j.name in once]
        return out

    def statistics(self) -> list[tuple[bool, list[str]]]:
        """The values that are a kernel's second results (layer norm's `mean`, `rstd`), by segment: whether
        they are kept per step (one buffer each), and their names as extra outputs."""
        groups = []
        for seg in self.plan.segments:
            if isinstance(seg, Choice):  # each side's: None when the other side ran
                groups += [(True, [s.var for s in tape.steps if _kept(s)]) for tape in seg.sides()]
                continue
            per_step = not isinstance(seg, Straight)
            kept = [s.var for s in seg.tape.steps if _kept(s)]
            groups.append((per_step, [self.stacked(v) for v in kept] if per_step else kept))
        return groups

    def per_step_order(self, loop: Loop, values: set[str]) -> list[str]:
        """The values kept per step, of `values` (those backward reads per step): a carried value that a step
        of the body becomes is not kept itself but read back from that step's buffer (`previous_step`)."""
        values = {v for v in values if self.previous_step(loop, v, values) is None}
        return [c for c in loop.carried if c in values] + [s.var for s in loop.tape.steps if s.var in values]

    @staticmethod
    def previous_step(loop: Loop, carried: str, kept: set[str]) -> str | None:
        """The body's value that the carried value `carried` takes at the next step (`h = tanh(...)`), when
        a step computes it and it is kept per step too (`kept`): the carried value at step t is that value
        at step t - 1, or its start at 0, so it is not kept itself."""
        update = loop.updates.get(carried)
        if update is None or update == carried or update not in kept:
            return None
        return update if any(s.var == update for s in loop.tape.steps) else None

    def first_broadcast(self, loop: Loop, carried: str) -> str | None:
        """The next value of a carried value kept per step whose start may have another shape than what the
        steps make of it (`h = new_zeros(x, [H])` is [B, H] after the first step): its buffer takes the
        shape both broadcast to, and backward reads the start itself at step 0. None where the plan knows
        the two shapes equal (or it is no carried value)."""
        update = loop.updates.get(carried)
        if update is None or update == carried:
            return None
        start, after = self.plan.shapes.get(carried), self.plan.shapes.get(update)
        return None if start is not None and start == after else update

    def stacked(self, var: str) -> str:
        return self.name(f"{var}_steps")

    def first(self, var: str) -> str:
        """Step 0's value of `var` where it came out smaller than at the later steps (`widenable`)."""
        return self.name(f"{var}_first")

    def widenable(self, loop: Loop, values) -> list[str]:
        """The values kept per step (of `values`) that may come out smaller at step 0 than later: in a loop
        whose carried value starts smaller than the steps make it (`h @ w` of an `h` that starts as [d] and
        is [B, d] after the first step, `first_broadcast`), any but the carried ones (whose buffer takes the
        broadcast shape) and a kernel's second results. Its buffer is made anew at step 1, step 0's value kept
        on its own (`first`)."""
        smaller = self.smaller_at_first_step(loop)
        return [v for v in values if v in smaller]

    def smaller_at_first_step(self, loop: Loop) -> set[str]:
        """The body's values whose shape may differ between a step where the carried values have their
        starts' shapes and one where they have the shapes the steps make (a kernel's second results aside):
        their shapes by the plan, with the carried values' starts' shapes, and again with the later ones."""
        starts = [c for c in loop.carried if self.first_broadcast(loop, c) is not None]
        if not starts:
            return set()
        later = dict(self.plan.shapes)
        later.update({c: self.plan.shapes.get(loop.updates[c]) for c in starts})
        for s in [*loop.picks.values(), *loop.tape.steps]:
            later[s.var] = step_shape(s, later)
        on_starts = set(starts)  # only a value computed from a carried start can change with it
        for s in loop.tape.steps:
            if s.reads & on_starts:
                on_starts.add(s.var)
        return {
            s.var
            for s in loop.tape.steps
            if s.var in on_starts
            and not _kept(s)
            and (later[s.var] is None or later[s.var] != self.plan.shapes.get(s.var))
        }

    def grad_out(self, var: str) -> str:
        return self.name(f"grad_{var}_out")

    # ---------------------------------------------------------------- forward

    def forward(self, extra: list[str], per_step: dict[int, set[str]]) -> list[str]:
        ex = self.helper.python(Spelling({}, training="training"))
        lines = self.prelude(ex, self.dim_source)
        for seg in self.plan.segments:
            if isinstance(seg, Straight):
                lines += self.steps(seg.tape, ex)
            elif isinstance(seg, Choice):
                lines += self.forward_choice(seg, set(extra), ex)
            else:
                lines += self.forward_loop(seg, per_step.get(self.loops.index(seg), set()), ex)
        outs = [ex(o) for o in self.plan.outputs] + extra
        return lines + [f"return {', '.join(outs)}"]

    def prelude(self, ex: PyExpr, dim_spelling) -> list[str]:
        """The dims and number locals (outside loops) that forward or backward read."""
        tape = Tape([], [], [], set(), numbers=list(self.plan.numbers))
        read = {
            n.id
            for seg in self.plan.segments
            for s in segment_steps(seg)
            for n in walk(s.expr)
            if isinstance(n, N.Name)
        }
        read |= {
            n.id
            for seg in self.plan.segments
            if isinstance(seg, Choice)
            for n in walk(seg.cond)
            if isinstance(n, N.Name)
        }
        read |= {n.id for loop in self.loops for b in loop.bounds for n in walk(b) if isinstance(n, N.Name)}
        read |= {n.id for loop in self.loops for _, e in loop.numbers for n in walk(e) if isinstance(n, N.Name)}
        read |= {n.id for loop in self.loops for j in loop.joins for n in walk(j.dim) if isinstance(n, N.Name)}
        lines, _ = self.helper.prelude(tape, read, ex, dim_spelling)
        return lines

    def steps(self, tape: Tape, ex: PyExpr) -> list[str]:
        paired = with_second_results(tape)  # one call returns both: `h, mean, rstd = torch.native_layer_norm(...)`
        lines = []
        for s in tape.steps:
            seconds = [v for v, first in paired.items() if first == paired.get(s.var)]
            if s.var in paired.values() or s.var in seconds[1:]:
                continue  # bound with the first of its call's second results
            if seconds:
                first = next(t for t in tape.steps if t.var == paired[s.var])
                line = f"{', '.join([first.var, *seconds])} = {ex(returning_second_results(first, {}))}"
            else:
                line = f"{s.var} = {ex(s.expr)}"
            lines += with_spec_line([line], 0, self.e.spec_path, s.expr.span.line)
        return lines

    def forward_choice(self, seg: Choice, extra: set[str], ex: PyExpr) -> list[str]:
        """The side the condition picks: its steps, the locals it binds under their merged names, and the
        other side's extra outputs as None."""
        sides = []
        for k, tape in enumerate(seg.sides()):
            lines = self.steps(tape, ex)
            lines += [f"{name} = {self.not_an_input(values[k])}" for name, values in seg.merged.items()]
            other = [s.var for s in seg.sides()[1 - k].steps if s.var in extra]
            lines += [" = ".join(other) + " = None"] if other else []
            sides.append(lines)
        head = with_spec_line([f"if {ex(seg.cond)}:"], 0, self.e.spec_path, seg.span.line)
        return _if_else(head, sides[0], sides[1])

    def shape_checks(self, loop: Loop) -> list[str]:
        """A step that changes the shape of a carried value whose sizes the body reads (as its first
        value's) raises: the backward computes with those sizes."""
        lines = []
        for c, local in loop.shapes_kept.items():
            new = loop.updates[c]
            if new != c:
                message = (
                    f"{self.layer.name}: under @function, each step of the loop keeps the shape of '{local}' (its"
                    f" sizes are read as its first value's): {{tuple({c}.shape)}} became {{tuple({new}.shape)}}"
                )
                lines += [f"if {new}.shape != {c}.shape:", f'    raise ValueError(f"{message}")']
        return lines

    def trip(self, loop: Loop, ex: PyExpr) -> str:
        return f"range({', '.join(ex(b) for b in loop.bounds)})"

    def forward_loop(self, loop: Loop, per_step: set[str], ex: PyExpr) -> list[str]:
        lines = [f"{c} = {self.not_an_input(start)}" for c, start in loop.carried.items() if c != start]
        kept = self.per_step_order(loop, per_step)
        buffered = self.buffered_lists(loop, kept)
        appended = {name: item for name, item in loop.appended.items() if name not in buffered}
        lines += [f"{name} = [{', '.join(loop.heads.get(name, []))}]" for name in appended]
        trip = self.trip(loop, ex)
        index = loop.var if _BackwardWriter._plain_range(loop) else self.name("step", key=(id(loop),))
        if kept:  # one buffer per value, for every step: made at the first (None after a loop of no steps)
            count = self.name("n_steps", key=(id(loop),))
            # read only once a step has run: a lone bound is then the count itself (`range(n)`: n)
            steps = ex(loop.bounds[0]) if _BackwardWriter._plain_range(loop) else f"len({trip})"
            firsts = [self.first(v) for v in self.widenable(loop, kept)]
            lines += [f"{count} = {steps}", " = ".join([*map(self.stacked, kept), *firsts]) + " = None"]
        body = [f"{n} = {ex(e)}" for n, e in loop.numbers]
        body += self.steps(Tape(list(loop.picks.values()), [], [], set()), ex)
        body += self.steps(loop.tape, ex)
        body += self.shape_checks(loop)
        if kept:  # a carried value still holds the step's first value here (it moves last)
            body.append(f"if {index} == 0:")
            body += [f"    {self.stacked(v)} = {v}.new_empty(({count}, *{self.step_shape(loop, v)}))" for v in kept]
            body += self.widened(loop, kept, index, count)
            body += [f"{self.stacked(v)}[{index}] = {v}" for v in kept]
        body += [
            f"{name}.append({ex(item)})"
            for name, first in appended.items()
            for item in [first, *loop.more.get(name, [])]
        ]
        moved = [(c, v) for c, v in loop.updates.items() if c != v]
        if moved:
            body.append(f"{', '.join(c for c, _ in moved)} = {', '.join(self.not_an_input(v) for _, v in moved)}")
        each = loop.var if index == loop.var else f"{index}, {loop.var}"
        trip = trip if index == loop.var else f"enumerate({trip})"
        head = with_spec_line([f"for {each} in {trip}:"], 0, self.e.spec_path, loop.span.line)
        lines += head + ["    " + line for line in body or ["pass"]]
        for j in loop.joins:
            if j.items in buffered:  # a view of the buffer (an output of its own: not the buffer itself)
                buffer, dim = self.stacked(buffered[j.items]), ex(j.dim)
                view = f"{buffer}.view_as({buffer})" if dim == "0" else f"torch.movedim({buffer}, 0, {dim})"
                lines += self.no_steps_check(loop, buffer, j.items)
                lines.append(f"{j.name} = {view}")
            else:
                lines.append(f"{j.name} = torch.{j.func}({j.items}, dim={ex(j.dim)})")
        return lines

    def widened(self, loop: Loop, kept: list[str], index: str, count: str) -> list[str]:
        """At step 1, the buffer of each value that came out smaller at step 0 made anew at its later shape,
        step 0's value kept on its own (backward reads it there)."""
        lines = []
        for v in self.widenable(loop, kept):
            buffer = self.stacked(v)
            lines += [
                f"    if {v}.shape != {buffer}.shape[1:]:",
                f"        {self.first(v)} = {buffer}[0].clone()",
                f"        {buffer} = {v}.new_empty(({count}, *{v}.shape))",
            ]
        return [f"elif {index} == 1:  # a start smaller than the steps make it", *lines] if lines else []

    def no_steps_check(self, loop: Loop, buffer: str, items: str) -> list[str]:
        """A loop of no steps made no buffer: `stack` of its list raises, as torch's does on an empty list, at
        the loop's spec line."""
        message = f"{self.layer.name}: stack() of '{items}' got no items: the loop appending to it ran no steps"
        check = [f"if {buffer} is None:", f'    raise RuntimeError("{message}")']
        return with_spec_line(check, 1, self.e.spec_path, loop.span.line)

    def step_shape(self, loop: Loop, v: str) -> str:
        """The shape of one step's slot of `v`'s buffer (`first_broadcast`)."""
        update = self.first_broadcast(loop, v) if v in loop.carried else None
        return f"{v}.shape" if update is None else f"torch.broadcast_shapes({v}.shape, {update}.shape)"

    @staticmethod
    def buffered_lists(loop: Loop, kept: list[str]) -> dict[str, str]:
        """The lists whose every join is a `stack` of a value kept per step, by that value: the buffer holds
        them already (the join is a view of it, not a second copy, and the list is not made)."""
        out: dict[str, str] = {}
        for name, item in loop.appended.items():
            joins = [j for j in loop.joins if j.items == name]
            # one item per step, none from before
            whole = all(j.func == "stack" for j in joins) and not loop.heads.get(name) and name not in loop.more
            if isinstance(item, N.Name) and item.id in kept and joins and whole:
                out[name] = item.id
        return out

    def not_an_input(self, value: str) -> str:
        """A carried value as forward binds it: an input as a view of it (torch refuses an input returned
        as-is, as the carried values are, and saved)."""
        return f"{value}.view_as({value})" if value in self.plan.leaves else value

    # ---------------------------------------------------------------- setup_context

    def setup(self, saved_leaves: list[str], extra: list[str], reads: _Reads, own_extra: list[str]) -> list[str]:
        """`extra`: the extra outputs in the order every side returns them (`_` for another side's);
        `own_extra`: this side's, saved in the order its backward unpacks them."""
        unpack = self.plan.leaves + self.kwargs
        dims = sorted(self.backward_dims)
        used = set(saved_leaves) | set(self.kwargs) | {self.helper.dim_source[d].split(".")[0] for d in dims}
        used |= set(self.presence_tested) | set(self.flags_tested) | set(self.dtype_tested) | self.leaf_shapes
        lines = []
        if used:
            names = [u if u in used else "_" for u in unpack]
            lines.append(f"{', '.join(names)}{',' if len(names) == 1 else ''} = {self.names.inputs}")
        saved_outputs = [o.id if isinstance(o, N.Name) and o.id in reads.once else "_" for o in self.plan.outputs]
        outs = saved_outputs + extra
        if any(v != "_" for v in outs):
            lines.append(f"{', '.join(outs)} = {self.names.output}")  # forward returns one alone, not a tuple
        if extra and len(self.plan.outputs) == 1:  # the extra outputs' gradients: None unless given
            lines.append("ctx.set_materialize_grads(False)")
        lines += [f"{self.names.ctx_value(k)} = {k}" for k in self.kwargs]
        lines += [f"{self.names.ctx_value(d)} = {self.dim_source(d)}" for d in dims]
        lines += [f"{self.names.ctx_shape(m)} = None if {m} is None else {m}.shape" for m in self.presence_tested]
        lines += [
            (
                f"{self.names.ctx_shape(l)} = {l}.shape"
                if l not in self.helper.maybe_absent
                else f"{self.names.ctx_shape(l)} = None if {l} is None else {l}.shape"
            )
            for l in self.plan.leaves
            if l in self.leaf_shapes and l not in self.presence_tested
        ]
        lines += [f"{self.names.ctx_value(f)} = {f}" for f in self.flags_tested]
        for leaf in self.dtype_tested:
            test = f"{leaf}.is_floating_point()"
            lines.append(
                f"{self.dtype_field(leaf)} = {leaf} is not None and {test}"
                if leaf in self.presence_tested
                else f"{self.dtype_field(leaf)} = {test}"
            )
        lines += [
            (
                f"{self.names.ctx_shape(v)} = {v}.shape"
                if v in self.always_bound()
                else f"{self.names.ctx_shape(v)} = None if {v} is None else {v}.shape"
            )
            for v in own_extra
            if v in self.shape_only or v in self.saved_on
        ]
        own_extra = [v for v in own_extra if v not in self.shape_only]
        chosen = [f"{v} if {self.saving_test(v)} else None" if v in self.saved_on else v for v in own_extra]
        tensors = saved_leaves + [o for o in saved_outputs if o != "_"] + chosen
        # no gradient of their own: ATen differentiates through them (one call: torch keeps the last call's)
        groups = [
            (per_step, names)
            for per_step, group in self.statistics()
            if (names := [x for x in group if x in own_extra])
        ]
        if len(groups) == 1:
            per_step, names = groups[0]
            marked = f"ctx.mark_non_differentiable({', '.join(names)})"
            lines += (
                [f"if {names[0]} is not None:  # None after a loop of no steps", f"    {marked}"]
                if per_step
                else [marked]
            )
        elif groups:  # those of a loop of no steps, or of a side that did not run, are None
            every = ", ".join(name for _, names in groups for name in names)
            lines.append(f"ctx.mark_non_differentiable(*[t for t in ({every}) if t is not None])")
        if tensors:
            lines.append(f"ctx.save_for_backward({', '.join(tensors)})")
        return lines

    def plan_steps(self) -> list[Step]:
        return [s for seg in self.plan.segments for s in segment_steps(seg)]

    def saving_test(self, value: str) -> str:
        """The test under which setup_context saves `value`: one of the sides reading it ran."""
        tests = [self.side_tests[side] for side in self.saved_on[value]]
        if len(tests) == 1:
            return tests[0]
        return " or ".join(t if re.fullmatch(r"[\w.]+|not [\w.]+", t) else f"({t})" for t in tests)

    def always_bound(self) -> set[str]:
        """The values forward always computes (of straight segments): never None."""
        return {s.var for seg in self.plan.segments if isinstance(seg, Straight) for s in seg.tape.steps}

    # ---------------------------------------------------------------- backward

    def split(self, once: set[str], per_step: dict[int, set[str]]) -> bool:
        """Whether the extra outputs' gradients get a section of their own, run only when one is given
        (double backward): with one output, whose gradient is then the only one of a first backward."""
        return len(self.plan.outputs) == 1 and bool(self.extra_outputs(once, per_step))

    def backward(self, once: set[str], per_step: dict[int, set[str]]) -> tuple[list[str], _Reads]:
        lines, reads = self.backward_lines(once, per_step)
        text = "\n".join(lines)
        self.backward_dims = {d for d in self.helper.dims if self.names.ctx_value(d) in text}
        return lines, reads

    def backward_lines(self, once: set[str], per_step: dict[int, set[str]]) -> tuple[list[str], _Reads]:
        if not self.split(once, per_step):
            writer = _BackwardWriter(self, once, per_step, "all")
            lines = writer.write()
            return writer.head([writer]) + writer.declared() + lines + self.returns(), writer.reads
        main = _BackwardWriter(self, once, per_step, "main")
        main_lines = main.write()
        rare = _BackwardWriter(self, once, per_step, "rare")
        rare_lines = rare.write()
        reads = _Reads(main.reads.once | rare.reads.once, dict(main.reads.per_step))
        reads.shapes = main.reads.shapes | rare.reads.shapes
        for name in main.reads.sides.keys() | rare.reads.sides.keys():
            reads.sides[name] = main.reads.sides.get(name, set()) | rare.reads.sides.get(name, set())
        for k, v in rare.reads.per_step.items():
            reads.per_step[k] = reads.per_step.get(k, set()) | v
        extra = self.extra_outputs(once, per_step)
        given = [self.grad_out(x) for x in extra]
        # unused extra outputs' gradients are None (not materialised): zeros where another is given
        stacks = {self.stacked(v) for k, loop in enumerate(self.loops) for v in per_step.get(k, set())}
        stacks |= {
            self.first(v) for k, loop in enumerate(self.loops) for v in self.widenable(loop, per_step.get(k, ()))
        }
        stacks |= {s.var for seg in self.plan.segments if isinstance(seg, Choice) for s in segment_steps(seg)}
        stacks |= _maybe_unbound(self.plan)
        stacks |= {s.var for s in self.plan_steps() if s.op is not None and s.op.name == "dropout_mask"}
        any_given = self.name("given")  # the zeros of a value kept as its shape: of a given gradient's dtype
        by_shape = self.shape_only | set(self.saved_on)  # not saved, or saved only where a side runs
        zeros = [f"{any_given} = [g for g in ({', '.join(given)},) if g is not None][0]"] if by_shape else []
        zeros += [  # a stack is None after a loop of no steps (whose backward runs no step)
            (
                f"{g} = {any_given}.new_zeros({self.names.ctx_shape(x)}) if {g} is None "
                + (f"and {self.names.ctx_shape(x)} is not None " if x in stacks else "")
                if x in by_shape
                else f"{g} = torch.zeros_like({x}) if {g} is None " + (f"and {x} is not None " if x in stacks else "")
            )
            + f"else {g}"
            for g, x in zip(given, extra)
        ]
        reset = sorted(rare.maybe_none - set(main.leaf_grads()))
        zeros += [" = ".join(reset) + " = None"] if reset else []
        lines = [f"if {self.plan.grads[0]} is not None:", *("    " + line for line in main_lines)]
        lines.append("# double backward: what the extra outputs' gradients add")
        lines.append("if " + " or ".join(f"{g} is not None" for g in given) + ":")
        lines += ["    " + line for line in zeros + rare_lines]
        declared = main.leaf_grads() + sorted(main.maybe_none - set(main.leaf_grads()))
        head = main.head([main, rare]) + [" = ".join(declared) + " = None"]
        return head + lines + self.returns(), reads

    def returns(self) -> list[str]:
        grads = [f"grad_{l}" if l in self.plan.differentiable else "None" for l in self.plan.leaves]
        return [f"return {', '.join(grads + ['None'] * len(self.kwargs))}"]


class _BackwardWriter:
    """One writing of the backward (or of one section of it), given the values returned as extra outputs."""

    def __init__(self, fn: LoopFunction, once: set[str], per_step: dict[int, set[str]], mode: str):
        self.fn = fn
        # "all": every incoming gradient; "main": the outputs' only; "rare": the extra outputs' only
        self.mode = mode
        self.plan = fn.plan
        self.once = once
        self.per_step = per_step
        self.reads = _Reads()
        self.state: dict[str, str] = {}  # gradient -> "set" (holds a tensor) or "maybe" (None when no step ran)
        self.maybe_none: set[str] = set()  # gradients to start as None
        ctx = fn.names.ctx_value
        dims = list(self.fn.helper.dims)
        spelling = Spelling({k: ctx(k) for k in [*fn.kwargs, *dims]}, training=ctx("training"))
        self.spelling = spelling
        self.ex = fn.helper.python(spelling)
        self.values = set(self.plan.shapes) | set(self.plan.leaves)
        self.current = self.reads.once  # where `read` records what the statements read
        # Views of inputs and parameters (`transpose(w, 0, 1)`): recomputed in backward, not returned
        leaves = set(self.plan.leaves)
        self.views = {
            s.var: s
            for seg in self.plan.segments
            if isinstance(seg, Straight)
            for s in seg.tape.steps
            if s.op is not None and s.op.shape in VIEWS and _operands(s) <= leaves
        }
        self.recomputed: set[str] = set()
        self.kept_whole = fn.outputs | set(self.views)  # read as themselves even for a shape
        self.side: tuple[int, int] | None = None  # the side of a Choice being written
        # Views of inputs, parameters and picked slices in the loop being written (`transpose(w_l[k], 0, 1)`):
        # recomputed at each step of backward, not kept per step
        self.step_views: dict[str, Step] = {}
        self.step_recomputed: set[str] = set()
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
            else:
                lines += self.loop(seg)
        return lines

    def leaf_grads(self) -> list[str]:
        return [f"grad_{l}" for l in self.plan.leaves if l in self.plan.differentiable]

    def declared(self) -> list[str]:
        grads = self.leaf_grads()
        declared = [g for g in grads if self.state.get(g) != "set"] + sorted(self.maybe_none - set(grads))
        return [" = ".join(declared) + " = None"] if declared else []

    def head(self, writers: list[_BackwardWriter]) -> list[str]:
        """The saved tensors unpacked, the dims and numbers, the views recomputed (for every section)."""
        saved = self.saved_names([w.reads for w in writers])
        head: list[str] = []
        if saved:
            head.append(f"{', '.join(saved)}{',' if len(saved) == 1 else ''} = ctx.saved_tensors")
        head += self.fn.prelude(self.ex, lambda d: self.fn.names.ctx_value(d))
        recomputed = {v for w in writers for v in w.recomputed}
        for var, step in self.views.items():
            if var in recomputed:
                head += with_spec_line([f"{var} = {self.ex(step.expr)}"], 0, self.fn.e.spec_path, step.expr.span.line)
        return head

    def saved_names(self, reads: list[_Reads]) -> list[str]:
        once = {v for r in reads for v in r.once}
        leaves = [l for l in self.plan.leaves if l in once]
        outputs = [o.id for o in self.plan.outputs if isinstance(o, N.Name) and o.id in once]
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
        if any(isinstance(seg, Choice) for seg in self.plan.segments) or any(
            self.fn.first_broadcast(loop, c) for loop in self.fn.loops for c in loop.carried
        ):
            whole = set(self.plan.shapes)
        stmts = step_statements(bwd, self.plan.shapes, self.fn.layer, needs, at_hand, whole, sized_by)
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
                lines += _under(last, guarded)
                guarded, last = [], guard
            guarded += code
        lines += _under(last, guarded)
        return lines, {leaf: renamed.get(g, g) for leaf, g in bwd.leaf_grads.items()}

    def read(self, expr: N.Expr) -> None:
        shaped = {
            id(a)
            for c in walk(expr)
            if isinstance(c, N.Call)
            for i in shape_args(c)
            if isinstance(a := c.args[i], N.Name)
        }
        for n in walk(expr):
            if (
                isinstance(n, N.Name)
                and id(n) in shaped
                and self.current is self.reads.once
                and n.id in self.values
                and n.id not in self.kept_whole
            ):
                self.reads.shapes.add(n.id)  # only its shape: kept on ctx where nothing reads it otherwise
            elif isinstance(n, N.Name) and n.id in self.step_views:
                self.step_recomputed.add(n.id)
                self.read(self.step_views[n.id].expr)
            elif isinstance(n, N.Name) and n.id in self.views:  # recomputed from the leaves it views
                self.recomputed.add(n.id)
                self.read(self.views[n.id].expr)
            elif isinstance(n, N.Name) and n.id in self.values:
                self.current.add(n.id)
                if self.current is self.reads.once:
                    self.reads.sides.setdefault(n.id, set()).add(self.side)

    # ---------------------------------------------------------------- segments

    def choice(self, seg: Choice) -> list[str]:
        """The backward of the side forward ran: the merged locals' gradients given to the values that side
        left in them; a gradient one side gives and the other not is None after the `if` when that ran."""
        at = self.plan.segments.index(seg)
        head: list[str] = []
        if self.mode != "main":  # a merged local returned as an extra output: its gradient from there
            for name in seg.merged:
                if name in self.once and name not in self.fn.outputs:
                    head += self.accumulate(name, self.fn.grad_out(name), conditional=False)
        start = dict(self.state)
        sides, states = [], []
        for k, tape in enumerate(seg.sides()):
            self.state = dict(start)
            own = {s.var for s in tape.steps}
            lines: list[str] = []
            for name, values in seg.merged.items():
                given = start.get(self.acc(name))
                if given is None or values[k] == UNBOUND:  # None when this side ran: no gradient
                    continue
                if values[k] in own and self.acc(values[k]) not in self.state:  # two merged names may hold it
                    lines.append(f"{self.acc(values[k])} = {self.acc(name)}")
                    self.state[self.acc(values[k])] = given
                else:
                    lines += self.accumulate(values[k], self.acc(name), conditional=given == "maybe")
            self.side = (at, k)
            lines += self.straight(Straight(tape), where=f"{at} {('then', 'else')[k]}")
            self.side = None
            sides.append(lines)
            states.append({g: st for g, st in self.state.items() if g.removeprefix("grad_") not in own})
        self.state = {}
        for g in dict.fromkeys([*states[0], *states[1]]):
            then, orelse = states[0].get(g), states[1].get(g)
            self.state[g] = then if then is not None and then == orelse else "maybe"
            if then != orelse and None in (then, orelse):  # defined on one side only: None on the other
                self.maybe_none.add(g)
        kept = {m: self.fn.names.ctx_shape(m) for m in self.fn.presence_tested}  # None when not given
        kept |= {f: self.fn.names.ctx_value(f) for f in self.fn.flags_tested}
        kept |= {_dtype_name(leaf): self.fn.dtype_field(leaf) for leaf in self.fn.dtype_tested}
        ex = self.fn.helper.python(dataclasses.replace(self.spelling, names=self.spelling.names | kept))
        test = ex(_dtypes_named(seg.cond))
        negated = f"not {test}" if re.fullmatch(r"[\w.]+", test) else f"not ({test})"
        self.fn.side_tests |= {(at, 0): test, (at, 1): negated}
        return head + _if_else([f"if {test}:"], sides[0], sides[1])

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
        extra = {v: self.fn.grad_out(v) for v in own if v in self.once and v not in self.fn.outputs}
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
                self.read(B.name(c))
                g = self.acc(c)
                zeros = f"torch.zeros_like({c})"
                lines.append(f"{g} = {zeros}" if st is None else f"{g} = {zeros} if {g} is None else {g}")
                self.state[g] = "set"
        # Each step's share of the gradient of what the loop's lists are joined into
        items: dict[tuple[str, int], list[str]] = {}
        step_index = loop.var if self._plain_range(loop) else self.fn.name("step")
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
            for i in range(per):
                at = step_index if per == 1 else f"{per} * {step_index} + {i}" if i else f"{per} * {step_index}"
                at = f"{at} + {len(j.heads)}" if j.heads else at
                items.setdefault((j.items, i), []).append(f"{parts}[{at}]")
            for i, head in enumerate(j.heads):
                if head in self.plan.requires:
                    lines += self.accumulate(head, f"{parts}[{i}]", conditional=False)
        outputs: list[tuple[N.Expr, str]] = [(B.name(loop.updates[c]), self.acc(c)) for c in requiring]
        body: list[str] = []
        for (name, i), parts_at in items.items():
            item_grad = self.fn.name(f"grad_{name}_item" if i == 0 else f"grad_{name}_item{i}")
            body.append(f"{item_grad} = {' + '.join(parts_at)}")
            outputs.append((loop.appended[name] if i == 0 else loop.more[name][i - 1], item_grad))
        body = [f"{n} = {self.ex(e)}" for n, e in loop.numbers] + body
        extra_grads: dict[str, str] = {}
        per_step_names = {c: self.fn.name(f"{c}_t") for c in loop.carried}
        for v in self.fn.per_step_order(loop, kept):
            slot = f"{self.fn.stacked(v)}[{step_index}]"
            given = f"{self.fn.grad_out(self.fn.stacked(v))}[{step_index}]"
            if v in loop.carried and self.fn.first_broadcast(loop, v) is not None:  # step 0's: the start itself
                self.read(B.name(loop.carried[v]))
                start = self.ex(B.name(loop.carried[v]))
                slot = f"{slot} if {step_index} > 0 else {start}"
                given = f"{given} if {step_index} > 0 else {given}.sum_to_size({start}.shape)"
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
        self.current = set()
        sources = set(self.plan.leaves) | set(loop.picks)
        self.step_views = {}
        for s in loop.tape.steps:  # in order: a view of a view of a leaf is one too
            if s.op is not None and s.op.shape in VIEWS and _operands(s) <= sources | set(self.step_views):
                self.step_views[s.var] = s
        self.step_recomputed = set()
        after_loop = self.ex  # a carried value read per step by a name of its own (its own holds the last)
        self.ex = self.fn.helper.python(dataclasses.replace(self.spelling, names=self.spelling.names | per_step_names))
        derived, grads = self.statements(bwd, tape, "t")
        views = [s for v, s in self.step_views.items() if v in self.step_recomputed]
        self.step_views = {}
        picked = [p for p in loop.picks if p in self.current]  # picked again from what is saved once
        for p in picked:
            self.read(loop.picks[p].expr)
        body += [f"{p} = {self.ex(loop.picks[p].expr)}" for p in picked]
        body += [line for v in views for line in self.fn.steps(Tape([v], [], [], set()), self.ex)] + derived
        self.ex = after_loop
        body_values = set(loop.carried) | {s.var for s in loop.tape.steps}
        self.reads.per_step.setdefault(k, set()).update(self.current & body_values)
        self.reads.once |= self.current - body_values - set(loop.picks)
        self.current = self.reads.once
        rows: dict[str, str] = {}
        for leaf, g in grads.items():
            if leaf in loop.picks:  # one slice of the picked value's gradient per step
                rows[leaf] = self.fn.name(f"grad_{leaf}_steps")
                body += _under(self.guard([leaf]), [f"{rows[leaf]}.append({g})"])
            elif leaf not in loop.carried:
                body += _under(self.guard([leaf]), self.accumulate(leaf, g, conditional=True))
        # The carried values' gradients, for the step before (at once: one may be another's)
        before = [(self.acc(c), grads.get(c, f"torch.zeros_like({self.acc(c)})"), self.guard([c])) for c in requiring]
        new = [(t, g if guard is None else f"{g} if {guard} else {t}") for t, g, guard in before if t != g]
        if new:
            body.append(f"{', '.join(t for t, _ in new)} = {', '.join(g for _, g in new)}")
        if self._plain_range(loop):
            head = f"for {loop.var} in reversed({self.fn.trip(loop, self.ex)}):"
        else:
            head = f"for {step_index}, {loop.var} in reversed(list(enumerate({self.fn.trip(loop, self.ex)}))):"
        lines += [f"{r} = []" for r in rows.values()]
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
                lines += self.accumulate(loop.carried[c], self.acc(c), conditional=False)
        return lines

    @staticmethod
    def _plain_range(loop: Loop) -> bool:
        return len(loop.bounds) == 1


MAX_SAVING_SIDES = 3  # the sides of `if`s a value is saved for, tested in setup_context (more: always saved)


def _only_sides(where: set[tuple[int, int] | None]) -> list[tuple[int, int]]:
    """The sides of Choices (segment, 0 or 1) where a value is read, when it is read nowhere else and on
    at most `MAX_SAVING_SIDES` of them; [] otherwise."""
    if None in where or len(where) > MAX_SAVING_SIDES:
        return []
    return sorted(side for side in where if side is not None)


def _if_else(head: list[str], then: list[str], orelse: list[str]) -> list[str]:
    """`head` (an `if ...:` line) over `then`, and `else:` over `orelse` when it has lines."""
    lines = head + ["    " + line for line in then or ["pass"]]
    return lines + (["else:", *("    " + line for line in orelse)] if orelse else [])


def _under(guard: str | None, lines: list[str]) -> list[str]:
    """`lines`, under `if guard:` when there is one."""
    if guard is None or not lines:
        return lines
    return [f"if {guard}:", *("    " + line for line in lines)]


def _gradient_sources(plan: LoopPlan) -> dict[str, set[str]]:
    """For each value of the forward, the differentiable leaves it is computed from (through the loops'
    carried values, over as many rounds as they take to settle)."""
    sources: dict[str, set[str]] = {l: {l} for l in plan.leaves if l in plan.differentiable}

    def of(step: Step) -> set[str]:
        return {l for name in step.reads for l in sources.get(name, ())}

    for seg in plan.segments:
        if isinstance(seg, Straight):
            for s in seg.tape.steps:
                sources[s.var] = of(s)
            continue
        if isinstance(seg, Choice):
            for s in segment_steps(seg):
                sources[s.var] = of(s)
            for name, values in seg.merged.items():
                sources[name] = {l for v in values for l in sources.get(v, ())}
            continue
        for c, start in seg.carried.items():
            sources[c] = set(sources.get(start, ()))
        for _ in range(len(seg.carried) + 2):
            for s in [*seg.picks.values(), *seg.tape.steps]:
                sources[s.var] = of(s)
            for c, v in seg.updates.items():
                sources[c] |= sources.get(v, set())
        for j in seg.joins:
            listed = [seg.appended[j.items], *seg.more.get(j.items, [])] if j.items in seg.appended else []
            names = [n.id for item in listed for n in walk(item) if isinstance(n, N.Name)]
            names += j.heads
            sources[j.name] = {l for name in names for l in sources.get(name, ())}
    return sources


def _dtype_name(leaf: str) -> str:
    return f"{leaf}.is_floating_point"  # no spec name has a dot: the backward spells it as the ctx field


def _dtypes_named(cond: N.Expr) -> N.Expr:
    """`cond` with each `is_floating_point(m)` as a name (`_dtype_name`), which backward spells as ctx's."""

    def go(e: N.Expr) -> N.Expr:
        if isinstance(e, N.Call) and e.func == "is_floating_point" and dtype_tested(e):
            name = N.Name(e.span, _dtype_name(dtype_tested(e)[0]))
            name.ref, name.kind = N.Ref.LOCAL, N.Kind.BOOL
            return name
        return map_children(e, go)

    return go(cond)


def _maybe_unbound(plan: LoopPlan) -> set[str]:
    """The merged locals of `Choice`s that are None when a side that does not bind them ran (`UNBOUND`),
    or that take such a value."""
    out = {UNBOUND}
    for seg in plan.segments:
        if isinstance(seg, Choice):
            out |= {m for m, values in seg.merged.items() if out & set(values)}
    return out - {UNBOUND}


def _operands(step) -> set[str]:
    """The names of the tensors a step reads."""
    return {n.id for a in step.args.values() for n in walk(a) if isinstance(n, N.Name) and n.kind == N.Kind.TENSOR}


def _kept(step: Step) -> bool:
    """A kernel's second result (`mean`, `rstd` of `torch.native_layer_norm`), kept rather than recomputed."""
    return step.op is not None and step.op.cost == "kept"
