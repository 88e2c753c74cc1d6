"""The README's main job in each precision (and with or without the small-map rewrite): what pays end to end?

Why: ``precision=auto`` picks bf16 autocast + channels_last on CPUs with native bf16 (AMX,
AVX512-BF16) and fp32 elsewhere.  A raw step says little about a search of small nets on small
images, so this runs the whole `dlasearch run space=hda` (digits, 8 epochs, Hyperband) once per
precision, alternating, in one process, and prints one table: wall time, training-step time per
trained epoch, validation time, and the best value.  Trials in another precision may be pruned
differently, so compare the time per trained epoch, not only the wall time.  ``--small-maps on off``
does the same for ``train.small_maps`` (on CPU, convolutions on maps of <= 4 positions as one GEMM),
crossed with the precisions.  Not a timed test.

    .venv/bin/python bench/main_job_precision.py [--trials 30] [--repeats 2] [--precisions auto fp32]
    .venv/bin/python bench/main_job_precision.py --precisions auto --small-maps off on
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from validation_schedule import run_once  # noqa: E402

from dlasearch import search  # noqa: E402
from dlasearch.search import space as spacemod  # noqa: E402
from dlasearch.train import engine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="hda")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2, help="alternating rounds of one run per precision")
    ap.add_argument("--precisions", nargs="+", default=["auto", "fp32"], choices=["auto", "fp32", "bf16"])
    ap.add_argument("--small-maps", nargs="+", default=["on"], choices=["on", "off"])
    args = ap.parse_args()
    sp = spacemod.load(args.space, {})
    data = search.load_data(sp)
    rows = []
    for _ in range(args.repeats):
        for p in args.precisions:
            for dense in args.small_maps:
                res = run_once(args.space, args.trials, False, data,
                               {"train": {"precision": p, "small_maps": dense == "on"}})
                rows.append((p, dense, res))
                print(f"run {len(rows)}: precision={p} ({'/'.join(res['precisions'])}), small_maps {dense}: "
                      f"{res['wall']:.1f} s", file=sys.stderr, flush=True)
    print(f"`dlasearch run space={args.space}` ({sp['data']['name']}, {sp['train']['epochs']} epochs, "
          f"{sp['study']['pruner']}), {args.trials} trials, torch threads {torch.get_num_threads()}, "
          f"CPU bf16: {engine.cpu_bf16() or 'none (emulated)'}\n")
    print("| precision | ran as | small_maps (trials it ran in) | wall s | epochs trained | steps s "
          "| steps s per epoch | validation s | pruned | best value |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for p, dense, r in rows:
        best = f"{r['best']:.4f}" if r["best"] is not None else "-"
        print(f"| {p} | {'/'.join(r['precisions'])} | {dense} ({r['dense_trials']}) | {r['wall']:.1f} | "
              f"{r['epochs']} | {r['steps']:.1f} | {r['steps'] / max(r['epochs'], 1):.2f} | {r['validation']:.1f} | "
              f"{r['pruned']} | {best} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
