"""The autograd.Function of a `@function` layer that composes its subs' Functions (`autodiff.sub_calls`).

Its forward takes the layer's inputs, one int or bool per call that needs one (how many copies a list
has, whether an optional sub is given, how many values a composed sub takes), then every call's own
arguments besides the values it is called on, one call after another (`*members`): what the sub's
module passes to its Function's `apply`, read from the sub (a copy's from that copy). Forward runs each
call's Function's forward and returns the layer's output, then every call's outputs (so double backward
sees what each call saves). `setup_context` walks the calls again on those outputs, each through
`_SubCall` (the context the sub's setup_context writes and its backward reads; a call's outputs are as
many as its Function's `n_outputs` says, a composed call counts its own), and saves what each call saves:
forward takes no ctx, so `torch.func` transforms run it (`generate_vmap_rule`). Backward runs the calls
backwards, last first: each takes the gradient of the value it assigned, plus those of its outputs, and
adds its input gradients to the values it was called on; its arguments' gradients are those of
`members`. The module checks before `apply` what each sub's module would on the values it is called on,
where it has them (`sub_checks`): its inputs, its `require`s and its inlined subs', as records, each check
once (codegen/function_sub_checks.py); a call on a value the Function computes (a norm after a loop) is checked so in
the Function's forward, right before it, on the members the call is given (`call_checks`).

`SUB_CALL` is the helper the Function runs each call through, written once in a file that needs it.
"""

from __future__ import annotations

import ast
import re
import textwrap

from layerdsl.autodiff.inputs import called_fn_args
from layerdsl.autodiff.sub_calls import Alias, CallPlan, SubCall, function_name
from layerdsl.codegen.function_sub_checks import (
    Comment,
    Record,
    binds,
    guarded,
    printed,
    reads,
    records,
    unread_bindings_dropped,
    without_repeated_checks,
)
from layerdsl.codegen.names import FunctionNames
from layerdsl.ir import nodes as N
from layerdsl.language.naming import fresh_name
from layerdsl.language.tables import FORBIDDEN

SUB_CALL = [
    "",
    "",
    "class _SubCall:",
    '    """A sub\'s Function run inside another Function\'s: the context its setup_context writes and its',
    "    backward reads. The caller saves what it saves, and hands it back with the gradients of its",
    '    outputs."""',
    "",
    "    def __init__(self, function, needs_input_grad: tuple[bool, ...]) -> None:",
    "        self.function = function",
    "        self.needs_input_grad = needs_input_grad",
    "        self.to_save: tuple = ()",
    "        self.not_differentiable: tuple = ()",
    "        self.n_outputs = 0",
    "",
    "    def set_materialize_grads(self, value: bool) -> None:",
    "        pass  # the caller passes a gradient that is zero as None",
    "",
    "    def save_for_backward(self, *tensors) -> None:",
    "        self.to_save = tensors",
    "",
    "    def mark_non_differentiable(self, *tensors) -> None:",
    "        self.not_differentiable = tensors",
    "",
    "    def setup_context(self, args: tuple, outputs: tuple) -> tuple:",
    '        """What the call\'s setup_context keeps, given its arguments and the outputs from its own on; its',
    "        outputs. A Function that runs its subs' Functions counts its own; another says how many it",
    '        returns (`n_outputs`)."""',
    '        if getattr(self.function, "composes", False):',
    "            self.function.setup_context(self, args, outputs)",
    "        else:",
    "            self.n_outputs = self.function.n_outputs",
    "            own = outputs[: self.n_outputs]",
    "            self.function.setup_context(self, args, own if self.n_outputs > 1 else own[0])",
    "        return outputs[: self.n_outputs]",
    "",
    "    def handed_over(self) -> tuple[tuple, tuple]:",
    '        """What the call saves and the outputs it marks not differentiable, handed to the caller (which',
    '        saves and marks them): kept here as the count of those saved."""',
    "        handed = self.to_save, self.not_differentiable",
    "        self.to_save, self.not_differentiable = len(self.to_save), ()",
    "        return handed",
    "",
    "    def backward(self, saved: tuple, grad_out, grads_of_outputs: tuple) -> tuple:",
    '        """The gradients of the call\'s inputs, given its saved tensors, that of the value it assigned',
    '        (`grad_out`) and those of its outputs."""',
    "        given = (_added(grad_out, grads_of_outputs[0]), *grads_of_outputs[1:])",
    "        if all(g is None for g in given):  # zero: so are its inputs' gradients",
    "            return (None,) * len(self.needs_input_grad)",
    "        self.saved_tensors = saved",
    "        grads = self.function.backward(self, *given)",
    "        del self.saved_tensors",
    "        return grads if isinstance(grads, tuple) else (grads,)",
    "",
    "",
    "def _as_tuple(outputs) -> tuple:",
    '    """A Function\'s forward\'s outputs: one is returned as it is."""',
    "    return outputs if isinstance(outputs, tuple) else (outputs,)",
    "",
    "",
    "def _added(a, b):",
    '    """The sum of two gradients, either of which may be None (zero)."""',
    "    return a if b is None else b if a is None else a + b",
]


def count_params(plan: CallPlan, taken: set[str]) -> dict[int, str]:
    """The Function's int or bool input that says how each call runs (by the call's id; none where it runs
    one way), named around `taken`: how many copies a list has, whether an optional sub is given, how many
    members a composed sub takes. Calls of one sub share theirs."""
    names: dict[int, str] = {}
    by_sub: dict[tuple[str, bool], str] = {}
    for call in plan.calls:
        if not (call.copies or call.optional or call.composed is not None):
            continue
        key = (call.sub, call.optional)
        if key not in by_sub:
            by_sub[key] = fresh_name(f"{call.sub}_given" if call.optional else f"{call.sub}_count", taken)
            taken.add(by_sub[key])
        names[id(call)] = by_sub[key]
    return names


def emit_composed_function(emitter, plan: CallPlan) -> dict:
    """The `<Name>Function` of a layer whose forward calls its subs' Functions, as lines. What it adds for
    itself (its locals, counts and ends) is named around the forward's values and their gradients."""
    layer = plan.layer
    name = function_name(layer.name)
    assigned = list(dict.fromkeys(s.target for s in plan.steps))  # in order: a set's varies between runs
    values = {*plan.inputs, *assigned}
    names = FunctionNames(
        values | {f"grad_{v}" for v in values} | {function_name(c.layer.name) for c in plan.calls}, []
    )
    t = {hint: names.local(hint) for hint in _LOCALS}
    t["inputs"], t["cls"] = names.inputs, names.cls
    count_of = count_params(plan, names.taken)
    counts = list(dict.fromkeys(count_of.values()))
    end_of = {id(call): names.local(f"{call.sub}_end") for call in plan.calls}
    fixed = len(plan.inputs) + len(counts)
    sizes = {id(call): member_count(emitter, call) for call in plan.calls}
    members, k = t["members"], t["k"]

    def ends(read: str) -> list[str]:
        lines, start = [], "0"
        for call in plan.calls:
            size = sizes[id(call)]
            count = count_of.get(id(call))
            if call.copies:
                n = f"{size} * {read}{count}"
            elif call.optional:
                n = f"({size} if {read}{count} else 0)"
            else:
                n = f"{read}{count}" if count is not None else str(size)
            end = end_of[id(call)]
            lines.append(f"{end} = {n if start == '0' else start if n == '0' else f'{start} + {n}'}")
            start = end
        return lines

    def starts(call: SubCall) -> str:
        j = plan.calls.index(call)
        return "0" if j == 0 else end_of[id(plan.calls[j - 1])]

    def members_of(call: SubCall) -> tuple[str, str]:
        """Where a call's members start and end among `members` (a copy's: the k-th slice of its list's)."""
        start, end = starts(call), end_of[id(call)]
        return _copy_slice(start, sizes[id(call)], k) if call.copies else (start, end)

    def value_needs(v: str | None) -> str:
        if v is None:
            return "False"
        if v in plan.inputs and v not in assigned:
            return f"ctx.needs_input_grad[{plan.inputs.index(v)}]"
        return "True"

    subs = ", ".join(f"{function_name(c.layer.name)} for `{c.sub}`" for c in _once(plan.calls))
    text = f"`{layer.name}` as an autograd.Function that runs its subs' Functions ({subs}); backward runs"
    doc = textwrap.wrap(f"{text} their backwards, last first.", 104)
    doc[0], doc[-1] = f'"""{doc[0]}', f'{doc[-1]}"""'
    params = [*plan.inputs, *counts, f"*{members}"]
    outputs, outs, call_, calls, needs_ = t["outputs"], t["outs"], t["call"], t["calls"], t["needs"]
    fwd = [*ends(""), f"{outputs} = []"]
    setup = [
        f"{', '.join(params)} = {t['inputs']}",
        "ctx.set_materialize_grads(False)",
        f"{needs_} = ctx.needs_input_grad[{fixed}:]  # the members'",
        *(f"ctx.{c} = {c}" for c in counts),
        *ends(""),
        f"{calls} = []",
        f"{outputs} = {t['results']}[1:]  # each call's, in order",
    ]
    known = set(plan.inputs)  # the values the module has before apply, whose calls it checks (`sub_checks`)
    for step in plan.steps:
        if isinstance(step, Alias):
            fwd.append(f"{step.target} = {step.source}")
            setup.append(f"{step.target} = {step.source}")
            (known.add if step.source in known else known.discard)(step.target)
            continue
        start, end = members_of(step)
        computed = any(v is not None and v not in known for v in step.inputs)
        known.discard(step.target)
        checked = []
        if computed and not step.copies and step.composed is None:  # the module could not check it
            said = f"# {step.layer.name}'s checks, as its module runs them on the values `{step.sub}` is called on"
            checked = printed(_said(said, call_checks(emitter, step, members, start, names)))
        passed = ", ".join(v if v is not None else "None" for v in step.inputs)
        needs = ", ".join(value_needs(v) for v in step.inputs)
        function = function_name(step.layer.name)
        ran = [
            *checked,
            f"{outs} = _as_tuple({function}.forward({passed}, *{members}[{_slice(start, end)}]))",
            f"{outputs} += {outs}",
            f"{step.target} = {outs}[0]",
        ]
        kept = [
            f"{call_} = _SubCall({function}, ({needs}, *{needs_}[{_slice(start, end)}]))",
            f"{outs} = {call_}.setup_context(({passed}, *{members}[{_slice(start, end)}]), {outputs})",
            f"{outputs} = {outputs}[len({outs}) :]",
            f"{calls}.append({call_})",
            f"{step.target} = {outs}[0]",
        ]
        for lines, body in ((fwd, ran), (setup, kept)):
            if step.copies:
                lines += [f"for {k} in range({count_of[id(step)]}):", *_indent(body)]
            elif step.optional:
                lines += [f"if {count_of[id(step)]}:", *_indent(body)]
            else:
                lines += body
    fwd.append(f"return {plan.result}, *{outputs}")
    saved, handed = t["saved"], t["handed"]
    setup += [
        f"ctx.calls = {calls}",
        "# run as another's call (`_SubCall`), it was given the outputs from its own on: those it took",
        f"ctx.n_outputs = len({t['results']}) - len({outputs})",
        f"{handed} = [{call_}.handed_over() for {call_} in {calls}]",
        f"ctx.save_for_backward(*[{t['t']} for {saved}, _ in {handed} for {t['t']} in {saved}])",
        f"ctx.mark_non_differentiable(*[{t['t']} for _, {t['marked']} in {handed} for {t['t']} in {t['marked']}])",
    ]

    grads = {v: f"grad_{v}" for v in [*plan.inputs, *assigned]}
    of_outputs, grad_members, grads_ = t["grads_of_outputs"], t["grad_members"], t["grads"]
    call_saved, call_grads = t["call_saved"], t["call_grads"]
    bwd = [
        f"{saved} = ctx.saved_tensors",
        "# each call's saved tensors and the gradients of its outputs, in order",
        f"{handed} = []",
        f"for {call_} in ctx.calls:",
        f"    {handed}.append(({saved}[: {call_}.to_save], {of_outputs}[: {call_}.n_outputs]))",
        f"    {saved}, {of_outputs} = {saved}[{call_}.to_save :], {of_outputs}[{call_}.n_outputs :]",
        *ends("ctx."),
        f"{grad_members} = [None] * {end_of[id(plan.calls[-1])]}",
        " = ".join([grads[v] for v in grads if v != plan.result] + ["None"]),
        f"{grads[plan.result]} = grad",
        f"{calls} = list(zip(ctx.calls, {handed}))",
    ]
    for j, step in reversed(list(enumerate(plan.steps))):
        # the gradient of the value a step assigns starts again before it, where a step before reads it
        before = {*plan.inputs, *(v for s in plan.steps[:j] for v in _mentioned(s))}
        if isinstance(step, Alias):
            bwd.append(f"{grads[step.source]} = _added({grads[step.source]}, {grads[step.target]})")
            if step.target in before and step.target != step.source:
                bwd.append(f"{grads[step.target]} = None")
            continue
        start, end = members_of(step)
        n = len(step.inputs)
        body = [
            f"{call_}, ({call_saved}, {call_grads}) = {calls}.pop()",
            f"{grads_} = {call_}.backward({call_saved}, {grads[step.target]}, {call_grads})",
        ]
        restarted = step.target not in before  # nothing before reads it: its gradient is not read again
        for i, v in enumerate(step.inputs):
            if v is None:
                continue
            if v == step.target and not restarted:
                body.append(f"{grads[v]} = {grads_}[{i}]")
                restarted = True
            else:
                body.append(f"{grads[v]} = _added({grads[v]}, {grads_}[{i}])")
        if not restarted:
            body.insert(2, f"{grads[step.target]} = None")
        body.append(f"{grad_members}[{_slice(start, end)}] = {grads_}[{n}:]")
        if step.copies:
            bwd += [f"for {k} in reversed(range(ctx.{count_of[id(step)]})):", *_indent(body)]
        elif step.optional:
            bwd += [f"if ctx.{count_of[id(step)]}:", *_indent(body)]
        else:
            bwd += body
    returned = [grads[v] for v in plan.inputs] + ["None"] * len(counts) + [f"*{grad_members}"]
    bwd.append(f"return {', '.join(returned)}")

    cls, active, compiling = t["cls"], t["transforms_active"], t["compiling"]
    lines = [
        "",
        "",
        f"class {name}(torch.autograd.Function):",
        *(f"    {line}" for line in doc),
        "",
        "    generate_vmap_rule = True",
        "    composes = True  # its setup_context takes the outputs from its own on (`_SubCall`)",
        "",
        "    @staticmethod",
        f"    def forward({', '.join(params)}) -> tuple[Tensor, ...]:",
        *_indent(fwd, 2),
        "",
        "    @staticmethod",
        f"    def setup_context(ctx, {t['inputs']}, {t['results']}) -> None:",
        *_indent(setup, 2),
        "",
        "    @staticmethod",
        f"    def backward(ctx, grad, *{of_outputs}):",
        *_indent(bwd, 2),
        "",
        "    @classmethod",
        f"    def apply({cls}, {', '.join(params)}):",
        "        # Function.apply binds its arguments with inspect.signature on every call (a Function with a",
        "        # setup_context), these many: go straight to the C++ entry point unless a torch.func transform",
        "        # or torch.compile needs the full path. A torch without either probe takes the full path.",
        f'        {active} = getattr(torch._C, "_are_functorch_transforms_active", None)',
        f'        {compiling} = getattr(torch.compiler, "is_compiling", None)',
        f"        if None in ({active}, {compiling}) or {active}() or {compiling}():",
        f"            return super().apply({', '.join(params)})",
        f"        return super(torch.autograd.Function, {cls}).apply({', '.join(params)})",
    ]
    calls_of = sorted({c.layer.name for c in plan.calls})
    return {
        "name": name,
        "lines": lines,
        "n_outputs": 1,
        "extra": [],
        "updates": [],
        "composes": True,
        "calls": calls_of,
    }


# The locals the composed Function's methods use, each named around the forward's values
_LOCALS = ["members", "needs", "outputs", "outs", "call", "calls", "k", "saved", "handed", "t", "marked"]
_LOCALS += ["grads", "grads_of_outputs", "grad_members", "call_saved", "call_grads", "results"]
_LOCALS += ["transforms_active", "compiling"]


def member_count(emitter, call: SubCall) -> int:
    """How many arguments a call of a sub that composes nothing takes besides its values (0: composed)."""
    if call.composed is not None:
        return 0
    return len(sub_apply_args(emitter, call, "self"))


def sub_apply_args(emitter, call: SubCall, instance: str) -> list[str]:
    """What the sub's module passes to its Function besides the values it is called on, read from
    `instance` (`self.norm`, `layer`)."""
    sub = emitter.sub_emitter(call.layer).function_emitter
    args = sub.function_apply_args()[len(call.inputs) :]
    return [re.sub(r"\bself\.", f"{instance}.", a) for a in args]


def module_call(
    emitter, plan: CallPlan, instance: str, prefix: str, taken: set[str] | None = None
) -> tuple[list[str], list[str]]:
    """The lines that gather the Function's arguments besides the layer's inputs from `instance` (names
    prefixed `prefix`, around `taken`: the layer's names by default), and those arguments: the counts (one
    per sub), then each call's members, starred (a sub's gathered once)."""
    if taken is None:
        taken = spec_names(plan.layer)
    gathered_of = {c.sub: fresh_name(f"{prefix}{c.sub}", taken) for c in plan.calls}
    taken |= set(gathered_of.values())
    lines: list[str] = []
    counts: dict[tuple[str, bool], str] = {}
    parts: list[str] = []
    done: set[str] = set()
    for call in plan.calls:
        held = f"{instance}.{call.sub}"
        gathered = gathered_of[call.sub]
        takes = call.composed is not None or member_count(emitter, call) > 0  # else its values only
        parts += [f"*{gathered}"] if takes else []
        if call.sub in done:
            continue
        done.add(call.sub)
        if call.copies:
            args = sub_apply_args(emitter, call, "layer")
            lines += [f"{gathered} = [a for layer in {held} for a in ({', '.join(args)},)]"] if takes else []
            counts[(call.sub, False)] = f"len({held})"
        elif call.optional:
            args = sub_apply_args(emitter, call, held)
            lines += [f"{gathered} = ({', '.join(args)},) if {held} is not None else ()"] if takes else []
            counts[(call.sub, True)] = f"{held} is not None"
        elif call.composed is not None:
            inner_lines, inner = module_call(emitter, call.composed, held, f"{gathered}_", taken)
            lines += inner_lines
            lines.append(f"{gathered} = [{', '.join(inner)}]")
            counts[(call.sub, False)] = f"len({gathered})"
        elif takes:
            args = sub_apply_args(emitter, call, held)
            lines.append(f"{gathered} = ({', '.join(args)},)")
    return lines, [*counts.values(), *parts]


def call_checks(emitter, call: SubCall, members: str, start: str, names: FunctionNames) -> list[Record]:
    """What the module of the layer `call` calls checks before its Function's apply (`checks_before_apply`),
    on the values the call passes and the members it is given (`self.d`: `members[start + k]`, the k-th of
    them), as the composed Function's forward writes them before the call; the names the checks bind are
    named around `names`. A check reading what the Function is not given (another of the sub's attributes)
    is left out."""
    sub = emitter.sub_emitter(call.layer)
    lines = sub.checks_before_apply(sub.module_spelling())[0]
    if not lines:
        return []
    taken = sub.function_emitter.function_apply_args()[len(call.inputs) :]
    member = {a[len("self.") :]: k for k, a in enumerate(taken) if re.fullmatch(r"self\.\w+", a)}
    inputs = {i.name: v for i, v in zip(sub.forward.inputs, call.inputs)}
    tree = ast.parse("\n".join(lines))
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    renamed = {n: names.local(n) for n in sorted(bound)}

    class Renamed(ast.NodeTransformer):
        unknown = False

        def visit_Name(self, node: ast.Name) -> ast.expr:
            if node.id in renamed:
                return ast.Name(renamed[node.id], node.ctx)
            if node.id in inputs:
                value = inputs[node.id]
                return ast.Name(value, node.ctx) if value is not None else ast.Constant(None)
            return node

        def visit_Attribute(self, node: ast.Attribute) -> ast.expr:
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                if node.attr not in member:
                    self.unknown = True
                    return node
                k = member[node.attr]
                index = str(k) if start == "0" else f"{start} + {k}" if k else start
                return ast.parse(f"{members}[{index}]", mode="eval").body
            self.generic_visit(node)
            return node

    out: list[Record] = []
    for stmt in tree.body:
        rename = Renamed()
        written = rename.visit(stmt)
        if not rename.unknown:
            out += records([_double_quoted(line) for line in ast.unparse(written).splitlines()])
    return out


def _said(comment: str, checks: list[Record]) -> list[Record]:
    """`checks` after `comment`, where there are any."""
    return [Comment(comment), *checks] if checks else []


def _double_quoted(line: str) -> str:
    """`line` (as `ast.unparse` writes it) with its strings in double quotes, as black writes them: where it
    holds no `"`, each `'` in it delimits a string."""
    return line if '"' in line else line.replace("'", '"')


def spec_names(layer: N.Layer) -> set[str]:
    """The names the module's forward of `layer` may read besides those it adds: its inputs, lets, dims and
    locals, and what the generated code names itself (its arguments, members and subs it reads on `self`)."""
    assert layer.forward is not None
    taken = {i.name for i in layer.forward.inputs} | {l.name for l in layer.lets} | set(layer.symbolic_dims)
    taken |= {s.target for s in layer.forward.body if isinstance(s, N.Assign)}
    return taken | FORBIDDEN


def callable_tests(plan: CallPlan, instance: str) -> list[str]:
    """`callable(layer.activation)`: a sub's callable argument, which its Function does not take (autograd
    derives the plain forward then)."""
    tests = []
    for call in plan.calls:
        held = f"{instance}.{call.sub}"
        if call.composed is not None:
            tests += callable_tests(call.composed, held)
            continue
        for a in called_fn_args(call.layer):
            if call.copies:
                tests.append(f"any(callable(layer.{a}) for layer in {held})")
            elif call.optional:
                tests.append(f"{held} is not None and callable({held}.{a})")
            else:
                tests.append(f"callable({held}.{a})")
    return tests


def composed_forward(emitter, plan: CallPlan, functional) -> list[str]:
    """The module's forward: its inputs checked, each call's arguments gathered from its subs, the Function
    applied; the plain forward where a sub holds a callable argument."""
    spelling = emitter.module_spelling()
    lines, args = module_call(emitter, plan, "self", "")
    call = f"{function_name(plan.layer.name)}.apply({', '.join([*plan.inputs, *args])})[0]"
    checks = records(emitter.shape_checks(spelling, on_self=True, bind=False))
    checks += sub_checks(emitter, plan, "self", {v: v for v in plan.inputs}, set(plan.inputs))
    rest = ["# what each sub's module passes its Function besides the values it is called on", *lines]
    rest += emitter.output_checks([call], spelling, on_self=True, bind=False) or [f"return {call}"]
    checks = unread_bindings_dropped(without_repeated_checks(checks), reads(records(rest)))
    body = [*printed(checks), *rest]
    tests = callable_tests(plan, "self")
    if not tests:
        return body
    why = "# a callable has no derivative the Function knows: autograd derives this forward"
    return [why, f"if {' or '.join(tests)}:", *_indent(emitter.plain_forward(functional)), *body]


def sub_checks(emitter, plan: CallPlan, instance: str, values: dict[str, str], taken: set[str]) -> list[Record]:
    """What the modules of the subs `plan` calls check (their inputs, their `require`s and their inlined
    subs'), on the values each is called on, where the module has those before `apply`: a call whose values
    are each an input of the layer (`values`: how the module spells each value so known), a list's first copy
    (where the list has one; a later copy takes what the one before returned, and its checks are not run),
    and within a composed call, its own calls so. `taken`: the names the module's forward reads after these
    checks (its inputs), which a check neither binds nor names a sub's input by. The subs' checks read what
    their modules hold on `instance` (`self.blocks[0].d` for `self.d`)."""
    values = dict(values)
    out: list[Record] = []
    for step in plan.steps:
        if isinstance(step, Alias):
            if step.source in values:
                values[step.target] = values[step.source]
            else:
                values.pop(step.target, None)
            continue
        known = [values.get(v) if v is not None else None for v in step.inputs]
        values.pop(step.target, None)
        passed = [p for p in known if p is not None]
        if len(passed) < len(known):  # a value the Function computes (or none)
            continue
        held = f"{instance}.{step.sub}" + ("[0]" if step.copies else "")
        sub = emitter.sub_emitter(step.layer)
        names = [i.name for i in sub.forward.inputs]
        named = [f"{n} = {p}" for n, p in zip(names, passed) if n != p]
        if step.composed is not None:  # its own calls' checks read what it holds on `held`
            lines = sub.shape_checks(sub.module_spelling(), on_self=True, bind=False)
            checks = records([*named, *(re.sub(r"\bself\.", f"{held}.", line) for line in lines)])
            checks += sub_checks(emitter, step.composed, held, dict(zip(names, passed)), {*taken, *names})
        else:
            lines = sub.checks_before_apply(sub.module_spelling())[0]
            checks = records([*named, *(re.sub(r"\bself\.", f"{held}.", line) for line in lines)])
        if not checks or binds(checks) & taken:
            continue
        said = f"# {step.layer.name}'s checks, as its module runs them on the values "
        said += "the first copy is called on" if step.copies else f"`{step.sub}` is called on"
        guard = f"len({instance}.{step.sub})" if step.copies else f"{held} is not None" if step.optional else None
        out += [Comment(said), *([guarded(guard, checks)] if guard else checks)]
    return out


def _slice(start: str, end: str) -> str:
    return f": {end}" if start == "0" else f"{start} : {end}"


def _copy_slice(start: str, size: int, k: str) -> tuple[str, str]:
    """Where copy `k`'s members are among `members`, its list's starting at `start`."""
    if start == "0":
        return f"{size} * {k}", f"{size} * ({k} + 1)"
    return f"{start} + {size} * {k}", f"{start} + {size} * ({k} + 1)"


def _mentioned(step: Alias | SubCall) -> set[str]:
    if isinstance(step, Alias):
        return {step.target, step.source}
    return {step.target, *(v for v in step.inputs if v is not None)}


def _once(calls: list[SubCall]) -> list[SubCall]:
    """The calls, each sub's first only."""
    return list({c.sub: c for c in reversed(calls)}.values())[::-1]


def _indent(lines: list[str], n: int = 1) -> list[str]:
    return [("    " * n + line) if line else "" for line in lines]
