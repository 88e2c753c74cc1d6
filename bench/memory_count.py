"""Training-memory count: the CPU path (batches 2 and 4, extended to the batch) against the meta forward.

Why: every trial of a search or comparison counts its training memory before it trains.  The
count must not change with the method (stored studies compare it), and it should cost little.
For every zoo model and every architecture stored under results/ (the cifar5k benchmark, the
comparisons), this counts the saved activations both ways at batch 128 (16 at 64 px for the
models that need it) and prints one table: how many networks, how many differ, and the time of
each method.  Not a timed test.

    .venv/bin/python bench/memory_count.py [--limit N]
"""
from __future__ import annotations

import argparse
import copy
import glob
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlasearch import ir as irmod, zoo  # noqa: E402
from dlasearch.ir import to_module  # noqa: E402
from dlasearch import measure  # noqa: E402


def networks(limit: int | None):
    yield from ((f"zoo {n}", zoo.ir(n, num_classes=10)) for n in zoo.names())
    files = sorted(glob.glob(str(ROOT / "results/bench/*/archs/*.json")))[:limit] + \
        sorted(glob.glob(str(ROOT / "results/compare/*/archs/*.ir.json")))
    yield from ((Path(f).relative_to(ROOT).as_posix(), irmod.from_json(Path(f).read_text())) for f in files)


def input_shape(model) -> tuple | None:
    """The first of (3 or 1 channels at 32 px, batch 128; 3 channels at 64 px, batch 16) the model takes."""
    for shape in ((128, 3, 32, 32), (128, 1, 32, 32), (16, 3, 64, 64)):
        try:
            model.eval()(torch.zeros(2, *shape[1:]))
            return shape
        except RuntimeError:
            continue
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="at most this many benchmark architectures")
    args = ap.parse_args()
    n = differ = 0
    t_meta = t_cpu = 0.0
    for name, graph in networks(args.limit):
        model = to_module(graph)
        shape = input_shape(model)
        if shape is None:
            print(f"skipped {name}: no input shape fits")
            continue
        on_meta = copy.deepcopy(model).to("meta")
        t = time.perf_counter()
        ref = measure.train_memory(on_meta, shape, cuda_peak=False)["activations"]
        t_meta += time.perf_counter() - t
        t = time.perf_counter()
        got = measure.train_memory(model, shape, cuda_peak=False)["activations"]
        t_cpu += time.perf_counter() - t
        n += 1
        if got != ref:
            differ += 1
            print(f"DIFFERS {name}: meta {ref:,} bytes, CPU path {got:,}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| networks | counts that differ | meta s (all) | CPU path s (all) | ratio |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {n} | {differ} | {t_meta:.1f} | {t_cpu:.1f} | {t_meta / t_cpu:.1f}x |")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
