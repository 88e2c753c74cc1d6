"""Where bf16 pays on this CPU: every convolution of a model timed alone, fp32 against bf16 autocast.

Why: ``precision=auto`` picks bf16 autocast + channels_last on CPUs with native bf16 (AMX,
AVX512-BF16), yet how much a whole step gains depends on where the model spends its
convolutions.  oneDNN's bf16 kernels win on large feature maps and can lose on tiny ones (1x1,
2x2), where a 32-px dla34 does most of its arithmetic.  This records each Conv2d's input shape in
one forward, then times forward + backward (input and weight gradients) of each distinct
convolution alone in both precisions, alternating, and prints one table grouped by the side of
the input map, next to the whole training step of the model (bf16 against fp32 in channels_last,
the CPU default, and in the contiguous format).  Not a timed test.

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


def conv_timer(key, prec: engine.Precision):
    """A closure running forward + backward of one convolution with ``key``'s shapes in ``prec``."""
    cin, cout, k, s, p, d, g, bias, shape, grad_in = key
    conv = torch.nn.Conv2d(cin, cout, k, s, p, d, g, bias).to(memory_format=torch.channels_last)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_(grad_in)
    with engine.autocast(CPU, prec.amp):
        gout = torch.randn_like(conv(x), dtype=torch.float32)

    def run():
        with engine.autocast(CPU, prec.amp):
            out = conv(x)
        out.float().backward(gout)
    return run


def per_call_ms(fn, seconds: float) -> float:
    fn()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t) / n * 1e3


def row_table(name: str, px: int, batch: int, repeats: int, seconds: float) -> list[str]:
    precs = {p: engine.choose_precision(p, True, CPU) for p in PRECISIONS}
    steps = {**precs, "fp32 contiguous": engine.choose_precision("fp32", False, CPU)}  # the goal's baseline
    graph = graph_of(name)
    x = torch.randn(batch, 3, px, px).contiguous(memory_format=torch.channels_last)
    shapes = conv_shapes(to_module(graph).to(memory_format=torch.channels_last), x)
    timers = {(key, p): conv_timer(key, prec) for key in shapes for p, prec in precs.items()}
    ms = collections.defaultdict(list)
    for _ in range(repeats):  # alternate the precisions, so drift of a shared machine hits both
        for (key, p), fn in timers.items():
            ms[(key, p)].append(per_call_ms(fn, seconds / 10))
        for p, prec in steps.items():
            rate, _ = raw_rate(lambda: to_module(graph), px, CPU, prec, batch, "eager", seconds)
            ms[("step", p)].append(batch / rate * 1e3)
    groups = collections.defaultdict(lambda: {p: 0.0 for p in PRECISIONS})
    count = collections.Counter()
    for key, n in shapes.items():
        side = key[8][2]
        count[side] += n
        for p in PRECISIONS:
            groups[side][p] += n * statistics.median(ms[(key, p)])
    lines = []
    total = {p: sum(g[p] for g in groups.values()) for p in PRECISIONS}
    for side in sorted(groups, reverse=True):
        f, b = groups[side]["fp32"], groups[side]["bf16"]
        lines.append(f"| {name}@{px} | {side}x{side} | {count[side]} | {f:.1f} | {b:.1f} | {f / b:.2f}x | "
                     f"{f / total['fp32']:.0%} |")
    lines.append(f"| {name}@{px} | all convolutions | {sum(count.values())} | {total['fp32']:.1f} | "
                 f"{total['bf16']:.1f} | {total['fp32'] / total['bf16']:.2f}x | 100% |")
    f, c, b = (statistics.median(ms[("step", p)]) for p in ("fp32", "fp32 contiguous", "bf16"))
    lines.append(f"| {name}@{px} | whole training step | | {f:.1f} | {b:.1f} | {f / b:.2f}x | |")
    lines.append(f"| {name}@{px} | whole step, fp32 contiguous | | {c:.1f} | {b:.1f} | {c / b:.2f}x | |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="dla34@32,dla46_c@32,hda1m@32", help="comma list of model@size")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds; each cell is their median")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing window of a whole step (a layer: a tenth)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, CPU bf16: "
          f"{engine.cpu_bf16() or 'none (emulated: expect bf16 to lose everywhere)'}; fp32 and bf16 both "
          f"channels_last; ms per training step (forward + backward)\n")
    print("| model | input map | convolutions | fp32 ms | bf16 ms | fp32 / bf16 | share of fp32 conv time |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in args.rows.split(","):
        name, px = row.split("@")
        for line in row_table(name, int(px), args.batch, args.repeats, args.seconds):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
