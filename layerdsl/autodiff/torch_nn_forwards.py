"""The forwards of the torch.nn layers that a `@function` layer's subs may be, in the spec language.

`sub features = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2))` in a `@function` layer is
inlined like a spec layer (autodiff/inline.py): torch.nn builds the module and its parameters (their
names, `features.0.weight`, and their draws are torch's), the Function computes what its forward
computes, written here as a spec layer of the same name, arguments and parameters. Only the arguments
written here are inlined (a kernel size given as a tuple, `padding_mode`, `return_indices` are not).
"""

from __future__ import annotations

from functools import cache

from layerdsl.ir import nodes as N
from layerdsl.semantics.checker import check_program
from layerdsl.syntax.parser import parse_file

PATH = "<torch.nn>"

TORCH_NN_FORWARDS = """
layer Linear(in_features: int, out_features: int, bias: bool = true) {
    param weight: [out_features, in_features]
    param bias: [out_features] = zeros if bias
    example(in_features = 3, out_features = 2)
    forward(input: [..., in_features]) -> [..., out_features] {
        return input @ transpose(weight, 0, 1) + bias
    }
}

layer Conv1d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | "same" | "valid" = 0,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = true,
) {
    param weight: [out_channels, in_channels // groups, kernel_size]
    param bias: [out_channels] = zeros if bias
    example(in_channels = 2, out_channels = 2, kernel_size = 2, L = 4)
    forward(input: [..., in_channels, L]) {
        return conv1d(input, weight, bias, stride, padding, dilation, groups)
    }
}

layer Conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | "same" | "valid" = 0,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = true,
) {
    param weight: [out_channels, in_channels // groups, kernel_size, kernel_size]
    param bias: [out_channels] = zeros if bias
    example(in_channels = 2, out_channels = 2, kernel_size = 2, H = 3, W = 4)
    forward(input: [..., in_channels, H, W]) {
        return conv2d(input, weight, bias, stride, padding, dilation, groups)
    }
}

layer MaxPool1d(kernel_size: int, stride: int? = none, padding: int = 0, dilation: int = 1, ceil_mode: bool = false) {
    example(kernel_size = 2)
    forward(input) {
        return max_pool1d(input, kernel_size, stride, padding, dilation, ceil_mode)
    }
}

layer MaxPool2d(kernel_size: int, stride: int? = none, padding: int = 0, dilation: int = 1, ceil_mode: bool = false) {
    example(kernel_size = 2)
    forward(input) {
        return max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)
    }
}

layer AvgPool1d(
    kernel_size: int, stride: int? = none, padding: int = 0, ceil_mode: bool = false, count_include_pad: bool = true
) {
    example(kernel_size = 2)
    forward(input) {
        return avg_pool1d(input, kernel_size, stride, padding, ceil_mode, count_include_pad)
    }
}

layer AvgPool2d(
    kernel_size: int, stride: int? = none, padding: int = 0, ceil_mode: bool = false, count_include_pad: bool = true
) {
    example(kernel_size = 2)
    forward(input) {
        return avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad)
    }
}

layer Flatten(start_dim: int = 1, end_dim: int = -1) {
    forward(input) {
        return flatten(input, start_dim, end_dim)
    }
}

layer Dropout(p: float = 0.5, inplace: bool = false) {
    forward(input) {
        return dropout(input, p)
    }
}

layer Identity() {
    forward(input) {
        return input
    }
}

layer ReLU(inplace: bool = false) {
    forward(input) {
        return relu(input)
    }
}

layer Tanh() {
    forward(input) {
        return tanh(input)
    }
}

layer Sigmoid() {
    forward(input) {
        return sigmoid(input)
    }
}
"""


@cache
def _layers() -> dict[str, N.Layer]:
    spec = parse_file(PATH, TORCH_NN_FORWARDS)
    return dict(check_program([spec]).layers)


def torch_nn_layer(call: str) -> N.Layer | None:
    """The spec layer computing what `nn.X`'s forward computes (`call` is `nn.X`), if written here."""
    return _layers().get(call.removeprefix("nn.")) if call.startswith("nn.") else None


def inlined_torch_nn() -> list[str]:
    """The torch.nn layers written here, as `nn.X`."""
    return [f"nn.{name}" for name in _layers()] + ["nn.Sequential"]
