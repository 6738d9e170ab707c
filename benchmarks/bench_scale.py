#!/usr/bin/env python
"""`layerdsl gen` at scale: N spec files, cold (empty black cache) and warm (cache filled by the cold run).

The specs are copies of the shipped ones (`specs/*.layer`), each copy's layer names given a numbered
suffix, so that a copy is a whole program of its own and the N files are one program. Each run is a fresh
`python -m layerdsl gen` process into an empty output folder; the table shows its wall time and its CPU
time (user + system of the process and its children: on a shared machine the wall time includes the
neighbours).

    python benchmarks/bench_scale.py            # 1,000 files
    python benchmarks/bench_scale.py --files 200
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
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


def gen(specs: Path, out: Path, cache: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and exit code of one `layerdsl gen` process."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAYERDSL_CACHE_DIR": str(cache)}
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        specs = root / "specs"
        specs.mkdir()
        make_specs(specs, args.files)
        print(f"{args.files} spec files")
        print(f"{'run':6} {'wall s':>8} {'cpu s':>8} {'ms/file (cpu)':>14}")
        for label in ("cold", "warm"):
            wall, cpu, rc = gen(specs, root / "out", root / "cache")
            if rc != 0:
                print(f"{label}: gen failed with exit code {rc}")
                return 1
            print(f"{label:6} {wall:8.2f} {cpu:8.2f} {1000 * cpu / args.files:14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
