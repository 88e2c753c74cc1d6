"""Where bf16 and the small-map rewrite pay on this CPU: every convolution of a model timed alone.

Why: ``precision=auto`` picks bf16 autocast + channels_last on CPUs with native bf16 (AMX,
AVX512-BF16), yet how much a whole step gains depends on where the model spends its
convolutions.  oneDNN's bf16 kernels win on large feature maps and can lose on tiny ones (1x1,
2x2), where a 32-px dla34 does most of its arithmetic.  This records each Conv2d's input shape in
one forward, then times forward + backward (input and weight gradients) of each distinct
convolution alone in both precisions, alternating, and prints one table grouped by the side of
the input map; on maps of <= 4 positions also as the engine runs them by default on CPU
(``small_maps``: one dense GEMM, "dense").  A second table times the whole training step of the
model in each setting, against fp32 in the contiguous format with every convolution a
convolution (the issue's baseline).  Not a timed test.

    .venv/bin/python bench/cpu_bf16_layers.py [--rows dla34@32,dla46_c@32,hda1m@32] [--batch 128]
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trial_speed import graph_of, raw_rate  # noqa: E402

from dlasearch.ir import to_module  # noqa: E402
from dlasearch.train import engine  # noqa: E402
from dlasearch.train.small_maps import MAX_POSITIONS, plan, small_map_conv, takes  # noqa: E402

CPU = torch.device("cpu")
PRECISIONS = ("fp32", "bf16")


def conv_shapes(model, x) -> collections.Counter:
    """(conv config, input shape, needs input grad) -> how many convolutions of the model have it."""
    seen = collections.Counter()

    def hook(mod, args):
        grad_in = sum(seen.values()) > 0  # every convolution but the stem's passes a gradient back
        key = (mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
               mod.groups, mod.bias is not None, tuple(args[0].shape), grad_in)
        seen[key] += 1
    hooks = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def conv_of(key, device=None) -> torch.nn.Conv2d:
    cin, cout, k, s, p, d, g, bias, _, _ = key
    return torch.nn.Conv2d(cin, cout, k, s, p, d, g, bias, device=device)


def small(key) -> bool:
    """Whether the engine's small-map rewrite takes this convolution."""
    return takes(conv_of(key, "meta"), key[8][2:])


def conv_timer(key, prec: engine.Precision, dense: bool = False):
    """A closure running forward + backward of one convolution with ``key``'s shapes in ``prec``
    (``dense``: as ``small_map_conv``)."""
    shape, grad_in = key[8], key[9]
    conv = conv_of(key).to(memory_format=torch.channels_last)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_(grad_in)
    fn = conv
    if dense:
        sel, out_hw = plan(tuple(shape[2:]), conv.kernel_size, conv.stride, conv.padding)
        fn = lambda x: small_map_conv(x, conv.weight, conv.bias, sel, out_hw)  # noqa: E731
    with engine.autocast(CPU, prec.amp):
        gout = torch.randn_like(fn(x), dtype=torch.float32)

    def run():
        with engine.autocast(CPU, prec.amp):
            out = fn(x)
        out.float().backward(gout)
    return run


def per_call_ms(fn, seconds: float) -> float:
    fn()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t) / n * 1e3


STEPS = {  # whole-step settings: (precision, channels_last, small_maps)
    "fp32 contiguous": ("fp32", False, False), "fp32": ("fp32", True, False), "fp32 dense": ("fp32", True, True),
    "bf16": ("bf16", True, False), "bf16 dense": ("bf16", True, True)}


def row_tables(name: str, px: int, batch: int, repeats: int, seconds: float,
               layers: bool = True) -> tuple[list[str], str]:
    """The per-map-size lines of the layer table (none without ``layers``) and the model's line of the
    step table."""
    precs = {p: engine.choose_precision(p, True, CPU) for p in PRECISIONS}
    graph = graph_of(name)
    x = torch.randn(batch, 3, px, px).contiguous(memory_format=torch.channels_last)
    shapes = conv_shapes(to_module(graph).to(memory_format=torch.channels_last), x)
    timers = {(key, p, dense): conv_timer(key, prec, dense) for key in shapes for p, prec in precs.items()
              for dense in ((False, True) if small(key) else (False,))} if layers else {}
    ms = collections.defaultdict(list)
    for _ in range(repeats):  # alternate the settings, so drift of a shared machine hits all of them
        for cell, fn in timers.items():
            ms[cell].append(per_call_ms(fn, seconds / 10))
        for label, (p, cl, dense) in STEPS.items():
            rate, _ = raw_rate(lambda: to_module(graph), px, CPU, engine.choose_precision(p, cl, CPU), batch,
                               "eager", seconds, small_maps=dense)
            ms[("step", label)].append(batch / rate * 1e3)
    step = {label: statistics.median(ms[("step", label)]) for label in STEPS}
    base = step["fp32 contiguous"]
    line = (f"| {name}@{px} | " + " | ".join(f"{step[label]:.1f}" for label in STEPS)
            + f" | {base / step['bf16']:.2f}x | {base / step['bf16 dense']:.2f}x | "
            f"{step['fp32 dense'] / step['bf16 dense']:.2f}x | {step['bf16'] / step['bf16 dense']:.2f}x |")
    if not layers:
        return [], line
    cols = [(p, False) for p in PRECISIONS] + [(p, True) for p in PRECISIONS]
    groups = collections.defaultdict(lambda: collections.defaultdict(float))
    count = collections.Counter()
    for key, n in shapes.items():
        side = f"{key[8][2]}x{key[8][3]}"
        count[side] += n
        for p, dense in cols:  # a convolution the rewrite leaves alone costs the same in the dense columns
            groups[side][(p, dense)] += n * statistics.median(ms[(key, p, dense and small(key))])
    total = {c: sum(g[c] for g in groups.values()) for c in cols}
    lines = []
    for side in sorted(groups, key=lambda s: -int(s.split("x")[0])) + ["all"]:
        g, n = (total, sum(count.values())) if side == "all" else (groups[side], count[side])
        f32 = g[("fp32", False)]
        lines.append(f"| {name}@{px} | {'all convolutions' if side == 'all' else side} | {n} | "
                     + " | ".join(f"{g[c]:.1f}" for c in cols)
                     + f" | {f32 / g[('bf16', False)]:.2f}x | {f32 / g[('bf16', True)]:.2f}x"
                     f" | {f32 / total[('fp32', False)]:.0%} |")
    return lines, line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="dla34@32,dla46_c@32,hda1m@32", help="comma list of model@size")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds; each cell is their median")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing window of a whole step (a layer: a tenth)")
    ap.add_argument("--steps-only", action="store_true", help="only the whole-step table (more rounds, same time)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, CPU bf16: "
          f"{engine.cpu_bf16() or 'none (emulated: expect bf16 to lose everywhere)'}; channels_last; ms per "
          f"training step (forward + backward); dense: maps of <= {MAX_POSITIONS} positions as one GEMM\n")
    if not args.steps_only:
        print("| model | input map | convolutions | fp32 ms | bf16 ms | fp32 dense ms | bf16 dense ms | fp32 / bf16 | "
              "fp32 / bf16 dense | share of fp32 conv time |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    steps = []
    for row in args.rows.split(","):
        name, px = row.split("@")
        lines, step = row_tables(name, int(px), args.batch, args.repeats, args.seconds, not args.steps_only)
        if lines:
            print("\n".join(lines), flush=True)
        steps.append(step)
    print("\nWhole training step, ms (fp32 contiguous with convolutions only is the baseline):\n")
    print("| model | " + " | ".join(STEPS) + " | fp32 contiguous / bf16 | fp32 contiguous / bf16 dense "
          "(the default) | fp32 dense / bf16 dense | bf16 / bf16 dense |")
    print("|---|" + "---:|" * (len(STEPS) + 4))
    print("\n".join(steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
