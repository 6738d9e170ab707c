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
    inputs = {i.name for i in case.forward.inputs}  # flags and optional inputs keep their defaults
    kwargs = {a: getattr(module, a) for a in _functional_kwargs(functional) if a not in inputs}
    fn = module.__class__.forward.__globals__[f"{case.name}Function"]
    n_tensors = sum(len(i.parts or [i]) for i in case.forward.inputs) + len(names)
    numbers = [getattr(module, p) for p in list(inspect.signature(fn.forward).parameters)[n_tensors:]]
    has_params = any(t.kind == Ref.PARAM for t in case.layer.tensors)
    modes = ("all", "inputs", "params") if has_params else ("all",)
    for mode in modes:
        xs = make_inputs(case, requires_grad=mode != "params")
        # Only parameters take gradients: a buffer is a constant of the Function, which returns None for it.
        params = [_member(module, t, trainable=mode != "inputs") for t in case.layer.tensors]
        fn_out = fn.apply(*_function_inputs(case, xs), *params, *numbers)
        fn_out = fn_out if isinstance(fn_out, tuple) else (fn_out,)
        n_out = len(_as_tuple(functional(*xs, *params, **kwargs)))
        fn_out = fn_out[:n_out]
        ref_out = _as_tuple(functional(*xs, *params, **kwargs))
        if not all(torch.allclose(a, b, rtol=tol, atol=tol) for a, b in zip(fn_out, ref_out)):
            raise CheckFailed(f"outputs differ ({mode})")
        flat = [t for x in xs for t in (x if isinstance(x, tuple) else (x,))]
        targets = [t for t in [*flat, *params] if isinstance(t, torch.Tensor) and t.requires_grad]
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


def _function_inputs(case, xs: list) -> list:
    """The Function's inputs from the required ones `xs`: a tuple's tensors one by one, a flag at its
    default, an optional input left out (None)."""
    given = iter(xs)
    out: list = []
    for inp in case.forward.inputs:
        if inp.flag is not None:
            out.append(inp.flag.value)
        elif inp.optional:
            out += [None] * len(inp.parts or [inp])
        else:
            x = next(given)
            out += list(x) if inp.parts else [x]
    return out


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
