#!/usr/bin/env python
"""What a loop Function keeps for backward, and the peak memory of its forward: the bytes it saves (every
tensor `ctx.save_for_backward` holds, each storage once) and the growth of the process's peak resident
memory over one forward (a fresh process per case, so each peak is its own). CPU, float32.

    python benchmarks/bench_loop_saving.py                 # every case
    python benchmarks/bench_loop_saving.py --case elman    # one

Compare two versions of the compiler by running it with each on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerdsl.codegen.module import emit_file  # noqa: E402
from layerdsl.semantics.checker import check_program  # noqa: E402
from layerdsl.syntax.parser import parse_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_function_loops import DEEP, ELMAN, ELMAN2  # noqa: E402  (the specs both benchmarks measure)

# name: (spec, layer, constructor arguments, input shape)
CASES = {
    "elman": (ELMAN, "Elman", {"input_size": 256, "hidden_size": 512}, (512, 64, 256)),
    "elman2": (ELMAN2, "Elman2", {"input_size": 256, "hidden_size": 512}, (512, 64, 256)),
    "deep": (DEEP, "Deep", {"d": 256, "hidden": 1024, "depth": 24}, (512, 256)),
}


def measure(case: str) -> dict:
    text, name, kwargs, shape = CASES[case]
    spec = parse_file(f"{case}.layer", text)
    namespace: dict = {}
    exec(compile(emit_file(spec, check_program([spec]), f"{case}.layer", {}), case, "exec"), namespace)
    torch.manual_seed(0)
    module = namespace[name](**kwargs)
    x = torch.randn(*shape, requires_grad=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = module(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in out.grad_fn.saved_tensors}
    return {"case": case, "saved_MiB": sum(storages.values()) / 2**20, "peak_growth_MiB": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES))
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the measuring process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.case)))
        return
    for case in [args.case] if args.case else sorted(CASES):
        run = [sys.executable, __file__, "--case", case, "--one"]
        result = json.loads(subprocess.run(run, check=True, capture_output=True, text=True).stdout)
        print(
            f"{case:8s} saved {result['saved_MiB']:8.1f} MiB   forward peak growth {result['peak_growth_MiB']:8.1f} MiB"
        )


if __name__ == "__main__":
    main()
