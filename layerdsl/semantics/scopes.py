"""Scoping: what a name refers to at a point of a layer, and the declaration it refers to.

The rules, in the order names are declared (a later declaration of a taken name is an error, except a
member named after the bool argument that is its condition, which takes the name over):
arguments, lets (each sees the arguments and the lets before it), members (params, buffers), subs,
forward inputs, the symbolic dims their shapes bind, then forward locals, statement by statement (a
local bound on both branches of an `if`, or on one whose other branch returns, is bound after it; a
`for` variable, and a local first bound in its body, are bound in the body only).
Backward sees the forward's locals, its gradients and its own locals. Inside an index statement the
indices of the left side and of the enclosing reductions are index variables. A name no declaration
gives is `training` or a constant (`pi`, `inf`). Construction expressions (lets, member shapes,
initialisers, conditions, subs' arguments) see only arguments, lets and constants; a family member's also
see its member loop's variable (`for k in range(n) { param w_l{k}: [...] }`), bound as a `let`. The
variable of a list of subs (`[Block(d) for i in range(n)]`) names nothing.

The checker binds names with these rules as it checks; `scope_at` and `resolve` replay them for a
position in a checked or unchecked layer (the language server's go-to-definition and hover).

Layer names (a sub's layer, a layer argument's type) are resolved by folder (`Namespace`): a spec's own
folder first, then the nearest folder holding the name, counted in steps up and down the folder tree, the
folders above winning a tie; two other folders at the same nearest distance make the name ambiguous there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TypeGuard

from layerdsl.diagnostics import Span
from layerdsl.ir import nodes as N
from layerdsl.ir.nodes import Ref
from layerdsl.ir.visit import walk
from layerdsl.language.tables import CONSTANTS

CONSTRUCTION = (Ref.ARG, Ref.LET)  # what construction expressions may use, besides constants


@dataclass
class Binding:
    """What a name refers to and where it is declared: an `Arg`, `Let`, `Tensor`, `Sub` or `Input`;
    the `Name` of a dim in an input shape or of an index variable; the statement that first binds a
    local; the `Backward` block of a gradient; None for `training` and constants."""

    ref: Ref
    decl: N.Node | None
    span: Span


@dataclass
class Scope:
    """The names visible at one point, each with its binding."""

    bindings: dict[str, Binding] = field(default_factory=dict)
    construction: bool = False  # in a construction expression: only arguments, lets and constants

    def declare(self, name: str, ref: Ref, decl: N.Node | None, span: Span) -> bool:
        """Binds a new name; False (and nothing bound) when `name` is taken."""
        old = self.bindings.get(name)
        if old is not None and not _takes_over_condition(ref, decl, old):
            return False
        self.bindings[name] = Binding(ref, decl, span)
        return True

    def bind_local(self, name: str, decl: N.Stmt | N.Backward, span: Span) -> None:
        """Binds `name` as a local, by a statement or as a gradient of a backward block (rebinding an
        existing local keeps its first binding)."""
        if self.get(name) != Ref.LOCAL:
            self.bindings[name] = Binding(Ref.LOCAL, decl, span)

    def get(self, name: str) -> Ref | None:
        """What `name` is declared as here (None when undeclared; see `lookup` for the full rule)."""
        b = self.bindings.get(name)
        return b.ref if b is not None else None

    def lookup(self, name: str) -> Ref | None:
        """What `name` refers to here, with the fallbacks: `training`, then the constants."""
        ref = self.get(name)
        if self.construction:
            return ref if ref in CONSTRUCTION else (Ref.CONST if name in CONSTANTS else None)
        if "." in name:  # `linear.weight`: a sub's member (the checker finds it in the sub's layer)
            return Ref.SUB_MEMBER if self.get(name.split(".")[0]) == Ref.SUB else None
        if ref is not None:
            return ref
        if name == "training":
            return Ref.TRAINING
        return Ref.CONST if name in CONSTANTS else None

    def binding(self, name: str) -> Binding | None:
        """The declaration `name` refers to here (None for `training`, constants and unknown names)."""
        b = self.bindings.get(name)
        if b is None or (self.construction and b.ref not in CONSTRUCTION):
            return None
        return b

    def copy(self) -> Scope:
        return Scope(dict(self.bindings), self.construction)

    def names(self, *refs: Ref) -> list[str]:
        """The declared names, in order of declaration; only those of kinds `refs` when given."""
        return [n for n, b in self.bindings.items() if not refs or b.ref in refs]

    def __contains__(self, name: str) -> bool:
        return name in self.bindings

    def __iter__(self) -> Iterator[str]:
        return iter(self.bindings)


def _takes_over_condition(ref: Ref, decl: N.Node | None, old: Binding) -> bool:
    """`param bias: [n] = ... if bias` (or `if affine and bias`) with `bias: bool`: the member takes the
    argument's name."""
    return (
        ref in N.MEMBERS
        and old.ref == Ref.ARG
        and isinstance(decl, N.Tensor)
        and isinstance(old.decl, N.Arg)
        and old.decl.type == "bool"
        and decl.named_by_condition
    )


def is_new_dim(d: N.Expr | N.EllipsisItem, scope: Scope) -> TypeGuard[N.Name]:
    """Whether dim `d` of an input shape binds a symbolic dim (a bare name nothing declares yet)."""
    return isinstance(d, N.Name) and d.id not in scope and d.id not in CONSTANTS


def merge_branches(scope: Scope, then: Scope, orelse: Scope, then_returns: bool, else_returns: bool) -> set[str]:
    """Binds in `scope` the locals an `if` binds on every path that goes on; returns the names bound on
    some paths only (an error to read after the `if`)."""
    partly = set()
    for name in then.names():
        if name in scope:
            continue
        if name in orelse or else_returns:
            scope.bindings[name] = then.bindings[name]
        else:
            partly.add(name)
    for name in orelse.names():
        if name in scope:
            continue
        if then_returns:
            scope.bindings[name] = orelse.bindings[name]
        else:
            partly.add(name)
    return partly


# ---------------------------------------------------------------- replaying the rules at a position


def scope_at(layer: N.Layer, line: int, col: int) -> Scope:
    """The names visible at (1-based) `line`:`col` of `layer`."""
    at = (line, col)
    scope = Scope()
    for arg in layer.args:
        scope.declare(arg.name, Ref.ARG, arg, arg.span)
    for let in layer.lets:
        if _holds(let, at):
            scope.construction = True
            return scope
        scope.declare(let.name, Ref.LET, let, let.span)
    if any(_holds(sub, at) for sub in layer.subs):
        scope.construction = True  # a sub's call sees arguments and lets only (not a list's loop variable)
        return scope
    for t in layer.tensors:
        if _holds(t, at):
            scope.construction = True  # a member's shape, initialiser or condition sees arguments and lets only
            _declare_family_var(scope, t)
            return scope
        scope.declare(t.name, Ref(t.kind), t, t.span)
    for sub in layer.subs:
        if sub.given is not None and sub.given.id == sub.name:  # `sub norm = norm`: the argument, registered
            scope.bindings.pop(sub.name, None)
        scope.declare(sub.name, Ref.SUB, sub, sub.span)
    fwd = layer.forward
    if fwd is None:
        return scope
    _declare_inputs(scope, fwd)
    if any(_holds(ex, at) for ex in layer.examples):
        return scope
    if _inside(at, fwd.span):
        _bind_block(scope, fwd.body, at)
        return scope
    _bind_block(scope, fwd.body, None)
    bwd = layer.backward
    if bwd is not None and _inside(at, bwd.span):
        for name, span in bwd.grads:
            scope.bind_local(name, bwd, span)
        _bind_block(scope, bwd.body, at)
    return scope


def resolve(layer: N.Layer, name: str, line: int, col: int) -> Binding | None:
    """The declaration `name` refers to at `line`:`col` of `layer`: None for `training`, constants and
    unknown names (`scope_at(...).lookup(name)` tells these apart)."""
    return scope_at(layer, line, col).binding(name)


def _declare_family_var(scope: Scope, t: N.Tensor) -> None:
    """A family member's shape, initialiser and condition also see its member loop's variable, an int bound
    as a `let` (as the checker binds it), unless the name is taken (the checker reports that)."""
    if t.repeat is not None:
        var = t.repeat.var
        scope.declare(var.id, Ref.LET, var, var.span)


def _declare_inputs(scope: Scope, fwd: N.Forward) -> None:
    for inp in fwd.inputs:  # an input, then the dims its shape binds
        scope.declare(inp.name, Ref.INPUT, inp, inp.span)
        if inp.alternatives:  # `long[N, S] | long[L]`: a dim new in an alternative binds nothing
            continue
        for d in [d for p in inp.parts or [inp] if p.shape is not None for d in p.shape.dims]:
            if is_new_dim(d, scope):
                scope.declare(d.id, Ref.DIM, d, d.span)


def _bind_block(scope: Scope, body: list[N.Stmt], at: tuple[int, int] | None) -> bool:
    """Binds the locals of the statements of `body` before `at` (all of them when `at` is None); when a
    statement holds `at`, binds what is visible inside it and stops. Returns whether `body` returns."""
    for stmt in body:
        if at is not None and _inside(at, stmt.span):
            _enter(scope, stmt, at)
            return False
        if at is not None and (stmt.span.line, stmt.span.col) > at:
            return False
        match stmt:
            case N.Assign() | N.IndexAssign():
                scope.bind_local(stmt.target, stmt, stmt.target_span)
            case N.Unpack():
                for name, span in stmt.targets:
                    scope.bind_local(name, stmt, span)
            case N.If(body=then, orelse=orelse):
                then_scope, else_scope = scope.copy(), scope.copy()
                r1, r2 = _bind_block(then_scope, then, None), _bind_block(else_scope, orelse, None)
                merge_branches(scope, then_scope, else_scope, r1, r2)
                if r1 and r2:
                    return True
            case N.Return():
                return True
    return False


def _enter(scope: Scope, stmt: N.Stmt, at: tuple[int, int]) -> None:
    match stmt:
        case N.If(body=then, orelse=orelse):
            in_else = bool(orelse) and at >= (orelse[0].span.line, orelse[0].span.col)
            _bind_block(scope, orelse if in_else else then, at)
        case N.For(body=body):
            if at >= (stmt.var_span.end_line, stmt.var_span.end_col):
                ref = Ref.SUB if scope.get(_iterated(stmt)) == Ref.SUB else Ref.LOCAL
                scope.bindings[stmt.var] = Binding(ref, stmt, stmt.var_span)
            _bind_block(scope, body, at)
        case N.IndexAssign():
            for i in stmt.indices:
                scope.bindings.setdefault(i.id, Binding(Ref.INDEX, i, i.span))
            for node in walk(stmt.value):
                if isinstance(node, N.Reduce) and _inside(at, node.span):
                    for i in node.indices:
                        scope.bindings.setdefault(i.id, Binding(Ref.INDEX, i, i.span))


def _iterated(stmt: N.For) -> str:
    """The name a `for` runs over (a list of subs), or "" for `range(...)`."""
    return stmt.iter.id if isinstance(stmt.iter, N.Name) else ""


def _holds(decl: N.Node, at: tuple[int, int]) -> bool:
    """Whether a declaration (its name and everything written after it) holds `at`."""
    spans = [n.span for n in walk(decl) if hasattr(n, "span")]
    start = min((s.line, s.col) for s in spans)
    end = max((s.end_line, s.end_col) for s in spans)
    return start <= at < end


def _inside(at: tuple[int, int], span: Span) -> bool:
    return (span.line, span.col) <= at < (span.end_line, span.end_col)


# ------------------------------------------------------------------ layer names, by folder

Folder = tuple[str, ...]


def folder_of(path: str) -> Folder:
    """The folder of a spec (its path's parts without the file), as the checker and the language server
    name it: `specs/torch_nn/norm.layer` → `("specs", "torch_nn")`."""
    return PurePosixPath(path.replace("\\", "/")).parent.parts


def folder_distance(here: Folder, there: Folder) -> tuple[int, int]:
    """How far `there` is from `here`: the steps up and down the folder tree, then 0 for a folder above
    (or `here` itself) and 1 for any other, so that of two folders at the same distance the one above wins."""
    common = 0
    while common < min(len(here), len(there)) and here[common] == there[common]:
        common += 1
    down = len(there) - common
    return len(here) - common + down, int(down > 0)


class Namespace:
    """The layers of one run by name and folder: which layer a name means in a folder. Of several layers
    of one name in one folder (an error the checker reports) the first counts."""

    def __init__(self, layers: Iterable[N.Layer]) -> None:
        self.by_name: dict[str, dict[Folder, N.Layer]] = {}
        for layer in layers:
            self.by_name.setdefault(layer.name, {}).setdefault(folder_of(layer.path), layer)
        self._views: dict[Folder, dict[str, N.Layer]] = {}
        # The run-wide meaning of each name: the layer of the shallowest folder (the first one of those).
        self.primary = {
            name: min(found.items(), key=lambda item: len(item[0]))[1] for name, found in self.by_name.items()
        }

    def candidates(self, name: str, path: str) -> list[N.Layer]:
        """The layers `name` may mean in the folder of `path`: the nearest one, or the several at the same
        nearest distance (ambiguous); none for an unknown name."""
        found = self.by_name.get(name)
        if not found:
            return []
        here = folder_of(path)
        ranked = sorted((folder_distance(here, folder), folder) for folder in found)
        return [found[folder] for distance, folder in ranked if distance == ranked[0][0]]

    def visible(self, path: str) -> dict[str, N.Layer]:
        """Every layer name of the run that has one meaning in the folder of `path`, and its layer."""
        here = folder_of(path)
        view = self._views.get(here)
        if view is None:
            view = {}
            for name in self.by_name:
                found = self.candidates(name, path)
                if len(found) == 1:
                    view[name] = found[0]
            self._views[here] = view
        return view

    def ambiguity(self, name: str, path: str) -> tuple[str, str] | None:
        """The error (message, hint) of a use of `name` in the folder of `path` when it is ambiguous there."""
        found = self.candidates(name, path)
        if len(found) < 2:
            return None
        where = " and ".join(f"{layer.path}:{layer.span.line}:{layer.span.col}" for layer in found)
        return (
            f"layer '{name}' is ambiguous here: it is defined in {len(found)} other folders as near as each other",
            f"the definitions are at {where}; a spec sees its own folder first, then the nearest folder"
            " (those above first): rename one of them, or move the one meant nearer",
        )

    def key(self, layer: N.Layer) -> str:
        """The key of `layer`'s entries in the run's tables (shapes, backward plans): its name for the
        run-wide meaning of the name, `folder/Name` for a layer of that name in another folder."""
        primary = self.primary.get(layer.name)
        if primary is None or folder_of(primary.path) == folder_of(layer.path):  # (a copy of it too)
            return layer.name
        return "/".join([*folder_of(layer.path), layer.name])
