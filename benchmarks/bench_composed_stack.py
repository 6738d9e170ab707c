"""Time of torch.nn's TransformerEncoder as a composed `@function` (its Function runs its layers' and its
norm's, autodiff/sub_calls.py) against the plain generated module, at small shapes (d_model 8, 2 heads,
feed-forward 16, 2 layers and a LayerNorm, L=6, N=2, float32, one thread, dropout 0): forward and backward,
and forward under no_grad. Each figure is µs per call over `--number` calls, `--repeat` times, the two
modules interleaved; min, median and max are printed (the spread is the machine's load).

    python benchmarks/bench_composed_stack.py [--repeat 7] [--number 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import timeit
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_segment_saving import generated  # noqa: E402  (torch_nn, `@function` added or not)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        modules = {}
        for name, function in (("composed", True), ("plain", False)):
            ns = generated(Path(tmp), function).torch_nn.transformer
            torch.manual_seed(0)
            layer = ns.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0)
            modules[name] = ns.TransformerEncoder(layer, 2, ns.LayerNorm(8))
        modules["plain"].load_state_dict(modules["composed"].state_dict())
        x = torch.randn(6, 2, 8, requires_grad=True)

        def both(m: torch.nn.Module) -> None:
            m(x).sum().backward()

        def forward(m: torch.nn.Module) -> None:
            with torch.no_grad():
                m(x)

        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeat):
            for label, run in (("forward+backward", both), ("forward, no_grad", forward)):
                for name, m in modules.items():
                    seconds = timeit.timeit(lambda: run(m), number=args.number)
                    times.setdefault((label, name), []).append(seconds / args.number * 1e6)
    for (label, name), t in times.items():
        print(f"{label:17s} {name:9s} min {min(t):7.0f} µs  median {statistics.median(t):7.0f}  max {max(t):7.0f}")


if __name__ == "__main__":
    main()
