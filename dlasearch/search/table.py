"""Reading a benchmark: its folder as a table, and ``data=bench:NAME`` trials answered from it.

Apart from ``bench`` (which builds a benchmark by running studies through ``workers``) because the
workers answer table trials with ``TableObjective``: reading sits below running, building above it.
"""
from __future__ import annotations

import json
from pathlib import Path

import optuna

from dlasearch import files
from dlasearch.errors import DLASearchError, IRError, did_you_mean
from dlasearch.ir import fingerprint
from dlasearch.patterns import build as build_ir
from dlasearch.search import space as spacemod
from dlasearch.search.objective import TrialFailed, describe
from dlasearch.search import attrs

__all__ = ["PREFIX", "METRICS", "BenchError", "bench_root", "params_key", "is_bench", "Bench", "TableObjective"]

PREFIX = "bench:"  # data=bench:NAME answers trials from the benchmark NAME
METRICS = (attrs.PARAMS, attrs.MACS, attrs.TRAIN_MEMORY, attrs.VAL_ACCURACY, attrs.TRAIN_SECONDS)


class BenchError(DLASearchError):
    """A benchmark that is missing, incomplete for the request, or asked for something it lacks."""


def bench_root(results: str | Path | None = None) -> Path:
    """``<results>/bench``: benchmarks live beside the studies that built them."""
    return Path(results or files.results_root()) / "bench"


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


def is_bench(space: dict) -> bool:
    return str(space["data"].get("name", "")).startswith(PREFIX)


def _read(path: Path, reader, needs: tuple):
    """``reader(path)``, a table or a mapping holding ``needs``; anything else one ``BenchError`` naming the file."""
    try:
        value = reader(path)
    except FileNotFoundError:
        problem = "is missing"
    except (OSError, ValueError, UnicodeDecodeError) as e:  # pandas' EmptyDataError/ParserError are ValueErrors
        problem = f"cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    else:
        keys = value.columns if hasattr(value, "columns") else value if isinstance(value, dict) else None
        missing = [k for k in needs if keys is None or k not in keys]
        if not missing:
            return value
        problem = f"lacks {', '.join(missing)}" if keys is not None else "is not a JSON object"
    raise BenchError(f"benchmark file {path} {problem}: the benchmark is incomplete or damaged; rebuild it "
                     f"(dlasearch bench build name={path.parent.name} space=...), which resumes its study")


class Bench:
    """A finished benchmark folder: ``df`` (bench.csv), ``grid``, ``space``, ``meta``."""

    def __init__(self, folder: Path):
        import pandas as pd  # heavy: only a benchmark's reader pays for it

        self.folder = folder
        self.df = _read(folder / "bench.csv", pd.read_csv, ("fingerprint", "status"))
        self.grid = _read(folder / "grid.csv", pd.read_csv, ("fingerprint",))
        self.meta = _read(folder / "meta.json", lambda p: json.loads(p.read_text()),
                          ("name", "space", "channels", "num_classes"))
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
        spec = spacemod.sample(self.space, trial)
        fp = self.bench.fingerprint_of(trial.params)
        if fp is None:  # not a grid point of the benchmark: it may still be one of its architectures
            spec.update(in_channels=self.bench.meta["channels"], num_classes=self.bench.meta["num_classes"])
            try:
                fp = fingerprint(build_ir(spec))
            except IRError as e:
                trial.set_user_attr(attrs.FAIL_REASON, f"invalid architecture: {e}")
                raise TrialFailed(str(e)) from None
        spec["fingerprint"] = fp
        return spec, self.bench.row(fp)

    def __call__(self, trial: optuna.Trial):
        spec, row = self._row(trial)
        fp = spec["fingerprint"]
        trial.set_user_attr(attrs.PATTERN, spec["pattern"])
        trial.set_user_attr(attrs.ARCH, self.describe(spec))
        trial.set_user_attr(attrs.FINGERPRINT, fp)
        trial.set_user_attr(attrs.SPEC, json.dumps({k: v for k, v in spec.items() if k != "fingerprint"}))
        if row is None or row["status"] != "ok":
            reason = (f"not in benchmark {self.bench.meta['name']!r} ({len(self.bench.df)} architectures of space "
                      f"{self.bench.meta['space']!r})" if row is None else f"in the benchmark: {row['status']}")
            trial.set_user_attr(attrs.FAIL_REASON, reason)
            raise TrialFailed(reason)
        # the IR like a trained trial's, so export, report and trial_ir read a table search alike
        trial.set_user_attr(attrs.IR, (self.bench.folder / "archs" / f"{fp}.json").read_text())
        for k in METRICS:
            trial.set_user_attr(k, row[k])
        vals = [row[o] for o in self.space["objectives"]]
        return vals[0] if len(vals) == 1 else vals
