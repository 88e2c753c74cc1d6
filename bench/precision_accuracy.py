"""Does bf16 autocast + channels_last keep accuracy?  fp32 vs bf16 on Fashion-MNIST, paired by seed.

Why: ``precision=auto`` picks bf16 on CPUs with native bf16 and on CUDA; this is the evidence
that the switch costs no accuracy.  Both arms of a seed start from the same weights and see the
same batches; the Δ is bf16 minus fp32 test accuracy (full 10,000-image test split), with a 95%
paired t-interval over seeds.  Resumable: every finished run is appended to ``--out`` (JSON
lines) and a rerun trains only the missing (arm, seed) pairs, then prints the table from all
of them; a file made with other settings is refused, not mixed.  Runs on a CPU with native bf16
(AMX, AVX512-BF16) go to a file of their own: other kernels, so other rounding, than the
emulated path (a file from before the ``cpu_bf16`` setting counts as made without native bf16).
Runs with the engine's small-map rewrite (``train.small_maps``, on by default since 2026-11-27) go
to a ``-small_maps`` file; a file from before the setting counts as made without it.  ``--against
FILE`` pairs this file's runs with another's by arm and seed (same initial weights, same batches)
and prints the Δ per arm: e.g. the rewrite against the stored runs made without it.

    python bench/precision_accuracy.py [--seeds 10] [--epochs 5] [--limit 6000] [--threads 2]
        [--small-maps on|off] [--against FILE]
        [--out results/precision/fashion_mnist-dla46_c[-amx_bf16][-small_maps].jsonl] [--root ../shared/data]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from scipy import stats  # noqa: E402

from dlasearch import train as trainmod  # noqa: E402
from dlasearch.analysis.compare.statistics import mean_ci  # noqa: E402
from dlasearch.arch import resolve_arch, total_stride  # noqa: E402
from dlasearch.ir import to_module  # noqa: E402
from dlasearch.train import data as datamod, engine  # noqa: E402

ARMS = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16", "channels_last": True}}
BEFORE = {"cpu_bf16": None, "small_maps": False}  # settings added later: what a file without them ran with


def setting(rec: dict, key: str):
    return rec["settings"].get(key, BEFORE.get(key))


def stored(path: Path, settings: dict) -> dict[tuple[str, int], dict]:
    """The finished runs in ``path`` by (arm, seed); refuses a file made with other settings."""
    runs = {}
    if path.is_file():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            rec = json.loads(line)
            diff = {k: (setting(rec, k), v) for k, v in settings.items() if setting(rec, k) != v}
            if diff:
                sys.exit(f"{path}:{n} was made with other settings {diff} (stored, given); "
                         f"pass those, or --out NEW_FILE")
            runs[(rec["arm"], rec["seed"])] = rec
    return runs


def paired_t(a: list, b: list) -> tuple[float, float, float, float]:
    """mean(a - b) over paired seeds, its 95% t-interval and the paired t-test's p (1.0 if every pair is equal)."""
    d = [x - y for x, y in zip(a, b)]
    mean, _, lo, hi = mean_ci(d)
    return mean, lo, hi, stats.ttest_rel(a, b).pvalue if any(d) else 1.0


def table(runs: dict, seeds: int) -> str:
    paired = [s for s in range(seeds) if ("fp32", s) in runs and ("bf16", s) in runs]
    acc = {arm: [runs[(arm, s)]["test_accuracy"] for s in paired] for arm in ARMS}
    n = len(paired)
    if n < 2:
        return f"{n} paired seed(s): too few for an interval"
    d = [b - a for a, b in zip(acc["fp32"], acc["bf16"])]
    mean, lo, hi, p = paired_t(acc["bf16"], acc["fp32"])
    lines = ["| seed | " + " | ".join(str(s) for s in paired) + " | mean |", "|---|" + "---|" * (n + 1)]
    for arm in ARMS:
        lines.append(f"| {arm} | " + " | ".join(f"{a:.4f}" for a in acc[arm]) + f" | {sum(acc[arm]) / n:.4f} |")
    lines.append("| Δ bf16 − fp32 | " + " | ".join(f"{x:+.4f}" for x in d) + f" | **{mean:+.4f}** |")
    secs = {arm: sum(runs[(arm, s)]["train_seconds"] for s in paired) / n for arm in ARMS}
    lines += ["", f"Δ = {mean:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}] (paired t, n={n} seeds, "
                  f"p={p:.2f}); seed-to-seed sd of fp32: {stats.tstd(acc['fp32']):.4f}; mean train s: "
                  + ", ".join(f"{arm} {s:.0f}" for arm, s in secs.items())]
    return "\n".join(lines)


def against(runs: dict, other: dict, seeds: int, label: str) -> str:
    """Per arm, this file's test accuracy minus ``other``'s, paired by seed, with a 95% t-interval."""
    lines = [f"| arm | seeds | mean, this file | mean, {label} | Δ this − that | 95% CI | p | seeds equal |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for arm in ARMS:
        paired = [s for s in range(seeds) if (arm, s) in runs and (arm, s) in other]
        a = [runs[(arm, s)]["test_accuracy"] for s in paired]
        b = [other[(arm, s)]["test_accuracy"] for s in paired]
        n = len(paired)
        if n < 2:
            lines.append(f"| {arm} | {n} | too few paired seeds |")
            continue
        mean, lo, hi, p = paired_t(a, b)
        lines.append(f"| {arm} | {n} | {sum(a) / n:.4f} | {sum(b) / n:.4f} | {mean:+.4f} | "
                     f"[{lo:+.4f}, {hi:+.4f}] | {p:.2f} | {sum(x == y for x, y in zip(a, b))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="dla46_c")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--limit", type=int, default=6000)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run (numerics do not depend on it "
                                                            "enough to matter; stored with the runs)")
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--small-maps", default="on", choices=["on", "off"], help="train.small_maps of the runs")
    ap.add_argument("--against", default=None, help="another file of runs to pair with by arm and seed")
    ap.add_argument("--out", default=None, help="default: results/precision/fashion_mnist-ARCH.jsonl, with a "
                                                "-amx_bf16 (or -avx512_bf16) suffix on a CPU with native bf16 "
                                                "and -small_maps with the rewrite on")
    args = ap.parse_args(argv)
    native = engine.cpu_bf16()
    ds = datamod.load("fashion_mnist", root=args.root, limit=args.limit, progress=False, download=False)
    graph = resolve_arch(args.arch, ds.channels, ds.num_classes)
    ds = ds.resized(total_stride(graph))
    base = trainmod.TrainConfig(epochs=args.epochs, threads=args.threads, device="cpu", progress=False,
                                small_maps=args.small_maps == "on")
    settings = {"arch": args.arch, "data": "fashion_mnist", "limit": args.limit, "epochs": args.epochs,
                "threads": args.threads, "init": base.init, "batch_size": base.batch_size, "lr": base.lr,
                "bn_batches": base.bn_batches, "torch": torch.__version__, "cpu_bf16": native,
                "small_maps": base.small_maps}
    name = f"fashion_mnist-{args.arch}{f'-{native}' if native else ''}{'-small_maps' if base.small_maps else ''}"
    out = Path(args.out or ROOT / "results" / "precision" / f"{name}.jsonl")
    runs = stored(out, settings)
    todo = [(arm, s) for s in range(args.seeds) for arm in ARMS if (arm, s) not in runs]
    print(f"{len(runs)} run(s) stored in {out}, {len(todo)} to train", file=sys.stderr, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, (arm, seed) in enumerate(todo, 1):
        cfg = dataclasses.replace(base, seed=seed, **ARMS[arm])
        model = to_module(graph, init=cfg.init, seed=seed)  # both arms of a seed: the same initial weights
        res = trainmod.train(model, ds, cfg, test=True)
        rec = {"arm": arm, "seed": seed, "test_accuracy": res.test_accuracy, "val_accuracy": res.val_accuracy,
               "status": res.status, "train_seconds": round(res.train_seconds, 1), "engine": res.engine["reason"],
               "small_maps_note": res.engine["small_maps"],
               "settings": settings}
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        runs[(arm, seed)] = rec
        print(f"[{i}/{len(todo)}] {arm} seed {seed}: test {res.test_accuracy:.4f} ({res.train_seconds:.0f} s)",
              file=sys.stderr, flush=True)
    print(f"{args.arch}, Fashion-MNIST (limit {args.limit}, resized to {ds.image_size[0]} px), {args.epochs} epochs, "
          f"init {base.init}, {args.threads} thread(s); fp32 vs bf16 autocast + channels_last; CPU bf16: "
          f"{native or 'none (emulated)'}\n")
    print(table(runs, args.seeds))
    if args.against:
        other = Path(args.against)
        theirs = stored(other, {k: v for k, v in settings.items() if k != "small_maps"})
        dense = any(setting(r, "small_maps") for r in theirs.values())
        print(f"\nAgainst {other} (small_maps {'on' if dense else 'off'}), paired by arm and seed:\n")
        print(against(runs, theirs, args.seeds, other.stem))
    return 0


if __name__ == "__main__":
    sys.exit(main())
