"""What several test files share: a spec's text compiled as `layerdsl gen` compiles a file, and run."""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file
from layerdsl.testing.layer_checks import generate_package

TORCH_NN_SPECS = Path(__file__).resolve().parent.parent / "specs" / "torch_nn"


def compile_spec(text: str, stem: str = "spec") -> dict:
    """The namespace of the module generated from spec `text` (as file `<stem>.layer`), executed; its source
    under "SOURCE"."""
    spec = parse_file(f"{stem}.layer", text)
    namespace: dict = {}
    source = emit_file(spec, check_program([spec]), f"{stem}.layer", {})
    namespace["SOURCE"] = source
    exec(compile(source, f"{stem}.py", "exec"), namespace)
    return namespace


def function_and_plain(text: str, name: str, *args) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Layer `name` of `text` as written (`@function`) and without the decorator: float64, one state."""
    modules = []
    for k, spec in enumerate([text, text.replace('@function(save = "inputs")\n', "").replace("@function\n", "")]):
        torch.manual_seed(0)
        modules.append(compile_spec(spec, f"{name.lower()}_{k}")[name](*args).double())
    modules[1].load_state_dict(modules[0].state_dict())
    return modules[0], modules[1]


def assert_same_function(
    ours: torch.nn.Module, plain: torch.nn.Module, *inputs: torch.Tensor, equal_nan: bool = False
) -> None:
    """Same output, same gradients of the inputs that require them and of the parameters (`equal_nan`: nan
    where the other has nan)."""
    wrt = [t for t in inputs if t.requires_grad]
    got, want = ours(*inputs), plain(*inputs)
    torch.testing.assert_close(got, want, equal_nan=equal_nan)
    weights = torch.linspace(-1, 2, got.numel(), dtype=got.dtype).reshape(got.shape)
    for g, w in zip(
        torch.autograd.grad((got * weights).sum(), [*wrt, *ours.parameters()]),
        torch.autograd.grad((want * weights).sum(), [*wrt, *plain.parameters()]),
        strict=True,
    ):
        torch.testing.assert_close(g, w, equal_nan=equal_nan)


def torch_nn_with_and_without_function(
    root: Path, files: list[str], layer: str, package: str
) -> tuple[ModuleType, ModuleType]:
    """The packages generated from `files` of specs/torch_nn, first with `@function` added to `layer`, then
    as written (the plain module: autograd)."""
    out = []
    for function in (True, False):
        folder = root / ("function" if function else "plain") / "torch_nn"
        folder.mkdir(parents=True)
        for name in files:
            text = (TORCH_NN_SPECS / name).read_text()
            if function:
                text = text.replace(f"\nlayer {layer}(", f"\n@function\nlayer {layer}(")
            (folder / name).write_text(text)
        name = f"{package}_{'function' if function else 'plain'}"
        generate_package([str(folder.parent)], root / "packages", name)
        out.append(importlib.import_module(name))
    return out[0], out[1]


def saved_bytes(run: Callable[[], object], held: torch.nn.Module | None = None) -> int:
    """The bytes of the storages autograd keeps for backward while `run()` runs, each counted once; those
    of `held`'s parameters left out (the module holds them anyway: keeping one costs no memory)."""
    kept: dict[int, int] = {}
    own = {p.untyped_storage().data_ptr() for p in held.parameters()} if held is not None else set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in own:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(kept.values())


class AtenCalls(TorchDispatchMode):
    """Counts the ATen ops run under it, by name (`native_layer_norm_backward`)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))
