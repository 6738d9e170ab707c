"""Data tables besides the operation table: initialisers, `torch.nn` layers, reserved and forbidden names."""

from __future__ import annotations

import keyword
from dataclasses import dataclass


@dataclass(frozen=True)
class InitSpec:
    name: str
    params: tuple[tuple[str, str], ...]  # (name, default as spec literal)
    fan_based: bool = False
    float_only: bool = True
    doc: str = ""
    always: tuple[str, ...] = ()  # parameters whose default here differs from torch's: always written out


INITS: dict[str, InitSpec] = {
    i.name: i
    for i in (
        InitSpec("zeros", (), float_only=False, doc="fill with 0"),
        InitSpec("ones", (), float_only=False, doc="fill with 1"),
        InitSpec("constant", (("value", ""),), float_only=False, doc="fill with value"),
        InitSpec("eye", (), float_only=False, doc="the identity matrix (2-D only)"),
        InitSpec("normal", (("mean", "0"), ("std", "1")), doc="N(mean, std²)"),
        InitSpec("uniform", (("a", "0"), ("b", "1")), doc="U(a, b)"),
        InitSpec(
            "trunc_normal",
            (("mean", "0"), ("std", "0.02"), ("a", "-2"), ("b", "2")),
            doc="N(mean, std²) truncated to [a, b]",
            always=("std",),
        ),
        InitSpec("xavier_uniform", (("gain", "1"),), True, doc="U(-b, b), b = gain·√(6 / (fan_in + fan_out))"),
        InitSpec("xavier_normal", (("gain", "1"),), True, doc="N(0, σ²), σ = gain·√(2 / (fan_in + fan_out))"),
        InitSpec(
            "kaiming_uniform",
            (("a", "0"), ("mode", '"fan_in"'), ("nonlinearity", '"leaky_relu"')),
            True,
            doc="U(-b, b), b = gain·√(3 / fan), gain from the nonlinearity and a",
        ),
        InitSpec(
            "kaiming_normal",
            (("a", "0"), ("mode", '"fan_in"'), ("nonlinearity", '"leaky_relu"')),
            True,
            doc="N(0, σ²), σ = gain / √fan",
        ),
        InitSpec("orthogonal", (("gain", "1"),), doc="a (semi-)orthogonal matrix scaled by gain"),
    )
}

# torch.nn layers a `sub` may construct; True where the constructor takes device= and dtype=.
NN_LAYERS: dict[str, bool] = {
    **dict.fromkeys(
        "Linear Bilinear LazyLinear Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d "
        "BatchNorm1d BatchNorm2d BatchNorm3d LayerNorm GroupNorm InstanceNorm1d InstanceNorm2d InstanceNorm3d "
        "RMSNorm Embedding EmbeddingBag RNN LSTM GRU RNNCell LSTMCell GRUCell MultiheadAttention "
        "Transformer TransformerEncoderLayer TransformerDecoderLayer PReLU".split(),
        True,
    ),
    **dict.fromkeys(
        "Identity Sequential ModuleList ModuleDict ReLU ReLU6 LeakyReLU ELU SELU CELU GELU SiLU Mish Sigmoid Tanh "
        "Softplus Softsign Softmax LogSoftmax Hardtanh Hardswish Hardsigmoid Tanhshrink Threshold GLU "
        "Dropout Dropout1d Dropout2d Dropout3d AlphaDropout MaxPool1d MaxPool2d MaxPool3d AvgPool1d AvgPool2d AvgPool3d "
        "AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d "
        "LPPool1d LPPool2d Flatten Unflatten Upsample PixelShuffle PixelUnshuffle ZeroPad1d ZeroPad2d ConstantPad1d "
        "ConstantPad2d ReflectionPad1d ReflectionPad2d ReplicationPad1d ReplicationPad2d ChannelShuffle "
        "CosineSimilarity PairwiseDistance".split(),
        False,
    ),
}

RESERVED = frozenset(
    "layer param buffer transient sub let example forward backward update grad require return if else and or not "
    "true false none for in".split()
)

# The names a spec may not use, because the generated code has them for itself (docs/language.md, "Names").
# Every other name the generated code introduces (gradients, temporaries, `ctx` fields, the parameters of
# `setup_context` and `apply`) is chosen around the spec's names (`language.naming.fresh_name`).

# Module level: the generated module's imports, and the builtins its code calls or annotates with.
GENERATED_IMPORTS = frozenset({"torch", "nn", "F", "math", "Tensor", "annotations", "copy", "Callable"})
GENERATED_BUILTINS = frozenset(
    {"super", "ValueError", "TypeError", "int", "float", "bool", "str", "tuple", "staticmethod", "classmethod"}
    | {"max", "min"}  # written by operations' Python spellings
    | {"getattr"}  # a Function's `apply` probes torch internals that a torch release may lack
    | {"NotImplementedError"}  # and names the layer in torch's error for forward mode
    | {"isinstance", "len"}  # an `ints` argument given as one int is repeated to its length
    | {"object"}  # the annotation of an `object` argument
    | {"range", "setattr"}  # `for t in range(T)`, a list of subs; a family of params: `setattr(self, f"w_l{k}", ...)`
    | {"reversed", "list", "enumerate"}  # a loop Function's backward: `for t in reversed(range(ctx.T)):`
)
# The generated classes' public API and the language's own names: `self` and `ctx`, `__init__`'s `device`,
# `dtype` and `factory_kwargs` (as torch.nn writes them), `training`, the constants, `grad`.
GENERATED_API = frozenset({"self", "ctx", "device", "dtype", "factory_kwargs", "training", "inf", "pi", "grad"})

FORBIDDEN = GENERATED_IMPORTS | GENERATED_BUILTINS | GENERATED_API

# What a name stored on the module (`self.NAME`: an argument, member, sub or let) must not be: every public
# attribute of an `nn.Module` instance (tests/test_name_hygiene.py compares it with the installed torch).
NN_MODULE_ATTRIBUTES = frozenset(
    "T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda double "
    "dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter get_submodule half ipu "
    "load_state_dict modules mtia named_buffers named_children named_modules named_parameters parameters "
    "register_backward_hook register_buffer register_forward_hook register_forward_pre_hook "
    "register_full_backward_hook register_full_backward_pre_hook register_load_state_dict_post_hook "
    "register_load_state_dict_pre_hook register_module register_parameter register_state_dict_post_hook "
    "register_state_dict_pre_hook requires_grad_ set_extra_state set_submodule share_memory state_dict to "
    "to_empty train training type xpu zero_grad".split()
)
GENERATED_METHODS = frozenset({"reset_parameters"})  # what the generated module class adds to them

# The public attributes of an autograd.Function's `ctx`: a field the generated code keeps on `ctx` (an
# argument, a dim, a shape) is named around them (tests/test_name_hygiene.py compares it with torch).
FUNCTION_CTX_ATTRIBUTES = frozenset(
    "apply apply_boxed apply_jvp dirty_tensors mark_dirty mark_non_differentiable mark_shared_storage "
    "materialize_grads maybe_clear_saved_tensors metadata name needs_input_grad next_functions "
    "non_differentiable register_hook register_prehook requires_grad save_for_backward save_for_forward "
    "saved_for_forward saved_tensors saved_variables set_materialize_grads to_save".split()
)

PYTHON_KEYWORDS = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist)

CONSTANTS = {"pi": "math.pi", "inf": "math.inf"}

ARG_TYPES = ("int", "float", "bool", "str", "ints", "tensor", "object", "fn")
# The Python type of each argument type in generated signatures; `T?` adds `| None`. An `object` is an
# opaque Python value (torch's `LinearCrossEntropyOptions`): stored, and passed on to an operation
# parameter that takes one (`Op.objects`), nothing else.
# An `fn` is a callable of one tensor (torch's `activation=F.relu`). A spec layer's name is also an argument
# type: an instance of that layer, its own name in the signature.
PY_TYPES = {"ints": "int | tuple[int, ...]", "tensor": "Tensor", "fn": "Callable[[Tensor], Tensor]"}


def python_type(arg_type: str) -> str:
    """`float?` -> `float | None`, `ints` -> `int | tuple[int, ...]`."""
    if arg_type.startswith("[int?]"):  # ints whose entries may be none
        py = "int | tuple[int | None, ...]"
    else:
        base = arg_type.removesuffix("?").split("[")[0]
        py = PY_TYPES.get(base, base)
    return f"{py} | None" if arg_type.endswith("?") else py


DTYPES = {"float": None, "long": "torch.long", "int": "torch.int", "bool": "torch.bool"}

# Names other libraries give to what the language spells differently: an unknown operation with one of these
# names gets a hint by meaning, not by spelling. The value is what to write: an operation of the table, or a
# short text (a torch.nn layer to declare as a sub, or an expression).
OP_ALIASES: dict[str, tuple[str, ...]] = {
    "swish": ("silu",),
    "gelu_tanh": ("gelu",),
    "gelu_new": ("gelu",),
    "approx_gelu": ("gelu",),
    "soft_plus": ("softplus",),
    "softrelu": ("softplus",),
    "smooth_relu": ("softplus",),
    "logistic": ("sigmoid",),
    "expit": ("sigmoid",),
    "ln": ("log",),
    "absolute": ("abs",),
    "power": ("pow",),
    "clip": ("clamp",),
    "hardtanh": ("clamp",),
    "max": ("amax", "maximum"),
    "min": ("amin", "minimum"),
    "concat": ("cat",),
    "concatenate": ("cat",),
    "permute": ("transpose",),
    "view": ("reshape",),
    "mm": ("matmul",),
    "bmm": ("matmul",),
    "einsum": ("y[b, k] = sum[i](w[i, k] * x[b, i])",),
    "layernorm": ("layer_norm",),
    "batch_norm": ("sub norm = nn.BatchNorm1d(...)",),
    "linear": ("sub fc = nn.Linear(...)",),
    "square": ("x ** 2",),
    "zeros_like": ("new_zeros",),
    "zeros": ("new_zeros",),
    "ones_like": ("new_zeros(x, shape) + 1",),
    "ones": ("new_zeros(x, shape) + 1",),
    "reciprocal": ("1 / x",),
    "masked_fill": ("where(mask, value, x)",),
}
