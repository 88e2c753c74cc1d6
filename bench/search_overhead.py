"""Search overhead: time per trial spent outside training (sampling, build, compile, measure, storage).

For a tiny space on `digits`, runs trials against an in-memory study and a
journal file, and reports the non-training share of each trial; then trials/hour
with workers=1 vs workers=2 (``--workers``) on the same journal setup; on a GPU machine the workers share it.
``--data``, ``--limit`` and ``--width`` make the trials longer (whether workers sharing one GPU pay
depends on it); ``--workers-only`` skips the storage table.

    .venv/bin/python bench/search_overhead.py [--trials 8] [--epochs 1] [--workers 1 2 4]
    .venv/bin/python bench/search_overhead.py --data cifar10_subset.npz --limit 0 --width 48 --epochs 20 \
        --workers 1 2 --workers-only
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import statistics
import tempfile
import time

import optuna

from dlasearch import search
from dlasearch.search import space
from dlasearch import train as trainmod


def tiny_space(results: str, args, workers: int = 1) -> dict:
    """The six Figure-1 patterns on one small backbone, grid-sampled: every run trains the same
    six architectures, so runs with 1 and 2 workers do the same work."""
    data = {"limit": args.limit or None}
    if args.data:
        data.update(name="npz", path=os.path.abspath(args.data))
    return space.load("figure1", {"study": {"results": results, "trials": args.trials, "workers": workers},
                                  "train": {"epochs": args.epochs}, "data": data,
                                  "params": {"width": {"value": args.width}}, "seed_published": False})


def describe(args) -> str:
    data = os.path.basename(args.data) if args.data else "digits"
    images = f"{args.limit} images" if args.limit else "all images"
    return (f"figure1 space (six patterns, width {args.width}) on {data} ({images}, 32x32), "
            f"{args.epochs} epoch(s) per trial, {args.trials} trials")


@contextlib.contextmanager
def quiet_fd1():
    """Silence stdout at the file-descriptor level, so worker subprocesses are quiet too."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def overhead(study, sp, data) -> tuple[float, float]:
    """Median trial seconds and median non-training share over the study's trials."""
    train_s: dict[int, float] = {}

    def timed_train(model, d, config, **kw):
        t = time.perf_counter()
        res = trainmod.train(model, d, config, **kw)
        train_s[len(train_s)] = time.perf_counter() - t
        return res
    search.work(study, sp, data=data, log=lambda *a: None, train_fn=timed_train)
    trials = [t for t in study.get_trials() if t.duration and t.user_attrs.get("duplicate_of") is None
              and t.user_attrs.get("rejected") is None]
    total = [t.duration.total_seconds() for t in trials]
    shares = [(d - train_s[i]) / d for i, d in enumerate(total) if i in train_s]
    return statistics.median(total), statistics.median(shares)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time (one row each)")
    ap.add_argument("--data", help="an .npz dataset (e.g. the CIFAR-10 subset) instead of digits")
    ap.add_argument("--limit", type=int, default=600, help="images to use; 0 = all (default 600)")
    ap.add_argument("--width", type=int, default=16, help="the backbone's width parameter (default 16)")
    ap.add_argument("--workers-only", action="store_true", help="skip the storage table")
    args = ap.parse_args()
    if not 1 <= args.trials <= 6:
        ap.error(f"--trials {args.trials}: the figure1 grid holds six architectures, and a trial beyond them is "
                 f"answered from the study without training, so 1 to 6")
    print(describe(args) + "\n")
    if not args.workers_only:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            sp = tiny_space(tmp, args)
            data = search.load_data(sp)
            mem = optuna.create_study(direction="maximize", sampler=search.make_sampler(sp),
                                      pruner=optuna.pruners.NopPruner())
            mem.set_user_attr("space", __import__("json").dumps(sp))
            rows.append(("in-memory", *overhead(mem, sp, data)))
            journal = search.open_study(sp)
            rows.append(("journal file", *overhead(journal, sp, data)))
        print("| storage | median trial (s) | outside training |")
        print("|---|---:|---:|")
        for name, d, share in rows:
            print(f"| {name} | {d:.2f} | {share:.1%} |")
        print()
    print("| workers | trials | wall (s) | trials/hour |")
    print("|---:|---:|---:|---:|")
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            sp = tiny_space(tmp, args, workers)
            t = time.perf_counter()
            with quiet_fd1():
                search.run(sp, log=lambda *a: None)
            wall = time.perf_counter() - t
            n = len(search.open_study(sp, create=False).get_trials())
            print(f"| {workers} | {n} | {wall:.1f} | {3600 * n / wall:.0f} |")


if __name__ == "__main__":
    main()
