"""Loops: a list of subs is an nn.ModuleList named as torch names it; `for` over it, over `range` and over
a time dim runs as Python's `for`, and a recurrence written with it equals torch's own RNN."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from layerdsl.driver.pipeline import generate
from layerdsl.testing.layer_checks import generate_package, layer_class

DOCS = Path(__file__).resolve().parent.parent / "docs" / "language.md"


def _doc_spec(first_layer: str) -> str:
    """The docs' example spec that starts with `layer <first_layer>(`."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(rf"```layer\n(layer {first_layer}\(.*?)```", text, re.S)
    assert match, f"docs/language.md has no example starting with layer {first_layer}"
    return match.group(1)


def _build(tmp_path: Path, spec: str, name: str, package: str):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "loops.layer").write_text(spec, encoding="utf-8")
    cases = generate_package([str(tmp_path / "specs")], tmp_path, package)
    case = next(c for c in cases if c.name == name)
    return layer_class(case, package), generate([str(tmp_path / "specs")])


def test_list_of_subs_is_a_module_list_named_like_torchs(tmp_path):
    cls, outputs = _build(tmp_path, _doc_spec("Stage"), "Deep", "loops_deep")
    code = outputs[Path("loops.py")]
    compact = "".join(code.split())  # as black may split it over lines
    assert "self.layers=nn.ModuleList([Stage(d,**factory_kwargs)foriinrange(num_layers)])" in compact
    assert "for block in self.layers:" in code
    torch.manual_seed(0)
    deep = cls(3, num_layers=3)
    assert isinstance(deep.layers, torch.nn.ModuleList)
    assert list(deep.state_dict()) == ["layers.0.weight", "layers.1.weight", "layers.2.weight"]
    x = torch.randn(2, 3)
    h = x
    for stage in deep.layers:
        h = torch.tanh(h @ stage.weight)
    torch.testing.assert_close(deep(x), h)


def test_a_loop_over_a_time_dim_equals_torchs_rnn(tmp_path):
    cls, outputs = _build(tmp_path, _doc_spec("Elman"), "Elman", "loops_elman")
    code = outputs[Path("loops.py")]
    assert "for t in range(T):" in code and "outputs.append(h)" in code
    elman = cls(3, 4).double()
    rnn = torch.nn.RNN(3, 4, bias=False).double()
    rnn.load_state_dict({"weight_ih_l0": elman.weight_ih, "weight_hh_l0": elman.weight_hh})
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    ours, theirs = elman(x), rnn(x)[0]
    torch.testing.assert_close(ours, theirs)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), x)
    torch.testing.assert_close(grad_ours, grad_theirs)
    assert torch.autograd.gradcheck(elman, (x,))


FAMILY = """
layer Stacked(input_size: int, hidden_size: int, num_layers: int = 2, bias: bool = true) {
    let stdv = 1 / sqrt(hidden_size)
    for k in range(num_layers) {
        param weight_ih_l{k}: [hidden_size, input_size if k == 0 else hidden_size] = uniform(-stdv, stdv)
        param weight_hh_l{k}: [hidden_size, hidden_size] = uniform(-stdv, stdv)
        param bias_ih_l{k}: [hidden_size] = uniform(-stdv, stdv) if bias
        param bias_hh_l{k}: [hidden_size] = uniform(-stdv, stdv) if bias
    }
    example(input_size = 3, hidden_size = 4)
    forward(input: [T, B, input_size]) -> [T, B, hidden_size] {
        x = input
        for k in range(num_layers) {
            h = new_zeros(x, [B, hidden_size])
            outputs = []
            for t in range(T) {
                h = tanh(x[t] @ transpose(weight_ih_l{k}, 0, 1) + bias_ih_l{k} + h @ transpose(weight_hh_l{k}, 0, 1) + bias_hh_l{k})
                outputs.append(h)
            }
            x = stack(outputs, dim = 0)
        }
        return x
    }
}
"""


def test_a_family_of_params_is_named_registered_and_drawn_as_torchs_rnn(tmp_path):
    cls, outputs = _build(tmp_path, FAMILY, "Stacked", "loops_family")
    code = "".join(outputs[Path("loops.py")].split())
    assert 'setattr(self,f"weight_ih_l{k}",' in code and 'getattr(self,f"weight_hh_l{k}")' in code
    for layers, bias in ((1, True), (3, True), (2, False)):
        torch.manual_seed(0)
        ours = cls(3, 4, num_layers=layers, bias=bias)
        torch.manual_seed(0)
        theirs = torch.nn.RNN(3, 4, num_layers=layers, bias=bias)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        for name, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[name], value), name  # same draws, same order
        x = torch.randn(5, 2, 3)
        torch.testing.assert_close(ours(x), theirs(x)[0])
