"""``dlasearch rank``: score sampled architectures of a space with zero-cost proxies, no training.

Architectures are drawn at random from the space (Optuna's RandomSampler on an in-memory
study, so the draws are exactly what a search would sample), deduplicated by fingerprint,
compiled, and scored by every proxy on one fixed batch of the space's training data.
"""
from __future__ import annotations

import time
from pathlib import Path

import optuna

from dlasearch.errors import DLASearchError, did_you_mean
from dlasearch.files import check_writable, results_root, write_text
from dlasearch.ir import IRError, fingerprint, to_module
from dlasearch.patterns import build
from dlasearch.search import proxies as proxymod
from dlasearch.search import space as spacemod
from dlasearch.search.objective import describe
from dlasearch.search.precheck import count_params
from dlasearch.search.proxies import proxy_batch, scores
from dlasearch.search.workers import load_data

__all__ = ["sample_archs", "proxy_batch", "scores", "rank", "command"]

OPTIONS = ("space", "n", "proxies", "batch", "seed", "out")
EXHAUSTED = 500  # draws in a row with no new architecture: the space has no more to give


def sample_archs(space: dict, n: int, channels: int, classes: int, seed: int = 0,
                 max_draws: int | None = None) -> list[tuple[str, dict, object]]:
    """Up to ``n`` distinct (fingerprint, spec, IR) drawn at random from ``space``.

    Stops after ``max_draws`` draws (default 20·n), or after ``EXHAUSTED`` draws in a row found nothing
    new (the space holds fewer distinct architectures than asked: ``rank n=100000`` on a small space
    ends instead of drawing millions); invalid draws are skipped, as a search would record them failed.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    seen: dict[str, tuple] = {}
    stale = 0
    for _ in range(max_draws or 20 * n):
        if len(seen) >= n or stale >= EXHAUSTED:
            break
        stale += 1
        trial = study.ask()
        try:
            spec = spacemod.sample(space, trial)
            spec.update(in_channels=channels, num_classes=classes)
            ir = build(spec, name=f"arch{len(seen)}")
        except IRError:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, 0.0)
        fp = fingerprint(ir)
        if fp not in seen:
            seen[fp], stale = (spec, ir), 0
    return [(fp, spec, ir) for fp, (spec, ir) in seen.items()]


def rank(space: dict, n: int, names=None, batch: int = 64, seed: int = 0, log=print):
    """A ``pandas.DataFrame``: one row per architecture with its pattern, proxies and seconds per proxy."""
    import pandas as pd  # heavy: only rank's table needs it

    names = list(names or proxymod.PROXIES)
    data = load_data(space)
    x, y = proxy_batch(data, batch, seed)
    archs = sample_archs(space, n, data.channels, data.num_classes, seed)
    if len(archs) < n:
        log(f"rank: the space holds only {len(archs)} distinct architecture(s) this sampler reaches "
            f"(asked for {n}); scoring those")
    budget = space["budget"].get("params")
    rows = []
    for i, (fp, spec, ir) in enumerate(archs, 1):
        model = to_module(ir, seed=seed)
        over = budget is not None and count_params(ir) > budget  # a search would reject it untrained
        row = {"fingerprint": fp, "pattern": spec["pattern"], "arch": describe(spec), "over_budget": over}
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
    # n: each architecture is built and scored (about a second on a CPU): 5000 is already hours of work
    for key, default, lo, hi in (("n", 20, 1, 5000), ("batch", 64, 4, 4096), ("seed", 0, 0, 2 ** 32 - 1)):
        v = args.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise DLASearchError(f"rank: {key}={v!r} must be an int in [{lo}, {hi}]"
                                 + (" (each architecture is built and scored, about a second each on a CPU; rank "
                                    "several spaces or seeds instead)" if key == "n" else ""))
        ints[key] = v
    names = args.get("proxies", list(proxymod.PROXIES))
    names = [p for p in (names.split(",") if isinstance(names, str) else list(names)) if str(p).strip()]
    if not names:
        raise DLASearchError(f"rank: proxies= names no proxy; give some of: {', '.join(proxymod.PROXIES)}")
    for p in names:
        if p not in proxymod.PROXIES:
            raise DLASearchError(f"rank: proxies={p!r} is unknown{did_you_mean(p, proxymod.PROXIES)}; "
                                 f"allowed: {', '.join(proxymod.PROXIES)}")
    data = args.get("data")  # data=NAME|FILE.npz or data.<key>=..., as train, run and compare take it
    overrides = {} if data is None else {"data": data if isinstance(data, dict) else {"name": data}}
    space = spacemod.load(str(args["space"]), overrides)
    out = Path(args["out"]) if "out" in args else None
    return space, ints["n"], names, ints["batch"], ints["seed"], out


def command(args: dict) -> int:
    """CLI entry: ``dlasearch rank space=NAME [n=20 proxies=a,b batch=64 seed=0 out=FILE.csv]``."""
    space, n, names, batch, seed, out = _parse(args)
    # named by the space's name, not its path: space=/abs/x.yaml must not write beside the YAML
    out = out or results_root() / "rank" / f"{space['name']}-n{n}-seed{seed}.csv"
    print(f"rank: scoring {n} architectures of space {args['space']!r} with {', '.join(names)} "
          f"(batch {batch})")
    if out.is_dir():
        raise DLASearchError(f"rank: out={str(out)!r} is a folder; give a file path (e.g. {out / 'rank.csv'})")
    check_writable(out.parent, "out", DLASearchError)  # before the scoring, not after it
    df = rank(space, n, names, batch, seed)
    write_text(out, df.to_csv(index=False), DLASearchError)
    # Sorted by the proxy the user named; otherwise by params, the one predictor the project's own
    # benchmark found positively correlated (every zero-cost proxy came out negative there).
    key = names[0] if "proxies" in args else "params" if "params" in names else names[0]
    table = df.sort_values(key, ascending=key == "params" and "proxies" not in args)
    table = table[["pattern", "arch", *names, "over_budget"]]
    print(table.to_markdown(index=False, floatfmt=".4g"))
    if table.over_budget.any():
        print(f"{int(table.over_budget.sum())} of {len(table)} architecture(s) exceed budget.params="
              f"{space['budget']['params']:.4g} (column over_budget): a search would reject them untrained")
    print(f"sorted by {key}" + ("" if "proxies" in args else " (name one first with proxies= to sort by it)"))
    print("seconds per architecture: " + ", ".join(f"{p} {df[f'{p}_s'].mean():.2f}" for p in names))
    print(f"wrote {out}")
    return 0
