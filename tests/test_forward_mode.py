"""Forward-mode AD of a generated Function: not derived (only the backward is). torch.func.jvp, jacfwd and
torch.autograd.forward_ad raised torch's "You must implement the jvp function for custom autograd.Function",
naming no layer; the Function's `apply` (templates/function.py.j2) now says which layer, that forward mode is
not derived, and what to use instead. A `jvp` staticmethod would say it too, but torch.compile refuses a
Function with one. Three kinds of layer: elementwise (SwishFunctional), matmul (MyLayerFunctional) and a loop
(torch.nn's RNN under @function); reverse mode still agrees with the plain module's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, jacfwd, jacrev, jvp

from tests.support import compile_spec, torch_nn_with_and_without_function

SPECS = Path(__file__).resolve().parent.parent / "specs"


class _FirstOutput(torch.nn.Module):
    """RNN's output without its last hidden state: one tensor, as jacfwd and jacrev take it."""

    def __init__(self, rnn: torch.nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def _pair(kind: str, tmp_path: Path) -> tuple[str, torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """The layer's name, it with @function and without, and an input."""
    torch.manual_seed(0)
    if kind == "loop":
        ours, plain = torch_nn_with_and_without_function(tmp_path, ["rnn.layer"], "RNN", "forward_mode_rnn")
        modules = [_FirstOutput(m.RNN(4, 3)).double() for m in (ours, plain)]
        modules[1].load_state_dict(modules[0].state_dict())
        return "RNN", modules[0], modules[1], torch.randn(5, 2, 4, dtype=torch.float64)
    stem, name, args = {
        "elementwise": ("swish_function", "SwishFunctional", (5,)),
        "matmul": ("my_layer_function", "MyLayerFunctional", (5, 3)),
    }[kind]
    text = (SPECS / f"{stem}.layer").read_text()
    modules = []
    for k, spec in enumerate([text, text.replace("@function\n", "")]):
        torch.manual_seed(0)
        modules.append(compile_spec(spec, f"{stem}_{k}")[name](*args).double())
    modules[1].load_state_dict(modules[0].state_dict())
    return name, modules[0], modules[1], torch.randn(2, 5, dtype=torch.float64)


def _of_input(module: torch.nn.Module):
    params = {k: v.detach() for k, v in module.named_parameters()}
    return lambda x: functional_call(module, params, (x,))


def _dual(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with fwAD.dual_level():
        return fwAD.unpack_dual(module(fwAD.make_dual(x, torch.ones_like(x)))).tangent


FORWARD_MODES = {
    "jvp": lambda m, x: jvp(_of_input(m), (x,), (torch.ones_like(x),)),
    "jacfwd": lambda m, x: jacfwd(_of_input(m))(x),
    "forward_ad": _dual,
}


# torch's forward mode of the plain module goes through its jit-scripted decompositions (a deprecation note)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("mode", FORWARD_MODES)
@pytest.mark.parametrize("kind", ["elementwise", "matmul", "loop"])
def test_forward_mode_names_the_layer_and_says_it_is_not_derived(kind, mode, tmp_path):
    name, ours, plain, x = _pair(kind, tmp_path)
    FORWARD_MODES[mode](plain, x)  # the plain module has it (autograd's)
    with pytest.raises(NotImplementedError) as caught:
        FORWARD_MODES[mode](ours, x)
    message = str(caught.value)
    assert message.startswith(f"{name}: forward-mode AD (torch.func.jvp, jacfwd, forward_ad) is not derived")
    assert "use reverse mode (vjp, jacrev, backward), or the layer without @function" in message
    assert "forward mode AD" in str(caught.value.__cause__)  # torch's own, kept as the cause


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # torch.func's addcmul_ fallback
@pytest.mark.parametrize("kind", ["elementwise", "matmul", "loop"])
def test_reverse_mode_jacobians_still_agree(kind, tmp_path):
    _, ours, plain, x = _pair(kind, tmp_path)
    torch.testing.assert_close(jacrev(_of_input(ours))(x), jacrev(_of_input(plain))(x))
