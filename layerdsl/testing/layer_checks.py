"""Run-time checks of generated layers, shared by the test suite and `layerdsl test`.

Each check builds a layer from its spec's `example`, feeds it inputs whose symbolic dims get distinct
small sizes (so a transposition cannot hide), and checks one property: declared output shapes,
gradcheck in float64, state_dict round trip, hooks, reproducible initialisation, repr, and for
`@function` layers gradgradcheck and agreement with the plain autograd form. A verdict is a raised
`CheckFailed`, never an `assert`, so the checks still fail under `python -O`. This module imports torch;
`layerdsl gen` never imports it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.autograd.gradcheck import GradcheckError

from layerdsl.driver.pipeline import Source
from layerdsl.ir import nodes as N
from layerdsl.ir.visit import walk
from layerdsl.language.naming import snake_case
from layerdsl.language.ops import OPS
from layerdsl.language.tables import ARG_TYPES
from layerdsl.semantics.checker import is_expression_default, literal_value
from layerdsl.semantics.evaluate import NotConstant, evaluate, example_seeds, seed_differences

SIZES = (3, 4, 5, 2, 6, 7, 8, 9)


class Skip(Exception):
    """A check that does not apply here (no GPU, no parameters, ...)."""


class CheckFailed(AssertionError):
    """A generated layer does not have the property a check looks for; the message says what differs.

    An AssertionError, so that pytest reports it as a failed assertion."""


@dataclass(frozen=True)
class Config:
    """One point of a layer's configuration space (see configurations.py): what the example does not fix."""

    args: dict[str, Any]  # argument values over the example's (the `bool` arguments)
    dims: dict[str, int]  # every symbolic dim's size
    lead: tuple[int, ...]  # the sizes `...` stands for
    dtype: torch.dtype = torch.float64
    training: bool | None = None  # the mode the layer runs in, where its forward reads `training`

    def label(self) -> str:
        """`bias=False, B=3, ...=(2, 4), float32, eval`: how the summary names a failing configuration."""
        parts = [f"{k}={v}" for k, v in self.args.items()] + [f"{k}={v}" for k, v in self.dims.items() if k != "..."]
        parts += [f"...={self.lead}", str(self.dtype).removeprefix("torch.")]
        if self.training is not None:
            parts.append("train" if self.training else "eval")
        return ", ".join(parts)


@dataclass
class Case:
    """One layer of a spec, with what the checks need to build and feed it: its example's values, or those
    of one configuration."""

    layer: N.Layer
    module: str  # dotted module name under the generated package
    config: Config | None = None
    seed: int = 0  # which of the layer's examples (`example_seeds`) it starts from: 0 is the first

    def seed_label(self) -> str:
        """What this case's example gives differently from the first (`n=8`); empty for the first."""
        seeds = example_seeds(self.layer)
        return ", ".join(f"{k}={v}" for k, v in seed_differences(seeds[self.seed], seeds[0]))

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def forward(self) -> N.Forward:
        """The layer's forward, which every checked layer has (the parser reports a layer without one)."""
        if self.layer.forward is None:
            raise ValueError(f"layer {self.name} has no forward")
        return self.layer.forward

    def example(self) -> dict:
        return example_seeds(self.layer)[self.seed]

    def args(self) -> dict:
        ex = self.example()
        out = {}
        for a in self.layer.args:
            if a.name in ex and isinstance(ex[a.name], N.Call):  # a layer argument's instance: built by `build`
                out[a.name] = ex[a.name]
            elif a.name in ex:
                out[a.name] = literal_value(ex[a.name])
            elif a.default is not None and not is_expression_default(a.default):  # (computed by the module)
                out[a.name] = literal_value(a.default)
        return out | self.config.args if self.config else out

    def dims(self) -> dict[str, int]:
        """Sizes of symbolic dims: the configuration's, else the example's, else distinct small sizes unlike
        every argument (`...` included, as the size of its one dim)."""
        if self.config:
            return dict(self.config.dims)
        ex = self.example()
        taken = {v for v in self.args().values() if isinstance(v, int) and not isinstance(v, bool)}
        sizes = {}
        for d in [*self.layer.symbolic_dims, "..."]:
            if d in ex:
                sizes[d] = literal_value(ex[d])
            else:
                sizes[d] = next(s for s in SIZES if s not in taken)
            taken.add(sizes[d])
        return sizes

    def lead(self) -> tuple[int, ...]:
        """The sizes of the dims `...` stands for."""
        return self.config.lead if self.config else (self.dims()["..."],)

    @property
    def dtype(self) -> torch.dtype:
        return self.config.dtype if self.config else torch.float64

    @property
    def is_function(self) -> bool:
        return self.layer.is_function

    @property
    def surrogate(self) -> str | None:
        dec = self.layer.decorator("surrogate")
        return literal_value(dec.args[0]) if dec else None


def cases(files: list[N.SpecFile], sources: list[Source]) -> list[Case]:
    out = []
    for src, f in zip(sources, files):
        module = ".".join(src.out.with_suffix("").parts)
        out += [Case(layer, module) for layer in f.layers]
    return out


# ------------------------------------------------------------------ building and feeding


def layer_class(case: Case, package: str) -> type[torch.nn.Module]:
    return getattr(importlib.import_module(f"{package}.{case.module}"), case.name)


def functional_form(case: Case, package: str) -> Callable[..., Any] | None:
    return getattr(importlib.import_module(f"{package}.{case.module}"), snake_case(case.name), None)


# The most elements the checks build a layer and its inputs with (512 MiB in float64): a bigger example
# fails its checks at once, rather than filling the machine's memory (gradcheck perturbs each element).
MAX_ELEMENTS = 2**26


def example_elements(case: Case) -> int:
    """How many elements the case's members and required inputs hold, as far as their shapes evaluate."""
    env = {**case.args(), **case.dims()}
    for let in case.layer.lets:
        try:
            env[let.name] = evaluate(let.value, env)
        except (NotConstant, ArithmeticError, TypeError):
            pass
    shapes = [t.shape for t in case.layer.tensors] + [i.shape for i in case.forward.inputs if not i.optional]
    total = 0
    for shape in shapes:
        try:
            sizes = shape_of(shape, env, case.lead())
        except (NotConstant, ArithmeticError, TypeError, ValueError, KeyError):
            continue
        count = 1
        for size in sizes:
            count *= max(size, 0)
        total += count
    return total


def build(
    case: Case, package: str, dtype: torch.dtype | None = None, device: str = "cpu", seed: int = 0
) -> torch.nn.Module:
    elements = example_elements(case)
    if elements > MAX_ELEMENTS:
        raise CheckFailed(
            f"the example's tensors hold {elements:,} elements (at most {MAX_ELEMENTS:,} are checked):"
            " give example(...) smaller sizes"
        )
    torch.manual_seed(seed)
    cls = layer_class(case, package)
    args = {
        k: _instance(v, cls, device, dtype or case.dtype) if isinstance(v, N.Call) else v
        for k, v in case.args().items()
    }
    module = cls(**args, device=device, dtype=dtype or case.dtype)
    if case.config and case.config.training is not None:
        module.train(case.config.training)
    return module


def _instance(call: N.Call, cls: type, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """An example's `TransformerEncoderLayer(4, 2)`: the generated layer of that name (the module of `cls`
    has it, for its argument's type hint), built from the literals."""
    layer = getattr(sys.modules[cls.__module__], call.func)
    kwargs = {k.name: literal_value(k.value) for k in call.kwargs}
    return layer(*[literal_value(a) for a in call.args], **kwargs, device=device, dtype=dtype)


def shape_of(shape: N.Shape | None, env: dict, lead: tuple[int, ...]) -> tuple[int, ...]:
    """The sizes of a declared shape from the values of arguments and dims (`...` stands for `lead`;
    an input without a declared shape gets `lead` and one more axis)."""
    if shape is None:
        return lead + (env["..."] + 1,)
    out: list[int] = []
    for d in shape.dims:
        if isinstance(d, N.EllipsisItem):
            out += lead
        else:
            out.append(int(evaluate(d, env)))
    return tuple(out)


def inputs(case: Case, dtype=None, device="cpu", seed: int = 1, requires_grad=False) -> list:
    """A value for each required input, a tuple input as a tuple of tensors. Optional inputs are left out:
    random values are no masks or states (a mask may hide every key); the parity samples give them."""
    env = {**case.args(), **case.dims()}
    for a in case.layer.args:  # an argument computed from others (`kdim: int = embed_dim`) may size an input
        if a.name not in env and a.default is not None and is_expression_default(a.default):
            env[a.name] = evaluate(a.default, env)
    for let in case.layer.lets:  # an input's dim may be a let (`[..., real_hidden]`)
        try:
            env[let.name] = evaluate(let.value, env)
        except (NotConstant, ArithmeticError, TypeError):
            pass
    for inp in case.forward.inputs:  # `long[N, S] | long[L]`: the first alternative is drawn; its new dims
        for d in inp.alternatives[0].shape.dims if inp.alternatives and inp.alternatives[0].shape else []:
            if isinstance(d, N.Name) and d.id not in env:
                env[d.id] = next(s for s in SIZES if s not in env.values())
    lead = case.lead()
    dtype = dtype or case.dtype
    ex = case.example()
    gen = torch.Generator().manual_seed(seed)
    values: list = []
    log_probs = log_prob_inputs(case)
    for inp in [i for i in case.forward.inputs if not i.optional and i.flag is None]:  # flags keep their defaults
        parts = [_input(p, env, lead, dtype, ex, gen, device, requires_grad) for p in inp.parts or [inp]]
        if inp.name in log_probs:
            parts = [_as_log_probs(p) for p in parts]
        values.append(tuple(parts) if inp.parts else parts[0])
    return values


def log_prob_inputs(case: Case) -> set[str]:
    """The inputs the forward passes straight to an operand that the op table marks as log-probabilities
    (`ctc_loss(log_probs, ...)`): torch's derivative holds there only, so the checks draw them normalised."""
    names = set()
    for statement in case.forward.body:
        for node in walk(statement):
            if not isinstance(node, N.Call) or node.func not in OPS or not OPS[node.func].log_probs:
                continue
            op = OPS[node.func]
            given = [(p.name, a) for p, a in zip(op.params, node.args)] + [(k.name, k.value) for k in node.kwargs]
            names |= {a.id for name, a in given if name in op.log_probs and isinstance(a, N.Name)}
    return names


def _as_log_probs(t: torch.Tensor) -> torch.Tensor:
    """`t` normalised to log-probabilities over its last dim, still a leaf when `t` is one."""
    normalised = torch.log_softmax(t.detach(), dim=-1)
    return normalised.requires_grad_(t.requires_grad)


def _input(inp: N.Input, env: dict, lead, dtype, ex: dict, gen, device: str, requires_grad: bool) -> torch.Tensor:
    shape = shape_of(inp.shape, env, lead)
    if inp.dtype == "bool":
        t = torch.rand(shape, generator=gen) > 0.5
    elif inp.dtype in ("long", "int"):
        t = torch.randint(0, 3, shape, generator=gen, dtype=torch.long if inp.dtype == "long" else torch.int)
    else:
        t = _sample(ex.get(inp.name), shape, gen).to(dtype)
        t.requires_grad_(requires_grad)
    return t.to(device) if not t.requires_grad else t.detach().to(device).requires_grad_(True)


def _sample(dist: N.Expr | None, shape, gen) -> torch.Tensor:
    """Values from the example's `uniform(lo, hi)` or `normal(mean, std)` (the only example inputs the
    checker accepts), else from a standard normal."""
    if not isinstance(dist, N.Call):
        return torch.randn(shape, generator=gen, dtype=torch.float64)
    values = [literal_value(a) for a in dist.args] + [literal_value(k.value) for k in dist.kwargs]
    if dist.func == "uniform":
        lo, hi = values
        return torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    mean, std = values
    return torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean


def expected_output_shapes(case: Case) -> list[tuple[int, ...]] | None:
    outputs = case.forward.outputs
    if outputs is None:
        return None
    env = {**case.args(), **case.dims()}
    return [shape_of(s, env, case.lead()) for s in outputs]


def as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def uses_randomness(case: Case) -> bool:
    return any(isinstance(n, N.Call) and n.func == "dropout" for s in case.forward.body for n in walk(s))


def buffer_read_where_updated(case: Case, training: bool) -> str | None:
    """A buffer that forward, in this mode, both updates and reads (not in an update's value: that goes to a
    buffer only) in one call, if any: the function then changes from call to call (gradcheck's calls each update it), and a
    read after the update takes the new value with no gradient through it, by design (`update` is under
    no_grad). Finite differences cannot agree with such a layer's gradient."""
    buffers = {t.name for t in case.layer.tensors if t.kind == N.Ref.BUFFER}
    env = {**case.args(), **case.dims(), "training": training}
    found: list[str] = []

    def run(body: list[N.Stmt], updated: set[str], read: set[str]) -> bool:
        """Walk `body` on from the sets of one path; whether it returns on every path."""
        for stmt in body:
            if isinstance(stmt, N.Update):  # its value goes to the buffer only, not to an output
                found.extend([stmt.target] if stmt.target in read else [])
                updated.add(stmt.target)
            elif isinstance(stmt, N.If):
                sides = [stmt.body, stmt.orelse]
                decided = _decided(stmt.cond, env)
                if decided is not None:  # on arguments, dims and `training`: the side this case takes
                    sides = [sides[0] if decided else sides[1]]
                else:
                    read_in(stmt.cond, updated, read)
                merged: tuple[set[str], set[str]] = (set(), set())
                open_sides = 0
                for side in sides:
                    u, r = set(updated), set(read)
                    if not run(side, u, r):
                        merged[0].update(u)
                        merged[1].update(r)
                        open_sides += 1
                if open_sides == 0:
                    return True
                updated |= merged[0]
                read |= merged[1]
            elif isinstance(stmt, N.For):
                for _ in range(2):  # a second step reads what the first updated
                    run(stmt.body, updated, read)
            else:
                read_in(stmt, updated, read)
                if isinstance(stmt, N.Return):
                    return True
        return False

    def read_in(node: N.Node, updated: set[str], read: set[str]) -> None:
        for n in walk(node):
            if isinstance(n, N.Name) and n.id in buffers and n.ref == N.Ref.BUFFER:
                found.extend([n.id] if n.id in updated else [])
                read.add(n.id)

    run(case.forward.body, set(), set())
    return found[0] if found else None


def _decided(cond: N.Expr, env: dict) -> bool | None:
    """The value of an `if`'s condition from the case's arguments, dims and mode; None where it reads more
    (an input's presence or rank)."""
    try:
        return bool(evaluate(cond, env))
    except (NotConstant, ArithmeticError, TypeError):
        return None


def _pure(case: Case, module: torch.nn.Module) -> None:
    """Skip a finite-difference check of a layer that reads a buffer it updates in the same call."""
    buffer = buffer_read_where_updated(case, module.training)
    if buffer is not None:
        mode = "training" if module.training else "eval"
        raise Skip(
            f"forward reads buffer '{buffer}' in the call that updates it ({mode}): finite differences see"
            " the update, which passes no gradient"
        )


# ------------------------------------------------------------------ the checks


def check_shapes(case: Case, package: str, device: str = "cpu") -> str:
    m = build(case, package, device=device)
    outs = as_tuple(m(*inputs(case, device=device)))
    expected = expected_output_shapes(case)
    if expected is None:
        raise Skip("forward declares no output shapes")
    got = [tuple(o.shape) for o in outs]
    if got != expected:
        raise CheckFailed(f"output shapes {got}, declared {expected}")
    dtypes = {o.dtype for o in outs if o.is_floating_point()}
    if dtypes - {case.dtype}:
        raise CheckFailed(f"output dtype {sorted(map(str, dtypes))} from a {case.dtype} layer")
    return f"{got}"


def _gradcheck_fn(module, names, xs: list, log_probs: tuple[bool, ...] = ()):
    """The module as a function of flat tensors: the inputs (a tuple input's tensors one by one), then
    the parameters `names`. An input whose flag in `log_probs` is set passes through log_softmax over its
    last dim first (the identity on the normalised values `inputs` draws), so that gradcheck's perturbations
    stay log-probabilities, where torch's derivative of such an operand holds."""
    sizes = [len(x) if isinstance(x, tuple) else None for x in xs]

    def fn(*args):
        flat, at = args[: len(args) - len(names)], 0
        flags = log_probs + (False,) * len(flat)
        flat = tuple(torch.log_softmax(t, dim=-1) if normalise else t for t, normalise in zip(flat, flags))
        params = dict(zip(names, args[len(flat) :]))
        inputs = []
        for size in sizes:
            inputs.append(flat[at] if size is None else tuple(flat[at : at + size]))
            at += 1 if size is None else size
        return torch.func.functional_call(module, params, tuple(inputs))

    return fn


def _log_prob_flags(case: Case, xs: list) -> tuple[bool, ...]:
    """For each flat input tensor (a tuple input's one by one), whether it is drawn as log-probabilities."""
    names = log_prob_inputs(case)
    required = [i for i in case.forward.inputs if not i.optional]
    return tuple(i.name in names for i, x in zip(required, xs) for _ in (x if isinstance(x, tuple) else (x,)))


def _flat(xs: list) -> list[torch.Tensor]:
    return [t for x in xs for t in (x if isinstance(x, tuple) else (x,))]


def _needs_float64(case: Case) -> None:
    if case.dtype != torch.float64:
        raise Skip(f"gradcheck needs float64, not {case.dtype}")


def check_gradcheck(case: Case, package: str, device: str = "cpu") -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise Skip("no CUDA device on this machine")
    _needs_float64(case)
    if case.surrogate:
        raise Skip(f"surrogate gradient: {case.surrogate}")
    m = build(case, package, device=device)
    if uses_randomness(case):
        m.eval()
    _pure(case, m)
    params = dict(m.named_parameters())
    xs = inputs(case, device=device, requires_grad=True)
    fn = _gradcheck_fn(m, list(params), xs, _log_prob_flags(case, xs))
    args = (*_flat(xs), *(p.detach().requires_grad_(True) for p in params.values()))
    if not any(a.requires_grad for a in args):
        raise Skip("nothing to differentiate")
    n = sum(a.numel() for a in args if a.requires_grad)
    # Big layers (LeNet has 61k parameters) take gradcheck's fast mode: a random projection of the Jacobian.
    _gradcheck(torch.autograd.gradcheck, fn, args, fast_mode=n > 2000)
    return f"{n} elements" + (" (fast mode)" if n > 2000 else "")


def check_gradgradcheck(case: Case, package: str, device: str = "cpu") -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise Skip("no CUDA device on this machine")
    if not case.is_function:
        raise Skip("not a @function layer")
    if case.surrogate:
        raise Skip(f"surrogate gradient: {case.surrogate}")
    calls = {n.func for s in case.forward.body for n in walk(s) if isinstance(n, N.Call) and n.func in OPS}
    once = sorted(f for f in calls if OPS[f].once_differentiable)
    if once:
        raise Skip(f"torch's backward of {once[0]}() has no derivative")
    _needs_float64(case)
    m = build(case, package, device=device)
    _pure(case, m)
    params = dict(m.named_parameters())
    xs = inputs(case, device=device, requires_grad=True)
    fn = _gradcheck_fn(m, list(params), xs, _log_prob_flags(case, xs))
    if uses_randomness(case):  # every call draws the same dropout mask (finite differences of one function)
        fn = _reseeded(fn)
    args = (*_flat(xs), *(p.detach().requires_grad_(True) for p in params.values()))
    _gradcheck(torch.autograd.gradgradcheck, fn, args)
    return "ok"


def _reseeded(fn):
    """`fn` drawing the same random numbers at every call, leaving the caller's generator as it was."""

    def seeded(*args):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(11)
            return fn(*args)

    return seeded


def _gradcheck(check, fn, args, **options) -> None:
    """Run torch's gradcheck or gradgradcheck, its GradcheckError becoming a CheckFailed."""
    try:
        check(fn, args, eps=1e-6, atol=1e-5, rtol=1e-4, **options)
    except GradcheckError as exc:
        raise CheckFailed(str(exc)) from exc


def check_state_dict(case: Case, package: str, device: str = "cpu") -> str:
    m = build(case, package, seed=0)
    fresh = build(case, package, seed=123)
    fresh.load_state_dict(m.state_dict())
    keys = set(m.state_dict())
    own = {k for k in keys if "." not in k}
    if own != {n for t in case.layer.tensors if t.persistent for n in _member_names(m, t)}:
        raise CheckFailed(f"state_dict keys {sorted(own)}")
    if case.config is None or case.config.training is None:
        m.eval(), fresh.eval()
    xs = inputs(case)
    torch.manual_seed(5)
    a = as_tuple(m(*xs))
    torch.manual_seed(5)
    b = as_tuple(fresh(*xs))
    if not all(torch.equal(x, y) for x, y in zip(a, b)):
        raise CheckFailed("outputs differ after load_state_dict")
    return f"{len(keys)} keys"


def _member_names(m: torch.nn.Module, t: N.Tensor) -> list[str]:
    """The attribute names member `t` has on module `m` (one per value of a family's loop), those present."""
    names = [t.name]
    if t.repeat is not None:  # `weight_l{k}` for k in range(...): the range from the module's arguments
        env = {n: v for n, v in vars(m).items() if not n.startswith("_")}
        bounds = [evaluate(a, env) for a in t.repeat.iter.args]
        var = "{" + t.repeat.var.id + "}"
        names = [t.written.replace(var, str(k)) for k in range(*bounds)]
    return [n for n in names if getattr(m, n, None) is not None]


def check_hooks(case: Case, package: str, device: str = "cpu") -> str:
    m = build(case, package)
    seen = []
    handle = m.register_forward_hook(lambda mod, args, out: seen.append(out))
    out = m(*inputs(case))
    handle.remove()
    if len(seen) != 1:
        raise CheckFailed(f"forward hook fired {len(seen)} times, not once")
    if not all(x is y for x, y in zip(as_tuple(seen[0]), as_tuple(out))):
        raise CheckFailed("forward hook saw other tensors than forward returned")
    return "fired"


def check_reset(case: Case, package: str, device: str = "cpu") -> str:
    m1 = build(case, package, seed=7)
    m2 = build(case, package, seed=7)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        if not torch.equal(a, b):
            raise CheckFailed(f"{k} differs between two builds under the same seed")
    own = [n for t in case.layer.tensors for n in _member_names(m1, t)]
    with torch.no_grad():
        for name in own:
            getattr(m1, name).fill_(13)
    # Construction draws exactly what reset_parameters draws: the same seed must give the same values.
    reset = getattr(m1, "reset_parameters", None)
    if not callable(reset):
        raise CheckFailed("the layer has no reset_parameters()")
    torch.manual_seed(7)
    if case.layer.reinits:  # its subs were built (and drew) before its own reset: draw theirs again first
        for sub in case.layer.subs:
            sub_reset = getattr(getattr(m1, sub.name), "reset_parameters", None)
            if callable(sub_reset):
                sub_reset()
    reset()
    for name in own:
        if not torch.equal(getattr(m1, name), getattr(m2, name)):
            raise CheckFailed(f"reset_parameters under a seed does not reproduce {name}")
    return f"{len(own)} tensors"


def check_repr(case: Case, package: str, device: str = "cpu") -> str:
    m = build(case, package)
    text = repr(m)
    layer_args = {a.name for a in case.layer.args if a.base_type not in ARG_TYPES}
    for name, value in case.args().items():
        if name in layer_args:  # an instance of a layer: shown as the sub that holds it (or its copies)
            continue
        shown = f"{name}={value!r}" if isinstance(value, str) else f"{name}="
        if shown not in text:
            raise CheckFailed(f"repr lacks {shown!r}: {text}")
    return text.splitlines()[0]


def check_function_matches_autograd(case: Case, package: str, device: str = "cpu") -> str:
    """The Function's outputs and gradients equal the plain functional form's (1e-10). A layer without one
    (subs, buffer updates) is compared with its spec's module compiled without `@function` (`plain_package`),
    given the same parameters and buffers: outputs, every gradient, the buffers after the step, and second
    derivatives."""
    if not case.is_function:
        raise Skip("not a @function layer")
    if case.surrogate:
        raise Skip(f"surrogate gradient: {case.surrogate}")
    from layerdsl.testing.function_vs_autograd import compare_with_functional, compare_with_plain_module

    functional = functional_form(case, package)
    m = build(case, package)
    if functional is None:
        return compare_with_plain_module(case, m, build(case, plain_package(package)), inputs)
    return compare_with_functional(case, m, functional, inputs)


def check_surrogate(case: Case, package: str, device: str = "cpu") -> str:
    if not case.surrogate:
        raise Skip("not a surrogate")
    m = build(case, package)
    xs = inputs(case, requires_grad=True)
    outs = as_tuple(m(*xs))
    grads = [torch.ones_like(o) for o in outs]
    targets = [x for x in xs if x.requires_grad] + [p for p in m.parameters()]
    got = torch.autograd.grad(outs, targets, grads, allow_unused=True)
    for t, g in zip(targets, got):
        if g is not None and (g.shape != t.shape or g.dtype != t.dtype):
            raise CheckFailed(f"gradient {tuple(g.shape)} {g.dtype} for {tuple(t.shape)} {t.dtype}")
    return f"backward ran ({case.surrogate})"


def _has_tensors(case: Case) -> bool:
    return bool(case.layer.tensors)


def _always(case: Case) -> bool:
    return True


# name -> (check, which layers it applies to)
CHECKS = {
    "shapes": (check_shapes, lambda c: c.forward.outputs is not None),
    "gradcheck": (check_gradcheck, lambda c: not c.surrogate),
    "gradcheck-cuda": (lambda c, p: check_gradcheck(c, p, device="cuda"), lambda c: not c.surrogate),
    "gradgradcheck": (check_gradgradcheck, lambda c: c.is_function and not c.surrogate),
    "gradgradcheck-cuda": (
        lambda c, p: check_gradgradcheck(c, p, device="cuda"),
        lambda c: c.is_function and not c.surrogate,
    ),
    "function-vs-autograd": (check_function_matches_autograd, lambda c: c.is_function and not c.surrogate),
    "surrogate": (check_surrogate, lambda c: bool(c.surrogate)),
    "state_dict": (check_state_dict, _always),
    "hooks": (check_hooks, _always),
    "reset_parameters": (check_reset, _has_tensors),
    "repr": (check_repr, _always),
}


def applicable(case: Case, names) -> list[str]:
    return [n for n in names if CHECKS[n][1](case)]


def run_check(name: str, case: Case, package: str) -> tuple[str, str]:
    try:
        detail = CHECKS[name][0](case, package)
        return "ok", str(detail)
    except Skip as exc:
        return "skip", str(exc)
    except CheckFailed as exc:
        return "FAIL", str(exc)
    except Exception as exc:  # a generated layer that raises is a failed check, shown in the table
        return "FAIL", f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------ `layerdsl test`


# package -> the specs it was generated from and the folder it lies in, for `plain_package`
_GENERATED: dict[str, tuple[list[str], Path]] = {}
PLAIN = "_plain"  # the suffix of a package's plain twin


def generate_package(paths: list[str], root: Path, package: str = "layerdsl_under_test") -> list[Case]:
    from layerdsl.driver.output import apply, plan
    from layerdsl.driver.pipeline import check, generate

    sources, files, _ = check(paths)
    apply(plan(root / package, generate(paths)))
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    _GENERATED[package] = (paths, root)
    return cases(files, sources)


def plain_package(package: str) -> str:
    """The twin of `package` (generated by `generate_package`) compiled from the same specs without
    `@function`, `@surrogate` or written backwards: plain autograd through the same modules. Generated once,
    on first use, into `package` + "_plain" beside it."""
    twin = package + PLAIN
    if twin not in _GENERATED:
        from layerdsl.driver.pipeline import find_sources, load

        paths, root = _GENERATED[package]
        specs = root / f"{package}{PLAIN}_specs"
        sources = find_sources(paths)
        files, problems = load(sources)
        if problems:
            raise CheckFailed(f"the specs no longer parse: {problems[0].render()}")
        for src, f in zip(sources, files):
            target = specs / src.out.with_suffix(".layer")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(without_functions(f), encoding="utf-8")
        generate_package([str(specs)], root, twin)
    return twin


def without_functions(f: N.SpecFile) -> str:
    """A spec's text with its layers' `@function` and `@surrogate` decorators and `backward` blocks blanked
    out (spaces, the line breaks kept: every other statement stays at its line and column)."""
    starts = [0]
    for line in f.source.split("\n"):  # lines as the parser counts them
        starts.append(starts[-1] + len(line) + 1)
    text = list(f.source)
    spans = [d.span for layer in f.layers for d in layer.decorators if d.name in ("function", "surrogate")]
    spans += [layer.backward.span for layer in f.layers if layer.backward is not None]
    for span in spans:
        begin = starts[span.line - 1] + span.col - 1
        end = min(starts[span.end_line - 1] + span.end_col - 1, len(text))
        text[begin:end] = [c if c == "\n" else " " for c in text[begin:end]]
    return "".join(text)


def run_cli(paths: list[str], device: str, matrix: bool = True) -> int:
    """`layerdsl test`: every check once per layer on its example, then (unless `matrix` is off) the
    configuration matrix's checks on every configuration (configurations.py); a table of each."""
    import tempfile

    from layerdsl.testing.configurations import run_matrix, summary

    names = [n for n in CHECKS if not n.endswith("-cuda")]
    if device in ("cuda", "all"):
        names += ["gradcheck-cuda", "gradgradcheck-cuda"]
    if device == "cuda":
        names = [n for n in names if n.endswith("-cuda") or n in ("shapes",)]
    with tempfile.TemporaryDirectory() as tmp:
        all_cases = generate_package(paths, Path(tmp))
        rows = [(c.name, n, *run_check(n, c, "layerdsl_under_test")) for c in all_cases for n in applicable(c, names)]
        outcomes = run_matrix(all_cases, "layerdsl_under_test") if matrix and device != "cuda" else []
    widths = [max(len(r[i]) for r in rows + [("layer", "check", "result", "")]) for i in range(3)]
    print(f"{'layer':<{widths[0]}}  {'check':<{widths[1]}}  {'result':<{widths[2]}}  detail")
    for layer, check, result, detail in rows:
        print(f"{layer:<{widths[0]}}  {check:<{widths[1]}}  {result:<{widths[2]}}  {detail[:100]}")
    results = [r[2] for r in rows] + [o.result for o in outcomes]
    if outcomes:
        print(f"\nconfiguration matrix:\n{summary(outcomes)}")
    failed, passed, skipped = results.count("FAIL"), results.count("ok"), results.count("skip")
    print(f"\n{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0
