"""A generated Function's backward binds only what it reads, and setup_context keeps on `ctx` only what
backward reads: over every shipped spec compiled with `@function` (function_coverage's survey, compiled
once per session with tests/test_function_coverage.py), each name its backward's prelude binds (`B =
ctx.B`, `h = n // 2`, `x, w = ctx.saved_tensors`) is read later in that backward, and each `ctx.<field>`
forward or setup_context sets is read by backward. The generated source is read with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from layerdsl.codegen.function_sub_calls import SUB_CALL


@pytest.fixture(scope="module")
def functions(function_derivation) -> dict[str, ast.ClassDef]:
    """Every generated autograd.Function of the shipped specs under `@function`, by `file:class` (the
    package the session's survey generated: tests/conftest.py)."""
    found = {}
    for path, text in function_derivation.sources().items():
        for cls in ast.walk(ast.parse(text)):
            if isinstance(cls, ast.ClassDef) and "backward" in _methods(cls):
                found[f"{Path(path).name}:{cls.name}"] = cls
    return found


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {m.name: m for m in cls.body if isinstance(m, ast.FunctionDef)}


def _bound(target: ast.expr) -> list[str]:
    """The names an assignment's target binds (`a`, `a, b`), not those it reads (`g[k] = ...`)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for t in target.elts for n in _bound(t.value if isinstance(t, ast.Starred) else t)]
    return []


def prelude_unread(backward: ast.FunctionDef) -> list[str]:
    """The names backward's prelude binds that no later statement reads. The prelude: the assignments it
    starts with, up to the first other statement or the first that binds a gradient (`grad_x = None`)."""
    unread = []
    for k, stmt in enumerate(backward.body):
        if not isinstance(stmt, ast.Assign):
            break
        names = [n for t in stmt.targets for n in _bound(t) if n != "_"]
        if any(n.startswith("grad_") for n in names):
            break
        later = {
            n.id
            for s in backward.body[k + 1 :]
            for n in ast.walk(s)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
        }
        unread += [n for n in names if n not in later]
    return unread


def _ctx_fields(method: ast.FunctionDef, kind: type[ast.expr_context]) -> set[str]:
    return {
        n.attr
        for n in ast.walk(method)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "ctx"
        if isinstance(n.ctx, kind)
    }


def _composes(cls: ast.ClassDef) -> bool:
    """Whether the Function runs its subs' Functions (`composes = True`): a caller like it may run it too."""
    return any(isinstance(s, ast.Assign) and [ast.unparse(t) for t in s.targets] == ["composes"] for s in cls.body)


def _read_by_a_caller() -> set[str]:
    """The fields of its context a composing Function's caller reads: those `_SubCall` (the context it gives
    the Function it runs) reads of itself."""
    sub_call = ast.parse("\n".join(SUB_CALL))
    return {
        n.attr
        for n in ast.walk(sub_call)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
        if isinstance(n.ctx, ast.Load)
    }


def ctx_unread(cls: ast.ClassDef) -> set[str]:
    """The `ctx` fields forward or setup_context sets that backward never reads (nor, for a composing
    Function, the caller that may run it)."""
    methods = _methods(cls)
    stored = {f for m in ("forward", "setup_context") if m in methods for f in _ctx_fields(methods[m], ast.Store)}
    read = _ctx_fields(methods["backward"], ast.Load) | (_read_by_a_caller() if _composes(cls) else set())
    return stored - read


def test_every_backward_prelude_binds_only_what_backward_reads(functions):
    assert len(functions) > 100  # every derived layer of specs/ and specs/torch_nn/
    unread = {name: u for name, cls in functions.items() if (u := prelude_unread(_methods(cls)["backward"]))}
    assert not unread, unread


def test_setup_context_keeps_on_ctx_only_what_backward_reads(functions):
    unread = {name: sorted(u) for name, cls in functions.items() if (u := ctx_unread(cls))}
    assert not unread, unread
