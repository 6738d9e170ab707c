"""What a derived loop holding a loop (`autodiff.nest`) saves for backward, against plain autograd: an LSTM of
torch.nn's form (its layers a loop over a family whose first member differs, each holding the loop over
time; biased, one direction, no projection), its layer count an argument, at T=32, N=8, input 64, hidden 64,
2 layers, in float32. Saved bytes are the storages `saved_tensors_hooks` sees, each counted once, the
layer's own parameters left out (the module holds them anyway). Bytes are deterministic: one run is the
figure.

    PYTHONPATH=$PWD python benchmarks/bench_nest_saving.py
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

import torch

from layerdsl.testing.layer_checks import generate_package

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import saved_bytes  # noqa: E402
from tests.test_function_nest_steps import LSTM_LAYERS  # noqa: E402

# the spec of tests/test_function_nest_steps.py, without its `@function` (added or not by `build`)
LSTM = LSTM_LAYERS.replace("@function\n", "", 1)


def build(root: Path, function: bool):
    folder = root / ("function" if function else "plain")
    folder.mkdir(parents=True)
    (folder / "lstm_layers.layer").write_text(("@function\n" if function else "") + LSTM.lstrip())
    package = f"nest_saving_{'function' if function else 'plain'}"
    generate_package([str(folder)], root / "packages", package)
    return importlib.import_module(f"{package}.lstm_layers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours, plain = (build(Path(tmp), f).LstmLayers for f in (True, False))
        torch.manual_seed(0)
        a = ours(args.size, args.size, args.layers)
        b = plain(args.size, args.size, args.layers)
        b.load_state_dict(a.state_dict())
        x = torch.randn(args.steps, args.batch, args.size, requires_grad=True)
        torch.testing.assert_close(a(x), b(x))
        torch_lstm = torch.nn.LSTM(args.size, args.size, args.layers)
        torch_lstm.load_state_dict(a.state_dict())
        figures = {
            "derived @function": saved_bytes(lambda: a(x), a),
            "plain autograd (same spec)": saved_bytes(lambda: b(x), b),
            "torch.nn.LSTM (CPU)": saved_bytes(lambda: torch_lstm(x), torch_lstm),
        }
    print(f"LSTM, T={args.steps}, N={args.batch}, input=hidden={args.size}, {args.layers} layers, float32:")
    for name, size in figures.items():
        print(f"  {name:28} {size / 1024:9.1f} KiB")


if __name__ == "__main__":
    main()
