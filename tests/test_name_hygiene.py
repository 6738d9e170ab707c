"""Name hygiene: no spec name can reach a name the generated code introduces for itself.

A property test builds specs from templates (a module layer; an `@function` layer with a derived backward,
with a hand-written one, and one through reductions whose backward keeps extra outputs and `ctx` fields),
each with arguments, two parameters, a buffer, a `let`, a symbolic dim, two inputs, two locals, and a
`sub` or backward locals. A few of its names are drawn from every identifier the generated code of the
shipped specs contains, Python's keywords and builtins, and the attributes of `nn.Module`,
`autograd.Function` and its `ctx`, or made from the names already drawn (`grad_x`, `x_shape`, `x_out`, ...).
A refused spec must give located errors (no traceback, no follow-on "unknown name"); an accepted one
must import, and its layer must agree with the same computation written in plain torch, at random values,
in value and in the first- and second-order gradients of both inputs and a parameter.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import tempfile
import types
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.diagnostics import SpecError
from layerdsl.driver.pipeline import check, emit_modules
from layerdsl.language.naming import snake_case
from layerdsl.language.tables import FUNCTION_CTX_ATTRIBUTES, GENERATED_BUILTINS, NN_MODULE_ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent

# The template's slots, in the order names are drawn for them; the last five are the hand-written backward's.
SLOTS = ("layer", "n", "b", "w", "v", "buf", "k", "sub", "d", "x", "y", "t", "u", "g", "gu", "gt", "gh", "gz")
# A module layer; @function: derived, hand-written, derived through reductions (its extra outputs and `ctx` fields),
# derived through a loop of a run-time count (its per-step lists, stacked values, step variables; the slots `g`
# and `gu`, a hand-written backward's elsewhere, are its loop variable and the list it appends to)
KINDS = ("module", "function", "backward", "reduce", "loop")


def shipped_generated_code() -> list[str]:
    """The generated modules of the shipped specs (before black)."""
    sources, files, program = check([str(ROOT / "specs")])
    plans, _ = plan_backwards(files)
    return list(emit_modules(sources, files, program, plans).values())


def builtins_used(source: str) -> set[str]:
    """The builtins a generated module reads (names it reads and never binds)."""
    nodes = list(ast.walk(ast.parse(source)))
    bound = {n.arg for n in nodes if isinstance(n, ast.arg)}
    bound |= {n.id for n in nodes if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    bound |= {n.name for n in nodes if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    read = {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return {n for n in read - bound if n in dir(builtins)}


def generated_identifiers() -> set[str]:
    """Every identifier in the generated code of the shipped specs (names, parameters, attributes,
    functions and classes), collected from the code itself."""
    out: set[str] = set()
    for text in shipped_generated_code():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Name):
                out.add(node.id)
            elif isinstance(node, ast.arg):
                out.add(node.arg)
            elif isinstance(node, ast.Attribute):
                out.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                out.add(node.name)
            elif isinstance(node, ast.alias):
                out.add((node.asname or node.name).split(".")[0])
    return out


def _ctx_attributes() -> set[str]:
    seen: set[str] = set()

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x * 1

        @staticmethod
        def setup_context(ctx, inputs, output):
            seen.update(dir(ctx))

        @staticmethod
        def backward(ctx, g):
            return g

    Probe.apply(torch.ones(1, requires_grad=True))
    return seen


POOL = sorted(
    {
        n
        for n in generated_identifiers()
        | set(keyword.kwlist)
        | set(keyword.softkwlist)
        | set(dir(builtins))
        | set(dir(torch.nn.Module()))
        | set(dir(torch.autograd.Function))
        | _ctx_attributes()
        if n.isidentifier() and not n.startswith("__")
    }
)


PLAIN = dict(
    dict(layer="Case", n="n", b="b", w="w", v="v", buf="buf", k="k", sub="act", d="B", x="x", y="y", t="t", u="u"),
    g="dy",
    gu="du",
    gt="dt",
    gh="dh",
    gz="dz",
)


@st.composite
def names(draw) -> dict[str, str]:
    """A few slots renamed: from the pool, or after another slot's name (`grad_x`, `x_shape`, ...)."""
    drawn = dict(PLAIN)
    for slot in draw(st.lists(st.sampled_from(SLOTS), min_size=1, max_size=4, unique=True)):
        if draw(st.integers(0, 3)) == 0:
            base = draw(st.sampled_from(sorted(drawn.values())))
            made = [f"grad_{base}", f"{base}_shape", f"{base}_out", f"{base}1", f"{base}_"]
            made += [f"{base}_steps", f"stacked_{base}", f"{base}_t", f"grad_{base}_parts"]  # a loop's
            name = draw(st.sampled_from(made))
        else:
            name = draw(st.sampled_from(POOL))
        if slot == "layer" and draw(st.booleans()):
            name = "".join(part[:1].upper() + part[1:] for part in name.split("_")) or name
        if name not in drawn.values():  # one name for two things is another spec (and another error)
            drawn[slot] = name
    return drawn


def spec_text(v: dict[str, str], kind: str) -> str:
    module = kind == "module"
    sub = f"    sub {v['sub']} = nn.Tanh()\n" if module else ""
    result = f"{v['sub']}({v['u']})" if module else v["u"]
    s = f"sigmoid({v['w']} * {v['y']})"
    backward = (
        f"    backward({v['g']}) {{\n"
        f"        {v['gu']} = {v['g']} * {v['x']} * {v['k']}\n"
        f"        {v['gt']} = {v['g']} * {v['x']} + {v['gu']} * 2 * {v['t']}\n"
        f"        {v['gh']} = {v['gu']} * (1 - tanh({v['x']} - {v['w']}) ** 2)\n"
        f"        {v['gz']} = {v['gt']} * {v['x']} * {v['buf']} * {s} * (1 - {s})\n"
        f"        grad {v['x']} = {v['g']} * ({v['u']} * {v['k']} + {v['t']}) + {v['gt']} * {s} * {v['buf']} + {v['gh']}\n"
        f"        grad {v['y']} = {v['gz']} * {v['w']}\n"
        f"        grad {v['w']} = sum({v['gz']} * {v['y']} - {v['gh']}, dim = 0)\n"
        f"        grad {v['v']} = sum({v['gt']}, dim = 0)\n"
        "    }\n"
    )
    body = (
        f"        {v['t']} = {v['x']} * {s} * {v['buf']} + {v['b']} + {v['v']}\n"
        f"        {v['u']} = {v['t']} * {v['t']} + tanh({v['x']} - {v['w']})\n"
        f"        return ({result} * {v['k']} + {v['t']}) * {v['x']}\n"
    )
    if kind == "loop":  # state carried over a run-time count of steps, a sum, the steps kept and stacked
        body = (
            f"        {v['t']} = {v['x']} * {v['buf']}\n"
            f"        {v['u']} = {v['y']} * 0\n"
            f"        {v['gu']} = []\n"
            f"        for {v['g']} in range({v['d']}) {{\n"
            f"            {v['t']} = tanh({v['t']} * {v['w']} + {v['y']})\n"
            f"            {v['u']} = {v['u']} + {v['t']} * {v['b']}\n"
            f"            {v['gu']}.append({v['t']} * {v['v']})\n"
            "        }\n"
            f"        return {v['t']} * {v['k']} + {v['u']} + sum(stack({v['gu']}, dim = 0), dim = 0)\n"
        )
    if kind == "reduce":  # means the backward keeps (extra outputs), a dim it reads, a shape-only parameter
        body = (
            f"        {v['t']} = mean({v['x']} * {v['y']}, dim = -1, keepdim = true)\n"
            f"        {v['u']} = mean(({v['x']} - {v['t']}) ** 2, dim = -1, keepdim = true)\n"
            f"        return ({v['x']} - {v['t']}) / sqrt({v['u']} + {v['b']} + 1) * {v['w']} * {v['k']}"
            f" + {v['v']} * {v['buf']} / {v['d']}\n"
        )
    return (
        ("" if module else "@function\n")
        + f"layer {v['layer']}({v['n']}: int, {v['b']}: float = 0.5) {{\n"
        + f"    param {v['w']}: [{v['n']}] = normal(0, 1)\n"
        + f"    param {v['v']}: [{v['n']}] = normal(0, 1)\n"
        + f"    buffer {v['buf']}: [{v['n']}] = normal(0, 1)\n"
        + f"    let {v['k']} = {v['n']} * 2\n"
        + sub
        + f"    example({v['n']} = 3)\n\n"
        + f"    forward({v['x']}: [{v['d']}, {v['n']}], {v['y']}: [{v['d']}, {v['n']}]) -> [{v['d']}, {v['n']}] {{\n"
        + body
        + "    }\n"
        + (backward if kind == "backward" else "")
        + "}\n"
    )


def reference(x, y, w, v, buf, b: float, k: int, kind: str):
    """The template's computation, in plain torch."""
    if kind == "loop":
        t, u, kept = x * buf, y * 0, []
        for _ in range(x.shape[0]):
            t = torch.tanh(t * w + y)
            u = u + t * b
            kept.append(t * v)
        return t * k + u + torch.stack(kept).sum(0)
    if kind == "reduce":
        t = (x * y).mean(-1, keepdim=True)
        u = ((x - t) ** 2).mean(-1, keepdim=True)
        return (x - t) / torch.sqrt(u + b + 1) * w * k + v * buf / x.shape[0]
    t = x * torch.sigmoid(w * y) * buf + b + v
    u = t * t + torch.tanh(x - w)
    return ((torch.tanh(u) if kind == "module" else u) * k + t) * x


def generate(text: str) -> str | list:
    """The generated module's source, or the diagnostics when the spec is refused."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.layer"
        spec.write_text(text, encoding="utf-8")
        try:
            sources, files, program = check([str(spec)])
        except SpecError as exc:
            return exc.diagnostics
        plans, problems = plan_backwards(files)
        if problems:
            return problems
        return emit_modules(sources, files, program, plans)[sources[0].out]


def run_layer(source: str, v: dict[str, str], kind: str) -> None:
    module = types.ModuleType("name_hygiene_case")
    exec(compile(source, "name_hygiene_case.py", "exec"), module.__dict__)
    layer = getattr(module, v["layer"])(**{v["n"]: 3}, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        getattr(layer, v["w"]).copy_(torch.randn(3, generator=gen, dtype=torch.float64))
        getattr(layer, v["v"]).copy_(torch.randn(3, generator=gen, dtype=torch.float64))
        getattr(layer, v["buf"]).copy_(torch.randn(3, generator=gen, dtype=torch.float64))
    x, y, seed = (torch.randn(2, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    x.requires_grad_(True)
    y.requires_grad_(True)
    w, p = getattr(layer, v["w"]), getattr(layer, v["v"])
    got = layer(x, y)
    want = reference(x, y, w, p, getattr(layer, v["buf"]), 0.5, 6, kind)
    torch.testing.assert_close(got, want)
    got_grads = torch.autograd.grad(got, (x, y, w, p), seed, create_graph=True)
    want_grads = torch.autograd.grad(want, (x, y, w, p), seed, create_graph=True)
    for what, g, e in zip((v["x"], v["y"], v["w"], v["v"]), got_grads, want_grads):
        torch.testing.assert_close(g, e, msg=lambda m, what=what: f"gradient of {what!r}: {m}")
    # Second order too: a Function's backward has sections run only then (the gradients of extra outputs).
    probes = [torch.randn(g.shape, generator=gen, dtype=torch.float64) for g in got_grads]
    second = []
    for grads in (got_grads, want_grads):  # (a gradient that is constant has no graph, and none of its own)
        total = sum((g * q).sum() for g, q in zip(grads, probes) if g.requires_grad)
        second.append(torch.autograd.grad(total, (x, y, w), allow_unused=True, materialize_grads=True))
    got_second, want_second = second
    for what, g, e in zip((v["x"], v["y"], v["w"]), got_second, want_second):
        torch.testing.assert_close(g, e, msg=lambda m, what=what: f"second-order gradient of {what!r}: {m}")
    if kind != "module":  # the layer really went through its autograd.Function
        assert isinstance(got.grad_fn, torch.autograd.function.BackwardCFunction)


def check_case(v: dict[str, str], kind: str) -> None:
    text = spec_text(v, kind)
    result = generate(text)
    if isinstance(result, list):  # refused: located errors, each rendered without a traceback
        assert result, text
        for d in result:
            assert d.span.line >= 1 and d.span.col >= 1, (d, text)
            assert d.message and "Traceback" not in d.message, (d, text)
            # The template declares every name it uses: a refused name is still declared, not reported twice.
            assert not d.message.startswith("unknown name"), ([d.message for d in result], text)
        return
    try:
        assert builtins_used(result) <= GENERATED_BUILTINS, builtins_used(result) - GENERATED_BUILTINS
        run_layer(result, v, kind)
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc}\n--- spec:\n{text}--- generated:\n{result}") from exc


def _case(**given: str) -> dict[str, str]:
    return PLAIN | given


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(v=names(), kind=st.sampled_from(KINDS))
# Collisions that, before the generated code named its own things around the spec's, made it fail to import
# or run, or gave wrong gradients (most of them; the others guard the same names in other places):
@example(v=_case(x="out"), kind="reduce")  # its gradient overwrote the incoming `grad_out`
@example(v=_case(y="inputs", w="output", b="cls"), kind="function")  # setup_context(ctx, inputs, output), apply(cls)
@example(v=_case(t="mul", u="add"), kind="function")  # locals named like the tape's steps
@example(v=_case(n="x_shape", x="x"), kind="function")  # a ctx field of a shape
@example(v=_case(b="saved_tensors", n="needs_input_grad"), kind="function")  # ctx's own attributes
@example(v=_case(layer="Abs"), kind="module")  # a functional form shadowing a builtin
@example(v=_case(layer="Tuple"), kind="function")
@example(v=_case(layer="Staticmethod"), kind="function")
@example(v=_case(sub="to_empty"), kind="module")  # a member shadowing nn.Module's method
@example(v=_case(sub="register_state_dict_post_hook"), kind="module")
@example(v=_case(w="grad_x"), kind="function")  # a spec name in the gradients' namespace
@example(v=_case(k="grad_out", b="grad_y"), kind="function")
@example(v=_case(g="grad_x"), kind="backward")  # an incoming gradient named like a returned one
@example(v=_case(g="grad_out", gu="inputs", gt="output", gh="mul", gz="cls"), kind="backward")
@example(v=_case(t="grad_t"), kind="function")  # refused once, with no follow-on "unknown name"
@example(v=_case(y="t_out"), kind="reduce")  # `grad_t_out`: of the extra output t, and of the input t_out
@example(v=_case(w="x_from_t"), kind="reduce")  # `grad_x_from_t`: a part of x's, and the parameter's
@example(v=_case(d="name", b="metadata"), kind="reduce")  # a dim and an argument kept on ctx
# A loop Function's own names: per-step stacks, the stacked list, a carried value read per step, the step index
@example(v=_case(t="u_steps", u="stacked_du", g="step"), kind="loop")
@example(v=_case(t="t_t", u="t_steps", g="i"), kind="loop")
@example(v=_case(t="h", u="h1", gu="stacked_outputs", g="t_t", x="inputs", y="output"), kind="loop")
@example(v=_case(t="x_t", gu="du_parts", g="tanh1", n="T"), kind="loop")
@example(v=_case(u="reversed", gu="enumerate"), kind="loop")  # builtins the loop's backward reads: refused
def test_names_never_reach_generated_names(v: dict[str, str], kind: str) -> None:
    check_case(v, kind)


def test_the_pool_holds_the_generated_names() -> None:
    """The pool is taken from real generated code: the names the hazards above come from are in it."""
    for name in ("grad_out", "ctx", "inputs", "output", "cls", "factory_kwargs", "grad_x", "super", "Tensor"):
        assert name in POOL, name
    for name in ("to_empty", "register_state_dict_post_hook", "save_for_backward", "needs_input_grad"):
        assert name in POOL, name


@pytest.mark.parametrize("name", ["abs", "round", "tuple", "staticmethod", "classmethod"])
def test_a_functional_form_never_shadows_a_builtin(name: str) -> None:
    layer = snake_case(name.capitalize()) and name.capitalize()
    result = generate(spec_text(_case(layer=layer), kind="function"))
    assert isinstance(result, list) and any(layer in d.message for d in result), result


def test_the_refused_tables_match_the_installed_torch() -> None:
    """The tables gen reads (it never imports torch) are what torch has."""
    assert NN_MODULE_ATTRIBUTES == {n for n in dir(torch.nn.Module()) if not n.startswith("_")}
    assert FUNCTION_CTX_ATTRIBUTES == {n for n in _ctx_attributes() if not n.startswith("_")}


def test_generated_code_reads_only_the_listed_builtins() -> None:
    """A spec may not take a builtin the generated code reads (`tables.GENERATED_BUILTINS`): the list is
    complete for the shipped specs' code."""
    used = set().union(*(builtins_used(text) for text in shipped_generated_code()))
    assert used <= GENERATED_BUILTINS, used - GENERATED_BUILTINS


def test_a_refused_name_is_reported_once() -> None:
    """A local refused for its name is still bound: its uses get no "unknown name" after it."""
    result = generate(spec_text(_case(t="grad_t"), "function"))
    assert isinstance(result, list) and [d.message for d in result] == [
        "'grad_t': names starting with 'grad_' are the generated backward's in @function layers"
    ], result


@pytest.mark.parametrize(
    "files, message",
    [
        ({"fix.layer": "Fix", "\ufb01x.layer": "Other"}, "would both generate fix.py"),
        ({"a.layer": "Fix", "a/b.layer": "Other"}, "would generate a.py beside the package a/"),
    ],
)
def test_modules_that_python_would_import_as_one(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, layer in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(spec_text(_case(layer=layer), "module"), encoding="utf-8")
    with pytest.raises(SpecError) as exc:
        check([str(tmp_path)])
    assert any(message in d.message and d.span.line == 1 for d in exc.value.diagnostics), exc.value.diagnostics


def test_an_integer_with_a_leading_zero_is_refused() -> None:
    """Python reads no `007`: the spec gets the error, not the generated module."""
    result = generate(spec_text(_case(), "module").replace("= 0.5", "= 0.5, z: int = 007"))
    assert isinstance(result, list) and [d.message for d in result] == ["an integer cannot start with 0: '007'"]


def test_a_loop_function_binds_no_builtin() -> None:
    """The steps of a loop Function's forward are bound by name (a reduction's step was `sum`, shadowing
    the builtin in forward): the generated code never binds a builtin's name."""
    source = generate(spec_text(_case(), "loop"))
    assert isinstance(source, str), source
    nodes = list(ast.walk(ast.parse(source)))
    bound = {n.id for n in nodes if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    bound |= {n.arg for n in nodes if isinstance(n, ast.arg)}
    assert "stack(" in source and not bound & set(dir(builtins)), bound & set(dir(builtins))
