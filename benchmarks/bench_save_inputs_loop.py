"""`@function(save = "inputs")` against the default `@function` on a forward with a run-time loop (the decayed
scan of tests/test_function_save_inputs_loops.py, T=50, B=32, d=64, float32, CPU, one thread): the bytes
autograd keeps (the layer's parameter left out) and the forward and backward times. The two run alternately;
each round's ratio (save = "inputs" / default) is taken, and the median ratio is printed with its quartiles.

    PYTHONPATH=$PWD python benchmarks/bench_save_inputs_loop.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import compile_spec, saved_bytes  # noqa: E402
from tests.test_function_save_inputs_loops import SCAN  # noqa: E402


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, q2, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    T, B, d = 50, 32, 64
    texts = {"inputs": SCAN, "default": SCAN.replace('@function(save = "inputs")', "@function")}
    layers = {label: compile_spec(text, f"bench_{label}")["Scan"](d) for label, text in texts.items()}
    layers["default"].load_state_dict(layers["inputs"].state_dict())
    x = torch.randn(B, T, d, requires_grad=True)
    g = torch.randn(B, T, d)
    times: dict[str, tuple[list[float], list[float]]] = {label: ([], []) for label in layers}
    for _ in range(10):
        for layer in layers.values():
            layer(x).backward(g)
    for _ in range(args.rounds):
        for label, layer in layers.items():
            t0 = time.perf_counter()
            y = layer(x)
            t1 = time.perf_counter()
            y.backward(g)
            t2 = time.perf_counter()
            times[label][0].append(t1 - t0)
            times[label][1].append(t2 - t1)
    print(f"scan T={T}, B={B}, d={d}, float32, {args.rounds} alternating rounds")
    for label, layer in layers.items():
        kept = saved_bytes(lambda layer=layer: layer(x), layer)
        fwd, bwd = (statistics.median(t) * 1e3 for t in times[label])
        print(f"  {label:8s} keeps {kept:9,d} B   forward {fwd:.3f} ms   backward {bwd:.3f} ms")
    for k, what in enumerate(["forward", "backward"]):
        ratios = [a / b for a, b in zip(times["inputs"][k], times["default"][k])]
        q1, q2, q3 = quartiles(ratios)
        print(f"  {what} time, save = inputs / default: {q2:.2f} [quartiles {q1:.2f}, {q3:.2f}]")


if __name__ == "__main__":
    main()
