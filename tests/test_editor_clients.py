"""The language server as real clients start it, and the setups docs/editors.md gives for them.

- `layerdsl lsp` takes the `--stdio` that clients append, and refuses other transports with a usage error;
- Neovim (headless, with the 0.7 API: the version CI installs) runs the init.lua of docs/editors.md and
  `tests/editors/nvim_check.lua`: attach, diagnostics, hover, completion, format on save, a fix, the
  generated Python, then a refused `@function` stack's derivation diagnostic and its "Move @function to
  Block" quick fix (`tests/editors/refused_stack.layer`, which the VS Code client test opens too);
- the hooks of `.pre-commit-hooks.yaml` pass on clean specs and fail on unformatted or stale ones.

The VS Code extension is tested in Node: `npm run test:client --prefix editors/vscode` (see .ci/run).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from layerdsl.driver.cli import EXIT_USAGE, main

ROOT = Path(__file__).resolve().parent.parent
SERVER = [sys.executable, "-m", "layerdsl", "lsp"]
TIMEOUT_S = 60

SCALE = textwrap.dedent("""\
    layer Scale(n: int) {
        param weight: [n] = ones
        example(n = 3)
        forward(x: [B, n]) -> [B, n] {
            return x*wieght
        }
    }
    """)

SCALE_FORMATTED = textwrap.dedent("""\
    layer Scale(n: int) {
        param weight: [n] = ones

        example(n = 3)

        forward(x: [B, n]) -> [B, n] {
            return x * wieght
        }
    }
    """)


REFUSED = (ROOT / "tests" / "editors" / "refused_stack.layer").read_text(encoding="utf-8")
MOVED = REFUSED.replace("@function\nlayer Stack(", "layer Stack(").replace(
    "\nlayer Block(", "\n@function\nlayer Block("
)


def _env() -> dict[str, str]:
    """The environment of a server run from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def _messages(stdout: bytes) -> list[dict]:
    """The LSP messages in a server's output (headers, a blank line, then Content-Length bytes of JSON)."""
    messages = []
    while stdout:
        headers, _, rest = stdout.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", headers).group(1))
        messages.append(json.loads(rest[:length]))
        stdout = rest[length:]
    return messages


# ---------------------------------------------------------------- the server's command line


def test_lsp_accepts_stdio_flag() -> None:
    session = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"processId": None, "capabilities": {}}},
        {"jsonrpc": "2.0", "method": "initialized", "params": {}},
        {"jsonrpc": "2.0", "id": 2, "method": "shutdown"},
        {"jsonrpc": "2.0", "method": "exit"},
    ]
    done = subprocess.run(
        [*SERVER, "--stdio"],
        input=b"".join(_frame(m) for m in session),
        capture_output=True,
        env=_env(),
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr.decode()
    initialize = next(r for r in _messages(done.stdout) if r.get("id") == 1)
    assert initialize["result"]["capabilities"]["hoverProvider"]


@pytest.mark.parametrize("flag", ["--tcp", "--port=2087", "--socket=5000", "--pipe=/tmp/x", "--node-ipc"])
def test_lsp_refuses_other_transports(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["lsp", flag])
    assert exit_info.value.code == EXIT_USAGE
    assert f"{flag.split('=')[0]} is not supported: the server speaks LSP over stdio only" in capsys.readouterr().err


# ---------------------------------------------------------------- the refused stack both clients open


def test_the_editor_clients_stack_is_refused_with_the_move_hint_and_the_move_derives() -> None:
    """What the Neovim and VS Code tests wait for: one refusal, inside Block, whose hint is the move; and
    the moved text plans without one (else their waits time out with less to say)."""
    from layerdsl.autodiff.plan import plan_backwards
    from layerdsl.semantics.checker import check_program
    from layerdsl.syntax.parser import parse_file

    def problems(text: str) -> list:
        spec = parse_file("stack.layer", text)
        check_program([spec])
        return plan_backwards([spec])[1]

    [refusal] = problems(REFUSED)
    assert "inlined into 'Stack'" in refusal.message
    assert refusal.hint.startswith("put @function on Block instead of Stack: ")
    assert re.fullmatch(r"\s+if \w+ \{", REFUSED.split("\n")[refusal.span.line - 1])
    assert problems(MOVED) == []


# ---------------------------------------------------------------- Neovim


def _docs_blocks(marker: str) -> str:
    """The code block that follows `<!-- ...marker... -->` in docs/editors.md."""
    docs = (ROOT / "docs" / "editors.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- [^>]*{re.escape(marker)} -->\n```lua\n(.*?)```", docs, re.S)
    assert found, f"docs/editors.md has no lua block marked {marker!r}"
    return found.group(1)


def _neovim_init() -> str:
    """The documented Neovim 0.7 setup and :LayerShowGenerated, with the server of this checkout."""
    init = _docs_blocks("as the init.lua of Neovim 0.7") + _docs_blocks("runs this block in Neovim 0.7")
    documented = 'cmd = { "layerdsl", "lsp" }'
    assert documented in init
    return init.replace(documented, "cmd = { " + ", ".join(json.dumps(part) for part in SERVER) + " }")


@pytest.mark.skipif(shutil.which("nvim") is None, reason="nvim is not installed (CI installs Debian's neovim)")
def test_neovim_setup_from_the_docs(tmp_path: Path) -> None:
    spec = tmp_path / "scale.layer"
    spec.write_text(SCALE, encoding="utf-8")
    (tmp_path / "stack").mkdir()
    refused = tmp_path / "stack" / "stack.layer"
    refused.write_text(REFUSED, encoding="utf-8")
    init = tmp_path / "init.lua"
    init.write_text(_neovim_init(), encoding="utf-8")
    result_path = tmp_path / "result.json"
    env = _env() | {
        "LAYERDSL_NVIM_SPEC": str(spec),
        "LAYERDSL_NVIM_REFUSED": str(refused),
        "LAYERDSL_NVIM_RESULT": str(result_path),
        "LAYERDSL_NVIM_TIMEOUT_MS": "20000",
        # Neovim's LSP log (cache in 0.7, state from 0.8) goes there, not into the user's folders.
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    check = ROOT / "tests" / "editors" / "nvim_check.lua"
    done = subprocess.run(
        ["nvim", "--headless", "--clean", "-u", str(init), "-c", f"luafile {check}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result_path.exists(), f"nvim wrote no result (exit {done.returncode}): {done.stdout}{done.stderr}"
    result = json.loads(result_path.read_text(encoding="utf-8"))
    assert result.get("failure") is None, f"{result.get('failure')} (after {result['steps']}): {result['messages']}"
    assert done.returncode == 0

    assert result["filetype"] == "layer"
    assert result["client"] == "layerdsl"
    assert result["omnifunc"] == "v:lua.vim.lsp.omnifunc"
    [diagnostic] = result["diagnostics"]
    assert (diagnostic["lnum"], diagnostic["col"], diagnostic["severity"]) == (4, 17, 1)
    assert diagnostic["message"].startswith("unknown name 'wieght'")
    assert "param weight: [n] = ones" in result["hover"]
    assert {"weight", "x", "relu"} <= set(result["completion"])
    assert "\n".join(result["saved"]) + "\n" == SCALE_FORMATTED
    generated = "\n".join(result["generated"])
    assert "class Scale(nn.Module):" in generated
    assert "return x * weight" in generated

    refusal = result["refusal"]
    assert result["refusal_count"] == 1
    assert refusal["severity"] == 1
    assert "cannot derive" in refusal["message"] and "inlined into 'Stack'" in refusal["message"]
    assert "\nhint: put @function on Block instead of Stack: " in refusal["message"]
    assert re.fullmatch(r"\s+if \w+ \{", REFUSED.split("\n")[refusal["lnum"]]), "on an `if` of Block"
    assert "Move @function to Block" in result["actions"]
    assert "\n".join(result["moved"]) + "\n" == MOVED != REFUSED
    assert result["steps"][-1] == "refusal cleared"


@pytest.mark.skipif(shutil.which("nvim") is None, reason="nvim is not installed (CI installs Debian's neovim)")
def test_every_lua_block_of_the_docs_compiles(tmp_path: Path) -> None:
    """The 0.11 setup cannot run in Neovim 0.7, but every block must at least be valid Lua."""
    docs = (ROOT / "docs" / "editors.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```lua\n(.*?)```", docs, re.S)
    assert len(blocks) >= 3
    files = []
    for i, block in enumerate(blocks):
        files.append(tmp_path / f"block{i}.lua")
        files[-1].write_text(block, encoding="utf-8")
    load = "; ".join(f"assert(loadfile({json.dumps(str(f))}))" for f in files)
    done = subprocess.run(
        ["nvim", "--headless", "--clean", "-u", "NONE", "-c", f"lua {load}", "-c", "qall!"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0 and not done.stderr, done.stderr


# ---------------------------------------------------------------- pre-commit hooks


def _hooks() -> dict[str, dict]:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    return {hook["id"]: hook for hook in hooks}


def _run_hook(hook: dict, cwd: Path, files: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a hook as pre-commit does: entry, args, then the staged files that match (unless it takes none)."""
    program, *entry = shlex.split(hook["entry"])
    assert program == "layerdsl"
    matching = [f for f in files if re.search(hook.get("files", ""), f)]
    passed = matching if hook.get("pass_filenames", True) else []
    command = [sys.executable, "-m", "layerdsl", *entry, *hook.get("args", []), *passed]
    return subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)


def test_pre_commit_fmt_hook(tmp_path: Path) -> None:
    hook = _hooks()["layerdsl-fmt"]
    (tmp_path / "clean.layer").write_text(SCALE_FORMATTED, encoding="utf-8")
    assert _run_hook(hook, tmp_path, ["clean.layer", "README.md"]).returncode == 0
    (tmp_path / "messy.layer").write_text(SCALE, encoding="utf-8")
    done = _run_hook(hook, tmp_path, ["clean.layer", "messy.layer"])
    assert done.returncode == 1
    assert "messy.layer" in done.stderr
    assert (tmp_path / "messy.layer").read_text(encoding="utf-8") == SCALE, "--check writes nothing"


def test_pre_commit_gen_hook(tmp_path: Path) -> None:
    hook = _hooks()["layerdsl-gen"]
    (tmp_path / "specs").mkdir()
    spec = SCALE_FORMATTED.replace("wieght", "weight")
    (tmp_path / "specs" / "scale.layer").write_text(spec, encoding="utf-8")
    changed = ["specs/scale.layer"]
    assert _run_hook(hook, tmp_path, changed).returncode == 1, "nothing generated yet: stale"
    subprocess.run(
        [sys.executable, "-m", "layerdsl", "gen", "specs", "-o", "generated"], cwd=tmp_path, env=_env(), check=True
    )
    assert _run_hook(hook, tmp_path, changed).returncode == 0
    (tmp_path / "specs" / "scale.layer").write_text(spec.replace("ones", "zeros"), encoding="utf-8")
    assert _run_hook(hook, tmp_path, changed).returncode == 1, "the spec changed: stale"
