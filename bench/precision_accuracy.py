"""Does bf16 autocast + channels_last keep accuracy?  fp32 vs bf16 on Fashion-MNIST, paired by seed.

Why: ``precision=auto`` picks bf16 on CPUs with native bf16; this is the evidence
that the switch costs no accuracy.  Each run uses one thread (fair to a shared
machine); the Δ is bf16 minus fp32 test accuracy, with a 95% t-interval over seeds.

    python bench/precision_accuracy.py [--seeds 3] [--epochs 3] [--limit 6000] [--root ../shared/data]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from scipy import stats

from dlasearch.train import data as datamod
from dlasearch import train as trainmod
from dlasearch.ir import to_module


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="dla46_c")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=6000)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--arm", choices=("fp32", "bf16", "both"), default="both")
    args = ap.parse_args(argv)
    ds = datamod.load("fashion_mnist", root=args.root, limit=args.limit, progress=False, download=False)
    graph = trainmod.resolve_arch(args.arch, ds.channels, ds.num_classes)
    ds = ds.resized(trainmod.total_stride(graph))
    arms = {"fp32": dict(precision="fp32", channels_last=False), "bf16": dict(precision="bf16", channels_last=True)}
    if args.arm != "both":
        arms = {args.arm: arms[args.arm]}
    acc = {k: [] for k in arms}
    for seed in range(args.seeds):
        for arm, opts in arms.items():
            torch.manual_seed(seed)
            model = to_module(graph)
            cfg = trainmod.TrainConfig(epochs=args.epochs, seed=seed, threads=1, device="cpu", progress=False, **opts)
            res = trainmod.train(model, ds, cfg, test=True)
            acc[arm].append(res.test_accuracy)
            print(json.dumps({"arm": arm, "seed": seed, "test_accuracy": res.test_accuracy,
                              "train_seconds": round(res.train_seconds, 1)}), flush=True)
    if len(arms) == 2:
        d = [b - a for a, b in zip(acc["fp32"], acc["bf16"])]
        n = len(d)
        mean = sum(d) / n
        sd = (sum((x - mean) ** 2 for x in d) / (n - 1)) ** 0.5 if n > 1 else float("nan")
        half = stats.t.ppf(0.975, n - 1) * sd / n ** 0.5 if n > 1 else float("nan")
        print("| arm | " + " | ".join(f"seed {s}" for s in range(n)) + " | mean |")
        print("|---|" + "---|" * (n + 1))
        for arm in arms:
            print(f"| {arm} | " + " | ".join(f"{a:.4f}" for a in acc[arm]) + f" | {sum(acc[arm]) / n:.4f} |")
        print(f"Δ (bf16 - fp32) = {mean:+.4f}, 95% CI [{mean - half:+.4f}, {mean + half:+.4f}] (t, n={n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
