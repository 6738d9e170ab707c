#!/usr/bin/env python
"""`layerdsl gen` at scale: N spec files, cold (empty cache) and warm (the cache filled by the cold run).

The specs are copies of the shipped ones (`specs/*.layer`), each copy's layer names given a numbered
suffix, so that a copy is a whole program of its own and the N files are one program. Each run is a fresh
`python -m layerdsl gen` process into an empty output folder; the table shows its wall time and its CPU
time (user + system of the process and its children: on a shared machine the wall time includes the
neighbours), each the median of `--repeat` runs with its range.

The cache is `gen`'s (layerdsl/driver/cache.py: whole generated files, and whole runs); "warm" reruns the
same specs, which needs no parsing at all. Python's own bytecode cache is kept in a temporary folder and
filled before timing, as an installed package's is (with `PYTHONDONTWRITEBYTECODE` every run would
compile layerdsl first, about 0.3 s).

    python benchmarks/bench_scale.py            # 1,000 files
    python benchmarks/bench_scale.py --files 200
    python benchmarks/bench_scale.py --specs specs   # the shipped specs
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER = re.compile(r"^\s*layer\s+([A-Za-z_][A-Za-z0-9_]*)", re.M)


def make_specs(folder: Path, count: int) -> None:
    """`count` spec files in `folder`: copies of the shipped specs with their layer names numbered."""
    shipped = sorted((ROOT / "specs").glob("*.layer"))
    texts = {p.stem: p.read_text(encoding="utf-8") for p in shipped}
    names = sorted({n for text in texts.values() for n in LAYER.findall(text)}, key=len, reverse=True)
    rename = re.compile(r"(?<![.\w])(" + "|".join(names) + r")(?!\w)")
    written = 0
    copy = 0
    while written < count:
        for stem, text in texts.items():
            if written == count:
                break
            (folder / f"{stem}_{copy}.layer").write_text(
                rename.sub(lambda m: f"{m.group(1)}{copy}", text), encoding="utf-8"
            )
            written += 1
        copy += 1


def gen(specs: Path, out: Path, cache: Path, pycache: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and exit code of one `layerdsl gen` process."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAYERDSL_CACHE_DIR": str(cache), "PYTHONPYCACHEPREFIX": str(pycache)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "layerdsl", "gen", str(specs), "-o", str(out)], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    return wall, cpu, done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind (median and range shown)")
    parser.add_argument("--specs", help="time this folder of specs instead of N copies")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        specs = Path(args.specs) if args.specs else root / "specs"
        if not args.specs:
            specs.mkdir()
            make_specs(specs, args.files)
        count = len(list(specs.rglob("*.layer")))
        pycache = root / "pycache"
        gen(ROOT / "specs", root / "warmup", root / "warmup-cache", pycache)  # fills Python's bytecode cache
        print(f"{count} spec files, {args.repeat} runs each (median [min, max])")
        print(f"{'run':6} {'wall s':>20} {'cpu s':>20} {'ms/file (cpu)':>14}")
        for label in ("cold", "warm"):
            walls, cpus = [], []
            for _ in range(args.repeat):
                if label == "cold":
                    shutil.rmtree(root / "cache", ignore_errors=True)
                wall, cpu, rc = gen(specs, root / "out", root / "cache", pycache)
                if rc != 0:
                    print(f"{label}: gen failed with exit code {rc}")
                    return 1
                walls.append(wall)
                cpus.append(cpu)
            print(f"{label:6} {_spread(walls):>20} {_spread(cpus):>20} {1000 * statistics.median(cpus) / count:14.1f}")
    return 0


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


if __name__ == "__main__":
    sys.exit(main())
