"""Language server responsiveness: `layerdsl lsp` as a subprocess, driven over stdio like an editor, with
every spec of a folder open (the 24 of `specs/` by default).

Measures (each reported as median, with the 10th-90th percentile spread and the maximum):
- keystroke → diagnostics: one edit after a pause, until the diagnostics of that version arrive;
- a burst: ten edits 20 ms apart, from the last edit until the diagnostics of the last version arrive;
- hover and completion latency on the names of an open spec (95th percentile too).

Targets (issue 13): keystroke median ≤ 100 ms, burst ≤ 300 ms after the last edit, hover/completion
p95 ≤ 20 ms.

With `--crowd N`, instead: rename and find-references in a folder of N generated specs (a few of which use
the layer renamed), the document opened outside any workspace: the first rename (a fresh server, whose
parses are not cached yet), then renames of the layer and of one of its arguments, references and document
highlights of the layer, repeated; with `--before DIR` the same with the server of another checkout (e.g. a `git archive` of
the commit before a change), one fresh server of each in turn per round, and the ratios before/after.

    PYTHONPATH=$PWD python benchmarks/bench_lsp.py [--specs specs] [--rounds 30]
    PYTHONPATH=$PWD python benchmarks/bench_lsp.py --crowd 1500 [--before /tmp/before] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from layerdsl.tools.lsp.framing import FrameReader  # noqa: E402


class Client:
    """A minimal LSP client over a `layerdsl lsp` subprocess's pipes."""

    def __init__(self, root: Path | None, code: Path = ROOT) -> None:
        env = dict(os.environ, PYTHONPATH=str(code))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "layerdsl", "lsp"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=code,  # `python -m` puts the working folder first on sys.path
        )
        self.cond = threading.Condition()
        self.responses: dict[int, tuple[float, dict]] = {}
        self.published: dict[tuple[str, int | None], float] = {}  # (uri, version) -> arrival time
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        folders = {"rootUri": root.as_uri(), "workspaceFolders": [{"uri": root.as_uri(), "name": "ws"}]} if root else {}
        self.request("initialize", {"capabilities": {}, **folders})
        self.notify("initialized", {})

    def _read(self) -> None:
        reader = FrameReader(self.proc.stdout.read1)  # type: ignore[union-attr]
        while (body := reader.next_body()) is not None:
            message, now = json.loads(body), time.perf_counter()
            with self.cond:
                if message.get("method") == "textDocument/publishDiagnostics":
                    params = message["params"]
                    self.published[(params["uri"], params.get("version"))] = now
                elif "id" in message and "method" not in message:
                    self.responses[message["id"]] = (now, message)
                self.cond.notify_all()

    def _send(self, message: dict) -> float:
        body = json.dumps(message).encode()
        data = b"Content-Length: %d\r\n\r\n" % len(body) + body
        t0 = time.perf_counter()
        self.proc.stdin.write(data)  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return t0

    def notify(self, method: str, params: dict) -> float:
        return self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method: str, params: dict) -> tuple[float, dict]:
        """The reply and its latency in seconds."""
        self.next_id += 1
        msg_id = self.next_id
        t0 = self._send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        with self.cond:
            self.cond.wait_for(lambda: msg_id in self.responses, timeout=120)
            t1, reply = self.responses.pop(msg_id)
        return t1 - t0, reply

    def wait_published(self, uri: str, version: int, timeout: float = 30) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: (uri, version) in self.published, timeout=timeout):
                raise TimeoutError(f"no diagnostics for {uri} version {version}")
            return self.published[(uri, version)]

    def close(self) -> None:
        self.request("shutdown", {})
        self.notify("exit", {})
        self.proc.wait(timeout=10)


def spread(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=20, method="inclusive") if len(ms) > 1 else ms * 19
    return f"median {statistics.median(ms):6.1f} ms  p10 {q[1]:6.1f}  p90 {q[17]:6.1f}  p95 {q[18]:6.1f}  max {ms[-1]:6.1f}  (n={len(ms)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=Path, default=ROOT / "specs")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--crowd", type=int, default=0, help="rename/references in a folder of this many specs")
    parser.add_argument("--before", type=Path, help="with --crowd: the checkout whose server is compared")
    args = parser.parse_args()
    if args.crowd:
        bench_crowded(args.crowd, args.rounds, args.before)
    else:
        bench_editing(args.specs.resolve(), args.rounds)


def bench_editing(folder: Path, rounds: int) -> None:
    paths = sorted(folder.glob("*.layer"))
    client = Client(folder)
    texts = {p.as_uri(): p.read_text(encoding="utf-8") for p in paths}
    versions = dict.fromkeys(texts, 1)
    for uri, text in texts.items():
        client.notify(
            "textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "layer", "version": 1, "text": text}}
        )
    for uri in texts:
        client.wait_published(uri, 1)
    target = (folder / "my_layer.layer").as_uri() if (folder / "my_layer.layer").exists() else next(iter(texts))
    base = texts[target]
    print(f"{len(paths)} specs open; edits to {Path(target).name}")

    def edit(i: int) -> int:
        versions[target] += 1
        text = base.replace("\n", f"\n# keystroke {i}\n", 1) if i % 2 else base
        client.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": target, "version": versions[target]}, "contentChanges": [{"text": text}]},
        )
        return versions[target]

    keystrokes = []
    for i in range(rounds):
        time.sleep(0.3)  # a pause in typing
        t0 = time.perf_counter()
        version = edit(i)
        keystrokes.append(client.wait_published(target, version) - t0)
    bursts = []
    for r in range(max(5, rounds // 3)):
        time.sleep(0.3)
        for i in range(10):
            t_last = time.perf_counter()
            version = edit(r * 10 + i)
            time.sleep(0.02)
        bursts.append(client.wait_published(target, version) - t_last)
    time.sleep(0.3)
    lines = base.split("\n")
    positions = [(n, m.start() + 1) for n, line in enumerate(lines) for m in re.finditer(r"\b[A-Za-z_]\w*", line)]
    hovers, completions = [], []
    answered = 0
    for i in range(max(100, rounds * 4)):
        n, c = positions[i * 7 % len(positions)]
        where = {"textDocument": {"uri": target}, "position": {"line": n, "character": c}}
        took, reply = client.request("textDocument/hover", where)
        hovers.append(took)
        answered += reply.get("result") is not None
        completions.append(client.request("textDocument/completion", where)[0])
    client.close()
    print(f"keystroke -> diagnostics:        {spread(keystrokes)}")
    print(f"burst of 10 (after the last):    {spread(bursts)}")
    print(f"hover ({answered} with content):   {spread(hovers)}")
    print(f"completion:                      {spread(completions)}")


# ---------------------------------------------------------------- rename and references in a crowded folder

HELPER = """\
layer Helper(width: int) {
    param scale: [width] = uniform(0.5, 1.0)
    example(width = 4)
    forward(x: [B, width]) -> [B, width] {
        return x * scale
    }
}
"""

USER = """\
layer User{i}(n: int) {{
    sub h = Helper(width = n)
    example(n = 2)
    forward(x: [B, n]) -> [B, n] {{
        return h(x)
    }}
}}
"""

MAIN = USER.format(i="Main")
WARM_REQUESTS = 10  # of each kind, per server


def write_crowd(folder: Path, count: int) -> None:
    """`count` specs like specs/my_layer.layer (every 50th with 40 layers, every 100th one using Helper,
    every 100th one mentioning Helper in a comment), helper.layer and main.layer."""
    base = (ROOT / "specs" / "my_layer.layer").read_text(encoding="utf-8")
    for i in range(count):
        if i % 50 == 49:
            text = "\n".join(base.replace("MyLayer", f"Crowd{i}x{k}") for k in range(40))
        elif i % 100 == 10:
            text = USER.format(i=i)
        elif i % 100 == 11:
            text = "# Helper is not used here\n" + base.replace("MyLayer", f"Crowd{i}")
        else:
            text = base.replace("MyLayer", f"Crowd{i}")
        (folder / f"crowd_{i:04}.layer").write_text(text, encoding="utf-8")
    (folder / "helper.layer").write_text(HELPER, encoding="utf-8")
    (folder / "main.layer").write_text(MAIN, encoding="utf-8")


def crowded_round(folder: Path, code: Path) -> dict[str, list[float]]:
    """One fresh server of the checkout `code` on main.layer: the latencies of each kind of request."""
    client = Client(None, code)
    uri = (folder / "main.layer").as_uri()
    document = {"uri": uri, "languageId": "layer", "version": 1, "text": MAIN}
    client.notify("textDocument/didOpen", {"textDocument": document})
    client.wait_published(uri, 1, timeout=120)
    line = MAIN.splitlines()[1]
    on_layer = {"textDocument": {"uri": uri}, "position": {"line": 1, "character": line.index("Helper") + 1}}
    on_arg = {"textDocument": {"uri": uri}, "position": {"line": 1, "character": line.index("width") + 1}}
    kinds = ["first rename", "rename layer", "rename arg", "references", "highlight"]
    found: dict[str, list[float]] = {kind: [] for kind in kinds}
    took, reply = client.request("textDocument/rename", {**on_layer, "newName": "Aide"})
    found["first rename"].append(took)
    edits = sum(len(e) for e in reply["result"]["changes"].values())
    for _ in range(WARM_REQUESTS):
        found["rename layer"].append(client.request("textDocument/rename", {**on_layer, "newName": "Aide"})[0])
        found["rename arg"].append(client.request("textDocument/rename", {**on_arg, "newName": "size"})[0])
        refs = {**on_layer, "context": {"includeDeclaration": True}}
        took, reply = client.request("textDocument/references", refs)
        found["references"].append(took)
        found["highlight"].append(client.request("textDocument/documentHighlight", on_layer)[0])
    assert len(reply["result"]) == edits, (len(reply["result"]), edits)
    client.close()
    return found


def ratio_spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):6.1f}x [{min(ratios):.1f}, {max(ratios):.1f}]"


def bench_crowded(count: int, rounds: int, before: Path | None) -> None:
    codes = {"after": ROOT} | ({"before": before.resolve()} if before else {})
    with tempfile.TemporaryDirectory(prefix="bench_lsp_crowd_") as tmp:
        folder = Path(tmp)
        write_crowd(folder, count)
        print(f"{count} specs in {folder}; {rounds} rounds, each one fresh server of {' and '.join(codes)} in turn")
        samples: dict[str, list[dict[str, list[float]]]] = {name: [] for name in codes}
        for _ in range(rounds):
            for name, code in codes.items():
                samples[name].append(crowded_round(folder, code))
    for name, runs in samples.items():
        print(f"{name} ({codes[name]}):")
        for kind in runs[0]:
            print(f"  {kind:13} {spread([t for run in runs for t in run[kind]])}")
    if before:
        print("before/after, per round (median [min, max]):")
        for kind in samples["after"][0]:
            ratios = [
                statistics.median(b[kind]) / statistics.median(a[kind])
                for a, b in zip(samples["after"], samples["before"])
            ]
            print(f"  {kind:13} {ratio_spread(ratios)}")


if __name__ == "__main__":
    main()
