#!/usr/bin/env python
"""Generated layers vs hand-written ones: forward+backward time, saved bytes, and tool wall times.

For each case (a layer at a shape) every candidate runs ``loss = fn(*args).sum()`` and
``torch.autograd.grad(loss, wrt)`` with ``wrt`` = the input and every parameter, float32 CPU.
Before timing, every candidate's output and gradients are checked against the reference's, and the
ATen ops each dispatches (forward and backward) are recorded and compared.

Timing (``torch.utils.benchmark.Timer``): candidates run in interleaved rounds, one block of
``number`` calls (~20 ms) of each per round, the order rotating and reversing (AB BA BA AB ...) so
drift and position effects cancel; every 8 rounds all candidates are rebuilt with fresh tensors
(one set of addresses can make an instance 1-2% faster or slower than an identical one). Rounds
are added (up to 6x) until each ratio's 95% CI is within +-0.5%. The clock is, by default, the CPU
time of the (single) timing thread, so time spent preempted by other processes on a shared
machine does not count. The ratio reported is the median over rounds of the *paired* per-round
ratio candidate / reference, with a distribution-free 95% confidence interval for that median;
"min of medians" is the ratio of the smallest per-8-round median of each (the quietest stretch).

    python benchmarks/bench_modules.py                  # full run (5-10 minutes on 2 busy cores)
    python benchmarks/bench_modules.py --quick          # 10 rounds of 10 ms blocks (~1 minute)
    python benchmarks/bench_modules.py --json out.json  # also write every number as JSON
    python benchmarks/bench_modules.py --threads 0      # torch's default thread count (1 is the default)
    python benchmarks/bench_modules.py --control        # add an A/A control (the harness's own error)
    python benchmarks/bench_modules.py --diagnose       # add ablations + time the Python pieces alone
    python benchmarks/bench_modules.py --generated /tmp/x/generated  # benchmark another generated package

Adding a candidate (e.g. a generated ``MyLayerFunction`` and a hand-written autograd.Function):
append to the case's list in ``make_cases``

    function_candidate("hand-written Function", HandMyLayerFunction.apply, ["weight", "bias"]),
    function_candidate("generated Function", my_layer.MyLayerFunction.apply, ["weight", "bias"],
                       vs="hand-written Function"),

(or any ``Candidate(name, build, vs)`` whose ``build(state)`` returns ``Prepared(fn, args, wrt)``).
The correctness cross-check, the ATen-op comparison, the interleaved timing, the saved-bytes
columns (``saved_bytes``) and the ratio against ``vs`` then come for free.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.benchmark import Timer

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.02
TARGET_GEN_S = 1.0


# --------------------------------------------------------------------------------------------
# Hand-written reference modules: what an expert writes for the same math, without shape checks.
# --------------------------------------------------------------------------------------------


class HandMyLayer(nn.Module):
    """y = sqrt(x**2 + bias) @ weight, weight laid out [in, out], bias optional."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        if bias:
            self.bias = nn.Parameter(torch.empty(in_features))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        h = x**2
        if self.bias is not None:
            h = h + self.bias
        return torch.sqrt(h) @ self.weight


class HandRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + self.eps) * self.weight


class HandSwish(nn.Module):
    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta * x)


# Ablations for --diagnose: a hand-written Module whose forward calls a function `fn` with the
# same arguments as the generated forward passes to the generated functional form. With fn = the
# `*_core` function (same math, no checks) they measure the cost of the extra call; with fn = the
# generated functional form (checks + math), the cost of the checks on top.


def my_layer_core(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    h = x**2
    if bias is not None:
        h = h + bias
    return torch.sqrt(h) @ weight


def rms_norm_core(x: Tensor, weight: Tensor, *, eps: float = 1e-6) -> Tensor:
    return x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + eps) * weight


def swish_core(x: Tensor, beta: Tensor) -> Tensor:
    return x * torch.sigmoid(beta * x)


class MyLayerVia(HandMyLayer):
    fn = staticmethod(my_layer_core)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x, self.weight, self.bias)


class RMSNormVia(HandRMSNorm):
    fn = staticmethod(rms_norm_core)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x, self.weight, eps=self.eps)


class SwishVia(HandSwish):
    fn = staticmethod(swish_core)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x, self.beta)


def via(base: type[nn.Module], fn: Callable[..., Tensor]) -> type[nn.Module]:
    return type(f"{base.__name__}_{fn.__name__}", (base,), {"fn": staticmethod(fn)})


# --------------------------------------------------------------------------------------------
# Saved-tensor accounting
# --------------------------------------------------------------------------------------------


def saved_storages(fn: Callable[..., Any], *args: Any) -> dict[tuple[str, int], int]:
    """Run ``fn(*args)`` and return {(device, storage data_ptr): nbytes} of every storage that
    autograd saved for backward (unique storages: a tensor and its views count once)."""
    found: dict[tuple[str, int], int] = {}
    keep: list[Tensor] = []  # keep them alive so no address is reused while we count

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        found[(str(t.device), s.data_ptr())] = s.nbytes()
        keep.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    del out, keep
    return found


def saved_bytes(fn: Callable[..., Any], *args: Any, exclude: Sequence[Tensor] = ()) -> int:
    """Bytes of the unique storages autograd saves for backward when running ``fn(*args)``.

    Storages of the tensors in ``exclude`` (typically the inputs and parameters, which the caller
    keeps alive anyway) are not counted, so ``exclude=wrt`` gives the activation memory that the
    graph alone keeps alive.
    """
    found = saved_storages(fn, *args)
    for t in exclude:
        found.pop((str(t.device), t.untyped_storage().data_ptr()), None)
    return sum(found.values())


# --------------------------------------------------------------------------------------------
# Cases and candidates
# --------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """A ready-to-time candidate: ``fn(*args)`` is differentiated w.r.t. ``wrt``."""

    fn: Callable[..., Tensor]
    args: tuple[Tensor, ...]
    wrt: tuple[Tensor, ...]


@dataclass
class Candidate:
    name: str
    build: Callable[[dict[str, Tensor]], Prepared]
    vs: str | None = None  # name of the reference candidate for the ratio column
    also_vs: tuple[str, ...] = ()  # further candidates to report a paired ratio against ("ratios")


@dataclass
class Case:
    layer: str
    batch: int
    features: int
    state: Callable[[int, int], dict[str, Tensor]]  # (batch, features) -> {"x": ..., param: ...}
    candidates: list[Candidate]
    out_tol: dict[str, float] | None = None  # rtol/atol of the output cross-check (default: assert_close's)

    @property
    def shape(self) -> str:
        return f"{self.batch}x{self.features}"


def module_candidate(name: str, make: Callable[[], nn.Module], vs: str | None = None) -> Candidate:
    """An nn.Module candidate; its parameters are loaded from the case state by name."""

    def build(state: dict[str, Tensor]) -> Prepared:
        m = make()
        m.load_state_dict({k: v for k, v in state.items() if k != "x"})
        x = state["x"].detach().clone().requires_grad_(True)
        return Prepared(m, (x,), (x, *m.parameters()))

    return Candidate(name, build, vs)


def function_candidate(
    name: str, apply: Callable[..., Tensor], params: Sequence[str], vs: str | None = None
) -> Candidate:
    """An autograd.Function-style candidate, ``apply(x, *params)`` (e.g. a generated
    ``MyLayerFunction.apply`` or a hand-written Function): the parameters come from the case state
    by name, as fresh leaf tensors, and gradients are taken w.r.t. x and all of them."""

    def build(state: dict[str, Tensor]) -> Prepared:
        x = state["x"].detach().clone().requires_grad_(True)
        ps = tuple(state[n].detach().clone().requires_grad_(True) for n in params)
        return Prepared(apply, (x, *ps), (x, *ps))

    return Candidate(name, build, vs)


def import_generated(gen_dir: Path, module: str):
    gen_dir = gen_dir.resolve()
    if not gen_dir.name.isidentifier():
        raise SystemExit(f"--generated: folder name {gen_dir.name!r} is not a Python identifier")
    sys.path.insert(0, str(gen_dir.parent))
    try:
        return importlib.import_module(f"{gen_dir.name}.{module}")
    finally:
        sys.path.pop(0)


def make_cases(
    gen_dir: Path, shapes: list[tuple[int, int]], control: bool = False, ablations: bool = False
) -> list[Case]:
    my_layer = import_generated(gen_dir, "my_layer")
    rms_norm = import_generated(gen_dir, "rms_norm")
    swish = import_generated(gen_dir, "swish")

    def my_layer_state(b: int, f: int) -> dict[str, Tensor]:
        bound = math.sqrt(6 / (f + f))
        return {
            "x": torch.randn(b, f),
            "weight": torch.empty(f, f).uniform_(-bound, bound),
            "bias": torch.empty(f).uniform_(0.5, 1.0),
        }

    def rms_state(b: int, f: int) -> dict[str, Tensor]:
        return {"x": torch.randn(b, f), "weight": 1 + 0.1 * torch.randn(f)}

    def swish_state(b: int, f: int) -> dict[str, Tensor]:
        return {"x": torch.randn(b, f), "beta": 1 + 0.1 * torch.randn(f)}

    cases = []
    for b, f in shapes:
        cases += [
            Case("MyLayer", b, f, my_layer_state, [
                module_candidate("hand-written Module", lambda f=f: HandMyLayer(f, f)),
                module_candidate("generated Module", lambda f=f: my_layer.MyLayer(f, f), vs="hand-written Module"),
            ]),
            Case("RMSNorm", b, f, rms_state, [
                module_candidate("hand-written Module", lambda f=f: HandRMSNorm(f)),
                module_candidate("generated Module", lambda f=f: rms_norm.RMSNorm(f), vs="hand-written Module"),
            ]),
            Case("Swish", b, f, swish_state, [
                module_candidate("hand-written Module", lambda f=f: HandSwish(f)),
                module_candidate("generated Module", lambda f=f: swish.Swish(f), vs="hand-written Module"),
            ]),
        ]  # fmt: skip
    if ablations:  # at the small shapes only, where Python overhead is visible at all
        via_fns = {
            "MyLayer": (MyLayerVia, my_layer.my_layer, lambda f: (f, f)),
            "RMSNorm": (RMSNormVia, rms_norm.rms_norm, lambda f: (f,)),
            "Swish": (SwishVia, swish.swish, lambda f: (f,)),
        }
        for case in cases:
            if case.batch * case.features > 1 << 16:
                continue
            base, gen_fn, ctor_args = via_fns[case.layer]
            ref, f = case.candidates[0].name, case.features
            case.candidates += [
                module_candidate("ablation: hand-written, forward calls an unchecked function",
                                 lambda b=base, a=ctor_args(f): b(*a), vs=ref),
                module_candidate("ablation: hand-written, forward calls the generated function",
                                 lambda b=via(base, gen_fn), a=ctor_args(f): b(*a), vs=ref),
            ]  # fmt: skip
    if control:  # A/A control: a second, separate instance of the reference, timed like any candidate
        for case in cases:
            ref = case.candidates[0]
            case.candidates.append(Candidate(f"{ref.name} (A/A control)", ref.build, vs=ref.name))
    return cases


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def step_fn(p: Prepared) -> Callable[[], Any]:
    fn, args, wrt, grad = p.fn, p.args, p.wrt, torch.autograd.grad

    def step():
        return grad(fn(*args).sum(), wrt)

    return step


def median_ci(xs: list[float]) -> tuple[float, float, float]:
    """Median and a distribution-free ~95% confidence interval for it (binomial order statistics)."""
    s = sorted(xs)
    n = len(s)
    med = statistics.median(s)
    if n < 6:
        return med, s[0], s[-1]
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half) - 1)
    hi = min(n - 1, math.ceil(n / 2 + half))
    return med, s[lo], s[hi]


def min_of_medians(xs: list[float], group: int = 8) -> float:
    """Split the rounds into consecutive groups, take each group's median, return the smallest:
    the quietest stretch of the run (interference from other processes only adds time)."""
    groups = [xs[i : i + group] for i in range(0, len(xs) - group + 1, group)] or [xs]
    return min(statistics.median(g) for g in groups)


def round_order(names: list[str], r: int) -> list[str]:
    """Round r's order: rotations of the candidates, every other cycle reversed (for two candidates:
    AB BA BA AB ...), so that each runs equally often in each position and after each other one."""
    k = len(names)
    rot = r % k
    order = names[rot:] + names[:rot]
    return order[::-1] if (r // k) % 2 else order


def time_interleaved(
    make_steps: Callable[[], dict[str, Callable[[], Any]]],
    rounds: int,
    block_s: float,
    threads: int,
    pairs: Sequence[tuple[str, str]] = (),
    max_rounds: int | None = None,
    max_s: float = 0.0,
    ci_halfwidth: float = 0.01,
    clock: Callable[[], float] = time.perf_counter,
    rebuild_every: int = 8,
) -> tuple[dict[str, list[float]], int]:
    """Per-call seconds of every step: one block of ``number`` calls per candidate per round, in
    the order of ``round_order``.

    Every ``rebuild_every`` rounds the candidates are built afresh by ``make_steps`` (new modules,
    new input and parameter tensors): a given set of tensor addresses can make one instance 1-2%
    faster or slower than an identical one (see ``--control``); rebuilding averages that out.
    After ``rounds`` rounds, rounds are added (up to ``max_rounds`` and ``max_s`` seconds) while
    the 95% CI of any paired ratio in ``pairs`` is wider than +-``ci_halfwidth``."""

    def new_timers() -> dict[str, Timer]:
        return {
            n: Timer(stmt="step()", globals={"step": s}, num_threads=threads, timer=clock)
            for n, s in make_steps().items()
        }

    timers = new_timers()
    # Warm up and calibrate: one common `number` for every candidate of the case.
    per_call = min(t.blocked_autorange(min_run_time=max(0.05, block_s)).median for t in timers.values())
    number = max(1, round(block_s / per_call))
    names = list(timers)
    times: dict[str, list[float]] = {n: [] for n in names}
    t0 = time.perf_counter()

    def wide() -> bool:
        for a, b in pairs:
            _, lo, hi = median_ci([x / y for x, y in zip(times[a], times[b])])
            if (hi - lo) / 2 > ci_halfwidth:
                return True
        return False

    def one_round() -> None:
        nonlocal timers
        r = len(times[names[0]])
        if r and r % rebuild_every == 0:
            timers = new_timers()
            for t in timers.values():  # warm the new instances
                t.timeit(max(1, number // 4))
        for n in round_order(names, r):
            times[n].append(timers[n].timeit(number).median)

    for _ in range(rounds):
        one_round()
    while max_rounds and len(times[names[0]]) < max_rounds and time.perf_counter() - t0 < max_s and wide():
        for _ in range(rebuild_every):
            one_round()
    return times, number


class OpTrace(TorchDispatchMode):
    """Records the ATen ops dispatched (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def aten_ops(p: Prepared) -> list[str]:
    with OpTrace() as trace:
        torch.autograd.grad(p.fn(*p.args).sum(), p.wrt)
    return trace.ops


def run_case(
    case: Case,
    rounds: int,
    block_s: float,
    threads: int,
    max_rounds: int | None,
    max_s: float,
    clock: Callable[[], float],
    ci_halfwidth: float = 0.01,
) -> dict[str, Any]:
    torch.manual_seed(0)
    state = case.state(case.batch, case.features)
    prepared = {c.name: c.build(state) for c in case.candidates}

    # Cross-check: every candidate computes the same output and gradients.
    ref_name = case.candidates[0].name
    ref_p = prepared[ref_name]
    ref_out = ref_p.fn(*ref_p.args)
    ref_grads = torch.autograd.grad(ref_out.sum(), ref_p.wrt)
    for name, p in prepared.items():
        out = p.fn(*p.args)
        grads = torch.autograd.grad(out.sum(), p.wrt)
        torch.testing.assert_close(
            out, ref_out, **(case.out_tol or {}), msg=lambda m: f"{case.layer} {name} output: {m}"
        )
        for g, rg in zip(grads, ref_grads):
            torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-4, msg=lambda m: f"{case.layer} {name} grad: {m}")
    del ref_out, ref_grads
    ops = {n: aten_ops(p) for n, p in prepared.items()}

    pairs = [(c.name, v) for c in case.candidates for v in ((c.vs,) if c.vs else ()) + c.also_vs]
    del prepared

    def make_steps() -> dict[str, Callable[[], Any]]:
        torch.manual_seed(0)
        st = case.state(case.batch, case.features)
        return {c.name: step_fn(c.build(st)) for c in case.candidates}

    times, number = time_interleaved(
        make_steps, rounds, block_s, threads, pairs, max_rounds, max_s, ci_halfwidth=ci_halfwidth, clock=clock
    )
    torch.manual_seed(0)
    state = case.state(case.batch, case.features)
    prepared = {c.name: c.build(state) for c in case.candidates}

    result: dict[str, Any] = {
        "layer": case.layer, "shape": case.shape, "number": number,
        "rounds": len(next(iter(times.values()))), "candidates": {},
    }  # fmt: skip
    for c in case.candidates:
        p = prepared[c.name]
        ts = times[c.name]
        entry: dict[str, Any] = {
            "median_us": statistics.median(ts) * 1e6,
            "min_us": min(ts) * 1e6,
            "times_us": [t * 1e6 for t in ts],
            "saved_bytes": saved_bytes(p.fn, *p.args),
            "saved_activation_bytes": saved_bytes(p.fn, *p.args, exclude=p.wrt),
            "aten_ops": ops[c.name],
            "vs": c.vs,
        }
        entry["ratios"] = {}
        for v in ((c.vs,) if c.vs else ()) + c.also_vs:  # every paired ratio, by reference name
            med, lo, hi = median_ci([a / b for a, b in zip(ts, times[v])])
            entry["ratios"][v] = {"ratio": med, "ci95": [lo, hi],
                                  "min_of_medians": min_of_medians(ts) / min_of_medians(times[v])}  # fmt: skip
        if c.vs is not None:
            ratios = [a / b for a, b in zip(ts, times[c.vs])]
            med, lo, hi = median_ci(ratios)
            entry.update(
                ratio=med,
                ratio_ci95=[lo, hi],
                ratio_min_of_medians=min_of_medians(ts) / min_of_medians(times[c.vs]),
                ratio_of_mins=min(ts) / min(times[c.vs]),
                ratio_of_medians=statistics.median(ts) / statistics.median(times[c.vs]),
                same_aten_ops_as_ref=ops[c.name] == ops[c.vs],
            )
        result["candidates"][c.name] = entry
    return result


# --------------------------------------------------------------------------------------------
# Tool wall times
# --------------------------------------------------------------------------------------------


def wall_times(cmd: list[str], repeats: int, fresh_out: bool = False) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds user+sys) of each of ``repeats`` runs of ``cmd`` as a subprocess.
    CPU time is much less sensitive than wall time to other processes competing for the cores."""
    out = []
    for _ in range(repeats):
        full = list(cmd)
        tmp = None
        if fresh_out:  # a fresh, empty output folder every time: a full generation
            tmp = tempfile.mkdtemp(prefix="layerdsl-bench-")
            full += ["-o", tmp]
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(full, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.append((wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)))
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def layerdsl_command() -> list[str]:
    """The console script installed next to this interpreter (not a pyenv shim, which adds ~60 ms)."""
    here = Path(sys.executable).parent / ("layerdsl.exe" if os.name == "nt" else "layerdsl")
    if here.exists():
        return [str(here)]
    found = shutil.which("layerdsl")
    return [found] if found else [sys.executable, "-m", "layerdsl"]


def tool_times(repeats: int) -> dict[str, Any]:
    gen_cmd = layerdsl_command() + ["gen", str(REPO / "specs")]
    return {
        "gen_cmd": " ".join(gen_cmd + ["-o", "<fresh tmpdir>"]),
        "n_specs": len(list((REPO / "specs").rglob("*.layer"))),
        "gen": wall_times(gen_cmd, repeats, fresh_out=True),
        "import_cli": wall_times([sys.executable, "-c", "import layerdsl.driver.cli"], repeats),
        "python_bare": wall_times([sys.executable, "-c", "pass"], repeats),
    }


def print_tools(tools: dict[str, Any], repeats: int) -> None:
    best = {k: (min(w for w, _ in tools[k]), min(c for _, c in tools[k])) for k in ("gen", "import_cli", "python_bare")}
    (gw, gc), (iw, ic), (bw, bc) = best["gen"], best["import_cli"], best["python_bare"]
    ok = "ok" if gw < TARGET_GEN_S else "OVER TARGET"
    print(f"`layerdsl gen specs -o <tmpdir>` ({tools['n_specs']} specs; subprocess, best of {repeats}): {gw * 1000:.0f} ms wall, "
          f"{gc * 1000:.0f} ms CPU (target < {TARGET_GEN_S * 1000:.0f} ms: {ok})")  # fmt: skip
    print(f"`python -c \"import layerdsl.driver.cli\"` (best of {repeats}): {iw * 1000:.0f} ms wall, {ic * 1000:.0f} ms CPU; "
          f"bare `python -c pass`: {bw * 1000:.0f} ms wall, so the import itself ~{(iw - bw) * 1000:.0f} ms")  # fmt: skip


# --------------------------------------------------------------------------------------------
# Diagnosis: the pieces of the generated forwards, in isolation
# --------------------------------------------------------------------------------------------


def diagnose(gen_dir: Path, threads: int, clock: Callable[[], float], quick: bool) -> list[tuple[str, float]]:
    """Nanoseconds per call of the Python pieces that the generated forwards add, each timed in
    isolation (a hot loop: in a real forward, between kernels, they cost up to ~2x more)."""
    ml = import_generated(gen_dir, "my_layer")
    rn = import_generated(gen_dir, "rms_norm")
    sw = import_generated(gen_dir, "swish")

    def plain(x, w):
        return None

    def kw(x, w, *, eps=1e-6):
        return None

    def checks(x, w):  # the generated checks, as in generated/swish.py
        if x.dim() < 1:
            raise ValueError(f"{x.dim()}")
        if x.shape[-1] != w.shape[0]:
            raise ValueError(f"{x.shape[-1]} {w.shape[0]}")
        return None

    def checks_try_int(x, n):  # a cheaper form: the same errors, against a Python int
        try:
            m = x.shape[-1]
        except IndexError:
            raise ValueError("0-dim") from None
        if m != n:
            raise ValueError(f"{m} {n}")
        return None

    class Empty(nn.Module):
        def forward(self, x):
            return x

    torch.manual_seed(0)
    mods = {"m_gen": ml.MyLayer(64, 64), "m_hand": HandMyLayer(64, 64), "r_gen": rn.RMSNorm(64),
            "r_hand": HandRMSNorm(64), "s_gen": sw.Swish(64), "s_hand": HandSwish(64)}  # fmt: skip
    for k in ("m", "r", "s"):
        mods[f"{k}_hand"].load_state_dict(mods[f"{k}_gen"].state_dict())
    g = {"x": torch.randn(32, 64, requires_grad=True), "w": torch.ones(64), "n": 64, "empty": Empty(),
         "plain": plain, "kw": kw, "checks": checks, "checks_try_int": checks_try_int, "eps": 1e-6} | mods  # fmt: skip
    pieces = [
        ("x.dim() < 1", "x.dim() < 1"),
        ("x.shape[-1] != w.shape[0]", "x.shape[-1] != w.shape[0]"),
        ("x.shape[-1] != n  (n a Python int)", "x.shape[-1] != n"),
        ("x.size(-1) != w.size(0)", "x.size(-1) != w.size(0)"),
        ("both generated checks, in a function", "checks(x, w)"),
        ("try: x.shape[-1] / except IndexError, != int, in a function", "checks_try_int(x, n)"),
        ("empty function call, 2 positional args", "plain(x, w)"),
        ("empty function call, 2 positional args + eps= keyword", "kw(x, w, eps=eps)"),
        ("module.weight (nn.Module.__getattr__ of a parameter)", "s_hand.beta"),
        ("module.eps (plain attribute)", "r_hand.eps"),
        ("nn.Module.__call__ of an empty forward", "empty(x)"),
        ("MyLayer forward, hand-written", "m_hand(x)"),
        ("MyLayer forward, generated", "m_gen(x)"),
        ("RMSNorm forward, hand-written", "r_hand(x)"),
        ("RMSNorm forward, generated", "r_gen(x)"),
        ("Swish forward, hand-written", "s_hand(x)"),
        ("Swish forward, generated", "s_gen(x)"),
    ]
    timers = {name: Timer(stmt=stmt, globals=g, num_threads=threads, timer=clock) for name, stmt in pieces}
    numbers = {n: max(1, round(0.005 / t.blocked_autorange(min_run_time=0.05).median)) for n, t in timers.items()}
    results: dict[str, list[float]] = {name: [] for name in timers}
    names = list(timers)
    for r in range(16 if quick else 64):
        for name in round_order(names, r):
            results[name].append(timers[name].timeit(numbers[name]).median)
    out = [(name, statistics.median(v) * 1e9) for name, v in results.items()]
    for layer in ("MyLayer", "RMSNorm", "Swish"):
        gen, hand = results[f"{layer} forward, generated"], results[f"{layer} forward, hand-written"]
        out.append(
            (
                f"{layer} forward: generated - hand-written (paired)",
                statistics.median(a - b for a, b in zip(gen, hand)) * 1e9,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt_bytes(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


def fmt_us(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 10_000 else f"{us:.1f} µs"


def git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_default_threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "git": git_state(),
    }


def print_table(results: list[dict[str, Any]]) -> None:
    head = ["layer", "shape", "candidate", "median", "min", "saved (all)", "saved (activations)", "ATen ops",
            "rounds", "ratio (paired median) [95% CI]", "ratio (min of medians)"]  # fmt: skip
    rows = []
    for res in results:
        for name, e in res["candidates"].items():
            n_ops = len(e["aten_ops"])
            if e["vs"] is None:
                ratio, mom, ops = "(reference)", "", f"{n_ops}"
            else:
                lo, hi = e["ratio_ci95"]
                if lo > TARGET_RATIO:
                    flag = f" > {TARGET_RATIO}"
                elif e["ratio"] > TARGET_RATIO:
                    flag = f" > {TARGET_RATIO}? (CI too wide to tell)"
                else:
                    flag = ""
                ratio = f"{e['ratio']:.3f} [{lo:.3f}, {hi:.3f}]{flag}"
                mom = f"{e['ratio_min_of_medians']:.3f}"
                ops = f"{n_ops}, {'same' if e['same_aten_ops_as_ref'] else 'DIFFERENT'}"
            rows.append([res["layer"], res["shape"], name, fmt_us(e["median_us"]), fmt_us(e["min_us"]),
                         fmt_bytes(e["saved_bytes"]), fmt_bytes(e["saved_activation_bytes"]), ops,
                         str(res["rounds"]), ratio, mom])  # fmt: skip
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(head))
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in rows:
        print(line(r))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer and shorter rounds (a smoke run, noisier)")
    ap.add_argument("--json", metavar="PATH", help="write every measurement to PATH as JSON")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads while timing; 0 = torch's default (%s here). Default 1: on a "
                         "shared 2-core machine a multi-threaded matmul stalls for milliseconds whenever another "
                         "process holds a core" % torch.get_num_threads())  # fmt: skip
    ap.add_argument("--rounds", type=int, help="interleaved rounds per case, at least (default 40, --quick 10)")
    ap.add_argument("--max-rounds", type=int,
                    help="add rounds up to this many while a ratio's 95%% CI is wider than +-CI (--ci) "
                         "(default 6 x --rounds; --quick: no extra rounds)")  # fmt: skip
    ap.add_argument(
        "--ci",
        type=float,
        default=0.005,
        help="target half-width of the ratios' 95%% CI for adding rounds (default %(default)s)",
    )
    ap.add_argument(
        "--max-case-s",
        type=float,
        default=45.0,
        help="stop adding rounds to a case after this many seconds (default %(default)s)",
    )
    ap.add_argument("--block-ms", type=float, help="target time of one timed block (default 20, --quick 10)")
    ap.add_argument("--generated", type=Path, default=REPO / "generated",
                    help="the generated package to benchmark (default: %(default)s)")  # fmt: skip
    ap.add_argument("--only", metavar="LAYER", action="append", help="only these layers (repeatable)")
    ap.add_argument("--shape", metavar="BxF", action="append",
                    help="only these batch x features shapes (repeatable; default 32x64 and 4096x1024)")  # fmt: skip
    ap.add_argument("--no-tools", action="store_true", help="skip the layerdsl gen / import wall times")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu (default): CPU time of the timing thread (time.thread_time; time.process_time "
                         "with --threads > 1), blind to time spent preempted by other processes on a shared "
                         "machine; wall: time.perf_counter")  # fmt: skip
    ap.add_argument("--control", action="store_true",
                    help="add an A/A control: the reference timed against a second instance of itself")  # fmt: skip
    ap.add_argument("--diagnose", action="store_true",
                    help="add ablation candidates at the small shape (hand-written forward calling an unchecked "
                         "function / the generated function) and time the Python pieces in isolation")  # fmt: skip
    args = ap.parse_args(argv)

    rounds = args.rounds or (10 if args.quick else 40)
    max_rounds = args.max_rounds if args.max_rounds is not None else (0 if args.quick else 6 * rounds)
    block_s = (args.block_ms or (10 if args.quick else 20)) / 1000
    if args.threads <= 0:
        args.threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if args.clock == "wall":
        clock = time.perf_counter
    else:
        clock = time.thread_time if args.threads == 1 else time.process_time
    info = machine() | {"threads": args.threads, "clock": f"{args.clock} ({clock.__name__})", "rounds": rounds, "block_ms": block_s * 1000,
                        "argv": sys.argv[1:], "generated": str(args.generated)}  # fmt: skip
    print(f"# {info['cpu']}, {info['logical_cpus']} logical CPUs; torch {info['torch']}, Python {info['python']}; "
          f"{args.threads} torch thread(s); {rounds}+ interleaved rounds of ~{block_s * 1000:g} ms blocks; "
          f"clock: {info['clock']}")  # fmt: skip
    load = info["load_average"]
    print(f"# git {info['git']['commit']}{' (dirty tree)' if info['git']['dirty'] else ''}; "
          f"load average at start {load[0]:.2f}" if load else "")  # fmt: skip
    print("# forward + backward (loss = out.sum(); grads w.r.t. input and parameters), float32 CPU")
    print("# ratio = median over rounds of the paired ratio candidate / reference (target <= 1.02)\n", flush=True)

    shapes = (
        [tuple(int(v) for v in sh.lower().split("x")) for sh in args.shape] if args.shape else [(32, 64), (4096, 1024)]
    )
    cases = make_cases(args.generated, shapes, control=args.control, ablations=args.diagnose)
    if args.only:
        cases = [c for c in cases if c.layer in args.only]
    results = []
    for case in cases:
        res = run_case(case, rounds, block_s, args.threads, max_rounds, args.max_case_s, clock, args.ci)
        results.append(res)
        print(
            f"#   {case.layer} {case.shape}: {res['rounds']} rounds of {res['number']} calls",
            file=sys.stderr,
            flush=True,
        )
    print_table(results)

    tools = None
    if not args.no_tools:
        tools = tool_times(3)
        print()
        print_tools(tools, 3)

    diag = None
    if args.diagnose:
        diag = diagnose(args.generated, args.threads, clock, args.quick)
        print("\nPython pieces of the forwards, in isolation (hot loop), 32x64 input, median ns per call:")
        for name, ns in diag:
            print(f"  {ns:9.0f} ns  {name}")

    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "cases": results, "tools": tools,
                                               "diagnose": diag}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
