"""The `function-vs-autograd` check: a generated autograd.Function against the plain functional form."""

from __future__ import annotations

import inspect

import torch

from layerdsl.ir.nodes import Ref
from layerdsl.testing.layer_checks import CheckFailed


def compare_with_functional(case, module, functional, make_inputs) -> str:
    """Equal outputs and gradients (to 1e-10 in float64, 1e-5 in float32) with everything, only the inputs,
    or only the parameters requiring grad."""
    tol = 1e-10 if case.dtype == torch.float64 else 1e-5
    names = [t.name for t in case.layer.tensors]
    kwargs = {a: getattr(module, a) for a in _functional_kwargs(functional)}
    fn = module.__class__.forward.__globals__[f"{case.name}Function"]
    n_tensors = len(case.forward.inputs) + len(names)
    numbers = [getattr(module, p) for p in list(inspect.signature(fn.forward).parameters)[n_tensors:]]
    has_params = any(t.kind == Ref.PARAM for t in case.layer.tensors)
    modes = ("all", "inputs", "params") if has_params else ("all",)
    for mode in modes:
        xs = make_inputs(case, requires_grad=mode != "params")
        # Only parameters take gradients: a buffer is a constant of the Function, which returns None for it.
        params = [_member(module, t, trainable=mode != "inputs") for t in case.layer.tensors]
        fn_out = fn.apply(*xs, *params, *numbers)
        fn_out = fn_out if isinstance(fn_out, tuple) else (fn_out,)
        n_out = len(_as_tuple(functional(*xs, *params, **kwargs)))
        fn_out = fn_out[:n_out]
        ref_out = _as_tuple(functional(*xs, *params, **kwargs))
        if not all(torch.allclose(a, b, rtol=tol, atol=tol) for a, b in zip(fn_out, ref_out)):
            raise CheckFailed(f"outputs differ ({mode})")
        targets = [t for t in [*xs, *params] if t is not None and t.requires_grad]
        if not targets:  # "params" with every parameter an absent optional member
            continue
        seeds = [torch.randn_like(o) for o in ref_out]
        got = torch.autograd.grad(fn_out, targets, seeds, allow_unused=True)
        want = torch.autograd.grad(ref_out, targets, seeds, allow_unused=True)
        for g, w in zip(got, want):
            g = torch.zeros_like(w) if g is None and w is not None else g
            w = torch.zeros_like(g) if w is None and g is not None else w
            if g is not None and not torch.allclose(g, w, rtol=tol, atol=tol):
                raise CheckFailed(f"gradients differ ({mode}): {(g - w).abs().max():.3g}")
    return f"outputs and gradients agree to {tol:g}"


def _member(module, tensor, trainable: bool):
    """A detached copy of one of the module's tensors, requiring grad if it is a parameter and `trainable`."""
    value = getattr(module, tensor.name)
    if value is None:
        return None
    return value.detach().requires_grad_(trainable and tensor.kind == Ref.PARAM)


def _functional_kwargs(functional) -> list[str]:
    return [
        p.name
        for p in inspect.signature(functional).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name != "training"
    ]


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)
