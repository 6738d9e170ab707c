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
the side its condition picks, in forward and again in backward. The backward's lines are written by
`loop_backward.BackwardWriter`.
"""

from __future__ import annotations

import dataclasses
import functools
import re

from layerdsl.autodiff.loop_lists import ListedItems, item_of_list, stacked_alone
from layerdsl.autodiff.loops import UNBOUND, Choice, Join, Loop, LoopPlan, Straight, presence, segment_steps
from layerdsl.autodiff.nest import Nest
from layerdsl.autodiff.plan import BackwardPlan, BranchPlan, dtype_tested
from layerdsl.autodiff.shapes import step_shape
from layerdsl.autodiff.tape import Step, Tape
from layerdsl.codegen import flat_steps, function_nest
from layerdsl.codegen.carried_shape_checks import unknown_shape_checks
from layerdsl.codegen.function import VIEWS, FunctionEmitter, returning_second_results, with_second_results
from layerdsl.codegen.function_branches import chosen_lines
from layerdsl.codegen.function_buffers import (
    loop_updates,
    reads_a_new_value,
    returned_values,
    updated_buffers,
)
from layerdsl.codegen.function_checks import (
    item_check_lines,
    read_vars,
    segment_check_lines,
    segment_checks,
    segment_count_lines,
)
from layerdsl.codegen.function_members import held_forward_params, held_params, saved_with_held
from layerdsl.codegen.loop_backward import (
    MAX_SAVING_SIDES,
    BackwardWriter,
    Reads,
    if_else,
    plain_range,
)
from layerdsl.codegen.loop_starts import (
    again_when_a_step_runs,
    computed_starts,
    unread_buffer_chains,
    when_a_step_runs,
)
from layerdsl.codegen.pyexpr import PyExpr, Spelling
from layerdsl.codegen.random_replay import STATE_TYPE, check_replayed, replayed
from layerdsl.codegen.spec_lines import with_spec_line, without_spec_lines
from layerdsl.codegen.spelling_reads import Read, Recording
from layerdsl.ir import build as B
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import and_terms
from layerdsl.ir.visit import clone, walk
from layerdsl.language.tables import python_type
from layerdsl.optimize.masks import Mask, candidates, replaced
from layerdsl.optimize.statements import Stmt

MAX_ROUNDS = 6  # derivations until what backward reads settles (a growing set: it ends sooner)
PRELUDE = "# the prelude"  # where the backward's prelude goes, once the lines after it are written


def emit_loop_function(emitter, plan: LoopPlan) -> dict:
    """The pieces of `<Name>Function` for the template, from a forward with loops; a comparison a loop's
    step reads in backward (`relu > 0`, a `where`'s condition read for its indicator) kept per step as a bool
    mask where that keeps less per step than the float values it is computed from (`step_masks`)."""
    fn = LoopFunction(emitter, plan)
    pieces = fn.emit()
    found = fn.mask_candidates()
    if not found:
        return pieces
    best, weight, chosen = pieces, fn.step_weight(), found
    # all masks at once, then each one dropped that keeps no less (`relu(x) * x` keeps x per step anyway)
    for drop in [None, *(m for ms in found.values() for m in ms)]:
        masks = {k: [m for m in ms if m is not drop] for k, ms in chosen.items()}
        if any(masks.values()):
            other = LoopFunction(emitter, with_mask_steps(plan, fn, masks))
            other.step_masks = masks
            tried, tried_weight = other.emit(), other.step_weight()
        else:  # the last mask dropped: the Function written first
            tried, tried_weight = pieces, fn.step_weight()
        if tried_weight < weight or drop is not None and tried_weight == weight:
            best, weight, chosen = tried, tried_weight, masks
        elif drop is None:
            return pieces
    return best


def with_mask_steps(plan: LoopPlan, fn: LoopFunction, masks: dict[int, list[Mask]]) -> LoopPlan:
    """`plan` with each mask that no step of its loop computes yet computed at the end of the loop's step
    (where its carried values still hold the step's values), as a comparison step of its own."""
    shapes = dict(plan.shapes)
    segments: list = []
    for seg in plan.segments:
        if isinstance(seg, Loop):
            new = [m for m in masks.get(fn.loops.index(seg), []) if not seg.tape.step(m.name)]
            steps = [Step(m.name, None, {}, _on_line_of(clone(m.value), seg.tape)) for m in new]
            shapes.update({m.name: _mask_shape(m, plan.shapes) for m in new})
            seg = dataclasses.replace(seg, tape=dataclasses.replace(seg.tape, steps=[*seg.tape.steps, *steps]))
        segments.append(seg)
    return dataclasses.replace(plan, segments=segments, shapes=shapes)


def _on_line_of(value: N.Expr, tape: Tape) -> N.Expr:
    """A mask's comparison, on the spec line of the step it compares (its generated line names that line)."""
    compared = [step for n in walk(value) if isinstance(n, N.Name) and (step := tape.step(n.id))]
    return dataclasses.replace(value, span=compared[0].expr.span) if compared else value


def _mask_shape(mask: Mask, shapes: dict) -> tuple | None:
    """The shape of a mask whose tensors have one shape (the candidates are those)."""
    return next(shapes.get(n.id) for n in walk(mask.value) if isinstance(n, N.Name) and n.kind == "tensor")


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
    read = {n.id for c in _conditions(plan) for n in walk(c) if isinstance(n, N.Name)}
    buffers = updated_buffers(plan, [b.name for b in emitter.layer.buffers])
    functions = [LoopFunction(emitter, side, returned, shared, frozenset(read), buffers) for side in sides]
    _same_parameter_names(functions)
    pieces = [f.emit() for f in functions]
    fn = dict(pieces[0])
    n_out = {p["n_outputs"] for p in pieces}
    assert len(n_out) == 1, "the checker gives every side of a layer's forward the same outputs"
    for key in ("forward_params", "backward_params", "apply_params"):
        same = [[q.removesuffix(" | None") for q in p[key]] for p in pieces]  # a side testing an input: `| None`
        assert all(p == same[0] for p in same), f"the sides of a branching Function differ in {key}"
    maybe_none = {q for p in pieces for q in p["forward_params"] if q.endswith(" | None")}
    fn["forward_params"] = [f"{q} | None" if f"{q} | None" in maybe_none else q for q in fn["forward_params"]]
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
    unpack = [l if l in read else "_" for l in head.plan.leaves] + head.kwargs  # what the conditions read
    unpack += held_params(head.held)
    kept = [f"{flag} = {m} is not None" for m, flag in given.items()]
    fn["setup_body"] = [f"{', '.join(unpack)} = {head.names.inputs}", *dict.fromkeys(kept)] + _chosen(
        plan, iter([p["setup_body"] for p in pieces]), forward_cond
    )
    fn["backward_body"] = _chosen(plan, iter([p["backward_body"] for p in pieces]), backward_cond)
    types = ["Tensor"] * n_out.pop() + ["Tensor | None"] * (len(returned) + len(buffers))
    fn["returns"] = types[0] if len(types) == 1 else f"tuple[{', '.join(types)}]"  # save = "inputs": one alone
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


class LoopFunction:
    """One Function: the forward as segments (`LoopPlan`), written out with a loop for each loop."""

    def __init__(
        self,
        emitter,
        plan: LoopPlan,
        returned: list[str] | None = None,
        shared: dict[tuple, str] | None = None,
        chosen_by: frozenset[str] = frozenset(),
        buffers: list[str] | None = None,
    ):
        """`returned`: every side's extra outputs, when this is a side of a branching forward (None for
        those this side does not compute); `shared`: the names the sides share (their gradients');
        `chosen_by`: the names the branching forward's conditions read (backward reads them on ctx);
        `buffers`: the buffers some side updates (this side returns None for those it does not)."""
        self.e = emitter
        self.returned = returned
        self.chosen_by = chosen_by
        self.layer = emitter.layer
        self.plan = plan
        self.kwargs: list[str] = emitter.function_kwargs()
        self.state = emitter.replayed_state  # the random state's argument, where backward draws again
        steps = [s for seg in plan.segments for s in segment_steps(seg)]
        numbers = plan.numbers + [n for seg in function_nest.loops_in(plan.segments) for n in seg.numbers]
        numbers += [n for seg in function_nest.nests(plan.segments) for n in seg.numbers]
        merged = Tape(steps, plan.outputs, plan.leaves, plan.differentiable, numbers=numbers, shapes=plan.shapes)
        self.helper = FunctionEmitter(emitter, BackwardPlan(merged, plan.grads, {}, None, []))
        self.names = self.helper.names
        self.names.taken |= set(plan.shapes) | {f"grad_{v}" for v in plan.shapes}
        for seg in function_nest.loops_in(plan.segments):
            self.names.taken |= {seg.var, *seg.appended, *(n for n, _ in seg.numbers)}
        for nest in function_nest.nests(plan.segments):
            self.names.taken |= {nest.var, *nest.appended, *(n for n, _ in nest.numbers)}
        self.loops = function_nest.loops_in(plan.segments)
        # `save = "inputs"`: setup_context saves only the inputs and parameters, and backward runs the forward's
        # segments again (`recompute`), keeping per step what it reads, before the loops' backward
        self.save_inputs_only = self.helper.save_inputs_only
        self.recomputing = False  # the backward being written runs the forward again (its last writing)
        self.unpacked: list[str] = []  # the inputs and parameters that backward unpacks from ctx.saved_tensors
        self.recomputed_plain: set[str] = set()  # the flags and int-tuple inputs backward reads (on ctx)
        self.left_out: set[str] = set()  # the values and joins the forward run again leaves out (`unread`)
        self.replaying = False  # the forward run again (`recompute`) being written
        # a stack of a loop's list (`loop_lists.item_read`'s) -> the list, and the buffer of its last item
        self.item_lists: dict[str, ListedItems] = {}
        # no mask kept per step (a stack takes no None), nor in a choice per step's loop (`step_choices`)
        self.helper.mask_when_dropping = not self.loops and not function_nest.nests(plan.segments)
        self.own: dict[tuple, str] = {} if shared is None else shared  # names it introduces, by what they hold
        self.outputs = {o.id for o in plan.outputs if isinstance(o, N.Name)}
        self.updates = loop_updates(plan)  # `update b = ...`: the new values, returned for the module to write
        declared = [b.name for b in self.layer.buffers]
        self.buffers = updated_buffers(plan, declared) if buffers is None else buffers
        self.backward_dims: set[str] = set()
        self.backward_read = Read()  # what the backward being written reads (`Recording`)
        self.backward_text = ""  # the backward last written
        self.prelude_ex: PyExpr | None = None  # how the backward writes its prelude
        self.sources = _gradient_sources(plan)
        self.shape_only: set[str] = set()  # values backward reads only the shape of: their shape kept on ctx
        self.step_shapes: dict[int, set[str]] = {}  # loop index -> values kept per step for their shape only
        # values only sides of Choices read (at most MAX_SAVING_SIDES): saved when one of them runs
        self.saved_on: dict[str, list[tuple[int, int]]] = {}
        self.leaf_shapes: set[str] = set()  # inputs and members backward reads only the shape of
        self.meta_leaves: set[str] = set()  # of those, read through views (`x[t]`): made on the meta device
        self.start_shapes: set[str] = set()  # leaves whose shape backward reads on ctx (`function_nest.start_zeros`)
        self.saved_in_steps: dict[str, str] = {}  # saved only where a step runs, by the test (`function_nest`)
        self.saved_again: dict[str, str] = {}  # alike under `save = "inputs"` (`loop_starts`)
        self.like_leaves: set[str] = set()  # of those, read for their dtype and device too (`x.new_zeros`)
        self.side_tests: dict[tuple[int, int], str] = {}  # each side's condition, as backward spells it
        # `if m != none` of an optional input, an `if` of its own: backward tests m's shape, kept on ctx
        conds = [seg.cond for seg in function_nest.choices(plan.segments)]  # a nest's body's too
        tested = [presence(t) for cond in conds for t in and_terms(cond)]
        self.presence_tested = list(dict.fromkeys(t[0] for t in tested if t is not None))
        # a flag input (`if not need_weights`) and a dtype (`if is_floating_point(mask)`): kept on ctx too
        read = {n.id for cond in conds for n in walk(cond) if isinstance(n, N.Name)}
        assert self.layer.forward is not None
        # loop index -> the bool masks read in its step's backward in place of the comparisons (`relu > 0`)
        self.step_masks: dict[int, list[Mask]] = {}
        self.step_exprs: dict[int, list[N.Expr]] = {}  # loop index -> its step's derived expressions
        self.kept_per_step: dict[int, set[str]] = {}  # loop index -> the values kept per step, once settled
        self.flat_steps: dict[int, set[str]] = {}  # loop index -> values kept per step flattened (`flat_steps`)
        # a nest's body value -> where backward reads it by value (`Reads.sides`, `function_nest.side_rows`)
        self.step_sides: dict[str, set[tuple[int, int] | None]] = {}
        self.step_shape_reads: set[str] = set()  # a nest's body values read for their shape (`step_rows`)
        read |= chosen_by  # a flag the branching forward's conditions test (`if run { for ... }`)
        self.flags_tested = [i.name for i in self.layer.forward.inputs if i.flag is not None and i.name in read]
        self.dtype_tested = list(dict.fromkeys(leaf for cond in conds for leaf in dtype_tested(cond)))
        # the copies' members the module passes as themselves besides their stacks: saved in their place
        self.held = emitter.held_members(self.names.taken | {*plan.leaves, *self.kwargs})
        self.names.taken |= set(held_params(self.held))

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

    # ---------------------------------------------------------------- masks kept per step

    def step_masked(self, k: int, stmts: list[Stmt]) -> list[Stmt]:
        """Loop `k`'s step statements, each comparison of `step_masks` read from its mask (recorded for
        `mask_candidates`)."""
        self.step_exprs.setdefault(k, []).extend(s.expr for s in stmts)
        for mask in self.step_masks.get(k, []):
            stmts = [dataclasses.replace(s, expr=replaced(s.expr, mask)) for s in stmts]
        return stmts

    def mask_candidates(self) -> dict[int, list[Mask]]:
        """For each loop of the forward's own segments, the bool masks its step's backward could read:
        comparisons of the step's values (of one shape), and indicators of one (`where(c, 1.0, 0.0)` read
        as a factor); none when the backward runs the forward again (`save = "inputs"`: nothing is kept)."""
        found: dict[int, list[Mask]] = {}
        if self.save_inputs_only:
            return found
        for seg in self.plan.segments:
            if not isinstance(seg, Loop):
                continue
            k = self.loops.index(seg)
            body = {s.var: s for s in seg.tape.steps}
            values = {*body, *seg.picks, *seg.carried, *self.plan.leaves} - set(self.helper.maybe_absent)
            step = lambda n, body=body: None if (s := body.get(n)) is None else s.expr  # noqa: E731
            opaque = lambda n, body=body: n in body and body[n].op is None  # noqa: E731
            masks = []
            for mask in candidates(self.step_exprs.get(k, []), values.__contains__, opaque, step):
                tensors = {n.id for n in walk(mask.value) if isinstance(n, N.Name) and n.kind == "tensor"}
                if mask.dtype != "bool" or len({self.plan.shapes.get(n) for n in tensors} - {None}) != 1:
                    continue
                if mask.name not in body:
                    mask = dataclasses.replace(mask, name=self.name(mask.name, key=("mask", B.key(mask.value))))
                masks.append(mask)
            if masks:
                found[k] = masks
        return found

    def step_weight(self) -> int:
        """What the loops keep per step, a bool as a quarter of a float (the per-step values settled by
        `emit`)."""
        bools = {m.name for ms in self.step_masks.values() for m in ms}
        kept = [
            (v, loop)
            for k, loop in enumerate(self.loops)
            for v in self.per_step_order(loop, self.kept_per_step.get(k, set()))
        ]
        return sum(1 if v in bools or _is_comparison(loop, v) else 4 for v, loop in kept)

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
        self.kept_per_step = per_step
        if not self.save_inputs_only:  # (recomputed, they are all at hand)
            body, reads = self.shapes_kept(body, reads, once, per_step)
        self.step_shapes = self.shapes_per_step(reads, per_step, body)
        if self.placeholders() - self.shape_only:  # not saved: written again, making them from their shapes
            self.shape_only |= self.placeholders()
            body, reads = self.backward(once, per_step)
        extra = self.extra_outputs(once, per_step)
        returned = extra if self.returned is None else self.returned
        saved_leaves = [l for l in self.plan.leaves if l in reads.once]
        if self.save_inputs_only:  # nothing returned but the outputs: backward computes the rest again
            self.recomputing = True
            body, reads = self.backward(once, per_step)
            extra, returned, per_step, saved_leaves = [], [], {}, self.unpacked
            left = set(self.helper.maybe_absent) | set(self.held.stacked if self.held is not None else ())
            self.saved_again, body = again_when_a_step_runs(body, saved_leaves, left)
        layer, plan = self.layer, self.plan
        n_out = len(plan.outputs)
        leaves = plan.leaves
        return {
            "name": f"{layer.name}Function",
            "doc": f"`{layer.name}` as an autograd.Function with a derived backward, its loops run as loops.",
            "forward_params": [f"{l}: {self._tensor_type(l)}" for l in leaves]
            + [self._kw_param(k) for k in self.kwargs]
            + held_forward_params(self.held),
            "forward_body": self.forward([x if x in extra else "None" for x in returned], per_step),
            "returns": (
                "Tensor"
                if n_out + len(returned) + len(self.buffers) == 1
                else f"tuple[{', '.join(['Tensor'] * n_out + ['Tensor'] * len(returned) + self.buffer_types())}]"
            ),
            "setup_body": self.setup(saved_leaves, [x if x in extra else "_" for x in returned], reads, extra),
            "backward_params": ["ctx", *plan.grads, *(self.grad_out(x) for x in returned), *self.buffer_grads()],
            "backward_body": body,
            "apply_params": leaves + self.kwargs + held_params(self.held),
            "n_outputs": n_out,
            "inputs": self.names.inputs,
            "output": self.names.output,
            "cls": self.names.cls,
            "extra": returned,
            "computed_extra": extra,
            "updates": self.buffers,
            "probes": (self.names.local("transforms_active"), self.names.local("compiling")),
            "caught": self.names.local("error"),  # apply's forward-mode error, said again
        }

    def shapes_kept(
        self, body: list[str], reads: Reads, once: set[str], per_step: dict[int, set[str]]
    ) -> tuple[list[str], Reads]:
        """The backward written again, saving less: a value it reads only the shape of (`reshape(g, q.shape)`)
        is returned (for setup_context to take its shape) but not saved, its shape kept on ctx; a value only
        one side of an `if` reads (`gelu`'s input) is saved only when that side runs. Their gradients, as
        extra outputs', are unchanged. A value the written code still spells itself stays saved."""
        self.like_leaves = set()
        self.meta_leaves = self.viewed_for_shape(reads, "\n".join(body))
        if self.meta_leaves:  # their shapes read, not they (`BackwardWriter.read`)
            body, reads = self.backward(once, per_step)
        candidates = (reads.shapes - reads.once) & once | self.unread_last_values(reads, once)
        self.leaf_shapes = (reads.shapes - reads.once) & set(self.plan.leaves)
        self.saved_on = {v: sides for v in once & reads.once if (sides := _only_sides(reads.sides.get(v, set())))}
        self.saved_in_steps = function_nest.saved_in_steps(self, reads, once) | self.computed_starts(reads, once)
        if not candidates and not self.saved_on and not self.leaf_shapes and not self.saved_in_steps:
            return body, reads
        self.shape_only = candidates
        on_ctx = candidates | set(self.saved_on) | self.leaf_shapes | set(self.saved_in_steps)
        self.helper.shape_on_ctx = {v: set() for v in on_ctx}
        body, reads = self.backward(once, per_step)
        text = without_spec_lines("\n".join(body))
        spelled = {
            v
            for v in candidates | self.leaf_shapes - self.meta_leaves
            if re.search(rf"(?<![.\w]){re.escape(v)}\b", text)
        }
        if spelled:  # saved after all (a leaf: read as itself)
            self.shape_only = candidates - spelled
            self.leaf_shapes -= spelled
            on_ctx = self.shape_only | set(self.saved_on) | self.leaf_shapes | set(self.saved_in_steps)
            self.helper.shape_on_ctx = {v: set() for v in on_ctx}
            body, reads = self.backward(once, per_step)
            reads.once |= spelled & set(self.plan.leaves)
        return body, reads

    def computed_starts(self, reads: Reads, once: set[str]) -> dict[str, str]:
        """The loops' starts forward computes, saved only where a step reads them (`loop_starts`)."""
        return computed_starts(self.plan.segments, set(self.plan.leaves), once, reads)

    def unread_last_values(self, reads: Reads, once: set[str]) -> set[str]:
        """The loops' last carried values (of `once`) returned only for the gradient the double backward gives
        them, which it reads nothing of but their shape (the zeros of one not given): kept as their shape on ctx,
        not saved (an earlier round's backward read them, before they were returned)."""
        carried = {c for seg in self.plan.segments if isinstance(seg, Loop) for c in seg.carried}
        return (once & carried) - reads.once - reads.shapes - self.outputs

    def viewed_for_shape(self, reads: Reads, text: str) -> set[str]:
        """The inputs and members the backward (`text`) reads only through views of them read for their shape
        alone (`x[t]` recomputed in a step, then `x_t.shape`, or a slice of it read so: `x[:, t][:, 1:]`'s shape
        in the gradient of a sum): each kept as its shape on ctx (`leaf_shapes`)
        and made on the meta device (`placeholders_again`), as autograd keeps nothing of them."""
        views = {s.var: s for s in self.plan_steps() if s.op is not None and s.op.shape in VIEWS}
        views |= {p: s for loop in self.loops for p, s in loop.picks.items()}  # `x[t]` of each step
        out = set()
        optional = set(self.helper.maybe_absent) | set(self.presence_tested)
        for leaf in sorted(reads.once & set(self.plan.leaves) - optional):
            bare = re.compile(rf"(?<![.\w]){re.escape(leaf)}\b(?!\.shape\b)")
            code = [line.strip() for line in without_spec_lines(text).splitlines()]
            lines = [line for line in code if bare.search(line) and "ctx.saved_tensors" not in line]
            binders = {line.split(" = ", 1)[0] for line in lines}
            made = {b for b in binders if b in views and _made_like(views[b], leaf)}
            if lines and all(
                b in made or b in views and leaf in _names(views[b].expr) and _read_for_shape(b, text) for b in binders
            ):
                out.add(leaf)
                if made:
                    self.like_leaves.add(leaf)
        return out

    def shapes_per_step(self, reads: Reads, per_step: dict[int, set[str]], body: list[str]) -> dict[int, set[str]]:
        """The body values kept per step that backward reads only for their shape (`sum_to_size(q.shape)` in
        the gradient of `q + b`), by loop: each is kept as one element expanded to the steps' shape
        (`new_zeros(()).expand(...)`), whose slots have each step's shape and hold no memory. Not a value a
        carried one is read back from (`previous_step`), one a list gets, a kernel's second result, nor one
        the written backward reads otherwise than as `v.shape`."""
        text = "\n".join(body)
        out: dict[int, set[str]] = {}
        for k, loop in enumerate(self.loops):
            kept = per_step.get(k, set())
            moved = {u for c in loop.carried if (u := self.previous_step(loop, c, kept)) is not None}
            items = [*loop.appended.values(), *(i for more in loop.more.values() for i in more)]
            listed = {n.id for item in items for n in walk(item) if isinstance(n, N.Name)}
            shaped = {s.var for s in loop.tape.steps if s.var in kept and not _kept(s)}
            shaped -= reads.by_value.get(k, set()) | moved | listed
            out[k] = {v for v in shaped if not _read_as_value(v, text)} | self.carried_for_shape(loop, kept, text)
        return out | function_nest.shapes_per_step(self, reads, per_step, text)

    def carried_for_shape(self, loop: Loop, kept: set[str], text: str) -> set[str]:
        """The carried values of `loop` kept per step (`kept`, its own buffer) whose step value backward
        (`text`) reads only for its shape, itself or through slices of it read so (`h_t[:, :n]` whose shape
        a `cat`'s gradient reads, in a loop whose slices vary in size): kept as one element expanded, as the
        body's values read so are (`shapes_per_step`). Not one a next step's value is read back from."""
        out: set[str] = set()
        if loop not in self.plan.segments:  # (a nest's loop: its stacks over the outer steps are its own)
            return out
        for c in loop.carried:
            if c in kept and self.previous_step(loop, c, kept) is None and c not in loop.updates.values():
                if _read_for_shape(self.name(f"{c}_t"), text):
                    out.add(c)
        return out

    def placeholders(self) -> set[str]:
        """The buffers of a loop's values read only for their shape (`shapes_per_step`) and their step 0's:
        each one element expanded, of which setup_context keeps the shape rather than save it (saved, an
        element would be kept that autograd does not keep), and backward makes one of no storage
        (`placeholders_again`). A nest's stacks over its outer steps: `function_nest.placeholders`."""
        loops = [(k, loop) for k, loop in enumerate(self.loops) if loop in self.plan.segments]
        shaped = [(loop, self.step_shapes.get(k, set())) for k, loop in loops]
        firsts = {self.first(v) for loop, values in shaped for v in self.widenable(loop, values)}
        return {self.stacked(v) for _, values in shaped for v in values} | firsts | function_nest.placeholders(self)

    def placeholders_again(self) -> list[str]:
        """Backward's placeholders (`placeholders`), on the meta device (no storage: only their shapes are
        read); None after a loop of no steps, or a step 0 of the later steps' shape."""
        made = []
        for p in sorted(self.placeholders() & self.shape_only):
            shape = self.names.ctx_shape(p)
            made.append(f'{p} = None if {shape} is None else torch.empty({shape}, device="meta")')
        made += [
            (
                f"{l} = torch.zeros((), dtype={self.names.ctx_value(l + '_dtype')}, "
                f"device={self.names.ctx_value(l + '_device')}).expand({self.names.ctx_shape(l)})"
                if l in self.like_leaves
                else f'{l} = torch.empty({self.names.ctx_shape(l)}, device="meta")'
            )
            for l in sorted(self.meta_leaves)
        ]
        return made

    def _tensor_type(self, leaf: str) -> str:
        assert self.layer.forward is not None
        optional = {i.name for i in self.layer.forward.inputs if i.optional}
        return "Tensor | None" if leaf in optional and leaf in self.presence_tested else "Tensor"

    def _kw_param(self, k: str) -> str:
        if k == "training":
            return "training: bool"
        if k == self.state:
            return f"{k}: {STATE_TYPE}"
        arg = self.layer.arg(k)
        return f"{k}: {python_type(arg.type)}" if arg else f"{k}: float"

    def extra_outputs(self, once: set[str], per_step: dict[int, set[str]], segments=None) -> list[str]:
        """The values returned besides the layer's outputs, in the order forward computes them (of
        `segments`: a nest's body's, its values by step)."""
        out: list[str] = []
        for seg in self.plan.segments if segments is None else segments:
            if isinstance(seg, Nest):
                out += function_nest.extra_outputs(self, seg, once, per_step)
            elif isinstance(seg, Straight):
                out += [s.var for s in seg.tape.steps if s.var in once]
            elif isinstance(seg, Choice):  # a side's values are None when the other side ran
                # (a value both sides bind, `step_choices.merged_as_own`, once)
                out += [v for v in dict.fromkeys([*(s.var for s in segment_steps(seg)), *seg.merged]) if v in once]
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
            if isinstance(seg, Nest):  # a kernel's second results in its body: their stacks over the outer steps
                groups.append((True, function_nest.second_results(self, seg)))
                continue
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
        steps make of it (`h = new_zeros(x, [H])` is [B, H] after the first step): the body's shapes are
        then known only at run time. None where the plan knows the two shapes equal (or it is no carried
        value)."""
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
        smaller = self.smaller_at_first_step(loop) - flat_steps.kept_flat(self, loop)  # (flattened: any shape)
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
        lines = self.prelude(ex, self.dim_source) + self.segments_forward(set(extra), per_step, ex)
        outs = [ex(o) for o in self.plan.outputs] + extra
        outs += returned_values(self.updates, self.buffers, self.plan.leaves)
        return lines + [f"return {', '.join(outs)}"]

    def buffer_types(self) -> list[str]:
        """The types of the new buffer values forward returns last (None where a side updates it not)."""
        return ["Tensor" if b in self.updates and self.returned is None else "Tensor | None" for b in self.buffers]

    def buffer_grads(self) -> list[str]:
        """backward's parameters for the new buffer values: no gradient flows into a buffer."""
        return [self.name(f"grad_new_{b}") for b in self.buffers]

    def new_buffer_names(self) -> list[str]:
        """The names setup_context gives the new buffer values this side returns (`_` for None)."""
        return [self.name(f"new_{b}") if b in self.updates else "_" for b in self.buffers]

    def segments_forward(self, extra: set[str], per_step: dict[int, set[str]], ex: PyExpr) -> list[str]:
        """The segments run in order, keeping per step the values of `per_step`; the other side's values of
        `extra` None after a `Choice`."""
        lines = []
        self.item_lists = {}
        for seg in self.plan.segments:
            if isinstance(seg, Straight):
                late = [(n, e) for n, e in seg.tape.numbers if n in self.plan.late]
                lines += [line for n, e in late for line in self.helper.located([f"{n} = {ex(e)}"], e.span.line)]
                lines += self.steps(seg.tape, ex)
            elif isinstance(seg, Choice):
                lines += self.forward_choice(seg, extra, ex)
            elif isinstance(seg, Nest):
                lines += function_nest.forward(self, seg, per_step, ex)
            else:
                lines += self.forward_loop(seg, per_step.get(self.loops.index(seg), set()), ex)
        return lines

    def recompute(self, once: set[str], per_step: dict[int, set[str]], spelling: Spelling, read: set[str]) -> list[str]:
        """`save = "inputs"`: the forward run again at the head of backward (as backward spells the arguments
        and dims), keeping per step what backward reads: the values forward returns as extra outputs under
        the default policy, at hand as locals. In torch operations, so double backward goes through them.
        `read`: the values backward reads after forward (outputs and views of inputs among them)."""
        self.replaying = True
        plain = {p: self.names.ctx_value(p) for p in self.helper.plain_inputs}  # a flag: kept on ctx
        ex = self.helper.python(dataclasses.replace(spelling, names=spelling.names | plain))
        self.left_out = self.unread(once | read, {v for values in per_step.values() for v in values})
        lines = self.segments_forward(set(self.extra_outputs(once, per_step)), per_step, ex)
        self.left_out = set()
        check_replayed(self.plan, self.state is not None)
        self.replaying = False
        if self.state is not None:  # it draws at random: as forward drew
            kept = self.names.ctx_value(self.state)
            lines = replayed(lines, kept, self.name("drawn"), self.name("cuda"))
        return ['# forward again (save = "inputs"), keeping what backward reads', *lines]

    def unread(self, once: set[str], per_step: set[str] | None = None) -> set[str]:
        """What the forward run again (`recompute`) leaves out: the values of its straight segments and the
        joins of its loops (`stack(ys)`) that neither backward (`once`, and `per_step`: what it keeps of the
        loops' steps) nor what it keeps reads: the outputs' own; and a buffer a loop's body updates that
        nothing backward reads computes from, with the body's steps computing it (`loop_buffers`). A call's
        results (`with_second_results`) are kept together."""
        paired = {
            v
            for s in self.plan.segments
            if isinstance(s, Straight)
            for p in with_second_results(s.tape).items()
            for v in p
        }
        left_out: set[str] = set()
        while True:
            read = set(once) | {n for seg in self.plan.segments for n in _read_by(seg, left_out)}
            unread = {
                s.var
                for seg in self.plan.segments
                if isinstance(seg, Straight)
                for s in seg.tape.steps
                if s.var not in read and s.var not in paired
            }
            unread |= {
                j.name for seg in self.plan.segments if isinstance(seg, Loop) for j in seg.joins if j.name not in read
            }
            kept = set(once) | (per_step or set())
            unread |= unread_buffer_chains(
                self.plan.segments, kept, functools.partial(_read_by, left_out=set(left_out))
            )
            if unread <= left_out:
                return left_out
            left_out |= unread

    def prelude(self, ex: PyExpr, dim_spelling) -> list[str]:
        """The dims and number locals (outside loops) that forward reads; backward's (its spelling records
        what it reads): PRELUDE, where `backward` writes them."""
        if isinstance(ex.sp, Recording):
            self.prelude_ex = ex
            return [PRELUDE]
        tape = self.numbers_tape()
        read = {
            n.id
            for seg in self.plan.segments
            for s in segment_steps(seg)
            for n in walk(s.expr)
            if isinstance(n, N.Name)
        }
        read |= {
            n.id for seg in function_nest.choices(self.plan.segments) for n in walk(seg.cond) if isinstance(n, N.Name)
        }
        read |= {n.id for loop in self.loops for b in loop.bounds for n in walk(b) if isinstance(n, N.Name)}
        read |= {n.id for loop in self.loops for _, e in loop.numbers for n in walk(e) if isinstance(n, N.Name)}
        read |= {n.id for loop in self.loops for j in loop.joins for n in walk(j.dim) if isinstance(n, N.Name)}
        read |= {n for seg in function_nest.nests(self.plan.segments) for n in function_nest.names_read(seg)}
        read |= {v for check in segment_checks(self.plan.segments) for v in read_vars(check)}
        read |= {n.id for _, e in self.late_numbers() for n in walk(e) if isinstance(n, N.Name)}
        read |= {start for loop in self.loops for start in loop.number_starts.values()}
        lines, _ = self.helper.prelude(tape, read, ex, dim_spelling)
        return lines

    def numbers_tape(self) -> Tape:
        """The number locals outside loops that forward computes before its first segment, for
        `FunctionEmitter.prelude`: not those computed from what a loop leaves (`late_numbers`)."""
        late = self.plan.late
        return Tape([], [], [], set(), numbers=[(n, e) for n, e in self.plan.numbers if n not in late])

    def late_numbers(self) -> list[tuple[str, N.Expr]]:
        """The number locals outside loops computed from what a loop leaves (`loop_ints`): forward computes
        them where they stand, after that loop."""
        return [(n, e) for n, e in self.plan.numbers if n in self.plan.late]

    def number_record(self, loop: Loop, number: str) -> str:
        """The list of `number`'s value at the start of each step of `loop`, which backward's prelude records
        running the loop's numbers again (`numbers_again`)."""
        return self.name(f"{number}_at", key=(id(loop),))

    def replayed(self) -> list[Loop | Nest]:
        """The loops whose numbers backward runs again in its prelude: those binding numbers named apart (a
        loop holding a loop: `function_nest.replays`)."""
        return [
            loop
            for loop in self.loops
            if loop in self.plan.segments
            and (loop.number_starts or loop.carried_numbers or {n for n, _ in loop.numbers} & self.plan.late)
        ] + [nest for nest in function_nest.nests(self.plan.segments) if function_nest.replays(nest)]

    def numbers_again(self, names: set[str], ex: PyExpr, dim_spelling, spelled) -> list[str]:
        """Backward's prelude where loops bind numbers named apart (`replayed`): the dims, the numbers outside
        loops and each such loop's numbers run again (a Python loop over ints, recording the carried ones at
        each step's start, `number_record`), in forward's order, those `names` read and what they read."""
        program: list = []
        loops = sorted(self.replayed(), key=lambda loop: (loop.numbers_at, self.plan.segments.index(loop)))
        for at, item in enumerate(self.plan.numbers):
            program += [loop for loop in loops if loop.numbers_at == at]
            program.append(item)
        program += [loop for loop in loops if loop.numbers_at >= len(self.plan.numbers)]
        need = set(names)
        kept: list = []
        for item in reversed(program):  # what is read, back to what it is computed from
            if isinstance(item, Nest):
                own, read = function_nest.replay_reads(item)
                need = (need - own) | read
                kept.append(item)
                continue
            if isinstance(item, Loop):
                own = {item.var, *(n for n, _ in item.numbers), *item.number_starts}
                exprs = [*item.bounds, *(e for _, e in item.numbers)]
                need -= own
                need |= {n.id for e in exprs for n in walk(e) if isinstance(n, N.Name)} - own
                need |= set(item.number_starts.values())
                kept.append(item)
                continue
            name, value = item
            if name in need:
                need.discard(name)
                need |= {n.id for n in walk(value) if isinstance(n, N.Name)}
                kept.append(item)
        need -= set(spelled)
        lines = [f"{d} = {dim_spelling(d)}" for d in self.helper.dim_source if d in need]
        for item in reversed(kept):
            if isinstance(item, Nest):
                lines += function_nest.replay(self, item, ex)
                continue
            if not isinstance(item, Loop):
                lines += self.helper.located([f"{item[0]} = {ex(item[1])}"], item[1].span.line)
                continue
            lines += [f"{new} = {start}" for new, start in item.number_starts.items()]
            records = {c: self.number_record(item, c) for c in item.carried_numbers}
            lines += [f"{r} = []" for r in records.values()]
            body = [f"{r}.append({c})" for c, r in records.items()]
            body += [f"{n} = {ex(e)}" for n, e in item.numbers]
            head = f"for {item.var} in {self.trip(item, ex)}:  # the loop's numbers again"
            lines += [head, *("    " + line for line in body or ["pass"])]
        return lines

    def recording(self, writer: BackwardWriter) -> BackwardWriter:
        """`writer`, its spelling recording what it writes in `backward_read`."""
        fields = {f.name: getattr(writer.spelling, f.name) for f in dataclasses.fields(Spelling)}
        writer.spelling = Recording(**fields, read=self.backward_read)
        writer.ex = self.helper.python(writer.spelling)
        return writer

    def steps(self, tape: Tape, ex: PyExpr, index: str | None = None) -> list[str]:
        """The steps of a segment's tape (`index`: a loop's step), then the subs' `require`s on its values."""
        paired = with_second_results(tape)  # one call returns both: `h, mean, rstd = torch.native_layer_norm(...)`
        lines = segment_count_lines(tape, ex, self.layer, self.e.spec_path, index)
        for s in tape.steps:
            if s.var in self.left_out:
                continue
            seconds = [v for v, first in paired.items() if first == paired.get(s.var)]
            if s.var in paired.values() or s.var in seconds[1:]:
                continue  # bound with the first of its call's second results
            if seconds:
                first = next(t for t in tape.steps if t.var == paired[s.var])
                line = f"{', '.join([first.var, *seconds])} = {ex(returning_second_results(first, {}))}"
            else:
                line = f"{s.var} = {item_of_list(s.expr, self.item_lists) or ex(s.expr)}"
            if self.replaying and reads_a_new_value(s, self.plan):
                line += ".detach()"  # (`save = "inputs"`: the forward run again in backward)
            run = [line] + (_detached(seconds) if seconds and self.replaying else [])
            lines += with_spec_line(run, 0, self.e.spec_path, s.expr.span.line)
        return lines + segment_check_lines(tape, ex, self.layer, self.e.spec_path, index)

    def forward_choice(
        self, seg: Choice, extra: set[str], ex: PyExpr, after: tuple[list[str], list[str]] = ([], [])
    ) -> list[str]:
        """The side the condition picks: its steps, the locals it binds under their merged names, and the
        other side's extra outputs as None."""
        sides = []
        for k, tape in enumerate(seg.sides()):
            lines = self.steps(tape, ex)
            lines += [
                f"{name} = {self.not_an_input(values[k])}" for name, values in seg.merged.items() if name != values[k]
            ]
            own = {s.var for s in tape.steps}
            other = [s.var for s in seg.sides()[1 - k].steps if s.var in extra and s.var not in own | seg.merged.keys()]
            lines += [" = ".join(other) + " = None"] if other else []
            sides.append(lines + after[k])  # (what it keeps in rows, `function_nest.side_rows`)
        head = with_spec_line([f"if {ex(seg.cond)}:"], 0, self.e.spec_path, seg.span.line)
        return if_else(head, sides[0], sides[1])

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
        starts = {c: start for c, start in loop.carried.items() if c not in self.left_out}  # (`unread`)
        lines = [f"{c} = {self.not_an_input(start)}" for c, start in starts.items() if c != start]
        lines += [f"{new} = {start}" for new, start in loop.number_starts.items()]  # as a loop of no steps leaves it
        kept = self.per_step_order(loop, per_step)
        flat = [v for v in kept if v in flat_steps.kept_flat(self, loop)]  # (one buffer, flattened)
        kept = [v for v in kept if v not in flat]
        flat_before, flat_body, flat_after = flat_steps.forward_lines(self, loop, flat)
        lines += flat_before
        shaped = self.step_shapes.get(self.loops.index(loop), set())
        buffered = self.buffered_lists(loop, [v for v in kept if v not in shaped and v not in loop.carried])
        joins = [j for j in loop.joins if j.name not in self.left_out]
        joined = {j.items for j in joins} | set(loop.appended.keys() - {j.items for j in loop.joins})
        appended = {name: item for name, item in loop.appended.items() if name not in buffered and name in joined}
        lines += [f"{name} = [{', '.join(loop.heads.get(name, []))}]" for name in appended if name not in loop.before]
        trip = self.trip(loop, ex)
        index = loop.var if plain_range(loop) else self.name("step", key=(id(loop),))
        if kept:  # one buffer per value, for every step: made at the first (None after a loop of no steps)
            count = self.name("n_steps", key=(id(loop),))
            # read only once a step has run: a lone bound is then the count itself (`range(n)`: n)
            steps = ex(loop.bounds[0]) if plain_range(loop) else f"len({trip})"
            firsts = [self.first(v) for v in self.widenable(loop, kept)]
            lines += [f"{count} = {steps}", " = ".join([*map(self.stacked, kept), *firsts]) + " = None"]
        body = [f"{n} = {ex(e)}" for n, e in loop.numbers]
        body += self.steps(Tape(list(loop.picks.values()), [], [], set()), ex)
        body += self.steps(loop.tape, ex, index)
        body += self.shape_checks(loop)
        body += unknown_shape_checks(loop, self.plan.shapes, self.layer.name, self.e.spec_path, index, set())
        if kept:  # a carried value still holds the step's first value here (it moves last)
            body.append(f"if {index} == 0:")
            body += [f"    {self.stacked(v)} = {self.buffer(loop, v, count)}" for v in kept]
            body += self.widened(loop, kept, index, count)
            body += [f"{self.stacked(v)}[{index}] = {v}" for v in kept if v not in shaped and v not in loop.carried]
            carried = [v for v in kept if v in loop.carried and v not in shaped]
            if carried:  # step 0's is its start, which backward reads
                body += [f"if {index} > 0:", *(f"    {self.stacked(v)}[{index} - 1] = {v}" for v in carried)]
        body += [
            f"{name}.append({ex(item)})"
            for name, first in appended.items()
            for item in [first, *loop.more.get(name, [])]
        ]
        body += flat_body
        moved = [(c, v) for c, v in loop.updates.items() if c != v and c not in self.left_out]
        if moved:
            body.append(f"{', '.join(c for c, _ in moved)} = {', '.join(self.not_an_input(v) for _, v in moved)}")
        each = loop.var if index == loop.var else f"{index}, {loop.var}"
        trip = trip if index == loop.var else f"enumerate({trip})"
        head = with_spec_line([f"for {each} in {trip}:"], 0, self.e.spec_path, loop.span.line)
        lines += head + ["    " + line for line in body or ["pass"]] + flat_after
        for j in joins:
            if j.items in buffered:  # a view of the buffer (an output of its own: not the buffer itself)
                buffer, dim = self.stacked(buffered[j.items]), ex(j.dim)
                view = f"{buffer}.view_as({buffer})" if dim == "0" else f"torch.movedim({buffer}, 0, {dim})"
                lines += item_check_lines(j, 0, buffer, self.layer, self.e.spec_path)
                lines += self.no_steps_check(loop, buffer, j.items)
                lines.append(f"{j.name} = {view}")
            else:
                lines += item_check_lines(j, len(loop.heads.get(j.items, [])), None, self.layer, self.e.spec_path)
                lines.append(f"{j.name} = {self.joined(loop, j, ex)}")
        self.item_lists.update(self.listed_items(loop, joins, kept, buffered, ex))
        return lines

    def listed_items(
        self, loop: Loop, joins: list[Join], kept: list[str], buffered: dict[str, str], ex: PyExpr
    ) -> dict[str, ListedItems]:
        """The whole stacks at dim 0 of the lists forward makes (`joins` of `loop`), by the list, its heads and
        the buffers holding each item a step appends (None where none does), for `loop_lists.item_of_list`."""
        shaped = self.step_shapes.get(self.loops.index(loop), set())
        rows = set(kept) - shaped - set(loop.carried) - set(self.widenable(loop, kept))
        out: dict[str, ListedItems] = {}
        for j in joins:
            if j.func != "stack" or j.of_step is not None or ex(j.dim) != "0" or j.items in buffered:
                continue
            items = [loop.appended[j.items], *loop.more.get(j.items, [])]
            kept_rows = [self.stacked(v.id) if isinstance(v, N.Name) and v.id in rows else None for v in items]
            heads = len(loop.heads.get(j.items, []))
            out[j.name] = ListedItems(j.items, heads, kept_rows, j.items in loop.before)
        return out

    @staticmethod
    def joined(loop: Loop, j: Join, ex: PyExpr) -> str:
        """`stack(L)` / `cat(L)`; a stack of the i-th item of each step only (`Join.of_step`) leaves the heads
        and the step's other items out, and after a loop of no steps is its first head with an empty dim at
        `j.dim` (what cat() of it adds)."""
        heads, dim = loop.heads.get(j.items, []), ex(j.dim)
        if j.alone is not None:  # of one of the loops in a row only
            return stacked_alone(loop, j, ex)
        if j.of_step is None:
            return f"torch.{j.func}({j.items}, dim={dim})"
        per = 1 + len(loop.more.get(j.items, []))
        start = len(heads) + j.of_step
        steps = f"torch.stack({j.items}[{start or ''}:{f':{per}' if per > 1 else ''}], dim={dim})"
        if not heads:  # no steps: an empty list, which the spec's cat() raises on (torch's ValueError)
            return f"{steps} if {j.items} else torch.cat({j.items}, dim={dim})"
        return f"{steps} if len({j.items}) > {len(heads)} else {heads[0]}.unsqueeze({dim}).narrow({dim}, 0, 0)"

    def buffer(self, loop: Loop, v: str, count: str) -> str:
        """The buffer of `v`'s value at every step: for a carried value, at every step but the first, whose
        value is its start (backward reads that); for a value backward reads only the shape of
        (`shapes_per_step`), one element expanded to that shape."""
        if v in loop.carried:  # the shape the steps make (the start's may be smaller: `first_broadcast`)
            update = loop.updates.get(v, v)
            if v in self.step_shapes.get(self.loops.index(loop), set()):
                return f"{update}.new_zeros(()).expand(({count} - 1, *{update}.shape))  # only its shape is read"
            return f"{update}.new_empty(({count} - 1, *{update}.shape))"
        shape = f"({count}, *{v}.shape)"
        if v in self.step_shapes.get(self.loops.index(loop), set()):
            return f"{v}.new_zeros(()).expand{shape}  # only its shape is read"
        return f"{v}.new_empty({shape})"

    def widened(self, loop: Loop, kept: list[str], index: str, count: str) -> list[str]:
        """At step 1, the buffer of each value that came out smaller at step 0 made anew at its later shape,
        step 0's value kept on its own (backward reads it there)."""
        lines = []
        shaped = self.step_shapes.get(self.loops.index(loop), set())
        for v in self.widenable(loop, kept):
            buffer = self.stacked(v)
            lines += [
                f"    if {v}.shape != {buffer}.shape[1:]:",
                f"        {self.first(v)} = {buffer}[0]" + ("" if v in shaped else ".clone()"),
                f"        {buffer} = {self.buffer(loop, v, count)}",
            ]
        return [f"elif {index} == 1:  # a start smaller than the steps make it", *lines] if lines else []

    def no_steps_check(self, loop: Loop, buffer: str, items: str) -> list[str]:
        """A loop of no steps made no buffer: `stack` of its list raises, as torch's does on an empty list, at
        the loop's spec line."""
        message = f"{self.layer.name}: stack() of '{items}' got no items: the loop appending to it ran no steps"
        check = [f"if {buffer} is None:", f'    raise RuntimeError("{message}")']
        return with_spec_line(check, 1, self.e.spec_path, loop.span.line)

    @staticmethod
    def buffered_lists(loop: Loop, kept: list[str]) -> dict[str, str]:
        """The lists whose every join is a `stack` of a value kept per step, by that value: the buffer holds
        them already (the join is a view of it, not a second copy, and the list is not made)."""
        out: dict[str, str] = {}
        for name, item in loop.appended.items():
            joins = [j for j in loop.joins if j.items == name]
            # one item per step, none from before
            whole = all(j.func == "stack" for j in joins) and not loop.heads.get(name) and name not in loop.more
            whole = whole and name not in loop.before and name not in loop.continued  # one list over loops
            if isinstance(item, N.Name) and item.id in kept and joins and whole:
                out[name] = item.id
        return out

    def not_an_input(self, value: str) -> str:
        """A carried value as forward binds it: an input as a view of it (torch refuses an input returned
        as-is, as the carried values are, and saved)."""
        return f"{value}.view_as({value})" if value in self.plan.leaves else value

    # ---------------------------------------------------------------- setup_context

    def setup(self, saved_leaves: list[str], extra: list[str], reads: Reads, own_extra: list[str]) -> list[str]:
        """`extra`: the extra outputs in the order every side returns them (`_` for another side's);
        `own_extra`: this side's, saved in the order its backward unpacks them."""
        unpack = self.plan.leaves + self.kwargs
        dims = sorted(self.backward_dims)
        kwargs = self.kept_kwargs()
        used = set(saved_leaves) | set(kwargs) | {self.helper.dim_source[d].split(".")[0] for d in dims}
        used |= set(self.presence_tested) | set(self.flags_tested) | set(self.dtype_tested) | self.leaf_shapes
        used |= self.recomputed_plain | self.start_shapes
        lines = []
        if used:
            names = [u if u in used else "_" for u in unpack] + held_params(self.held)
            lines.append(f"{', '.join(names)}{',' if len(names) == 1 else ''} = {self.names.inputs}")
        saved_outputs = [
            o.id if isinstance(o, N.Name) and o.id in reads.once and not self.recomputing else "_"
            for o in self.plan.outputs
        ]
        shaped = [o.id for o in self.plan.outputs if isinstance(o, N.Name) and o.id in reads.output_shapes]
        outs = [o.id if isinstance(o, N.Name) and o.id in shaped else "_" for o in self.plan.outputs]
        outs = [s if s != "_" else o for s, o in zip(saved_outputs, outs)] + extra + self.new_buffer_names()
        if any(v != "_" for v in outs):
            lines.append(f"{', '.join(outs)} = {self.names.output}")  # forward returns one alone, not a tuple
        if extra and len(self.plan.outputs) == 1:  # the extra outputs' gradients: None unless given
            lines.append("ctx.set_materialize_grads(False)")
        lines += [f"{self.names.ctx_value(k)} = {k}" for k in kwargs]
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
        lines += function_nest.start_shape_lines(self)
        for l in sorted(self.like_leaves & self.meta_leaves):  # (`x.new_zeros(...)` of its placeholder)
            lines += [f"{self.names.ctx_value(l + '_dtype')} = {l}.dtype"]
            lines += [f"{self.names.ctx_value(l + '_device')} = {l}.device"]
        flags = self.flags_tested + [p for p in self.helper.plain_inputs if p in self.recomputed_plain]
        lines += [f"{self.names.ctx_value(f)} = {f}" for f in dict.fromkeys(flags)]
        lines += [f"{self.names.ctx_shape(o)} = {o}.shape" for o in dict.fromkeys(shaped)]
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
            if v in self.shape_only or v in self.saved_on and self.reads_shape(v) or v in self.saved_in_steps
        ]
        own_extra = [v for v in own_extra if v not in self.shape_only]
        chosen = [f"{v} if {self.saving_test(v)} else None" if v in self.saved_on else v for v in own_extra]
        chosen = [f"{v} if {self.saved_in_steps[v]} else None" if v in self.saved_in_steps else v for v in chosen]
        ends = self.ends_in_buffers(own_extra, self.kept_per_step)
        chosen = [f"{v} if {ends[v]} is None else None" if v in ends else v for v in chosen]
        # read only by the steps of loops of no steps: not saved (a forward run again reads them all)
        whole = set(ends) | set(self.held.stacked if self.held is not None else ()) if not self.recomputing else None
        saved_leaves = saved_leaves if whole is None else when_a_step_runs(saved_leaves, reads, whole)
        saved_leaves = [f"{l} if {self.saved_again[l]} else None" if l in self.saved_again else l for l in saved_leaves]
        tensors = saved_leaves + [o for o in saved_outputs if o != "_"] + chosen
        # no gradient of their own: ATen differentiates through them (one call: torch keeps the last call's)
        groups = [
            (per_step, names)
            for per_step, group in self.statistics()
            if (names := [x for x in group if x in own_extra])
        ]
        if new := [n for n in self.new_buffer_names() if n != "_"]:  # no gradient flows into a buffer
            groups.append((False, new))
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
            lines.append(f"ctx.save_for_backward({', '.join(saved_with_held(tensors, self.held))})")
        return lines

    def kept_kwargs(self) -> list[str]:
        """The arguments and lets setup_context keeps on ctx: those backward reads (`training` always: a
        call's `training=` is written without a name), and a side's of a branching forward, those its
        conditions read."""
        return [
            k
            for k in self.kwargs
            if k in self.backward_read.spelt or k in ("training", self.state) or k in self.chosen_by
        ]

    def reads_shape(self, value: str) -> bool:
        """Whether the backward last written reads the shape of `value` kept on ctx: a value saved only
        where a side runs has its zeros made from it where that side did not (`BackwardWriter`)."""
        shape = re.escape(self.names.ctx_shape(value))
        return re.search(rf"{shape}\b", without_spec_lines(self.backward_text)) is not None

    def plan_steps(self) -> list[Step]:
        return [s for seg in self.plan.segments for s in segment_steps(seg)]

    def ends_in_buffers(self, saved: list[str], per_step: dict[int, set[str]]) -> dict[str, str]:
        """The loops' carried values of `saved` whose next value a step computes and the loop keeps per step
        (`h = tanh(...)`, in `h1_steps`), by that buffer (saved too): after a loop of some steps, the carried
        value is the buffer's last row, so setup_context saves it only after one of none (its buffer None)
        and backward reads the row. The start of the next loop of a loop split (`if t == 0`) is kept once."""
        if self.recomputing:
            return {}
        ends = {}
        bound = self.always_bound()  # (one that may be None stays saved: the row of no buffer would not be)
        for loop in (seg for seg in self.plan.segments if isinstance(seg, Loop)):
            order = self.per_step_order(loop, per_step.get(self.loops.index(loop), set()))
            widened = set(self.widenable(loop, order))
            for carried, update in loop.updates.items():
                buffer = self.stacked(update)
                if (
                    carried in saved
                    and carried in bound
                    and carried not in self.saved_on
                    and buffer in saved
                    and buffer not in self.saved_on
                    and update in order
                    and update not in widened
                    and self.first_broadcast(loop, carried) is None
                    and any(s.var == update for s in loop.tape.steps)
                ):
                    ends[carried] = buffer
        return ends | function_nest.ends_in_layers(self, saved, per_step)

    def saving_test(self, value: str) -> str:
        """The test under which setup_context saves `value`: one of the sides reading it ran."""
        tests = [self.side_tests[side] for side in self.saved_on[value]]
        if len(tests) == 1:
            return tests[0]
        return " or ".join(t if re.fullmatch(r"[\w.]+|not [\w.]+", t) else f"({t})" for t in tests)

    def always_bound(self) -> set[str]:
        """The values forward always computes (of straight segments, and a loop's carried values, bound before
        it): never None."""
        unbound = _maybe_unbound(self.plan)
        loops = [seg for seg in self.plan.segments if isinstance(seg, Loop)]
        carried = {c for loop in loops for c, start in loop.carried.items() if start not in unbound}
        return {s.var for seg in self.plan.segments if isinstance(seg, Straight) for s in seg.tape.steps} | carried

    # ---------------------------------------------------------------- backward

    def split(self, once: set[str], per_step: dict[int, set[str]]) -> bool:
        """Whether the extra outputs' gradients get a section of their own, run only when one is given
        (double backward): with one output, whose gradient is then the only one of a first backward. Not
        when backward computes them again (`recomputing`): none is returned."""
        return len(self.plan.outputs) == 1 and bool(self.extra_outputs(once, per_step)) and not self.recomputing

    def backward(self, once: set[str], per_step: dict[int, set[str]]) -> tuple[list[str], Reads]:
        """The backward's lines, its prelude binding only the dims and numbers its other lines read: the
        writers' spellings record every name they write (`Recording`), and the prelude, placed by
        `BackwardWriter.head` as `PRELUDE`, is written after every other line."""
        self.backward_read = Read()
        lines, reads = self.backward_lines(once, per_step)
        at = lines.index(PRELUDE)
        ex = self.prelude_ex
        assert ex is not None  # set by `prelude`, which `BackwardWriter.head` calls
        if self.replayed():
            prelude = self.numbers_again(self.backward_read.bare, ex, self.names.ctx_value, ex.sp.names)
        else:
            prelude, _ = self.helper.prelude(
                self.numbers_tape(), self.backward_read.bare, ex, self.names.ctx_value, spelled=ex.sp.names
            )
        lines[at : at + 1] = prelude
        self.backward_text = "\n".join(lines)
        self.backward_dims = {d for d in self.helper.dims if d in self.backward_read.spelt}
        self.recomputed_plain = {p for p in self.helper.plain_inputs if p in self.backward_read.spelt}
        return lines, reads

    def gradient_may_be_none(self) -> bool:
        """Whether the output's gradient may come in as None where this side returns no extra output: a side
        of a branching forward whose other sides return some (setup_context materialises no gradient)."""
        return bool(self.returned) and len(self.plan.outputs) == 1 and not self.recomputing

    def backward_lines(self, once: set[str], per_step: dict[int, set[str]]) -> tuple[list[str], Reads]:
        if not self.split(once, per_step):
            # forward run again (`recomputing`) returns no extra output: no gradient of one comes in
            writer = self.recording(BackwardWriter(self, once, per_step, "main" if self.recomputing else "all"))
            lines = writer.write()
            if self.gradient_may_be_none():
                return writer.head([writer]) + _under_given(writer, lines) + self.returns(), writer.reads
            return writer.head([writer]) + writer.declared() + lines + self.returns(), writer.reads
        main = self.recording(BackwardWriter(self, once, per_step, "main"))
        main_lines = main.write()
        rare = self.recording(BackwardWriter(self, once, per_step, "rare"))
        rare_lines = rare.write()
        reads = Reads(main.reads.once | rare.reads.once, dict(main.reads.per_step))
        reads.shapes = main.reads.shapes | rare.reads.shapes
        reads.output_shapes = rare.reads.output_shapes
        for k in main.reads.by_value.keys() | rare.reads.by_value.keys():
            reads.by_value[k] = main.reads.by_value.get(k, set()) | rare.reads.by_value.get(k, set())
        for name in main.reads.sides.keys() | rare.reads.sides.keys():
            reads.sides[name] = main.reads.sides.get(name, set()) | rare.reads.sides.get(name, set())
        for k, v in rare.reads.per_step.items():
            reads.per_step[k] = reads.per_step.get(k, set()) | v
        reads.outside, reads.trips = main.reads.outside | rare.reads.outside, main.reads.trips | rare.reads.trips
        for name in main.reads.in_loops.keys() | rare.reads.in_loops.keys():
            reads.in_loops[name] = main.reads.in_loops.get(name, set()) | rare.reads.in_loops.get(name, set())
        # a bool mask kept per step gets no gradient (autograd gives its stack None)
        masks = {self.stacked(m.name) for ms in self.step_masks.values() for m in ms}
        extra = [x for x in self.extra_outputs(once, per_step) if x not in masks]
        given = [self.grad_out(x) for x in extra]
        # unused extra outputs' gradients are None (not materialised): zeros where another is given
        stacks = {self.stacked(v) for k, loop in enumerate(self.loops) for v in per_step.get(k, set())}
        stacks |= {
            self.first(v) for k, loop in enumerate(self.loops) for v in self.widenable(loop, per_step.get(k, ()))
        }
        stacks |= {s.var for seg in self.plan.segments if isinstance(seg, Choice) for s in segment_steps(seg)}
        stacks |= _maybe_unbound(self.plan)
        stacks |= {
            x for seg in function_nest.nests(self.plan.segments) for x in self.extra_outputs(once, per_step, [seg])
        }
        stacks |= {s.var for s in self.plan_steps() if s.op is not None and s.op.name == "dropout_mask"}
        any_given = self.name("given")  # the zeros of a value kept as its shape: of a given gradient's dtype
        by_shape = self.shape_only | set(self.saved_on) | set(self.saved_in_steps)  # (or a step)
        g = self.name("g")  # (not a value's name: `shapes_kept` looks for those spelt)
        zeros = [f"{any_given} = [{g} for {g} in ({', '.join(given)},) if {g} is not None][0]"]
        zeros += _real_given(any_given)
        zeros = zeros if by_shape or rare.reads.output_shapes or rare.reads.given_shapes or self.start_shapes else []
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
        return [f"return {', '.join(grads + ['None'] * (len(self.kwargs) + len(held_params(self.held))))}"]


def _detached(seconds: list[str]) -> list[str]:
    """A call's second results (statistics, indices) run again in backward, detached as forward marks them
    non-differentiable: ATen's backward kernels take them as constants (double backward through
    `native_layer_norm_backward` has no derivative for its mean, the input's formula covering it)."""
    return [f"{', '.join(seconds)} = {', '.join(f'{v}.detach()' for v in seconds)}"]


def _under_given(writer: BackwardWriter, lines: list[str]) -> list[str]:
    """A backward's `lines` run only when the output's gradient is given; every gradient None otherwise."""
    grads = writer.leaf_grads()
    declared = grads + sorted(writer.maybe_none - set(grads))
    return [" = ".join(declared) + " = None", f"if {writer.plan.grads[0]} is not None:", *("    " + l for l in lines)]


def _read_by(seg, left_out: set[str]) -> set[str]:
    """The names a segment reads (its steps, a loop's starts, items, counts and joins, a Choice's condition),
    those of the values and joins in `left_out` aside."""
    if isinstance(seg, Straight):
        return {n for s in seg.tape.steps if s.var not in left_out for n in s.reads}
    names = {n for s in segment_steps(seg) if s.var not in left_out for n in s.reads}
    exprs: list[N.Expr] = []
    if isinstance(seg, Choice):
        exprs.append(seg.cond)
        names |= {v for values in seg.merged.values() for v in values}
    else:  # a loop or a nest
        joins = [j for j in seg.joins if j.name not in left_out]
        exprs += [*seg.bounds, *(e for _, e in seg.numbers), *seg.appended.values(), *(j.dim for j in joins)]
        exprs += [e for more in seg.more.values() for e in more]
        names |= {start for c, start in seg.carried.items() if c not in left_out}
        names |= {v for c, v in seg.updates.items() if c not in left_out} | {h for j in joins for h in j.heads}
        names |= {h for heads in seg.heads.values() for h in heads}
        if isinstance(seg, Loop):
            names |= {n for p in seg.picks.values() for n in p.reads}
        else:
            names |= {n for inner in seg.segments for n in _read_by(inner, set())}
    return names | {n.id for e in exprs for n in walk(e) if isinstance(n, N.Name)}


def _only_sides(where: set[tuple[int, int] | None]) -> list[tuple[int, int]]:
    """The sides of Choices (segment, 0 or 1) where a value is read, when it is read nowhere else and on
    at most `MAX_SAVING_SIDES` of them; [] otherwise."""
    if None in where or len(where) > MAX_SAVING_SIDES:
        return []
    return sorted(side for side in where if side is not None)


def _gradient_sources(plan: LoopPlan, known: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """For each value of the forward, the differentiable leaves it is computed from (through the loops'
    carried values, over as many rounds as they take to settle). `known`: those of the values before."""
    sources: dict[str, set[str]] = {l: {l} for l in plan.leaves if l in plan.differentiable}
    sources.update(known or {})

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
        if isinstance(seg, Nest):  # its body, as a forward of its own, as many times as its carried values take
            for c, start in seg.carried.items():
                sources[c] = set(sources.get(start, ()))
            for _ in range(len(seg.carried) + 2):
                sources.update(_gradient_sources(dataclasses.replace(plan, segments=seg.segments), sources))
                for c, v in seg.updates.items():
                    sources[c] |= sources.get(v, set())
            _joined_sources(seg, sources)
            continue
        for c, start in seg.carried.items():
            sources[c] = set(sources.get(start, ()))
        for _ in range(len(seg.carried) + 2):
            for s in [*seg.picks.values(), *seg.tape.steps]:
                sources[s.var] = of(s)
            for c, v in seg.updates.items():
                sources[c] |= sources.get(v, set())
        _joined_sources(seg, sources)
    return sources


def _joined_sources(seg: Loop | Nest, sources: dict[str, set[str]]) -> None:
    for j in seg.joins:
        listed = [seg.appended[j.items], *seg.more.get(j.items, [])] if j.items in seg.appended else []
        names = [n.id for item in listed for n in walk(item) if isinstance(n, N.Name)]
        names += j.heads + [n.id for item in j.earlier for n in walk(item) if isinstance(n, N.Name)]
        sources[j.name] = {l for name in names for l in sources.get(name, ())}


def _maybe_unbound(plan: LoopPlan) -> set[str]:
    """The merged locals of `Choice`s that are None when a side that does not bind them ran (`UNBOUND`),
    or that take such a value."""
    out = {UNBOUND}
    for seg in plan.segments:
        if isinstance(seg, Choice):
            out |= {m for m, values in seg.merged.items() if out & set(values)}
    return out - {UNBOUND}


def _names(expr: N.Expr) -> set[str]:
    return {n.id for n in walk(expr) if isinstance(n, N.Name)}


def _read_as_value(v: str, text: str) -> bool:
    """Whether the backward's `text` reads the value `v` otherwise than for its shape (`v.shape`), besides
    the line binding it to its slot."""
    bare = re.compile(rf"(?<![.\w]){re.escape(v)}\b(?!\.shape\b|\.size\()")
    lines = without_spec_lines(text).splitlines()
    return any(bare.search(line) for line in lines if not line.lstrip().startswith(f"{v} = "))


def _read_for_shape(v: str, text: str, depth: int = 0) -> bool:
    """Whether the backward's `text` reads `v` (bound on a line of its own) only for its shape: as `v.shape`,
    or on a line binding an alias or a slice of it (`part = v[:, :n]`) whose name it reads only so."""
    bare = re.compile(rf"(?<![.\w]){re.escape(v)}\b(?!\.shape\b)")
    view = re.compile(rf"^(\w+) = {re.escape(v)}(\[[\w\s:,+\-*%]*\])?$")
    for line in without_spec_lines(text).splitlines():
        code = line.strip()
        if code.startswith(f"{v} = ") or not bare.search(code):
            continue
        viewed = view.match(code)
        if viewed is None or depth > 8 or not _read_for_shape(viewed.group(1), text, depth + 1):
            return False
    return True


def _made_like(step: Step, leaf: str) -> bool:
    """Whether `step` makes a tensor reading of `leaf` only its dtype and device (`x.new_zeros([B, d])`)."""
    e = step.expr
    return (
        isinstance(e, N.Call)
        and e.func in ("new_zeros", "new_ones", "new_full", "new_empty")
        and bool(e.args)
        and isinstance(e.args[0], N.Name)
        and e.args[0].id == leaf
        and leaf
        not in {n.id for a in [*e.args[1:], *(k.value for k in e.kwargs)] for n in walk(a) if isinstance(n, N.Name)}
    )


def _kept(step: Step) -> bool:
    """A kernel's second result (`mean`, `rstd` of `torch.native_layer_norm`), kept rather than recomputed."""
    return step.op is not None and step.op.cost == "kept"


def _is_comparison(loop: Loop, v: str) -> bool:
    step = loop.tape.step(v)
    return step is not None and isinstance(step.expr, N.Compare)


def _real_given(given: str) -> list[str]:
    """The zeros made from a given gradient's dtype are those of a real value (a carried value, an output)
    even where the first gradient given is a complex one's (an `rfft` kept per step): its real part's dtype,
    so that the backward's `torch.fft.rfft` of them takes a real tensor."""
    return [f"{given} = {given}.real if {given}.is_complex() else {given}"]
