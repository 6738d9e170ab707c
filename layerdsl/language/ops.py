"""The built-in operation table: the one place that says which operations a spec may call.

Each row gives the spec name, its signature, its PyTorch spelling, its shape rule, its spelling on plain
Python numbers (for `let` constants and dims) and, per differentiable input, a derivative formula written
in the spec language itself. Formulas name the op's parameters, `grad` (the incoming gradient) and
`result` (the op's output); the derivation pass parses them once into IR and substitutes. A list
operand's formula (cat's, stack's, einsum's) is instantiated once per tensor in it, which it names `item`,
at position `index`. Helpers that exist only for formulas (`expand_reduced`, `reduced_numel`, `sum_to`,
...) are rows with `internal=True`; those with `folded=True` (`cat_offset`, `einsum_grad_equation`) are
computed where the formula is instantiated (`autodiff.formulas.FOLDS`) and never emitted. Adding an
operation is adding a row.

Shape rules: "elementwise" (broadcasts its tensor inputs), "reduce" (drops or keeps `dim`), "matmul",
"transpose", "view" (reshape family), "softmax" (same shape as input), "concat", "fft", "conv", "where",
"pool", "adaptive_pool" and "fractional_pool" (the last spatial dims), "conv_transpose", "pad", "glu" (halves `dim`),
"size" (an int read from a shape), "predicate" (a bool read from a dtype),
"loss" (`[]` for the reductions "mean" and "sum", the per-sample shape for "none"),
"opaque" (the static pass leaves the result's shape to run time).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Param:
    name: str
    default: str | None = None  # spec-language literal, or None when required
    tensor: bool = False  # a tensor operand (broadcast, differentiated)
    tensors: bool = False  # a list of tensors (cat, stack)


@dataclass(frozen=True)
class RankCase:
    """Derivative formulas that take the place of a row's own (`Op.grads`) when its operands' ranks are
    these, as the declared shapes tell them: the case of `matmul` whose vector operand the row's formulas
    would transpose. `ranks` maps tensor parameters to a pattern: "1", "2" (that rank, known), "2+" (that
    rank or more: `[b, n, m]`, `[..., n, m]`), "1?" (that rank possibly: `[n]`, `[..., n]`, a shape not
    known). A parameter the case gives no formula for takes the next case's, or the row's. A case's
    formula is the gradient at its operand's own shape: nothing is summed after it (the row's formulas
    are summed back over broadcast and batch dims)."""

    ranks: dict[str, str]
    grads: dict[str, str]
    doc: str = ""

    def applies(self, shapes: dict[str, tuple | None]) -> bool:
        """Whether every operand's static shape (None: not known) fits its pattern."""
        return all(_rank_fits(shapes.get(param), pattern) for param, pattern in self.ranks.items())

    def run_time_tests(self, shapes: dict[str, tuple | None]) -> dict[str, str] | None:
        """The operands whose declared shape allows their pattern's rank without settling it (`[..., n]`
        against "1"), each with its pattern, for a backward that asks their rank at run time; None when
        some operand's shape rules its pattern out, or is not known."""
        if not all(_rank_may_fit(shapes.get(param), pattern) for param, pattern in self.ranks.items()):
            return None
        return {p: pattern for p, pattern in self.ranks.items() if not _rank_fits(shapes.get(p), pattern)}


def _rank_may_fit(shape: tuple | None, pattern: str) -> bool:
    """Whether some rank that `shape` allows fits the pattern ("1?" and a shape not known: as `_rank_fits`)."""
    if shape is None or pattern.endswith("?") or "..." not in shape:
        return _rank_fits(shape, pattern)
    return pattern.endswith("+") or len(shape) - 1 <= int(pattern)


def _rank_fits(shape: tuple | None, pattern: str) -> bool:
    """`shape` (dims, `"..."` for any number of them; None: not known) against a `RankCase` pattern."""
    rank = int(pattern.rstrip("?+"))
    if shape is None:
        return pattern.endswith("?")
    fewest = len(shape) - ("..." in shape)  # `...` stands for any number of dims
    if pattern.endswith("+"):
        return fewest >= rank
    if "..." in shape:
        return pattern.endswith("?") and fewest <= rank
    return len(shape) == rank


@dataclass(frozen=True)
class Op:
    name: str
    params: tuple[Param, ...]
    torch: str  # the callable emitted for tensors
    shape: str
    doc: str
    grads: dict[str, str | None] = field(default_factory=dict)  # tensor param -> formula (None: no derivative)
    scalar: str | None = None  # the callable emitted when every operand is a Python number
    operator: str | None = None  # "+" etc. for the operator rows
    # "costly" results are saved for backward rather than recomputed ("random", "kept": always, never recomputed)
    cost: str = "cheap"
    internal: bool = False
    kwarg_spelling: dict[str, str] = field(default_factory=dict)  # spec keyword -> torch keyword
    positional: int | None = None  # how many leading arguments torch takes positionally (None: all)
    tensors_only: bool = False  # torch rejects plain numbers as operands
    takes_training: bool = False  # torch wants `training=` (the module's mode, or the functional form's flag)
    template: str | None = None  # how to write the call when it is not `torch(args)`: {param}, {param*} splats a list
    # how to write the call on numbers when it is not `scalar(args)`, {param} for each operand: where `scalar`
    # differs from torch at a corner (math.log raises at 0, where torch.log gives -inf)
    scalar_template: str | None = None
    inplace: str | None = None  # the Tensor method updating the first operand in place (`mul_`)
    commutes: bool = False  # the two tensor operands may swap (so either one can be updated in place)
    shape_args: tuple[int, ...] = ()  # positions of arguments read only for their shape (internal helpers)
    promotes: bool = True  # torch promotes operands of mixed dtypes (False: it raises, as matmul does)
    objects: tuple[str, ...] = ()  # parameters that take an opaque Python value (an `object` argument)
    none_entries: tuple[str, ...] = ()  # `ints` parameters whose entries may be none (a `[int?]` argument)
    int_tuples: tuple[str, ...] = ()  # tensor parameters that also take a tuple of ints (an input `T | ints`)
    # operands whose derivative torch gives only at log-probabilities over the last dim (ctc_loss's log_probs):
    # the run-time checks draw them as log_softmax(normal) and differentiate them through log_softmax
    log_probs: tuple[str, ...] = ()
    # small second results of the op's kernel that its backward reads (layer_norm's mean and rstd): under
    # @function the forward computes them with the result (the internal row `{op}_with_statistics`) and
    # saves them, each the internal row `{op}_{name}`, instead of the backward recomputing them
    statistics: tuple[str, ...] = ()
    # a backward kernel's results (every operand's gradient), of which the row's last argument `which` picks
    # one: statements asking for several of the same call become one call (`codegen.joint_gradients`)
    results: int = 1
    # the row gives (result, int64 indices of the same shape), unpacked into two names (`max_pool2d_with_indices`)
    with_indices: bool = False
    # torch's backward kernel has no derivative of its own (ctc_loss's): no double backward, derived or not
    once_differentiable: bool = False
    # formulas for particular operand ranks, in place of `grads` where the first that applies says (`RankCase`)
    rank_grads: tuple[RankCase, ...] = ()
    # a helper of a list operand's formula, computed where the formula is instantiated from what is known
    # there (an equation, a list's tensors): its call is replaced by its value (`autodiff.formulas.FOLDS`),
    # never emitted
    folded: bool = False

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def signature(self) -> str:
        parts = [p.name if p.default is None else f"{p.name} = {p.default}" for p in self.params]
        return f"{self.name}({', '.join(parts)})"


def _sig(text: str) -> tuple[Param, ...]:
    """`"input*, dim = none"`: a trailing `*` marks a tensor operand, `[]` a list of tensors."""
    params = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, default = (s.strip() for s in part.partition("="))
        tensors = name.endswith("[]")
        tensor = name.endswith("*")
        params.append(Param(name.rstrip("*[]"), default or None, tensor, tensors))
    return tuple(params)


def _unary(name, torch, doc, grad, scalar=None, scalar_template=None):
    inplace = f"{name}_" if torch == f"torch.{name}" else None
    return Op(
        name,
        _sig("input*"),
        torch,
        "elementwise",
        doc,
        {"input": grad},
        scalar,
        inplace=inplace,
        scalar_template=scalar_template,
    )


# The number spellings of torch's values where `math` raises (docs/language.md, "On plain numbers"): nan out
# of the domain, inf past the largest float (709.782712893384 is its log: math.exp raises above it), and
# floor, ceil and round keep inf and nan as they are (int() of them raises)
def _domain(spelling: str, test: str, outside: str = "math.nan") -> str:
    return f"{spelling}({{input}}) if {test} else {outside}"


_EXP_OVERFLOWS = "math.inf if {input} > 709.782712893384 else "
_FINITE = "math.isfinite({input})"

# The operators' number spellings (a field `{name^}` is an operand an arithmetic operator holds: parenthesized
# unless an atom): by a zero, `/` and `//` give a float64 tensor's ±inf (nan for 0 or nan divided), `%` nan;
# `**` gives nan where Python's is complex (a negative base, a finite exponent not an integer), ±inf where
# Python raises (a zero base and a negative exponent, a result past the largest float)
_BY_ZERO = "{{input^}} {op} {{other^}} if {{other}} else {zero}"
_INF_BY_ZERO = "{input^} * math.copysign(math.inf, {other})"
# (a zero base needs an exponent >= 0, another base one that passes no float: never one in [0, 1], the conditions
# ordered so that a constant exponent decides the most, `language/number_forms.py`)
_POWER = (
    "math.nan if {input} < 0 and math.isfinite({input}) and math.isfinite({exponent}) and {exponent^} % 1"
    " else {input^} ** {exponent^} if ({input} != 0 or not {exponent} < 0)"
    " and ({input} == 0 or 0 <= {exponent} <= 1 or not {exponent^} * math.log(abs({input})) > 709.782712893384)"
    " else math.copysign(math.inf, {input}) if {exponent^} % 2 == 1 else math.inf"
)
# torch.maximum and torch.minimum give nan where either operand is (Python's max and min, the first operand)
_NAN_PASSES = "{spelling}({{input}}, {{other}}) if {{input}} == {{input}} and {{other}} == {{other}} else math.nan"


def filled(template: str, field: Callable[[str, bool], str]) -> str:
    """A `scalar_template` with each `{name}` and `{name^}` replaced by `field(name, tight)` (tight for `^`:
    an operand of an arithmetic operator, where `{name}` is one of a comparison or a call)."""
    return re.sub(r"\{(\w+)(\^?)\}", lambda m: field(m.group(1), bool(m.group(2))), template)


def _reduction(name, torch, doc, grad, extra="", cost="costly", dim_default="none"):
    sig = f"input*, dim = {dim_default}, keepdim = false" + (f", {extra}" if extra else "")
    # torch.var/std have older overloads with `unbiased` in third place: name everything after dim.
    return Op(name, _sig(sig), torch, "reduce", doc, {"input": grad}, cost=cost, positional=2 if extra else None)


_EXPAND = "expand_reduced(grad, input, dim, keepdim)"
_MAX_POOL = "input*, kernel_size, stride = none, padding = 0, dilation = 1, ceil_mode = false"
_ADAPTIVE_POOL = "input*, output_size"
_FRACTIONAL_POOL = "input*, kernel_size, output_size = none, output_ratio = none, random_samples* = none"
_LAYER_NORM = "input*, normalized_shape, weight* = none, bias* = none, eps = 1e-5"
_GROUP_NORM = "input*, num_groups, weight* = none, bias* = none, eps = 1e-5"

TABLE: tuple[Op, ...] = (
    # -- operators: `a + b` is the row `add`, and so on
    Op(
        "add",
        _sig("input*, other*"),
        "torch.add",
        "elementwise",
        "a + b",
        {"input": "grad", "other": "grad"},
        operator="+",
        inplace="add_",
        commutes=True,
    ),
    Op(
        "sub",
        _sig("input*, other*"),
        "torch.sub",
        "elementwise",
        "a - b",
        {"input": "grad", "other": "-grad"},
        operator="-",
        inplace="sub_",
    ),
    Op(
        "mul",
        _sig("input*, other*"),
        "torch.mul",
        "elementwise",
        "a * b",
        {"input": "grad * other", "other": "grad * input"},
        operator="*",
        inplace="mul_",
        commutes=True,
    ),
    Op(
        "div",
        _sig("input*, other*"),
        "torch.div",
        "elementwise",
        "a / b",
        {"input": "grad / other", "other": "-grad * input / other ** 2"},
        operator="/",
        inplace="div_",
        scalar_template=_BY_ZERO.format(op="/", zero=_INF_BY_ZERO),
    ),
    Op(
        "floordiv",
        _sig("input*, other*"),
        "torch.floor_divide",
        "elementwise",
        "a // b",
        {"input": None, "other": None},
        operator="//",
        scalar_template=_BY_ZERO.format(op="//", zero=_INF_BY_ZERO),
    ),
    Op(
        "mod",
        _sig("input*, other*"),
        "torch.remainder",
        "elementwise",
        "a % b",
        {"input": "grad", "other": None},
        operator="%",
        scalar_template=_BY_ZERO.format(op="%", zero="math.nan"),
    ),
    Op("neg", _sig("input*"), "torch.neg", "elementwise", "-a", {"input": "-grad"}, operator="neg", inplace="neg_"),
    Op(
        "pow",
        _sig("input*, exponent*"),
        "torch.pow",
        "elementwise",
        "a ** b: elementwise power",
        {
            # torch's pow_backward_self and pow_backward_exponent, so that their double backwards are torch's
            # too: 0 where the exponent is 0 (not `0 * 0 ** -1` = nan at a zero base), 0 at a zero base and
            # an exponent >= 0 (not `1 * log(0)` = -inf, `0 * log(0)` = nan; `*` of bools: and). A `where`
            # on a number operand is a Python conditional, or a side (autodiff/reverse.py)
            "input": "where(exponent == 0, 0, grad * exponent * input ** (exponent - 1))",
            "exponent": "grad * where((input == 0) * (exponent >= 0), 0, result * log(input))",
        },
        operator="**",
        inplace="pow_",
        scalar_template=_POWER,
    ),
    Op(
        "matmul",
        _sig("input*, other*"),
        "torch.matmul",
        "matmul",
        "a @ b: matrix product (batched, broadcast)",
        {"input": "matmul(grad, transpose(other, -1, -2))", "other": "matmul(transpose(input, -1, -2), grad)"},
        operator="@",
        cost="costly",
        promotes=False,
        rank_grads=(
            RankCase(
                {"other": "1"},
                {"input": "unsqueeze(grad, -1) * other", "other": "sum_to(unsqueeze(grad, -1) * input, other)"},
                "x @ v with v a vector (a matrix-vector or a dot product): the result drops x's last dim",
            ),
            RankCase(
                {"input": "1?", "other": "2"},
                {
                    "input": "matmul(grad, transpose(other, -1, -2))",
                    "other": "matmul(transpose(flatten(unsqueeze(input, 0), 0, -2), 0, 1), flatten(unsqueeze(grad, 0), 0, -2))",
                },
                "x @ w with w a matrix and x of any rank (a vector possibly): x's gradient has x's shape already;"
                " w's is one product of x and grad as matrices of rows, which also sums over the batch dims",
            ),
            RankCase(
                {"input": "1", "other": "2+"},
                {
                    "input": "sum_to(squeeze(matmul(unsqueeze(grad, -2), transpose(other, -1, -2)), -2), input)",
                    "other": "unsqueeze(input, -1) * unsqueeze(grad, -2)",
                },
                "v @ w with v a vector and w a stack of matrices (or a matrix, declared `[..., n, m]`): the"
                " result drops w's next-to-last dim",
            ),
        ),
    ),
    # -- elementwise
    _unary("abs", "torch.abs", "absolute value", "grad * sign(input)", "abs"),
    _unary("exp", "torch.exp", "e ** x", "grad * result", "math.exp", _EXP_OVERFLOWS + "math.exp({input})"),
    Op(
        "log",
        _sig("input*"),
        "torch.log",
        "elementwise",
        "natural logarithm",
        {"input": "grad / input"},
        "math.log",
        inplace="log_",
        # torch.log's value where math.log raises: -inf at 0 (and -0.0), nan below (a number base of `**`)
        scalar_template="math.log({input}) if {input} > 0 else -math.inf if {input} == 0 else math.nan",
    ),
    _unary(
        "log1p",
        "torch.log1p",
        "log(1 + x), accurate near 0",
        "grad / (1 + input)",
        "math.log1p",
        _domain("math.log1p", "{input} > -1", "-math.inf if {input} == -1 else math.nan"),
    ),
    _unary(
        "expm1",
        "torch.expm1",
        "exp(x) - 1, accurate near 0",
        "grad * (result + 1)",
        "math.expm1",
        _EXP_OVERFLOWS + "math.expm1({input})",
    ),
    _unary(
        "sqrt", "torch.sqrt", "square root", "grad / (2 * result)", "math.sqrt", _domain("math.sqrt", "{input} >= 0")
    ),
    _unary("rsqrt", "torch.rsqrt", "1 / sqrt(x)", "-0.5 * grad * result ** 3"),
    _unary("sin", "torch.sin", "sine", "grad * cos(input)", "math.sin", _domain("math.sin", _FINITE)),
    _unary("cos", "torch.cos", "cosine", "-grad * sin(input)", "math.cos", _domain("math.cos", _FINITE)),
    _unary("tan", "torch.tan", "tangent", "grad * (1 + result ** 2)", "math.tan", _domain("math.tan", _FINITE)),
    _unary("tanh", "torch.tanh", "hyperbolic tangent", "tanh_backward(grad, result)", "math.tanh"),
    _unary("sigmoid", "torch.sigmoid", "1 / (1 + exp(-x))", "sigmoid_backward(grad, result)"),
    _unary("relu", "torch.relu", "max(x, 0)", "where(result > 0, grad, 0)"),
    _unary(
        "gelu",
        "torch.nn.functional.gelu",
        "x * Φ(x), the exact (erf) GELU",
        "grad * (0.5 * (1 + erf(input / sqrt(2))) + input * exp(-0.5 * input ** 2) / sqrt(2 * pi))",
    ),
    _unary(
        "silu",
        "torch.nn.functional.silu",
        "x * sigmoid(x)",
        "grad * sigmoid(input) * (1 + input * (1 - sigmoid(input)))",
    ),
    Op(
        "softplus",
        _sig("input*, beta = 1"),
        "torch.nn.functional.softplus",
        "elementwise",
        "log(1 + exp(beta * x)) / beta",
        {"input": "grad * sigmoid(beta * input)"},
    ),
    _unary("erf", "torch.erf", "the error function", "grad * 2 / sqrt(pi) * exp(-input ** 2)", "math.erf"),
    _unary("sign", "torch.sign", "-1, 0 or 1", None),
    _unary("round", "torch.round", "round half to even", None, "round", _domain("round", _FINITE, "{input}")),
    _unary("floor", "torch.floor", "round down", None, "math.floor", _domain("math.floor", _FINITE, "{input}")),
    _unary("ceil", "torch.ceil", "round up", None, "math.ceil", _domain("math.ceil", _FINITE, "{input}")),
    Op(
        "clamp",
        _sig("input*, min = none, max = none"),
        "torch.clamp",
        "elementwise",
        "limit to [min, max]",
        {"input": "where(result == input, grad, 0)"},
    ),
    Op(
        "where",
        _sig("condition*, input*, other*"),
        "torch.where",
        "elementwise",
        "input where condition, else other",
        {"condition": None, "input": "where(condition, grad, 0)", "other": "where(condition, 0, grad)"},
    ),
    Op(
        "maximum",
        _sig("input*, other*"),
        "torch.maximum",
        "elementwise",
        "elementwise maximum",
        {  # torch's: a tie splits grad; the smaller gets 0 even where grad is inf, a NaN passes grad both ways
            "input": "where(input < other, 0, where(input == other, grad / 2, grad))",
            "other": "where(other < input, 0, where(input == other, grad / 2, grad))",
        },
        scalar="max",
        tensors_only=True,
        scalar_template=_NAN_PASSES.format(spelling="max"),
    ),
    Op(
        "minimum",
        _sig("input*, other*"),
        "torch.minimum",
        "elementwise",
        "elementwise minimum",
        {  # as maximum's, the larger getting 0
            "input": "where(input > other, 0, where(input == other, grad / 2, grad))",
            "other": "where(other > input, 0, where(input == other, grad / 2, grad))",
        },
        scalar="min",
        tensors_only=True,
        scalar_template=_NAN_PASSES.format(spelling="min"),
    ),
    # -- reductions
    _reduction("sum", "torch.sum", "sum over dim (all dims by default)", _EXPAND),
    # Scale the reduced gradient while it is small, then expand it (a view): one full-size pass fewer.
    _reduction(
        "mean",
        "torch.mean",
        "mean over dim (all dims by default)",
        "expand_reduced(grad / reduced_numel(input, dim), input, dim, keepdim)",
    ),
    _reduction(
        "var",
        "torch.var",
        "variance over dim, with Bessel's correction by default",
        "expand_reduced(2 * grad / (reduced_numel(input, dim) - correction), input, dim, keepdim)"
        " * (input - mean(input, dim, true))",
        extra="correction = 1",
    ),
    _reduction(
        "std",
        "torch.std",
        "standard deviation over dim",
        "expand_reduced(where(result == 0, 0, grad / result) / (reduced_numel(input, dim) - correction), input, dim, keepdim)"
        " * (input - mean(input, dim, true))",
        extra="correction = 1",
    ),
    _reduction(
        "amax",
        "torch.amax",
        "maximum over dim",
        f"{_EXPAND} * extremum_mask(input, result, dim, keepdim)",
        dim_default="[]",
    ),
    _reduction(
        "amin",
        "torch.amin",
        "minimum over dim",
        f"{_EXPAND} * extremum_mask(input, result, dim, keepdim)",
        dim_default="[]",
    ),
    Op(
        "logsumexp",
        _sig("input*, dim, keepdim = false"),
        "torch.logsumexp",
        "reduce",
        "log(sum(exp(x))) over dim, stably",
        {
            "input": "expand_reduced(grad, input, dim, keepdim) * exp(input - expand_reduced(result, input, dim, keepdim))"
        },
        cost="costly",
    ),
    Op(
        "norm",
        _sig("input*, p = 2, dim = none, keepdim = false"),
        "torch.linalg.vector_norm",
        "reduce",
        "vector p-norm over dim",
        {
            # sign(x) |x|^(p-1), not x |x|^(p-2): that is 0 * inf = nan at x = 0 for p < 2 (p = 1: torch's 0)
            "input": "expand_reduced(where(result == 0, 0, grad / result ** (p - 1)), input, dim, keepdim) * sign(input) * abs(input) ** (p - 1)"
        },
        cost="costly",
        kwarg_spelling={"p": "ord"},
    ),
    Op(
        "softmax",
        _sig("input*, dim"),
        "torch.softmax",
        "softmax",
        "exp(x) / sum(exp(x)) over dim",
        {"input": "result * (grad - sum(grad * result, dim, true))"},
        cost="costly",
    ),
    Op(
        "log_softmax",
        _sig("input*, dim"),
        "torch.log_softmax",
        "softmax",
        "x - logsumexp(x) over dim",
        {"input": "grad - exp(result) * sum(grad, dim, true)"},
        cost="costly",
    ),
    # -- shapes
    Op(
        "transpose",
        _sig("input*, dim0, dim1"),
        "torch.transpose",
        "transpose",
        "swap two dims (a view)",
        {"input": "transpose(grad, dim0, dim1)"},
    ),
    Op(
        "reshape",
        _sig("input*, shape"),
        "torch.reshape",
        "view",
        "the same data in a new shape",
        {"input": "reshape(grad, shape_of(input))"},
    ),
    Op(
        "size_at",
        _sig("input*, dim"),
        "Tensor.size",
        "size",
        "the size of input's dim `dim`, an int (a loop's trip count: `for t in range(size_at(x, 0))`)",
        {"input": None},
        template="{input}.size({dim})",
    ),
    Op(
        "new_zeros",
        _sig("input*, size"),
        "Tensor.new_zeros",
        "view",
        "zeros of the given size, with input's dtype and device (input's values are not read)",
        {},  # constant zeros: no gradient flows to input
        template="{input}.new_zeros({size})",
    ),
    Op(
        "expand",
        _sig("input*, size"),
        "Tensor.expand",
        "view",
        "a view of input repeated along its dims of size 1 to the given size (-1 keeps a dim), copying nothing",
        {"input": "sum_to(grad, input)"},
        template="{input}.expand({size})",
    ),
    Op(
        "is_floating_point",
        _sig("input*"),
        "torch.is_floating_point",
        "predicate",
        "whether input's dtype is a floating-point one, a bool (an `if` on it picks by dtype: a float mask or a bool one)",
        {"input": None},
    ),
    Op(
        "flatten",
        _sig("input*, start_dim = 0, end_dim = -1"),
        "torch.flatten",
        "view",
        "merge dims start_dim..end_dim",
        {"input": "reshape(grad, shape_of(input))"},
    ),
    Op(
        "unsqueeze",
        _sig("input*, dim"),
        "torch.unsqueeze",
        "view",
        "insert a dim of size 1",
        {"input": "squeeze(grad, dim)"},
    ),
    Op(
        "squeeze",
        _sig("input*, dim = none"),
        "torch.squeeze",
        "view",
        "drop dims of size 1",
        {"input": "reshape(grad, shape_of(input))"},
    ),
    Op(
        "cat",
        _sig("tensors[], dim = 0"),
        "torch.cat",
        "concat",
        "concatenate along an existing dim",
        {"tensors": "narrow(grad, dim, cat_offset(tensors, dim, index), reduced_numel(item, dim))"},
    ),
    Op(
        "stack",
        _sig("tensors[], dim = 0"),
        "torch.stack",
        "concat",
        "stack along a new dim",
        {"tensors": "select(grad, dim, index)"},
    ),
    # -- Fourier transforms over one dim (complex results)
    Op(
        "fft",
        _sig("input*, n = none, dim = -1"),
        "torch.fft.fft",
        "fft",
        "discrete Fourier transform",
        {
            "input": "resize(ifft(grad, dim = dim) * transform_length(n, input, dim), input, dim, transform_length(n, input, dim), reduced_numel(input, dim))"
        },
        cost="costly",
    ),
    Op(
        "ifft",
        _sig("input*, n = none, dim = -1"),
        "torch.fft.ifft",
        "fft",
        "inverse discrete Fourier transform",
        {
            "input": "resize(fft(grad, dim = dim) / transform_length(n, input, dim), input, dim, transform_length(n, input, dim), reduced_numel(input, dim))"
        },
        cost="costly",
    ),
    Op(
        "rfft",
        _sig("input*, n = none, dim = -1"),
        "torch.fft.rfft",
        "fft",
        "Fourier transform of a real signal",
        {
            "input": "resize(ifft(resize(grad, input, dim, transform_length(n, input, dim) // 2 + 1, transform_length(n, input, dim)), dim = dim) * transform_length(n, input, dim), input, dim, transform_length(n, input, dim), reduced_numel(input, dim))"
        },
        cost="costly",
    ),
    Op(
        "irfft",
        _sig("input*, n = none, dim = -1"),
        "torch.fft.irfft",
        "fft",
        "inverse of rfft",
        {
            "input": "resize(rfft(grad, dim = dim) * hermitian_weights(grad, dim, reduced_numel(result, dim)) / reduced_numel(result, dim), input, dim, reduced_numel(result, dim) // 2 + 1, reduced_numel(input, dim))"
        },
        cost="costly",
    ),
    # -- neural-network ops
    Op(
        "dropout",
        _sig("input*, p = 0.5"),
        "torch.nn.functional.dropout",
        "elementwise",
        "zero elements with probability p and rescale, in training mode only",
        {"input": None},
        takes_training=True,
    ),
    Op(
        "conv1d",
        _sig("input*, weight*, bias* = none, stride = 1, padding = 0, dilation = 1, groups = 1"),
        "torch.nn.functional.conv1d",
        "conv",
        "1-D convolution (torch.nn.functional.conv1d)",
        {
            "input": "conv1d_input(input, weight, grad, stride, padding, dilation, groups)",
            "weight": "conv1d_weight(input, weight, grad, stride, padding, dilation, groups)",
            "bias": "sum(grad, dim = [0, 2])",
        },
        cost="costly",
        promotes=False,
    ),
    Op(
        "conv2d",
        _sig("input*, weight*, bias* = none, stride = 1, padding = 0, dilation = 1, groups = 1"),
        "torch.nn.functional.conv2d",
        "conv",
        "2-D convolution (torch.nn.functional.conv2d)",
        {
            "input": "conv2d_input(input, weight, grad, stride, padding, dilation, groups)",
            "weight": "conv2d_weight(input, weight, grad, stride, padding, dilation, groups)",
            "bias": "sum(grad, dim = [0, 2, 3])",
        },
        cost="costly",
        promotes=False,
    ),
    Op(
        "prelu",
        _sig("input*, weight*"),
        "torch.nn.functional.prelu",
        "softmax",
        "x where x >= 0, else weight * x, one weight per channel (dim 1) or one for all",
        {
            "input": "where(input > 0, grad, grad * channel_view(weight, input))",
            "weight": "reshape(sum_to(where(input > 0, 0, grad * input), channel_view(weight, input)), shape_of(weight))",
        },
    ),
    Op(
        "conv3d",
        _sig("input*, weight*, bias* = none, stride = 1, padding = 0, dilation = 1, groups = 1"),
        "torch.nn.functional.conv3d",
        "conv",
        "3-D convolution (torch.nn.functional.conv3d)",
        {
            "input": "conv3d_input(input, weight, grad, stride, padding, dilation, groups)",
            "weight": "conv3d_weight(input, weight, grad, stride, padding, dilation, groups)",
            "bias": "sum(grad, dim = [0, 2, 3, 4])",
        },
        cost="costly",
        promotes=False,
    ),
    # A transposed convolution is the adjoint of the convolution with the same weight: its input's gradient is
    # that convolution of the gradient, its weight's the convolution's weight gradient, input and gradient swapped.
    Op(
        "conv_transpose1d",
        _sig("input*, weight*, bias* = none, stride = 1, padding = 0, output_padding = 0, groups = 1, dilation = 1"),
        "torch.nn.functional.conv_transpose1d",
        "conv_transpose",
        "1-D transposed convolution (torch.nn.functional.conv_transpose1d)",
        {
            "input": "conv_transpose_backward(grad, input, weight, bias, stride, padding, output_padding, groups, dilation, 1, 0)",
            "weight": "conv_transpose_backward(grad, input, weight, bias, stride, padding, output_padding, groups, dilation, 1, 1)",
            "bias": "conv_transpose_backward(grad, input, weight, bias, stride, padding, output_padding, groups, dilation, 1, 2)",
        },
        cost="costly",
        promotes=False,
    ),
    Op(
        "conv_transpose2d",
        _sig("input*, weight*, bias* = none, stride = 1, padding = 0, output_padding = 0, groups = 1, dilation = 1"),
        "torch.nn.functional.conv_transpose2d",
        "conv_transpose",
        "2-D transposed convolution (torch.nn.functional.conv_transpose2d)",
        {
            "input": "conv_transpose_backward(grad, input, weight, bias, stride, padding, output_padding, groups, dilation, 2, 0)",
            "weight": "conv_transpose_backward(grad, input, weight, bias, stride, padding, output_padding, groups, dilation, 2, 1)",
            "bias": "conv_transpose_backward(grad, input, weight, bias, stride, padding, output_padding, groups, dilation, 2, 2)",
        },
        cost="costly",
        promotes=False,
    ),
    Op(
        "conv_transpose3d",
        _sig("input*, weight*, bias* = none, stride = 1, padding = 0, output_padding = 0, groups = 1, dilation = 1"),
        "torch.nn.functional.conv_transpose3d",
        "conv_transpose",
        "3-D transposed convolution (torch.nn.functional.conv_transpose3d)",
        {
            "input": "conv_transpose_backward(grad, input, weight, bias, stride, padding, output_padding, groups, dilation, 3, 0)",
            "weight": "conv_transpose_backward(grad, input, weight, bias, stride, padding, output_padding, groups, dilation, 3, 1)",
            "bias": "conv_transpose_backward(grad, input, weight, bias, stride, padding, output_padding, groups, dilation, 3, 2)",
        },
        cost="costly",
        promotes=False,
    ),
    # Max pooling's forward also returns where each maximum was (`max_pool2d_indices`, saved as int64): the
    # backward adds the gradient there, reading neither the input nor the output.
    Op(
        "max_pool1d",
        _sig("input*, kernel_size, stride = none, padding = 0, dilation = 1, ceil_mode = false"),
        "torch.nn.functional.max_pool1d",
        "pool",
        "1-D max pooling; stride defaults to kernel_size",
        {
            "input": "max_pool_backward(grad, input, indices, 1)",
        },
        cost="costly",
    ),
    Op(
        "max_pool2d",
        _sig("input*, kernel_size, stride = none, padding = 0, dilation = 1, ceil_mode = false"),
        "torch.nn.functional.max_pool2d",
        "pool",
        "2-D max pooling; stride defaults to kernel_size",
        {
            "input": "max_pool_backward(grad, input, indices, 2)",
        },
        cost="costly",
    ),
    Op(
        "max_pool3d",
        _sig("input*, kernel_size, stride = none, padding = 0, dilation = 1, ceil_mode = false"),
        "torch.nn.functional.max_pool3d",
        "pool",
        "3-D max pooling; stride defaults to kernel_size",
        {
            "input": "max_pool_backward(grad, input, indices, 3)",
        },
        cost="costly",
    ),
    Op(
        "avg_pool1d",
        _sig("input*, kernel_size, stride = none, padding = 0, ceil_mode = false, count_include_pad = true"),
        "torch.nn.functional.avg_pool1d",
        "pool",
        "1-D average pooling; stride defaults to kernel_size",
        {
            "input": "avg_pool_backward(grad, input, kernel_size, stride, padding, ceil_mode, count_include_pad, none, 1)",
        },
        cost="costly",
    ),
    Op(
        "avg_pool2d",
        _sig(
            "input*, kernel_size, stride = none, padding = 0, ceil_mode = false, count_include_pad = true, divisor_override = none"
        ),
        "torch.nn.functional.avg_pool2d",
        "pool",
        "2-D average pooling; stride defaults to kernel_size",
        {
            "input": "avg_pool_backward(grad, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, 2)",
        },
        cost="costly",
    ),
    Op(
        "avg_pool3d",
        _sig(
            "input*, kernel_size, stride = none, padding = 0, ceil_mode = false, count_include_pad = true, divisor_override = none"
        ),
        "torch.nn.functional.avg_pool3d",
        "pool",
        "3-D average pooling; stride defaults to kernel_size",
        {
            "input": "avg_pool_backward(grad, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, 3)",
        },
        cost="costly",
    ),
    # lp_pool is (kernel numel * avg_pool(x ** p)) ** (1 / p): its gradient goes back through avg_pool's.
    Op(
        "lp_pool1d",
        _sig("input*, norm_type, kernel_size, stride = none, ceil_mode = false"),
        "torch.nn.functional.lp_pool1d",
        "pool",
        "1-D power-average pooling: (sum of x ** p over each window) ** (1 / p)",
        {
            "input": "avg_pool_backward(grad * kernel_numel(kernel_size, 1) * result ** (1 - norm_type), input, kernel_size, stride, 0, ceil_mode, true, none, 1) * input ** (norm_type - 1)",
        },
        cost="costly",
    ),
    Op(
        "lp_pool2d",
        _sig("input*, norm_type, kernel_size, stride = none, ceil_mode = false"),
        "torch.nn.functional.lp_pool2d",
        "pool",
        "2-D power-average pooling: (sum of x ** p over each window) ** (1 / p)",
        {
            "input": "avg_pool_backward(grad * kernel_numel(kernel_size, 2) * result ** (1 - norm_type), input, kernel_size, stride, 0, ceil_mode, true, none, 2) * input ** (norm_type - 1)",
        },
        cost="costly",
    ),
    Op(
        "lp_pool3d",
        _sig("input*, norm_type, kernel_size, stride = none, ceil_mode = false"),
        "torch.nn.functional.lp_pool3d",
        "pool",
        "3-D power-average pooling: (sum of x ** p over each window) ** (1 / p)",
        {
            "input": "avg_pool_backward(grad * kernel_numel(kernel_size, 3) * result ** (1 - norm_type), input, kernel_size, stride, 0, ceil_mode, true, none, 3) * input ** (norm_type - 1)",
        },
        cost="costly",
    ),
    Op(
        "adaptive_avg_pool1d",
        _sig("input*, output_size"),
        "torch.nn.functional.adaptive_avg_pool1d",
        "adaptive_pool",
        "1-D adaptive average pooling to output_size (none keeps a dim)",
        {
            "input": "adaptive_avg_pool_backward(grad, input, 1)",
        },
        cost="costly",
    ),
    Op(
        "adaptive_avg_pool2d",
        _sig("input*, output_size"),
        "torch.nn.functional.adaptive_avg_pool2d",
        "adaptive_pool",
        "2-D adaptive average pooling to output_size (none keeps a dim)",
        {
            "input": "adaptive_avg_pool_backward(grad, input, 2)",
        },
        cost="costly",
        none_entries=("output_size",),
    ),
    Op(
        "adaptive_avg_pool3d",
        _sig("input*, output_size"),
        "torch.nn.functional.adaptive_avg_pool3d",
        "adaptive_pool",
        "3-D adaptive average pooling to output_size (none keeps a dim)",
        {
            "input": "adaptive_avg_pool_backward(grad, input, 3)",
        },
        cost="costly",
        none_entries=("output_size",),
    ),
    Op(
        "adaptive_max_pool1d",
        _sig("input*, output_size"),
        "torch.nn.functional.adaptive_max_pool1d",
        "adaptive_pool",
        "1-D adaptive max pooling to output_size (none keeps a dim)",
        {
            "input": "max_pool_backward(grad, input, indices, 1)",
        },
        cost="costly",
    ),
    Op(
        "adaptive_max_pool2d",
        _sig("input*, output_size"),
        "torch.nn.functional.adaptive_max_pool2d",
        "adaptive_pool",
        "2-D adaptive max pooling to output_size (none keeps a dim)",
        {
            "input": "max_pool_backward(grad, input, indices, 2)",
        },
        cost="costly",
        none_entries=("output_size",),
    ),
    Op(
        "adaptive_max_pool3d",
        _sig("input*, output_size"),
        "torch.nn.functional.adaptive_max_pool3d",
        "adaptive_pool",
        "3-D adaptive max pooling to output_size (none keeps a dim)",
        {
            "input": "max_pool_backward(grad, input, indices, 3)",
        },
        cost="costly",
        none_entries=("output_size",),
    ),
    # The pooling rows that also give where each maximum was, as torch's modules do for return_indices=True:
    # `pooled, indices = max_pool2d_with_indices(x, 2)`. Their result is unpacked, never differentiated.
    *(
        Op(
            f"max_pool{k}d_with_indices",
            _sig(_MAX_POOL),
            f"torch.nn.functional.max_pool{k}d_with_indices",
            "pool",
            f"max_pool{k}d and where each maximum is (int64, same shape, into the flattened pooled dims),"
            " unpacked into two names",
            cost="costly",
            with_indices=True,
        )
        for k in (1, 2, 3)
    ),
    *(
        Op(
            f"fractional_max_pool{k}d_with_indices",
            _sig(_FRACTIONAL_POOL),
            f"torch.nn.functional.fractional_max_pool{k}d_with_indices",
            "fractional_pool",
            f"fractional_max_pool{k}d and where each maximum is (int64, same shape), unpacked into two names",
            cost="costly",
            positional=4,
            kwarg_spelling={"random_samples": "_random_samples"},
            with_indices=True,
        )
        for k in (2, 3)
    ),
    *(
        Op(
            f"fractional_max_pool{k}d",
            _sig(_FRACTIONAL_POOL),
            f"torch.nn.functional.fractional_max_pool{k}d",
            "fractional_pool",
            f"{k}-D max pooling over pseudo-random windows to output_size (or input size * output_ratio); the"
            f" windows' offsets are random_samples [N, C, {k}] in [0, 1), drawn as torch draws them when none",
            {
                "input": f"max_pool_backward(grad, input, indices, {k})",
                "random_samples": None,
            },
            cost="costly",
            positional=4,
            kwarg_spelling={"random_samples": "_random_samples"},
        )
        for k in (2, 3)
    ),
    Op(
        "pad",
        _sig('input*, pad, mode = "constant", value = none'),
        "torch.nn.functional.pad",
        "pad",
        "pad the last dims by (left, right, top, bottom, ...): constant, reflect, replicate or circular",
        {
            "input": "pad_backward(grad, input, pad, mode)",
        },
    ),
    Op(
        "chunk",
        _sig("input*, chunks, dim = 0"),
        "torch.chunk",
        "parts",
        "input cut into `chunks` equal parts along dim, unpacked into as many names: `a, b = chunk(x, 2, dim = -1)`",
    ),
    Op(
        "split",
        _sig("input*, sizes, dim = 0"),
        "torch.split",
        "parts",
        "input cut along dim into parts of the listed sizes (or of size `sizes` each), unpacked into names",
    ),
    Op(
        "glu",
        _sig("input*, dim = -1"),
        "torch.nn.functional.glu",
        "glu",
        "a * sigmoid(b), a and b the two halves of input along dim",
        {
            "input": "glu_backward(grad, input, dim)",
        },
    ),
    Op(
        "local_response_norm",
        _sig("input*, size, alpha = 1e-4, beta = 0.75, k = 1.0"),
        "torch.nn.functional.local_response_norm",
        "softmax",
        "x / (k + alpha * mean of x ** 2 over size neighbouring channels) ** beta",
        {"input": "local_response_norm_input_grad(grad, input, size, alpha, beta, k)"},
        cost="costly",
    ),
    Op(
        "group_norm",
        _sig(_GROUP_NORM),
        "torch.nn.functional.group_norm",
        "softmax",
        "normalise each of num_groups channel groups of each sample, then scale and shift per channel",
        {
            "input": "group_norm_input_grad(grad, input, num_groups, mean, rstd, weight)",
            "weight": "channel_sum(grad * group_norm(input, num_groups, eps = eps))",
            "bias": "channel_sum(grad)",
        },
        cost="costly",
        statistics=("mean", "rstd"),
    ),
    Op(
        "cross_entropy",
        _sig('input*, target*, weight* = none, ignore_index = -100, reduction = "mean", label_smoothing = 0.0'),
        "torch.nn.functional.cross_entropy",
        "loss",
        "the cross entropy of softmax(input) against class indices or class probabilities",
        {  # a derived backward takes it as the loss over class_log_softmax(input), saved (`autodiff.tape`)
            "input": "class_log_softmax_backward(cross_entropy_log_probs_grad(grad, class_log_softmax(input), target,"
            " weight, ignore_index, reduction, label_smoothing), class_log_softmax(input))",
            "target": "cross_entropy_target_grad(grad, class_log_softmax(input), target, weight, reduction, label_smoothing)",
            "weight": None,
        },
        cost="costly",
        positional=2,
    ),
    Op(
        "linear_cross_entropy",
        _sig(
            "input*, linear_weight*, target*, linear_bias* = none, weight* = none, "
            'reduction = "mean", ignore_index = none, label_smoothing = 0.0, options = none'
        ),
        "torch.nn.functional.linear_cross_entropy",
        "opaque",
        "cross_entropy(linear(input, linear_weight, linear_bias), target, ...), chunked as `options` says",
        # derived as the cross_entropy of `input @ transpose(linear_weight, 0, 1) + linear_bias` (autodiff.tape)
        {"input": None, "linear_weight": None, "target": None, "linear_bias": None, "weight": None},
        cost="costly",
        positional=3,
        objects=("options",),
    ),
    Op(
        "prod",
        _sig("sizes"),
        "math.prod",
        "opaque",
        "the product of an `ints` argument or a list of ints (a size): `num_classes * prod(out_features)`",
        scalar="math.prod",
    ),
    Op(
        "nll_loss",
        _sig('input*, target*, weight* = none, ignore_index = -100, reduction = "mean"'),
        "torch.nn.functional.nll_loss",
        "loss",
        "the negative log likelihood of log-probabilities at class indices",
        {
            "input": "nll_loss_input_grad(grad, input, target, weight, ignore_index, reduction)",
            "target": None,
            "weight": None,
        },
        cost="costly",
        positional=2,
    ),
    Op(
        "multi_margin_loss",
        _sig('input*, target*, p = 1, margin = 1.0, weight* = none, reduction = "mean"'),
        "torch.nn.functional.multi_margin_loss",
        "loss",
        "the multi-class hinge loss of scores against class indices",
        {
            "input": "multi_margin_loss_backward(grad, input, target, p, margin, weight, reduction)",
            "target": None,
            "weight": None,
        },
        cost="costly",
        positional=2,
    ),
    Op(
        "multilabel_margin_loss",
        _sig('input*, target*, reduction = "mean"'),
        "torch.nn.functional.multilabel_margin_loss",
        "loss",
        "the multi-label hinge loss of scores against lists of class indices",
        {"input": "multilabel_margin_loss_backward(grad, input, target, reduction)", "target": None},
        cost="costly",
        positional=2,
    ),
    Op(
        "multilabel_soft_margin_loss",
        _sig('input*, target*, weight* = none, reduction = "mean"'),
        "torch.nn.functional.multilabel_soft_margin_loss",
        "loss",
        "the multi-label logistic loss of scores against 0/1 targets",
        {
            "input": "multilabel_soft_margin_loss_input_grad(grad, input, target, weight, reduction)",
            "target": "multilabel_soft_margin_loss_target_grad(grad, input, target, weight, reduction)",
            "weight": "multilabel_soft_margin_loss_weight_grad(grad, input, target, weight, reduction)",
        },
        cost="costly",
        positional=2,
    ),
    Op(
        "ctc_loss",
        _sig(
            'log_probs*, targets*, input_lengths*, target_lengths*, blank = 0, reduction = "mean", zero_infinity = false'
        ),
        "torch.nn.functional.ctc_loss",
        "loss",
        "the connectionist temporal classification loss over every alignment",
        {
            "log_probs": "ctc_loss_backward(grad, log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity)",
            "targets": None,
            "input_lengths": None,
            "target_lengths": None,
        },
        cost="costly",
        positional=4,
        log_probs=("log_probs",),
        int_tuples=("input_lengths", "target_lengths"),
        once_differentiable=True,
    ),
    Op(
        "gaussian_nll_loss",
        _sig('input*, target*, var*, full = false, eps = 1e-6, reduction = "mean"'),
        "torch.nn.functional.gaussian_nll_loss",
        "loss",
        "the negative log likelihood of target under N(input, var); var is clamped to eps, the gradient passing",
        {
            "input": "gaussian_nll_loss_input_grad(grad, input, target, var, eps, reduction)",
            "target": "-gaussian_nll_loss_input_grad(grad, input, target, var, eps, reduction)",
            "var": "gaussian_nll_loss_var_grad(grad, input, target, var, eps, reduction)",
        },
        cost="costly",
    ),
    Op(
        "layer_norm",
        _sig(_LAYER_NORM),
        "torch.nn.functional.layer_norm",
        "softmax",
        "normalise over the last dims (normalized_shape), then scale and shift elementwise",
        {
            "input": "layer_norm_backward(grad, input, normalized_shape, mean, rstd, weight, bias, 0)",
            "weight": "layer_norm_backward(grad, input, normalized_shape, mean, rstd, weight, bias, 1)",
            "bias": "layer_norm_backward(grad, input, normalized_shape, mean, rstd, weight, bias, 2)",
        },
        cost="costly",
        statistics=("mean", "rstd"),
    ),
    Op(
        "rms_norm",
        _sig("input*, normalized_shape, weight* = none, eps = none"),
        "torch.nn.functional.rms_norm",
        "softmax",
        "divide by the root mean square over the last dims (normalized_shape), then scale elementwise",
        {
            "input": "rms_norm_input_grad(grad, input, normalized_shape, weight, eps)",
            "weight": "sum_to(grad * rms_norm(input, normalized_shape, eps = eps), weight)",
        },
        cost="costly",
    ),
    # -- indices and their gathers (issue 14's ops): index tensors are integer data, never differentiated
    Op(
        "flip",
        _sig("input*, dims"),
        "torch.flip",
        "softmax",
        "reverse the order of elements along dims (x[::-1] is flip(x, 0))",
        {"input": "flip(grad, dims)"},
    ),
    Op(
        "gather",
        _sig("input*, dim, index*"),
        "torch.gather",
        "gather",
        "input[..., index[i, j], ...] along dim: the result has index's shape",
        {"input": "gather_backward(grad, input, dim, index)", "index": None},
    ),
    Op(
        "scatter",
        _sig("input*, dim, index*, src*"),
        "torch.scatter",
        "scatter",
        "input with src's elements written at index along dim",
        {"input": "scatter(grad, dim, index, 0)", "index": None, "src": "gather(grad, dim, index)"},
    ),
    Op(
        "scatter_add",
        _sig("input*, dim, index*, src*"),
        "torch.scatter_add",
        "scatter",
        "input with src's elements added at index along dim",
        {"input": "grad", "index": None, "src": "gather(grad, dim, index)"},
    ),
    Op(
        "index_select",
        _sig("input*, dim, index*"),
        "torch.index_select",
        "index_select",
        "the entries at a 1-d index along dim",
        {"input": "index_select_backward(grad, input, dim, index)", "index": None},
    ),
    Op(
        "one_hot",
        _sig("input*, num_classes = -1"),
        "torch.nn.functional.one_hot",
        "one_hot",
        "class indices as one-hot int rows (a new last dim of num_classes)",
        {"input": None},
    ),
    Op(
        "arange",
        _sig("start, end = none, step = 1"),
        "torch.arange",
        "arange",
        "the ints start, start + step, ... below end; arange(n) is 0, 1, ..., n - 1",
    ),
    Op(
        "unflatten",
        _sig("input*, dim, sizes"),
        "torch.unflatten",
        "view",
        "split dim into sizes (one of them may be -1)",
        {"input": "reshape(grad, shape_of(input))"},
    ),
    # -- a buffer's new value read after its `update`, computed again in a backward (`save = "inputs"`): no
    # gradient flows through it, as the plain module reads it from the buffer it wrote under no_grad
    Op(
        "detached",
        _sig("input*"),
        "torch.detach",
        "elementwise",
        "input, with no gradient recorded through it",
        {"input": None},
        internal=True,
    ),
    Op(
        "embedding",
        _sig("input*, weight*, padding_idx = none, max_norm = none, norm_type = 2.0, scale_grad_by_freq = false"),
        "torch.nn.functional.embedding",
        "embedding",
        "row input[...] of weight; padding_idx's row gets no gradient, max_norm renormalises the rows used",
        {"input": None, "weight": "embedding_backward(grad, input, weight, padding_idx, scale_grad_by_freq)"},
        positional=2,
    ),
    # -- their gradients: zeros of the input's shape with grad added at the indices (only the shape is read)
    Op(
        "gather_backward",
        _sig("grad*, input*, dim, index*"),
        "",
        "custom",
        "zeros of input's shape with grad added at index along dim: gather's gradient",
        internal=True,
        shape_args=(1,),
    ),
    Op(
        "index_select_backward",
        _sig("grad*, input*, dim, index*"),
        "",
        "custom",
        "zeros of input's shape with grad added at the 1-d index along dim: index_select's gradient",
        internal=True,
        shape_args=(1,),
    ),
    Op(
        "embedding_backward",
        _sig("grad*, input*, weight*, padding_idx, scale_grad_by_freq"),
        "torch.ops.aten.embedding_backward",
        "custom",
        "grad summed into the rows of weight's shape that input picks (none into padding_idx's)",
        internal=True,
        shape_args=(2,),
    ),
    Op(
        "index",
        _sig("input*, dim, index*"),
        "",
        "index",
        "input[..., index, ...]: a tensor of ints (or a bool mask) at dim, written x[:, index]",
        {"input": "index_backward(grad, input, dim, index)", "index": None},
        internal=True,
    ),
    Op(
        "index_many",
        _sig("input*, dim, indices[]"),
        "",
        "opaque",
        "input[:, i, j]: several index tensors (ints, broadcast together) at consecutive dims from dim",
        {"input": "index_many_backward(grad, input, dim, indices)", "indices": None},
        internal=True,
    ),
    Op(
        "index_many_backward",
        _sig("grad*, input*, dim, indices[]"),
        "",
        "custom",
        "zeros of input's shape with grad added at the indexed elements (index_put, accumulating)",
        internal=True,
        shape_args=(1,),
    ),
    Op(
        "index_backward",
        _sig("grad*, input*, dim, index*"),
        "",
        "custom",
        "zeros of input's shape with grad added at index along dim (index_put, accumulating): indexing's gradient",
        internal=True,
        shape_args=(1,),
    ),
    # -- the norms' statistics, computed by the forward's kernel with the result and saved (`Op.statistics`)
    *(
        Op(
            f"{norm}_with_statistics",
            _sig(sig),
            "",
            "opaque",
            f"{norm}'s result, mean and rstd in one call (torch.native_{norm})",
            internal=True,
        )
        for norm, sig in (("layer_norm", _LAYER_NORM), ("group_norm", _GROUP_NORM))
    ),
    *(
        Op(
            f"{norm}_{name}",
            _sig(sig),
            "",
            "opaque",
            f"{norm}'s {doc} per {unit}, computed with its result",
            cost="kept",
            internal=True,
        )
        for norm, sig, unit in (("layer_norm", _LAYER_NORM, "row"), ("group_norm", _GROUP_NORM, "sample and group"))
        for name, doc in (("mean", "mean"), ("rstd", "1 / standard deviation"))
    ),
    # -- cross_entropy as a derived backward sees it: the log-probabilities along the class dim (1, or 0
    # for one sample), then the loss over them
    Op(
        "class_log_softmax",
        _sig("input*"),
        "",
        "softmax",
        "log_softmax over the class dim",
        {"input": "class_log_softmax_backward(grad, result)"},
        cost="costly",
        internal=True,
    ),
    Op(
        "cross_entropy_of_log_probs",
        _sig('input*, target*, weight* = none, ignore_index = -100, reduction = "mean", label_smoothing = 0.0'),
        "",
        "loss",
        "cross_entropy of log-probabilities (nll_loss for class indices without smoothing)",
        {
            "input": "cross_entropy_log_probs_grad(grad, input, target, weight, ignore_index, reduction, label_smoothing)",
            "target": "cross_entropy_target_grad(grad, input, target, weight, reduction, label_smoothing)",
            "weight": None,
        },
        cost="costly",
        internal=True,
    ),
    Op(
        "class_unflatten",
        _sig("input*, sizes"),
        "",
        "view",
        "linear_cross_entropy's logits [..., C * d1 * ... * dK] as [..., C, d1, ..., dK] (`sizes` may spread an"
        " `ints`: K known only at construction)",
        {"input": "class_flatten(grad, sizes)"},
        internal=True,
    ),
    Op(
        "class_flatten",
        _sig("input*, sizes"),
        "",
        "view",
        "class_unflatten's gradient: the last len(sizes) dims merged into one (no shape of the logits kept)",
        {"input": "class_unflatten(grad, sizes)"},
        internal=True,
    ),
    Op(
        "layer_norm_backward",
        _sig("grad*, input*, normalized_shape, mean*, rstd*, weight*, bias*, which"),
        "",
        "custom",
        "ATen's native_layer_norm_backward: the gradient of the input (which 0), the weight (1) or the bias (2)",
        internal=True,
        results=3,
    ),
    Op(
        "conv_transpose_backward",
        _sig("grad*, input*, weight*, bias*, stride, padding, output_padding, groups, dilation, dims, which"),
        "",
        "custom",
        "ATen's convolution_backward of a `dims`-D transposed convolution: the gradient of the input (which 0),"
        " the weight (1) or the bias (2) (the bias read for its shape)",
        internal=True,
        shape_args=(3,),
        results=3,
    ),
    Op(
        "nll_loss_input_grad",
        _sig("grad*, input*, target*, weight*, ignore_index, reduction"),
        "",
        "custom",
        "-(weight[target] * grad) scattered at the targets along the class dim (the input read for its shape)",
        internal=True,
        shape_args=(1,),
    ),
    # -- the norms' and losses' gradients (`codegen.norm_loss_grads` writes each as one expression): ATen's
    # backward kernels where torch has one, given the forward's statistics where it saved them
    *(
        Op(name, _sig(sig), "", "custom", doc, internal=True)
        for name, sig, doc in (
            (
                "rms_norm_input_grad",
                "grad*, input*, normalized_shape, weight*, eps",
                "rstd * (g - x * rstd ** 2 * mean(g * x))",
            ),
            (
                "group_norm_input_grad",
                "grad*, input*, num_groups, mean*, rstd*, weight*",
                "layer norm's over each group (ATen's native_layer_norm_backward), given the saved statistics",
            ),
            ("channel_sum", "input*", "the sum over every dim but dim 1 (a per-channel parameter's gradient)"),
            (
                "local_response_norm_input_grad",
                "grad*, input*, size, alpha, beta, k",
                "g * d ** -beta - 2 * alpha * beta * x * window_mean'(g * x * d ** (-beta - 1))",
            ),
            (
                "class_log_softmax_backward",
                "grad*, result*",
                "log_softmax's gradient over the class dim from its result (ATen's _log_softmax_backward_data)",
            ),
            (
                "cross_entropy_log_probs_grad",
                "grad*, input*, target*, weight*, ignore_index, reduction, label_smoothing",
                "cross_entropy's gradient with respect to the log-probabilities (`input`)",
            ),
            (
                "cross_entropy_target_grad",
                "grad*, input*, target*, weight*, reduction, label_smoothing",
                "-(1 - label_smoothing) * weight * input * grad, for class probabilities (input: log-probabilities)",
            ),
            (
                "multi_margin_loss_backward",
                "grad*, input*, target*, p, margin, weight*, reduction",
                "ATen's multi_margin_loss_backward",
            ),
            (
                "multilabel_margin_loss_backward",
                "grad*, input*, target*, reduction",
                "ATen's multilabel_margin_loss_backward, is_target recomputed",
            ),
            (
                "multilabel_soft_margin_loss_input_grad",
                "grad*, input*, target*, weight*, reduction",
                "(sigmoid(x) - y) * weight / C * grad",
            ),
            (
                "multilabel_soft_margin_loss_target_grad",
                "grad*, input*, target*, weight*, reduction",
                "-x * weight / C * grad",
            ),
            (
                "multilabel_soft_margin_loss_weight_grad",
                "grad*, input*, target*, weight*, reduction",
                "the logistic loss of each element / C * grad, summed to weight's shape",
            ),
            (
                "ctc_loss_backward",
                "grad*, log_probs*, targets*, input_lengths*, target_lengths*, blank, reduction, zero_infinity",
                "ATen's _ctc_loss_backward, log_alpha recomputed",
            ),
            (
                "gaussian_nll_loss_input_grad",
                "grad*, input*, target*, var*, eps, reduction",
                "(input - target) / var * grad",
            ),
            (
                "gaussian_nll_loss_var_grad",
                "grad*, input*, target*, var*, eps, reduction",
                "(1 / var - (input - target) ** 2 / var ** 2) / 2 * grad, summed to var's shape",
            ),
        )
    ),
    # -- what index notation lowers to (not callable from specs)
    Op(
        "einsum",
        _sig("equation, operands[]"),
        "torch.einsum",
        "einsum",
        "a sum of products over named axes",
        {"operands": "einsum(einsum_grad_equation(equation, index), einsum_grad_operands(grad, operands, index))"},
        cost="costly",
        internal=True,
        template="torch.einsum({equation}, {operands*})",
        promotes=False,
    ),
    Op(
        "permute",
        _sig("input*, dims, inverse"),
        "torch.permute",
        "view",
        "reorder dims (a view)",
        {"input": "permute(grad, inverse, dims)"},
        internal=True,
        template="{input}.permute({dims*})",
    ),
    Op(
        "align",
        _sig("input*"),
        "",
        "view",
        "insert size-1 dims for broadcasting (a view, written x[:, None])",
        {"input": "reshape(grad, shape_of(input))"},
        internal=True,
    ),
    # -- ATen's fused derivative kernels: one pass where the formula written out takes three
    Op(
        "sigmoid_backward",
        _sig("grad_output*, output*"),
        "torch.ops.aten.sigmoid_backward",
        "elementwise",
        "grad_output * output * (1 - output)",
        {"grad_output": "sigmoid_backward(grad, output)", "output": "grad * grad_output * (1 - 2 * output)"},
        internal=True,
    ),
    Op(
        "tanh_backward",
        _sig("grad_output*, output*"),
        "torch.ops.aten.tanh_backward",
        "elementwise",
        "grad_output * (1 - output ** 2)",
        {"grad_output": "tanh_backward(grad, output)", "output": "-2 * grad * grad_output * output"},
        internal=True,
    ),
    Op(
        "addcmul",
        _sig("input*, tensor1*, tensor2*"),
        "torch.addcmul",
        "elementwise",
        "input + tensor1 * tensor2 in one pass",
        {"input": "grad", "tensor1": "grad * tensor2", "tensor2": "grad * tensor1"},
        internal=True,
        inplace="addcmul_",
    ),
    # -- helpers that only derivative formulas use
    Op(
        "expand_reduced",
        _sig("grad*, input*, dim, keepdim"),
        "",
        "custom",
        "broadcast a reduction's gradient back",
        internal=True,
        shape_args=(1,),
    ),
    Op(
        "reduced_view",
        _sig("grad*, input*, dim, keepdim"),
        "",
        "custom",
        "a reduction's gradient with the reduced dims back as size 1: broadcasts like expand_reduced",
        internal=True,
        shape_args=(1,),
    ),
    Op(
        "reduced_numel",
        _sig("input*, dim"),
        "",
        "custom",
        "how many elements a reduction combined",
        internal=True,
        shape_args=(0,),
    ),
    Op(
        "extremum_mask",
        _sig("input*, result*, dim, keepdim"),
        "",
        "custom",
        "where the extremum was, split evenly among ties",
        internal=True,
    ),
    Op("shape_of", _sig("input*"), "", "custom", "the shape of a tensor, kept on ctx", internal=True, shape_args=(0,)),
    Op(
        "sum_to",
        _sig("grad*, input*"),
        "",
        "custom",
        "sum a broadcast gradient back to an operand's shape",
        internal=True,
        shape_args=(1,),
    ),
    Op(
        "cat_offset",
        _sig("tensors[], dim, index"),
        "",
        "custom",
        "where cat's index-th tensor starts along dim: the sizes there of those before it, summed",
        internal=True,
        folded=True,
        shape_args=(0,),
    ),
    Op(
        "einsum_grad_equation",
        _sig("equation, index"),
        "",
        "custom",
        "the equation of einsum's gradient with respect to its index-th operand: the result's subscripts, then"
        " the other operands', give that operand's (`bi,ik->bk`, 0: `bk,ik->bi`)",
        internal=True,
        folded=True,
    ),
    Op(
        "einsum_grad_operands",
        _sig("grad*, operands[], index"),
        "",
        "custom",
        "grad, then the operands but the index-th: the operands of einsum_grad_equation's equation",
        internal=True,
        folded=True,
    ),
    Op(
        "narrow",
        _sig("input*, dim, start, length"),
        "torch.narrow",
        "custom",
        "length elements from start along dim",
        internal=True,
    ),
    # -- dropout as a derived backward sees it: the mask drawn once (saved as bool, never recomputed), then
    # applied; in eval mode the mask is not read and the input passes through
    Op(
        "dropout_mask",
        _sig("input*, p"),
        "",
        "elementwise",
        "the elements dropout keeps: bool, True with probability 1 - p",
        cost="random",
        internal=True,
    ),
    Op(
        "dropout_apply",
        _sig("input*, mask*, p"),
        "",
        "elementwise",
        "input where mask, scaled by 1 / (1 - p), in training mode (times 0 at p = 1); input otherwise",
        {"input": "dropout_apply(grad, mask, p)"},
        internal=True,
    ),
    # -- a convolution's gradients (torch.nn.grad: differentiable again, for double backward)
    *(
        Op(
            f"conv{k}d_{of}",
            _sig("input*, weight*, grad*, stride, padding, dilation, groups"),
            f"torch.nn.grad.conv{k}d_{of}",
            "custom",
            f"the gradient of conv{k}d's {of} (torch.nn.grad.conv{k}d_{of})",
            internal=True,
            shape_args=(0,) if of == "input" else (1,),
        )
        for k in (1, 2, 3)
        for of in ("input", "weight")
    ),
    # -- pooling's, padding's and glu's gradients (ATen's kernels: differentiable again). The input is read
    # only for its shape: ATen's kernels take a stand-in of its shape (`grad.new_empty(()).expand(shape)`).
    *(
        Op(
            f"{pool}_indices",
            _sig(_ADAPTIVE_POOL if pool.startswith("adaptive") else _MAX_POOL),
            f"torch.nn.functional.{pool}",
            "pool" if pool.startswith("max") else "adaptive_pool",
            f"where each maximum of {pool} is (int64, into the flattened pooled dims): the forward's second result",
            cost="kept",
            internal=True,
        )
        for pool in (*(f"max_pool{k}d" for k in (1, 2, 3)), *(f"adaptive_max_pool{k}d" for k in (1, 2, 3)))
    ),
    *(
        Op(
            f"fractional_max_pool{k}d_indices",
            _sig(_FRACTIONAL_POOL),
            f"torch.nn.functional.fractional_max_pool{k}d",
            "fractional_pool",
            f"where each maximum of fractional_max_pool{k}d is (int64, into the flattened pooled dims)",
            cost="random",  # the windows are drawn at random (without random_samples): never drawn twice
            internal=True,
            positional=4,
            kwarg_spelling={"random_samples": "_random_samples"},
        )
        for k in (2, 3)
    ),
    Op(
        "max_pool_backward",
        _sig("grad*, input*, indices*, dims"),
        "",
        "custom",
        "zeros of input's shape with grad added where the maxima were (indices into the last `dims` dims)",
        internal=True,
        shape_args=(1,),
    ),
    Op(
        "avg_pool_backward",
        _sig("grad*, input*, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, dims"),
        "torch.ops.aten.avg_pool2d_backward",
        "custom",
        "avg_pool's gradient (ATen's avg_pool2d_backward/avg_pool3d_backward; 1-D through 2-D)",
        internal=True,
        shape_args=(1,),
    ),
    Op(
        "adaptive_avg_pool_backward",
        _sig("grad*, input*, dims"),
        "torch.ops.aten._adaptive_avg_pool2d_backward",
        "custom",
        "adaptive_avg_pool's gradient (ATen's _adaptive_avg_pool2d_backward/3d; 1-D through 2-D)",
        internal=True,
        shape_args=(1,),
    ),
    Op(
        "pad_backward",
        _sig("grad*, input*, pad, mode"),
        "",
        "custom",
        "pad's gradient: grad cropped (constant), or folded back (ATen's reflection_/replication_padNd_backward)",
        internal=True,
        shape_args=(1,),
    ),
    Op(
        "glu_backward",
        _sig("grad*, input*, dim"),
        "torch.ops.aten.glu_backward",
        "custom",
        "glu's gradient (ATen's glu_backward)",
        internal=True,
    ),
    Op(
        "channel_view",
        _sig("weight*, input*"),
        "",
        "custom",
        "prelu's weight viewed along input's channel dim (dim 1), so that it broadcasts",
        internal=True,
        shape_args=(1,),
    ),
    Op(
        "kernel_numel",
        _sig("kernel_size, dims"),
        "",
        "custom",
        "how many elements a pooling window of kernel_size covers in `dims` dims",
        internal=True,
    ),
    # -- helpers of the Fourier transforms' formulas (the gradient of a real input is the real part)
    Op("real", _sig("input*"), "torch.real", "elementwise", "the real part", {"input": "grad"}, internal=True),
    Op(
        "conj",
        _sig("input*"),
        "torch.conj",
        "elementwise",
        "the complex conjugate",
        {"input": "conj(grad)"},
        internal=True,
    ),
    Op(
        "transform_length",
        _sig("n, input*, dim"),
        "",
        "custom",
        "the length a Fourier transform works on: n, else input's size along dim",
        internal=True,
        shape_args=(1,),
    ),
    Op(
        "resize",
        _sig("input*, like*, dim, size, length"),
        "",
        "custom",
        "input (of size `size` along dim) cut or zero-padded to `length` there; like gives the rank",
        internal=True,
        shape_args=(1,),
    ),
    Op(
        "hermitian_weights",
        _sig("grad*, dim, length"),
        "",
        "custom",
        "1, then 2 for the bins a one-sided spectrum of `length` points stands for twice, along dim",
        internal=True,
    ),
    # -- indexing and slicing, one dim per step (`x[1:, 0]` is a slice, then a select), written `x[..., a:b]`
    Op(
        "slice",
        _sig("input*, dim, start = none, end = none, step = 1"),
        "",
        "view",
        "input[start:end:step] along dim (a view)",
        {"input": "slice_backward(grad, input, dim, start, end, step)"},
        internal=True,
    ),
    Op(
        "select",
        _sig("input*, dim, index"),
        "",
        "view",
        "input[index] along dim, which it drops (a view)",
        {"input": "select_backward(grad, input, dim, index)"},
        internal=True,
    ),
    Op(
        "slice_backward",
        _sig("grad*, input*, dim, start, end, step"),
        "torch.ops.aten.slice_backward",
        "custom",
        "zeros of input's shape with grad written into the slice: slicing's gradient",
        internal=True,
        shape_args=(1,),
    ),
    Op(
        "select_backward",
        _sig("grad*, input*, dim, index"),
        "torch.ops.aten.select_backward",
        "custom",
        "zeros of input's shape with grad written at index along dim: indexing's gradient",
        internal=True,
        shape_args=(1,),
    ),
)

# Operands torch's autograd keeps when it records the op, although the derivative formula above reads only
# their shape (torch's backward kernel takes the tensor itself). A backward differentiated again must not
# update such an operand in place after the op read it; tests/unit/test_kept_by_autograd.py checks each
# entry, and each shape-only read not listed, against torch.
KEPT_BY_AUTOGRAD: dict[str, tuple[str, ...]] = {
    "gather": ("input",),
    "fft": ("input",),  # a real input: torch records _fft_r2c, which keeps it
    "rfft": ("input",),
    "layer_norm": ("bias",),
    "nll_loss": ("input",),
    "pad": ("input",),  # reflect and replicate keep it (constant and circular do not)
    **{f"{kind}_pool{d}d": ("input",) for kind in ("max", "avg", "adaptive_avg", "adaptive_max") for d in (1, 2, 3)},
    **{f"fractional_max_pool{d}d": ("input",) for d in (2, 3)},
}

OPS: dict[str, Op] = {op.name: op for op in TABLE}
OPERATORS: dict[str, Op] = {op.operator: op for op in TABLE if op.operator}
CALLABLE: dict[str, Op] = {op.name: op for op in TABLE if not op.internal and not op.operator}
# The operator rows that are also callable by name.
CALLABLE["pow"] = OPS["pow"]
CALLABLE["matmul"] = OPS["matmul"]

REDUCTIONS = ("sum", "mean", "amax", "amin")


def shape_args(call) -> tuple[int, ...]:
    """Positions of `call`'s arguments that are read only for their shape (never as values)."""
    op = OPS.get(call.func)
    return op.shape_args if op else ()  # usable as index-notation reductions
