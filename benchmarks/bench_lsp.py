"""Language server responsiveness: `layerdsl lsp` as a subprocess, driven over stdio like an editor, with
every spec of a folder open (the 24 of `specs/` by default).

Measures (each reported as median, with the 10th-90th percentile spread and the maximum):
- keystroke → diagnostics: one edit after a pause, until the diagnostics of that version arrive;
- a burst: ten edits 20 ms apart, from the last edit until the diagnostics of the last version arrive;
- hover and completion latency on the names of an open spec (95th percentile too).

Targets (issue 13): keystroke median ≤ 100 ms, burst ≤ 300 ms after the last edit, hover/completion
p95 ≤ 20 ms.

    PYTHONPATH=$PWD python benchmarks/bench_lsp.py [--specs specs] [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from layerdsl.tools.lsp.framing import FrameReader  # noqa: E402


class Client:
    """A minimal LSP client over a `layerdsl lsp` subprocess's pipes."""

    def __init__(self, root: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "layerdsl", "lsp"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.cond = threading.Condition()
        self.responses: dict[int, tuple[float, dict]] = {}
        self.published: dict[tuple[str, int | None], float] = {}  # (uri, version) -> arrival time
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.request(
            "initialize",
            {"capabilities": {}, "rootUri": root.as_uri(), "workspaceFolders": [{"uri": root.as_uri(), "name": "ws"}]},
        )
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
            self.cond.wait_for(lambda: msg_id in self.responses, timeout=60)
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
    args = parser.parse_args()
    folder = args.specs.resolve()
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
    for i in range(args.rounds):
        time.sleep(0.3)  # a pause in typing
        t0 = time.perf_counter()
        version = edit(i)
        keystrokes.append(client.wait_published(target, version) - t0)
    bursts = []
    for r in range(max(5, args.rounds // 3)):
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
    for i in range(max(100, args.rounds * 4)):
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


if __name__ == "__main__":
    main()
