"""specs/torch_nn/ against torch.nn on torch's own module test samples (layerdsl/testing/torch_nn_parity.py).

One run compares every sample of every class (float64; training then eval): outputs, input and parameter
gradients, buffers after the step, the state_dict (strict) and the tensors drawn at construction. Each
class with a spec is a test that fails on any sample that differs; a sample the spec cannot take is
unsupported with a reason (the page lists them), never skipped silently.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("expecttest")  # torch.testing._internal.common_modules needs it

from layerdsl.testing import torch_nn_parity as parity  # noqa: E402

from .conftest import CASES, ROOT  # noqa: E402

SPEC_CLASSES = sorted(c.name for c in parity.spec_cases(CASES.values()))
SAMPLED_CLASSES = [name for name in SPEC_CLASSES if name not in parity.WITHOUT_SAMPLES]  # the others: tests below


@pytest.fixture(scope="module")
def reports(package):
    return parity.run(CASES.values(), package)


@pytest.mark.parametrize("name", SAMPLED_CLASSES)
def test_class_matches_torch(name, reports):
    report = reports[name]
    failures = [f"{o.desc}: {o.detail}" for o in report.outcomes if o.result == "fail"]
    assert not failures, "\n".join(failures)
    assert report.count("pass") > 0, f"no sample of {name} runs: {[o.detail for o in report.outcomes]}"


def test_every_spec_names_a_module_db_class():
    """A spec under torch_nn/ is named like the torch class it stands for (else no sample would reach it)."""
    assert set(SPEC_CLASSES) <= parity.module_infos().keys() | parity.WITHOUT_SAMPLES


def test_every_class_is_written_or_explained():
    infos = parity.module_infos().keys()
    assert set(SPEC_CLASSES).isdisjoint(parity.NOT_WRITTEN), "a class with a spec is still listed as not written"
    assert infos == set(SAMPLED_CLASSES) | parity.NOT_WRITTEN.keys()
    assert parity.WITHOUT_SAMPLES <= set(SPEC_CLASSES) and parity.WITHOUT_SAMPLES.isdisjoint(infos)


def test_arguments_come_in_torch_order():
    """A spec's arguments are torch's, in torch's order (those it leaves out aside)."""
    import inspect

    import torch

    infos = parity.module_infos()
    for case in parity.spec_cases(CASES.values()):
        cls = infos[case.name].module_cls if case.name in infos else getattr(torch.nn, case.name)
        theirs = list(inspect.signature(cls.__init__).parameters)
        if theirs == ["self", "args", "kwargs"]:  # torch's RNN, GRU, LSTM: the order RNNBase and the docs give
            theirs = list(inspect.signature(torch.nn.RNNBase.__init__).parameters)
            theirs.insert(theirs.index("bias"), "nonlinearity")  # RNN's, documented after num_layers
        ours = [a.name for a in case.layer.args]
        assert set(ours) <= set(theirs), f"{case.name}: {sorted(set(ours) - set(theirs))} are not torch's"
        assert ours == sorted(ours, key=theirs.index), f"{case.name}: {ours}, torch: {theirs}"


def test_unsupported_samples_say_why(reports):
    for report in reports.values():
        for o in report.outcomes:
            assert o.result != "unsupported" or o.detail, f"{report.name} {o.desc}"


def test_an_unsupported_sample_is_found_from_the_spec():
    """A tuple where the spec has an int, a missing argument, an input of another rank: each is refused with
    the reason, before anything runs."""
    import torch
    from torch import nn
    from torch.testing._internal.common_modules import FunctionInput, ModuleInput

    linear = CASES["Linear"].layer
    sample = ModuleInput(FunctionInput((2, 3), 4), FunctionInput(torch.ones(2, 3)))
    assert (
        parity.unsupported(linear, nn.Linear, sample)
        == "`in_features` given a tuple of ints: an `int` argument cannot hold it"
    )
    conv = CASES["Conv1d"].layer  # torch's padding strings are "same" and "valid"
    sample = ModuleInput(FunctionInput(2, 2, 3, padding="full"), FunctionInput(torch.ones(2, 2, 4)))
    assert (
        parity.unsupported(conv, nn.Conv1d, sample) == "`padding` given 'full': not one of its strings 'same', 'valid'"
    )
    sample = ModuleInput(FunctionInput(2, 3, device="cpu", bias=True), FunctionInput(torch.ones(2, 3)))
    assert parity.unsupported(linear, nn.Linear, sample) is None  # every generated layer takes device=
    pool = CASES["MaxPool1d"].layer  # torch's fifth positional argument is return_indices, as the spec's
    sample = ModuleInput(FunctionInput(2, 2, 0, 1, True), FunctionInput(torch.ones(2, 3, 4)))
    assert parity.unsupported(pool, nn.MaxPool1d, sample) is None
    assert [a.name for a in pool.args][4] == "return_indices"
    softmax2d = CASES["Softmax2d"].layer
    sample = ModuleInput(FunctionInput(), FunctionInput(torch.ones(2, 3)))
    assert parity.unsupported(softmax2d, nn.Softmax2d, sample) == "input `input` has 2 dims, the spec needs at least 3"


def test_layer_and_callable_arguments_are_given_as_generated_ones(package):
    """A torch layer given to a constructor becomes the generated layer of its class, with its arguments
    and state; a callable is given as it is; an unknown module class fits no argument."""
    import torch
    from torch import nn

    encoder = parity.layer_class(CASES["TransformerEncoder"], package)
    torch.manual_seed(3)
    given = nn.TransformerEncoderLayer(4, 2, 8, 0.0, torch.nn.functional.gelu, norm_first=True, bias=False)
    ours = parity.generated_value(given, encoder)
    assert type(ours).__name__ == "TransformerEncoderLayer" and type(ours).__module__ == encoder.__module__
    assert ours.activation is torch.nn.functional.gelu and ours.norm_first and ours.linear1.bias is None
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in given.state_dict().items())
    assert parity.generated_value(torch.relu, encoder) is torch.relu
    layer = CASES["TransformerEncoder"].layer
    from torch.testing._internal.common_modules import FunctionInput, ModuleInput

    sample = ModuleInput(FunctionInput(nn.Linear(4, 4), 2), FunctionInput(torch.ones(2, 3, 4)))
    assert parity.unsupported(layer, nn.TransformerEncoder, sample) == (
        "`encoder_layer` given Linear: a `TransformerEncoderLayer` argument cannot hold it"
    )


def test_transformer_decoder_matches_torch(package):
    """TransformerDecoder has no module_db samples (Transformer's are its only ones): a few of its own, with
    and without a norm, with masks and without a batch dim, through the same comparison."""
    import torch
    from torch import nn
    from torch.testing._internal.common_modules import FunctionInput, ModuleInput

    ours = parity.layer_class(CASES["TransformerDecoder"], package)
    mask = torch.tensor([False, False, True])
    samples = []
    for batch_first, norm_first in [(False, False), (True, True)]:
        torch.manual_seed(1)
        kwargs = dict(dim_feedforward=8, dropout=0.0, batch_first=batch_first, norm_first=norm_first)
        layer = nn.TransformerDecoderLayer(4, 2, **kwargs).to(torch.float64)
        norm = nn.LayerNorm(4).to(torch.float64)
        x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
        samples += [
            ModuleInput(FunctionInput(layer, 2), FunctionInput(x, x.detach().clone())),
            ModuleInput(
                FunctionInput(layer, 2, norm),
                FunctionInput(x[0], x[0].detach().clone(), tgt_mask=mask.expand(3, 3), tgt_key_padding_mask=mask),
            ),
        ]
    for sample in samples:
        assert parity.unsupported(CASES["TransformerDecoder"].layer, nn.TransformerDecoder, sample) is None
        parity.run_sample(nn.TransformerDecoder, ours, sample)


def test_parity_page_is_current(reports):
    expected = parity.render(reports)
    page = ROOT / parity.DOC
    assert (
        page.exists() and page.read_text(encoding="utf-8") == expected
    ), "docs/torch-nn-parity.md is stale: run `python -m layerdsl.testing.torch_nn_parity`"


def test_a_wrong_spec_fails(tmp_path):
    """The comparison can fail: a Softsign that forgets the 1 in its denominator differs from torch's."""
    spec = tmp_path / "specs" / "torch_nn" / "activation.layer"
    spec.parent.mkdir(parents=True)
    spec.write_text(
        "layer Softsign() {\n    forward(input: [...]) -> [...] {\n        return input / abs(input)\n    }\n}\n"
    )
    cases = parity.generate_package([str(spec.parent.parent)], tmp_path / "out", "layerdsl_wrong_softsign")
    reports = parity.run(cases, "layerdsl_wrong_softsign")
    assert reports["Softsign"].count("fail") == len(reports["Softsign"].outcomes)
    assert "output" in reports["Softsign"].outcomes[0].detail


def test_page_path_is_the_docs_page():
    assert Path(ROOT / parity.DOC).parent.name == "docs"
