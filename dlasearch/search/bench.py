"""Benchmarks of a space: every architecture trained once, some twice, every proxy scored.

``dlasearch bench build name=N space=S`` runs two ordinary studies, so a build is resumable and
takes workers like any search:

- ``bench-N`` trains every architecture of ``S`` once: every grid point is queued in a seeded
  random order (Optuna hands each queued trial to one worker), so a build stopped early still
  holds a uniform random sample, and a resumed build queues only what is missing.
- ``bench-N-seed1`` retrains ``repeat`` of them, a seeded random choice, with training seed 1 on
  the same data split: the noise ceiling.

Then every zero-cost proxy is scored on one fixed batch, and ``results/bench/N/`` gets the table
(``bench.csv``), the grid (``grid.csv``: trial parameters to fingerprint), each architecture's IR
(``archs/<fingerprint>.json``), the space (``space.yaml``) and ``meta.json``. The studies are
the source of truth; the folder is an export that ``build`` rewrites.

A benchmark answers searches: ``dlasearch run data=bench:N`` looks each trial up in the table
instead of training it (``TableObjective``).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from dlasearch import files
from dlasearch.ir import from_json
from dlasearch.search import proxies as proxymod, space as spacemod
from dlasearch.search.guard import counts
from dlasearch.search.proxies import proxy_batch, scores
from dlasearch.search.study import counted, grid_of, open_study
from dlasearch.search.table import (METRICS, PREFIX, Bench, BenchError, TableObjective, bench_root, is_bench,
                                    params_key)
from dlasearch.search.workers import load_data, run
from dlasearch.search import attrs

__all__ = ["BenchError", "PREFIX", "grid_size", "study_names", "build", "table", "export", "Bench",
           "is_bench", "TableObjective"]


def study_names(name: str) -> tuple[str, str]:
    return f"bench-{name}", f"bench-{name}-seed1"


def grid_size(space: dict) -> int:
    n = 1
    for values in grid_of(space).values():
        n *= len(values)
    return n


def _with(space: dict, **sections) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in space.items()}
    for k, v in sections.items():
        out[k] = {**out[k], **v}
    return out


def _train_seed(space: dict) -> int:
    seed = space["train"].get("seed")
    return space["study"]["seed"] if seed is None else seed


def spaces(name: str, space: dict, n: int | None = None, repeat: int = 30) -> tuple[dict, dict]:
    """The two studies' spaces: all (or ``n``) grid points once; ``repeat`` of them with the next seed."""
    if space["study"]["sampler"] != "grid":
        spacemod.validate({k: v for k, v in space.items() if k != "name"} | {"study": {"sampler": "grid"}})
    size = grid_size(space)
    first, second = study_names(name)
    s0 = _with(space, study={"name": first, "sampler": "random", "pruner": "none", "keep": "none",
                             "trials": min(n or size, size)})
    s1 = _with(space, study={"name": second, "sampler": "random", "pruner": "none", "keep": "none",
                             "trials": max(repeat, 1)},
               train={"seed": _train_seed(space) + 1})
    return s0, s1


def _enqueue_grid(s0: dict, n: int | None, log) -> int:
    """Queue every grid point not yet trained or queued, in a seeded random order; returns the trial total.

    The queue, not the grid sampler, decides what is trained: Optuna hands each queued trial to
    exactly one worker, and a resumed build queues only what is missing."""
    import itertools

    import numpy as np

    study = open_study(s0, log=log)
    grid = grid_of(s0)
    points = [dict(zip(grid, v)) for v in itertools.product(*grid.values())]
    points = [points[i] for i in np.random.default_rng(s0["study"]["seed"]).permutation(len(points))]
    have, waiting = set(), 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            have.add(params_key(t.system_attrs.get(attrs.FIXED_PARAMS, {})))
            waiting += 1
        elif counts(t):
            have.add(params_key(t.params))
    new = [p for p in points if params_key(p) not in have]
    for p in new:
        study.enqueue_trial(p)
    total = counted(study) + waiting + len(new)
    if new:
        log(f"bench: queued {len(new)} grid point(s) not trained yet")
    return min(n, total) if n else total


def _unique_complete(study: optuna.Study) -> list:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(attrs.DUPLICATE_OF) is None]


def _enqueue_repeats(s1: dict, first: optuna.Study, repeat: int, log) -> None:
    """Queue ``repeat`` distinct finished architectures of the first study once (a resumed build keeps them)."""
    import numpy as np

    study = open_study(s1, log=log)
    if study.get_trials(deepcopy=False):
        return
    done = sorted(_unique_complete(first), key=lambda t: t.number)
    rng = np.random.default_rng(s1["study"]["seed"])
    for i in sorted(rng.choice(len(done), size=min(repeat, len(done)), replace=False)):
        study.enqueue_trial(done[i].params, user_attrs={"repeat_of": done[i].number})


def build(name: str, space: dict, n: int | None = None, repeat: int = 30, log=print) -> Path:
    """Train (or resume) both studies, score the proxies and export ``results/bench/<name>/``."""
    files.check_study_name(name, "name", BenchError)  # it names studies bench-<name>
    s0, s1 = spaces(name, space, n, repeat)
    log(f"bench {name!r}: {s0['study']['trials']} of {grid_size(space)} architectures of space "
        f"{space.get('name', '?')!r}, then {repeat} with seed {s1['train']['seed']}")
    s0["study"]["trials"] = _enqueue_grid(s0, n, log)
    run(s0, log=log)
    first = open_study(s0, create=False, log=log)
    if repeat:
        _enqueue_repeats(s1, first, repeat, log)
        queued = open_study(s1, create=False, log=log).get_trials(deepcopy=False)
        s1["study"]["trials"] = len({t.user_attrs.get(attrs.REPEAT_OF) for t in queued})
        run(s1, log=log)
    return export(name, s0, s1 if repeat else None, log=log)


def table(first: optuna.Study, second: optuna.Study | None):
    """One row per distinct architecture (``bench.csv``) and one per grid point (``grid.csv``)."""
    import pandas as pd

    rows, grid = {}, []
    for t in first.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)):
        fp = t.user_attrs.get(attrs.FINGERPRINT)
        if fp is None or not counts(t):  # stale, surplus or interrupted: its retry holds the result
            continue
        grid.append({**{f"param_{k}": v for k, v in t.params.items()}, "fingerprint": fp})
        if fp in rows or t.user_attrs.get(attrs.DUPLICATE_OF) is not None:
            continue
        u = t.user_attrs
        rows[fp] = {"fingerprint": fp, "trial": t.number, "pattern": u.get("pattern"), "arch": u.get("arch"),
                    **{k: u.get(k) for k in METRICS}, "val_accuracy_seed1": None,
                    "status": "ok" if t.state == TrialState.COMPLETE else u.get("fail_reason", t.state.name)}
    if second is not None:
        for t in second.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            fp = t.user_attrs.get(attrs.FINGERPRINT)
            if fp in rows and t.user_attrs.get(attrs.VAL_ACCURACY) is not None:
                rows[fp]["val_accuracy_seed1"] = t.user_attrs[attrs.VAL_ACCURACY]
    cols = ["fingerprint", "trial", "pattern", "arch", *METRICS, "val_accuracy_seed1", "status"]
    return pd.DataFrame(list(rows.values()), columns=cols), pd.DataFrame(grid).drop_duplicates()


def _proxies(folder: Path, s0: dict, first: optuna.Study, fingerprints, log):
    """Every proxy of every architecture, cached in ``proxies.csv`` (deterministic: seeded batch and weights)."""
    import pandas as pd  # heavy: only a benchmark's export needs it

    names = [p for p in proxymod.PROXIES if p not in ("params", "macs")]  # those two are bench.csv columns
    path = folder / "proxies.csv"
    done = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["fingerprint", *names])
    todo = [fp for fp in fingerprints if fp not in set(done.fingerprint)]
    if todo:
        irs = {t.user_attrs[attrs.FINGERPRINT]: t.user_attrs[attrs.IR] for t in first.get_trials(deepcopy=False)
               if "ir" in t.user_attrs}
        x, y = proxy_batch(load_data(s0), 64, 0)
        rows, t0 = [], time.time()
        for i, fp in enumerate(todo, 1):
            rows.append({"fingerprint": fp, **scores(from_json(irs[fp]), x, y, names)})
            if i % 20 == 0 or i == len(todo):
                log(f"  proxies: {i}/{len(todo)} architectures, {(time.time() - t0) / i:.2f} s each")
        done = pd.concat([done, pd.DataFrame(rows)], ignore_index=True)
        files.write_atomic(path, done.to_csv(index=False))
    return done


def _cost(study: optuna.Study) -> dict:
    """Trials, their time and span; ``median_trial_s`` over the trials that trained (not the repeats
    answered from the study), the cost of one architecture on one worker."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    if not trials:
        return {}
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    trained = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
               if t.user_attrs.get(attrs.DUPLICATE_OF) is None]
    return {"trials": len(trials), "start": start.isoformat(timespec="seconds"),
            "end": end.isoformat(timespec="seconds"), "wall_s": round((end - start).total_seconds(), 1),
            "trial_s": round(sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials), 1),
            "workers": len({t.user_attrs.get(attrs.WORKER) for t in trials}),
            **({"median_trial_s": round(statistics.median(trained), 1)} if trained else {})}


def machine() -> dict:
    """The CPU model, core count, Python and torch: what a benchmark's cost depends on, and no kernel or
    host name (committed results should not name one machine's setup)."""

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


def export(name: str, s0: dict, s1: dict | None, log=print) -> Path:
    """Write ``results/bench/<name>/`` from the two studies; returns the folder."""
    import yaml

    folder = bench_root(s0["study"]["results"]) / name
    first = open_study(s0, create=False, log=log)
    second = open_study(s1, create=False, log=log) if s1 is not None else None
    df, grid = table(first, second)
    if df.empty:
        raise BenchError(f"bench {name!r}: no finished architecture yet in study {s0['study']['name']!r}")
    prox = _proxies(folder, s0, first, list(df.fingerprint[df.status == "ok"]), log)
    df = df.merge(prox, on="fingerprint", how="left")
    for t in first.get_trials(deepcopy=False):
        fp = t.user_attrs.get(attrs.FINGERPRINT)
        if fp in set(df.fingerprint) and "ir" in t.user_attrs and not (folder / "archs" / f"{fp}.json").exists():
            files.write_atomic(folder / "archs" / f"{fp}.json", t.user_attrs[attrs.IR])
    files.write_atomic(folder / "bench.csv", df.to_csv(index=False))
    files.write_atomic(folder / "grid.csv", grid.to_csv(index=False))
    stored = {k: v for k, v in s0.items() if k not in ("name",)}
    stored["study"] = {k: v for k, v in stored["study"].items() if k in ("sampler", "seed", "pruner")}
    files.write_atomic(folder / "space.yaml", yaml.safe_dump(stored, sort_keys=False))
    meta = {"name": name, "space": s0.get("name"), "grid": grid_size(s0), "architectures": len(df),
            "grid_points_done": len(grid), "repeats": int(df.val_accuracy_seed1.notna().sum()),
            "studies": [s0["study"]["name"]] + ([s1["study"]["name"]] if s1 else []),
            "channels": json.loads(first.trials[0].user_attrs[attrs.SPEC])["in_channels"],
            "num_classes": json.loads(first.trials[0].user_attrs[attrs.SPEC])["num_classes"],
            "cost": {"first": _cost(first), **({"second": _cost(second)} if second is not None else {})},
            "machine": machine()}
    try:  # the first export's machine, the build's command and the report's comparisons: a re-export keeps them
        before = json.loads((folder / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        before = {}
    meta.update({k: before[k] for k in ("machine", "command", "against") if k in before})
    files.write_atomic(folder / "meta.json", json.dumps(meta, indent=1))
    log(f"bench {name!r}: {len(df)} architectures ({meta['repeats']} with a second seed) -> {folder}")
    return folder


# ------------------------------------------------------------------ reading a benchmark
