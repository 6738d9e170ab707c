#!/usr/bin/env python
"""Generated ``@function`` layers vs plain autograd and vs hand-written autograd.Functions.

Task A (the ``@function`` issue): Swish, RMSNorm, the fused chain ``tanh(a*x + b) * sigmoid(c*x)``
(scalar a, b, c) and MyLayer (``sqrt(x**2 + bias) @ weight``, weight ``[in, out]``) at 32x64 and
4096x1024. Task B (the index-notation issue): QuadraticForm (``y[b,k] = sum_ij W[i,j,k] x[b,i] x[b,j]``)
at batch 4096, in = out = 64, plus explicit pairwise contraction orders of its einsum.

Candidates per case, all called as ``nn.Module``s (``module(x)``), float32 CPU:

- **autograd Module**: the generated plain module (``generated/swish.py`` ...); for the chain, which
  has no plain module, the generated functional form ``fused_chain`` wrapped in a module with the
  same parameters; for QuadraticForm, ``generated.quadratic_form.QuadraticForm``; for MaxPool and
  ConvTranspose1d (compiled in the script), their generated functional forms, whose input checks are
  those of every generated module (the bare torch call is timed too: "autograd, no input checks").
- **hand-written Function**: an ``autograd.Function`` written here the way an expert would (modern
  ``forward`` + ``setup_context`` style, minimal saving, recomputation of cheap elementwise
  intermediates, plain ``Function.apply``), wrapped in an unchecked module.
- **generated Function**: the generated ``@function`` module (``SwishFunctional`` ...), which calls
  ``<Name>Function.apply`` after its shape checks.

Task B adds explicit pairwise contraction orders under plain autograd, a batch-blocked variant of
the hand-written Function, and a forward-only (no_grad) table of contraction orders.

Columns beyond bench_modules' own: **peak heap** (glibc ``mallinfo2``, sampled after every ATen op
of one step, above the heap in use before it) and **page faults** (minor faults per step, the
candidate looping alone after two warm-up steps: temporaries whose pages the kernel had to map and
zero again; depends on the allocator's state, so read it as a symptom, not a constant).

The timing method, the correctness cross-check and ``saved_bytes`` come from ``bench_modules.py``
(interleaved rounds with rotating order, fresh tensors every 8 rounds, CPU-time clock of the single
timing thread, 1 torch thread, paired per-round ratios with distribution-free 95% CIs). Before
anything is timed, every hand-written Function (and, for information, every generated one) passes
``torch.autograd.gradcheck`` in float64.

    python benchmarks/bench_functions.py                 # tasks A and B (about 10 minutes on 2 busy cores)
    python benchmarks/bench_functions.py --quick         # smoke run (about 2 minutes)
    python benchmarks/bench_functions.py --task B        # only QuadraticForm
    python benchmarks/bench_functions.py --diagnose      # + ablations of the generated Functions (~15 min)
    python benchmarks/bench_functions.py --json out.json # every number as JSON
"""

from __future__ import annotations

import argparse
import ctypes
import inspect
import json
import math
import resource
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.benchmark import Timer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_modules as bm  # noqa: E402  (shared harness: timing, cross-check, saved_bytes)

Function = torch.autograd.Function
MODULE, HAND, GEN = "autograd Module", "hand-written Function", "generated Function"
UNCHECKED = "autograd, no input checks"


# --------------------------------------------------------------------------------------------
# Hand-written autograd.Functions: what an expert writes (modern forward + setup_context style,
# plain Function.apply, minimal saving, cheap elementwise intermediates recomputed in backward,
# in-place ops on temporaries the backward owns).
# --------------------------------------------------------------------------------------------


class HandSwishFunction(Function):
    """y = x * sigmoid(beta * x). Saves x and beta; backward recomputes the sigmoid."""

    @staticmethod
    def forward(x: Tensor, beta: Tensor) -> Tensor:
        return x * torch.sigmoid(beta * x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, beta = ctx.saved_tensors
        s = (beta * x).sigmoid_()
        gs = g * s
        t = (1 - s).mul_(gs).mul_(x)  # dL/d(beta x) = g x s (1 - s)
        grad_x = torch.addcmul(gs, t, beta) if ctx.needs_input_grad[0] else None
        grad_beta = t.mul_(x).sum_to_size(beta.shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_beta


class HandRMSNormFunction(Function):
    """y = x * rsqrt(mean(x*x, -1) + eps) * weight. Saves x, weight and rstd ([..., 1]), which the
    forward returns as a second, non-differentiable output (the setup_context way to save an
    intermediate)."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        rstd = torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + eps)
        return x * rstd * weight, rstd

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _ = inputs
        rstd = output[1]
        ctx.mark_non_differentiable(rstd)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, rstd)

    @staticmethod
    def backward(ctx, g, _g_rstd):
        if g is None:  # set_materialize_grads(False): no gradient reached the output
            return None, None, None
        x, weight, rstd = ctx.saved_tensors
        xhat = x * rstd
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (g * xhat).sum_to_size(weight.shape)
        if ctx.needs_input_grad[0]:
            gw = g * weight
            m = (gw * xhat).mean(-1, keepdim=True)
            grad_x = gw.sub_(xhat.mul_(m)).mul_(rstd)  # rstd * (gw - xhat * mean(gw * xhat))
        return grad_x, grad_w, None


class HandFusedChainFunction(Function):
    """y = tanh(a x + b) * sigmoid(c x), a, b, c scalars. Saves x, a, b, c; recomputes both."""

    @staticmethod
    def forward(x: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        return torch.tanh(a * x + b) * torch.sigmoid(c * x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, a, b, c = ctx.saved_tensors
        th = torch.addcmul(b, a, x).tanh_()
        s = (c * x).sigmoid_()
        gs = g * s
        g2 = (1 - s).mul_(th).mul_(gs)  # dL/d(c x) = g th s (1 - s)
        del s
        g1 = th.mul_(th).neg_().add_(1).mul_(gs)  # dL/d(a x + b) = g s (1 - th^2), in th's buffer
        del th, gs
        grad_x = torch.addcmul(g1 * a, g2, c)
        return grad_x, (g1 * x).sum(), g1.sum(), g2.mul_(x).sum()


class HandMyLayerFunction(Function):
    """y = sqrt(x**2 + bias) @ weight. Saves x, weight, bias (the minimum); recomputes the sqrt."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        h = x * x
        if bias is not None:
            h += bias
        return h.sqrt_() @ weight

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, weight, bias = ctx.saved_tensors
        h = x * x
        if bias is not None:
            h += bias
        h.sqrt_()
        return _my_layer_grads(ctx, g, x, weight, bias, h)


def _my_layer_grads(ctx, g, x, weight, bias, h):
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[1]:
        grad_w = h.mT @ g
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
        t = (g @ weight.mT).div_(h)  # dL/dh / h = 2 dL/d(x^2 + bias)
        if ctx.needs_input_grad[2]:
            grad_b = t.sum(0).mul_(0.5)
        if ctx.needs_input_grad[0]:
            grad_x = t.mul_(x)
    return grad_x, grad_w, grad_b


class HandMyLayerSaveSqrtFunction(Function):
    """The same, trading memory for time: also saves h = sqrt(x**2 + bias) (returned as a second,
    non-differentiable output), so the backward recomputes nothing."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        h = x * x
        if bias is not None:
            h += bias
        h.sqrt_()
        return h @ weight, h

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, bias, output[1])

    @staticmethod
    def backward(ctx, g, _g_h):
        if g is None:  # set_materialize_grads(False): no gradient reached the output
            return None, None, None
        x, weight, bias, h = ctx.saved_tensors
        return _my_layer_grads(ctx, g, x, weight, bias, h)


class HandQuadraticFormFunction(Function):
    """y[b,k] = sum_ij W[i,j,k] x[b,i] x[b,j]. Saves x and W. Every contraction is one matmul whose
    reduction runs over the large dimension (i*j = 4096 or b), with one [b, n*n] outer product
    per pass: forward y = outer(x, x) @ W.view(ij, k); backward v[b,jk] = x[b,j] g[b,k], shared by
    grad_x = v @ (W + W^T over i,j).view(i, jk)^T and grad_W = x^T @ v."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor) -> Tensor:
        i, j, k = weight.shape
        return (x.unsqueeze(2) * x.unsqueeze(1)).view(-1, i * j) @ weight.view(i * j, k)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        i, j, k = weight.shape
        v = (x.unsqueeze(2) * g.unsqueeze(1)).view(-1, j * k)  # v[b, (j, k)] = x[b, j] g[b, k]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            w_sym = weight + weight.transpose(0, 1)
            grad_x = v @ w_sym.view(i, j * k).mT
        if ctx.needs_input_grad[1]:
            grad_w = (x.mT @ v).view(i, j, k)
        return grad_x, grad_w


class HandQuadraticFormChunkedFunction(Function):
    """The same contractions, over blocks of ``rows`` rows: with 512 rows the [rows, n*n] temporaries
    are 8 MiB instead of 64 MiB (above glibc's 32 MiB mmap ceiling every 64 MiB temporary is a fresh
    mmap whose pages the kernel faults in and zeroes on every call)."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, rows: int) -> Tensor:
        i, j, k = weight.shape
        w = weight.view(i * j, k)
        y = x.new_empty(x.shape[0], k)
        for r in range(0, x.shape[0], rows):
            xs = x[r : r + rows]
            torch.mm((xs.unsqueeze(2) * xs.unsqueeze(1)).view(-1, i * j), w, out=y[r : r + rows])
        return y

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, ctx.rows = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        i, j, k = weight.shape
        rows = ctx.rows
        w_sym_t = (weight + weight.transpose(0, 1)).view(i, j * k).mT
        grad_x = x.new_empty(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = weight.new_zeros(i, j * k) if ctx.needs_input_grad[1] else None
        for r in range(0, x.shape[0], rows):
            xs, gs = x[r : r + rows], g[r : r + rows]
            v = (xs.unsqueeze(2) * gs.unsqueeze(1)).view(-1, j * k)
            if grad_x is not None:
                torch.mm(v, w_sym_t, out=grad_x[r : r + rows])
            if grad_w is not None:
                grad_w.addmm_(xs.mT, v)
        return grad_x, None if grad_w is None else grad_w.view(i, j, k), None


# Modules around them (no shape checks, as in bench_modules' hand-written modules).


class HandSwishFn(nn.Module):
    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return HandSwishFunction.apply(x, self.beta)


class HandRMSNormFn(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return HandRMSNormFunction.apply(x, self.weight, self.eps)[0]


class ScalarABC(nn.Module):
    """Parameters a, b, c of the fused chain; ``fn(x, a, b, c)`` is the forward."""

    fn: Callable[..., Any]

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(()))
        self.b = nn.Parameter(torch.zeros(()))
        self.c = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x, self.a, self.b, self.c)


class HandFusedChainFn(ScalarABC):
    fn = staticmethod(HandFusedChainFunction.apply)


class HandMyLayerFn(nn.Module):
    function: type[Function] = HandMyLayerFunction

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(in_features))

    def forward(self, x: Tensor) -> Tensor:
        return self.function.apply(x, self.weight, self.bias)


class HandMyLayerSaveSqrtFn(HandMyLayerFn):
    def forward(self, x: Tensor) -> Tensor:
        return HandMyLayerSaveSqrtFunction.apply(x, self.weight, self.bias)[0]


class QuadParam(nn.Module):
    """The weight of QuadraticForm; subclasses give the forward (used for the contraction orders)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, in_features, out_features))


class HandQuadraticFormFn(QuadParam):
    def forward(self, x: Tensor) -> Tensor:
        return HandQuadraticFormFunction.apply(x, self.weight)


class HandQuadraticFormChunkedFn(QuadParam):
    def forward(self, x: Tensor) -> Tensor:
        return HandQuadraticFormChunkedFunction.apply(x, self.weight, 512)


class QuadEinsumSpecOrder(QuadParam):
    """Plain autograd, one einsum call with the operands in spec order (W, x, x), as generated before
    68f82fc: torch.einsum (no opt_einsum) contracts W with x first."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("ijk,bi,bj->bk", self.weight, x, x)


class QuadEinsumWxFirst(QuadParam):
    """Plain autograd, explicit pairwise order: t = W . x over i, then . x over j."""

    def forward(self, x: Tensor) -> Tensor:
        t = torch.einsum("ijk,bi->bjk", self.weight, x)
        return torch.einsum("bjk,bj->bk", t, x)


class QuadEinsumOuterFirst(QuadParam):
    """Plain autograd, explicit pairwise order: xx = outer(x, x), then one contraction with W."""

    def forward(self, x: Tensor) -> Tensor:
        xx = torch.einsum("bi,bj->bij", x, x)
        return torch.einsum("bij,ijk->bk", xx, self.weight)


class QuadMatmulOuterFirst(QuadParam):
    """Plain autograd, the outer-product order written as one reshape + matmul."""

    def forward(self, x: Tensor) -> Tensor:
        i, j, k = self.weight.shape
        xx = (x.unsqueeze(2) * x.unsqueeze(1)).view(-1, i * j)
        return xx @ self.weight.view(i * j, k)


# --------------------------------------------------------------------------------------------
# Ablations of the generated Functions (--diagnose): the generated class with one thing changed,
# to measure what each piece costs.
# --------------------------------------------------------------------------------------------


def plain_apply(gen_fn: type[Function]) -> type[Function]:
    """The generated Function with its ``apply`` override removed (Function.apply, which binds the
    arguments with inspect.signature on every call)."""
    return type(f"{gen_fn.__name__}PlainApply", (gen_fn,), {"apply": classmethod(Function.apply.__func__)})


def rms_nondiff_mean(gen_fn: type[Function]) -> type[Function]:
    """The generated RMSNorm Function, its extra ``mean`` output marked non-differentiable and grads
    not materialised: no zeros tensor for the unused output's gradient, no ``grad_mean_out + ...``."""

    def setup_context(ctx, inputs, output):
        gen_fn.setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_out, grad_mean_out):
        if grad_out is None:
            return None, None, None
        x, weight, mean = ctx.saved_tensors
        rsqr = torch.rsqrt(mean + ctx.eps)
        grad_mul1 = grad_out * weight
        grad_rsqr = (grad_mul1 * x).sum_to_size(rsqr.shape)
        grad_add = -0.5 * grad_rsqr * rsqr**3
        grad_mul = (grad_add / x.shape[-1]).expand(x.shape)  # as generated at e3753a0, less grad_mean_out
        grad_x = grad_mul1 * rsqr + 2 * grad_mul * x
        grad_weight = (grad_out * (x * rsqr)).sum_to_size(weight.shape)
        return grad_x, grad_weight, None

    return type(f"{gen_fn.__name__}NonDiffMean", (gen_fn,),
                {"setup_context": staticmethod(setup_context), "backward": staticmethod(backward)})  # fmt: skip


def rms_scalar_first(gen_fn: type[Function]) -> type[Function]:
    """The generated RMSNorm backward with every [..., 1]-shaped factor combined before it meets a
    [..., dim] tensor: ``2 * grad_mul * x`` with ``grad_mul = (grad_mean / n).expand(x.shape)`` is
    two full-size ops (``2 * grad_mul`` materialises the expansion), ``x * (2 * grad_mean / n)`` is
    one (before e3753a0 it was three); the extra-output fix included."""
    base = rms_nondiff_mean(gen_fn)

    def backward(ctx, grad_out, grad_mean_out):
        if grad_out is None:
            return None, None, None
        x, weight, mean = ctx.saved_tensors
        rsqr = torch.rsqrt(mean + ctx.eps)
        grad_mul1 = grad_out * weight
        grad_rsqr = (grad_mul1 * x).sum_to_size(rsqr.shape)
        coef = grad_rsqr * rsqr**3 * (-1.0 / x.shape[-1])  # [..., 1]: 2 * (-0.5) * grad_rsqr rsqr^3 / n
        grad_x = grad_mul1 * rsqr + x * coef
        grad_weight = (grad_out * (x * rsqr)).sum_to_size(weight.shape)
        return grad_x, grad_weight, None

    return type(f"{gen_fn.__name__}ScalarFirst", (base,), {"backward": staticmethod(backward)})


def quad_shared_gw(gen_fn: type[Function]) -> type[Function]:
    """The generated QuadraticForm backward with the contraction shared by both grad_x terms
    (u[b,i,j] = sum_k g[b,k] W[i,j,k]) computed once instead of twice."""

    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        u = torch.einsum("bk,ijk->bij", grad_out, weight)
        grad_x = torch.einsum("bij,bj->bi", u, x) + torch.einsum("bij,bi->bj", u, x)
        grad_weight = torch.einsum("bk,bi,bj->ijk", grad_out, x, x)
        return grad_x, grad_weight

    return type(f"{gen_fn.__name__}SharedGW", (gen_fn,), {"backward": staticmethod(backward)})


def with_backward(gen_fn: type[Function], tag: str, backward: Callable[..., Any]) -> type[Function]:
    """The generated Function (forward, setup_context, apply kept) with another backward."""
    return type(f"{gen_fn.__name__}{tag}", (gen_fn,), {"backward": staticmethod(backward)})


aten = torch.ops.aten


def swish_freed(ctx, grad_out):
    """The generated Swish backward, same ops in the same order, each temporary dropped (``del``)
    as soon as it is dead: separates the cost of the live temporaries from that of the op count."""
    x, beta = ctx.saved_tensors
    s = torch.sigmoid(beta * x)
    grad_mul = grad_out * x * s * (1 - s)  # the generated grad_s * s * (1 - s), grad_s = grad_out * x
    grad_x = grad_out * s + grad_mul * beta
    del s
    grad_beta = (grad_mul * x).sum_to_size(beta.shape)
    return grad_x, grad_beta


def swish_fused(ctx, grad_out):
    """The generated Swish backward with ATen's fused derivative kernels: sigmoid_backward for
    ``grad * s * (1 - s)`` (1 op, not 3) and addcmul for ``a + b * c``; out of place, no ``del``."""
    x, beta = ctx.saved_tensors
    s = torch.sigmoid(beta * x)
    grad_mul = aten.sigmoid_backward(grad_out * x, s)
    grad_x = torch.addcmul(grad_out * s, grad_mul, beta)
    grad_beta = (grad_mul * x).sum_to_size(beta.shape)
    return grad_x, grad_beta


def chain_freed(ctx, grad_out):
    """The generated FusedChain backward, same ops, dead temporaries dropped early."""
    x, a, b, c = ctx.saved_tensors
    th = torch.tanh(a * x + b)
    s = torch.sigmoid(c * x)
    grad_mul1 = grad_out * th * s * (1 - s)
    grad_add = grad_out * s * (1 - th * th)
    del th, s
    grad_x = grad_mul1 * c + grad_add * a
    grad_a = (grad_add * x).sum_to_size(a.shape)
    grad_b = grad_add.sum_to_size(b.shape)
    del grad_add
    grad_c = (grad_mul1 * x).sum_to_size(c.shape)
    return grad_x, grad_a, grad_b, grad_c


def chain_fused(ctx, grad_out):
    """The generated FusedChain backward with tanh_backward / sigmoid_backward / addcmul (out of
    place; temporaries dropped early as in chain_freed)."""
    x, a, b, c = ctx.saved_tensors
    th = torch.tanh(a * x + b)
    s = torch.sigmoid(c * x)
    grad_mul1 = aten.sigmoid_backward(grad_out * th, s)
    grad_add = aten.tanh_backward(grad_out * s, th)
    del th, s
    grad_x = torch.addcmul(grad_mul1 * c, grad_add, a)
    grad_a = (grad_add * x).sum_to_size(a.shape)
    grad_b = grad_add.sum_to_size(b.shape)
    del grad_add
    grad_c = (grad_mul1 * x).sum_to_size(c.shape)
    return grad_x, grad_a, grad_b, grad_c


def my_layer_folded(ctx, grad_out):
    """The generated MyLayer backward with the constants folded (``grad_sqrt / (2 sqrt)`` then
    ``* 2 * x``: 4 full-size ops, is ``t = grad_sqrt / sqrt; t * x``: 2, and 0.5 * t.sum(0) for the
    bias) and dead temporaries dropped early; out of place."""
    x, weight, bias = ctx.saved_tensors
    add = x**2
    if bias is not None:
        add = add + bias
    sqrt = torch.sqrt(add)
    del add
    grad_weight = torch.matmul(torch.transpose(sqrt, -1, -2), grad_out)
    t = torch.matmul(grad_out, torch.transpose(weight, -1, -2)) / sqrt
    del sqrt
    grad_bias = 0.5 * t.sum_to_size(bias.shape) if bias is not None else None
    return t * x, grad_weight, grad_bias


def my_layer_freed(ctx, grad_out):
    """The generated MyLayer backward, same ops, dead temporaries dropped early."""
    x, weight, bias = ctx.saved_tensors
    add = x**2
    if bias is not None:
        add = add + bias
    sqrt = torch.sqrt(add)
    del add
    grad_weight = torch.matmul(torch.transpose(sqrt, -1, -2), grad_out)
    grad_add = torch.matmul(grad_out, torch.transpose(weight, -1, -2)) / (2 * sqrt)
    del sqrt
    grad_bias = grad_add.sum_to_size(bias.shape) if bias is not None else None
    return grad_add * 2 * x, grad_weight, grad_bias


def rms_hand_body(ctx, grad_out, grad_mean_out):
    """HandRMSNormFunction's backward on the generated Function's saved ``mean`` (rstd recomputed
    from it: a [..., 1] op)."""
    if grad_out is None:
        return None, None, None
    x, weight, mean = ctx.saved_tensors
    ctx.saved_tensors_override = (x, weight, torch.rsqrt(mean + ctx.eps))
    return HandRMSNormFunction.backward(_SavedProxy(ctx), grad_out, None)


class _SavedProxy:
    """A ctx whose ``saved_tensors`` are ``ctx.saved_tensors_override`` (everything else delegated)."""

    def __init__(self, ctx) -> None:
        self._ctx = ctx

    def __getattr__(self, name):
        if name == "saved_tensors":
            return self._ctx.saved_tensors_override
        return getattr(self._ctx, name)


class SwishAutogradOps(Function):
    """A Function that saves what autograd saves (x, beta, s) and runs the ATen ops autograd runs:
    the floor of what a Python autograd.Function costs on top of plain autograd (--diagnose)."""

    @staticmethod
    def forward(x: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.sigmoid(beta * x)
        return x * s, s

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs, output[1])

    @staticmethod
    def backward(ctx, g, _g_s):
        x, beta, s = ctx.saved_tensors
        grad_bx = aten.sigmoid_backward(g * x, s)
        return g * s + grad_bx * beta, (grad_bx * x).sum_to_size(beta.shape)

    @classmethod
    def apply(cls, x, beta):  # the generated override, without its two checks
        return super(Function, cls).apply(x, beta)


class SwishAutogradOpsFn(HandSwishFn):
    def forward(self, x: Tensor) -> Tensor:
        return SwishAutogradOps.apply(x, self.beta)[0]


def quad_shared_outer(gen_fn: type[Function]) -> type[Function]:
    """The generated QuadraticForm backward as einsums that share the pairwise product of x and g,
    v[b,j,k] = x[b,j] g[b,k], which all three derived terms contain, so that each remaining
    contraction reduces over a large dimension (j*k or b) instead of building a [b, i, j] tensor."""

    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        v = torch.einsum("bj,bk->bjk", x, grad_out)
        grad_x = torch.einsum("bjk,ijk->bi", v, weight) + torch.einsum("bik,ijk->bj", v, weight)
        grad_weight = torch.einsum("bi,bjk->ijk", x, v)
        return grad_x, grad_weight

    return type(f"{gen_fn.__name__}SharedOuter", (gen_fn,), {"backward": staticmethod(backward)})


def via(module_cls: type[nn.Module], fn_cls: type[Function]) -> type[nn.Module]:
    """``module_cls`` (a generated @function module) whose forward, checks included, calls
    ``fn_cls`` where it called the generated Function: the same code object, run with the
    module-level name of the Function bound to ``fn_cls``."""
    orig = module_cls.forward
    name = next(c.__name__ for c in fn_cls.__mro__ if c.__name__ in orig.__code__.co_names)  # the generated one
    forward = types.FunctionType(orig.__code__, {**orig.__globals__, name: fn_cls}, orig.__name__,
                                 orig.__defaults__, orig.__closure__)  # fmt: skip
    return type(f"{module_cls.__name__}Via{fn_cls.__name__}", (module_cls,), {"forward": forward})


# --------------------------------------------------------------------------------------------
# Pooling family (issue 15): a max pooling and a transposed convolution, derived and by hand
# --------------------------------------------------------------------------------------------

POOLING_SPECS = """
@function
layer MaxPoolFunctional() {
    \"\"\"Max pooling over pairs along the last dim: the backward reads where the maxima were.\"\"\"
    example()

    forward(x: [C, L]) {
        return max_pool1d(x, 2)
    }
}

@function
layer ConvTransposeFunctional(channels: int) {
    \"\"\"A stride-2 transposed convolution that doubles the length.\"\"\"
    param weight: [channels, channels, 2] = uniform(-0.1, 0.1)
    param bias: [channels] = zeros
    example(channels = 4)

    forward(x: [N, channels, L]) -> [N, channels, 2 * L] {
        return conv_transpose1d(x, weight, bias, stride = 2)
    }
}
"""


def pooling_module() -> types.ModuleType:
    """POOLING_SPECS compiled as `layerdsl gen` compiles a spec file."""
    sys.path.insert(0, str(bm.REPO))
    try:
        from layerdsl.codegen.module import emit_file
        from layerdsl.semantics.checker import check_program
        from layerdsl.syntax.parser import parse_file
    finally:
        sys.path.pop(0)
    spec = parse_file("pooling_function.layer", POOLING_SPECS)
    module = types.ModuleType("pooling_function")
    exec(compile(emit_file(spec, check_program([spec]), "pooling_function.layer", {}), "pooling_function.py", "exec"),
         module.__dict__)  # fmt: skip
    return module


class HandMaxPoolFunction(Function):
    """y = max_pool1d(x, 2). Saves the argmax indices (int64) and x's shape; the backward is ATen's
    max_pool2d_with_indices_backward (what autograd runs), given a stand-in of x's shape."""

    @staticmethod
    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.nn.functional.max_pool1d(x, 2, return_indices=True)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.x_shape = inputs[0].shape
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx, g, _g_indices):
        if g is None:
            return None
        (indices,) = ctx.saved_tensors
        stand_in = g.new_empty(()).expand(ctx.x_shape).unsqueeze(-2)
        grad = aten.max_pool2d_with_indices_backward(
            g.unsqueeze(-2), stand_in, [1, 2], [1, 2], [0, 0], [1, 1], False, indices.unsqueeze(-2)
        )
        return grad.squeeze(-2)


class HandMaxPoolFn(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return HandMaxPoolFunction.apply(x)[0]


class MaxPoolAutograd(nn.Module):
    """The bare `F.max_pool1d` under autograd, without the input checks every generated module makes."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.max_pool1d(x, 2)


class MaxPoolChecked(nn.Module):
    """The generated functional form (the input checks, then `F.max_pool1d` under autograd): the autograd
    Module of the family, checked as the generated plain modules of the other families are."""

    def __init__(self, gen: dict[str, Any]) -> None:
        super().__init__()
        self.fn = gen["pooling_function"].max_pool_functional

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


class HandConvTransposeFunction(Function):
    """y = conv_transpose1d(x, weight, bias, stride=2). Saves x and weight; the backward is one
    ATen convolution_backward for all three gradients (what autograd runs)."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return torch.nn.functional.conv_transpose1d(x, weight, bias, stride=2)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        return aten.convolution_backward(
            g, x, weight, [weight.shape[1]], [2], [0], [1], True, [0], 1, list(ctx.needs_input_grad)
        )


class ConvTransposeModule(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, channels, 2))
        self.bias = nn.Parameter(torch.empty(channels))


class ConvTransposeAutograd(ConvTransposeModule):
    """The bare `F.conv_transpose1d` under autograd, without the generated module's input checks."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.conv_transpose1d(x, self.weight, self.bias, stride=2)


class ConvTransposeChecked(ConvTransposeModule):
    """The generated functional form (the input checks, then `F.conv_transpose1d` under autograd)."""

    def __init__(self, gen: dict[str, Any], channels: int) -> None:
        super().__init__(channels)
        self.fn = gen["pooling_function"].conv_transpose_functional

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x, self.weight, self.bias)


class HandConvTransposeFn(ConvTransposeModule):
    def forward(self, x: Tensor) -> Tensor:
        return HandConvTransposeFunction.apply(x, self.weight, self.bias)


# --------------------------------------------------------------------------------------------
# gradcheck (float64, small shapes)
# --------------------------------------------------------------------------------------------


def gradchecks(gen) -> list[tuple[str, bool, float]]:
    torch.manual_seed(0)
    d = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 5, **d)
    xp = (torch.rand(3, 5, dtype=torch.float64) + 0.5).requires_grad_()  # away from sqrt's kink at 0
    beta, w = 1 + 0.1 * torch.randn(5, **d), 1 + 0.1 * torch.randn(5, **d)
    beta, w = beta.detach().requires_grad_(), w.detach().requires_grad_()
    a, b, c = (torch.tensor(v, **d) for v in (0.7, 0.2, 1.3))
    wm = torch.randn(5, 4, **d)
    bias = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_()
    wq = torch.randn(5, 5, 4, **d)
    xc, wc, bc = torch.randn(2, 3, 4, **d), torch.randn(3, 3, 2, **d), torch.randn(3, **d)
    checks = [
        ("HandSwishFunction", lambda: HandSwishFunction.apply, (x, beta)),
        ("HandRMSNormFunction", lambda: lambda x, w: HandRMSNormFunction.apply(x, w, 1e-6)[0], (x, w)),
        ("HandFusedChainFunction", lambda: HandFusedChainFunction.apply, (x, a, b, c)),
        ("HandMyLayerFunction", lambda: HandMyLayerFunction.apply, (x, wm, bias)),
        ("HandMyLayerFunction (bias=None)", lambda: lambda x, w: HandMyLayerFunction.apply(x, w, None), (xp, wm)),
        ("HandMyLayerSaveSqrtFunction",
         lambda: lambda x, w, b: HandMyLayerSaveSqrtFunction.apply(x, w, b)[0], (x, wm, bias)),
        ("HandQuadraticFormFunction", lambda: HandQuadraticFormFunction.apply, (x, wq)),
        ("HandQuadraticFormChunkedFunction (2-row blocks)",
         lambda: lambda x, w: HandQuadraticFormChunkedFunction.apply(x, w, 2), (x, wq)),
        ("generated SwishFunctionalFunction", lambda: gen["swish_function"].SwishFunctionalFunction.apply, (x, beta)),
        ("generated RMSNormFunctionalFunction",
         lambda: lambda x, w: gen["rms_norm_function"].RMSNormFunctionalFunction.apply(x, w, 1e-6)[0], (x, w)),
        ("generated FusedChainFunction", lambda: gen["fused_chain"].FusedChainFunction.apply, (x, a, b, c)),
        ("generated MyLayerFunctionalFunction",
         lambda: gen["my_layer_function"].MyLayerFunctionalFunction.apply, (x, wm, bias)),
        ("generated QuadraticFormFunctionalFunction",
         lambda: gen["quadratic_form"].QuadraticFormFunctionalFunction.apply, (x, wq)),
        ("HandMaxPoolFunction", lambda: lambda x: HandMaxPoolFunction.apply(x)[0], (x,)),
        ("HandConvTransposeFunction", lambda: HandConvTransposeFunction.apply, (xc, wc, bc)),
        ("generated MaxPoolFunctionalFunction",
         lambda: lambda x: gen["pooling_function"].MaxPoolFunctionalFunction.apply(x)[0], (x,)),
        ("generated ConvTransposeFunctionalFunction",
         lambda: gen["pooling_function"].ConvTransposeFunctionalFunction.apply, (xc, wc, bc)),
    ]  # fmt: skip
    out = []
    for name, get, args in checks:
        t0 = time.perf_counter()
        try:
            ok = torch.autograd.gradcheck(get(), args, eps=1e-6, atol=1e-6, rtol=1e-5)
        except Exception as e:  # report, don't hide: a failing hand-written Function stops the run
            print(f"gradcheck {name}: {e}", file=sys.stderr)
            ok = False
        out.append((name, ok, time.perf_counter() - t0))
    return out


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# The targets table: one family per op family. To add one, write its hand-written Function (and a
# module around it) above, then a Family at the end of FAMILIES: its task-A cases, the gradcheck-free
# cross-check, `--only` and the targets table all read the list.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """An op family's row of the targets: its generated `@function` layer against plain autograd and
    a hand-written expert Function, each built for `features` (the case's second size)."""

    family: str  # what the targets table calls it
    layer: str  # the case's name (what --only selects)
    modules: tuple[str, ...]  # the generated files it reads (generated/<name>.py); missing: the family is skipped
    state: Callable[[int, int], dict[str, Tensor]]  # (batch, features) -> {"x": ..., param: ...}
    autograd: Callable[[dict[str, Any], int], nn.Module]  # (generated modules, features) -> plain autograd
    hand: Callable[[int], nn.Module]  # features -> the hand-written Function's module
    generated: Callable[[dict[str, Any], int], nn.Module]  # (generated modules, features) -> the @function one
    out_tol: dict[str, float] | None = None  # rtol/atol of the output cross-check (default: assert_close's)
    # For a family whose autograd Module is the generated functional form: the bare torch call without its
    # input checks, timed too (`UNCHECKED`), so that what the checks cost is seen apart from the Function's.
    unchecked: Callable[[int], nn.Module] | None = None


def swish_state(bt: int, f: int) -> dict[str, Tensor]:
    return {"x": torch.randn(bt, f), "beta": 1 + 0.1 * torch.randn(f)}


def rms_state(bt: int, f: int) -> dict[str, Tensor]:
    return {"x": torch.randn(bt, f), "weight": 1 + 0.1 * torch.randn(f)}


def chain_state(bt: int, f: int) -> dict[str, Tensor]:
    return {"x": torch.randn(bt, f), "a": torch.tensor(0.9), "b": torch.tensor(0.1), "c": torch.tensor(1.1)}


def my_layer_state(bt: int, f: int) -> dict[str, Tensor]:
    bound = math.sqrt(6 / (f + f))
    return {"x": torch.randn(bt, f), "weight": torch.empty(f, f).uniform_(-bound, bound),
            "bias": torch.empty(f).uniform_(0.5, 1.0)}  # fmt: skip


def quad_state(bt: int, f: int) -> dict[str, Tensor]:
    return {"x": torch.randn(bt, f), "weight": 0.1 * torch.randn(f, f, f)}


def chain_autograd(gen: dict[str, Any]) -> nn.Module:
    """The chain has no plain module: its generated functional form, in a module with the same a, b, c."""

    class FusedChainAutograd(ScalarABC):
        fn = staticmethod(gen["fused_chain"].fused_chain)

    return FusedChainAutograd()


def conv_transpose_state(bt: int, f: int) -> dict[str, Tensor]:  # [B/32, 32, F]: B x F input elements
    return {"x": torch.randn(max(bt // 32, 1), 32, f), "weight": 0.1 * torch.randn(32, 32, 2),
            "bias": 0.1 * torch.randn(32)}  # fmt: skip


FAMILIES = [
    Family("activation with a learned parameter", "Swish", ("swish", "swish_function"), swish_state,
           lambda g, f: g["swish"].Swish(f), HandSwishFn, lambda g, f: g["swish_function"].SwishFunctional(f)),
    Family("normalisation (a reduction read twice)", "RMSNorm", ("rms_norm", "rms_norm_function"), rms_state,
           lambda g, f: g["rms_norm"].RMSNorm(f), HandRMSNormFn,
           lambda g, f: g["rms_norm_function"].RMSNormFunctional(f)),
    Family("elementwise chain", "FusedChain", ("fused_chain",), chain_state,
           lambda g, f: chain_autograd(g), lambda f: HandFusedChainFn(), lambda g, f: g["fused_chain"].FusedChain()),
    Family("matmul after elementwise", "MyLayer", ("my_layer", "my_layer_function"), my_layer_state,
           lambda g, f: g["my_layer"].MyLayer(f, f), lambda f: HandMyLayerFn(f, f),
           lambda g, f: g["my_layer_function"].MyLayerFunctional(f, f)),
    Family("max pooling (saves argmax indices)", "MaxPool", ("pooling_function",), lambda bt, f: {"x": torch.randn(bt, f)},
           lambda g, f: MaxPoolChecked(g), lambda f: HandMaxPoolFn(), lambda g, f: g["pooling_function"].MaxPoolFunctional(),
           unchecked=lambda f: MaxPoolAutograd()),
    Family("transposed convolution", "ConvTranspose1d", ("pooling_function",), conv_transpose_state,
           lambda g, f: ConvTransposeChecked(g, 32), lambda f: HandConvTransposeFn(32),
           lambda g, f: g["pooling_function"].ConvTransposeFunctional(32), unchecked=lambda f: ConvTransposeAutograd(32)),
]  # fmt: skip
# Task B's family (its own shapes and candidates: `make_cases`).
CONTRACTION = Family("einsum contraction (index notation)", "QuadraticForm", ("quadratic_form",), quad_state,
                     lambda g, f: g["quadratic_form"].QuadraticForm(f, f), lambda f: HandQuadraticFormFn(f, f),
                     lambda g, f: g["quadratic_form"].QuadraticFormFunctional(f, f),
                     {"rtol": 1e-4, "atol": 1e-4})  # fmt: skip


def gen_modules(gen_dir: Path) -> dict[str, Any]:
    """The generated modules the families read (those present in `gen_dir`)."""
    names = dict.fromkeys(n for fam in [*FAMILIES, CONTRACTION] for n in fam.modules if n != "pooling_function")
    found = {n: bm.import_generated(gen_dir, n) for n in names if (gen_dir / f"{n}.py").exists()}
    return found | {"pooling_function": pooling_module()}  # compiled here: POOLING_SPECS


def cand(name: str, make: Callable[[], nn.Module], vs: str | None = None, *also: str) -> bm.Candidate:
    c = bm.module_candidate(name, make, vs)
    c.also_vs = tuple(also)
    return c


def family_candidates(fam: Family, gen: dict[str, Any], f: int) -> list[bm.Candidate]:
    """A family's task-A candidates at `f` features: the autograd Module, the hand-written and the generated
    Function (and the unchecked torch call, where the family has one)."""
    cands = [
        cand(MODULE, lambda: fam.autograd(gen, f)),
        cand(HAND, lambda: fam.hand(f), MODULE),
        cand(GEN, lambda: fam.generated(gen, f), HAND, MODULE),
    ]
    if fam.unchecked is not None:
        unchecked = fam.unchecked
        cands[-1].also_vs += (UNCHECKED,)
        cands.append(cand(UNCHECKED, lambda: unchecked(f), MODULE))
    return cands


def make_cases(gen: dict[str, Any], shapes: list[tuple[int, int]], quad_shapes: list[tuple[int, int]],
               tasks: str, diagnose: bool) -> list[bm.Case]:  # fmt: skip
    swf, rnf, fc = gen["swish_function"], gen["rms_norm_function"], gen["fused_chain"]
    mlf, qf = gen["my_layer_function"], gen["quadratic_form"]
    cases: list[bm.Case] = []
    if tasks in ("A", "all"):
        for b, f in shapes:
            small = b * f <= 1 << 16
            by_layer = {
                fam.layer: family_candidates(fam, gen, f) for fam in FAMILIES if all(m in gen for m in fam.modules)
            }
            sw_c, rn_c, fc_c, ml_c = (by_layer[k] for k in ("Swish", "RMSNorm", "FusedChain", "MyLayer"))
            ml_c.append(cand("hand-written Function, saves sqrt", lambda f=f: HandMyLayerSaveSqrtFn(f, f), MODULE, GEN))
            if diagnose:
                swf_fn, fcf, mlf_fn = swf.SwishFunctionalFunction, fc.FusedChainFunction, mlf.MyLayerFunctionalFunction
                hand_body = "ablation: generated, hand-written backward body"
                sw_c += [
                    cand(
                        hand_body,
                        lambda f=f: via(
                            swf.SwishFunctional, with_backward(swf_fn, "HandBody", HandSwishFunction.backward)
                        )(f),
                        GEN,
                        HAND,
                        MODULE,
                    ),
                    cand(
                        "ablation: generated, dead temporaries freed",
                        lambda f=f: via(swf.SwishFunctional, with_backward(swf_fn, "Freed", swish_freed))(f),
                        GEN,
                        HAND,
                        MODULE,
                    ),
                    cand(
                        "ablation: generated, fused derivative kernels",
                        lambda f=f: via(swf.SwishFunctional, with_backward(swf_fn, "Fused", swish_fused))(f),
                        GEN,
                        HAND,
                        MODULE,
                    ),
                ]
                fc_c += [
                    cand(
                        hand_body,
                        lambda: via(fc.FusedChain, with_backward(fcf, "HandBody", HandFusedChainFunction.backward))(),
                        GEN,
                        HAND,
                        MODULE,
                    ),
                    cand(
                        "ablation: generated, dead temporaries freed",
                        lambda: via(fc.FusedChain, with_backward(fcf, "Freed", chain_freed))(),
                        GEN,
                        HAND,
                        MODULE,
                    ),
                    cand(
                        "ablation: generated, fused kernels + freed",
                        lambda: via(fc.FusedChain, with_backward(fcf, "Fused", chain_fused))(),
                        GEN,
                        HAND,
                        MODULE,
                    ),
                ]
                ml_c += [
                    cand(
                        hand_body,
                        lambda f=f: via(
                            mlf.MyLayerFunctional, with_backward(mlf_fn, "HandBody", HandMyLayerFunction.backward)
                        )(f, f),
                        GEN,
                        HAND,
                        MODULE,
                    ),
                    cand(
                        "ablation: generated, dead temporaries freed",
                        lambda f=f: via(mlf.MyLayerFunctional, with_backward(mlf_fn, "Freed", my_layer_freed))(f, f),
                        GEN,
                        HAND,
                        MODULE,
                    ),
                    cand(
                        "ablation: generated, constants folded + freed",
                        lambda f=f: via(mlf.MyLayerFunctional, with_backward(mlf_fn, "Folded", my_layer_folded))(f, f),
                        GEN,
                        HAND,
                        MODULE,
                    ),
                ]
                if small:
                    sw_c += [
                        cand(
                            "ablation: generated, plain Function.apply",
                            lambda f=f: via(swf.SwishFunctional, plain_apply(swf_fn))(f),
                            GEN,
                            HAND,
                            MODULE,
                        ),
                        cand(
                            "floor: Function with autograd's own ops and saves",
                            lambda f=f: SwishAutogradOpsFn(f),
                            MODULE,
                            GEN,
                        ),
                    ]
                rnf_fn = rnf.RMSNormFunctionalFunction
                rn_c += [
                    cand("ablation: generated, mean non-differentiable",
                         lambda f=f: via(rnf.RMSNormFunctional, rms_nondiff_mean(rnf_fn))(f), GEN, HAND, MODULE),
                    cand("ablation: generated, + [...,1] factors combined first",
                         lambda f=f: via(rnf.RMSNormFunctional, rms_scalar_first(rnf_fn))(f), GEN, HAND, MODULE),
                    cand(hand_body, lambda f=f: via(rnf.RMSNormFunctional,
                                                    with_backward(rms_nondiff_mean(rnf_fn), "HandBody", rms_hand_body))(f),
                         GEN, HAND, MODULE),
                ]  # fmt: skip
                if small:
                    rn_c.append(cand("ablation: generated, plain Function.apply",
                                     lambda f=f: via(rnf.RMSNormFunctional, plain_apply(rnf_fn))(f),
                                     GEN, HAND, MODULE))  # fmt: skip
            cases += [
                bm.Case(fam.layer, b, f, fam.state, by_layer[fam.layer], fam.out_tol)
                for fam in FAMILIES
                if fam.layer in by_layer
            ]
    if tasks in ("B", "all"):
        for b, f in quad_shapes:
            q_c = [
                cand(MODULE, lambda f=f: qf.QuadraticForm(f, f)),
                cand(HAND, lambda f=f: HandQuadraticFormFn(f, f), MODULE),
                cand(GEN, lambda f=f: qf.QuadraticFormFunctional(f, f), HAND, MODULE),
                cand('autograd, einsum("ijk,bi,bj->bk", W, x, x)', lambda f=f: QuadEinsumSpecOrder(f, f), MODULE),
                cand("autograd, einsum W.x first, then .x", lambda f=f: QuadEinsumWxFirst(f, f), MODULE),
                cand("autograd, einsum outer(x, x) first", lambda f=f: QuadEinsumOuterFirst(f, f), MODULE),
                cand("autograd, outer(x, x) + matmul", lambda f=f: QuadMatmulOuterFirst(f, f), MODULE),
                cand(
                    "hand-written Function, 512-row blocks", lambda f=f: HandQuadraticFormChunkedFn(f, f), MODULE, GEN
                ),
            ]
            if diagnose:
                q_c.append(cand("ablation: generated, g.W contraction shared",
                                lambda f=f: via(qf.QuadraticFormFunctional,
                                                quad_shared_gw(qf.QuadraticFormFunctionalFunction))(f, f),
                                GEN, HAND, MODULE))  # fmt: skip
                q_c.append(cand("ablation: generated, outer(x, g) shared",
                                lambda f=f: via(qf.QuadraticFormFunctional,
                                                quad_shared_outer(qf.QuadraticFormFunctionalFunction))(f, f),
                                GEN, HAND, MODULE))  # fmt: skip
            # other contraction orders round differently: sums of 4096 float32 terms
            cases.append(bm.Case(CONTRACTION.layer, b, f, CONTRACTION.state, q_c, CONTRACTION.out_tol))
    return cases


# --------------------------------------------------------------------------------------------
# Norms and losses (issue 15): a layer_norm and a cross_entropy @function layer, generated from the
# spec text below (in memory, by the same compiler as generated/), against expert Functions.
# --------------------------------------------------------------------------------------------

NORM_LOSS_SPECS = """
@function
layer LayerNormFn(n: int) {
    param weight: [n] = ones
    param bias: [n] = zeros
    example(n = 8)

    forward(x: [B, n]) -> [B, n] {
        return layer_norm(x, [n], weight, bias)
    }
}

@function
layer CrossEntropyFn(n: int) {
    example(n = 8)

    forward(x: [B, n], target: long[B]) -> [] {
        return cross_entropy(x, target)
    }
}
"""


# What the targets tables call the cases of `norm_loss_cases`.
NORM_LOSS_FAMILIES = {
    "LayerNorm": "layer normalisation (saves mean, rstd)",
    "CrossEntropy": "cross entropy (saves the log-probabilities)",
    "LinearCrossEntropy": "linear cross entropy (torch.nn's, its weight reshaped by a spread)",
}


def norm_loss_generated() -> dict[str, Any]:
    from layerdsl.codegen.module import emit_file
    from layerdsl.semantics.checker import check_program
    from layerdsl.syntax.parser import parse_file

    spec = parse_file("norm_loss.layer", NORM_LOSS_SPECS)
    namespace: dict[str, Any] = {}
    exec(compile(emit_file(spec, check_program([spec]), "norm_loss.layer", {}), "norm_loss.py", "exec"), namespace)
    return namespace


class HandLayerNormFunction(Function):
    """ATen's fused kernels; saves x, weight, bias and the per-row mean and rstd; one backward call."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return torch.native_layer_norm(x, (x.shape[-1],), weight, bias, 1e-5)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(x, weight, bias, mean, rstd)

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_rstd):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        mask = list(ctx.needs_input_grad)
        return torch.ops.aten.native_layer_norm_backward(grad_out, x, (x.shape[-1],), mean, rstd, weight, bias, mask)


class HandCrossEntropyFunction(Function):
    """Saves the log-probabilities (the softmax the gradient needs) and the target."""

    @staticmethod
    def forward(x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        log_probs = torch.log_softmax(x, 1)
        return torch.nn.functional.nll_loss(log_probs, target), log_probs

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, target = inputs
        _, log_probs = output
        ctx.mark_non_differentiable(log_probs)
        ctx.save_for_backward(log_probs, target)

    @staticmethod
    def backward(ctx, grad_out, _grad_log_probs):
        log_probs, target = ctx.saved_tensors
        grad = log_probs.exp()
        grad[torch.arange(len(target)), target] -= 1
        return grad.mul_(grad_out / len(target)), None


def linear_cross_entropy_generated() -> tuple[type[nn.Module], type[nn.Module]]:
    """torch.nn's LinearCrossEntropyLoss as shipped (specs/torch_nn/loss.layer, whose weight is
    `reshape(linear.weight, [num_classes, *out_features, in_features])`): the plain module and the
    `@function` one, compiled here."""
    from layerdsl.codegen.module import emit_file
    from layerdsl.semantics.checker import check_program
    from layerdsl.syntax.parser import parse_file

    specs = bm.REPO / "specs" / "torch_nn"
    text = (specs / "linear.layer").read_text() + "\n" + (specs / "loss.layer").read_text()
    modules = []
    for prefix in ("", "@function\n"):
        spec = parse_file(
            "lce.layer", text.replace("layer LinearCrossEntropyLoss(", f"{prefix}layer LinearCrossEntropyLoss(", 1)
        )
        namespace: dict[str, Any] = {}
        exec(compile(emit_file(spec, check_program([spec]), "lce.layer", {}), "lce.py", "exec"), namespace)
        modules.append(namespace["LinearCrossEntropyLoss"])
    return modules[0], modules[1]


class HandLinearCrossEntropyFunction(Function):
    """cross_entropy(x @ weight.T, target), the mean over the samples: saves x, the weight, the
    log-probabilities and the target; backward forms softmax - one_hot once, scaled in place, and takes
    both gradients from it."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        log_probs = torch.log_softmax(x @ weight.mT, 1)
        return torch.nn.functional.nll_loss(log_probs, target), log_probs

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, target = inputs
        _, log_probs = output
        ctx.mark_non_differentiable(log_probs)
        ctx.save_for_backward(x, weight, log_probs, target)

    @staticmethod
    def backward(ctx, grad_out, _grad_log_probs):
        x, weight, log_probs, target = ctx.saved_tensors
        grad = log_probs.exp()
        grad[torch.arange(len(target)), target] -= 1
        grad.mul_(grad_out / len(target))
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad.mT @ x if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight, None


class HandLinearCrossEntropy(nn.Module):
    """The hand-written Function with the shipped module's parameter (`linear.weight`, no bias)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes, bias=False)

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        return HandLinearCrossEntropyFunction.apply(x, self.linear.weight, target)[0]


def linear_cross_entropy_candidate(name: str, make: Callable[[], nn.Module], *vs: str) -> bm.Candidate:
    """A loss module of (x, target) with the weight `linear.weight`: gradients with respect to x and it."""

    def build(state: dict[str, Tensor]) -> bm.Prepared:
        module = make()
        module.load_state_dict({"linear.weight": state["weight"]})
        x = state["x"].detach().clone().requires_grad_(True)
        return bm.Prepared(module, (x, state["target"]), (x, *module.parameters()))

    return bm.Candidate(name, build, vs[0] if vs else None, tuple(vs[1:]))


class AutogradLayerNorm(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), self.weight, self.bias)


class HandLayerNormFn(AutogradLayerNorm):
    def forward(self, x: Tensor) -> Tensor:
        return HandLayerNormFunction.apply(x, self.weight, self.bias)[0]


def cross_entropy_candidate(name: str, loss: Callable[[Tensor, Tensor], Tensor], *vs: str) -> bm.Candidate:
    """A loss of (x, target): gradients with respect to x."""

    def build(state: dict[str, Tensor]) -> bm.Prepared:
        x = state["x"].detach().clone().requires_grad_(True)
        return bm.Prepared(loss, (x, state["target"]), (x,))

    return bm.Candidate(name, build, vs[0] if vs else None, tuple(vs[1:]))


def norm_loss_cases(shapes: list[tuple[int, int]]) -> list[bm.Case]:
    gen = norm_loss_generated()
    d = dict(dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 2, 1])
    for name, fn, inputs in [
        ("HandLayerNormFunction", lambda x, w, b: HandLayerNormFunction.apply(x, w, b)[0],
         (torch.randn(3, 5, **d), 1 + 0.1 * torch.randn(5, **d), torch.randn(5, **d))),
        ("HandCrossEntropyFunction", lambda x: HandCrossEntropyFunction.apply(x, target)[0], (torch.randn(3, 5, **d),)),
        ("HandLinearCrossEntropyFunction", lambda x, w: HandLinearCrossEntropyFunction.apply(x, w, target)[0],
         (torch.randn(3, 5, **d), torch.randn(4, 5, **d))),
    ]:  # fmt: skip
        assert torch.autograd.gradcheck(fn, inputs), name

    def ln_state(bt: int, f: int) -> dict[str, Tensor]:
        return {"x": torch.randn(bt, f), "weight": 1 + 0.1 * torch.randn(f), "bias": 0.1 * torch.randn(f)}

    def ce_state(bt: int, f: int) -> dict[str, Tensor]:
        return {"x": torch.randn(bt, f), "target": torch.randint(0, f, (bt,))}

    def lce_state(bt: int, f: int) -> dict[str, Tensor]:  # f features, f classes
        weight = torch.empty(f, f).uniform_(-1 / math.sqrt(f), 1 / math.sqrt(f))
        return {"x": torch.randn(bt, f), "weight": weight, "target": torch.randint(0, f, (bt,))}

    plain_lce, function_lce = linear_cross_entropy_generated()

    cases = []
    for b, f in shapes:
        ln_c = [
            cand(MODULE, lambda f=f: AutogradLayerNorm(f)),
            cand(HAND, lambda f=f: HandLayerNormFn(f), MODULE),
            cand(GEN, lambda f=f: gen["LayerNormFn"](f), HAND, MODULE),
        ]
        ce_c = [
            cross_entropy_candidate(MODULE, torch.nn.functional.cross_entropy),
            cross_entropy_candidate(HAND, lambda x, t: HandCrossEntropyFunction.apply(x, t)[0], MODULE),
            cross_entropy_candidate(GEN, gen["CrossEntropyFn"](f), HAND, MODULE),
        ]
        lce_c = [
            linear_cross_entropy_candidate(MODULE, lambda f=f: plain_lce(f, f)),
            linear_cross_entropy_candidate(HAND, lambda f=f: HandLinearCrossEntropy(f, f), MODULE),
            linear_cross_entropy_candidate(GEN, lambda f=f: function_lce(f, f), HAND, MODULE),
        ]
        cases += [bm.Case("LayerNorm", b, f, ln_state, ln_c), bm.Case("CrossEntropy", b, f, ce_state, ce_c)]
        cases.append(bm.Case("LinearCrossEntropy", b, f, lce_state, lce_c))
    return cases


# --------------------------------------------------------------------------------------------
# Memory during a step: peak heap in use (glibc mallinfo2, sampled after every ATen op) and minor
# page faults per step (fresh pages the kernel had to zero: temporaries that glibc returned to the
# OS and took back), both beyond what saved_bytes sees.
# --------------------------------------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


try:
    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallinfo2.restype = _MallInfo2
except (OSError, AttributeError):  # not glibc >= 2.33
    _libc = None


def heap_in_use() -> int:
    m = _libc.mallinfo2()
    return m.uordblks + m.hblkhd  # malloc'd from the arenas + mmap'd blocks


class PeakHeap(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.peak = heap_in_use()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, heap_in_use())
        return out


def memory_profile(case: bm.Case, steps: int = 5) -> dict[str, dict[str, float]]:
    """{candidate: {"peak_heap": bytes above the start of the step, "minflt": median minor page faults
    per step}}; each candidate alone, after two warm-up steps."""
    if _libc is None:
        return {}
    torch.manual_seed(0)
    state = case.state(case.batch, case.features)
    out = {}
    for c in case.candidates:
        p = c.build(state)
        step = bm.step_fn(p)
        step(), step()
        faults = []
        for _ in range(steps):
            r0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            step()
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - r0)
        start = heap_in_use()
        with PeakHeap() as pk:
            torch.autograd.grad(p.fn(*p.args).sum(), p.wrt)
        out[c.name] = {"peak_heap": pk.peak - start, "minflt": statistics.median(faults)}
        del p, step
    return out


# --------------------------------------------------------------------------------------------
# The Python pieces of a Function call, in isolation (--diagnose)
# --------------------------------------------------------------------------------------------


class _Id(Function):
    @staticmethod
    def forward(x, w):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g, None


class _IdFast(_Id):
    @classmethod
    def apply(cls, x, w):  # the generated override, without its checks
        return super(Function, cls).apply(x, w)


def pieces(threads: int, clock: Callable[[], float], quick: bool) -> list[tuple[str, float]]:
    """Nanoseconds per call (hot loop, interleaved rounds) of the pieces of an autograd.Function
    call at 32x64."""
    x, w = torch.randn(32, 64, requires_grad=True), torch.ones(64, requires_grad=True)

    def bind(func, *args):  # what Function.apply does first on every call
        b = inspect.signature(func).bind(*args)
        b.apply_defaults()
        return b.args, b.kwargs

    g = {"torch": torch, "inspect": inspect, "bind": bind, "H": HandSwishFunction, "Id": _Id, "IdFast": _IdFast,
         "x": x, "w": w, "grad": torch.autograd.grad}  # fmt: skip
    stmts = [
        ("inspect.signature(Function.forward)", "inspect.signature(H.forward)"),
        ("signature + bind + apply_defaults (Function.apply's bind_default_args)", "bind(H.forward, x, w)"),
        ("torch._C._are_functorch_transforms_active()", "torch._C._are_functorch_transforms_active()"),
        ("torch.compiler.is_compiling()", "torch.compiler.is_compiling()"),
        ("identity Function, plain Function.apply, forward only", "Id.apply(x, w)"),
        ("identity Function, apply override (no checks), forward only", "IdFast.apply(x, w)"),
        ("x.view_as(x) under autograd, forward only", "x.view_as(x)"),
        ("identity Function (override), forward + backward", "grad(IdFast.apply(x, w).sum(), (x,))"),
        ("x.view_as(x) under autograd, forward + backward", "grad(x.view_as(x).sum(), (x,))"),
        ("one elementwise op on 32x64 from Python (no grad)", "torch.sigmoid(x.detach())"),
    ]
    timers = {n: Timer(stmt=st, globals=g, num_threads=threads, timer=clock) for n, st in stmts}
    numbers = {n: max(1, round(0.005 / t.blocked_autorange(min_run_time=0.05).median)) for n, t in timers.items()}
    res: dict[str, list[float]] = {n: [] for n in timers}
    names = list(timers)
    for r in range(10 if quick else 40):
        for n in bm.round_order(names, r):
            res[n].append(timers[n].timeit(numbers[n]).median)
    return [(n, statistics.median(v) * 1e9) for n, v in res.items()]


def small_shape_overhead(threads: int, clock: Callable[[], float], quick: bool) -> list[tuple[str, list[float]]]:
    """Where a generated Function's step goes at 32x64 beyond the autograd module's (LayerNorm, `--overhead`):
    the same step with the module's argument checks left out, then the `apply` probes, then the ctx
    bookkeeping of setup_context (what is saved kept); forward only and the Python pieces alone. Microseconds
    per call of each interleaved round."""
    gen = norm_loss_generated()
    n = 64
    module, plain = gen["LayerNormFn"](n), AutogradLayerNorm(n)
    fn = gen["LayerNormFnFunction"]
    w, b = module.weight, module.bias
    x = torch.randn(32, n, requires_grad=True)

    class Saving(fn):  # type: ignore[misc,valid-type]
        """setup_context saving what the generated one saves, without its other ctx calls."""

        @staticmethod
        def setup_context(ctx, inputs, output) -> None:
            x, weight, bias, n = inputs
            _, mean, rstd = output
            ctx.n = n
            ctx.save_for_backward(x, weight, bias, mean, rstd)

    def checks(x: Tensor) -> None:  # the module's four, as generated
        if not x.is_floating_point():
            raise TypeError(x.dtype)
        if x.device != w.device:
            raise ValueError(x.device)
        if x.dim() != 2:
            raise ValueError(x.dim())
        if x.shape[1] != n:
            raise ValueError(x.shape)

    def probes() -> bool:  # the generated apply's, as generated
        transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)
        compiling = getattr(torch.compiler, "is_compiling", None)
        return None in (transforms_active, compiling) or transforms_active() or compiling()

    direct = super(Function, fn).apply  # the C++ entry point the fast path calls
    direct_saving = super(Function, Saving).apply
    g = {"grad": torch.autograd.grad, "plain": plain, "module": module, "fn": fn, "direct": direct,
         "direct_saving": direct_saving, "x": x, "w": w, "b": b, "n": n, "checks": checks, "probes": probes}  # fmt: skip
    stmts = [
        ("autograd module, step", "grad(plain(x).sum(), (x, plain.weight, plain.bias))"),
        ("generated module, step", "grad(module(x).sum(), (x, w, b))"),
        ("- the module's argument checks: Function.apply, step", "grad(fn.apply(x, w, b, n)[0].sum(), (x, w, b))"),
        ("- the apply probes: the C++ apply, step", "grad(direct(x, w, b, n)[0].sum(), (x, w, b))"),
        ("- ctx bookkeeping but saving, step", "grad(direct_saving(x, w, b, n)[0].sum(), (x, w, b))"),
        ("autograd module, forward", "plain(x)"),
        ("generated module, forward", "module(x)"),
        ("Function.apply (the probes, no checks), forward", "fn.apply(x, w, b, n)"),
        ("the C++ apply, forward", "direct(x, w, b, n)"),
        ("the C++ apply, ctx bookkeeping but saving, forward", "direct_saving(x, w, b, n)"),
        ("the Function's forward alone (no autograd)", "fn.forward(x.detach(), w.detach(), b.detach(), n)"),
        ("the module's argument checks alone", "checks(x)"),
        ("the apply probes alone", "probes()"),
    ]
    timers = {name: Timer(stmt=st, globals=g, num_threads=threads, timer=clock) for name, st in stmts}
    numbers = {k: max(1, round(0.005 / t.blocked_autorange(min_run_time=0.05).median)) for k, t in timers.items()}
    res: dict[str, list[float]] = {k: [] for k in timers}
    names = list(timers)
    for r in range(10 if quick else 40):
        for k in bm.round_order(names, r):
            res[k].append(timers[k].timeit(numbers[k]).median * 1e6)
    return list(res.items())


def contraction_orders(
    b: int, n: int, threads: int, clock: Callable[[], float], quick: bool
) -> list[tuple[str, float, float, int]]:
    """Forward only, under no_grad (as inside a Function's forward): the single 3-operand einsum
    against explicit pairwise orders. (name, median and min seconds, peak heap bytes above start). The
    64 MiB temporaries are fresh mmaps whose page faults come and go with the heap's state, hence min."""
    torch.manual_seed(0)
    x, w = torch.randn(b, n), 0.1 * torch.randn(n, n, n)
    variants = {
        'einsum("ijk,bi,bj->bk", W, x, x)  (single call, spec order)': lambda: torch.einsum("ijk,bi,bj->bk", w, x, x),
        'einsum("ijk,bi->bjk"), then einsum("bjk,bj->bk")': lambda: torch.einsum("bjk,bj->bk", torch.einsum("ijk,bi->bjk", w, x), x),
        'einsum("bi,bj->bij"), then einsum("bij,ijk->bk")': lambda: torch.einsum("bij,ijk->bk", torch.einsum("bi,bj->bij", x, x), w),
        'einsum("bi,bj,ijk->bk", x, x, W)  (operands reordered, as generated since 68f82fc)': lambda: torch.einsum("bi,bj,ijk->bk", x, x, w),
        "(x[:, :, None] * x[:, None, :]).view(b, n*n) @ W.view(n*n, k)": lambda: (x.unsqueeze(2) * x.unsqueeze(1)).view(b, n * n) @ w.view(n * n, n),
    }  # fmt: skip
    ref = variants[next(iter(variants))]()
    out = []
    timers = {}
    for name, f in variants.items():
        torch.testing.assert_close(f(), ref, rtol=1e-4, atol=1e-4)
        timers[name] = Timer("f()", globals={"f": f}, num_threads=threads, timer=clock)
    res: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(6 if quick else 40):
        for k in bm.round_order(names, r):
            res[k].append(timers[k].timeit(1).median)
    for name, f in variants.items():
        peak = 0
        if _libc is not None:
            start = heap_in_use()
            with PeakHeap() as pk:
                f()
            peak = pk.peak - start
        out.append((name, statistics.median(res[name]), min(res[name]), peak))
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt_ratio(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    lo, hi = r["ci95"]
    return f"{r['ratio']:.3f} [{lo:.3f}, {hi:.3f}]"


def verdict(r: dict[str, Any], limit: float) -> str:
    """PASS: the CI is at or under ``limit``; FAIL: the CI is over it; otherwise say which side the
    median is on and that the CI straddles the limit."""
    lo, hi = r["ci95"]
    if hi <= limit:
        return "PASS"
    if lo > limit:
        return "FAIL"
    return ("pass" if r["ratio"] <= limit else "fail") + " (CI spans limit)"


def markdown(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, rows)])


def print_tables(results: list[dict[str, Any]]) -> None:
    head = ["layer", "shape", "candidate", "median", "saved (all)", "saved (activations)", "peak heap",
            "page faults", "ATen ops", "rounds", "time ratio [95% CI] vs", "ratio vs autograd Module"]  # fmt: skip
    rows = []
    for res in results:
        for name, e in res["candidates"].items():
            vs = e["vs"]
            ratio = f"{fmt_ratio(e['ratios'][vs])} vs {vs}" if vs else "(reference)"
            other = fmt_ratio(e["ratios"].get(MODULE)) if vs != MODULE else ""
            rows.append([res["layer"], res["shape"], name, bm.fmt_us(e["median_us"]), bm.fmt_bytes(e["saved_bytes"]),
                         bm.fmt_bytes(e["saved_activation_bytes"]),
                         bm.fmt_bytes(e["peak_heap"]) if "peak_heap" in e else "n/a",
                         f"{e['minflt']:.0f}" if "minflt" in e else "n/a", str(len(e["aten_ops"])), str(res["rounds"]),
                         ratio, other])  # fmt: skip
    print(markdown(head, rows))
    print()

    family_of = {fam.layer: fam.family for fam in [*FAMILIES, CONTRACTION]} | NORM_LOSS_FAMILIES
    head = ["family", "layer", "shape", "saved: gen / hand / Module", "gen saved ≤ hand", "gen saved / Module",
            "time gen / hand", "gen ≤ hand (large shape)", "time gen / Module", "gen ≤ 1.2× Module (32x64)"]  # fmt: skip
    rows = []
    for res in results:
        c = res["candidates"]
        if GEN not in c:
            continue
        g, h, m = c[GEN], c[HAND], c[MODULE]
        big = res["shape"] != "32x64"
        rows.append([
            family_of.get(res["layer"], ""), res["layer"], res["shape"],
            " / ".join(bm.fmt_bytes(e["saved_bytes"]) for e in (g, h, m)),
            "PASS" if g["saved_bytes"] <= h["saved_bytes"] else "FAIL",
            f"{g['saved_bytes'] / m['saved_bytes']:.2f}",
            fmt_ratio(g["ratios"][HAND]),
            verdict(g["ratios"][HAND], 1.0) if big else "-",
            fmt_ratio(g["ratios"][MODULE]),
            verdict(g["ratios"][MODULE], 1.2) if not big else "-",
        ])  # fmt: skip
    print(markdown(head, rows))


def round_spread(results: list[dict[str, Any]]) -> str:
    """The generated Function's per-round time ratios (one per interleaved round, paired): median [min, max]
    against the hand-written Function and the autograd Module, the spread a loaded machine shows."""
    head = ["family", "layer", "shape", "rounds", "gen / hand: median [min, max]", "gen / Module: median [min, max]"]
    family_of = {fam.layer: fam.family for fam in [*FAMILIES, CONTRACTION]} | NORM_LOSS_FAMILIES
    rows = []
    for res in results:
        c = res["candidates"]
        if GEN not in c:
            continue
        spreads = []
        for ref in (HAND, MODULE):
            r = [g / h for g, h in zip(c[GEN]["times_us"], c[ref]["times_us"])]
            spreads.append(f"{statistics.median(r):.3f} [{min(r):.3f}, {max(r):.3f}]")
        rows.append(
            [family_of.get(res["layer"], ""), res["layer"], res["shape"], str(len(c[GEN]["times_us"])), *spreads]
        )
    return markdown(head, rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=["A", "B", "all"], default="all")
    ap.add_argument("--quick", action="store_true", help="fewer and shorter rounds (a smoke run, noisier)")
    ap.add_argument("--json", metavar="PATH", help="write every measurement to PATH as JSON")
    ap.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per case, at least (default 40, --quick 10)")
    ap.add_argument("--max-rounds", type=int, help="add rounds while a CI is wide (default 6 x --rounds)")
    ap.add_argument("--ci", type=float, default=0.005, help="target CI half-width (default %(default)s)")
    ap.add_argument("--max-case-s", type=float, default=45.0, help="stop adding rounds after this (default 45)")
    ap.add_argument("--block-ms", type=float, help="target time of one timed block (default 20, --quick 10)")
    ap.add_argument("--generated", type=Path, default=bm.REPO / "generated")
    ap.add_argument("--only", metavar="LAYER", action="append", help="only these layers (repeatable)")
    ap.add_argument("--shape", metavar="BxF", action="append", help="task A shapes (default 32x64, 4096x1024)")
    ap.add_argument("--quad-shape", metavar="BxF", action="append", help="task B shapes (default 4096x64)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--diagnose", action="store_true", help="add ablations of the generated Functions")
    ap.add_argument("--no-gradcheck", action="store_true")
    ap.add_argument("--overhead", action="store_true", help="only where a generated Function's step goes at 32x64")
    args = ap.parse_args(argv)

    rounds = args.rounds or (10 if args.quick else 40)
    max_rounds = args.max_rounds if args.max_rounds is not None else (0 if args.quick else 6 * rounds)
    block_s = (args.block_ms or (10 if args.quick else 20)) / 1000
    if args.threads <= 0:
        args.threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    clock = (
        time.perf_counter if args.clock == "wall" else (time.thread_time if args.threads == 1 else time.process_time)
    )
    info = bm.machine() | {"threads": args.threads, "clock": clock.__name__, "rounds": rounds,
                           "block_ms": block_s * 1000, "argv": sys.argv[1:]}  # fmt: skip
    load = info["load_average"]
    print(
        f"# {info['cpu']}, {info['logical_cpus']} logical CPUs; torch {info['torch']}, Python {info['python']}; "
        f"{args.threads} torch thread(s); {rounds}+ interleaved rounds of ~{block_s * 1000:g} ms; clock {clock.__name__}"
    )
    print(f"# git {info['git']['commit']}{' (dirty tree)' if info['git']['dirty'] else ''}; "
          f"load average at start {load[0]:.2f}" if load else "")  # fmt: skip
    print("# forward + backward (loss = out.sum(); grads w.r.t. input and parameters), float32 CPU\n", flush=True)

    if args.overhead:
        print("Generated LayerNorm Function at 32x64, µs per call: median [min, max] of the rounds")
        for name, us in small_shape_overhead(args.threads, clock, args.quick):
            print(f"  {statistics.median(us):8.2f} [{min(us):.2f}, {max(us):.2f}]  {name}")
        return 0
    gen = gen_modules(args.generated)
    checks = [] if args.no_gradcheck else gradchecks(gen)
    if checks:
        print("gradcheck (float64): " + ", ".join(f"{n} {'ok' if ok else 'FAILED'}" for n, ok, _ in checks))
        print(f"  ({sum(t for *_, t in checks):.1f} s)\n", flush=True)
        if not all(ok for n, ok, _ in checks if n.startswith("Hand")):
            print("a hand-written Function failed gradcheck: not timing it", file=sys.stderr)
            return 1

    parse = lambda shs, dflt: [tuple(int(v) for v in s.lower().split("x")) for s in shs] if shs else dflt  # noqa: E731
    cases = make_cases(gen, parse(args.shape, [(32, 64), (4096, 1024)]), parse(args.quad_shape, [(4096, 64)]),
                       args.task, args.diagnose)  # fmt: skip
    if args.task in ("A", "all"):
        cases += norm_loss_cases(parse(args.shape, [(32, 64), (4096, 1024)]))
    if args.only:
        cases = [c for c in cases if c.layer in args.only]
    results = []
    for case in cases:
        t0 = time.perf_counter()
        res = bm.run_case(case, rounds, block_s, args.threads, max_rounds, args.max_case_s, clock, args.ci)
        for name, mem in memory_profile(case).items():
            res["candidates"][name].update(mem)
        results.append(res)
        print(f"#   {case.layer} {case.shape}: {res['rounds']} rounds of {res['number']} calls, "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    print_tables(results)
    print("\nPer-round ratios of the generated Function (paired within each round):")
    print(round_spread(results))
    orders = None
    if args.task in ("B", "all") and (not args.only or "QuadraticForm" in args.only):
        qb, qn = parse(args.quad_shape, [(4096, 64)])[0]
        orders = contraction_orders(qb, qn, args.threads, clock, args.quick)
        print(f"\nQuadraticForm forward only, no_grad, {qb}x{qn}: contraction orders")
        print(markdown(["forward", "median", "min", "peak heap"],
                       [[n, bm.fmt_us(t * 1e6), bm.fmt_us(m * 1e6), bm.fmt_bytes(pk)] for n, t, m, pk in orders]))  # fmt: skip
    diag = None
    if args.diagnose:
        diag = pieces(args.threads, clock, args.quick)
        print("\nPieces of an autograd.Function call, in isolation (hot loop), 32x64, median ns per call:")
        for name, ns in diag:
            print(f"  {ns:9.0f} ns  {name}")
    if args.json:
        info["load_average_end"] = bm.os.getloadavg()
        Path(args.json).write_text(json.dumps({"machine": info, "gradcheck": checks, "cases": results,
                                               "pieces": diag, "contraction_orders": orders}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
