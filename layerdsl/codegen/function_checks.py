"""The subs' `require`s a `@function` layer's Function checks in its forward (`autodiff.sub_requires`).

A check tests the shape of values the forward computes (`Tape.checks`): it runs right after the last of them
is bound, raising the plain module's ValueError (the sub's layer, its message and its spec line). In a loop's
body, one reading a value of the loop (a step's, or one it carries) runs each step; one reading only sizes the
forward measured before the loop, once, at its first step. The tape's checks also hold how many parts an
unpacked `chunk`/`split` gives where only forward knows the size it cuts (`autodiff.unpack_checks`).
An item of a list a loop appends to, read as an item of its stack (`autodiff.loop_lists.item_read`), has its
list's length checked before the stack (`item_check_lines`), raising the plain module's IndexError.
"""

from __future__ import annotations

from layerdsl.autodiff.loops import Choice, Join, LoopPlan
from layerdsl.autodiff.plan import BackwardPlan, BranchPlan, Plan
from layerdsl.autodiff.sub_requires import decided
from layerdsl.autodiff.tape import Tape
from layerdsl.autodiff.unpack_checks import PartsCheck
from layerdsl.codegen.pyexpr import PREC, PyExpr
from layerdsl.codegen.spec_lines import with_spec_line
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk


def checks_by_step(tape: Tape, paired: dict[str, str]) -> dict[int, list[N.Require]]:
    """The tape's checks by the index of the step after which the values they read are all bound (-1:
    leaves only, checked first). `paired`: the steps bound with a later step's line (`with_second_results`)."""
    at: dict[str, int] = {}
    for k, s in enumerate(tape.steps):
        at[s.var] = k
        if s.var in paired:  # its first result is bound with it
            at[paired[s.var]] = k
    out: dict[int, list[N.Require]] = {}
    for check in tape.checks:
        last = max((at[v] for v in read_vars(check) if v in at), default=-1)
        out.setdefault(last, []).append(check)
    return out


def read_vars(check: N.Require) -> set[str]:
    """The names of the values `check` reads."""
    return {n.id for part in (check.cond, check.guard) if part is not None for n in walk(part) if isinstance(n, N.Name)}


def check_lines(check: N.Require, ex: PyExpr, layer: N.Layer, count: bool = True) -> list[str]:
    """`check`'s test and its ValueError, as the plain module writes the sub's `require` (`count`: with a
    chunk's count checked first, else written before the steps by `segment_count_lines`)."""
    from layerdsl.codegen.module import StatementWriter  # the module's writer (it imports the Function's)

    if isinstance(check, PartsCheck):
        return _parts_lines(check, ex, layer, count)
    return StatementWriter(ex, ex.sp, layer).require(check)


_FAILS = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}  # a comparison's negation


def _parts_lines(check: PartsCheck, ex: PyExpr, layer: N.Layer, count: bool = True) -> list[str]:
    """The test that an unpacked chunk/split gives as many parts as names, and the ValueError the plain
    module's unpacking would raise, saying where and how many (torch's call, on the failing path only)."""
    cond = check.cond
    assert isinstance(cond, N.Compare), "unpack_checks compares sizes"
    flipped = N.Compare(cond.span, [_FAILS[cond.ops[0]]], cond.operands) if len(cond.ops) == 1 else None
    failed = ex(flipped) if flipped is not None else f"not {ex.wrap(cond, PREC['not'])}"
    test = failed if check.guard is None else f"{ex(check.guard)} and {failed}"
    given = f"len(torch.{check.call.func}({ex(check.source)}, {ex(check.cut)}, {check.dim}))"
    said = f"{layer.name}: {check.call.func}() at {layer.path}:{check.span.line} gives {{{given}}} tensors here (dim"
    said += f" {check.dim} has size {{{ex(check.size)}}}), unpacked into {check.names} names"
    counted = _chunk_count_lines(check, ex, layer) if count else []
    return [*counted, f"if {test}:", f"    raise ValueError(f{said!r})"]


def _chunk_count_lines(check: PartsCheck, ex: PyExpr, layer: N.Layer) -> list[str]:
    """A chunk's count of a run-time value checked positive before the parts test divides by it, raising
    torch.chunk's RuntimeError (which the plain module raises) naming the layer and the call's spec line."""
    if check.call.func != "chunk" or isinstance(check.cut, N.Num):
        return []
    count = ex(check.cut)
    said = f"{layer.name}: chunk() at {layer.path}:{check.span.line}: chunk expects `chunks` to be greater than 0,"
    said += f" got: {{{count}}}"
    return [f"if {count} <= 0:", f"    raise RuntimeError(f{said!r})"]


def segment_check_lines(tape: Tape, ex: PyExpr, layer: N.Layer, spec_path: str | None, index: str | None) -> list[str]:
    """The checks of a segment's `tape` (`autodiff.loops`), after its steps; in a loop's body (`index`: the
    step's), each step where it reads a value of the loop, else once. One its numbers decide (`2 == 2`, a
    rank followed back to a declared one) is not written."""
    lines: list[str] = []
    values = {s.var for s in tape.steps} | set(tape.leaves)
    for check in tape.checks:
        if decided(check, {}) is True:
            continue
        written = with_spec_line(check_lines(check, ex, layer, count=False), 0, spec_path, check.span.line)
        if index is not None and not read_vars(check) & values:
            written = [f"if {index} == 0:", *("    " + line for line in written)]
        lines += written
    return lines


def segment_count_lines(tape: Tape, ex: PyExpr, layer: N.Layer, spec_path: str | None, index: str | None) -> list[str]:
    """The counts of a segment's chunks into a run-time number of parts, checked positive before its steps
    (whose slices divide by it; `segment_check_lines` comes after them); in a loop's body, at its first step."""
    lines: list[str] = []
    for check in tape.checks:
        if isinstance(check, PartsCheck) and (written := _chunk_count_lines(check, ex, layer)):
            written = with_spec_line(written, 0, spec_path, check.span.line)
            fixed = all(n.ref in (N.Ref.ARG, N.Ref.LET) for n in walk(check.cut) if isinstance(n, N.Name))
            once = index is not None and fixed  # a count of the step's numbers: at every step
            lines += [f"if {index} == 0:", *("    " + line for line in written)] if once else written
    return lines


def segment_checks(segments: list) -> list[N.Require]:
    """The checks of a loop plan's straight segments, loops and `if` sides (`autodiff.loops`; a loop holding
    a loop checks none)."""
    tapes = [t for seg in segments for t in (seg.sides() if isinstance(seg, Choice) else [getattr(seg, "tape", None)])]
    return [check for t in tapes if t is not None for check in t.checks]


def plan_checks(plan: Plan | None) -> list[N.Require]:
    """Every check of `plan`'s Function, on any side of its `if`s."""
    if isinstance(plan, BranchPlan):
        return plan_checks(plan.then) + plan_checks(plan.orelse)
    if isinstance(plan, LoopPlan):
        return segment_checks(plan.segments)
    return plan.tape.checks if isinstance(plan, BackwardPlan) else []


def item_check_lines(j: Join, heads: int, buffer: str | None, layer: N.Layer, spec_path: str | None) -> list[str]:
    """The check that the list `j.items` holds the item `j.item` reads (`L[-1]`, `L[0]`) before its stack
    (`heads` items appended before the loop), raising the plain module's IndexError naming the layer, the
    read and its spec line; none where the items before the loop hold it. `buffer`: the per-step buffer the
    list is a view of (no heads: empty where a loop of no steps left it None), else the list is made."""
    item = j.item
    if item is None or (item.at < heads if item.at >= 0 else -item.at <= heads):
        return []
    where = f"{layer.name}: {item.text} at {layer.path}:{item.line}: list index out of range"
    if buffer is not None:
        said = f"{where} (the loop appending to '{j.items}' ran no steps)"
        check = [f"if {buffer} is None:", f"    raise IndexError({said!r})"]
    else:
        test = f"len({j.items}) <= {item.at}" if item.at >= 0 else f"len({j.items}) < {-item.at}"
        said = f"{where} ('{j.items}' holds {{len({j.items})}} items)"
        check = [f"if {test}:", f"    raise IndexError(f{said!r})"]
    return with_spec_line(check, 1, spec_path, item.line)
