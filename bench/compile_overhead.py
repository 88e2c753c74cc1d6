"""Compiled fx code vs a module that walks the graph at every forward.

Both share the very same parameter modules, so the difference is the cost of
interpreting the graph in Python (``torch.fx.Interpreter``: node lookup and dispatch per node).
Prints a table: train-step ms at batch 64, 32x32, eval forward ms at batch 1 (where
per-op Python overhead shows most), and IR -> module build time.

    .venv/bin/python bench/compile_overhead.py [--steps 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import fx, nn

from dlasearch import compile, zoo
from dlasearch.patterns import build


class GraphWalker(nn.Module):
    """Runs the compiled graph through ``torch.fx.Interpreter``: a Python walk over every node at
    every forward (the baseline that generated code avoids), on the very same modules."""

    def __init__(self, compiled):
        super().__init__()
        self.net = compiled

    def forward(self, x):
        return fx.Interpreter(self.net).run(x)


def step_ms(model, x, y, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for i in range(steps + 3):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 3:
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def infer_ms(model, x, repeats):
    model.eval()
    times = []
    for i in range(repeats + 5):
        t = time.perf_counter()
        model(x)
        if i >= 5:
            times.append((time.perf_counter() - t) * 1e3)
    model.train()
    return statistics.median(times)


def deep_hda():
    return build({"pattern": "hda", "num_classes": 10, "stem": {"channels": 16, "kernel": 3},
                  "conv_stages": [{"convs": 1, "channels": 16}, {"convs": 1, "channels": 32, "stride": 2}],
                  "stages": [{"blocks": 8, "channels": 32}, {"blocks": 16, "channels": 64},
                             {"blocks": 16, "channels": 64}, {"blocks": 8, "channels": 128}]},
                 name="deep_hda")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    rows = []
    for name, make in (("dla34", lambda: zoo.ir("dla34", 10)), ("deep HDA (48 blocks)", deep_hda)):
        ir = make()
        t = time.perf_counter()
        for _ in range(3):
            model = compile(ir)
        build_ms = (time.perf_counter() - t) / 3 * 1e3
        interp = GraphWalker(model)
        with torch.no_grad():
            model.eval()
            torch.testing.assert_close(interp(x), model(x))  # the baseline computes the same function
            model.train()
        # interleave to share thermal/cache conditions
        c1, i1 = step_ms(model, x, y, args.steps), step_ms(interp, x, y, args.steps)
        c2, i2 = step_ms(model, x, y, args.steps), step_ms(interp, x, y, args.steps)
        c, i = min(c1, c2), min(i1, i2)
        x1 = x[:1]
        f1 = min(infer_ms(model, x1, 50), infer_ms(model, x1, 50))
        g1 = min(infer_ms(interp, x1, 50), infer_ms(interp, x1, 50))
        rows.append((name, len(ir), build_ms, c, i, i / c, f1, g1, g1 / f1))
    print(f"train step, batch {args.batch}, 32x32, {args.threads} threads, torch {torch.__version__}\n")
    print("| model | IR nodes | IR->module build (ms) | train step: compiled (ms) | interpreted (ms) | ratio "
          "| batch-1 inference: compiled (ms) | interpreted (ms) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.3f} "
              f"| {r[6]:.2f} | {r[7]:.2f} | {r[8]:.3f} |")


if __name__ == "__main__":
    main()
