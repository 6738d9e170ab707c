"""The `function-vs-autograd` check: a generated autograd.Function against the plain functional form."""

from __future__ import annotations

import inspect
import re
from typing import Any

import torch

from layerdsl.ir.nodes import Ref
from layerdsl.testing.layer_checks import CheckFailed


def compare_with_functional(case, module, functional, make_inputs) -> str:
    """Equal outputs and gradients (to 1e-10 in float64, 1e-5 in float32) with everything, only the inputs,
    or only the parameters requiring grad."""
    tol = 1e-10 if case.dtype == torch.float64 else 1e-5
    kwargs = {a: getattr(module, a) for a in _functional_kwargs(functional, case)}
    has_params = any(t.kind == Ref.PARAM for _, t in members(module, case.layer))
    modes = ("all", "inputs", "params") if has_params else ("all",)
    for mode in modes:
        xs = make_inputs(case, requires_grad=mode != "params")
        # Only parameters take gradients: a buffer is a constant of the Function, which returns None for it.
        params = [_member(module, name, t, trainable=mode != "inputs") for name, t in members(module, case.layer)]
        torch.manual_seed(0)  # a dropout draws the same mask in both
        fn_out = _through_function(case, module, xs, params)
        torch.manual_seed(0)
        ref_out = _as_tuple(functional(*xs, *params, **kwargs))
        if not all(_same(a, b, tol) for a, b in zip(fn_out, ref_out)):
            raise CheckFailed(f"outputs differ ({mode})")
        flat = [t for x in xs for t in (x if isinstance(x, tuple) else (x,))]
        targets = [t for t in [*flat, *params] if t is not None and t.requires_grad]
        # Gradients flow into the floating outputs only (not indices, not an output left None).
        graded = [(a, b) for a, b in zip(fn_out, ref_out) if b is not None and b.requires_grad]
        if not targets or not graded:  # "params" with every parameter an absent optional member
            continue
        seeds = [torch.randn_like(b) for _, b in graded]
        got = torch.autograd.grad([a for a, _ in graded], targets, seeds, allow_unused=True)
        want = torch.autograd.grad([b for _, b in graded], targets, seeds, allow_unused=True)
        for g, w in zip(got, want):
            g = torch.zeros_like(w) if g is None and w is not None else g
            w = torch.zeros_like(g) if w is None and g is not None else w
            if g is not None and not torch.allclose(g, w, rtol=tol, atol=tol):
                raise CheckFailed(f"gradients differ ({mode}): {(g - w).abs().max():.3g}")
    return f"outputs and gradients agree to {tol:g}"


def compare_second_derivatives(case, module, functional, make_inputs, seed: int = 0) -> str:
    """Equal second derivatives (to 1e-8, float64): the gradients of `<first gradients, v>` (v random) with
    respect to every input and parameter, through the Function's derived backward (a double backward) and
    through autograd's plain form. Where torch has no second derivative of an op of the plain form (a
    loss's ATen backward), there is nothing to compare with."""
    tol = 1e-8
    kwargs = {a: getattr(module, a) for a in _functional_kwargs(functional, case)}
    xs = make_inputs(case, requires_grad=True)
    params = [_member(module, name, t, trainable=True) for name, t in members(module, case.layer)]
    flat = [t for x in xs for t in (x if isinstance(x, tuple) else (x,))]
    targets = [t for t in [*flat, *params] if t is not None and t.requires_grad]
    if not targets:
        return "nothing to differentiate"
    try:
        want = _second_derivatives(lambda: functional(*xs, *params, **kwargs), targets, seed)
    except RuntimeError as exc:
        if "not implemented" not in str(exc):
            raise
        return f"torch has no second derivative here: {str(exc).splitlines()[0]}"
    got = _second_derivatives(lambda: _through_function(case, module, xs, params), targets, seed)
    for k, (g, w) in enumerate(zip(got, want)):
        if not torch.allclose(g, w, rtol=tol, atol=tol):
            raise CheckFailed(f"second derivatives differ (operand {k}): {(g - w).abs().max():.3g}")
    return f"second derivatives agree to {tol:g}"


def compare_with_plain_module(case, module, plain, make_inputs) -> str:
    """A @function `module` that has no functional form (subs, buffer updates) against `plain`, the same
    spec's module compiled without `@function`, given `module`'s parameters and buffers: equal outputs and
    gradients of the inputs and of every parameter (the subs' too) with everything, only the inputs, or only
    the parameters requiring grad; equal buffers after each step; then equal second derivatives (to 1e-10 in
    float64, 1e-5 in float32; second derivatives 1e-8)."""
    tol = 1e-10 if case.dtype == torch.float64 else 1e-5
    _load_state(plain, module)
    names = [n for n, _ in module.named_parameters()]
    modes = ("all", "inputs", "params") if names else ("all",)
    for mode in modes:
        for m in (module, plain):
            for p in m.parameters():
                p.requires_grad_(mode != "inputs")
        xs = make_inputs(case, requires_grad=mode != "params")
        flat = [t for x in xs for t in (x if isinstance(x, tuple) else (x,)) if t.requires_grad]
        torch.manual_seed(0)  # a dropout draws the same mask in both
        got = _as_tuple(module(*xs))
        torch.manual_seed(0)
        want = _as_tuple(plain(*xs))
        if len(got) != len(want) or not all(_same(a, b, tol) for a, b in zip(got, want)):
            raise CheckFailed(f"outputs differ from the plain module's ({mode})")
        graded = [(a, b) for a, b in zip(got, want) if b is not None and b.requires_grad]
        ours = [(f"input {k}", x) for k, x in enumerate(flat)] + _trainable(module)
        theirs = [x for _, x in _trainable(plain)]
        if graded and ours:
            seeds = [torch.randn_like(b) for _, b in graded]
            first = torch.autograd.grad([a for a, _ in graded], [t for _, t in ours], seeds, allow_unused=True)
            second = torch.autograd.grad([b for _, b in graded], [*flat, *theirs], seeds, allow_unused=True)
            for (label, _), g, w in zip(ours, first, second):
                _same_gradient(g, w, tol, f"gradients of {label} differ from the plain module's ({mode})")
        _same_buffers(module, plain, tol, mode)
    agree = f"as the plain module: outputs, gradients, buffers to {tol:g}"
    return agree + (f"; {_second_with_plain(case, module, plain, make_inputs)}" if case.dtype == torch.float64 else "")


def _second_with_plain(case, module, plain, make_inputs) -> str:
    """Equal second derivatives (1e-8) of `module` and `plain` with respect to the inputs and parameters."""
    tol = 1e-8
    for m in (module, plain):
        for p in m.parameters():
            p.requires_grad_(True)
    xs = make_inputs(case, requires_grad=True)
    flat = [t for x in xs for t in (x if isinstance(x, tuple) else (x,)) if t.requires_grad]
    try:
        want = _second_derivatives(lambda: plain(*xs), [*flat, *plain.parameters()], 0)
    except RuntimeError as exc:
        if "not implemented" not in str(exc):
            raise
        return f"torch has no second derivative here: {str(exc).splitlines()[0]}"
    got = _second_derivatives(lambda: module(*xs), [*flat, *module.parameters()], 0)
    for k, (g, w) in enumerate(zip(got, want)):
        if not torch.allclose(g, w, rtol=tol, atol=tol):
            raise CheckFailed(
                f"second derivatives differ from the plain module's (operand {k}): {(g - w).abs().max():.3g}"
            )
    _same_buffers(module, plain, tol, "second derivatives")
    return f"second derivatives agree to {tol:g}"


def _trainable(module) -> list[tuple[str, torch.Tensor]]:
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad]


def _load_state(plain, module) -> None:
    """`module`'s parameters and buffers (transient ones too: no state_dict holds them) copied into `plain`,
    which must have the same names; `plain` put in `module`'s mode."""
    ours = dict(module.named_parameters()) | dict(module.named_buffers())
    theirs = dict(plain.named_parameters()) | dict(plain.named_buffers())
    if list(ours) != list(theirs):
        raise CheckFailed(f"the plain module has other tensors: {sorted(set(ours) ^ set(theirs))}")
    with torch.no_grad():
        for name, value in ours.items():
            theirs[name].copy_(value)
    plain.train(module.training)


def _same_gradient(got, want, tol: float, message: str) -> None:
    """Equal gradients, a missing one standing for zeros."""
    got = torch.zeros_like(want) if got is None and want is not None else got
    want = torch.zeros_like(got) if want is None and got is not None else want
    if got is not None and not torch.allclose(got, want, rtol=tol, atol=tol):
        raise CheckFailed(f"{message}: {(got - want).abs().max():.3g}")


def _same_buffers(module, plain, tol: float, step: str) -> None:
    """Equal buffers (by name) after a step of both modules."""
    theirs = dict(plain.named_buffers())
    for name, value in module.named_buffers():
        other = theirs.get(name)
        if other is None or value.shape != other.shape or not _same(value, other, tol):
            raise CheckFailed(f"buffer {name} differs from the plain module's after the step ({step})")


def _second_derivatives(run, targets: list, seed: int) -> list:
    """The gradients of `<d(outputs · seeds)/d targets, directions>` with respect to `targets` (zeros where
    a target does not reach it), the seeds and directions drawn under `seed`."""
    draw = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # a dropout draws the same mask in both runs
    outs = [o for o in _as_tuple(run()) if o.requires_grad]
    seeds = [torch.randn(o.shape, generator=draw, dtype=o.dtype) for o in outs]
    firsts = torch.autograd.grad(outs, targets, seeds, create_graph=True, allow_unused=True)
    directions = [torch.randn(t.shape, generator=draw, dtype=t.dtype) for t in targets]
    total = sum((g * v).sum() for g, v in zip(firsts, directions) if g is not None and g.requires_grad)
    seconds = (
        torch.autograd.grad(total, targets, allow_unused=True) if torch.is_tensor(total) else [None] * len(targets)
    )
    return [torch.zeros_like(t) if s is None else s.detach() for t, s in zip(targets, seconds)]


def _through_function(case, module, xs: list, tensors: list) -> tuple:
    """The module's outputs (its forward applies the Function) with `tensors` in place of its own."""
    given = {name: m for (name, _), m in zip(members(module, case.layer), tensors) if m is not None}
    return _as_tuple(torch.func.functional_call(module, given, tuple(xs)))


def members(module, layer) -> list[tuple[str, Any]]:
    """The module's tensors by name, each with its declaration: a family's members (`w_l{k}`) as the module
    holds them, `w_l0`, `w_l1`, ... in order."""
    out: list[tuple[str, Any]] = []
    for t in layer.tensors:
        if t.repeat is None:
            out.append((t.name, t))
            continue
        pattern = re.compile(re.escape(t.name).replace(re.escape("{}"), r"(\d+)"))
        own = [*vars(module)["_parameters"], *vars(module)["_buffers"]]  # a member not built: None there
        held = [(int(m[1]), name) for name in own if (m := pattern.fullmatch(name))]
        out += [(name, t) for _, name in sorted(held)]
    return out


def _member(module, name: str, tensor, trainable: bool):
    """A detached copy of one of the module's tensors, requiring grad if it is a parameter and `trainable`."""
    value = getattr(module, name)
    if value is None:
        return None
    return value.detach().requires_grad_(trainable and tensor.kind == Ref.PARAM)


def _functional_kwargs(functional, case) -> list[str]:
    """The functional form's keyword arguments that the module holds (its arguments, and `training`, its
    mode), not its optional inputs (left out, as `make_inputs` leaves them out)."""
    inputs = {i.name for i in case.forward.inputs}
    return [
        p.name
        for p in inspect.signature(functional).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name not in inputs
    ]


def _same(a, b, tol: float) -> bool:
    """Equal outputs: close for floating ones, equal for indices, both None for an output not given."""
    if a is None or b is None:
        return a is None and b is None
    if a.is_floating_point() or a.is_complex():
        return torch.allclose(a, b, rtol=tol, atol=tol)
    return torch.equal(a, b)


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)
