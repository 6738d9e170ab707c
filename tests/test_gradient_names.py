"""The generated backwards' temporaries are named for what they hold: each `grad_<v>` a Function's
backward binds holds the gradient of the forward value `<v>` (a tape step, an input or a parameter), as
autograd computes it through the same steps. A `grad_<v>` that a comment says is kept without a constant
factor (`# grad_add without the factor -0.5: its readers apply it`) holds the gradient divided by it."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from layerdsl.autodiff.plan import BackwardPlan, plan_backward
from layerdsl.codegen.function import FunctionEmitter
from layerdsl.codegen.module import LayerEmitter
from layerdsl.codegen.pyexpr import PyExpr, Spelling
from layerdsl.testing import layer_checks as checks

from .conftest import CASES, SPECS, check_specs

_, _, PROGRAM = check_specs([str(SPECS)])
FUNCTIONS = [
    name
    for name, case in CASES.items()
    if case.is_function and case.layer.backward is None and not checks.uses_randomness(case)
]


def _tape_values(case, plan: BackwardPlan, leaves: dict[str, torch.Tensor], numbers: dict) -> dict:
    """Every value of the tape, computed step by step under autograd from the same leaves."""
    emitter = FunctionEmitter(LayerEmitter(case.layer, PROGRAM, plan), plan)
    ex = PyExpr(Spelling(), call_hook=emitter._internal)
    env: dict = {"torch": torch, **numbers, **leaves}
    for d, source in emitter.dim_source.items():
        env[d] = eval(source, env)
    for name, e in plan.tape.numbers:
        env[name] = eval(ex(e), env)
    for s in plan.tape.steps:
        env[s.var] = eval(ex(s.expr), env)
    return env


class _Bindings:
    """The values each `grad_*` local of a generated backward is bound to (a fresh copy at each binding:
    later in-place updates belong to the temporary's next use)."""

    def __init__(self, filename: str):
        self.filename = filename
        self.values: dict[str, torch.Tensor] = {}
        self._ids: dict[str, int] = {}

    def __call__(self, frame, event, arg):
        if event == "call" and frame.f_code.co_name == "backward" and frame.f_code.co_filename == self.filename:
            return self._local
        return None

    def _local(self, frame, event, arg):
        for name, value in frame.f_locals.items():
            if name.startswith("grad_") and isinstance(value, torch.Tensor) and self._ids.get(name) != id(value):
                self._ids[name] = id(value)
                self.values[name] = value.detach().clone()
        return self._local


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_grad_temporary_holds_the_gradient_it_names(gen, package, name):
    case = CASES[name]
    plan = plan_backward(case.layer)
    assert isinstance(plan, BackwardPlan)
    module = checks.build(case, package, dtype=torch.float64)
    xs = checks.inputs(case, dtype=torch.float64, requires_grad=True)
    params = [getattr(module, t.name) for t in case.layer.tensors]
    fn = module.__class__.forward.__globals__[f"{case.name}Function"]
    n_tensors = len(xs) + len(params)
    kwargs = list(fn.forward.__code__.co_varnames[n_tensors : fn.forward.__code__.co_argcount])
    numbers = {k: module.training if k == "training" else getattr(module, k) for k in kwargs}
    leaves = dict(zip(plan.tape.leaves, [*xs, *params]))
    values = _tape_values(case, plan, leaves, numbers)
    outputs = [values[o.id] for o in plan.tape.outputs]
    seeds = [torch.randn_like(o) for o in outputs]
    tracked = [v for v, t in values.items() if isinstance(t, torch.Tensor) and t.requires_grad]
    want = dict(zip(tracked, torch.autograd.grad(outputs, [values[v] for v in tracked], seeds, allow_unused=True)))

    got = fn.apply(*xs, *params, *numbers.values())
    got = got if isinstance(got, tuple) else (got,)
    source = sys.modules[fn.__module__]
    bindings = _Bindings(source.__file__)
    sys.settrace(bindings)
    try:
        torch.autograd.grad(got[: len(outputs)], [t for t in leaves.values() if t.requires_grad], seeds)
    finally:
        sys.settrace(None)
    text = open(source.__file__).read()
    checked = []
    for temp, value in bindings.values.items():
        var = temp[len("grad_") :]
        if var not in want or want[var] is None:
            continue
        factor = re.search(rf"# {temp} without the factor (\S+):", text)
        expected = want[var] / float(factor.group(1)) if factor else want[var]
        assert value.shape == expected.shape and torch.allclose(value, expected), f"{name}: {temp}"
        checked.append(temp)
    assert checked, f"{name}: no gradient temporary checked"
