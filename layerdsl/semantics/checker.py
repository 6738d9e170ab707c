"""Semantic checks: names, scopes, types, members, initialisers, subs and examples.

Every independent problem is reported; nothing here stops at the first error. Names are resolved with
the rules of `scopes` and annotated in place (`Name.ref`); expressions get their kind (`Expr.kind`)
for the emitter and the derivation; each layer gets its `symbolic_dims`.
"""

from __future__ import annotations

import builtins
import keyword
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from layerdsl.diagnostics import Reporter, SpecError, did_you_mean
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import Kind, Ref
from layerdsl.ir.printer import members_present, members_present_otherwise, spec_text
from layerdsl.ir.visit import statements, sub_expressions, walk
from layerdsl.language.naming import snake_case
from layerdsl.language.ops import CALLABLE, OPS, Op
from layerdsl.language.tables import (
    ARG_TYPES,
    CONSTANTS,
    FORBIDDEN,
    GENERATED_BUILTINS,
    GENERATED_IMPORTS,
    GENERATED_METHODS,
    INITS,
    NN_LAYERS,
    NN_MODULE_ATTRIBUTES,
    OP_ALIASES,
    PYTHON_KEYWORDS,
    RESERVED,
)
from layerdsl.semantics.evaluate import (
    NotConstant,
    evaluate,
    example_choices,
    example_seeds,
    example_values,
    mark_counts,
    seed_differences,
)
from layerdsl.semantics.scopes import CONSTRUCTION, Namespace, Scope, folder_of, is_new_dim, merge_branches
from layerdsl.semantics.shape_check import LayerShapes, check_layer_shapes


@dataclass
class Program:
    """Every checked layer of one run, by name (a name's run-wide meaning: `Namespace.primary`), with the
    file it came from; `seen_from` gives the layers as one spec's folder sees them."""

    files: list[N.SpecFile]
    layers: dict[str, N.Layer] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)  # layers lost to a syntax error: no follow-on errors
    # Per file: the names its generated module defines or imports (classes, functional forms, Functions).
    module_names: dict[str, dict[str, str]] = field(default_factory=dict)
    # Per layer (by `key`): its forward's inferred shapes and the declared outputs left to a run-time check.
    shapes: dict[str, LayerShapes] = field(default_factory=dict)
    namespace: Namespace | None = None  # None: a program built by hand, with one namespace

    def seen_from(self, path: str) -> Program:
        """This program with `layers` as the spec at `path` sees them (its folder's namespace); the other
        tables are shared."""
        if self.namespace is None:
            return self
        return replace(self, layers=self.namespace.visible(path))

    def key(self, layer: N.Layer) -> str:
        """The key of `layer` in `shapes` and in the backward plans (its name, unless another folder's layer
        holds the name run-wide)."""
        return layer.name if self.namespace is None else self.namespace.key(layer)

    def ambiguity(self, name: str, path: str) -> tuple[str, str] | None:
        return None if self.namespace is None else self.namespace.ambiguity(name, path)


def check_program(files: list[N.SpecFile]) -> Program:
    """Checks every layer of one run; raises SpecError with every problem found, including those the
    parser kept (`SpecFile.problems`)."""
    namespace = Namespace(layer for f in files for layer in f.layers)
    program = Program(files, dict(namespace.primary), namespace=namespace)
    reporters = {f.path: Reporter(f.path, f.source) for f in files}
    for f in files:
        program.broken |= f.broken
        for layer in f.layers:
            other = namespace.by_name[layer.name][folder_of(layer.path)]
            if other is not layer:
                reporters[f.path].error(
                    layer.span,
                    f"layer '{layer.name}' is defined twice: here and at {other.path}:{other.span.line}:{other.span.col}",
                    "the layers of one folder share one namespace: rename one of them, or move it to another folder",
                )
    check_module_names(files, reporters)
    for f in files:
        seen = program.seen_from(f.path)
        check_generated_names(f, seen, reporters[f.path])
        for layer in f.layers:
            LayerChecker(layer, reporters[f.path], seen).check()
    check_containment_cycles(files, program, reporters)
    for f in files:  # after every layer is checked: a sub's declared shapes are read from its layer
        found = [*f.problems, *reporters[f.path].diagnostics]
        seen = program.seen_from(f.path)
        for layer, extent in zip(f.layers, _extents(f.layers)):
            if not any(_inside(d.span, extent) for d in found):  # no follow-on shape errors
                program.shapes[program.key(layer)] = check_layer_shapes(layer, seen.layers, reporters[f.path])
    diagnostics = []
    for f in files:
        parsed = list(f.problems)
        # A construct the parser already reported gets no second, follow-on error at the same place.
        checked = [d for d in reporters[f.path].diagnostics if not any(_inside(d.span, p.span) for p in parsed)]
        diagnostics += parsed + checked
    if diagnostics:
        raise SpecError(diagnostics)
    return program


def check_containment_cycles(files: list[N.SpecFile], program: Program, reporters: dict[str, Reporter]) -> None:
    """A layer that builds, through its subs' subs, a layer that builds it (`A` holds a `B`, which holds an
    `A`) is an error at each sub of the cycle: building either would never end (a layer containing itself
    directly is `LayerChecker.check_sub_call`'s error)."""
    built: dict[N.Layer, list[tuple[N.Call, N.Layer]]] = {}
    for f in files:
        visible = program.seen_from(f.path).layers
        for layer in f.layers:
            calls = [c for s in layer.subs if s.given is None for c in walk(s.call) if isinstance(c, N.Call)]
            built[layer] = [(c, visible[c.func]) for c in calls if visible.get(c.func) not in (None, layer)]
    for f in files:
        for layer in f.layers:
            for call, target in built[layer]:
                path = _path_back(target, layer, built, {target})
                if path is not None:
                    cycle = " → ".join(x.name for x in [layer, target, *path])
                    reporters[f.path].error(
                        call.func_span,
                        f"layer '{layer.name}' would contain itself: {cycle}",
                        "a layer cannot be built from layers that build it",
                    )


def _path_back(start: N.Layer, goal: N.Layer, built: dict, seen: set) -> list[N.Layer] | None:
    """The layers from `start`'s subs to `goal` (ending with it), or None when `start` never builds `goal`."""
    for _, target in built.get(start, []):
        if target is goal:
            return [goal]
        if target not in seen:
            seen.add(target)
            if (rest := _path_back(target, goal, built, seen)) is not None:
                return [target, *rest]
    return None


def check_module_names(files: list[N.SpecFile], reporters: dict[str, Reporter]) -> None:
    """Each spec file becomes a Python module named after it (`specs/a/b.layer` → `a/b.py` when the folder
    `specs` is given, `b.py` for the file alone): the names must make importable, distinct modules."""
    seen: dict[tuple[str, ...], str] = {}
    for f in files:
        path = PurePosixPath(f.path)
        parts = path.with_suffix("").parts
        module = parts[1:] if len(parts) > 1 else parts
        start = N.Span.point(1, 1)
        for part in module if not path.is_absolute() else module[-1:]:  # (an editor may use absolute paths)
            if keyword.iskeyword(part) or part in ("__init__", "__main__"):
                why = "a Python keyword" if keyword.iskeyword(part) else "a name Python packages use"
                reporters[f.path].error(
                    start, f"'{part}' cannot name a generated module: it is {why}", "rename the spec file or folder"
                )
        key = tuple(unicodedata.normalize("NFKC", part) for part in module)  # as Python reads identifiers
        if key in seen:
            reporters[f.path].error(
                start, f"this spec and {seen[key]} would both generate {'/'.join(key)}.py", "rename one of them"
            )
        seen.setdefault(key, f.path)
    for key, spec in seen.items():  # `a.layer` beside a folder `a/` of specs: `a.py` beside the package `a/`
        inside = next((p for k, p in seen.items() if len(k) > len(key) and k[: len(key)] == key), None)
        if inside is not None:
            reporters[spec].error(
                N.Span.point(1, 1),
                f"this spec would generate {'/'.join(key)}.py beside the package {'/'.join(key)}/ of {inside}",
                "rename the spec file or the folder",
            )


def check_generated_names(f: N.SpecFile, program: Program, r: Reporter) -> None:
    """Besides its class, a layer generates a functional form (`my_layer`) and, with @function, a
    `MyLayerFunction` class: these must not clash with each other, with another layer, or with Python."""
    owner: dict[str, N.Layer] = {}  # generated name -> the layer of this file that generates it
    reported: set[frozenset[str]] = set()
    for layer in f.layers:
        if program.layers.get(layer.name) is not layer or name_problem(layer.name):
            continue  # reported already
        functional = snake_case(layer.name)
        if keyword.iskeyword(functional) or functional in GENERATED_MODULE_NAMES:
            why = "a Python keyword" if keyword.iskeyword(functional) else "used by the generated code"
            r.error(
                layer.span,
                f"layer '{layer.name}' would get the functional form '{functional}', which is {why}",
                "choose another name",
            )
        generated = [layer.name, functional] + ([f"{layer.name}Function"] if layer.is_function else [])
        shadowing = next((g for g in generated if g in PYTHON_BUILTINS and g not in GENERATED_MODULE_NAMES), None)
        if shadowing is not None:  # a module-level name of the generated code shadowing a builtin
            r.error(
                layer.span,
                f"layer '{layer.name}' would generate '{shadowing}', which would shadow Python's builtin '{shadowing}'",
                "choose another name",
            )
        for name in generated:
            other = owner.get(name)
            if other is None and name != layer.name and name in program.layers:
                other = program.layers[name]
            if other is not None and other is not layer and frozenset((layer.name, other.name)) not in reported:
                reported.add(frozenset((layer.name, other.name)))
                r.error(
                    layer.span,
                    f"layer '{layer.name}' would generate '{name}', which clashes with layer '{other.name}'",
                    f"rename one of them (layer '{other.name}' is at {other.path}:{other.span.line}:{other.span.col})",
                )
                break
        for name in generated:
            owner.setdefault(name, layer)
    names = program.module_names.setdefault(f.path, {})
    for name, layer in owner.items():
        names[name] = layer.name
    for layer in f.layers:  # layers of other files used as subs are imported by name
        for sub in layer.subs:
            for node in walk(sub.call):
                if (
                    isinstance(node, N.Call)
                    and node.func in program.layers
                    and program.layers[node.func].path != f.path
                ):
                    names.setdefault(node.func, node.func)


# Module-level names of a generated file (imports and built-ins its code calls).
GENERATED_MODULE_NAMES = GENERATED_IMPORTS | GENERATED_BUILTINS
PYTHON_BUILTINS = frozenset(n for n in dir(builtins) if not n.startswith("_"))
# What to write instead of an index of the wrong kind, by its kind.
INDEX_HINTS = {
    Kind.LIST: "for several entries, a slice or an integer tensor input (`x[:, 0:6:2]`, `idx: long[K]`), or"
    " single picks joined by `stack`",
    Kind.FLOAT: "an int: `n // 2` (not `n / 2`)",
    Kind.BOOL: "for a new axis, `x[:, none]`; to pick by a condition, a bool tensor mask",
}


def _extents(layers: list[N.Layer]) -> list[N.Span]:
    """Where each layer of a file is: from its name to the next layer's name (or the end of the file)."""
    ends = [(nxt.span.line, nxt.span.col) for nxt in layers[1:]] + [(1 << 30, 0)]
    return [N.Span(layer.span.line, layer.span.col, line, col) for layer, (line, col) in zip(layers, ends)]


def _inside(span: N.Span, outer: N.Span) -> bool:
    return (outer.line, outer.col) <= (span.line, span.col) < (outer.end_line, outer.end_col)


def _private_buffer_name(name: str) -> bool:
    """`_random_samples`: one `_`, then a lowercase name, and none of the generated code's own `_` names."""
    body = name[1:]
    own = body == "reverse" or (body.startswith("out") and body[3:].isdigit())
    return not own and body[:1].isalpha() and body.islower() and body.replace("_", "").isalnum()


def name_problem(
    name: str, arg: bool = False, member: bool = False, private: bool = False
) -> tuple[str, str | None] | None:
    """Why `name` cannot name something in a spec, with a hint; None when it can. An argument (`arg`) may
    share an operation's name, as torch's `dropout` does: a call is the operation, a name the argument.
    A param, buffer or sub (`member`) may too, as torch's `self.norm` and `self.dropout` do: it hides the
    operation in its layer (`norm(x)` calls the sub). A tensor argument (`private`) may start with one `_`,
    as torch's private `_random_samples` does: it names the buffer, and so the state_dict key."""
    if name in RESERVED:
        return f"'{name}' is a reserved word", "choose another name"
    if name in ("True", "False", "None"):
        return f"'{name}' cannot be a name", f"did you mean '{name.lower()}'?"
    if name.startswith("_") and not (private and _private_buffer_name(name)):
        hint = "only a tensor argument may, with one `_`: `_random_samples: tensor? = none`" if arg else None
        return f"names may not start with '_': '{name}'", hint
    if name in PYTHON_KEYWORDS:
        return f"'{name}' is a Python keyword and cannot be a name", "choose another name"
    if name in FORBIDDEN:
        return f"'{name}' is used by the generated code and cannot be a name", "choose another name"
    if (name in CALLABLE or name in OPS) and not ((arg or member) and name in OPS):
        return f"'{name}' is a built-in operation and cannot be a name", "choose another name"
    if name in ARG_TYPES:
        return f"'{name}' is a type and cannot be a name", "choose another name"
    return None


class LayerChecker:
    def __init__(self, layer: N.Layer, reporter: Reporter, program: Program):
        self.layer = layer
        self.r = reporter
        self.program = program
        self.scope = Scope()  # the names visible in forward before its statements
        self.kinds: dict[str, Kind] = {}  # name -> value kind
        self.dims: list[str] = []  # symbolic dims, in order of first appearance
        self.optional: set[str] = set()
        self.maybe_none: set[str] = set()  # `T?` arguments
        self.maybe_ints: set[str] = set()  # inputs that may be a tuple of ints (`lengths: long[N] | ints`)
        self.not_none: set[str] = set()  # `T?` arguments known not to be none here (`if x != none { ... }`)
        self.not_strings: dict[str, set[str]] = {}  # an fn argument's strings it is known not to be here
        self.present: set[str] = set()  # optional members known to exist here (`if track_running_stats { ... }`)
        self.partly_bound: set[str] = set()  # locals bound on some paths of an `if` only
        self.index_ranks: dict[str, int] = {}  # local -> rank, for locals an index statement binds
        self.loop_vars: set[str] = set()  # the `for` variables of the loops around the statement checked
        self.loop_bound: set[str] = set()  # locals first bound in a loop body (not bound after it)
        self.unpacking: N.Expr | None = None  # the value of the `h, c = hx` being checked (it may be a tuple)

    # ------------------------------------------------------------ layer level

    def check(self) -> None:
        layer = self.layer
        self.check_name(layer.name, layer.span, "layer")
        self.check_decorators()
        self.check_args()
        self.check_members()
        mark_counts(layer)  # the int lets that are counts, before examples compute with them
        self.mark_sub_calls()
        forward_locals = self.check_forward(layer.forward) if layer.forward is not None else None
        if layer.backward is not None:
            self.check_backward(layer.backward, forward_locals)
        mark_counts(layer)  # and the int locals
        self.check_examples()
        layer.symbolic_dims = list(self.dims)

    def mark_sub_calls(self) -> None:
        """A call of one of the layer's subs calls the sub, even where an operation has its name."""
        subs = {s.name for s in self.layer.subs}
        if self.layer.forward is None or not subs:
            return
        for stmt in statements(self.layer.forward.body):
            for node in walk(stmt):
                if isinstance(node, N.Call) and node.func in subs:
                    node.sub = True

    def check_name(self, name: str, span: N.Span, what: str) -> bool:
        member = what in (Ref.PARAM, Ref.BUFFER, Ref.SUB)
        private = what == Ref.ARG and (arg := self.layer.arg(name)) is not None and arg.base_type == "tensor"
        problem = name_problem(name, arg=what == Ref.ARG, member=member, private=private)
        problem = problem or self.generated_name_problem(name, what)
        if problem:
            self.r.error(span, problem[0], problem[1])
            return False
        module = self.program.module_names.get(self.layer.path, {})
        # An argument is a parameter only of functions that never call a functional form (`__init__`, the
        # functional forms, a Function's methods), so it may share one's name: Threshold's `threshold`.
        functional_only = what == "arg" and name in module and name not in (module[name], f"{module[name]}Function")
        if what in ("arg", "let", "input", "dim", "local", "gradient") and name in module and not functional_only:
            owner = module[name]
            if name == owner:
                message = f"'{name}' is the name of a layer"
            elif name == f"{owner}Function":
                message = f"'{name}' is the autograd.Function of layer '{owner}' in the generated code"
            else:
                message = f"'{name}' is the functional form of layer '{owner}' in the generated code"
            self.r.error(span, message, "choose another name")
            return False
        # A composed Function's module gathers each sub's arguments into a local named after the sub
        # (`codegen.function_sub_calls.module_call`), which would hide the Function it then applies.
        if what == "sub" and name in module and name == f"{module[name]}Function":
            message = f"'{name}' is the autograd.Function of layer '{module[name]}' in the generated code"
            self.r.error(span, message, "choose another name")
            return False
        return True

    def generated_name_problem(self, name: str, what: str) -> tuple[str, str | None] | None:
        """Why `name` cannot name this `what` of this layer in the generated code; None when it can."""
        if what in ("arg", "param", "buffer", "sub", "let") and name in NN_MODULE_ATTRIBUTES | GENERATED_METHODS:
            return (
                f"'{name}' is an attribute of nn.Module: a {what} stored as `self.{name}` would replace it",
                "choose another name",
            )
        if not self.layer.is_function or not name.startswith("grad_"):
            return None
        if what != "gradient":
            return (
                f"'{name}': names starting with 'grad_' are the generated backward's in @function layers",
                "choose another name",
            )
        inputs = self.layer.forward.inputs if self.layer.forward is not None else []
        leaves = [t.name for t in self.layer.tensors] + [i.name for i in inputs]
        if name[5:] in leaves:
            return (
                f"'{name}' is the gradient of '{name[5:]}' in the generated backward",
                "name the incoming gradient after the output, e.g. `grad_y`",
            )
        return None

    def declare(self, name: str, span: N.Span, ref: Ref, kind: Kind, decl: N.Node) -> None:
        # A bad name is reported once, here, and still declared: its uses get no follow-on errors.
        self.check_name(name, span, ref)
        if not self.scope.declare(name, ref, decl, span):
            hint = "each argument and member needs its own name"
            if isinstance(decl, N.Tensor) and decl.cond is not None and self.kinds.get(name) == Kind.BOOL:
                hint = f"a member takes a bool argument's name only where its condition requires it (`if {name}`, `if ... and {name}`)"
            self.r.error(span, f"'{name}' is already defined in layer '{self.layer.name}'", hint)
            return
        self.kinds[name] = kind

    def check_decorators(self) -> None:
        seen = set()
        for dec in self.layer.decorators:
            if dec.name in seen:
                self.r.error(dec.span, f"decorator '@{dec.name}' is given twice")
            seen.add(dec.name)
            if dec.name == "function":
                for a in dec.args:
                    self.r.error(a.span, '@function takes only `save = "inputs"`')
                for k in dec.kwargs:
                    ok = k.name == "save" and isinstance(k.value, N.Str) and k.value.value in ("inputs", "auto")
                    if not ok:
                        self.r.error(k.span, '@function takes only `save = "inputs"` (or the default, `save = "auto"`)')
            elif dec.name == "surrogate":
                if len(dec.args) != 1 or not isinstance(dec.args[0], N.Str) or dec.kwargs:
                    self.r.error(
                        dec.span, '@surrogate takes one string saying why: @surrogate("straight-through estimator")'
                    )
            else:
                hint = did_you_mean(dec.name, ["function", "surrogate"])
                self.r.error(dec.span, f"unknown decorator '@{dec.name}'", hint)
        surrogate = self.layer.decorator("surrogate")
        if surrogate is not None and not self.layer.is_function:
            self.r.error(surrogate.span, "@surrogate needs @function and a backward block")
        if surrogate is not None and self.layer.is_function and self.layer.backward is None:
            self.r.error(surrogate.span, "@surrogate needs a hand-written backward block")

    def check_args(self) -> None:
        for arg in self.layer.args:
            is_layer = arg.base_type in self.program.layers
            self.declare(arg.name, arg.span, Ref.ARG, Kind.LAYER if is_layer else _arg_kind(arg), arg)
            if is_layer:
                self.check_layer_arg(arg)
                continue
            if (ambiguous := self.program.ambiguity(arg.base_type, self.layer.path)) is not None:
                self.r.error(arg.type_span, *ambiguous)
            elif arg.base_type not in ARG_TYPES:
                hint = (
                    did_you_mean(arg.base_type, [*ARG_TYPES, *self.program.layers])
                    or "argument types are int, float, bool, str, ints, tensor, object, fn and the spec layers,"
                    " each with `?` if it may be none"
                )
                self.r.error(arg.type_span, f"unknown argument type '{arg.base_type}'", hint)
            if arg.maybe_none:
                self.maybe_none.add(arg.name)
            if arg.base_type == "tensor" and not (arg.maybe_none and isinstance(arg.default, N.NoneLit)):
                self.r.error(
                    arg.type_span,
                    "a tensor argument is optional: `tensor? = none` (it becomes a buffer, None when not given)",
                    f"write `{arg.name}: tensor? = none`",
                )
            if arg.choices and arg.base_type not in ("int", "ints", "fn"):
                self.r.error(
                    arg.type_span,
                    f"only an int, ints or fn argument takes string choices, not {arg.base_type}",
                    (
                        f'a str argument takes any string: write `{arg.name}: str = "{arg.choices[0]}"` and compare it'
                        f' in forward (`if {arg.name} == "{arg.choices[0]}" {{ ... }}`), as torch.nn\'s `reduction`'
                        if arg.base_type == "str"
                        else 'e.g. `padding: int | "same" = 0`, `activation: fn | "relu" = "relu"`'
                    ),
                )
            if arg.length is not None and (arg.base_type != "ints" or arg.length < 1):
                self.r.error(arg.type_span, f"only `ints` takes a length, of at least 1: `{arg.name}: ints[2]`")
            if arg.default is not None:
                self.check_default(arg, arg.default)

    def check_layer_arg(self, arg: N.Arg) -> None:
        """`encoder_layer: TransformerEncoderLayer`, `norm: LayerNorm? = none`: an instance of a spec layer,
        which only a `sub` holds (`sub norm = norm`) or copies (`copy(encoder_layer)`)."""
        if arg.base_type == self.layer.name:
            self.r.error(arg.type_span, f"layer '{self.layer.name}' cannot take an instance of itself")
        if arg.choices or arg.length is not None:
            self.r.error(arg.type_span, f"a layer argument is an instance of '{arg.base_type}': no strings, no length")
        if arg.default is not None and not (arg.maybe_none and isinstance(arg.default, N.NoneLit)):
            self.r.error(
                arg.default.span,
                "a layer argument's only default is none",
                f"write `{arg.name}: {arg.base_type}? = none`, or no default",
            )

    def check_default(self, arg: N.Arg, d: N.Expr) -> None:
        if is_expression_default(d):
            self.check_expression_default(arg, d)
            return
        kind = literal_kind(d, none_entries=arg.none_entries)
        if kind is None and arg.base_type == "ints" and literal_kind(d, none_entries=True) == Kind.LIST:
            self.r.error(d.span, f"an entry of ints argument '{arg.name}' is none", _NONE_ENTRY_HINT.format(arg.name))
            return
        if isinstance(d, N.ListExpr) and not d.items and arg.base_type == "ints" and arg.length is None:
            kind = Kind.LIST  # `out_features: ints = []`: no ints (torch's `()`)
        if kind is None:
            hint = None
            if isinstance(d, N.Name) and d.id in ("True", "False", "None"):
                hint = f"did you mean '{d.id.lower()}'?"
            elif isinstance(d, N.TupleExpr):
                items = ", ".join(spec_text(i) for i in d.items)
                hint = f"there are no tuples: write a list, `[{items}]`"
            self.r.error(d.span, "a default must be a literal (a number, string, true, false, inf or pi)", hint)
            return
        d.kind = kind
        if not fits_type(kind, arg) and arg.base_type in ARG_TYPES:
            hint = f"write `{arg.type}?` if it may be none" if kind == Kind.NONE else None
            if arg.base_type == "object":
                hint = f"an `object` argument has no literals: write `{arg.name}: object? = none`"
            self.r.error(d.span, f"default for {arg.type} argument '{arg.name}' is {_a(kind)}", hint)
        elif isinstance(d, N.Str) and arg.choices and d.value not in arg.choices:
            self.r.error(
                d.span,
                f"default for '{arg.name}' is not one of its strings: {', '.join(map(repr, arg.choices))}",
                did_you_mean(d.value, arg.choices),
            )
        elif isinstance(d, N.ListExpr) and arg.length is not None and len(d.items) != arg.length:
            self.r.error(
                d.span, f"default for {arg.type} argument '{arg.name}' has {len(d.items)} ints, not {arg.length}"
            )

    def check_expression_default(self, arg: N.Arg, d: N.Expr) -> None:
        """`hidden: int = 4 * dim`: computed in __init__ from earlier int, float and bool arguments."""
        names = [a.name for a in self.layer.args]
        earlier = names[: names.index(arg.name)]
        # `stride: ints = kernel_size`, as torch's pooling defaults its stride
        ints_of = arg.base_type == "ints" and isinstance(d, N.Name) and d.id in earlier
        if (arg.base_type not in ("int", "float", "bool") and not ints_of) or arg.maybe_none:
            self.r.error(
                d.span,
                f"a default computed from other arguments is for an int, float or bool argument, not {arg.type}",
                "write a literal default",
            )
            return
        computable = ("int", "float", "bool", "ints") if ints_of else ("int", "float", "bool")
        ok = True
        for node in [n for n in walk(d) if isinstance(n, N.Name)]:
            other = self.layer.arg(node.id) if node.id in earlier else None
            if node.id in CONSTANTS:
                node.ref, node.kind = Ref.CONST, Kind.FLOAT
            elif other is not None and other.base_type in computable and not other.maybe_none:
                node.ref, node.kind = Ref.ARG, _arg_kind(other)
            elif other is not None:
                ok = False
                self.r.error(
                    node.span, f"a default computes with int, float and bool arguments; '{node.id}' is {other.type}"
                )
            elif node.id in names:
                ok = False
                self.r.error(
                    node.span,
                    f"a default can only use earlier arguments: '{node.id}' comes after '{arg.name}'",
                    f"declare '{node.id}' before '{arg.name}'",
                )
            else:
                ok = False
                hint = did_you_mean(node.id, earlier) or "a default may use literals and earlier arguments"
                self.r.error(node.span, f"unknown name '{node.id}'", hint)
        if not ok:
            return
        kind = self.infer(d, construction=True)
        if kind != Kind.UNKNOWN and not fits_type(kind, arg):
            self.r.error(d.span, f"default for {arg.type} argument '{arg.name}' is {_a(kind)}")

    def check_members(self) -> None:
        layer = self.layer
        for let in layer.lets:  # first: shapes and initialisers may use them
            self.check_construction_expr(let.value, "a let")
            self.declare(let.name, let.span, Ref.LET, let.value.kind or Kind.FLOAT, let)
        checked: set[int] = set()
        for t in layer.tensors:
            if t.written and t.repeat is None:
                var = t.written[t.written.index("{") + 1 : t.written.index("}")]
                self.r.error(
                    t.span,
                    f"'{t.written}' names a family of params: declare it in a member loop",
                    f"write `for {var} in range(n) {{ param {t.written}: ... }}`",
                )
            index = self.enter_family(t, first=id(t.repeat) not in checked) if t.repeat is not None else None
            checked.add(id(t.repeat))
            self.check_member_shape(t.shape, t.name)
            if t.cond is not None:
                self.check_construction_expr(t.cond, "a condition", want=Kind.BOOL)
                self.optional.add(t.name)
            if t.init is not None:
                self.check_init(t, t.init)
            if index is not None:
                del self.scope.bindings[index]
            self.declare(t.name, t.span, Ref(t.kind), Kind.TENSOR, t)
        held: dict[str, N.Sub] = {}
        for sub in layer.subs:
            if sub.repeat is not None:
                self.check_repeat(sub.repeat)
            if sub.given is not None:
                self.check_given_sub(sub, held)
            else:
                self.check_sub_call(sub.call)
            if sub.given is not None and sub.given.id == sub.name:  # `sub norm = norm`: the argument, registered
                self.scope.bindings.pop(sub.name, None)
            self.declare(sub.name, sub.span, Ref.SUB, Kind.SUB, sub)
        first_reinits: dict[tuple[str, str], N.Reinit] = {}
        for reinit in layer.reinits:
            self.check_reinit(reinit)
            first = first_reinits.setdefault((reinit.sub, reinit.member), reinit)
            if first is not reinit:  # the later one would silently win
                self.r.error(
                    reinit.span,
                    f"`init {reinit.sub}.{reinit.member}` is given twice (first at line {first.span.line}:{first.span.col})",
                    "keep one `init` per member",
                )
        for redraw in layer.redraws:
            self.check_redraw(redraw)

    def check_reinit(self, reinit: N.Reinit) -> None:
        """`init out_proj.bias = zeros`: a param or buffer of a sub that is one spec layer, and an initialiser
        that fits it (its shape and dtype are the sub's declaration)."""
        sub = next((s for s in self.layer.subs if s.name == reinit.sub), None)
        target = self.program.layers.get(sub.call.func) if sub is not None else None
        written = f"{reinit.sub}.{reinit.member}"
        if sub is None:
            hint = (
                did_you_mean(reinit.sub, [s.name for s in self.layer.subs]) or "declare it with `sub NAME = Layer(...)`"
            )
            self.r.error(reinit.span, f"unknown sub '{reinit.sub}' in `init {written}`", hint)
            return
        if sub.repeat is not None or target is None:
            if sub.call.func != "?" and sub.call.func not in self.program.broken:
                self.r.error(
                    reinit.span,
                    f"`init` re-initialises a member of a sub that is one spec layer; '{reinit.sub}' is "
                    + ("a list of subs" if sub.repeat is not None else f"{sub.call.func}"),
                    "write the sub as a spec layer (specs/torch_nn/ has torch.nn's), or initialise in that layer",
                )
            return
        member = target.tensor(reinit.member)
        if member is None or member.repeat is not None:
            hint = did_you_mean(reinit.member, [t.name for t in target.tensors]) or (
                f"layer '{target.name}' has " + (", ".join(t.name for t in target.tensors) or "no params or buffers")
            )
            self.r.error(reinit.span, f"layer '{target.name}' has no param or buffer '{reinit.member}'", hint)
            return
        if reinit.init is not None:
            self.check_init(member, reinit.init)

    def check_redraw(self, redraw: N.Redraw) -> None:
        """`init parameters = xavier_uniform if ndim > 1`: for a layer whose parameters are all its subs' (its
        own are drawn by reset_parameters(), which this pass would overwrite); an initialiser without fans
        of its own (each parameter's are torch's); a condition on `ndim` alone."""
        if redraw.target.id != "parameters":
            self.r.error(
                redraw.target.span,
                f"init draws 'parameters' (every parameter of the layer and its subs), not '{redraw.target.id}'",
                "write `init parameters = xavier_uniform if ndim > 1`; one param's initialiser is written after it",
            )
        if self.layer.params:
            self.r.error(
                _keyword(redraw.span, "init"),
                "`init parameters` is for a layer whose parameters are all its subs', as torch's Transformer",
                f"give '{self.layer.params[0].name}' its initialiser: `param {self.layer.params[0].name}: [...] = INIT`",
            )
        init = redraw.init
        if init is not None and init.name not in INITS:
            self.r.error(
                init.span,
                f"unknown initialiser '{init.name}'",
                did_you_mean(init.name, INITS) or "see the list of initialisers in the language reference",
            )
        elif init is not None:
            names = [p for p, _ in INITS[init.name].params]
            if len(init.args) > len(names):
                self.r.error(
                    init.args[len(names)].span, f"'{init.name}' takes at most {len(names)} positional arguments"
                )
            for k in init.kwargs:
                if k.name not in names:
                    hint = "each parameter's fans are torch's" if k.name in ("fan_in", "fan_out") else None
                    self.r.error(
                        k.span, f"'{init.name}' has no argument '{k.name}' here", hint or did_you_mean(k.name, names)
                    )
            for value in [*init.args, *(k.value for k in init.kwargs)]:
                if isinstance(value, N.Str):
                    value.kind = Kind.STR
                else:
                    self.check_construction_expr(value, "an initialiser argument")
        cond = redraw.cond
        ranked = (
            isinstance(cond, N.Compare)
            and len(cond.ops) == 1
            and isinstance(cond.operands[0], N.Name)
            and cond.operands[0].id == "ndim"
            and isinstance(cond.operands[1], N.Num)
            and isinstance(cond.operands[1].value, int)
        )
        if cond is not None and not ranked:
            self.r.error(
                cond.span,
                "the condition of `init parameters` compares `ndim` (a parameter's number of dims) with an int",
                "e.g. `if ndim > 1`, as torch's Transformer draws its matrices",
            )
            return
        needs_matrix = (
            init is not None and init.name in INITS and (INITS[init.name].fan_based or init.name == "orthogonal")
        )
        small = cond is None or any(evaluate(cond, {"ndim": ndim}) for ndim in (0, 1))
        if needs_matrix and small:
            assert init is not None
            self.r.error(
                init.span,
                f"'{init.name}' draws only tensors of 2 or more dims, and this `init parameters` gives it "
                + ("every parameter (biases too)" if cond is None else "parameters of fewer dims"),
                "write `init parameters = " + init.name + " if ndim > 1`, as torch's Transformer does",
            )

    def check_given_sub(self, sub: N.Sub, held: dict[str, N.Sub]) -> None:
        """`sub norm = norm` or `copy(encoder_layer)`: a layer argument, held once as given (torch's
        `self.norm = norm`) or copied (each item of a list a deep copy, as torch's `_get_clones`). The sub
        is then a sub of the argument's layer: its forward checks the calls."""
        assert sub.given is not None
        given = sub.given
        arg = self.layer.arg(given.id)
        if arg is not None and arg.base_type not in ARG_TYPES and self.kinds.get(given.id) != Kind.LAYER:
            sub.call.func = "?"  # an unknown argument type, reported with the argument
            return
        if arg is None or self.kinds.get(given.id) != Kind.LAYER:
            self.r.error(
                given.span,
                f"unknown layer argument '{given.id}'" if arg is None else f"'{given.id}' is {arg.type}, not a layer",
                "a sub holds a layer argument (`norm: LayerNorm? = none`, then `sub norm = norm`),"
                " or calls a layer: `sub norm = LayerNorm(d)`",
            )
            sub.call.func = "?"
            return
        given.ref, given.kind = Ref.ARG, Kind.LAYER
        if arg.maybe_none:
            self.maybe_none.add(sub.name)  # called only inside `if NAME != none { ... }`
        if not sub.copied:
            if sub.repeat is not None:
                self.r.error(
                    given.span,
                    f"the items of a list of subs are copies: `copy({given.id})`",
                    f"write `sub {sub.name} = [copy({given.id}) for i in range(n)]`",
                )
            elif given.id in held:
                self.r.error(
                    given.span,
                    f"'{given.id}' is already held by sub '{held[given.id].name}': one module has one place",
                    f"hold a copy: `sub {sub.name} = copy({given.id})`",
                )
            held[given.id] = sub
        sub.call.func, sub.call.args = arg.base_type, []

    def enter_family(self, t: N.Tensor, first: bool) -> str | None:
        """A family member's loop (`for k in range(n) { param w_l{k}: ... }`): its range checked once per
        loop; its variable bound as an int for the member's shape, initialiser and condition. Returns the
        variable to unbind after them (None when it could not be bound)."""
        assert t.repeat is not None
        var = t.repeat.var
        if first:
            self.check_repeat(t.repeat)
        if not self.scope.declare(var.id, Ref.LET, var, var.span):
            if first:
                self.r.error(
                    var.span, f"the loop variable '{var.id}' hides a name already defined", "choose another name"
                )
            return None
        self.kinds[var.id] = Kind.INT
        return var.id

    def check_repeat(self, repeat: N.Repeat) -> None:
        """`[Block(d) for i in range(n)]`: `range` of int arguments or lets; the items do not use `i`
        (each is built alike, as torch's `_get_clones` builds them)."""
        if repeat.iter.func != "range":
            return  # reported by the parser
        if repeat.iter.kwargs or not 1 <= len(repeat.iter.args) <= 3:
            self.r.error(repeat.iter.span, "range takes 1 to 3 ints (stop; start, stop; start, stop, step)")
        for bound in repeat.iter.args:
            self.check_construction_expr(bound, "a list's range", want=Kind.INT)
        self.check_name(repeat.var.id, repeat.var.span, "local")

    def check_member_shape(self, shape: N.Shape, owner: str) -> None:
        if shape.spread is not None:
            name = shape.spread
            arg = self.layer.arg(name.id)
            if arg is None or arg.base_type != "ints" or arg.maybe_none or arg.none_entries:
                self.r.error(
                    name.span,
                    f"'{name.id}' is not an `ints` argument: a shape is `[dims]`, or an `ints` argument",
                    f"write `[{name.id}]` for one dim",
                )
            else:
                name.ref, name.kind = Ref.ARG, Kind.LIST
        for d in shape.dims:
            if isinstance(d, N.EllipsisItem):
                self.r.error(d.span, f"'...' is only for inputs; '{owner}' needs a fixed shape")
                continue
            self.check_construction_expr(d, "a dim", want=Kind.INT, dim_context=True)

    def check_construction_expr(self, expr: N.Expr, what: str, want: Kind | None = None, dim_context=False) -> None:
        """Expressions evaluated in __init__: of arguments, earlier lets and literals only."""
        if self.check_no_reductions(expr):
            return
        construction = Scope(self.scope.bindings, construction=True)
        for node in walk(expr):
            if isinstance(node, N.Name):
                ref = construction.lookup(node.id)
                if ref in CONSTRUCTION:
                    node.ref = ref
                    node.kind = self.kinds[node.id]
                elif ref == Ref.CONST:
                    node.ref, node.kind = Ref.CONST, Kind.FLOAT
                else:
                    ref = self.scope.get(node.id)
                    node.ref = Ref.UNKNOWN
                    if dim_context and ref is None:
                        msg = f"unknown dim '{node.id}'"
                        hint = (
                            did_you_mean(node.id, [a.name for a in self.layer.args])
                            or "sizes of members must come from int arguments"
                        )
                    elif ref is not None:
                        msg, hint = (
                            f"{what} can only use arguments and lets, not the {_REF_WORDS.get(ref, ref)} '{node.id}'",
                            None,
                        )
                    else:
                        msg = f"unknown name '{node.id}'"
                        hint = did_you_mean(
                            node.id, [a.name for a in self.layer.args] + [l.name for l in self.layer.lets]
                        )
                        problem = name_problem(node.id)
                        if problem and not hint:
                            hint = problem[1]
                    self.r.error(node.span, msg, hint)
                    node.kind = Kind.UNKNOWN  # no follow-on errors about its type
        self.check_argument_uses(expr, None)
        self.infer(expr, construction=True)
        if want == Kind.INT and expr.kind not in (Kind.INT, Kind.UNKNOWN):
            self.r.error(expr.span, f"a dim must be an int, this is {_a(expr.kind)}")
        if want == Kind.BOOL and expr.kind not in (Kind.BOOL, Kind.UNKNOWN):
            self.r.error(expr.span, f"a condition must be a bool, this is {_a(expr.kind)}")

    def check_init(self, t: N.Tensor, init: N.Init) -> None:
        spec = INITS.get(init.name)
        if spec is None:
            self.r.error(
                init.span,
                f"unknown initialiser '{init.name}'",
                did_you_mean(init.name, INITS) or "see the list of initialisers in the language reference",
            )
            return
        if spec.float_only and t.dtype in ("long", "int", "bool"):
            self.r.error(init.span, f"'{init.name}' needs a float tensor; '{t.name}' is {t.dtype}")
        names = [p for p, _ in spec.params]
        if len(init.args) > len(names):
            self.r.error(
                init.args[len(names)].span,
                f"'{init.name}' takes at most {len(names)} positional argument{'s' if len(names) != 1 else ''}",
            )
        required = [p for p, default in spec.params if default == ""]
        given = names[: len(init.args)] + [k.name for k in init.kwargs]
        for req in required:
            if req not in given:
                self.r.error(init.span, f"'{init.name}' needs '{req}'", f"write `{init.name}({req} = ...)`")
        allowed = set(names) | ({"fan_in", "fan_out"} if spec.fan_based else set())
        for k in init.kwargs:
            if k.name not in allowed:
                if k.name in ("fan_in", "fan_out"):
                    self.r.error(k.span, f"'{init.name}' does not use fans; only xavier_* and kaiming_* take {k.name}")
                else:
                    self.r.error(k.span, f"'{init.name}' has no argument '{k.name}'", did_you_mean(k.name, allowed))
        for value in [*init.args, *(k.value for k in init.kwargs)]:
            if isinstance(value, N.Str):
                value.kind = Kind.STR
                continue
            self.check_construction_expr(value, "an initialiser argument")
        if init.name.startswith("kaiming"):
            self.check_fan_mode(init)
        if init.name == "eye" and len(t.shape.dims) != 2:
            self.r.error(init.span, f"'eye' needs a 2-D tensor; '{t.name}' has {len(t.shape.dims)} dims")
        if init.name == "orthogonal" and len(t.shape.dims) < 2:
            self.r.error(init.span, f"'orthogonal' needs 2 or more dims; '{t.name}' has {len(t.shape.dims)}")
        if spec.fan_based and len(t.shape.dims) < 2 and not {k.name for k in init.kwargs} >= {"fan_in", "fan_out"}:
            self.r.error(init.span, f"'{init.name}' needs 2 or more dims, or both fan_in = and fan_out =")

    def check_fan_mode(self, init: N.Init) -> None:
        """kaiming_*'s `mode`: "fan_in" or "fan_out", or a `str` argument (checked when the layer is built)."""
        names = [p for p, _ in INITS[init.name].params]
        given = dict(zip(names, init.args)) | {k.name: k.value for k in init.kwargs}
        mode = given.get("mode")
        if isinstance(mode, N.Str) and mode.value not in ("fan_in", "fan_out"):
            self.r.error(mode.span, f'mode must be "fan_in" or "fan_out", not {mode.value!r}')
        elif mode is not None and not isinstance(mode, N.Str) and mode.kind not in (Kind.STR, Kind.UNKNOWN):
            self.r.error(mode.span, f'mode must be a str ("fan_in" or "fan_out"), this is {_a(mode.kind)}')

    def check_sub_call(self, call: N.Call) -> None:
        if call.func.startswith("nn."):
            cls = call.func[3:]
            if cls not in NN_LAYERS:
                self.r.error(
                    call.func_span, f"unknown torch.nn layer '{call.func}'", did_you_mean(cls, NN_LAYERS, prefix="nn.")
                )
        elif call.func in self.program.layers:
            if call.func == self.layer.name:
                self.r.error(call.func_span, f"layer '{call.func}' cannot contain itself")
            else:
                self._check_layer_call(call)
        elif call.func == "?" or call.func in self.program.broken:
            pass  # reported by the parser
        elif (ambiguous := self.program.ambiguity(call.func, self.layer.path)) is not None:
            self.r.error(call.func_span, *ambiguous)
        else:
            if "." in call.func:
                self.r.error(
                    call.func_span,
                    f"'{call.func}' cannot be called",
                    "a sub is another spec's layer or a torch.nn layer written `nn.X(...)`",
                )
            else:
                self.r.error(call.func_span, f"unknown layer '{call.func}'", self._unknown_layer_hint(call.func))
        for value in [*call.args, *(k.value for k in call.kwargs)]:
            if isinstance(value, N.Call):
                self.check_sub_call(value)
            elif isinstance(value, N.Name) and self.kinds.get(value.id) in (
                Kind.OBJECT,
                Kind.FN,
                Kind.LAYER,
                Kind.LIST,
            ):
                value.ref, value.kind = Ref.ARG, self.kinds[value.id]  # passed on whole, as torch passes `options`
            elif isinstance(value, N.Str):
                value.kind = Kind.STR
            else:
                self.check_construction_expr(value, "a sub's argument")

    def _unknown_layer_hint(self, name: str) -> str:
        """A close layer of this run if there is one; otherwise the likely cause, a layer of a spec file
        that was not passed (then a close torch.nn layer is the second guess)."""
        typo = did_you_mean(name, self.program.layers)
        if typo:
            return typo
        hint = f"if '{name}' is defined in another spec file, compile their folder (or pass that file too)"
        close = did_you_mean(name, [f"nn.{c}" for c in NN_LAYERS])
        return f"{hint}; or {close}" if close else hint

    def _check_layer_call(self, call: N.Call) -> None:
        target = self.program.layers[call.func]
        names = [a.name for a in target.args]
        if len(call.args) > len(names):
            self.r.error(
                call.args[len(names)].span,
                f"layer '{target.name}' takes {len(names)} argument{'s' if len(names) != 1 else ''}",
            )
        given = set(names[: len(call.args)])
        for k in call.kwargs:
            if k.name not in names:
                self.r.error(k.span, f"layer '{target.name}' has no argument '{k.name}'", did_you_mean(k.name, names))
            given.add(k.name)
        for a in target.args:
            if a.default is None and a.name not in given:
                self.r.error(call.span, f"layer '{target.name}' needs argument '{a.name}'")
        values = [*zip(names, call.args), *((k.name, k.value) for k in call.kwargs)]
        for name, value in values:
            arg = target.arg(name)
            own_arg = self.layer.arg(value.id) if isinstance(value, N.Name) else None
            if arg is not None and own_arg is not None and own_arg.base_type in self.program.layers:
                if arg.base_type not in self.program.layers:  # `Linear(encoder_layer)`: an instance for an int
                    self.r.error(
                        value.span,
                        f"'{name}' of layer '{target.name}' is {arg.type}; '{own_arg.name}' is an instance of {own_arg.base_type}",
                        "a layer argument is held by a sub (`sub NAME = ARG`) or copied (`copy(ARG)`)",
                    )
                    continue
            if arg is None or arg.base_type not in self.program.layers:
                continue
            given_layer = value.func if isinstance(value, N.Call) else None
            if isinstance(value, N.Name) and (own := self.layer.arg(value.id)) is not None:
                given_layer = own.base_type
            if given_layer is not None and given_layer != arg.base_type:
                self.r.error(
                    value.span,
                    f"'{name}' of layer '{target.name}' is an instance of {arg.base_type}, not of {given_layer}",
                    f"give it `{arg.base_type}(...)`",
                )

    # ------------------------------------------------------------ forward

    def check_forward(self, fwd: N.Forward) -> Scope:
        """Checks forward; the names visible at its end (what backward sees)."""
        seen_inputs = set()
        for inp in fwd.inputs:
            if inp.name in seen_inputs:
                self.r.error(inp.span, f"input '{inp.name}' is given twice")
                continue
            seen_inputs.add(inp.name)
            kind = Kind.BOOL if inp.flag is not None else Kind.TUPLE if inp.parts else Kind.TENSOR
            if inp.mistyped:
                kind = Kind.UNKNOWN  # (its type the parser reported: no follow-on errors at its uses)
            self.declare(inp.name, inp.span, Ref.INPUT, kind, inp)
            self.check_input_kind(inp, fwd)
            if inp.alternatives:  # each alternative's new dims are its own: they bind nothing
                for alt in inp.alternatives:
                    if alt.shape is not None:
                        self.check_input_shape(alt.shape, bind=False, alternative=True)
                continue
            for shape in [p.shape for p in inp.parts] if inp.parts else [inp.shape]:
                if shape is not None:
                    self.check_input_shape(shape, bind=not inp.optional, optional=inp.optional)
        for shape in fwd.outputs or []:
            self.check_input_shape(shape, bind=False)
        locals_ = self.scope.copy()
        returns = self.check_block(fwd.body, locals_, in_forward=True)
        if not returns:
            self.r.error(
                _keyword(fwd.span, "forward"), "forward does not return on every path", "end it with `return ...`"
            )
        if fwd.outputs is None:  # with `->`, every return gives the declared number (checked at each)
            self.check_output_count(fwd)
        return locals_

    def check_output_count(self, fwd: N.Forward) -> None:
        """Returns of several arities (`return pooled, indices` / `return pooled`, as torch's
        `return_indices=True`): each `if` around them must test only arguments and flags, so that the
        number of outputs is fixed when the module is built."""
        arities = {len(s.values) for s in statements(fwd.body) if isinstance(s, N.Return)}
        if len(arities) < 2:
            return
        settled = {a.name for a in self.layer.args} | {i.name for i in fwd.inputs if i.flag is not None}
        for stmt in statements(fwd.body):
            if not isinstance(stmt, N.If) or not any(isinstance(s, N.Return) for s in statements([stmt])):
                continue
            read = next((n for n in walk(stmt.cond) if isinstance(n, N.Name) and n.id not in settled), None)
            if read is not None:
                counts = " or ".join(str(a) for a in sorted(arities))
                self.r.error(
                    read.span,
                    f"forward returns {counts} outputs, so which one may depend only on arguments and flags;"
                    f" this condition reads '{read.id}'",
                    "test an argument (`if return_indices { return out, indices }`) or give every return as many outputs",
                )

    def check_input_kind(self, inp: N.Input, fwd: N.Forward) -> None:
        """An optional input (`mask: bool[B, T]? = none`) comes after the required ones."""
        if inp.optional:
            self.maybe_none.add(inp.name)
        elif inp.flag is None and any(i.optional or i.flag for i in fwd.inputs[: fwd.inputs.index(inp)]):
            self.r.error(
                inp.span,
                f"required input '{inp.name}' follows an optional one",
                "put the optional inputs (`? = none`) and flags (`: bool = true`) last, as Python's defaults are",
            )
        if inp.takes_ints:
            self.maybe_ints.add(inp.name)

    def check_input_shape(self, shape: N.Shape, bind: bool, optional: bool = False, alternative: bool = False) -> None:
        ellipses = [d for d in shape.dims if isinstance(d, N.EllipsisItem)]
        for extra in ellipses[1:]:
            self.r.error(extra.span, "'...' may appear at most once in a shape")
        for d in shape.dims:
            if isinstance(d, N.EllipsisItem):
                continue
            if is_new_dim(d, self.scope):
                if alternative:  # `long[L]` of `long[N, S] | long[L]`: its size is not checked or known
                    self.check_name(d.id, d.span, "dim")
                    continue
                if bind:
                    self.check_name(d.id, d.span, "dim")  # a bad name is still bound: no follow-on errors
                    self.scope.declare(d.id, Ref.DIM, d, d.span)
                    self.kinds[d.id] = Kind.INT
                    self.dims.append(d.id)
                else:
                    hint = did_you_mean(d.id, self.scope.names(Ref.DIM, Ref.ARG, Ref.LET))
                    self.r.error(
                        d.span,
                        f"unknown dim '{d.id}'",
                        hint
                        or (
                            "an optional input's dims must be arguments or dims of the required inputs"
                            if optional
                            else "output dims must be arguments or dims of the inputs"
                        ),
                    )
                    continue
            if self.check_no_reductions(d):
                continue
            self.check_expr(d, self.scope, in_forward=True)
            if d.kind not in (Kind.INT, Kind.UNKNOWN) and not _has_unknown_name(d):
                self.r.error(d.span, f"a dim must be an int, this is {_a(d.kind)}")

    def check_block(self, body: list[N.Stmt], scope: Scope, in_forward: bool) -> bool:
        """Checks statements; returns whether the block returns on every path."""
        outer, strings = set(self.not_none), self.not_strings
        for i, stmt in enumerate(body):
            if self.check_stmt(stmt, scope, in_forward):
                for dead in body[i + 1 :]:
                    self.r.error(dead.span, "statement after return is never run")
                    break
                self.not_none, self.not_strings = outer, strings
                return True
            if isinstance(stmt, N.If) and not stmt.orelse and _always_returns(stmt.body):
                self.not_none |= _none_checked(stmt.cond, "==")  # `if x == none { return ... }`: x is given after
            if isinstance(stmt, N.If):  # `if f == "relu" { return ... } else if f == "tanh" { return ... }`
                self.not_strings = _strings_ruled_out_after(stmt, self.not_strings)
        self.not_none, self.not_strings = outer, strings
        return False

    def check_stmt(self, stmt: N.Stmt, scope: Scope, in_forward: bool) -> bool:
        if not isinstance(stmt, (N.If, N.For, N.IndexAssign)) and self.check_no_reductions(stmt):
            if isinstance(stmt, N.Assign):  # reported: bind the name, skip the rest
                if stmt.target not in scope:
                    scope.bind_local(stmt.target, stmt, stmt.target_span)
                self.kinds.setdefault(stmt.target, Kind.TENSOR)
            return isinstance(stmt, N.Return)
        match stmt:
            case N.Assign(target=target, target_span=span, value=value):
                self.check_expr(value, scope, in_forward)
                self.bind_local(stmt, scope, value.kind)
            case N.Unpack():
                self.check_unpack(stmt, scope, in_forward)
            case N.IndexAssign():
                from layerdsl.semantics.index_notation import check_index_assign  # the index-notation issue's pass

                check_index_assign(self, stmt, scope)
                self.bind_local(stmt, scope, Kind.TENSOR)
            case N.Update(target=target, target_span=span, value=value):
                if not in_forward:
                    self.r.error(stmt.span, "update is only allowed in forward")
                ref = scope.get(target)
                if ref != Ref.BUFFER:
                    what = f"the {_REF_WORDS.get(ref, ref)} '{target}'" if ref else f"unknown name '{target}'"
                    hint = (
                        did_you_mean(target, [b.name for b in self.layer.buffers])
                        or "declare it with `buffer NAME: [...]`"
                    )
                    self.r.error(
                        span, f"update needs a buffer, not {what}" if ref else f"unknown buffer '{target}'", hint
                    )
                elif target in self.optional and target not in self.present:
                    self.r.error(
                        span,
                        f"'{target}' is optional (it exists only if its condition holds) and cannot be updated",
                        "make it unconditional, or update it inside an `if` on its condition (`if track and training { ... }`)",
                    )
                self.check_expr(value, scope, in_forward)
                self.check_update_dtype(target, value)
            case N.If(cond=cond, body=then, orelse=orelse):
                if not self.check_no_reductions(cond):
                    self.check_expr(cond, scope, in_forward)
                if cond.kind == Kind.TENSOR:
                    self.r.error(
                        cond.span,
                        "an if condition is an expression of arguments, lets, dims or `training`: there is no `if` on tensors",
                        "choose elementwise with where(cond, a, b)",
                    )
                then_scope, else_scope = scope.copy(), scope.copy()
                outer, present, strings = set(self.not_none), set(self.present), self.not_strings
                self.not_none = outer | _none_checked(cond, "!=")
                self.present = present | members_present(cond, self.layer.tensors)
                self.not_strings = _strings_excluded(cond, "!=", strings)
                r1 = self.check_block(then, then_scope, in_forward)
                self.not_none = outer | _none_checked(cond, "==")
                self.present = present | members_present_otherwise(cond, self.layer.tensors)
                self.not_strings = _strings_excluded(cond, "==", strings)
                r2 = self.check_block(orelse, else_scope, in_forward) if orelse else False
                self.not_none, self.not_strings = outer, strings
                self.partly_bound |= merge_branches(scope, then_scope, else_scope, r1, r2)
                return r1 and r2
            case N.Require():
                self.check_require(stmt, scope, in_forward)
            case N.Return(values=values):
                if not in_forward:
                    self.r.error(stmt.span, "backward gives gradients with `grad NAME = ...`, not return")
                fwd = self.layer.forward
                optional = fwd.optional_outputs if fwd is not None else set()
                for k, v in enumerate(values):
                    self.check_expr(v, scope, in_forward)
                    if isinstance(v, N.NoneLit) and fwd is not None and fwd.outputs is None:
                        optional.add(k)  # no `->`: an output some return leaves none may be none
                    elif isinstance(v, N.NoneLit) and k not in optional:
                        self.r.error(
                            v.span,
                            f"output {k + 1} is not declared optional, so it cannot be none",
                            "mark it in forward's outputs with `?`: `-> ([B, n], [B, m]?)`",
                        )
                    elif v.kind not in (
                        Kind.TENSOR,
                        Kind.UNKNOWN,
                        Kind.TUPLE,
                        Kind.NONE,
                    ):  # a tuple: reported where it is
                        self.r.error(v.span, f"forward returns tensors; this is {_a(v.kind)}")
                outputs = self.layer.forward.outputs if self.layer.forward is not None else None
                if outputs is not None and len(outputs) != len(values):
                    self.r.error(
                        stmt.span,
                        f"forward declares {len(outputs)} output{'s' if len(outputs) != 1 else ''} but returns {len(values)}",
                    )
                return True
            case N.For():
                self.check_no_reductions(stmt.iter)  # its body's statements are checked one by one
                self.check_for(stmt, scope, in_forward)
            case N.Append():
                self.check_append(stmt, scope, in_forward)
            case N.Grad(target=target, target_span=span, value=value):
                if in_forward:
                    self.r.error(stmt.span, "grad is only allowed in backward")
                if not isinstance(value, N.NoneLit):
                    self.check_expr(value, scope, in_forward)
        return False

    def check_for(self, stmt: N.For, scope: Scope, in_forward: bool) -> None:
        """`for t in range(...)` (int bounds) or `for layer in layers` (a list of subs). The loop variable
        is bound in the body only; a local first bound in the body is not bound after the loop (it may run
        zero times)."""
        if not in_forward:
            self.r.error(_keyword(stmt.span, "for"), "for is only allowed in forward")
        var_ref, var_kind = self.check_loop_iter(stmt.iter, scope, in_forward)
        body_scope = scope.copy()
        self.check_name(stmt.var, stmt.var_span, "local")  # a bad name is still bound: no follow-on errors
        if not body_scope.declare(stmt.var, var_ref, stmt, stmt.var_span):
            self.r.error(
                stmt.var_span, f"the loop variable '{stmt.var}' hides a name already defined", "choose another name"
            )
        outer_kind = self.kinds.get(stmt.var)
        self.kinds[stmt.var] = var_kind
        self.loop_vars.add(stmt.var)
        if self.check_block(stmt.body, body_scope, in_forward):
            returns = next(s for s in statements(stmt.body) if isinstance(s, N.Return))
            self.r.error(
                returns.span, "a loop body cannot return", "collect what the loop computes and return after it"
            )
        self.loop_vars.discard(stmt.var)
        if outer_kind is not None:
            self.kinds[stmt.var] = outer_kind
        self.loop_bound |= {n for n in body_scope if n not in scope and n != stmt.var}

    def check_loop_iter(self, it: N.Expr, scope: Scope, in_forward: bool) -> tuple[Ref, Kind]:
        """What a `for` iterates over, checked; the loop variable's ref and kind."""
        if isinstance(it, N.Call) and it.func == "range":
            if it.kwargs or not 1 <= len(it.args) <= 3:
                self.r.error(it.span, "range takes 1 to 3 ints (stop; start, stop; start, stop, step)")
            for bound in it.args:
                self.check_expr(bound, scope, in_forward)
                reported = isinstance(bound, N.Name) and bound.ref == Ref.UNKNOWN  # (an unknown name: said)
                if bound.kind not in (Kind.INT, Kind.UNKNOWN) and not reported:
                    self.r.error(
                        bound.span,
                        f"range takes ints, this is {_a(bound.kind)}",
                        "loop over an int argument, a let or a dim of an input (`for t in range(T)`)",
                    )
            return Ref.LOCAL, Kind.INT
        if isinstance(it, N.Name) and scope.get(it.id) == Ref.SUB:
            it.ref, it.kind = Ref.SUB, Kind.SUBS
            sub = next((s for s in self.layer.subs if s.name == it.id), None)
            if sub is not None and sub.repeat is None:
                self.r.error(
                    it.span,
                    f"the sub '{it.id}' is one layer, not a list of layers",
                    f"declare a list: `sub {it.id} = [{sub.call.func}(...) for i in range(n)]`",
                )
            return Ref.SUB, Kind.SUB
        self.check_expr(it, scope, in_forward)
        what = _a(it.kind) if it.kind else "this"
        self.r.error(
            it.span,
            f"cannot loop over {what}: a `for` runs over `range(...)` or a list of subs",
            "write `for t in range(T) { ... }`, or declare `sub layers = [Block(d) for i in range(n)]`",
        )
        return Ref.LOCAL, Kind.UNKNOWN

    def check_append(self, stmt: N.Append, scope: Scope, in_forward: bool) -> None:
        """`outputs.append(h)`: `outputs` is a local list (`outputs = []`), `h` a tensor."""
        if not in_forward:
            self.r.error(stmt.span, "append is only allowed in forward")
        ref = scope.get(stmt.target)
        if ref is None:
            self.r.error(
                stmt.target_span,
                f"unknown name '{stmt.target}'",
                f"start the list before: `{stmt.target} = []`",
            )
        elif ref != Ref.LOCAL or self.kinds.get(stmt.target) != Kind.LIST:
            self.r.error(
                stmt.target_span,
                f"'{stmt.target}' is not a list: only a local list (`{stmt.target} = []`) can be appended to",
                "start a list with `outputs = []` and pass it to stack() or cat() after the loop",
            )
        self.check_expr(stmt.value, scope, in_forward)
        if stmt.value.kind not in (Kind.TENSOR, Kind.UNKNOWN):
            self.r.error(stmt.value.span, f"a list holds tensors; this is {_a(stmt.value.kind)}")

    def check_require(self, stmt: N.Require, scope: Scope, in_forward: bool) -> None:
        """`require B > 1 if training, "..."`: one comparison of ints, a bool guard; a requirement of
        arguments and lets only is checked against the example here."""
        if not in_forward:
            self.r.error(_keyword(stmt.span, "require"), "require is only allowed in forward")
        cond, guard = stmt.cond, stmt.guard
        self.check_expr(cond, scope, in_forward)
        if not isinstance(cond, N.Compare) or len(cond.operands) != 2:
            self.r.error(cond.span, "require states one comparison", 'e.g. `require B > 1 if training, "a message"`')
        elif any(o.kind not in (Kind.INT, Kind.UNKNOWN) for o in cond.operands):
            bad = next(o for o in cond.operands if o.kind not in (Kind.INT, Kind.UNKNOWN))
            self.r.error(
                bad.span, f"require compares ints, this is {_a(bad.kind)}", "compare dims, int arguments or lets"
            )
        if guard is not None:
            self.check_expr(guard, scope, in_forward)
            if guard.kind not in (Kind.BOOL, Kind.UNKNOWN):
                self.r.error(guard.span, f"a condition must be a bool, this is {_a(guard.kind)}")
        self.check_require_on_example(stmt)

    def check_require_on_example(self, stmt: N.Require) -> None:
        """A requirement the examples' arguments decide is checked now, not at the first forward (the
        first example that breaks it is reported)."""
        seeds = example_seeds(self.layer)
        for seed in seeds:
            env = example_values(self.layer, seed)
            try:
                applies = stmt.guard is None or bool(evaluate(stmt.guard, env))
                holds = bool(evaluate(stmt.cond, env))
            except (NotConstant, ArithmeticError, TypeError):
                continue
            if applies and not holds:
                which = ", ".join(f"{n} = {v}" for n, v in seed_differences(seed, seeds[0]))
                self.r.error(
                    stmt.cond.span,
                    f"the example{f' with {which}' if which else ''} breaks this requirement: "
                    f"{spec_text(stmt.cond)} is false",
                    stmt.message.value if stmt.message is not None else None,
                )
                return

    def check_no_reductions(self, node) -> bool:
        """`sum[i](...)` reductions belong to index statements only, `[... for i in range(n)]` to a list of
        subs only; reports one and returns True if found."""
        for n in walk(node):
            if isinstance(n, N.ListComp):
                self.r.error(
                    n.span,
                    "a list comprehension only builds a list of subs",
                    "write `sub layers = [Block(d) for i in range(n)]`; in forward, loop with `for`",
                )
                return True
            if isinstance(n, N.Reduce):
                self.r.error(
                    n.span,
                    f"a {n.op}[...] reduction is only allowed in an index statement",
                    f"write e.g. `y[b] = {n.op}[i](x[b, i])`, or {n.op}(x, dim = ...)",
                )
                return True
        return False

    def check_update_dtype(self, target: str, value: N.Expr) -> None:
        """A floating value into an integer or bool buffer: `copy_` would truncate it silently."""
        buffer = next((b for b in self.layer.buffers if b.name == target), None)
        if buffer is None or buffer.dtype == "float":
            return
        floating = _floating_part(value, {t.name for t in self.layer.tensors if t.dtype == "float"})
        if floating is not None:
            self.r.error(
                floating.span,
                f"{spec_text(floating)} is floating-point, and the {buffer.dtype} buffer '{target}' would"
                " silently truncate it",
                f"declare `buffer {target}: float[...]`, or update it with an integer value",
            )

    def check_unpack(self, stmt: N.Unpack, scope: Scope, in_forward: bool) -> None:
        """`h, c = hx`: a tuple input (as many names as it has tensors) or a sub's call (as many as its
        spec layer's forward returns)."""
        value = stmt.value
        self.unpacking = value
        self.check_expr(value, scope, in_forward)
        self.unpacking = None
        n = len(stmt.targets)
        if isinstance(value, N.Name) and value.kind == Kind.TUPLE:
            decl = self.layer.forward.inputs if self.layer.forward is not None else []
            parts = next((i.parts for i in decl if i.name == value.id), None) or []
            if len(parts) != n:
                self.r.error(stmt.span, f"'{value.id}' holds {len(parts)} tensors, unpacked into {n} names")
        elif isinstance(value, N.Call) and scope.get(value.func) == Ref.SUB:
            sub = next((s for s in self.layer.subs if s.name == value.func), None)
            target = self.program.layers.get(sub.call.func) if sub is not None else None
            outputs = target.forward.outputs if target is not None and target.forward is not None else None
            if outputs is not None and len(outputs) != n:
                self.r.error(
                    stmt.span,
                    f"'{value.func}' returns {len(outputs)} tensor{'s' if len(outputs) != 1 else ''}, unpacked into {n} names",
                )
        elif isinstance(value, N.Call) and value.func in ("chunk", "split") and scope.get(value.func) is None:
            count = _parts_written(value)
            if count is not None and count != n:
                self.r.error(stmt.span, f"{value.func}() gives {count} tensors here, unpacked into {n} names")
        elif isinstance(value, N.Call) and _gives_indices(value) and scope.get(value.func) is None:
            if n != 2:
                self.r.error(
                    stmt.span,
                    f"{value.func}() gives 2 tensors (the result and its indices), unpacked into {n} names",
                    f"write `pooled, indices = {value.func}(...)`",
                )
        elif value.kind != Kind.UNKNOWN:
            self.r.error(
                value.span,
                "only a tuple input, a sub's call, chunk()/split() or a *_with_indices() op can be unpacked into names",
                "assign one value to one name: `y = ...`",
            )
        for name, span in stmt.targets:
            self.bind_local(stmt, scope, Kind.TENSOR, (name, span))

    def bind_local(
        self,
        stmt: N.Assign | N.IndexAssign | N.Unpack,
        scope: Scope,
        kind: Kind,
        target: tuple[str, N.Span] | None = None,
    ) -> None:
        name, span = target if target is not None else (stmt.target, stmt.target_span)  # type: ignore[union-attr]
        if name in self.loop_vars:
            self.r.error(span, f"cannot assign to the loop variable '{name}'", "choose a new name")
            return
        ref = scope.get(name)
        if ref not in (None, Ref.LOCAL):
            self.r.error(
                span,
                f"cannot assign to the {_REF_WORDS.get(ref, ref)} '{name}'",
                "use `update` for buffers" if ref == Ref.BUFFER else "choose a new name",
            )
            return
        if ref is None:
            self.check_name(name, span, "local")  # a bad name is still bound: no follow-on errors
        scope.bind_local(name, stmt, span)
        self.kinds[name] = kind or Kind.TENSOR

    # ------------------------------------------------------------ expressions

    def check_expr(self, expr: N.Expr, scope: Scope, in_forward: bool) -> None:
        for node in [n for n in walk(expr) if isinstance(n, N.Name)]:
            self.resolve(node, scope, in_forward)
        for family in [n for n in walk(expr) if isinstance(n, N.FamilyName)]:
            index = family.index
            if index is not None and index.kind not in (Kind.INT, Kind.UNKNOWN):
                self.r.error(
                    index.span,
                    f"a family's member is picked by an int, this is {_a(index.kind)}",
                    f"loop over the members: `for k in range(n) {{ ... {family.prefix}{{k}}{family.suffix} ... }}`",
                )
        self.check_optional_uses(expr, None)
        self.check_argument_uses(expr, None)
        self.check_calls(expr, scope)
        self.check_ellipsis_lists(expr)
        self.infer(expr)

    def check_ellipsis_lists(self, expr: N.Expr) -> None:
        """`...` in a list is reshape's only (`reshape(x, [..., h, d])`: the input's leading dims), first."""
        kept = set()
        for node in walk(expr):
            if isinstance(node, N.Call) and node.func == "reshape":
                shape = (
                    node.args[1]
                    if len(node.args) > 1
                    else next((k.value for k in node.kwargs if k.name == "shape"), None)
                )
                if isinstance(shape, N.ListExpr) and shape.items and isinstance(shape.items[0], N.EllipsisItem):
                    kept.add(id(shape.items[0]))
        for node in walk(expr):
            for item in node.items if isinstance(node, N.ListExpr) else []:
                if isinstance(item, N.EllipsisItem) and id(item) not in kept:
                    self.r.error(
                        item.span,
                        "`...` in a list stands only for the kept leading dims of reshape's shape",
                        "write it first: reshape(x, [..., h, d])",
                    )

    def resolve(self, node: N.Name, scope: Scope, in_forward: bool) -> None:
        name = node.id
        if "." in name:
            self.resolve_sub_member(node, scope)
            return
        ref = scope.lookup(name)
        if isinstance(node, N.FamilyName) and ref is None:
            families = [t.written for t in self.layer.tensors if t.repeat is not None]
            close = did_you_mean(node.written, families) or (
                f"the families are {', '.join(families)}" if families else "declare it in a member loop"
            )
            self.r.error(node.span, f"unknown family '{node.written}'", close)
            node.ref, node.kind = Ref.UNKNOWN, Kind.TENSOR
            return
        if ref == Ref.TRAINING:
            node.ref, node.kind = ref, Kind.BOOL
        elif ref == Ref.CONST:
            node.ref, node.kind = ref, Kind.FLOAT
        elif ref is not None:
            node.ref = ref
            node.kind = self.kinds.get(name, Kind.TENSOR)
            if ref == Ref.INPUT and name in self.kinds and not self.kinds[name]:
                node.ref = Ref.UNKNOWN  # (an input of a type the parser reported: no follow-on errors)
            if node.ref == Ref.SUB and name not in self.maybe_none:  # (an optional one is compared with none)
                self.r.error(node.span, f"the sub '{name}' can only be called", f"write `{name}(x)`")
        elif name in ("True", "False", "None"):
            self.r.error(node.span, f"unknown name '{name}'", f"did you mean '{name.lower()}'?")
        elif name in CALLABLE:
            self.r.error(node.span, f"'{name}' is an operation; call it", f"write `{name}(...)`")
        elif name in self.loop_bound:
            self.r.error(
                node.span,
                f"'{name}' is bound only inside a loop (which may run zero times)",
                f"bind it before the `for` (e.g. `{name} = ...`), and rebind it in the body",
            )
        elif name in self.partly_bound:
            self.r.error(
                node.span, f"'{name}' is not bound on every path", "bind it before the `if`, or on both branches"
            )
        else:
            problem = name_problem(name)
            candidates = scope.names()
            hint = did_you_mean(name, candidates) or (problem[1] if problem else None)
            family = next((t for t in self.layer.tensors if t.repeat is not None and _in_family(name, t)), None)
            if family is not None:
                hint = f"'{name}' is a member of the family '{family.written}': read it as {family.written} in a loop"
            self.r.error(node.span, f"unknown name '{name}'", hint)
            node.ref = Ref.UNKNOWN
        if not node.kind:
            node.kind = Kind.TENSOR

    def resolve_sub_member(self, node: N.Name, scope: Scope) -> None:
        """`linear.weight`: a param or buffer of a sub that is a spec layer (optional where its own is)."""
        base, member = node.id.split(".", 1)
        node.ref, node.kind = Ref.UNKNOWN, Kind.UNKNOWN
        sub = next((s for s in self.layer.subs if s.name == base), None)
        if sub is None or scope.lookup(base) != Ref.SUB:
            self.r.error(
                node.span,
                "attribute access is not part of the language",
                "dotted names exist only as `nn.X(...)` in a sub, and as `sub.param` for a sub's parameter or buffer",
            )
            return
        target = self.program.layers.get(sub.call.func)
        if target is None:
            if sub.call.func.startswith("nn."):
                self.r.error(
                    node.span,
                    f"the parameters of the torch.nn sub '{base}' are not known to the spec",
                    f"make '{base}' a spec layer (e.g. `sub {base} = Linear(...)`) to use its parameters",
                )
            return
        tensor = next((t for t in target.tensors if t.name == member), None)
        if tensor is None:
            self.unknown_sub_member(node, base, member, target)
            return
        node.ref, node.kind = Ref.SUB_MEMBER, Kind.TENSOR
        if tensor.cond is not None:
            self.optional.add(node.id)

    def unknown_sub_member(self, node: N.Name, base: str, member: str, target: N.Layer) -> None:
        """`sub.w_l0` names no member of the sub's layer: a family's member is read in that layer alone."""
        family = next((t for t in target.tensors if t.repeat is not None and _in_family(member, t)), None)
        if family is not None:
            self.r.error(
                node.span,
                f"'{member}' is a member of the family '{family.written}' of layer '{target.name}' (the sub"
                f" '{base}'): a family is read in its own layer's forward only",
                f"return what you need from '{target.name}', or declare the param in this layer",
            )
            return
        hint = did_you_mean(member, [t.name for t in target.tensors if t.repeat is None])
        self.r.error(node.span, f"layer '{target.name}' (the sub '{base}') has no param or buffer '{member}'", hint)

    def check_optional_uses(self, expr: N.Expr, parent: N.Expr | None) -> None:
        if (
            isinstance(expr, N.Name)
            and expr.id in self.optional
            and expr.ref in (*N.MEMBERS, Ref.SUB_MEMBER)
            and expr.id not in self.present
        ):
            # A sub's optional member is only passed where an operation takes none (no lowering of `a + b`).
            ok = isinstance(parent, N.BinOp) and parent.op in ("+", "-", "*", "/") and expr.ref in N.MEMBERS
            # `if linear.bias != none { ... }`, as torch's modules test `self.linear.bias is not None`
            ok = ok or (expr.ref == Ref.SUB_MEMBER and (expr.id in self.not_none or _compares_with_none(parent)))
            if not ok and not takes_none(parent, expr, tensor=True) and expr.ref == Ref.SUB_MEMBER:
                self.r.error(
                    expr.span,
                    f"'{expr.id}' is optional (it exists only if its condition holds in the sub)",
                    f"use it inside `if {expr.id} != none {{ ... }}`, or pass it where an operation takes none",
                )
            elif not ok and not takes_none(parent, expr, tensor=True):
                hint = "when it is absent the operation is skipped; for other uses make it unconditional"
                built = next((t.cond for t in self.layer.tensors if t.name == expr.id and t.cond is not None), None)
                if built is not None:  # inside an `if` of its condition, it is a plain tensor
                    hint = f"when it is absent the operation is skipped; elsewhere, use it inside `if {spec_text(built)} {{ ... }}`"
                if _compares_with_none(parent) and built is not None:  # `if b != none`: its own condition says
                    hint = f"test the condition it is built under, `if {spec_text(built)} {{ ... }}`: inside, it is present"
                self.r.error(
                    expr.span,
                    f"'{expr.written if isinstance(expr, N.FamilyName) else expr.id}' is optional (it exists only if its"
                    " condition holds) and may only be an operand of + - * /",
                    hint,
                )
            return
        for child in sub_expressions(expr):
            self.check_optional_uses(child, expr)

    def check_argument_uses(self, expr: N.Expr, parent: N.Expr | None) -> None:
        """A `T?` argument is compared with none, passed where an operation takes none, or used where an
        `if x != none` holds; an `ints` argument is passed to an operation or a sub, never computed with."""
        if isinstance(expr, N.Spread):
            arg = self.layer.arg(expr.value.id)
            if expr.value.ref == Ref.ARG and arg is not None and arg.base_type == "ints" and not arg.maybe_none:
                if arg.none_entries:
                    self.r.error(
                        expr.span,
                        f"'{arg.name}' is `[int?]`: an entry may be none, so it cannot be spread into a list",
                        "pass it to an operation that takes none entries (adaptive pooling's output_size)",
                    )
                return
            if expr.value.ref not in (Ref.UNKNOWN, Ref.UNRESOLVED):
                self.r.error(
                    expr.span,
                    f"only an `ints` argument can be spread into a list, not '{expr.value.id}'",
                    "write `[a, *sizes, b]` with `sizes: ints`",
                )
            return
        arg = self.layer.arg(expr.id) if isinstance(expr, N.Name) and expr.ref == Ref.ARG else None
        choices = arg.choices if arg is not None else ()
        if arg is not None and choices and arg.base_type != "fn" and not isinstance(parent, (N.Call, N.Compare)):
            self.r.error(
                expr.span,
                f"'{arg.name}' may be one of its strings ({', '.join(map(repr, choices))}) here: it can only be passed"
                " to an operation or a sub, or compared",
                "to compute with it, declare it without strings",
            )
            return
        if isinstance(expr, N.Name) and expr.ref == Ref.ARG and self.kinds.get(expr.id) == Kind.OBJECT:
            if not (_passed_as_object(parent, expr) or _compares_with_none(parent)):
                self.r.error(
                    expr.span,
                    f"'{expr.id}' is an `object` argument (an opaque Python value): it can only be passed to an"
                    " operation parameter that takes one, or to a sub",
                    "operations that take one: " + ", ".join(sorted(_OBJECT_PARAMS)),
                )
            return
        if isinstance(expr, N.Name) and expr.ref == Ref.INPUT:
            self.check_input_use(expr, parent)
            return
        if isinstance(expr, N.Name) and expr.ref == Ref.SUB and expr.id in self.maybe_none:
            if not _compares_with_none(parent):
                self.r.error(expr.span, f"the sub '{expr.id}' can only be called, or compared with none")
            return
        if isinstance(expr, N.Name) and expr.ref == Ref.ARG and expr.kind in (Kind.LAYER, Kind.FN):
            passed = isinstance(parent, N.Call) and parent.func not in CALLABLE  # to a sub's construction
            compared = isinstance(parent, N.Compare) and expr.kind == Kind.FN  # with one of its strings
            if not (passed or compared or _compares_with_none(parent)):
                what = (
                    "a layer argument: a sub holds it (`sub NAME = ARG`) or copies it (`copy(ARG)`)"
                    if expr.kind == Kind.LAYER
                    else "an fn argument: it can only be called, compared with its strings or passed to a sub"
                )
                self.r.error(expr.span, f"'{expr.id}' is {what}")
            return
        if isinstance(expr, N.TupleExpr) and not (isinstance(parent, N.Call) and parent.func not in CALLABLE):
            self.r.error(
                expr.span, "a tuple of tensors is only passed to a sub", "e.g. a state: `h, c = cell(x, (h, c))`"
            )
        if isinstance(expr, N.Name) and expr.ref == Ref.ARG:
            passed = isinstance(parent, N.Call) and (parent.func not in CALLABLE or takes_none(parent, expr))
            if expr.id in self.maybe_none and expr.id not in self.not_none and not passed:
                if not _compares_with_none(parent):
                    self.r.error(
                        expr.span,
                        f"'{expr.id}' may be none here",
                        f"use it inside `if {expr.id} != none {{ ... }}`, or pass it where an operation takes none",
                    )
            elif self.kinds.get(expr.id) == Kind.LIST and not isinstance(parent, N.Call):
                self.r.error(
                    expr.span,
                    f"'{expr.id}' is an `ints` argument (an int or a tuple of ints): it can only be passed to an"
                    " operation or a sub",
                    "for a number, declare it `int`",
                )
            elif arg is not None and arg.none_entries and not _takes_none_entries(parent, expr):
                self.r.error(
                    expr.span,
                    f"'{expr.id}' is `[int?]`: an entry may be none, which only some operation parameters take",
                    "parameters that take none entries: " + ", ".join(sorted(_NONE_ENTRY_PARAMS)),
                )
            return
        for child in sub_expressions(expr):
            self.check_argument_uses(child, expr)

    def check_input_use(self, name: N.Name, parent: N.Expr | None) -> None:
        """An optional input is compared with none, passed where it may be none (a sub, an operation's
        parameter that defaults to none), an operand of + - * / (skipped when none), or used where
        `if x != none` proves it present; a tuple input is unpacked (`h, c = hx`) or passed to a sub."""
        passed = isinstance(parent, N.Call) and parent.func not in CALLABLE
        if name.id in self.maybe_ints and not (_passed_as_int_tuple(parent, name) or _compares_with_none(parent)):
            self.r.error(
                name.span,
                f"input '{name.id}' may be a tuple of ints here",
                "pass it to an operation parameter that takes one: " + ", ".join(sorted(_INT_TUPLE_PARAMS)),
            )
            return
        if name.id in self.maybe_none and name.id not in self.not_none:
            skipped = isinstance(parent, N.BinOp) and parent.op in ("+", "-", "*", "/") and name.kind == Kind.TENSOR
            if not (passed or skipped or _compares_with_none(parent) or takes_none(parent, name, tensor=True)):
                self.r.error(
                    name.span,
                    f"optional input '{name.id}' may be none here",
                    f"use it inside `if {name.id} != none {{ ... }}`, as an operand of + - * / (skipped when none),"
                    " or pass it where none is taken",
                )
                return
        if name.kind == Kind.TUPLE and not (passed or name is self.unpacking or _compares_with_none(parent)):
            self.r.error(
                name.span,
                f"'{name.id}' is a tuple of tensors",
                f"unpack it into names: `a, b = {name.id}`, or pass it to a sub",
            )

    def check_calls(self, expr: N.Expr, scope: Scope) -> None:
        for node in walk(expr):
            if not isinstance(node, N.Call):
                continue
            ref = scope.get(node.func)
            if node.func in CALLABLE and ref in (None, Ref.ARG):  # an argument may share an op's name
                self.check_op_call(node, CALLABLE[node.func])
            elif ref == Ref.ARG and self.kinds.get(node.func) == Kind.FN:
                self.check_fn_call(node)
            elif ref == Ref.SUB:
                if node.kwargs:
                    self.r.error(node.kwargs[0].span, "a sub is called with positional inputs only")
                if node.func in self.maybe_none and node.func not in self.not_none:
                    self.r.error(
                        node.func_span,
                        f"the sub '{node.func}' may be none here",
                        f"call it inside `if {node.func} != none {{ ... }}`",
                    )
                sub = next((s for s in self.layer.subs if s.name == node.func), None)
                if sub is not None and sub.repeat is not None:
                    self.r.error(
                        node.func_span,
                        f"'{node.func}' is a list of subs: call each in a loop",
                        f"write `for block in {node.func} {{ h = block(h) }}`",
                    )
                target = self.program.layers.get(sub.call.func) if sub is not None else None
                declared = target.forward.inputs if target is not None and target.forward is not None else None
                required = (
                    len([i for i in declared if not i.optional and i.flag is None]) if declared is not None else 0
                )
                if target is not None and declared is not None and not required <= len(node.args) <= len(declared):
                    n = len(declared)
                    inputs = ", ".join(i.name for i in declared)
                    counted = f"{required} to {n} inputs" if required < n else f"{n} input{'s' if n != 1 else ''}"
                    self.r.error(
                        node.span,
                        f"'{node.func}' takes {counted}, got {len(node.args)}",
                        f"layer '{target.name}' has forward({inputs})",
                    )
            elif ref is not None:
                hides = f" (it hides the operation '{node.func}' in this layer)" if node.func in CALLABLE else ""
                self.r.error(
                    node.func_span,
                    f"'{node.func}' is {_a(_REF_WORDS.get(ref, ref))}, not an operation{hides}",
                    "only operations and subs can be called",
                )
            elif node.func.startswith("nn."):
                self.r.error(
                    node.func_span,
                    f"'{node.func}' can only be constructed in a `sub`",
                    f"declare `sub name = {node.func}(...)` and call `name(x)`",
                )
            elif node.func != "?":
                if "." in node.func:
                    last = node.func.rsplit(".", 1)[-1]
                    hint = (
                        f"did you mean '{last}'?"
                        if last in CALLABLE
                        else "only the built-in operations and subs can be called in forward"
                    )
                    self.r.error(node.func_span, f"'{node.func}' cannot be called", hint)
                else:
                    subs = scope.names(Ref.SUB)
                    suggestion = alias_hint(node.func) or did_you_mean(node.func, list(CALLABLE) + subs)
                    self.r.error(
                        node.func_span,
                        f"unknown operation '{node.func}'",
                        suggestion or "see the operation table in the language reference",
                    )

    def check_fn_call(self, call: N.Call) -> None:
        """`activation(hidden)`: an `fn` argument called on one tensor, where none of its strings can be it
        (the `else` of `if activation == "relu" { ... }`, for each string) and where it is not none."""
        arg = self.layer.arg(call.func)
        assert arg is not None
        if call.kwargs or len(call.args) != 1:
            self.r.error(call.span, f"'{call.func}' is an fn argument: it is called on one tensor, `{call.func}(x)`")
        if self.layer.is_function and not arg.choices and not arg.maybe_none:
            # else its Function runs when a string or none is given, and a callable runs the plain forward
            self.r.error(
                call.func_span,
                f"an @function layer cannot call the fn argument '{call.func}', which is always a callable:"
                " its derivative is not known",
                f'give it a string choice or none (`{call.func}: fn | "relu"`, `fn?`) and call it in the other'
                " branch, drop @function (autograd derives through the callable), or call an operation",
            )
        left = [c for c in arg.choices if c not in self.not_strings.get(call.func, set())]
        if left:
            self.r.error(
                call.func_span,
                f"'{call.func}' may be the string {left[0]!r} here, which cannot be called",
                f'call it in the `else` of `if {call.func} == "{left[0]}" {{ ... }}`',
            )
        elif call.func in self.maybe_none and call.func not in self.not_none:
            self.r.error(
                call.func_span, f"'{call.func}' may be none here", f"call it inside `if {call.func} != none {{ ... }}`"
            )

    def check_op_call(self, call: N.Call, op) -> None:
        params = op.params
        if len(call.args) > len(params):
            self.r.error(
                call.args[len(params)].span,
                f"{op.name}() takes at most {len(params)} argument{'s' if len(params) != 1 else ''}",
                f"signature: {op.signature}",
            )
        given = {p.name for p in params[: len(call.args)]}
        for k in call.kwargs:
            if op.param(k.name) is None:
                self.r.error(
                    k.span,
                    f"{op.name}() has no argument '{k.name}'",
                    did_you_mean(k.name, [p.name for p in params]) or f"signature: {op.signature}",
                )
            elif k.name in given:
                self.r.error(k.span, f"{op.name}() got '{k.name}' twice")
            given.add(k.name)
        for p in params:
            if p.default is None and p.name not in given:
                self.r.error(call.span, f"{op.name}() needs '{p.name}'", f"signature: {op.signature}")

    def infer(self, expr: N.Expr, construction: bool = False) -> Kind:
        """Bottom-up kinds: tensor wins over numbers; numbers promote int < float."""
        for child in sub_expressions(expr):
            self.infer(child, construction)
        match expr:
            case N.Num(value=v):
                expr.kind = Kind.FLOAT if isinstance(v, float) else Kind.INT
            case N.Str():
                expr.kind = Kind.STR
            case N.Bool():
                expr.kind = Kind.BOOL
            case N.NoneLit():
                expr.kind = Kind.NONE
            case N.Name():
                if expr.ref != Ref.UNKNOWN:
                    expr.kind = expr.kind or self.kinds.get(expr.id, Kind.TENSOR)
            case N.BinOp(op=op, left=l, right=r):
                expr.kind = _promote(l.kind, r.kind, op)
            case N.UnaryOp(operand=o):
                expr.kind = Kind.INT if o.kind == Kind.BOOL else o.kind
            case N.Compare(operands=ops):
                tensor = any(o.kind == Kind.TENSOR for o in ops) and not _compares_with_none(expr)  # `w != none`
                expr.kind = Kind.TENSOR if tensor else Kind.BOOL
                if expr.kind == Kind.TENSOR and len(ops) > 2:
                    self.r.error(
                        expr.span,
                        "chained comparisons work on numbers, not tensors",
                        "compare once and combine with where(), e.g. where(x > 0, where(x < 1, a, b), b)",
                    )
            case N.BoolOp(left=l, right=r):
                if Kind.TENSOR in (l.kind, r.kind):
                    self.r.error(
                        expr.span,
                        f"'{expr.op}' works on arguments and `training`, not tensors",
                        "for elementwise choices use where(cond, a, b)",
                    )
                expr.kind = Kind.BOOL
            case N.Not(operand=o):
                if o.kind == Kind.TENSOR:
                    self.r.error(
                        expr.span,
                        "'not' works on arguments and `training`, not tensors",
                        "for a tensor comparison write e.g. `x <= 0` instead of `not x > 0`",
                    )
                expr.kind = Kind.BOOL
            case N.Call():
                expr.kind = self._call_kind(expr, construction)
            case N.Subscript(value=v, items=items) if v.kind == Kind.LIST and isinstance(v, N.Name):
                # `outputs[t]`: one tensor of a local list, by an int
                if (
                    v.ref == Ref.LOCAL
                    and len(items) == 1
                    and getattr(items[0], "kind", None) in (Kind.INT, Kind.UNKNOWN)
                ):
                    expr.kind = Kind.TENSOR
                else:
                    self.r.error(expr.span, f"a list is indexed by one int: `{v.id}[t]`")
                    expr.kind = Kind.UNKNOWN
            case N.Subscript(value=v) if v.kind in _UNINDEXABLE:
                # `e[0]` of a float argument: Python refuses it only when forward runs
                self.r.error(
                    expr.span,
                    f"{_a(v.kind)} cannot be indexed",
                    "index a tensor (`x[0]`) or a local list (`outputs[t]`)",
                )
                expr.kind = Kind.UNKNOWN
            case N.Subscript(value=v):
                expr.kind = Kind.TENSOR if v.kind == Kind.TENSOR else v.kind
                if v.kind == Kind.TENSOR:
                    self.check_index_items(expr.items)
            case N.ListExpr() | N.Spread():
                expr.kind = Kind.LIST
            case N.TupleExpr():
                expr.kind = Kind.TUPLE
            case N.Rank(value=v):
                if v.kind not in (Kind.TENSOR, Kind.UNKNOWN) or v.ref in (Ref.SUB, Ref.UNKNOWN):
                    if v.ref != Ref.UNKNOWN:
                        self.r.error(
                            v.span,
                            f"'.ndim' is the number of dims of a tensor; '{v.id}' is {_a(v.kind)}",
                            "write `x.ndim` of an input, a parameter, a buffer or a local tensor",
                        )
                expr.kind = Kind.INT
            case N.IfExp(cond=c, then=a, orelse=b):
                if c.kind not in (Kind.BOOL, Kind.UNKNOWN):
                    self.r.error(c.span, f"a condition must be a bool, this is {_a(c.kind)}")
                expr.kind = a.kind if a.kind == b.kind else _promote(a.kind, b.kind, "+")
            case N.Indexed() | N.Reduce():
                expr.kind = Kind.TENSOR
        return expr.kind

    def check_index_items(self, items: list[N.SubscriptItem]) -> None:
        """A tensor's index is an int, an integer tensor or bool mask, `none` or `...`, and a slice's bounds
        and step are ints: Python reads anything else differently (a list indexes as a tensor would, `true`
        adds a dim) or refuses it at run time (a float)."""
        for item in items:
            allowed: tuple[Kind, ...]
            if isinstance(item, N.Slice):
                values, allowed = [b for b in (item.lower, item.upper, item.step) if b is not None], (Kind.INT,)
                what = "a slice's bounds and step are ints"
            else:
                values, allowed = ([item] if isinstance(item, N.Expr) else []), (Kind.INT, Kind.TENSOR, Kind.NONE)
                what = "an index is an int, an integer tensor or bool mask, `none` or `...`"
            for value in values:
                if value.kind not in (*allowed, Kind.UNKNOWN):
                    self.r.error(value.span, f"{what}, not {_a(value.kind)}", INDEX_HINTS.get(value.kind))

    def _call_kind(self, call: N.Call, construction: bool) -> Kind:
        """A call is a tensor when any tensor operand is; on plain numbers it needs a `math` spelling."""
        op = None if call.sub else CALLABLE.get(call.func)
        if op is None:
            return Kind.TENSOR
        if op.name == "prod":  # of a size: the ints of an `ints` argument or a list
            for value in [*call.args, *(k.value for k in call.kwargs)]:
                arg = self.layer.arg(value.id) if isinstance(value, N.Name) else None
                if arg is not None and arg.none_entries:
                    self.r.error(value.span, f"prod() of '{arg.name}', whose entries may be none (`[int?]`)")
                elif value.kind not in (Kind.LIST, Kind.UNKNOWN):
                    self.r.error(
                        value.span,
                        f"prod() takes an `ints` argument or a list of ints, not {_a(value.kind)}",
                        "for a tensor's product, multiply its entries or use index notation",
                    )
            return Kind.INT
        if op.shape == "size":  # size_at(x, d): an int read from a tensor's shape
            return Kind.INT
        if op.shape == "predicate":  # is_floating_point(x): a bool read from a tensor's dtype
            return Kind.BOOL
        if (op.shape == "parts" or op.with_indices) and call is not self.unpacking:
            self.r.error(
                call.func_span,
                f"{op.name}() gives several tensors, which are unpacked into names",
                f"write e.g. `a, b = {op.name}(...)`",
            )
        operands = [call.args[i] for i, p in enumerate(op.params[: len(call.args)]) if p.tensor or p.tensors]
        operands += [k.value for k in call.kwargs if (p := op.param(k.name)) is not None and (p.tensor or p.tensors)]
        kinds = [o.kind for o in operands]
        if not any(p.tensor or p.tensors for p in op.params):  # a tensor made from numbers (arange)
            return Kind.TENSOR
        if any(k in (Kind.TENSOR, Kind.LIST) for k in kinds):
            if op.tensors_only:
                for o in operands:
                    if o.kind in N.NUMBERS:
                        self.r.error(
                            o.span,
                            f"{op.name}() takes tensors only, not a number",
                            f"use clamp(x, {'min' if op.name == 'maximum' else 'max'} = ...) to compare with a number",
                        )
            return Kind.TENSOR
        if op.scalar is None:
            self.r.error(
                call.span,
                f"{op.name}() needs a tensor; it cannot be used on numbers",
                "apply it to a tensor input or parameter",
            )
            return Kind.TENSOR
        if op.name in ("floor", "ceil"):  # math.floor's int, as docs/language.md states (inf and nan kept)
            return Kind.INT
        if op.scalar.startswith("math."):
            return Kind.FLOAT
        return _promote(kinds[0], kinds[1], "+") if len(kinds) > 1 else (kinds[0] if kinds else Kind.FLOAT)

    # ------------------------------------------------------------ backward and examples

    def check_backward(self, bwd: N.Backward, forward_locals: Scope | None) -> None:
        if not self.layer.is_function:
            self.r.error(
                _keyword(bwd.span, "backward"),
                "backward is only allowed in @function layers",
                "add `@function` on the line above `layer`",
            )
            return
        fwd = self.layer.forward
        if fwd is None or forward_locals is None:  # no forward (reported): nothing to differentiate
            return
        n_out = len(fwd.outputs) if fwd.outputs is not None else _count_returns(fwd.body)
        if len(bwd.grads) != n_out:
            self.r.error(
                _keyword(bwd.span, "backward"), f"backward takes one gradient per output: {n_out}, got {len(bwd.grads)}"
            )
        scope = forward_locals.copy()
        for name, span in bwd.grads:
            if self.check_name(name, span, "gradient") and name in scope:
                self.r.error(
                    span,
                    f"'{name}' is already defined in layer '{self.layer.name}'",
                    "gradient names need their own names",
                )
            scope.bind_local(name, bwd, span)  # a bad name is still bound: no follow-on errors
            self.kinds[name] = Kind.TENSOR
        self.check_block(bwd.body, scope, in_forward=False)
        given: dict[str, N.Grad] = {}
        for stmt in statements(bwd.body):
            if isinstance(stmt, N.Grad):
                ref = scope.get(stmt.target)
                if ref not in (Ref.INPUT, Ref.PARAM):
                    what = f"the {_REF_WORDS.get(ref, ref)} '{stmt.target}'" if ref else f"unknown name '{stmt.target}'"
                    self.r.error(
                        stmt.target_span,
                        f"grad needs an input or a parameter, not {what}",
                        did_you_mean(stmt.target, [i.name for i in fwd.inputs] + [p.name for p in self.layer.params]),
                    )
                elif stmt.target in given and given[stmt.target] is not stmt:
                    pass  # set on both branches of an if: fine
                given[stmt.target] = stmt
        needed = [i.name for i in fwd.inputs if i.dtype == "float"] + [p.name for p in self.layer.params]
        for name in needed:
            if name not in given:
                self.r.error(
                    _keyword(bwd.span, "backward"),
                    f"backward gives no gradient for '{name}'",
                    f"add `grad {name} = ...` (or `grad {name} = none`)",
                )

    def check_examples(self) -> None:
        """Each `example(...)` line names each thing once; the first gives every argument without a default
        (a later one gives what differs from it); a value is a literal, or a list of them (one configuration
        per item)."""
        inputs = {i.name for i in self.layer.forward.inputs} if self.layer.forward else set()
        known = [a.name for a in self.layer.args] + self.dims + sorted(inputs)
        given = {ex.name for ex in self.layer.examples}
        seen: set[tuple[int, str]] = set()
        suggested = set()  # names an unknown example is probably meant for: not reported as missing
        for ex in self.layer.examples:
            if (ex.group, ex.name) in seen:
                self.r.error(ex.span, f"example gives '{ex.name}' twice")
            seen.add((ex.group, ex.name))
            if ex.name not in known:
                candidates = [k for k in known if k not in given]
                hint = did_you_mean(ex.name, candidates) or did_you_mean(ex.name, known)
                suggested.update(_close_names(ex.name, candidates)[:1])
                self.r.error(ex.span, f"example names unknown argument, dim or input '{ex.name}'", hint)
                continue
            for value in self.example_choices(ex):
                self.check_example_value(ex.name, value, ex.name in inputs)
        first = {name for group, name in seen if group == 0}
        for a in self.layer.args:
            refused = name_problem(a.name, arg=True) or self.generated_name_problem(a.name, "arg")  # reported already
            if a.default is None and a.name not in first | suggested and refused is None:
                self.r.error(
                    self.layer.span,
                    f"layer '{self.layer.name}' needs an example value for '{a.name}'",
                    f"add `{a.name} = ...` to the first `example(...)`" if seen else f"add `example({a.name} = ...)`",
                )

    def example_choices(self, ex: N.ExampleValue) -> list[N.Expr]:
        """An example's value, or the items of a list of values (each checked, none twice)."""
        choices = example_choices(self.layer, ex.name, ex.value)
        if choices == [ex.value]:
            return choices
        items = ex.value.items if isinstance(ex.value, N.ListExpr) else []
        of_ints = (arg := self.layer.arg(ex.name)) is not None and arg.base_type == "ints"
        if not items:
            self.r.error(ex.value.span, f"example gives no value for '{ex.name}'", "write one or more: `[3, 8]`")
        texts: set[str] = set()
        for item in items:
            if isinstance(item, N.ListExpr) and not of_ints:
                self.r.error(item.span, "an example list holds values, not lists", "write `[3, 8]`")
            elif spec_text(item) in texts:
                self.r.error(item.span, f"example gives {spec_text(item)} twice for '{ex.name}'")
            texts.add(spec_text(item))
        return [item for item in items if of_ints or not isinstance(item, N.ListExpr)]

    def check_example_value(self, name: str, value: N.Expr, is_input: bool) -> None:
        if is_input:
            if not _is_distribution(value):
                self.r.error(value.span, "an example input is a distribution: uniform(a, b) or normal(mean, std)")
            return
        arg = self.layer.arg(name)
        if arg is not None and self.kinds.get(name) == Kind.LAYER and not isinstance(value, N.NoneLit):
            self.check_example_layer(arg, value)
            return
        kind = literal_kind(value, none_entries=arg is not None and arg.none_entries)
        if kind is None and arg is not None and arg.base_type == "ints" and literal_kind(value, True) == Kind.LIST:
            self.r.error(value.span, f"an entry of ints argument '{name}' is none", _NONE_ENTRY_HINT.format(name))
            return
        if kind is None:
            self.r.error(value.span, "example values are literals", "or a list of literals: `[3, 8]`")
            return
        value.kind = kind
        if arg is None and kind != Kind.INT:
            self.r.error(value.span, f"example value for int '{name}' is {_a(kind)}")
        elif arg is not None and arg.base_type in ARG_TYPES and not fits_type(kind, arg):
            self.r.error(value.span, f"example value for {arg.type} '{name}' is {_a(kind)}")

    def check_example_layer(self, arg: N.Arg, value: N.Expr) -> None:
        """A layer argument's example: its layer built from literals, `TransformerEncoderLayer(4, 2)`."""
        if not isinstance(value, N.Call) or value.func != arg.base_type:
            self.r.error(
                value.span,
                f"example value for '{arg.name}' is an instance of its layer",
                f"write `{arg.name} = {arg.base_type}(...)` with literal arguments",
            )
            return
        self._check_layer_call(value)
        for v in [*value.args, *(k.value for k in value.kwargs)]:
            v.kind = literal_kind(v) or Kind.UNKNOWN
            if v.kind == Kind.UNKNOWN:
                self.r.error(v.span, "the arguments of an example's layer are literals")


def _in_family(name: str, t: N.Tensor) -> bool:
    """Whether `name` is one member of family `t` (`weight_l0` of `weight_l{k}`)."""
    head, _, rest = t.name.partition("{}")
    middle = name[len(head) : len(name) - len(rest)] if len(name) > len(head) + len(rest) else ""
    return name.startswith(head) and name.endswith(rest) and middle.isdigit()


def _is_distribution(v: N.Expr) -> bool:
    return (
        isinstance(v, N.Call)
        and v.func in ("uniform", "normal")
        and len(v.args) + len(v.kwargs) == 2
        and all(literal_kind(a) in (Kind.INT, Kind.FLOAT) for a in [*v.args, *(k.value for k in v.kwargs)])
    )


def literal_kind(e: N.Expr, none_entries: bool = False) -> Kind | None:
    """The kind of a literal (a number, string, bool, `inf` or `pi`, maybe negated); None for anything else.
    With `none_entries` (a `[int?]` argument's value) a list's entries may be none: `[3, none]`."""
    match e:
        case N.Num(value=v):
            return Kind.FLOAT if isinstance(v, float) else Kind.INT
        case N.Str():
            return Kind.STR
        case N.Bool():
            return Kind.BOOL
        case N.Name(id=i) if i in CONSTANTS:
            return Kind.FLOAT
        case N.UnaryOp(op="-", operand=N.Name(id=i)) if i in CONSTANTS:
            return Kind.FLOAT
        case N.NoneLit():
            return Kind.NONE
        case N.ListExpr(items=items) if items and all(literal_kind(i) == Kind.INT for i in items):
            return Kind.LIST  # an `ints` value: [2, 2]
        case N.ListExpr(items=items) if (
            none_entries and items and all(literal_kind(i) in (Kind.INT, Kind.NONE) for i in items)
        ):
            return Kind.LIST  # a `[int?]` value: [3, none]
    return None


def is_expression_default(d: N.Expr) -> bool:
    """`4 * dim`: a default computed from earlier arguments (in __init__), not a literal."""
    if literal_kind(d) is not None or (isinstance(d, N.ListExpr) and not d.items):
        return False
    if isinstance(d, N.Name) and d.id in ("True", "False", "None"):
        return False  # Python's spelling of a literal: reported as one
    return any(isinstance(n, N.Name) and n.id not in CONSTANTS for n in walk(d)) or isinstance(d, (N.BinOp, N.Call))


def _arg_kind(arg: N.Arg) -> Kind:
    if arg.base_type == "ints":
        return Kind.LIST
    if arg.base_type == "tensor":
        return Kind.TENSOR
    if arg.base_type == "object":
        return Kind.OBJECT
    return Kind(arg.base_type) if arg.base_type in ARG_TYPES else Kind.UNKNOWN


def fits_type(kind: Kind, arg: N.Arg) -> bool:
    """Whether a literal of `kind` is a value of `arg`'s type: an int is a float and an `ints`, none is a
    `T?`."""
    if kind == Kind.NONE:
        return arg.maybe_none
    if kind == Kind.STR and arg.choices:
        return True
    if arg.base_type == "ints":
        return kind in (Kind.INT, Kind.LIST)
    return kind == arg.base_type or (arg.base_type == Kind.FLOAT and kind == Kind.INT)


# `linear_cross_entropy(options = ...)`: the operation parameters that take an `object` argument.
_OBJECT_PARAMS = {f"{op.name}({name} = ...)" for op in CALLABLE.values() for name in op.objects}


def _passed_as_object(parent: N.Expr | None, operand: N.Expr) -> bool:
    """Whether `operand` is given whole to an operation parameter that takes an opaque Python value."""
    if not isinstance(parent, N.Call) or parent.func not in CALLABLE:
        return False
    op = CALLABLE[parent.func]
    for k in parent.kwargs:
        if k.value is operand:
            return k.name in op.objects
    index = next((i for i, a in enumerate(parent.args) if a is operand), len(op.params))
    return index < len(op.params) and op.params[index].name in op.objects


def _compares_with_none(parent: N.Expr | None) -> bool:
    return (
        isinstance(parent, N.Compare)
        and set(parent.ops) <= {"==", "!="}
        and any(isinstance(o, N.NoneLit) for o in parent.operands)
    )


def _none_checked(cond: N.Expr, op: str) -> set[str]:
    """The names a condition proves not none: `x != none` (and its `and` terms) for op "!="; `x == none` for
    op "==" (its else branch)."""
    if op == "!=" and isinstance(cond, N.BoolOp) and cond.op == "and":
        return _none_checked(cond.left, op) | _none_checked(cond.right, op)
    if isinstance(cond, N.Compare) and cond.ops == [op] and _compares_with_none(cond):
        return {o.id for o in cond.operands if isinstance(o, N.Name)}
    return set()


def _bound_param(op: Op, call: N.Call, operand: N.Expr) -> str | None:
    """The name of `op`'s parameter that `operand`, an argument of `call`, is given to."""
    names = [p.name for p in op.params]
    name = next((names[i] for i, a in enumerate(call.args) if a is operand and i < len(names)), None)
    return next((k.name for k in call.kwargs if k.value is operand), name)


def _passed_as_int_tuple(parent: N.Expr | None, operand: N.Expr) -> bool:
    """Whether `operand` is given to an operation parameter that takes a tuple of ints too (`Op.int_tuples`)."""
    if not isinstance(parent, N.Call) or parent.func not in CALLABLE:
        return False
    op = CALLABLE[parent.func]
    name = _bound_param(op, parent, operand)
    return name in op.int_tuples


_INT_TUPLE_PARAMS = {f"{op.name}({name})" for op in CALLABLE.values() for name in op.int_tuples}


def _takes_none_entries(parent: N.Expr | None, operand: N.Expr) -> bool:
    """Whether `operand` is passed to a sub, or to an operation parameter whose ints may be none
    (`Op.none_entries`: adaptive pooling's output_size)."""
    if not isinstance(parent, N.Call):
        return False
    if parent.func not in CALLABLE:
        return True
    op = CALLABLE[parent.func]
    name = _bound_param(op, parent, operand)
    return name in op.none_entries


_NONE_ENTRY_HINT = "declare it `{}: [int?]` if an entry may be none (adaptive pooling: keep that size)"
_NONE_ENTRY_PARAMS = {f"{op.name}({name})" for op in CALLABLE.values() for name in op.none_entries}


def _strings_excluded(cond: N.Expr, op: str, known: dict[str, set[str]]) -> dict[str, set[str]]:
    """`known` with the strings a condition rules out: `name != "s"` where it holds (op "!="), `name == "s"`
    in its else branch (op "==")."""
    out = {name: set(strings) for name, strings in known.items()}
    if isinstance(cond, N.Compare) and cond.ops == [op] and len(cond.operands) == 2:
        name, value = cond.operands
        if isinstance(name, N.Name) and isinstance(value, N.Str):
            out.setdefault(name.id, set()).add(value.value)
    return out


def _strings_ruled_out_after(stmt: N.If, known: dict[str, set[str]]) -> dict[str, set[str]]:
    """The strings an `if f == "a" { return ... } else if f == "b" { return ... }` rules out after it: each
    condition whose branch returns was false on the path that goes on."""
    if not _always_returns(stmt.body):
        return known
    known = _strings_excluded(stmt.cond, "==", known)
    if len(stmt.orelse) == 1 and isinstance(stmt.orelse[0], N.If):
        return _strings_ruled_out_after(stmt.orelse[0], known)
    return known


def takes_none(parent: N.Expr | None, operand: N.Expr, tensor: bool = False) -> bool:
    """Whether `operand` is an argument of an operation whose parameter (a tensor one, with `tensor`)
    defaults to `none` (conv's `bias`, pooling's `stride`): an optional member or a `T?` argument may be
    passed there as it is, `None` when absent."""
    if not isinstance(parent, N.Call) or parent.func not in CALLABLE:
        return False
    op = CALLABLE[parent.func]
    name = _bound_param(op, parent, operand)
    param = op.param(name) if name else None
    return param is not None and (param.tensor or not tensor) and param.default == "none"


def literal_value(e: N.Expr):
    match e:
        case N.Num(value=v) | N.Str(value=v) | N.Bool(value=v):
            return v
        case N.Name(id="inf"):
            return float("inf")
        case N.Name(id="pi"):
            import math

            return math.pi
        case N.UnaryOp(op="-", operand=inner):
            return -literal_value(inner)
        case N.NoneLit():
            return None
        case N.ListExpr(items=items):
            return tuple(literal_value(i) for i in items)
    raise ValueError("not a literal")


def _close_names(name: str, candidates) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)


_UNINDEXABLE = (Kind.INT, Kind.FLOAT, Kind.BOOL, Kind.STR, Kind.NONE)  # Python raises on their `[...]`
_REF_WORDS = {Ref.ARG: "argument", Ref.DIM: "symbolic dim", Ref.LOCAL: "local name"}


def _a(kind: str) -> str:
    if kind == Kind.NONE:
        return "none"
    return f"an {kind}" if kind[:1] in ("a", "e", "i", "o", "u") else f"a {kind}"


def _keyword(span: N.Span, word: str) -> N.Span:
    """The span of the keyword that starts a construct (not the whole, many-line block)."""
    return N.Span(span.line, span.col, span.line, span.col + len(word))


def _has_unknown_name(expr: N.Expr) -> bool:
    """Whether `expr` uses a name already reported unknown (its kind is a guess: no follow-on errors)."""
    return any(isinstance(n, N.Name) and n.ref == Ref.UNKNOWN for n in walk(expr))


def alias_hint(name: str) -> str | None:
    """A hint by meaning for an operation spelt as other libraries spell it (`swish` → `silu`)."""
    targets = OP_ALIASES.get(name.lower())
    if not targets:
        return None
    ops = [f"'{t}'" for t in targets if t in CALLABLE]
    return f"did you mean {' or '.join(ops)}?" if ops else f"write `{targets[0]}`"


def _promote(a: Kind, b: Kind, op: str) -> Kind:
    if Kind.TENSOR in (a, b) or Kind.LIST in (a, b):
        return Kind.TENSOR
    if op == "/":
        return Kind.FLOAT
    if Kind.FLOAT in (a, b):
        return Kind.FLOAT
    if a in N.NUMBERS and b in N.NUMBERS:
        return Kind.INT
    return a or b


def _always_returns(body: list[N.Stmt]) -> bool:
    """Whether `body` returns on every path (its last statement is a return, or an `if` both of whose
    branches always return)."""
    if not body:
        return False
    last = body[-1]
    if isinstance(last, N.If):
        return _always_returns(last.body) and _always_returns(last.orelse)
    return isinstance(last, N.Return)


def _count_returns(body: list[N.Stmt]) -> int:
    for stmt in statements(body):
        if isinstance(stmt, N.Return):
            return len(stmt.values)
    return 1


def _gives_indices(call: N.Call) -> bool:
    """`max_pool2d_with_indices(...)`: an op giving its result and the indices of its maxima."""
    op = OPS.get(call.func)
    return op is not None and op.with_indices


def _parts_written(call: N.Call) -> int | None:
    """How many parts a chunk()/split() call gives, when its arguments say so (`chunk(x, 2)`, `split(x, [d, d])`)."""
    count = (
        call.args[1]
        if len(call.args) > 1
        else next((k.value for k in call.kwargs if k.name in ("chunks", "sizes")), None)
    )
    if call.func == "chunk" and isinstance(count, N.Num) and isinstance(count.value, int):
        return count.value
    if call.func == "split" and isinstance(count, N.ListExpr):
        return len(count.items)
    return None


def _floating_part(e: N.Expr, float_tensors: set[str]) -> N.Expr | None:
    """The part of an arithmetic expression that makes it certainly floating-point (a float literal, a true
    division, a float tensor), or None. Calls and comparisons are not looked into: their dtypes vary."""
    match e:
        case N.Num(value=float()):
            return e
        case N.Name(id=name) if name in float_tensors:
            return e
        case N.BinOp(op="/"):
            return e
        case N.BinOp(left=left, right=right) if e.op in ("+", "-", "*", "%", "//", "**"):
            return _floating_part(left, float_tensors) or _floating_part(right, float_tensors)
        case N.UnaryOp(op="-", operand=operand):
            return _floating_part(operand, float_tensors)
    return None
