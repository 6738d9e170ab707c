"""`@function` layers whose forward only calls subs whose own backwards derive (torch's TransformerEncoder,
TransformerDecoder and Transformer): their Function runs the subs' Functions (a copy's per copy) and their
backwards in reverse (autodiff/sub_calls.py), where inlining the subs is refused (a loop over copies of a
layer with more `if`s on arguments than one loop body takes). Against the plain modules (autograd), in
float64: outputs, first and second derivatives of the inputs and parameters, gradcheck and gradgradcheck;
and what the Function saves, against what autograd saves."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from layerdsl.autodiff.plan import plan_backwards
from layerdsl.autodiff.sub_calls import CallPlan
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file
from layerdsl.testing.layer_checks import generate_package

from .support import TORCH_NN_SPECS, compile_spec, saved_bytes

FLAGS = ["a", "b", "c", "e", "f", "g"]  # six `if`s on arguments: 64 ways through a loop's body, refused inlined

# Pair's stacks alone would inline (their copies' flags are fixed but `a`); Scale reads the size D of its
# input, which inlining refuses (`autodiff/inline.py`), so Pair composes its subs' Functions.
SMALL = (
    """
@function
layer Block(d: int, """
    + ", ".join(f"{f}: bool = true" for f in FLAGS)
    + """) {
    param w: [d, d]
    example(d = 3)
    forward(x: [..., d], m: [..., d]? = none) -> [..., d] {
        h = x @ transpose(w, 0, 1)
"""
    + "".join(
        f"        if {f} {{\n            h = h * 0.5\n        }} else {{\n            h = tanh(h)\n        }}\n"
        for f in FLAGS
    )
    + """        if m != none {
            h = h * m
        }
        return x + h
    }
}

@function
layer Norm(d: int, eps: float = 1e-5) {
    param weight: [d] = uniform(0.5, 1.5)
    example(d = 3)
    forward(x: [..., d]) -> [..., d] {
        return layer_norm(x, [d], weight, none, eps)
    }
}

@function
layer Stack(block: Block, n: int, norm: Norm? = none) {
    sub layers = [copy(block) for i in range(n)]
    sub norm = norm
    example(block = Block(3), n = 2, D = 3)
    forward(x: [..., D], m: [..., D]? = none) -> [..., D] {
        h = x
        for blk in layers {
            h = blk(h, m)
        }
        if norm != none {
            h = norm(h)
        }
        return h
    }
}

@function
layer Scale() {
    example(D = 3)
    forward(x: [..., D]) -> [..., D] {
        return x / D
    }
}

@function
layer Pair(d: int, n: int, a: bool = true) {
    sub first = Stack(Block(d, a = a), n, Norm(d))
    sub second = Stack(Block(d, b = false), n)
    sub scale = Scale()
    example(d = 3, n = 2)
    forward(x: [..., d], y: [..., d]) -> [..., d] {
        m = first(x)
        h = second(y, m)
        return scale(h)
    }
}
"""
)


@functools.cache
def small(function: bool) -> dict:
    text = SMALL if function else SMALL.replace("@function\n", "")
    return compile_spec(text, "sub_calls" if function else "sub_calls_plain")


def test_a_stack_of_copies_and_a_layer_of_stacks_compose_their_subs_functions():
    spec = parse_file("sub_calls.layer", SMALL)
    check_program([spec])
    plans, problems = plan_backwards([spec])
    assert not problems
    stack, pair = plans["Stack"], plans["Pair"]
    assert isinstance(stack, CallPlan) and isinstance(pair, CallPlan)
    assert [(c.sub, c.layer.name, c.copies, c.optional) for c in stack.calls] == [
        ("layers", "Block", True, False),
        ("norm", "Norm", False, True),
    ]
    assert [(c.sub, c.inputs, c.composed is not None) for c in pair.calls] == [
        ("first", ("x", None), True),
        ("second", ("y", "m"), True),
        ("scale", ("h",), False),
    ]
    assert not isinstance(plans["Block"], CallPlan), "a layer that derives inlined keeps its own plan"


def test_where_the_layers_it_calls_are_not_function_the_hint_says_to_put_it_there_too():
    text = SMALL.replace("@function\nlayer Block", "layer Block").replace("@function\nlayer Norm", "layer Norm")
    spec = parse_file("sub_calls.layer", text)
    check_program([spec])
    plans, problems = plan_backwards([spec])
    assert "Stack" not in plans and "Pair" not in plans
    hints = {p.message.split("inlined into ")[-1]: p.hint for p in problems}
    assert "put @function on Block and Norm too, and Stack's Function runs theirs" in hints["'Stack')"]


def _agree(a: torch.nn.Module, b: torch.nn.Module, inputs: list[torch.Tensor], **kwargs) -> None:
    """`a` (a `@function` module) and `b` (plain, same state) give equal outputs, and equal first and second
    derivatives with respect to `inputs` and their parameters."""
    results = []
    for m in (a, b):
        xs = [x.detach().clone().requires_grad_() for x in inputs]
        y = m(*xs, **kwargs)
        wrt = [*xs, *m.parameters()]
        seed = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        first = torch.autograd.grad(y, wrt, seed, create_graph=True, allow_unused=True)
        weighted = sum(
            (g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).view_as(g)).sum() for g in first if g is not None
        )
        linear = not torch.is_tensor(weighted) or not weighted.requires_grad  # a stack of nothing: the identity
        second = [None] * len(wrt) if linear else torch.autograd.grad(weighted, wrt, allow_unused=True)
        results.append([y, *first, *second])
    for got, want in zip(*results):
        if got is None and want is None:
            continue
        if got is None or want is None:  # a derivative that is zero: None on one side, zeros on the other
            assert (got if got is not None else want).abs().max() == 0
        else:
            torch.testing.assert_close(got, want)


def _checked(run, inputs: list[torch.Tensor]) -> None:
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    assert torch.autograd.gradcheck(run, inputs)
    assert torch.autograd.gradgradcheck(run, inputs)


@pytest.mark.parametrize("n", [0, 1, 3])
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("flags", [{}, {"a": False, "c": False, "f": False}])
def test_a_stack_of_copies_runs_each_copys_function(n, norm, masked, flags):
    def build(ns):
        torch.manual_seed(0)
        return ns["Stack"](ns["Block"](3, **flags), n, ns["Norm"](3) if norm else None).double()

    a, b = build(small(True)), build(small(False))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, dtype=torch.float64)
    inputs = [x, torch.rand(2, 3, dtype=torch.float64)] if masked else [x]
    y = a(*inputs)
    if n or norm:
        assert type(y.grad_fn).__name__ == "StackFunctionBackward"
    _agree(a, b, inputs)
    _checked(a, inputs)


@pytest.mark.parametrize("a_flag", [True, False])
def test_a_layer_of_stacks_runs_their_functions(a_flag):
    def build(ns):
        torch.manual_seed(0)
        return ns["Pair"](3, 2, a=a_flag).double()

    a, b = build(small(True)), build(small(False))
    b.load_state_dict(a.state_dict())
    inputs = [torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)]
    assert type(a(*inputs).grad_fn).__name__ == "PairFunctionBackward"
    _agree(a, b, inputs)
    _checked(a, inputs)


# ------------------------------------------------------------------ torch.nn's transformer stacks

FILES = ["transformer.layer", "attention.layer", "linear.layer", "layer_norm.layer"]
FUNCTIONS = [
    "TransformerEncoderLayer",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerDecoder",
    "Transformer",
    "LayerNorm",
]


@pytest.fixture(scope="module")
def torch_nn():
    """specs/torch_nn's transformer generated with `@function` on its layers and LayerNorm, then as written."""
    with tempfile.TemporaryDirectory() as tmp:
        out = []
        for function in (True, False):
            folder = Path(tmp) / ("function" if function else "plain") / "torch_nn"
            folder.mkdir(parents=True)
            for name in FILES:
                text = (TORCH_NN_SPECS / name).read_text()
                for layer in FUNCTIONS if function else []:
                    text = text.replace(f"\nlayer {layer}(", f"\n@function\nlayer {layer}(")
                (folder / name).write_text(text)
            package = f"sub_calls_{'function' if function else 'plain'}"
            generate_package([str(folder.parent)], Path(tmp) / "packages", package)
            out.append(importlib.import_module(f"{package}.torch_nn.transformer"))
        yield out[0], out[1]


def _pair(torch_nn, build):
    ours, plain = torch_nn
    torch.manual_seed(0)
    a = build(ours).double()
    torch.manual_seed(0)
    b = build(plain).double()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize(
    ("norm_first", "norm", "masked", "batch_first"),
    [(False, True, False, False), (True, False, True, False), (False, False, True, True), (True, True, False, True)],
)
def test_torch_nns_encoder_stack_derives(torch_nn, norm_first, norm, masked, batch_first):
    def build(ns):
        layer = ns.TransformerEncoderLayer(
            4, 2, dim_feedforward=6, dropout=0.0, norm_first=norm_first, batch_first=batch_first
        )
        return ns.TransformerEncoder(layer, 2, ns.LayerNorm(4) if norm else None)

    a, b = _pair(torch_nn, build)
    src = torch.randn(1, 3, 4, dtype=torch.float64) if batch_first else torch.randn(3, 1, 4, dtype=torch.float64)
    masks = {}
    if masked:
        masks = {"mask": torch.triu(torch.ones(3, 3, dtype=torch.bool), 1), "src_key_padding_mask": None}
        masks["src_key_padding_mask"] = torch.tensor([[False, False, True]])
    assert type(a(src, **masks).grad_fn).__name__ == "TransformerEncoderFunctionBackward"
    _agree(a, b, [src], **masks)
    _checked(lambda s: a(s, **masks), [src])


@pytest.mark.parametrize(("norm_first", "norm", "masked"), [(False, True, True), (True, False, False)])
def test_torch_nns_decoder_stack_derives(torch_nn, norm_first, norm, masked):
    def build(ns):
        layer = ns.TransformerDecoderLayer(4, 2, dim_feedforward=6, dropout=0.0, norm_first=norm_first)
        return ns.TransformerDecoder(layer, 2, ns.LayerNorm(4) if norm else None)

    a, b = _pair(torch_nn, build)
    tgt, memory = torch.randn(3, 1, 4, dtype=torch.float64), torch.randn(2, 1, 4, dtype=torch.float64)
    masks = {}
    if masked:
        masks = {
            "tgt_mask": torch.triu(torch.ones(3, 3, dtype=torch.bool), 1),
            "memory_key_padding_mask": torch.tensor([[False, True]]),
        }
    assert type(a(tgt, memory, **masks).grad_fn).__name__ == "TransformerDecoderFunctionBackward"
    _agree(a, b, [tgt, memory], **masks)
    _checked(lambda t, m: a(t, m, **masks), [tgt, memory])


@pytest.mark.parametrize("norm_first", [False, True])
def test_torch_nns_transformer_derives(torch_nn, norm_first):
    a, b = _pair(torch_nn, lambda ns: ns.Transformer(4, 2, 1, 1, dim_feedforward=6, dropout=0.0, norm_first=norm_first))
    src, tgt = torch.randn(2, 1, 4, dtype=torch.float64), torch.randn(2, 1, 4, dtype=torch.float64)
    masks = {"tgt_mask": torch.triu(torch.ones(2, 2, dtype=torch.bool), 1)}
    assert type(a(src, tgt, **masks).grad_fn).__name__ == "TransformerFunctionBackward"
    _agree(a, b, [src, tgt], **masks)
    _checked(lambda s, t: a(s, t, **masks), [src, tgt])


def test_the_encoder_stack_saves_no_more_than_autograd(torch_nn):
    def build(ns):
        layer = ns.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0)
        return ns.TransformerEncoder(layer, 3, ns.LayerNorm(16)).float().train()

    a, b = _pair(torch_nn, build)
    a, b = a.float(), b.float()
    x = torch.randn(10, 2, 16, requires_grad=True)
    ours, theirs = saved_bytes(lambda: a(x), a), saved_bytes(lambda: b(x), b)
    assert 0 < ours <= theirs


# ------------------------------------------------------------------ the called layers' checks, before apply


def _raised(run, *inputs: torch.Tensor) -> tuple[type, str]:
    """The error `run` raises, its spec line named by the file alone (the `@function` specs are in a folder of
    their own, `@function` lines added)."""
    with pytest.raises(Exception) as caught:
        run(*inputs)
    return caught.type, re.sub(r" at \S*/torch_nn/(\S+?):\d+", r" at \1", str(caught.value))


def test_a_stack_checks_the_input_its_first_copy_is_called_on_as_the_copys_module_does():
    def build(ns):
        torch.manual_seed(0)
        return ns["Stack"](ns["Block"](3), 2, ns["Norm"](3))

    a, b = build(small(True)), build(small(False))
    for bad in ([torch.randn(2, 5)], [torch.randn(2, 5), torch.rand(2, 5)]):  # of the size Stack binds, not d
        got, want = _raised(a, *bad), _raised(b, *bad)
        assert got == want and want[1].startswith("Block: input 'x' has size 5 at dim -1, expected d = 3")
    good = [torch.randn(2, 3), torch.rand(2, 3)]
    torch.testing.assert_close(a(*good), b(*good))


def test_torch_nns_stacks_check_their_layers_inputs_and_requires_before_apply(torch_nn):
    def encoder(ns):  # MultiheadAttention's `require embed_dim % num_heads == 0`, inlined into the layer
        return ns.TransformerEncoder(ns.TransformerEncoderLayer(4, 3, dim_feedforward=6, dropout=0.0), 2)

    a, b = _pair(torch_nn, encoder)
    src = torch.randn(3, 1, 4, dtype=torch.float64)
    got, want = _raised(a, src), _raised(b, src)
    assert got == want and "MultiheadAttention: embed_dim must be divisible by num_heads (`require" in want[1]

    def decoder(ns):  # TransformerDecoderLayer's `require tgt.ndim >= 2`
        return ns.TransformerDecoder(ns.TransformerDecoderLayer(4, 2, dim_feedforward=6, dropout=0.0), 2)

    a, b = _pair(torch_nn, decoder)
    tgt, memory = torch.randn(4, dtype=torch.float64), torch.randn(2, 1, 4, dtype=torch.float64)
    got, want = _raised(a, tgt, memory), _raised(b, tgt, memory)
    assert got == want and "TransformerDecoderLayer: tgt must have 2 dims" in want[1] and "transformer.layer" in want[1]

    a, b = _pair(torch_nn, lambda ns: ns.Transformer(4, 3, 1, 1, dim_feedforward=6, dropout=0.0))
    src, tgt = torch.randn(2, 1, 4, dtype=torch.float64), torch.randn(2, 1, 4, dtype=torch.float64)
    got, want = _raised(a, src, tgt), _raised(b, src, tgt)
    assert got == want and "MultiheadAttention: embed_dim must be divisible by num_heads (`require" in want[1]


def _checks(stmts: list[ast.stmt], guards: tuple[str, ...] = ()) -> list[frozenset[str]]:
    """The `if cond: raise` checks of `stmts` in order, each as the terms its condition and the `if`s around
    it `and`, the callable branch (autograd's forward) left out."""
    out: list[frozenset[str]] = []
    for s in stmts:
        if not isinstance(s, ast.If) or s.orelse or "callable(" in ast.unparse(s.test):
            continue
        test = s.test
        terms = test.values if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) else [test]
        found = (*guards, *(ast.dump(t) for t in terms))
        raises = len(s.body) == 1 and isinstance(s.body[0], ast.Raise)
        out += [frozenset(found)] if raises else _checks(s.body, found)
    return out


@pytest.mark.parametrize("name", ["TransformerEncoder", "TransformerDecoder", "Transformer"])
def test_a_stack_checks_each_condition_once_and_binds_nothing_it_does_not_read(torch_nn, name):
    source = textwrap.dedent(inspect.getsource(getattr(torch_nn[0], name).forward))
    body = ast.parse(source).body[0].body
    checks = _checks(body)
    assert len(checks) >= 5
    for k, check in enumerate(checks):  # an earlier check whose terms it has raised before it could
        assert not [earlier for earlier in checks[:k] if earlier <= check], sorted(check)
    tree = ast.Module(body=body, type_ignores=[])
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    renamed = [n.targets[0] for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Name)]
    assert all(isinstance(t, ast.Name) and t.id in read for t in renamed)


# The composed Function names what it adds for itself (`outs`, `k`, `inputs`, `results`, `members`, `cls`,
# `layers_end`, the counts, `out` for a returned call) around the forward's values: a stack whose value or
# input is so named composes, and agrees with the plain module.
@pytest.mark.parametrize("name", ["inputs", "results", "members", "cls", "outs", "layers_end", "out"])
def test_a_stack_whose_values_are_named_like_the_functions_own_agrees(name):
    layer = "Pair" if name == "out" else "Stack"  # Pair returns a call: its value is `out` where that is free
    start = SMALL.index(f"layer {layer}")
    end = SMALL.index("@function", start) if layer == "Stack" else len(SMALL)
    text = SMALL[:start] + re.sub(r"\bm\b" if layer == "Pair" else r"\bx\b", name, SMALL[start:end]) + SMALL[end:]
    spec = parse_file("named.layer", text)
    check_program([spec])
    plans, problems = plan_backwards([spec])
    assert [p.render() for p in problems] == [] and isinstance(plans[layer], CallPlan)
    a, b = (compile_spec(t, f"named_{name}_{k}") for k, t in enumerate([text, text.replace("@function\n", "")]))
    torch.manual_seed(0)
    if layer == "Pair":
        made = [ns["Pair"](3, 1).double() for ns in (a, b)]
    else:
        made = [ns["Stack"](ns["Block"](3), 2, ns["Norm"](3)).double() for ns in (a, b)]
    made[1].load_state_dict(made[0].state_dict())
    inputs = [torch.randn(2, 3, dtype=torch.float64), torch.rand(2, 3, dtype=torch.float64)]
    assert type(made[0](*inputs).grad_fn).__name__ == f"{layer}FunctionBackward"
    _agree(*made, inputs)
    _checked(made[0], inputs)


# `@function(save = "inputs")` on a layer whose Function composes its subs': each call saves what its own
# layer's Function saves, so the policy is refused where it is written, with the way out.
def test_save_inputs_on_a_composed_stack_is_a_located_error():
    text = SMALL.replace("@function\nlayer Stack", '@function(save = "inputs")\nlayer Stack')
    spec = parse_file("saved.layer", text)
    check_program([spec])
    plans, problems = plan_backwards([spec])
    line = text.splitlines().index('@function(save = "inputs")') + 1
    (error,) = [p.render() for p in problems]
    assert error.startswith(f"saved.layer:{line}:11: error: save = \"inputs\" is not taken by 'Stack'")
    assert 'hint: drop `save = "inputs"` here; Block or Norm may take it' in error
    assert "Stack" not in plans


# A called Function's number of outputs is written with it (`n_outputs`), not read at run time from its
# backward's code: as many as its backward takes gradients, a Function of several outputs and of one alike.
def test_each_called_function_says_how_many_outputs_it_returns():
    ns = small(True)
    for name in ["BlockFunction", "NormFunction", "ScaleFunction"]:
        function = ns[name]
        assert function.n_outputs == function.backward.__code__.co_argcount - 1
    assert "co_argcount" not in ns["SOURCE"]
