"""The generated torch_nn layers against torch.nn itself, on torch's own module test samples.

PyTorch's `module_db` (torch.testing._internal.common_modules, which needs `expecttest`) gives, for each
of its modules, the constructor arguments and forward inputs its tests use. For every spec layer under
specs/torch_nn/ that names a module_db class, each sample is run through torch's module and the generated
one, in float64:

- both are built under one seed with torch's default dtype: equal tensors mean the spec initialises like
  torch's `reset_parameters` (same distributions, drawn in the same order);
- the generated module loads torch's state_dict with `strict=True` (the same names and shapes);
- in training mode: the outputs, the gradients of the float inputs and of every parameter, and every
  buffer after the step; then in eval mode, the outputs again.

A sample the spec cannot take (an argument value its types cannot hold, an input of another rank, ...) is
*unsupported*, with the reason, found from the spec before anything runs: it is counted, never skipped
silently. Any other difference is a failure. `python -m layerdsl.testing.torch_nn_parity` writes the table
of docs/torch-nn-parity.md; `--check` says whether the committed one is current.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerdsl.ir import nodes as N
from layerdsl.testing.layer_checks import Case, generate_package, layer_class
from layerdsl.testing.pages import write_or_check

DOC = Path("docs/torch-nn-parity.md")
SPEC_FOLDER = "torch_nn"

# module_db classes without a spec, and why. Every module_db class is either written or listed here.
NOT_WRITTEN: dict[str, str] = {
    "LazyConv1d": "lazy parameters (a dim taken from the first input) are not in the language: docs/language.md, Lazy parameters",
    "LazyConv2d": "lazy parameters (a dim taken from the first input) are not in the language: docs/language.md, Lazy parameters",
    "LazyConv3d": "lazy parameters (a dim taken from the first input) are not in the language: docs/language.md, Lazy parameters",
    "LazyConvTranspose1d": "lazy parameters (a dim taken from the first input) are not in the language: docs/language.md, Lazy parameters",
    "LazyConvTranspose2d": "lazy parameters (a dim taken from the first input) are not in the language: docs/language.md, Lazy parameters",
    "LazyConvTranspose3d": "lazy parameters (a dim taken from the first input) are not in the language: docs/language.md, Lazy parameters",
}


# torch.nn classes with a spec but no module_db samples: the layers another spec builds (Transformer's
# decoder). tests/test_torch_nn_parity.py compares them on samples of its own.
WITHOUT_SAMPLES = {"TransformerDecoder"}


# A torch module given to a constructor (TransformerEncoder's `encoder_layer`, its `norm`) is given to the
# generated layer as the generated layer of the same class: built from the arguments read off the instance
# (per class: each spec argument, and how torch keeps it), then loaded with the instance's state. A torch
# callable (`activation=F.gelu`) is given as it is.
TRANSFORMER_LAYER_ARGUMENTS: dict[str, Callable[[Any], Any]] = {
    "d_model": lambda m: m.linear1.in_features,
    "nhead": lambda m: m.self_attn.num_heads,
    "dim_feedforward": lambda m: m.linear1.out_features,
    "dropout": lambda m: m.dropout.p,
    "activation": lambda m: m.activation,
    "layer_norm_eps": lambda m: m.norm1.eps,
    "batch_first": lambda m: m.self_attn.batch_first,
    "norm_first": lambda m: m.norm_first,
    "bias": lambda m: m.linear1.bias is not None,
}
INSTANCE_ARGUMENTS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "TransformerEncoderLayer": TRANSFORMER_LAYER_ARGUMENTS,
    "TransformerDecoderLayer": TRANSFORMER_LAYER_ARGUMENTS,
    "LayerNorm": {
        "normalized_shape": lambda m: m.normalized_shape,
        "eps": lambda m: m.eps,
        "elementwise_affine": lambda m: m.elementwise_affine,
        "bias": lambda m: m.bias is not None,
    },
}


@dataclass
class Outcome:
    """One sample of one class: "pass", "unsupported" or "fail", and why."""

    desc: str
    result: str
    detail: str = ""


@dataclass
class ClassReport:
    name: str
    has_spec: bool
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, result: str) -> int:
        return sum(o.result == result for o in self.outcomes)

    @property
    def passed_all(self) -> bool:
        return all(o.result == "pass" for o in self.outcomes)


def module_infos() -> dict[str, Any]:
    """module_db by class name."""
    from torch.testing._internal.common_modules import module_db

    return {info.module_cls.__name__: info for info in module_db}


def samples(info) -> list:
    return info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True, training=True)


def spec_cases(cases: Iterable[Case]) -> list[Case]:
    """The layers of the specs under torch_nn/ (their modules are `torch_nn.*`)."""
    return [c for c in cases if c.module.split(".")[0] == SPEC_FOLDER]


# ------------------------------------------------------------------ what the spec can take


def unsupported(layer: N.Layer, torch_cls: type, sample) -> str | None:
    """Why the spec cannot take this sample, or None: the constructor's values against the argument
    types, the forward's values against the declared inputs."""
    ctor = sample.constructor_input
    return _constructor_problem(layer, torch_arguments(torch_cls, ctor.args, ctor.kwargs)) or _forward_problem(
        layer, sample.forward_input
    )


def torch_arguments(torch_cls: type, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The constructor's values by the names torch's signature gives them (a spec is built by keyword, so
    a positional value reaches the argument of torch's name even where torch has one the spec lacks).
    A value given as torch's own default is left out: it is what not giving it means (`options=None`)."""
    signature = inspect.signature(torch_cls)
    bound = signature.bind(*args, **kwargs).arguments
    extra = {}  # `RNN(*args, **kwargs)`: the keywords themselves (no defaults known to leave out)
    for name, parameter in signature.parameters.items():
        if parameter.kind == inspect.Parameter.VAR_KEYWORD:
            extra = bound.pop(name, {})
    values = {k: v for k, v in bound.items() if not _is_default(v, signature.parameters[k].default)}
    return values | extra


def _is_default(value, default) -> bool:
    if default is inspect.Parameter.empty or isinstance(value, torch.Tensor):
        return False
    return value is default or (type(value) is type(default) and value == default)


def _bind(names: list[str], args: tuple, kwargs: dict, what: str) -> tuple[dict, str | None]:
    if len(args) > len(names):
        return {}, f"{len(args)} positional {what}, the spec takes {len(names)}"
    bound = dict(zip(names, args))
    for k, v in kwargs.items():
        if k not in names:
            return {}, f"no {what[:-1] if what.endswith('s') else what} `{k}`"
        bound[k] = v
    return bound, None


def _constructor_problem(layer: N.Layer, values: dict[str, Any]) -> str | None:
    args = {a.name: a for a in layer.args}
    values = {k: v for k, v in values.items() if k not in ("device", "dtype")}  # every generated layer takes them
    bound, problem = _bind(list(args), (), values, "arguments")
    if problem:
        return problem
    for name, value in bound.items():
        kind, arg = _value_kind(value), args[name]
        if isinstance(value, str) and arg.choices:
            if value not in arg.choices:
                return f"`{name}` given {value!r}: not one of its strings {', '.join(map(repr, arg.choices))}"
        elif not _fits(arg.type, kind):
            article = "an" if arg.type[0] in "aeiou" else "a"
            return f"`{name}` given {kind}: {article} `{arg.type}` argument cannot hold it"
    return None


def _value_kind(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return "a tensor"
    if isinstance(value, (tuple, list)):
        if all(type(v) is int for v in value):
            return "a tuple of ints"
        if all(type(v) is int or v is None for v in value):
            return "a tuple of ints and None (None: keep the input's size)"
        return "a tuple"
    if isinstance(value, torch.nn.Module):
        return type(value).__name__  # fits a layer argument of the spec of that name
    if callable(value):
        return "a callable"
    return type(value).__name__


def _fits(declared: str, kind: str) -> bool:
    if kind == "None":
        return declared.endswith("?")
    base = declared.removesuffix("?")
    if base == "float":
        return kind in ("float", "int")
    if base.startswith("ints"):
        return kind in ("int", "a tuple of ints")
    if base == "[int?]":
        return kind in ("int", "a tuple of ints", "a tuple of ints and None (None: keep the input's size)")
    if base == "tensor":
        return kind == "a tensor"
    if base == "object":  # an opaque value, passed on as it is
        return True
    if base == "fn":
        return kind == "a callable"
    if kind in INSTANCE_ARGUMENTS:  # a torch module given as the generated layer of its class
        return base == kind
    return base == kind


def _forward_problem(layer: N.Layer, fwd) -> str | None:
    assert layer.forward is not None
    inputs = {i.name: i for i in layer.forward.inputs}
    bound, problem = _bind(list(inputs), fwd.args, fwd.kwargs, "inputs")
    if problem:
        return problem
    missing = [n for n, i in inputs.items() if n not in bound and not i.optional and i.flag is None]
    if missing:
        return f"no value for input `{missing[0]}`"
    for name, value in bound.items():
        declared = inputs[name]
        if value is None and declared.optional:
            continue
        if declared.flag is not None:  # `need_weights: bool = true`
            if not isinstance(value, bool):
                return f"input `{name}` is {_value_kind(value)}, the spec declares a bool flag"
            continue
        if declared.parts and isinstance(value, (tuple, list)) and len(value) == len(declared.parts):
            problems = (_tensor_problem(f"{name}[{k}]", v, p) for k, (v, p) in enumerate(zip(value, declared.parts)))
            problem = next((p for p in problems if p), None)
        elif declared.parts:
            problem = f"input `{name}` is {_value_kind(value)}, the spec declares a tuple of {len(declared.parts)}"
        else:
            problem = _tensor_problem(name, value, declared)
        if problem:
            return problem
    return None


def _tensor_problem(name: str, value, declared: N.Input) -> str | None:
    if declared.takes_ints and _value_kind(value) == "a tuple of ints":
        return None
    if not isinstance(value, torch.Tensor):
        return f"input `{name}` is {_value_kind(value)}"
    if declared.dtype == "float" and not value.is_floating_point():
        return f"input `{name}` is {value.dtype}, the spec declares a float input"
    if declared.alternatives:
        ranks = sorted(len(a.shape.dims) for a in declared.alternatives if a.shape is not None)
        if value.dim() not in ranks:
            return f"input `{name}` has {value.dim()} dims, the spec declares {' or '.join(map(str, ranks))}"
        return None
    if declared.shape is not None:
        rank = len(declared.shape.dims)
        if declared.shape.has_ellipsis and value.dim() < rank - 1:
            return f"input `{name}` has {value.dim()} dims, the spec needs at least {rank - 1}"
        if not declared.shape.has_ellipsis and value.dim() != rank:
            return f"input `{name}` has {value.dim()} dims, the spec declares {rank}"
    return None


# ------------------------------------------------------------------ running one sample


class Mismatch(AssertionError):
    """The generated module differs from torch's; the message says where."""


def run_sample(torch_cls: type, ours: type, sample) -> None:
    """Raises Mismatch where the generated module differs from torch's on this sample."""
    ctor = sample.constructor_input
    arguments = {k: generated_value(v, ours) for k, v in torch_arguments(torch_cls, ctor.args, ctor.kwargs).items()}
    torch.manual_seed(0)
    theirs = torch_cls(*ctor.args, **ctor.kwargs)
    torch.manual_seed(0)
    mine = ours(**arguments)
    _same_state(theirs, mine, "at construction (reset_parameters)", exact=True)
    theirs.to(torch.float64)
    mine.to(torch.float64)
    mine.load_state_dict(theirs.state_dict(), strict=True)
    for training in (True, False):
        theirs.train(training)
        mine.train(training)
        mode = "training" if training else "eval"
        out_t, grads_t = _step(theirs, sample.forward_input)
        out_m, grads_m = _step(mine, sample.forward_input)
        _close(out_t, out_m, f"{mode} output")
        for key in grads_t.keys() | grads_m.keys():
            _close(grads_t.get(key), grads_m.get(key), f"{mode} gradient of {key}")
        _same_state(theirs, mine, f"after a {mode} step")


def generated_value(value, ours: type):
    """A constructor's value for the generated layer `ours`: a torch module as the generated layer of its
    class (INSTANCE_ARGUMENTS), with the instance's state and dtype; anything else as it is."""
    if not isinstance(value, torch.nn.Module):
        return value
    cls = getattr(sys.modules[ours.__module__], type(value).__name__)
    read = INSTANCE_ARGUMENTS[type(value).__name__]
    dtype = next((p.dtype for p in value.parameters()), None)
    layer = cls(**{name: get(value) for name, get in read.items()}, dtype=dtype)
    layer.load_state_dict(value.state_dict(), strict=True)
    return layer


def _step(module: torch.nn.Module, fwd) -> tuple[list[torch.Tensor], dict[str, torch.Tensor | None]]:
    """The outputs and the gradients of the inputs and parameters for one forward and backward."""
    args = [_fresh(a) for a in fwd.args]
    kwargs = {k: _fresh(v) for k, v in fwd.kwargs.items()}
    module.zero_grad(set_to_none=True)
    outs = [o for o in _flat(module(*args, **kwargs)) if isinstance(o, torch.Tensor)]
    seed = torch.Generator().manual_seed(7)
    differentiable = [o for o in outs if o.requires_grad]
    if differentiable:
        weights = [torch.randn(o.shape, generator=seed, dtype=o.dtype) for o in differentiable]
        torch.autograd.backward(differentiable, weights)
    grads: dict[str, torch.Tensor | None] = {}
    leaves = [*enumerate(_flat(args)), *((k, v) for k, v in kwargs.items())]
    for key, value in leaves:
        if isinstance(value, torch.Tensor) and value.requires_grad:
            grads[f"input {key}"] = value.grad
    for name, p in module.named_parameters():
        grads[name] = p.grad
    return [o.detach() for o in outs], grads


def _fresh(value):
    if isinstance(value, torch.Tensor):
        copy = value.detach().clone()
        return copy.requires_grad_(value.requires_grad and value.is_floating_point())
    if isinstance(value, (tuple, list)):
        return type(value)(_fresh(v) for v in value)
    return value


def _flat(value) -> list:
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in _flat(v)]
    return [value]


def _close(a, b, what: str) -> None:
    if isinstance(a, list) or isinstance(b, list):
        if len(a) != len(b):
            raise Mismatch(f"{what}: torch gives {len(a)} tensors, the spec {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{what} {i}")
        return
    if (a is None) != (b is None):
        raise Mismatch(
            f"{what}: {'none' if a is None else 'present'} in torch, {'none' if b is None else 'present'} here"
        )
    if a is None:
        return
    try:
        torch.testing.assert_close(b, a, equal_nan=True)
    except AssertionError as exc:
        raise Mismatch(f"{what}: {str(exc).splitlines()[0]}") from None


def _same_state(theirs: torch.nn.Module, mine: torch.nn.Module, when: str, exact: bool = False) -> None:
    t, m = theirs.state_dict(), mine.state_dict()
    if list(t) != list(m):
        raise Mismatch(f"state_dict names {when}: torch {list(t)}, spec {list(m)}")
    for key in t:
        if t[key].shape != m[key].shape or t[key].dtype != m[key].dtype:
            raise Mismatch(
                f"{key} {when}: torch {t[key].dtype}{list(t[key].shape)}, spec {m[key].dtype}{list(m[key].shape)}"
            )
        if exact and not torch.equal(t[key], m[key]):
            raise Mismatch(f"{key} {when}: drawn differently from torch's")
        if not exact:
            _close(t[key], m[key], f"{key} {when}")


# ------------------------------------------------------------------ the whole run


def run(cases: Iterable[Case], package: str) -> dict[str, ClassReport]:
    """Every module_db class: the outcome of each of its samples (all unsupported for a class without a spec)."""
    infos = module_infos()
    by_name = {c.name: c for c in spec_cases(cases)}
    reports = {}
    for name, info in infos.items():
        case = by_name.get(name)
        report = ClassReport(name, case is not None)
        for i, sample in enumerate(samples(info)):
            desc = sample.desc or f"sample {i}"
            if case is None:
                report.outcomes.append(Outcome(desc, "unsupported", "no spec"))
                continue
            reason = unsupported(case.layer, info.module_cls, sample)
            if reason:
                report.outcomes.append(Outcome(desc, "unsupported", reason))
                continue
            try:
                with warnings.catch_warnings():  # torch's own (KLDivLoss's "mean", var of an empty batch)
                    warnings.simplefilter("ignore")
                    run_sample(info.module_cls, layer_class(case, package), sample)
            except Exception as exc:  # a crash of the generated module is a failure like a mismatch
                report.outcomes.append(Outcome(desc, "fail", f"{type(exc).__name__}: {exc}"))
            else:
                report.outcomes.append(Outcome(desc, "pass"))
        reports[name] = report
    return reports


def render(reports: dict[str, ClassReport]) -> str:
    """docs/torch-nn-parity.md."""
    written = {n: r for n, r in reports.items() if r.has_spec}
    total = sum(len(r.outcomes) for r in reports.values())
    passed = sum(r.count("pass") for r in reports.values())
    failed = sum(r.count("fail") for r in reports.values())
    full = sum(r.passed_all for r in written.values())
    lines = [
        "# torch.nn parity",
        "",
        "The specs of `specs/torch_nn/` against torch.nn itself, on the samples PyTorch's own module tests use",
        "(`torch.testing._internal.common_modules.module_db`), in float64, in training and eval mode: outputs,",
        "input and parameter gradients, buffers after a training step, the state_dict loaded with `strict=True`,",
        "and the tensors drawn at construction under one seed. A sample a spec cannot take is *unsupported*,",
        "with the reason. Written by `python -m layerdsl.testing.torch_nn_parity` (do not edit);",
        "`tests/test_torch_nn_parity.py` runs the same comparisons and checks that this page is current.",
        "",
        f"- classes with a spec: {len(written)} of {len(reports)} ({full} pass on every sample)",
        f"- samples passed: {passed} of {total} ({100 * passed / total:.1f}%); failed: {failed}",
        "- issue 14's targets: at least 100 classes with a passing spec, and at least 95% of the samples",
        "",
        "The suite runs each of these specs' examples through `tests/test_layers.py`'s checks (gradcheck,",
        "state_dict, reset, ...); their other configurations are torch's samples, here, rather than the",
        "configuration matrix the other shipped specs run.",
        "",
        "| class | passed | unsupported | why unsupported |",
        "| --- | ---: | ---: | --- |",
    ]
    for name in sorted(written):
        r = written[name]
        reasons = Counter(o.detail for o in r.outcomes if o.result == "unsupported")
        why = "; ".join(f"{reason} ({n})" if n > 1 else reason for reason, n in sorted(reasons.items()))
        fails = r.count("fail")
        mark = f" ({fails} FAILED)" if fails else ""
        lines.append(f"| `{name}` | {r.count('pass')}{mark} | {r.count('unsupported')} | {why} |")
    lines += ["", "## Classes not written", "", "| class | samples | why |", "| --- | ---: | --- |"]
    for name in sorted(n for n, r in reports.items() if not r.has_spec):
        why = NOT_WRITTEN.get(name, "not written yet")
        lines.append(f"| `{name}` | {len(reports[name].outcomes)} | {why} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layerdsl.testing.torch_nn_parity", description=__doc__)
    parser.add_argument("--specs", default="specs", help="the specs folder (its torch_nn/ is compared)")
    parser.add_argument("--doc", default=str(DOC), help="the page to write")
    parser.add_argument("--check", action="store_true", help="only say whether the page is current")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cases = generate_package([options.specs], Path(tmp), "layerdsl_torch_nn_parity")
        reports = run(cases, "layerdsl_torch_nn_parity")
    text = render(reports)
    doc = Path(options.doc)
    status = write_or_check(doc, text, options.check, "python -m layerdsl.testing.torch_nn_parity")
    if status is not None:
        return status
    failed = sum(r.count("fail") for r in reports.values())
    print(f"{doc} written; {failed} samples failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
