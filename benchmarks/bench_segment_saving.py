"""What the segmented Functions of torch.nn's attention layers save for backward, against plain autograd.

MultiheadAttention, TransformerEncoderLayer and TransformerDecoderLayer (specs/torch_nn; the decoder attends
over a memory of the same shape as its input) are generated twice, with `@function` added
and as written, and each is run once in training at L=256, N=16, E=256 (dropout 0). Saved bytes are the
storages `saved_tensors_hooks` sees, each counted once, the layer's own parameters left out (the module holds
them anyway). Bytes are deterministic: one run is the figure. Also prints the generated Function's lines.

    python benchmarks/bench_segment_saving.py
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

import torch

from layerdsl.testing.layer_checks import generate_package

SPECS = Path(__file__).resolve().parent.parent / "specs" / "torch_nn"
LAYERS = ("MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer")


def generated(root: Path, function: bool) -> object:
    """The torch_nn package, `@function` added to the three layers or not."""
    folder = root / ("function" if function else "plain") / "torch_nn"
    folder.mkdir(parents=True)
    for spec in SPECS.glob("*.layer"):
        name, text = spec.name, spec.read_text()
        for layer in LAYERS if function else ():
            text = text.replace(f"\nlayer {layer}(", f"\n@function\nlayer {layer}(")
        (folder / name).write_text(text)
    package = f"segment_saving_{'function' if function else 'plain'}"
    generate_package([str(folder.parent)], root / "packages", package)
    return importlib.import_module(package)


def saved_mib(run, held: torch.nn.Module) -> float:
    own = {p.untyped_storage().data_ptr() for p in held.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in own:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(kept.values()) / 2**20


def function_lines(module) -> dict[str, int]:
    """The lines of each `<Layer>Function` class in the generated module's source."""
    source = Path(module.__file__).read_text()
    lines = {}
    for layer in LAYERS:
        start = source.find(f"class {layer}Function(")
        if start >= 0:
            end = source.find("\nclass ", start + 1)
            lines[layer] = source[start : end if end >= 0 else len(source)].count("\n")
    return lines


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    length, batch, embed = 256, 16, 256
    with tempfile.TemporaryDirectory() as tmp:
        function, plain = generated(Path(tmp), True), generated(Path(tmp), False)
        x = torch.randn(length, batch, embed, requires_grad=True)
        memory = torch.randn(length, batch, embed, requires_grad=True)
        rows = []
        for layer, make, call in (
            ("MultiheadAttention", lambda p: p.MultiheadAttention(embed, 8), lambda m: m(x, x, x)),
            (
                "TransformerEncoderLayer",
                lambda p: p.TransformerEncoderLayer(embed, 8, dim_feedforward=1024, dropout=0.0),
                lambda m: m(x),
            ),
            (
                "TransformerDecoderLayer",
                lambda p: p.TransformerDecoderLayer(embed, 8, dim_feedforward=1024, dropout=0.0),
                lambda m: m(x, memory),
            ),
        ):
            torch.manual_seed(0)
            ours, theirs = make(function).train(), make(plain).train()
            theirs.load_state_dict(ours.state_dict())
            rows.append((layer, saved_mib(lambda: call(ours), ours), saved_mib(lambda: call(theirs), theirs)))
        lines = {**function_lines(importlib.import_module(f"{function.__name__}.torch_nn.attention"))}
        lines |= function_lines(importlib.import_module(f"{function.__name__}.torch_nn.transformer"))
    print(f"L={length}, N={batch}, E={embed}, training, dropout 0; MiB saved for backward (parameters left out)")
    print(f"{'layer':<26}{'@function':>11}{'autograd':>11}{'ratio':>8}{'Function lines':>16}")
    for layer, ours_mib, theirs_mib in rows:
        print(f"{layer:<26}{ours_mib:>11.1f}{theirs_mib:>11.1f}{ours_mib / theirs_mib:>8.2f}{lines.get(layer, 0):>16,}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
