#!/usr/bin/env python
"""Derived ``@function`` backwards vs the plain module and vs a hand-written Function (issue 15, item 5).

Swish, RMSNorm and the elementwise chain ``tanh(a*x + b) * sigmoid(c*x)`` at 32x64, 512x512 and
4096x1024, float32 CPU, 1 torch thread. One step is ``y = module(x)`` and
``torch.autograd.grad(y, [x, *params], g)`` with a fixed ``g``. Candidates:

- **module**: the generated plain module (for the chain, which has none, its generated functional form);
- **hand**: the hand-written ``autograd.Function`` of ``bench_functions.py`` (what an expert writes);
- **gen**: the generated ``@function`` module.

Timing: many short interleaved rounds (one block of about ``--block-ms`` of each candidate per round, the
order rotating every round), the clock the CPU time of this thread (time spent preempted by the other
processes of a shared machine does not count, but cache and memory-bandwidth contention does). Each
ratio is taken per round (paired) and printed as median [min, max] over the rounds: the spread is the
machine's noise as much as the candidates' difference, so read a median within the spread of 1.0 as a tie.

Also printed: the ATen ops each candidate dispatches in forward and backward (a ``TorchDispatchMode``
counts them), which at 32x64 is where the time goes, and the bytes each saves for backward.

    python benchmarks/bench_derived_backward.py                    # all three shapes (~3 minutes)
    python benchmarks/bench_derived_backward.py --shape 32x64 --rounds 200
    python benchmarks/bench_derived_backward.py --only Swish --generated /tmp/other/generated
    python benchmarks/bench_derived_backward.py --baseline /tmp/before/generated_before  # + "base": gen / base
    python benchmarks/bench_derived_backward.py --reductions   # only RMSNorm's rsqrt(mean(x*x) + eps), spelt 5 ways

``--baseline DIR`` adds the generated ``@function`` module of another generated package (e.g. the
``generated/`` of an older commit, copied to a folder of another name) as the candidate "base", timed in
the same rounds, and the ratio gen / base.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_functions as bf  # noqa: E402  (the hand-written Functions)
import bench_modules as bm  # noqa: E402  (import_generated)

CANDIDATES = ("module", "hand", "gen")
RATIOS = (("gen", "module"), ("gen", "hand"), ("hand", "module"))


class OpCounter(TorchDispatchMode):
    """The names of the ATen ops dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def builders(gen_dir: Path, baseline: Path | None) -> dict[str, dict[str, Callable[[int], nn.Module]]]:
    """Per layer, per candidate: a module of `f` features."""
    swish, swish_fn = bm.import_generated(gen_dir, "swish"), bm.import_generated(gen_dir, "swish_function")
    rms, rms_fn = bm.import_generated(gen_dir, "rms_norm"), bm.import_generated(gen_dir, "rms_norm_function")
    chain = bm.import_generated(gen_dir, "fused_chain")

    class ChainModule(bf.ScalarABC):
        fn = staticmethod(chain.fused_chain)

    found = {
        "Swish": {"module": swish.Swish, "hand": bf.HandSwishFn, "gen": swish_fn.SwishFunctional},
        "RMSNorm": {"module": rms.RMSNorm, "hand": bf.HandRMSNormFn, "gen": rms_fn.RMSNormFunctional},
        "FusedChain": {
            "module": lambda f: ChainModule(),
            "hand": lambda f: bf.HandFusedChainFn(),
            "gen": lambda f: chain.FusedChain(),
        },
    }
    if baseline is not None:
        base = builders(baseline, None)
        for layer, makes in found.items():
            makes["base"] = base[layer]["gen"]
    return found


def prepared(make: Callable[[int], nn.Module], b: int, f: int, seed: int) -> Callable[[], Any]:
    """One step of a fresh module on fresh tensors (the same values for every candidate of a seed)."""
    torch.manual_seed(seed)
    module = make(f)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(b, f, requires_grad=True)
    g = torch.randn(b, f)
    wrt = [x, *module.parameters()]
    return lambda: torch.autograd.grad(module(x), wrt, g)


def check_same(steps: dict[str, Callable[[], Any]]) -> None:
    """Every candidate's gradients agree with the module's."""
    ref = steps["module"]()
    for name, step in steps.items():
        for r, o in zip(ref, step(), strict=True):
            torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def op_counts(step: Callable[[], Any]) -> tuple[int, list[str]]:
    with OpCounter() as counter:
        step()
    return len(counter.ops), counter.ops


def saved_bytes(step: Callable[[], Any]) -> int:
    """Bytes packed for backward during one step (each tensor once)."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def block_size(step: Callable[[], Any], block_ms: float) -> int:
    for _ in range(3):
        step()
    start = time.thread_time()
    n = 0
    while time.thread_time() - start < 0.02:
        step()
        n += 1
    per = (time.thread_time() - start) / n
    return max(1, round(block_ms / 1e3 / per))


def interleaved(steps: dict[str, Callable[[], Any]], rounds: int, block_ms: float) -> dict[str, list[float]]:
    """Seconds per step of each candidate, one block per round, the order rotating every round."""
    names = list(steps)
    number = min(block_size(steps[n], block_ms) for n in names)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order if r % 2 == 0 else reversed(order):
            step = steps[name]
            start = time.thread_time()
            for _ in range(number):
                step()
            times[name].append((time.thread_time() - start) / number)
    return times


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def run_case(layer: str, makes: dict[str, Callable[[int], nn.Module]], b: int, f: int, args: Any) -> None:
    names = list(makes)
    steps = {n: prepared(makes[n], b, f, seed=0) for n in names}
    check_same(steps)
    print(f"\n## {layer} {b}x{f}")
    for name, step in steps.items():
        count, ops = op_counts(step)
        print(f"  {name:6} {count:2} ATen ops, saves {saved_bytes(step) / 1024:9.1f} KiB: {' '.join(ops)}")
    rounds = args.rounds if b * f <= 1 << 16 else max(args.rounds // 3, 10)
    times: dict[str, list[float]] = {n: [] for n in names}
    for seed in range(args.refresh):  # fresh tensors now and then: one set of addresses can be lucky
        steps = {n: prepared(makes[n], b, f, seed=seed) for n in names}
        for n, ts in interleaved(steps, rounds // args.refresh, args.block_ms).items():
            times[n] += ts
    per_step = ", ".join(f"{n} {statistics.median(times[n]) * 1e6:.1f} us" for n in names)
    print(f"  median step: {per_step} ({len(times['gen'])} rounds)")
    for num, den in RATIOS + ((("gen", "base"),) if "base" in names else ()):
        ratios = [a / b for a, b in zip(times[num], times[den], strict=True)]
        print(f"  {num:4} / {den:6}: {spread(ratios)}")


EPS = 1e-6
REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {  # RMSNorm's forward reduction, each way the issue names
    "mean(x * x)": lambda x: (torch.mean(x * x, dim=-1, keepdim=True) + EPS).rsqrt_(),
    "x.pow(2).mean": lambda x: (x.pow(2).mean(-1, keepdim=True) + EPS).rsqrt_(),
    "vector_norm.pow_(2).div_(n)": lambda x: (
        torch.linalg.vector_norm(x, dim=-1, keepdim=True).pow_(2).div_(x.shape[-1]) + EPS
    ).rsqrt_(),
    "vector_norm ** 2 / n": lambda x: (
        torch.linalg.vector_norm(x, dim=-1, keepdim=True) ** 2 / x.shape[-1] + EPS
    ).rsqrt_(),
    "vecdot(x, x)": lambda x: (torch.linalg.vecdot(x, x, dim=-1).unsqueeze(-1).div_(x.shape[-1]) + EPS).rsqrt_(),
}


def reductions(shapes: list[tuple[int, ...]], rounds: int, block_ms: float) -> None:
    """Each spelling of the reduction / the first (what the Function's forward wrote before), per round."""
    print("\n## RMSNorm's forward reduction rsqrt(mean(x*x, -1) + eps): time / mean(x * x)'s")
    for b, f in shapes:
        x = torch.randn(b, f)
        for name, fn in REDUCTIONS.items():
            torch.testing.assert_close(fn(x), REDUCTIONS["mean(x * x)"](x.double()).float(), msg=name)
        steps = {name: (lambda fn=fn: fn(x)) for name, fn in REDUCTIONS.items()}
        times = interleaved(steps, rounds if b * f <= 1 << 16 else max(rounds // 3, 10), block_ms)
        first = times["mean(x * x)"]
        cells = [f"{n} {spread([a / b for a, b in zip(t, first, strict=True)])}" for n, t in times.items()]
        print(f"  {b}x{f}: " + "; ".join(cells[1:]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", metavar="BxF", action="append", help="default 32x64, 512x512, 4096x1024")
    ap.add_argument("--only", metavar="LAYER", action="append", help="Swish, RMSNorm or FusedChain (repeatable)")
    ap.add_argument("--rounds", type=int, default=90, help="interleaved rounds at small shapes (a third at large)")
    ap.add_argument("--refresh", type=int, default=3, help="fresh tensors this many times per case")
    ap.add_argument("--block-ms", type=float, default=3.0, help="target CPU time of one block")
    ap.add_argument("--generated", type=Path, default=bm.REPO / "generated")
    ap.add_argument("--reductions", action="store_true", help="only RMSNorm's forward reduction, 5 spellings")
    ap.add_argument("--baseline", type=Path, help="another generated package: its @function modules as 'base'")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shape or ["32x64", "512x512", "4096x1024"]]
    print("float32 CPU, 1 thread, CPU-time clock; the machine is shared with other loads: read the spread.")
    if args.reductions:
        reductions(shapes, args.rounds, args.block_ms)
        return 0
    for layer, makes in builders(args.generated, args.baseline).items():
        if args.only and layer not in args.only:
            continue
        for b, f in shapes:
            run_case(layer, makes, b, f, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
