"""Dropout under `@function(save = "inputs")`: (a) the masks saved as bool (stacked per step in a loop)
against (b) the random state saved and the draws replayed when backward runs forward again (what the
generated code does for a forward with a loop). A loop spec (`h = dropout(tanh(h * a + x[:, t]), 0.5)`, T=8)
and a straight-line one (`dropout(tanh(x * a), 0.5)`), each written as two hand Functions that differ only
in how the mask reaches backward, plus the generated loop layer; B×d = 32×64 and 4096×1024, float32, CPU,
one thread. Prints the bytes kept for backward besides the input and parameter, and forward + backward
times: median and quartiles over interleaved rounds.

    PYTHONPATH=$PWD python benchmarks/bench_random_replay.py [--rounds 41]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import compile_spec  # noqa: E402

P = 0.5
T = 8
LOOP = """\
@function(save = "inputs")
layer Scan(d: int) {
    param a: [d] = uniform(-1.0, 1.0)
    example(d = 3)
    forward(x: [B, T, d]) -> [B, d] {
        h = new_zeros(x, [B, d])
        for t in range(T) {
            h = dropout(tanh(h * a + x[:, t]), 0.5)
        }
        return h
    }
}
"""


def _scan(x: torch.Tensor, a: torch.Tensor, masks: Callable[[int, torch.Tensor], torch.Tensor]):
    """The loop forward: each step's pre-dropout value and mask, and the output."""
    h = x.new_zeros(x.shape[0], x.shape[2])
    hs, ys, keeps = [], [], []
    for t in range(x.shape[1]):
        y = torch.tanh(h * a + x[:, t])
        keep = masks(t, y)
        hs.append(h)
        ys.append(y)
        keeps.append(keep)
        h = torch.where(keep, y / (1 - P), 0)
    return h, hs, ys, keeps


def _scan_backward(g, a, hs, ys, keeps):
    grad_a = torch.zeros_like(a)
    grads_x = []
    for t in reversed(range(len(ys))):
        g = torch.ops.aten.tanh_backward(torch.where(keeps[t], g / (1 - P), 0), ys[t])
        grad_a = grad_a + (g * hs[t]).sum(0)
        grads_x.append(g)
        g = g * a
    return torch.stack(grads_x[::-1], 1), grad_a


def _draw(t: int, y: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(y, dtype=torch.bool).bernoulli_(1 - P)


class LoopMasks(torch.autograd.Function):
    """(a): the masks stacked per step, saved."""

    @staticmethod
    def forward(x, a):
        h, _, _, keeps = _scan(x, a, _draw)
        return h, torch.stack(keeps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(*inputs, output[1])

    @staticmethod
    def backward(ctx, g, _):
        x, a, keeps = ctx.saved_tensors
        _, hs, ys, _ = _scan(x, a, lambda t, y: keeps[t])
        return _scan_backward(g, a, hs, ys, keeps)


class LoopReplay(torch.autograd.Function):
    """(b): the random state saved, the draws replayed under fork_rng."""

    @staticmethod
    def forward(x, a, state):
        return _scan(x, a, _draw)[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.state = inputs[2]
        ctx.save_for_backward(*inputs[:2])

    @staticmethod
    def backward(ctx, g):
        x, a = ctx.saved_tensors
        with torch.random.fork_rng([]):
            torch.set_rng_state(ctx.state)
            _, hs, ys, keeps = _scan(x, a, _draw)
        return (*_scan_backward(g, a, hs, ys, keeps), None)


class LineMasks(torch.autograd.Function):
    """(a), straight line: `dropout(tanh(x * a))`, the mask saved."""

    @staticmethod
    def forward(x, a):
        keep = _draw(0, x)
        return torch.where(keep, torch.tanh(x * a) / (1 - P), 0), keep

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(*inputs, output[1])

    @staticmethod
    def backward(ctx, g, _):
        x, a, keep = ctx.saved_tensors
        return _line_backward(g, x, a, keep)


class LineReplay(torch.autograd.Function):
    """(b), straight line: the state saved, the mask drawn again."""

    @staticmethod
    def forward(x, a, state):
        return torch.where(_draw(0, x), torch.tanh(x * a) / (1 - P), 0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.state = inputs[2]
        ctx.save_for_backward(*inputs[:2])

    @staticmethod
    def backward(ctx, g):
        x, a = ctx.saved_tensors
        with torch.random.fork_rng([]):
            torch.set_rng_state(ctx.state)
            keep = _draw(0, x)
        return (*_line_backward(g, x, a, keep), None)


def _line_backward(g, x, a, keep):
    g = torch.ops.aten.tanh_backward(torch.where(keep, g / (1 - P), 0), torch.tanh(x * a))
    return g * a, (g * x).sum_to_size(a.shape)


def _kept_bytes(run: Callable[[], torch.Tensor], given: list[torch.Tensor]) -> int:
    """Bytes autograd keeps for backward besides `given`'s storages, plus a random state kept on ctx."""
    own = {t.untyped_storage().data_ptr() for t in given}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in own:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    state = getattr(out.grad_fn, "state", getattr(out.grad_fn, "rng_state", None))
    state = state[1] if isinstance(state, tuple) else state
    return sum(kept.values()) + (state.numel() if state is not None else 0)


def _candidates(layer: torch.nn.Module, x_loop: torch.Tensor, x_line: torch.Tensor):
    a = layer.a
    return {
        "loop (a) masks": (lambda: LoopMasks.apply(x_loop, a)[0], x_loop),
        "loop (b) replay": (lambda: LoopReplay.apply(x_loop, a, torch.get_rng_state()), x_loop),
        "loop generated": (lambda: layer(x_loop), x_loop),
        "line (a) masks": (lambda: LineMasks.apply(x_line, a)[0], x_line),
        "line (b) replay": (lambda: LineReplay.apply(x_line, a, torch.get_rng_state()), x_line),
    }


def _step(run: Callable[[], torch.Tensor], x: torch.Tensor, a: torch.Tensor) -> tuple:
    out = run()
    return torch.autograd.grad(out, [x, a], torch.ones_like(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for B, d in ((32, 64), (4096, 1024)):
        torch.manual_seed(0)
        layer = compile_spec(LOOP, "bench_replay")["Scan"](d)
        x_loop = torch.randn(B, T, d, requires_grad=True)
        x_line = torch.randn(B, d, requires_grad=True)
        cands = _candidates(layer, x_loop, x_line)
        for kind in ("loop", "line"):  # every design gives the same gradients under one seed
            ref = None
            for label, (run, x) in cands.items():
                if label.startswith(kind):
                    torch.manual_seed(1)
                    got = _step(run, x, layer.a)
                    ref = got if ref is None else ref
                    for g, r in zip(got, ref, strict=True):
                        torch.testing.assert_close(g, r)
        rounds = args.rounds if B == 32 else max(5, args.rounds // 4)
        times: dict[str, list[float]] = {label: [] for label in cands}
        for _ in range(rounds):
            for label, (run, x) in cands.items():
                start = time.perf_counter()
                _step(run, x, layer.a)
                times[label].append(time.perf_counter() - start)
        print(f"B×d = {B}×{d} (loop: T = {T}), {rounds} rounds")
        for label, (run, x) in cands.items():
            q1, q2, q3 = statistics.quantiles(times[label], n=4)
            kept = _kept_bytes(run, [x, layer.a])
            print(f"  {label:16} kept {kept:>11,} B   {q2 * 1e3:9.3f} ms  [{q1 * 1e3:.3f}, {q3 * 1e3:.3f}]")


if __name__ == "__main__":
    main()
