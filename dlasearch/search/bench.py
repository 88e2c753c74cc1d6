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
import platform
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from dlasearch import files
from dlasearch.errors import DLASearchError, did_you_mean
from dlasearch.search import space as spacemod
from dlasearch.search.guard import counts
from dlasearch.search.study import counted, grid_of, open_study

__all__ = ["BenchError", "PREFIX", "grid_size", "study_names", "build", "table", "export", "Bench",
           "is_bench", "TableObjective"]

PREFIX = "bench:"  # data=bench:NAME answers trials from the benchmark NAME
METRICS = ("params", "macs", "train_memory", "val_accuracy", "train_seconds")


class BenchError(DLASearchError):
    """A benchmark that is missing, incomplete for the request, or asked for something it lacks."""


def bench_root(results: str | Path | None = None) -> Path:
    """``<results>/bench``: benchmarks live beside the studies that built them."""
    return Path(results or files.results_root()) / "bench"


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


def _plain(v):
    """A CSV cell as a JSON-able Python value (NaN: None)."""
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and v != v else v

def params_key(params: dict) -> str:
    """Trial parameters as one string, whether they come from Optuna or from a CSV row."""
    out = {}
    for k, v in sorted(params.items()):
        v = _plain(v)
        if v is None:  # an inactive conditional parameter
            continue
        out[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    return json.dumps(out)


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
            have.add(params_key(t.system_attrs.get("fixed_params", {})))
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
            if t.user_attrs.get("duplicate_of") is None]


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
    from dlasearch.search.workers import run

    files.check_name(name, "name", BenchError)
    s0, s1 = spaces(name, space, n, repeat)
    log(f"bench {name!r}: {s0['study']['trials']} of {grid_size(space)} architectures of space "
        f"{space.get('name', '?')!r}, then {repeat} with seed {s1['train']['seed']}")
    s0["study"]["trials"] = _enqueue_grid(s0, n, log)
    run(s0, log=log)
    first = open_study(s0, create=False, log=log)
    if repeat:
        _enqueue_repeats(s1, first, repeat, log)
        queued = open_study(s1, create=False, log=log).get_trials(deepcopy=False)
        s1["study"]["trials"] = len({t.user_attrs.get("repeat_of") for t in queued})
        run(s1, log=log)
    return export(name, s0, s1 if repeat else None, log=log)


def table(first: optuna.Study, second: optuna.Study | None):
    """One row per distinct architecture (``bench.csv``) and one per grid point (``grid.csv``)."""
    import pandas as pd

    rows, grid = {}, []
    for t in first.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)):
        fp = t.user_attrs.get("fingerprint")
        if fp is None or t.user_attrs.get("surplus") or t.user_attrs.get("stale"):
            continue
        grid.append({**{f"param_{k}": v for k, v in t.params.items()}, "fingerprint": fp})
        if fp in rows or t.user_attrs.get("duplicate_of") is not None:
            continue
        u = t.user_attrs
        rows[fp] = {"fingerprint": fp, "trial": t.number, "pattern": u.get("pattern"), "arch": u.get("arch"),
                    **{k: u.get(k) for k in METRICS}, "val_accuracy_seed1": None,
                    "status": "ok" if t.state == TrialState.COMPLETE else u.get("fail_reason", t.state.name)}
    if second is not None:
        for t in second.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            fp = t.user_attrs.get("fingerprint")
            if fp in rows and t.user_attrs.get("val_accuracy") is not None:
                rows[fp]["val_accuracy_seed1"] = t.user_attrs["val_accuracy"]
    cols = ["fingerprint", "trial", "pattern", "arch", *METRICS, "val_accuracy_seed1", "status"]
    return pd.DataFrame(list(rows.values()), columns=cols), pd.DataFrame(grid).drop_duplicates()


def _proxies(folder: Path, s0: dict, first: optuna.Study, fingerprints, log):
    """Every proxy of every architecture, cached in ``proxies.csv`` (deterministic: seeded batch and weights)."""
    import pandas as pd

    from dlasearch.ir import from_json
    from dlasearch.search import proxies as proxymod
    from dlasearch.search.rank import proxy_batch, scores
    from dlasearch.search.workers import load_data

    names = [p for p in proxymod.PROXIES if p not in ("params", "macs")]  # those two are bench.csv columns
    path = folder / "proxies.csv"
    done = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["fingerprint", *names])
    todo = [fp for fp in fingerprints if fp not in set(done.fingerprint)]
    if todo:
        irs = {t.user_attrs["fingerprint"]: t.user_attrs["ir"] for t in first.get_trials(deepcopy=False)
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
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    if not trials:
        return {}
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    return {"trials": len(trials), "start": start.isoformat(timespec="seconds"),
            "end": end.isoformat(timespec="seconds"), "wall_s": round((end - start).total_seconds(), 1),
            "trial_s": round(sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials), 1),
            "workers": len({t.user_attrs.get("worker") for t in trials})}


def export(name: str, s0: dict, s1: dict | None, log=print) -> Path:
    """Write ``results/bench/<name>/`` from the two studies; returns the folder."""
    import torch
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
        fp = t.user_attrs.get("fingerprint")
        if fp in set(df.fingerprint) and "ir" in t.user_attrs and not (folder / "archs" / f"{fp}.json").exists():
            files.write_atomic(folder / "archs" / f"{fp}.json", t.user_attrs["ir"])
    files.write_atomic(folder / "bench.csv", df.to_csv(index=False))
    files.write_atomic(folder / "grid.csv", grid.to_csv(index=False))
    stored = {k: v for k, v in s0.items() if k not in ("name",)}
    stored["study"] = {k: v for k, v in stored["study"].items() if k in ("sampler", "seed", "pruner")}
    files.write_atomic(folder / "space.yaml", yaml.safe_dump(stored, sort_keys=False))
    meta = {"name": name, "space": s0.get("name"), "grid": grid_size(s0), "architectures": len(df),
            "grid_points_done": len(grid), "repeats": int(df.val_accuracy_seed1.notna().sum()),
            "studies": [s0["study"]["name"]] + ([s1["study"]["name"]] if s1 else []),
            "channels": json.loads(first.trials[0].user_attrs["spec"])["in_channels"],
            "num_classes": json.loads(first.trials[0].user_attrs["spec"])["num_classes"],
            "cost": {"first": _cost(first), **({"second": _cost(second)} if second is not None else {})},
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version(), "torch": torch.__version__}}
    try:  # the first export's machine and command say how the table was built; a re-export keeps them
        before = json.loads((folder / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        before = {}
    meta.update({k: before[k] for k in ("machine", "command") if k in before})
    files.write_atomic(folder / "meta.json", json.dumps(meta, indent=1))
    log(f"bench {name!r}: {len(df)} architectures ({meta['repeats']} with a second seed) -> {folder}")
    return folder


# ------------------------------------------------------------------ reading a benchmark


def is_bench(space: dict) -> bool:
    return str(space["data"].get("name", "")).startswith(PREFIX)


class Bench:
    """A finished benchmark folder: ``df`` (bench.csv), ``grid``, ``space``, ``meta``."""

    def __init__(self, folder: Path):
        import pandas as pd

        self.folder = folder
        self.df = pd.read_csv(folder / "bench.csv")
        self.grid = pd.read_csv(folder / "grid.csv")
        self.meta = json.loads((folder / "meta.json").read_text())
        self.by_fp = {r["fingerprint"]: {k: _plain(v) for k, v in r.items()} for r in self.df.to_dict("records")}
        keys = [c for c in self.grid.columns if c.startswith("param_")]
        self._keys = keys
        self.by_params = {params_key(dict(zip((k[6:] for k in keys), vals))): fp
                          for *vals, fp in self.grid[keys + ["fingerprint"]].itertuples(index=False)}

    @classmethod
    def load(cls, name: str, results: str | Path | None = None) -> "Bench":
        """The benchmark ``name`` under ``<results>/bench/`` (or a folder path)."""
        root = bench_root(results)
        folder = Path(name) if (Path(name) / "bench.csv").exists() else root / name
        if not (folder / "bench.csv").exists():
            have = sorted(p.name for p in root.glob("*") if (p / "bench.csv").exists()) if root.is_dir() else []
            raise BenchError(f"no benchmark {name!r} at {folder}{did_you_mean(name, have)}; available: "
                             f"{', '.join(have) or 'none'} (build one: dlasearch bench build name={name} space=...)")
        return cls(folder)

    @property
    def space_path(self) -> Path:
        return self.folder / "space.yaml"

    def fingerprint_of(self, params: dict) -> str | None:
        return self.by_params.get(params_key({k: params[k] for k in (c[6:] for c in self._keys) if k in params}))

    def row(self, fingerprint: str) -> dict | None:
        return self.by_fp.get(fingerprint)


class TableObjective:
    """A trial answered from a benchmark: sample, build, fingerprint, look up; no data, no training."""

    def __init__(self, space: dict, log=print):
        from dlasearch.search.objective import describe

        self.space, self.log, self.describe = space, log, describe
        self.bench = Bench.load(space["data"]["name"][len(PREFIX):], space["study"]["results"])
        self.multi = len(space["objectives"]) > 1
        self.progress = self.tracker = self.fatal = None
        self.epochs_run, self.position = 0, "?"

    def screen_score(self, trial) -> float | None:
        """The study's proxy from the table (None: not in the benchmark)."""
        row = self._row(trial)[1]
        return None if row is None else row.get(self.space["study"]["proxy"])

    def _row(self, trial) -> tuple[dict, dict | None]:
        from dlasearch.ir import IRError, fingerprint
        from dlasearch.patterns import build as build_ir
        from dlasearch.search.objective import TrialFailed

        spec = spacemod.sample(self.space, trial)
        fp = self.bench.fingerprint_of(trial.params)
        if fp is None:  # not a grid point of the benchmark: it may still be one of its architectures
            spec.update(in_channels=self.bench.meta["channels"], num_classes=self.bench.meta["num_classes"])
            try:
                fp = fingerprint(build_ir(spec))
            except IRError as e:
                trial.set_user_attr("fail_reason", f"invalid architecture: {e}")
                raise TrialFailed(str(e)) from None
        spec["fingerprint"] = fp
        return spec, self.bench.row(fp)

    def __call__(self, trial: optuna.Trial):
        from dlasearch.search.objective import TrialFailed

        spec, row = self._row(trial)
        fp = spec["fingerprint"]
        trial.set_user_attr("pattern", spec["pattern"])
        trial.set_user_attr("arch", self.describe(spec))
        trial.set_user_attr("fingerprint", fp)
        trial.set_user_attr("spec", json.dumps({k: v for k, v in spec.items() if k != "fingerprint"}))
        if row is None or row["status"] != "ok":
            reason = (f"not in benchmark {self.bench.meta['name']!r} ({len(self.bench.df)} architectures of space "
                      f"{self.bench.meta['space']!r})" if row is None else f"in the benchmark: {row['status']}")
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason)
        # the IR like a trained trial's, so export, report and trial_ir read a table search alike
        trial.set_user_attr("ir", (self.bench.folder / "archs" / f"{fp}.json").read_text())
        for k in METRICS:
            trial.set_user_attr(k, row[k])
        vals = [row[o] for o in self.space["objectives"]]
        return vals[0] if len(vals) == 1 else vals

