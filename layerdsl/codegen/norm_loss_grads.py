"""The Python of the norms', losses' and transposed convolutions' gradient rows (`*_backward`, `*_grad`,
`channel_sum`, ... in the op table), and of the forward rows that compute a norm's statistics with it.

Each is one expression over what the backward has: the saved input (and target, weight), the statistics
the forward's kernel computed with the result and the Function saved (layer and group norm's mean and rstd,
cross entropy's log-probabilities), the incoming gradient and the call's numbers. Where ATen has a backward
kernel it is called; the statistics saved from the forward are not differentiable outputs of the Function,
and ATen's kernels' own double backward accounts for them. The statistics still recomputed (rms_norm's,
local_response_norm's, ctc's log_alpha, multilabel_margin's is_target) are recomputed from the saved input.

A `reduction` known when generating selects its branch; one passed at run time is a conditional expression.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from layerdsl.autodiff.formulas import parse_default
from layerdsl.ir import nodes as N
from layerdsl.ir.printer import ATOM
from layerdsl.language.ops import OPS

Render = Callable[[N.Expr], str]
Shape = Callable[[N.Expr], str]
Rank = Callable[[N.Expr], "int | None"]


class _Call:
    """One gradient call: its arguments by parameter name, rendered (`self[x]`) or as IR (`self.node(x)`)."""

    def __init__(self, c: N.Call, ex, shape: Shape, rank: Rank, absent: Collection[str] = ()):
        self.shape_of, self.rank_of, self.absent = shape, rank, absent
        params = OPS[c.func].params
        self.nodes = dict(zip([p.name for p in params], c.args)) | {k.name: k.value for k in c.kwargs}
        # a forward step leaves out the arguments at their defaults
        self.defaults = {p.name: parse_default(p.default) for p in params if p.default is not None}
        for name, default in self.defaults.items():
            self.nodes.setdefault(name, default)
        self.ex = ex

    def shape(self, name: str) -> str:
        """An operand's shape, where the backward has it (on ctx for an operand read only for its shape)."""
        node = self.nodes[name]
        return self.shape_of(node) if isinstance(node, N.Name) else f"{self.atom(name)}.shape"

    def class_dim(self, name: str) -> str:
        """The class dim of a loss's operand: 1, or 0 for one sample (class scores alone)."""
        rank = self.rank_of(self.nodes[name])
        if rank is not None:
            return "1" if rank > 1 else "0"
        return f"(1 if len({self.shape(name)}) > 1 else 0)"

    def given(self, name: str) -> bool:
        """Whether an argument differs from its default (an option worth writing)."""
        default = self.defaults.get(name)
        return default is None or self[name] != self.ex(default)

    def __getitem__(self, name: str) -> str:
        return self.ex(self.nodes[name])

    def atom(self, name: str) -> str:
        return self.ex.wrap(self.nodes[name], ATOM)

    def none(self, name: str) -> bool:
        return isinstance(self.nodes.get(name), N.NoneLit)

    def maybe_none(self, name: str) -> bool:
        """Whether an operand may be none at run time: a tensor argument of the layer (`weight: tensor? =
        none`), or one of `absent` (an optional input, a member declared with `if`)."""
        node = self.nodes.get(name)
        return isinstance(node, N.Name) and (node.ref == N.Ref.ARG or node.id in self.absent)

    def literal(self, name: str):
        e = self.nodes.get(name)
        return e.value if isinstance(e, (N.Str, N.Num, N.Bool)) else None


def norm_loss_grad(
    c: N.Call,
    ex,
    floating: dict[str, bool],
    shape: Shape | None = None,
    rank: Rank | None = None,
    absent: Collection[str] = (),
) -> str | None:
    """The Python of a call to one of the rows below, or None for any other call. `floating`: whether each
    input and tensor member is floating-point (a cross_entropy target that is holds class probabilities,
    one that is not class indices; a computed target is told apart at run time). `shape`: a tensor's shape
    as the code has it; `rank`: its static rank, None where unknown; `absent`: the leaves that may be none."""
    write = _WRITERS.get(c.func)
    if write is None:
        return None
    shape = shape or (lambda e: f"{ex.wrap(e, ATOM)}.shape")
    return write(_Call(c, ex, shape, rank or (lambda e: None), absent), floating)


# ---------------------------------------------------------------- shared pieces


def _by_reduction(a: _Call, none: str, mean: str, total: str) -> str:
    """The per-element scale of a loss's gradient: `none` when reduction is "none", `mean` for "mean",
    `total` for "sum" (a reduction passed at run time is tested there)."""
    value = a.literal("reduction")
    if value is not None:
        return {"none": none, "mean": mean}.get(value, total)
    red = a["reduction"]
    return f"({none} if {red} == 'none' else {mean} if {red} == 'mean' else {total})"


def _reduction_enum(a: _Call) -> str:
    """ATen's number for a reduction (0 none, 1 mean, 2 sum)."""
    value = a.literal("reduction")
    if value is not None:
        return str(("none", "mean", "sum").index(value))
    return f"('none', 'mean', 'sum').index({a['reduction']})"


def _tuple_shape(a: _Call, name: str) -> str:
    """A `normalized_shape` as the list ATen's kernels take (the functional form accepts an int too)."""
    node = a.nodes[name]
    if isinstance(node, N.ListExpr):
        return a[name]
    return f"(({a[name]},) if isinstance({a[name]}, int) else {a[name]})"


def _trailing_dims(a: _Call, name: str) -> str:
    """The dims a `normalized_shape` covers, counted from the end: `(-2, -1)`."""
    node = a.nodes[name]
    if isinstance(node, N.ListExpr):
        return (
            "("
            + ", ".join(str(k - len(node.items)) for k in range(len(node.items)))
            + ("," if len(node.items) == 1 else "")
            + ")"
        )
    return f"tuple(range(-len({_tuple_shape(a, name)}), 0))"


# ---------------------------------------------------------------- norms


def _layer_norm_with_statistics(a: _Call, _) -> str:
    """`out, mean, rstd = ...`: the forward's kernel, which computes the statistics anyway."""
    shape = _tuple_shape(a, "normalized_shape")
    return f"torch.native_layer_norm({a['input']}, {shape}, {a['weight']}, {a['bias']}, {a['eps']})"


def _layer_norm_statistic(index: int) -> Callable[[_Call, dict[str, bool]], str]:
    def write(a: _Call, floating: dict[str, bool]) -> str:  # alone (the forward binds it with the result)
        return f"{_layer_norm_with_statistics(a, floating)}[{index}]"

    return write


def _layer_norm(a: _Call, _) -> str:
    """Gradients from ATen's kernel, given the saved mean and rstd (its double backward differentiates
    through them: they are not differentiable outputs of the Function): the one `which` names, or those
    a mask asks for. The bias is read for its shape, when its gradient is asked for."""
    x, shape = a["input"], _tuple_shape(a, "normalized_shape")
    call = (
        f"torch.ops.aten.native_layer_norm_backward({a['grad']}, {x}, {shape}, {a['mean']}, {a['rstd']}, {a['weight']}"
    )
    if isinstance(a.nodes["which"], N.TupleExpr):  # several results (`codegen.joint_gradients`)
        return f"{call}, {a['bias']}, {a['which']})"
    which = a.literal("which")
    assert which in (0, 1, 2), "layer_norm's rows ask for the input's, the weight's or the bias's gradient"
    mask = ", ".join(str(k == which) for k in range(3))
    return f"{call}, {a['bias'] if which == 2 else None}, ({mask}))[{which}]"


def _rms_norm(a: _Call, _) -> str:
    x = a.atom("input")
    dims = _trailing_dims(a, "normalized_shape")
    eps = f"torch.finfo({x}.dtype).eps" if a.none("eps") else a["eps"]
    if a.maybe_none("eps"):  # an argument `eps: float? = none`, as torch.nn.RMSNorm's
        eps = f"(torch.finfo({x}.dtype).eps if {eps} is None else {eps})"
    rstd = f"torch.rsqrt({x}.pow(2).mean({dims}, keepdim=True) + {eps})"
    g = _weighted(a, a.atom("grad"), a.atom("weight"))
    return f"({g} - {x} * {rstd}.pow(2) * ({g} * {x}).mean({dims}, keepdim=True)) * {rstd}"


def _weighted(a: _Call, grad: str, weight: str) -> str:
    """`grad` times the norm's `weight` (as given: viewed along the channels), none where none is given."""
    if a.none("weight"):
        return grad
    if a.maybe_none("weight"):
        return f"({grad} if {a.atom('weight')} is None else {grad} * {weight})"
    return f"({grad} * {weight})"


def _channel_view(weight: str, x: str) -> str:
    """A per-channel vector viewed to broadcast along dim 1 of `x`."""
    return f"{weight}.view(-1, *(1,) * ({x}.dim() - 2))"


def _group_norm_with_statistics(a: _Call, _) -> str:
    """`out, mean, rstd = ...`: the forward's kernel; mean and rstd are [N, num_groups]."""
    x = a.atom("input")
    sizes = f"{x}.shape[0], {x}.shape[1], {x}[0, 0].numel()"  # N, C and the elements per channel
    # ATen's kernel takes a contiguous input only (F.group_norm makes it so first)
    return (
        f"torch.native_group_norm({x}.contiguous(), {a['weight']}, {a['bias']}, {sizes}, {a['num_groups']}, {a['eps']})"
    )


def _group_norm_statistic(index: int) -> Callable[[_Call, dict[str, bool]], str]:
    def write(a: _Call, floating: dict[str, bool]) -> str:  # alone (the forward binds it with the result)
        return f"{_group_norm_with_statistics(a, floating)}[{index}]"

    return write


def _group_norm(a: _Call, _) -> str:
    """Layer norm's gradient over each sample's groups, given the saved statistics (ATen's group norm
    backward has no double backward; layer norm's has)."""
    x, groups, grad = a.atom("input"), a.atom("num_groups"), a.atom("grad")
    g = _weighted(a, grad, _channel_view(a.atom("weight"), x))
    shape = f"{x}.shape[0], {groups}, -1"
    size = f"[{x}[0].numel() // {groups}]"
    stats = f"{a.atom('mean')}.unsqueeze(-1), {a.atom('rstd')}.unsqueeze(-1)"
    grads = (
        f"torch.ops.aten.native_layer_norm_backward({g}.reshape({shape}), {x}.reshape({shape}), {size}, {stats},"
        " None, None, (True, False, False))"
    )
    return f"{grads}[0].reshape({x}.shape)"


def _channel_sum(a: _Call, _) -> str:
    return f"{a.atom('input')}.transpose(0, 1).flatten(1).sum(1)"


def _local_response_norm(a: _Call, _) -> str:
    x, size, alpha, beta, k = a.atom("input"), a.atom("size"), a.atom("alpha"), a.atom("beta"), a.atom("k")

    def window_mean(t: str, before: str, after: str) -> str:  # over `size` channels, as torch pads them
        padded = f"F.pad({t}.flatten(2).unsqueeze(1), (0, 0, {before}, {after}))"
        return f"F.avg_pool2d({padded}, ({size}, 1), stride=1).reshape({x}.shape)"

    d = f"({k} + {alpha} * {window_mean(f'{x}.pow(2)', f'{size} // 2', f'({size} - 1) // 2')})"
    adjoint = window_mean(f"({a.atom('grad')} * {x} * {d}.pow(-{beta} - 1))", f"({size} - 1) // 2", f"{size} // 2")
    return f"{a.atom('grad')} * {d}.pow(-{beta}) - 2 * {alpha} * {beta} * {x} * {adjoint}"


# ---------------------------------------------------------------- losses over classes


def _kept(a: _Call) -> tuple[str, str, str]:
    """(the targets not ignored as a mask, the targets with ignored ones at 0, each target's weight)."""
    t, ii = a.atom("target"), a.atom("ignore_index")
    kept = f"({t} != {ii})"
    safe = f"({t} * {kept})"
    weight = kept if a.none("weight") else f"({a.atom('weight')}[{safe}] * {kept})"
    if a.maybe_none("weight"):
        weight = f"({kept} if {a.atom('weight')} is None else {weight})"
    return kept, safe, weight


def _total_weight(a: _Call) -> str:
    """The mean's divisor: the kept targets' weights summed, 1 when every target is ignored (ATen writes
    no gradient for an ignored target: all zeros then, where 0 / 0 would be NaN)."""
    kept, _, weight = _kept(a)
    count = f"{kept}.sum().clamp(min=1)"  # unweighted: the kept targets counted, at least 1
    if a.none("weight"):
        return count
    weighted = f"torch.where({kept}.any(), {weight}.sum(), 1)"
    return f"({count} if {a.atom('weight')} is None else {weighted})" if a.maybe_none("weight") else weighted


def _index_grad(a: _Call, scale: str) -> str:
    """The gradient with respect to log-probabilities of the weighted negative log likelihood at the
    target indices: `-scale * weight[target]` at each target, 0 elsewhere; `scale` the targets' shape."""
    grad = a.atom("grad")
    _, safe, weight = _kept(a)
    cdim = a.class_dim("input")
    per_target = _by_reduction(a, f"{grad} * {weight}", f"{grad} * {weight} / {_total_weight(a)}", f"{grad} * {weight}")
    if scale != "1":
        per_target = f"{scale} * {per_target}"
    zeros = f"{grad}.new_zeros({a.shape('input')})"  # the input is read for its shape only
    # in place: the zeros are fresh, and autograd records scatter_ into a tensor of its own as it does scatter
    return f"{zeros}.scatter_({cdim}, {safe}.unsqueeze({cdim}), -({per_target}).unsqueeze({cdim}))"


def _nll_loss(a: _Call, _) -> str:
    return _index_grad(a, "1")


def _probabilities(a: _Call, floating: dict[str, bool]) -> bool | None:
    """Whether cross_entropy's target holds class probabilities (None: decided at run time)."""
    t = a.nodes["target"]
    return floating.get(t.id) if isinstance(t, N.Name) else None


def _smoothing(a: _Call) -> float | None:
    value = a.literal("label_smoothing")
    return float(value) if value is not None else None


def _class_weight(a: _Call, x: str) -> str:
    """The class weights viewed along the class dim of the input `x` (1 without weights)."""
    if a.none("weight"):
        return "1"
    w, rank = a.atom("weight"), a.rank_of(a.nodes["input"])
    if rank is not None:
        along = w if rank <= 2 else f"{w}.view(-1{', 1' * (rank - 2)})"
    else:
        along = f"{w}.view(-1, *(1,) * ({x}.dim() - 1 - {a.class_dim('input')}))"
    return f"(1 if {w} is None else {along})" if a.maybe_none("weight") else along


def _log_prob_grad_of_indices(a: _Call) -> str:
    """cross_entropy's gradient with respect to log_softmax(input), for class-index targets."""
    x, grad, eps = a.atom("input"), a.atom("grad"), a.atom("label_smoothing")
    smoothing = _smoothing(a)
    if smoothing == 0.0:
        return _index_grad(a, "1")
    kept, _, weight = _kept(a)
    cdim = a.class_dim("input")
    spread = _by_reduction(
        a,
        f"({grad} * {kept}).unsqueeze({cdim})",
        f"({grad} * {kept} / {_total_weight(a)}).unsqueeze({cdim})",
        f"({grad} * {kept}).unsqueeze({cdim})",
    )
    classes = f"{x}.shape[{cdim}]"
    smooth = f"{eps} / {classes} * {_class_weight(a, x)} * {spread}"
    smoothed = f"({_index_grad(a, f'(1 - {eps})')} - {smooth})"
    if smoothing is None:  # given at run time: without smoothing, the spread term is zeros (a dozen ATen calls)
        return f"({_index_grad(a, '1')} if {eps} == 0 else {smoothed})"
    return smoothed


def _smoothed_target(a: _Call, x: str) -> str:
    t, eps = a.atom("target"), a.atom("label_smoothing")
    if _smoothing(a) == 0.0:
        return t
    return f"({t} * (1 - {eps}) + {eps} / {x}.shape[{a.class_dim('input')}])"


def _probability_scale(a: _Call, x: str) -> str:
    """The incoming gradient per element, for probability targets (mean: over the samples)."""
    grad, cdim = a.atom("grad"), a.class_dim("input")
    return _by_reduction(a, f"{grad}.unsqueeze({cdim})", f"{grad} / ({x}.numel() // {x}.shape[{cdim}])", grad)


def _log_prob_grad_of_probabilities(a: _Call) -> str:
    x = a.atom("input")
    weight = _class_weight(a, x)
    weighted = _smoothed_target(a, x) if weight == "1" else f"{weight} * {_smoothed_target(a, x)}"
    return f"-{weighted} * {_probability_scale(a, x)}"


def _class_log_softmax(a: _Call, _) -> str:
    return f"torch.log_softmax({a['input']}, {a.class_dim('input')})"


def _class_unflatten(a: _Call, _) -> str:
    return f"{a.atom('input')}.unflatten(-1, {a['sizes']})"


def _class_flatten(a: _Call, _) -> str:
    """The last len(sizes) dims merged: `grad.flatten(-1 - len(out_features))` for `[classes, *out_features]`."""
    sizes = a.nodes["sizes"]
    assert isinstance(sizes, N.ListExpr), "Linearizer._flat_logits lists the class dims"
    spreads = [i.value for i in sizes.items if isinstance(i, N.Spread)]
    if not spreads and len(sizes.items) == 1:
        return a["input"]  # one dim merged: the gradient as it is
    start = f"-{len(sizes.items) - len(spreads)}" + "".join(f" - len({a.ex(s)})" for s in spreads)
    return f"{a.atom('input')}.flatten({start})"


def read_for_class_dim(c: N.Call, rank: Rank) -> str | None:
    """The operand `c`'s Python reads a second time for its class dim (`(1 if len(x.shape) > 1 else 0)`,
    its rank being unknown), which the forward must therefore compute into a name rather than write inside
    the call; None when there is none."""
    x = c.args[0] if c.func == "class_log_softmax" and c.args else None
    return x.id if isinstance(x, N.Name) and rank(x) is None else None


def _class_log_softmax_backward(a: _Call, _) -> str:
    """log_softmax's gradient from its result alone (ATen's kernel: differentiable again in both)."""
    result = a.atom("result")
    cdim = a.class_dim("result")
    return f"torch.ops.aten._log_softmax_backward_data({a['grad']}, {result}, {cdim}, {result}.dtype)"


def _cross_entropy_of_log_probs(a: _Call, floating: dict[str, bool]) -> str:
    """cross_entropy's value from the log-probabilities: nll_loss for class indices without smoothing, else
    cross_entropy itself (log_softmax leaves log-probabilities as they are)."""
    lp, t = a["input"], a["target"]
    options = "".join(f", {k}={a[k]}" for k in ("weight", "ignore_index", "reduction") if a.given(k))
    if _probabilities(a, floating) is False and _smoothing(a) == 0.0:
        return f"F.nll_loss({lp}, {t}{options})"
    if a.given("label_smoothing"):
        options += f", label_smoothing={a['label_smoothing']}"
    return f"F.cross_entropy({lp}, {t}{options})"


def _cross_entropy_log_probs(a: _Call, floating: dict[str, bool]) -> str:
    """cross_entropy's gradient with respect to the log-probabilities (its `input` here)."""
    probabilities = _probabilities(a, floating)
    if probabilities is None:
        target = a.atom("target")
        return f"({_log_prob_grad_of_probabilities(a)} if {target}.is_floating_point() else {_log_prob_grad_of_indices(a)})"
    return _log_prob_grad_of_probabilities(a) if probabilities else _log_prob_grad_of_indices(a)


def _cross_entropy_target(a: _Call, _) -> str:
    """With respect to class probabilities: -(1 - label_smoothing) * weight * log_probs * grad."""
    lp = a.atom("input")
    keep = "" if _smoothing(a) == 0.0 else f"(1 - {a.atom('label_smoothing')}) * "
    weight = _class_weight(a, lp)
    weighted = "" if weight == "1" else f"{weight} * "
    return f"-{keep}{weighted}{lp} * {_probability_scale(a, lp)}"


def _multi_margin(a: _Call, _) -> str:
    return (
        f"torch.ops.aten.multi_margin_loss_backward({a['grad']}, {a['input']}, {a['target']}, {a['p']},"
        f" {a['margin']}, {a['weight']}, {_reduction_enum(a)})"
    )


def _multilabel_margin(a: _Call, _) -> str:
    x, t, red = a["input"], a["target"], _reduction_enum(a)
    is_target = f"torch.ops.aten.multilabel_margin_loss_forward({x}, {t}, {red})[1]"
    return f"torch.ops.aten.multilabel_margin_loss_backward({a['grad']}, {x}, {t}, {red}, {is_target})"


def _per_element(a: _Call) -> str:
    """multilabel_soft_margin_loss's incoming gradient per element (a sample's loss is its mean over C)."""
    x, grad = a.atom("input"), a.atom("grad")
    classes = f"{x}.shape[-1]"
    return _by_reduction(a, f"{grad}.unsqueeze(-1) / {classes}", f"{grad} / {x}.numel()", f"{grad} / {classes}")


def _per_class(a: _Call) -> str:
    """That with the class weights."""
    if a.none("weight"):
        return _per_element(a)
    weighted = f"{a.atom('weight')} * {_per_element(a)}"
    return f"({_per_element(a)} if {a.atom('weight')} is None else {weighted})" if a.maybe_none("weight") else weighted


def _multilabel_soft_margin_input(a: _Call, _) -> str:
    x, t = a.atom("input"), a.atom("target")
    return f"(torch.sigmoid({x}) - {t}) * {_per_class(a)}"


def _multilabel_soft_margin_target(a: _Call, _) -> str:
    x = a.atom("input")
    return f"-{x} * {_per_class(a)}"


def _multilabel_soft_margin_weight(a: _Call, _) -> str:
    x, t, w = a.atom("input"), a.atom("target"), a.atom("weight")
    loss = f"F.binary_cross_entropy_with_logits({x}, {t}, reduction='none')"
    return f"({loss} * {_per_element(a)}).sum_to_size({w}.shape)"


# ---------------------------------------------------------------- ctc and gaussian


def _ctc(a: _Call, _) -> str:
    lp, targets, il, tl = a.atom("log_probs"), a["targets"], a["input_lengths"], a["target_lengths"]
    blank, zero_inf, grad = a["blank"], a["zero_infinity"], a.atom("grad")
    lengths = (f"torch.as_tensor({il}, device={lp}.device)", f"torch.as_tensor({tl}, device={lp}.device)")
    forward = f"torch.ops.aten._ctc_loss({lp}.detach(), {targets}, {lengths[0]}, {lengths[1]}, {blank}, {zero_inf})"
    batch = f"{lp}.shape[1]"
    per_sample = _by_reduction(
        a, grad, f"{grad} / {lengths[1]}.clamp(min=1).to({lp}.dtype) / {batch}", f"{grad}.expand({batch})"
    )
    return (
        f"torch.ops.aten._ctc_loss_backward({per_sample}, {lp}, {targets}, {lengths[0]}, {lengths[1]},"
        f" *{forward}, {blank}, {zero_inf})"
    )


def _viewed_shape(a: _Call) -> str:
    """var's shape with 1s for the dims of input it lacks (var [B] against input [B, C] is [B, 1], as torch
    views it)."""
    x, var = a.atom("input"), a.atom("var")
    return f"{var}.shape + (1,) * ({x}.dim() - {var}.dim())"


def _variance(a: _Call) -> str:
    """var viewed to broadcast with input and clamped to eps (as a value: its gradient is that of var
    where var >= eps, which is what torch's clamp under no_grad gives)."""
    return f"{a.atom('var')}.reshape({_viewed_shape(a)}).clamp(min={a['eps']})"


def _gaussian_scale(a: _Call) -> str:
    x, t, grad = a.atom("input"), a.atom("target"), a.atom("grad")
    return _by_reduction(a, grad, f"{grad} / torch.broadcast_shapes({x}.shape, {t}.shape).numel()", grad)


def _gaussian_input(a: _Call, _) -> str:
    return f"{_gaussian_scale(a)} * ({a.atom('input')} - {a.atom('target')}) / {_variance(a)}"


def _gaussian_var(a: _Call, _) -> str:
    x, t, var = a.atom("input"), a.atom("target"), a.atom("var")
    v = _variance(a)
    g = f"{_gaussian_scale(a)} * 0.5 * (1 - ({x} - {t}).pow(2) / {v}) / {v}"
    return f"({g}).sum_to_size({_viewed_shape(a)}).reshape({var}.shape)"


# ---------------------------------------------------------------- transposed convolutions


def _per_dim(a: _Call, name: str, dims: int) -> str:
    """A stride, padding or dilation as the list ATen's kernel takes: one entry per spatial dim."""
    node = a.nodes[name]
    if isinstance(node, N.ListExpr):
        return a[name]
    if isinstance(node, N.Num):
        return f"[{', '.join([a[name]] * dims)}]"
    value = a.atom(name)
    return f"([{value}] * {dims} if isinstance({value}, int) else {value})"


def _conv_transpose(a: _Call, _) -> str:
    """The gradients of a transposed convolution from ATen's convolution_backward (differentiable again):
    the one `which` names, or those a mask asks for, in one call."""
    dims = a.literal("dims")
    assert isinstance(dims, int), "the conv_transpose rows name their dims"
    stride, padding, output_padding, dilation = (
        _per_dim(a, k, dims) for k in ("stride", "padding", "output_padding", "dilation")
    )
    bias = "None" if a.none("bias") else f"{a.shape('bias')}"
    head = f"torch.ops.aten.convolution_backward({a['grad']}, {a['input']}, {a['weight']}, {bias}, {stride}, {padding}"
    tail = f"{dilation}, True, {output_padding}, {a['groups']}"
    if isinstance(a.nodes["which"], N.TupleExpr):  # several results (`codegen.joint_gradients`)
        return f"{head}, {tail}, {a['which']})"
    which = a.literal("which")
    mask = ", ".join(str(k == which) for k in range(3))
    return f"{head}, {tail}, ({mask}))[{which}]"


_WRITERS: dict[str, Callable[[_Call, dict[str, bool]], str]] = {
    "layer_norm_with_statistics": _layer_norm_with_statistics,
    "layer_norm_mean": _layer_norm_statistic(1),
    "layer_norm_rstd": _layer_norm_statistic(2),
    "layer_norm_backward": _layer_norm,
    "rms_norm_input_grad": _rms_norm,
    "group_norm_with_statistics": _group_norm_with_statistics,
    "group_norm_mean": _group_norm_statistic(1),
    "group_norm_rstd": _group_norm_statistic(2),
    "group_norm_input_grad": _group_norm,
    "channel_sum": _channel_sum,
    "local_response_norm_input_grad": _local_response_norm,
    "nll_loss_input_grad": _nll_loss,
    "class_log_softmax": _class_log_softmax,
    "class_unflatten": _class_unflatten,
    "class_flatten": _class_flatten,
    "class_log_softmax_backward": _class_log_softmax_backward,
    "cross_entropy_of_log_probs": _cross_entropy_of_log_probs,
    "cross_entropy_log_probs_grad": _cross_entropy_log_probs,
    "cross_entropy_target_grad": _cross_entropy_target,
    "multi_margin_loss_backward": _multi_margin,
    "multilabel_margin_loss_backward": _multilabel_margin,
    "multilabel_soft_margin_loss_input_grad": _multilabel_soft_margin_input,
    "multilabel_soft_margin_loss_target_grad": _multilabel_soft_margin_target,
    "multilabel_soft_margin_loss_weight_grad": _multilabel_soft_margin_weight,
    "ctc_loss_backward": _ctc,
    "conv_transpose_backward": _conv_transpose,
    "gaussian_nll_loss_input_grad": _gaussian_input,
    "gaussian_nll_loss_var_grad": _gaussian_var,
}
