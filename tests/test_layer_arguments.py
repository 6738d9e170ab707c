"""Layer-instance and callable arguments (docs/language.md, "Layer and fn arguments"), and `init parameters`:
what the generated modules do with them."""

from __future__ import annotations

import torch

from layerdsl.codegen.module import emit_file
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

from .support import compile_spec

SPEC = """
layer Block(d: int, activation: fn | "relu" | "tanh" = "relu") {
    param weight: [d, d]
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        h = x @ weight
        if activation == "relu" {
            return relu(h)
        } else if activation == "tanh" {
            return tanh(h)
        }
        return activation(h)
    }
}

layer Scale(d: int) {
    param scale: [d] = ones
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        return x * scale
    }
}

layer Stack(block: Block, num_layers: int, norm: Scale? = none) {
    sub layers = [copy(block) for i in range(num_layers)]
    sub norm = norm
    example(block = Block(3), num_layers = 2, D = 3)
    forward(x: [B, D]) -> [B, D] {
        h = x
        for b in layers {
            h = b(h)
        }
        if norm != none {
            h = norm(h)
        }
        return h
    }
}

layer Model(d: int, activation: fn | "relu" | "tanh" = "relu") {
    sub stack = Stack(Block(d, activation), 2, Scale(d))
    init parameters = xavier_uniform(gain = 2.0) if ndim > 1
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {
        return stack(x)
    }
}
"""


def source() -> str:
    spec = parse_file("stack.layer", SPEC)
    return emit_file(spec, check_program([spec]), "stack.layer", {})


def test_copies_of_a_layer_argument_are_subs_with_its_state():
    ns = compile_spec(SPEC, "stack")
    block = ns["Block"](3)
    stack = ns["Stack"](block, 3)
    assert list(stack.state_dict()) == ["layers.0.weight", "layers.1.weight", "layers.2.weight"]
    assert all(layer is not block and torch.equal(layer.weight, block.weight) for layer in stack.layers)
    assert stack.layers[0].weight.data_ptr() != stack.layers[1].weight.data_ptr()  # deep copies
    assert stack.norm is None and "block" not in dict(stack.named_children())
    x = torch.randn(2, 3)
    assert torch.allclose(stack(x), torch.relu(torch.relu(torch.relu(x @ block.weight) @ block.weight) @ block.weight))


def test_an_optional_layer_argument_is_held_as_given():
    ns = compile_spec(SPEC, "stack")
    norm = ns["Scale"](3)
    with torch.no_grad():
        norm.scale.fill_(2.0)
    stack = ns["Stack"](ns["Block"](3), 1, norm)
    assert stack.norm is norm and list(stack.state_dict()) == ["layers.0.weight", "norm.scale"]
    x = torch.randn(2, 3)
    assert torch.allclose(stack(x), 2 * torch.relu(x @ stack.layers[0].weight))


def test_an_fn_argument_is_called_and_a_string_chooses_an_operation():
    ns = compile_spec(SPEC, "stack")
    x = torch.randn(2, 3)
    torch.manual_seed(0)
    square = ns["Block"](3, lambda h: h * h)
    assert torch.allclose(square(x), (x @ square.weight) ** 2)
    tanh = ns["Block"](3, "tanh")
    assert torch.allclose(tanh(x), torch.tanh(x @ tanh.weight))
    try:
        ns["Block"](3, "gelu")
    except ValueError as exc:
        assert "must be a callable or one of 'relu', 'tanh'" in str(exc)
    else:
        raise AssertionError("an unknown string was taken")


def test_init_parameters_draws_every_matrix_again_after_the_subs():
    ns = compile_spec(SPEC, "stack")
    torch.manual_seed(5)
    model = ns["Model"](3)
    torch.manual_seed(5)
    block = ns["Block"](3)  # what the subs draw, in order: the block (copied twice), then Scale (no draw)
    ns["Scale"](3)
    expected = []
    for _ in range(2):  # then xavier_uniform(gain=2) on each matrix, in parameters() order
        expected.append(torch.nn.init.xavier_uniform_(torch.empty(3, 3), gain=2.0))
    weights = [layer.weight for layer in model.stack.layers]
    assert all(torch.equal(w, e) for w, e in zip(weights, expected))
    assert not torch.equal(weights[0], block.weight)
    assert torch.equal(model.stack.norm.scale, torch.ones(3))  # one dim: kept as its layer drew it


def test_imports_copy_and_callable_only_where_used():
    text = source()
    assert "import copy\n" in text and "from collections.abc import Callable\n" in text
    assert "activation: Callable[[Tensor], Tensor] | str = " in text
    assert "block: Block," in text and "norm: Scale | None = None," in text
    plain = parse_file("plain.layer", "layer Scale" + SPEC.split("layer Scale")[1].split("layer Stack")[0])
    plain_text = emit_file(plain, check_program([plain]), "plain.layer", {})
    assert "import copy" not in plain_text and "Callable" not in plain_text


def test_fmt_lays_out_the_new_members():
    from layerdsl.tools.fmt.formatter import format_source

    messy = (
        'layer M(d: int, act: fn|"relu" = "relu", b: Block? = none) {\n'
        "    sub layers = [copy( b ) for i in range(2)]\n"
        "    sub held=b\n"
        "    init   parameters=xavier_uniform( gain = 2.0 )if ndim>1\n"
        "    example(d = 3)\n"
        "    forward(x: [B, d]) -> [B, d] {\n        return x\n    }\n}\n"
    )
    assert format_source(messy) == (
        'layer M(d: int, act: fn | "relu" = "relu", b: Block? = none) {\n'
        "    sub layers = [copy(b) for i in range(2)]\n"
        "    sub held = b\n"
        "    init parameters = xavier_uniform(gain = 2.0) if ndim > 1\n"
        "\n"
        "    example(d = 3)\n"
        "\n"
        "    forward(x: [B, d]) -> [B, d] {\n        return x\n    }\n}\n"
    )


def test_the_docs_example_compiles_and_copies():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "language.md").read_text(encoding="utf-8")
    match = re.search(r"```layer\n(layer Block\(.*?)```", text, re.S)
    assert match, "docs/language.md has no example starting with layer Block"
    ns = compile_spec(match.group(1), "stack")
    block = ns["Block"](3)
    stack = ns["Stack"](block, 2, ns["Block"](3))
    assert list(stack.state_dict()) == ["layers.0.weight", "layers.1.weight", "norm.weight"]
    assert stack(torch.randn(2, 3)).shape == (2, 3)


def test_a_layer_argument_is_passed_on_to_a_sub():
    ns = compile_spec(
        SPEC + """
layer Wrapper(block: Block) {
    sub stack = Stack(block, 2)
    example(block = Block(3))
    forward(x: [B, 3]) -> [B, 3] {
        return stack(x)
    }
}
""",
        "stack",
    )
    block = ns["Block"](3)
    wrapper = ns["Wrapper"](block)
    assert list(wrapper.state_dict()) == ["stack.layers.0.weight", "stack.layers.1.weight"]
    assert torch.equal(wrapper.stack.layers[1].weight, block.weight)


def test_a_choice_string_with_quotes_or_braces_is_named_as_written():
    ns = compile_spec(
        """
layer Quoted(n: int, mode: int | "it's" | "a{n}b" | "c{zz}d" = 0) {
    example(n = 3)
    forward(x: [B, n]) -> [B, n] {
        return x
    }
}
""",
        "quoted",
    )
    assert ns["Quoted"](3, "a{n}b").mode == "a{n}b"
    try:
        ns["Quoted"](3, "other")
    except ValueError as exc:
        assert """one of "it's", 'a{n}b', 'c{zz}d', got 'other'""" in str(exc)
    else:
        raise AssertionError("an unknown string was taken")


def test_init_of_a_held_argument_that_may_be_none_is_skipped_when_none():
    ns = compile_spec(
        """
layer Lin(n: int) {
    param weight: [n, n]
    example(n = 3)
    forward(x: [B, n]) -> [B, n] {
        return x @ weight
    }
}

layer Held(n: int, norm: Lin? = none) {
    sub norm = norm
    init norm.weight = ones
    example(n = 3)
    forward(x: [B, n]) -> [B, n] {
        if norm != none {
            return norm(x)
        }
        return x
    }
}
""",
        "held",
    )
    assert ns["Held"](3).norm is None
    assert torch.equal(ns["Held"](3, ns["Lin"](3)).norm.weight, torch.ones(3, 3))
