"""``dlasearch rank``: score sampled architectures of a space with zero-cost proxies, no training.

Architectures are drawn at random from the space (Optuna's RandomSampler on an in-memory
study, so the draws are exactly what a search would sample), deduplicated by fingerprint,
compiled, and scored by every proxy on one fixed batch of the space's training data.
"""
from __future__ import annotations

import time
from pathlib import Path

import optuna
import torch

from dlasearch.search import proxies as proxymod
from dlasearch.search import space as spacemod
from dlasearch.errors import DLASearchError, did_you_mean
from dlasearch.ir import IRError, fingerprint, to_module
from dlasearch.patterns import build

__all__ = ["sample_archs", "proxy_batch", "scores", "rank", "command"]

OPTIONS = ("space", "n", "proxies", "batch", "seed", "out")


def sample_archs(space: dict, n: int, channels: int, classes: int, seed: int = 0,
                 max_draws: int | None = None) -> list[tuple[str, dict, object]]:
    """Up to ``n`` distinct (fingerprint, spec, IR) drawn at random from ``space``.

    Stops after ``max_draws`` draws (default 20·n) when the space has fewer distinct
    architectures; invalid draws are skipped, as a search would record them failed.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    seen: dict[str, tuple] = {}
    for _ in range(max_draws or 20 * n):
        if len(seen) >= n:
            break
        trial = study.ask()
        try:
            spec = spacemod.sample(space, trial)
            spec.update(in_channels=channels, num_classes=classes)
            ir = build(spec, name=f"arch{len(seen)}")
        except IRError:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, 0.0)
        seen.setdefault(fingerprint(ir), (spec, ir))
    return [(fp, spec, ir) for fp, (spec, ir) in seen.items()]


def proxy_batch(data, batch: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed batch every proxy scores on: ``batch`` training images drawn with ``seed``, normalised."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.y_train), generator=gen)[:batch]
    return data.transform(data.x_train[idx]), data.y_train[idx]


def scores(ir, x: torch.Tensor, y: torch.Tensor, names, seed: int = 0) -> dict[str, float]:
    """Every proxy in ``names`` for one architecture, its weights initialised with ``seed`` (repeatable)."""
    model = to_module(ir, seed=seed)
    return {name: proxymod.score(name, model, x, y) for name in names}


def rank(space: dict, n: int, names=None, batch: int = 64, seed: int = 0, log=print):
    """A ``pandas.DataFrame``: one row per architecture with its pattern, proxies and seconds per proxy."""
    import pandas as pd

    from dlasearch.search import describe, load_data

    names = list(names or proxymod.PROXIES)
    data = load_data(space)
    x, y = proxy_batch(data, batch, seed)
    archs = sample_archs(space, n, data.channels, data.num_classes, seed)
    rows = []
    for i, (fp, spec, ir) in enumerate(archs, 1):
        model = to_module(ir, seed=seed)
        row = {"fingerprint": fp, "pattern": spec["pattern"], "arch": describe(spec)}
        for name in names:
            t = time.perf_counter()
            row[name] = proxymod.score(name, model, x, y)
            row[f"{name}_s"] = time.perf_counter() - t
        rows.append(row)
        log(f"  [{i}/{len(archs)}] {row['arch']}: " + ", ".join(f"{k}={row[k]:.4g}" for k in names))
    return pd.DataFrame(rows)


def _parse(args: dict) -> tuple[dict, int, list[str], int, int, Path | None]:
    if "space" not in args:
        raise DLASearchError("rank needs space=NAME (one of: " + ", ".join(spacemod.available()) + ")")
    ints = {}
    for key, default, lo in (("n", 20, 1), ("batch", 64, 4), ("seed", 0, 0)):
        v = args.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise DLASearchError(f"rank: {key}={v!r} must be an int >= {lo}")
        ints[key] = v
    names = args.get("proxies", list(proxymod.PROXIES))
    names = names.split(",") if isinstance(names, str) else list(names)
    for p in names:
        if p not in proxymod.PROXIES:
            raise DLASearchError(f"rank: proxies={p!r} is unknown{did_you_mean(p, proxymod.PROXIES)}; "
                                 f"allowed: {', '.join(proxymod.PROXIES)}")
    space = spacemod.load(str(args["space"]))
    out = Path(args["out"]) if "out" in args else None
    return space, ints["n"], names, ints["batch"], ints["seed"], out


def command(args: dict) -> int:
    """CLI entry: ``dlasearch rank space=NAME [n=20 proxies=a,b batch=64 seed=0 out=FILE.csv]``."""
    from dlasearch.files import results_root, write_atomic

    space, n, names, batch, seed, out = _parse(args)
    out = out or results_root() / "rank" / f"{args['space']}-n{n}-seed{seed}.csv"
    print(f"rank: scoring {n} architectures of space {args['space']!r} with {', '.join(names)} "
          f"(batch {batch})")
    df = rank(space, n, names, batch, seed)
    write_atomic(out, df.to_csv(index=False))
    table = df.sort_values(names[0], ascending=False)[["pattern", "arch", *names]]
    print(table.to_markdown(index=False, floatfmt=".4g"))
    print("seconds per architecture: " + ", ".join(f"{p} {df[f'{p}_s'].mean():.2f}" for p in names))
    print(f"wrote {out}")
    return 0
