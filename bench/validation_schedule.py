"""Validation schedule of a search: every epoch against only the epochs the pruner reads.

Why: with Hyperband a search trial used to validate after every epoch (BatchNorm recalibration
and a pass over the validation split), although successive halving reads a trial only at its
rungs (epochs 1, 3, 9, ...); a trial now validates at those and after its last epoch.  This runs
the README's main job (`dlasearch run space=hda`: digits, 8 epochs, Hyperband) both ways,
alternating, in one process, and prints one table: wall time, training steps, validation time,
and whether every trial got the same state and value both ways.  Not a timed test.

    .venv/bin/python bench/validation_schedule.py [--trials 30] [--repeats 1] [--space hda]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dlasearch import search, train as trainmod  # noqa: E402
from dlasearch.search import objective, space as spacemod  # noqa: E402

PRUNER_EPOCHS = objective.pruner_epochs


def run_once(space_name: str, trials: int, every_epoch: bool, data, overrides: dict | None = None) -> dict:
    """One study from scratch; ``every_epoch`` restores the former schedule (validate after every epoch);
    ``overrides`` (e.g. ``{"train": {"precision": "fp32"}}``) go over the space's settings."""
    objective.pruner_epochs = (lambda sp: None) if every_epoch else PRUNER_EPOCHS
    seconds = {"steps": 0.0, "validation": 0.0}
    counts = {"validations": 0, "epochs": 0}
    precisions = set()
    dense = [0, 0]  # trials whose engine ran the small-map rewrite, trials

    def spy(*a, **kw):
        res = trainmod.train(*a, **kw)
        took = res.engine["seconds"]
        seconds["steps"] += took["steps"]
        seconds["validation"] += took["recalibration"] + took["scoring"]
        counts["validations"] += sum("val_accuracy" in h for h in res.history)
        counts["epochs"] += res.epochs
        precisions.add(res.engine["precision"])
        dense[0] += not res.engine["small_maps"].startswith("off")
        dense[1] += 1
        return res
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sp = spacemod.load(space_name, {**(overrides or {}), "study": {"results": tmp, "trials": trials}})
            t = time.perf_counter()
            study = search.open_study(sp, log=lambda *a: None)
            search.work(study, sp, data=data, log=lambda *a: None, train_fn=spy)
            wall = time.perf_counter() - t
            outcome = [(t.number, t.state.name, t.values) for t in study.get_trials(deepcopy=False)]
    finally:
        objective.pruner_epochs = PRUNER_EPOCHS
    return {"wall": wall, **seconds, **counts, "outcome": outcome, "precisions": sorted(precisions),
            "dense_trials": f"{dense[0]}/{dense[1]}",
            "pruned": sum(s == "PRUNED" for _, s, _ in outcome),
            "best": max((v[0] for _, s, v in outcome if s == "COMPLETE" and v), default=None)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="hda")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=1, help="alternating pairs of runs")
    args = ap.parse_args()
    sp = spacemod.load(args.space, {})
    data = search.load_data(sp)
    rows = []
    for r in range(args.repeats):
        for every in (True, False):
            res = run_once(args.space, args.trials, every, data)
            rows.append(("every epoch" if every else "pruner's epochs + last", res))
            print(f"run {len(rows)}: {rows[-1][0]}: {res['wall']:.1f} s", file=sys.stderr, flush=True)
    print(f"`dlasearch run space={args.space}` ({sp['data']['name']}, {sp['train']['epochs']} epochs, "
          f"{sp['study']['pruner']}), {args.trials} trials, torch threads {torch.get_num_threads()}\n")
    print("| validation | wall s | epochs trained | validations | steps s | validation s | steps / wall "
          "| pruned | same outcome as every epoch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    base = rows[0][1]["outcome"]
    for name, r in rows:
        print(f"| {name} | {r['wall']:.1f} | {r['epochs']} | {r['validations']} | {r['steps']:.1f} | "
              f"{r['validation']:.1f} | {r['steps'] / r['wall']:.0%} | {r['pruned']} | "
              f"{'yes' if r['outcome'] == base else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
