"""What the segmented Functions of torch.nn's attention layers save for backward, against plain autograd.

MultiheadAttention, TransformerEncoderLayer, TransformerDecoderLayer (specs/torch_nn; the decoder attends
over a memory of the same shape as its input) and a TransformerEncoder of 2 encoder layers and a LayerNorm
(its Function runs theirs: LayerNorm is `@function` too) are generated twice, with `@function` added
and as written, and each is run once in training at L=256, N=16, E=256 (dropout 0). Saved bytes are the
storages `saved_tensors_hooks` sees, each counted once, the layer's own parameters left out (the module holds
them anyway). Bytes are deterministic: one run is the figure. Also prints the generated Function's lines.

Then two loop Functions, float32, against the same spec without `@function`: a GRU layer (torch.nn.GRU's
gates, its state started as a [hidden] vector when none is given) at T=50, B=32, 64 -> 128, with and without
the start state; and a loop over 6 copies of a projection block at [32, 128, 256], whose stacked members
(one tensor per member for all copies, which the module passes and the Function keeps) are shown apart.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' loop specs, measured here too
from tests.support import compile_spec as compiled  # noqa: E402
from tests.support import saved_bytes  # noqa: E402
from tests.test_function_carried_starts import GRU  # noqa: E402
from tests.test_loop_function_costs import PROJECTIONS  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs" / "torch_nn"
LAYERS = ("MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder")
# The encoder stack's Function runs its layers' and its norm's (autodiff/sub_calls.py): LayerNorm's too
FUNCTIONS = (*LAYERS, "LayerNorm")


def generated(root: Path, function: bool) -> object:
    """The torch_nn package, `@function` added to the three layers or not."""
    folder = root / ("function" if function else "plain") / "torch_nn"
    folder.mkdir(parents=True)
    for spec in SPECS.glob("*.layer"):
        name, text = spec.name, spec.read_text()
        for layer in FUNCTIONS if function else ():
            text = text.replace(f"\nlayer {layer}(", f"\n@function\nlayer {layer}(")
        (folder / name).write_text(text)
    package = f"segment_saving_{'function' if function else 'plain'}"
    generate_package([str(folder.parent)], root / "packages", package)
    return importlib.import_module(package)


def loop_rows() -> list[tuple[str, float, float]]:
    """(case, MiB the loop Function saves, MiB autograd saves) for the GRU layer and the copies."""
    rows = []
    ours, plain = compiled(GRU, "gru"), compiled(GRU.replace("@function\n", ""), "gru_plain")
    torch.manual_seed(0)
    a, b = ours["GruLayer"](64, 128), plain["GruLayer"](64, 128)
    b.load_state_dict(a.state_dict())
    x, hx = torch.randn(50, 32, 64, requires_grad=True), torch.randn(1, 32, 128, requires_grad=True)
    for case, inputs in (("GRU, no start state", (x,)), ("GRU, start state given", (x, hx))):
        rows.append((case, saved_mib(lambda: a(*inputs), a), saved_mib(lambda: b(*inputs), b)))
    ours, plain = compiled(PROJECTIONS, "proj"), compiled(PROJECTIONS.replace("@function\n", ""), "proj_plain")
    a = ours["Projections"](ours["Projection"](256), 6)
    b = plain["Projections"](plain["Projection"](256), 6)
    b.load_state_dict(a.state_dict())
    x = torch.randn(32, 128, 256, requires_grad=True)
    stacked = sum(p.numel() * p.element_size() for p in a.parameters()) / 2**20
    rows.append(("6 projection copies", saved_mib(lambda: a(x), a), saved_mib(lambda: b(x), b)))
    rows.append(("  the copies' parameters, stacked", stacked, 0.0))
    return rows


def saved_mib(run, held: torch.nn.Module) -> float:
    return saved_bytes(run, held) / 2**20


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
            (
                "TransformerEncoder",  # 2 copies of the encoder layer above, then a LayerNorm
                lambda p: p.TransformerEncoder(
                    p.TransformerEncoderLayer(embed, 8, dim_feedforward=1024, dropout=0.0), 2, p.LayerNorm(embed)
                ),
                lambda m: m(x),
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
    print()
    print("loop Functions, float32; MiB saved for backward (parameters left out)")
    print(f"{'case':<34}{'@function':>11}{'autograd':>11}{'ratio':>8}")
    for case, ours_mib, theirs_mib in loop_rows():
        ratio = f"{ours_mib / theirs_mib:>8.2f}" if theirs_mib else ""
        print(f"{case:<34}{ours_mib:>11.2f}{theirs_mib:>11.2f}{ratio}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
