"""How many batches does the BatchNorm recalibration need?  Re-scores a comparison's trained runs.

Why: before every validation the engine replaces the BatchNorm running statistics by exact
averages over ``bn_batches`` training batches (16 by default).  On a small dataset that pass
is the largest cost of a trial that is not a training step (docs/engine.md).  This takes the
trained weights a ``dlasearch compare`` kept (``runs/*.safetensors``), recalibrates them with
each batch count, and scores validation and test accuracy, so the default can be judged on
many trained networks instead of one.  With the comparison's own count it must reproduce the
recorded accuracies exactly (checked, and printed).

    python bench/bn_batches.py results/compare/cifar10_subset-1m [--batches 2 4 8 16]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlasearch import train as trainmod  # noqa: E402
from dlasearch.deploy import checkpoint  # noqa: E402
from dlasearch.train import data as datamod, engine  # noqa: E402


def load_data(folder: Path):
    settings = json.loads((folder / "settings.json").read_text())
    opts = dict(settings["data"])
    name, seed, size = opts.pop("name"), opts.pop("seed"), opts.pop("image_size")
    ds = datamod.load(name, seed=seed, image_size=size, progress=False, **opts)
    return ds, trainmod.TrainConfig(**{k: v for k, v in settings["train"].items()
                                       if k in trainmod.TrainConfig.option_names()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a dlasearch compare folder whose runs kept their weights")
    ap.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--channels-last", action="store_true",
                    help="score in channels_last, as runs trained with it did (CPU runs made before it became "
                         "the CPU default were contiguous); only the runs' own format reproduces their "
                         "recorded accuracies bit for bit")
    args = ap.parse_args(argv)
    ds, config = load_data(args.folder)
    dev = torch.device("cpu")
    prec = engine.choose_precision(config.precision, args.channels_last, dev)
    feeder = engine.Feeder(ds, dev)
    rows = []
    runs = sorted(args.folder.glob("runs/*.safetensors"))
    if not runs:
        print(f"{args.folder}: no runs/*.safetensors (weights are kept only on the machine that trained them)")
        return 1
    for i, path in enumerate(runs, 1):
        rec = json.loads(path.with_suffix(".json").read_text())
        model, _ = checkpoint.build(path)
        model = model.to(memory_format=prec.memory_format)
        row = {"pattern": rec["pattern"], "seed": rec["seed"], "recorded": rec["test_accuracy"]}
        for k in args.batches:
            cfg = dataclasses.replace(config, seed=rec["seed"], bn_batches=k)
            t = time.perf_counter()
            engine.recalibrate_bn(model, feeder, cfg, dev, prec)
            row[f"recal_s_{k}"] = time.perf_counter() - t
            row[f"val_{k}"] = engine.evaluate(model, feeder, "val", config.eval_batch_size, prec)[1]
            row[f"test_{k}"] = engine.evaluate(model, feeder, "test", config.eval_batch_size, prec)[1]
        rows.append(row)
        print(f"[{i}/{len(runs)}] {path.stem}: recorded test {rec['test_accuracy']:.3f}; "
              + ", ".join(f"{k}: {row[f'test_{k}']:.3f}" for k in args.batches), file=sys.stderr, flush=True)
    own = config.bn_batches
    if own in args.batches:
        same = sum(abs(r[f"test_{own}"] - r["recorded"]) < 1e-9 for r in rows)
        print(f"bn_batches={own} (the comparison's own) reproduces {same}/{len(rows)} recorded test accuracies exactly\n")
    ref = own if own in args.batches else max(args.batches)
    print(f"{len(rows)} trained networks of {args.folder.name}; accuracy %, Δ against bn_batches={ref} "
          f"(paired over networks, 95% t-interval)\n")
    print("| bn_batches | mean test | Δ test [95% CI] | max abs Δ test | mean val | Δ val [95% CI] | recal s |")
    print("|---|---|---|---|---|---|---|")
    for k in args.batches:
        cells = []
        for split in ("test", "val"):
            a = [100 * r[f"{split}_{k}"] for r in rows]
            d = [100 * (r[f"{split}_{k}"] - r[f"{split}_{ref}"]) for r in rows]
            n = len(d)
            mean = sum(d) / n
            sd = (sum((x - mean) ** 2 for x in d) / (n - 1)) ** 0.5 if n > 1 else 0.0
            half = stats.t.ppf(0.975, n - 1) * sd / n ** 0.5 if n > 1 else float("nan")
            cells.append((sum(a) / n, mean, half, max(abs(x) for x in d)))
        (t_mean, t_d, t_h, t_max), (v_mean, v_d, v_h, _) = cells
        secs = sum(r[f"recal_s_{k}"] for r in rows) / len(rows)
        print(f"| {k} | {t_mean:.2f} | {t_d:+.2f} [{t_d - t_h:+.2f}, {t_d + t_h:+.2f}] | {t_max:.1f} | {v_mean:.2f} | "
              f"{v_d:+.2f} [{v_d - v_h:+.2f}, {v_d + v_h:+.2f}] | {secs:.2f} |")
    print("\nPer pattern, mean test accuracy %:\n")
    patterns = sorted({r["pattern"] for r in rows}, key=lambda p: [r["pattern"] for r in rows].index(p))
    print("| pattern | " + " | ".join(f"{k} batches" for k in args.batches) + " |")
    print("|---|" + "---|" * len(args.batches))
    for p in patterns:
        sel = [r for r in rows if r["pattern"] == p]
        print(f"| {p} | " + " | ".join(f"{100 * sum(r[f'test_{k}'] for r in sel) / len(sel):.2f}"
                                       for k in args.batches) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
