#!/usr/bin/env python
"""Generated torch_nn layers against torch.nn's own modules: forward + backward time, same weights.

Each pair is built with the same arguments, the generated one loads torch's state_dict, and one step is
``grad(out.sum(), [input, *parameters])``. The two run in alternating rounds (one timed block each per
round, the order flipping every round); the ratio printed is the median of the per-round ratios
generated / torch, with the min and max over rounds. One thread, float32, CPU.

    python benchmarks/bench_torch_nn.py            # every case, 15 rounds
    python benchmarks/bench_torch_nn.py --rounds 5 --only MultiheadAttention
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generated.torch_nn import attention, rnn, transformer  # noqa: E402

L, B, E, H = 32, 8, 64, 4


def cases():
    """(name, generated module, torch module, inputs)."""
    x = torch.randn(L, B, E, requires_grad=True)
    yield "MultiheadAttention", attention.MultiheadAttention(E, H), torch.nn.MultiheadAttention(E, H), (x, x, x)
    yield (
        "TransformerEncoderLayer",
        transformer.TransformerEncoderLayer(E, H, 2 * E, dropout=0.0),
        torch.nn.TransformerEncoderLayer(E, H, 2 * E, dropout=0.0),
        (x,),
    )
    seq = torch.randn(50, B, 32, requires_grad=True)
    for name in ("RNN", "GRU", "LSTM"):
        yield name, getattr(rnn, name)(32, 64, 2), getattr(torch.nn, name)(32, 64, 2), (seq,)


def step(module, inputs):
    out = module(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    torch.autograd.grad(out.sum(), [i for i in inputs if i.requires_grad] + list(module.parameters()))


def ratio(ours, theirs, inputs, rounds: int) -> list[float]:
    timers = [Timer("step(m, i)", globals={"step": step, "m": m, "i": inputs}) for m in (ours, theirs)]
    number = max(1, int(0.05 / max(timers[1].timeit(1).median, 1e-6)))
    out = []
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        times = {k: timers[k].timeit(number).median for k in order}
        out.append(times[0] / times[1])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", action="append", help="a case name (repeatable)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for name, ours, theirs, inputs in cases():
        if args.only and name not in args.only:
            continue
        ours.load_state_dict(theirs.state_dict())
        step(ours, inputs), step(theirs, inputs)  # warm up
        r = ratio(ours, theirs, inputs, args.rounds)
        print(f"{name:24s} generated / torch {statistics.median(r):.2f} [{min(r):.2f}, {max(r):.2f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
