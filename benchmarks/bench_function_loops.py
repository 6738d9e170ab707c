#!/usr/bin/env python
"""`@function` layers whose loop stays a loop, against the same loop unrolled and plain autograd.

One step is forward + ``backward`` of ``out.sum()``. A list of sub layers of constructed length is a
loop Function too (its members stacked by the module each call), against the plain module. Each case runs its variants in alternating rounds (the
order rotating every round); printed: the median time of each, and its ratio to the first variant with the
min and max of the per-round ratios. One thread, float32, CPU; also printed: what each variant saves for backward (MiB).

    python benchmarks/bench_function_loops.py            # every case, 15 rounds
    python benchmarks/bench_function_loops.py --rounds 5
    python benchmarks/bench_function_loops.py --only residual
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerdsl.codegen.module import emit_file  # noqa: E402
from layerdsl.semantics.checker import check_program  # noqa: E402
from layerdsl.syntax.parser import parse_file  # noqa: E402

SCAN = """
@function
layer {name}(d: int, steps: int = 3) {{
    param w: [d, d]
    example(d = 3)
    forward(x: [B, d]) -> [B, d] {{
        h = x
        outputs = []
        for t in range({count}) {{
            h = tanh(h @ w + x)
            outputs.append(h)
        }}
        return h + sum(stack(outputs, dim = 0), dim = 0)
    }}
}}
"""

ELMAN = """
@function
layer Elman(input_size: int, hidden_size: int) {
    param weight_ih_l0: [hidden_size, input_size]
    param weight_hh_l0: [hidden_size, hidden_size]
    param bias_ih_l0: [hidden_size]
    param bias_hh_l0: [hidden_size]
    example(input_size = 3, hidden_size = 4)
    forward(input: [T, B, input_size]) -> [T, B, hidden_size] {
        gi = input @ transpose(weight_ih_l0, 0, 1) + bias_ih_l0
        h = new_zeros(input, [size_at(input, 1), hidden_size])
        outputs = []
        for t in range(size_at(input, 0)) {
            h = tanh(gi[t] + h @ transpose(weight_hh_l0, 0, 1) + bias_hh_l0)
            outputs.append(h)
        }
        return stack(outputs, dim = 0)
    }
}
"""

# torch.nn.RNN(num_layers = 2) written out: a loop per layer, the second over the first's stacked outputs
# (torch's RNN spec, specs/torch_nn/rnn.layer, keeps its loop over layers: not derived yet).
ELMAN2 = """
@function
layer Elman2(input_size: int, hidden_size: int) {
    param weight_ih_l0: [hidden_size, input_size]
    param weight_hh_l0: [hidden_size, hidden_size]
    param bias_ih_l0: [hidden_size]
    param bias_hh_l0: [hidden_size]
    param weight_ih_l1: [hidden_size, hidden_size]
    param weight_hh_l1: [hidden_size, hidden_size]
    param bias_ih_l1: [hidden_size]
    param bias_hh_l1: [hidden_size]
    example(input_size = 3, hidden_size = 4)
    forward(input: [T, B, input_size]) -> [T, B, hidden_size] {
        gi = input @ transpose(weight_ih_l0, 0, 1) + bias_ih_l0
        h = new_zeros(input, [size_at(input, 1), hidden_size])
        outputs = []
        for t in range(size_at(input, 0)) {
            h = tanh(gi[t] + h @ transpose(weight_hh_l0, 0, 1) + bias_hh_l0)
            outputs.append(h)
        }
        gi1 = stack(outputs, dim = 0) @ transpose(weight_ih_l1, 0, 1) + bias_ih_l1
        h1 = new_zeros(input, [size_at(input, 1), hidden_size])
        outputs1 = []
        for t in range(size_at(input, 0)) {
            h1 = tanh(gi1[t] + h1 @ transpose(weight_hh_l1, 0, 1) + bias_hh_l1)
            outputs1.append(h1)
        }
        return stack(outputs1, dim = 0)
    }
}
"""

# torch.nn.RNN(num_layers = 2) as a loop over the layers (a family whose first member has a shape of its own)
# holding the loop over time: the loop over layers is unrolled (its count is written), the one over time kept.
ELMAN_LAYERS = """
@function
layer ElmanLayers(input_size: int, hidden_size: int) {
    for k in range(2) {
        param weight_ih_l{k}: [hidden_size, input_size if k == 0 else hidden_size]
        param weight_hh_l{k}: [hidden_size, hidden_size]
        param bias_ih_l{k}: [hidden_size]
        param bias_hh_l{k}: [hidden_size]
    }
    example(input_size = 3, hidden_size = 4)
    forward(input: [T, B, input_size]) -> [T, B, hidden_size] {
        x = input
        for k in range(2) {
            gi = x @ transpose(weight_ih_l{k}, 0, 1) + bias_ih_l{k}
            h = new_zeros(input, [B, hidden_size])
            outputs = []
            for t in range(T) {
                h = tanh(gi[t] + h @ transpose(weight_hh_l{k}, 0, 1) + bias_hh_l{k})
                outputs.append(h)
            }
            x = stack(outputs, dim = 0)
        }
        return x
    }
}
"""

# torch.nn.RNN(bidirectional = True) written out: the reverse direction reads `gi[T - 1 - s]` (one slice of
# the gradient per step) and its states are put back in order (a flip of their stack, `autodiff/list_order`).
BIELMAN = """
@function
layer BiElman(input_size: int, hidden_size: int) {
    param weight_ih_l0: [hidden_size, input_size]
    param weight_hh_l0: [hidden_size, hidden_size]
    param bias_ih_l0: [hidden_size]
    param bias_hh_l0: [hidden_size]
    param weight_ih_l0_reverse: [hidden_size, input_size]
    param weight_hh_l0_reverse: [hidden_size, hidden_size]
    param bias_ih_l0_reverse: [hidden_size]
    param bias_hh_l0_reverse: [hidden_size]
    example(input_size = 3, hidden_size = 4)
    forward(input: [T, B, input_size]) -> [T, B, ...] {
        gi = input @ transpose(weight_ih_l0, 0, 1) + bias_ih_l0
        h = new_zeros(input, [size_at(input, 1), hidden_size])
        outputs = []
        for t in range(T) {
            h = tanh(gi[t] + h @ transpose(weight_hh_l0, 0, 1) + bias_hh_l0)
            outputs.append(h)
        }
        gr = input @ transpose(weight_ih_l0_reverse, 0, 1) + bias_ih_l0_reverse
        g = new_zeros(input, [size_at(input, 1), hidden_size])
        backwards = []
        for s in range(T) {
            g = tanh(gr[T - 1 - s] + g @ transpose(weight_hh_l0_reverse, 0, 1) + bias_hh_l0_reverse)
            backwards.append(g)
        }
        in_order = []
        for t in range(T) {
            in_order.append(backwards[T - 1 - t])
        }
        return cat([stack(outputs, dim = 0), stack(in_order, dim = 0)], dim = -1)
    }
}
"""


DEEP = """
layer Residual(d: int, hidden: int) {
    param w1: [hidden, d]
    param w2: [d, hidden]
    example(d = 4, hidden = 8)
    forward(x: [..., d]) -> [..., d] {
        return x + relu(x @ transpose(w1, 0, 1)) @ transpose(w2, 0, 1)
    }
}

@function
layer Deep(d: int, hidden: int, depth: int) {
    sub blocks = [Residual(d, hidden) for i in range(depth)]
    example(d = 4, hidden = 8, depth = 2)
    forward(x: [..., d]) -> [..., d] {
        h = x
        for block in blocks {
            h = block(h)
        }
        return h
    }
}
"""


def compiled(text: str, stem: str) -> dict:
    spec = parse_file(f"{stem}.layer", text)
    namespace: dict = {}
    exec(compile(emit_file(spec, check_program([spec]), f"{stem}.layer", {}), f"{stem}.py", "exec"), namespace)
    return namespace


def step(fn, *tensors):
    def run():
        for t in tensors:
            t.grad = None
        fn().sum().backward()

    run.forward = fn  # type: ignore[attr-defined]
    return run


def saved_mib(forward) -> float:
    """What autograd keeps for backward after one forward, in MiB (each storage once)."""
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(kept.values()) / 2**20


def cases():
    loop = compiled(SCAN.format(name="Looped", count="steps"), "looped")
    unrolled = compiled(SCAN.format(name="Unrolled", count="3"), "unrolled")
    for b, d in ((32, 64), (512, 512)):
        torch.manual_seed(0)
        looped = loop["Looped"](d, steps=3)
        unrolled_layer = unrolled["Unrolled"](d)
        unrolled_layer.load_state_dict(looped.state_dict())
        x = torch.randn(b, d, requires_grad=True)
        yield f"3-step scan {b}x{d}", {
            "loop Function": step(lambda: looped(x), x, looped.w),
            "unrolled Function": step(lambda: unrolled_layer(x), x, looped.w),
            "plain autograd": step(lambda: loop["looped"](x, looped.w, steps=3), x, looped.w),
        }
    elman = compiled(ELMAN, "elman")
    for t, b, n, h in ((16, 8, 32, 64), (64, 32, 128, 128)):
        torch.manual_seed(0)
        ours = elman["Elman"](n, h)
        rnn = torch.nn.RNN(n, h)
        rnn.load_state_dict(ours.state_dict())
        x = torch.randn(t, b, n, requires_grad=True)
        params = list(ours.parameters())
        yield f"Elman RNN T={t} B={b} {n}->{h}", {
            "loop Function": step(lambda: ours(x), x, *params),
            "plain autograd": step(lambda: elman["elman"](x, *params, hidden_size=h), x, *params),
            "torch.nn.RNN": step(lambda: rnn(x)[0], x, *rnn.parameters()),
        }
    elman2 = compiled(ELMAN2, "elman2")
    t, b, n, h = 64, 32, 128, 128
    torch.manual_seed(0)
    ours2 = elman2["Elman2"](n, h)
    rnn2 = torch.nn.RNN(n, h, num_layers=2)
    rnn2.load_state_dict(ours2.state_dict())
    x2 = torch.randn(t, b, n, requires_grad=True)
    params2 = list(ours2.parameters())
    yield f"2-layer Elman RNN T={t} B={b} {n}->{h}", {
        "loop Function": step(lambda: ours2(x2), x2, *params2),
        "plain autograd": step(lambda: elman2["elman2"](x2, *params2, hidden_size=h), x2, *params2),
        "torch.nn.RNN": step(lambda: rnn2(x2)[0], x2, *rnn2.parameters()),
    }
    layers = compiled(ELMAN_LAYERS, "elman_layers")
    torch.manual_seed(0)
    ours_layers = layers["ElmanLayers"](n, h)
    ours_layers.load_state_dict(ours2.state_dict())
    yield f"2-layer Elman RNN, a loop over the layers T={t} B={b} {n}->{h}", {
        "loop Function": step(lambda: ours_layers(x2), x2, *ours_layers.parameters()),
        "written out": step(lambda: ours2(x2), x2, *params2),
        "plain autograd": step(lambda: elman2["elman2"](x2, *params2, hidden_size=h), x2, *params2),
        "torch.nn.RNN": step(lambda: rnn2(x2)[0], x2, *rnn2.parameters()),
    }
    bielman = compiled(BIELMAN, "bielman")
    torch.manual_seed(0)
    ours_bi = bielman["BiElman"](n, h)
    rnn_bi = torch.nn.RNN(n, h, bidirectional=True)
    rnn_bi.load_state_dict(ours_bi.state_dict())
    params_bi = list(ours_bi.parameters())
    yield f"bidirectional Elman RNN T={t} B={b} {n}->{h}", {
        "loop Function": step(lambda: ours_bi(x2), x2, *params_bi),
        "plain autograd": step(lambda: bielman["bi_elman"](x2, *params_bi, hidden_size=h), x2, *params_bi),
        "torch.nn.RNN": step(lambda: rnn_bi(x2)[0], x2, *rnn_bi.parameters()),
    }

    deep = compiled(DEEP, "deep")
    plain = compiled(DEEP.replace("@function\n", ""), "deep_plain")
    for b, d, depth in ((32, 64, 4), (512, 256, 8)):
        torch.manual_seed(0)
        ours, theirs = deep["Deep"](d, 4 * d, depth), plain["Deep"](d, 4 * d, depth)
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(b, d, requires_grad=True)
        yield f"list of {depth} residual blocks {b}x{d}", {
            "loop Function": step(lambda: ours(x), x, *ours.parameters()),
            "plain autograd": step(lambda: theirs(x), x, *theirs.parameters()),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", default="", help="the cases whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, variants in cases():
        if args.only not in name:
            continue
        timers = {k: Timer("run()", globals={"run": run}) for k, run in variants.items()}
        for run in variants.values():
            run()
        times: dict[str, list[float]] = {k: [] for k in variants}
        keys = list(variants)
        for r in range(args.rounds):
            for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
                times[k].append(timers[k].blocked_autorange(min_run_time=0.05).median)
        first = keys[0]
        print(name)
        for k in keys:
            ratios = sorted(a / b for a, b in zip(times[k], times[first]))
            print(
                f"  {k:20s} {statistics.median(times[k]) * 1e6:10.1f} us   {statistics.median(ratios):.2f}x"
                f" [{ratios[0]:.2f}, {ratios[-1]:.2f}] of {first}   saved {saved_mib(variants[k].forward):.2f} MiB"
            )


if __name__ == "__main__":
    main()
