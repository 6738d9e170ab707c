#!/usr/bin/env python
"""The time to derive an `@function` layer's backward as its forward grows: `layerdsl show` on a loop of K
steps unrolled (the spec of tests/test_derivation_time.py), in a fresh process per run, timed by the CPU
time of that process (wall time on a shared machine says little). Prints each K's time as
`median [min, max]` over the runs and the growth exponent between successive Ks (`t ~ K ** e`), the
median's with the range the slowest and fastest runs allow. The generated code itself grows as K ** 2
(each extra output's gradient section runs back through the steps before it), so no faster growth is
possible for the whole run.

    python benchmarks/bench_derivation_time.py                      # K = 16, 32, 64; 3 runs each
    python benchmarks/bench_derivation_time.py --steps 16 32 --runs 5
    python benchmarks/bench_derivation_time.py --root ../other      # another checkout's compiler

Compare two versions of the compiler with `--root` (the checkout put first on the child's PYTHONPATH).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_derivation_time import unrolled_spec  # noqa: E402  (the spec the test bounds)


def cpu_seconds(spec: Path, root: Path) -> float:
    """The CPU time (user + system) of one `layerdsl show` of `spec`, in a fresh process, cache off."""
    env = {
        **os.environ,
        "LAYERDSL_NO_CACHE": "1",
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run([sys.executable, "-m", "layerdsl", "show", str(spec)], capture_output=True, text=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        sys.exit(f"layerdsl show {spec} failed:\n{run.stderr[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def exponent(k1: int, t1: float, k2: int, t2: float) -> float:
    return math.log(t2 / t1) / math.log(k2 / k1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64], help="the loop counts K")
    p.add_argument("--runs", type=int, default=3, help="runs per K")
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout whose compiler is timed")
    args = p.parse_args()
    times: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.steps:
            spec = Path(tmp) / f"unrolled{k}.layer"
            spec.write_text(unrolled_spec(k), encoding="utf-8")
            times[k] = [cpu_seconds(spec, args.root.resolve()) for _ in range(args.runs)]
            t = times[k]
            print(f"K={k:4d}  {statistics.median(t):7.2f} s CPU  [{min(t):.2f}, {max(t):.2f}]", flush=True)
    for k1, k2 in zip(args.steps, args.steps[1:]):
        t1, t2 = times[k1], times[k2]
        mid = exponent(k1, statistics.median(t1), k2, statistics.median(t2))
        low, high = exponent(k1, max(t1), k2, min(t2)), exponent(k1, min(t1), k2, max(t2))
        print(f"K={k1}->{k2}: growth exponent {mid:.2f} [{low:.2f}, {high:.2f}]")


if __name__ == "__main__":
    main()
