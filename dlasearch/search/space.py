"""Search spaces: a YAML file that says what is searched, on what data, for how long, under which budgets.

A space is loaded with OmegaConf, merged with ``key=value`` overrides, and
checked against ``SCHEMA`` before anything runs, so a typo fails in one line
(with the closest allowed key) rather than halfway through a study.
``sample(space, trial)`` turns an Optuna trial into a ``patterns`` spec.

Searchable parameters (under ``params``), each ``{choices: [...]}``,
``{low: L, high: H[, step: S][, log: true]}`` or ``{value: V}``, optionally
``when: {other_param: value-or-list}`` to exist only under that parent value:

- ``pattern``: chain | skip | ida | tree | reentrant | hda | dla (or letters a-f)
- ``stages``: number of residual-block stages (int)
- ``levels``: per stage, tree depth; each stage has 2**levels blocks (so every
  pattern, chains included, runs the same blocks)
- ``width``: channels of the first block stage; ``growth``: width factor per stage;
  ``width_multiplier``: scales every block stage
- ``block``: basic | bottleneck | bottleneckx; ``cardinality``
- ``root_kernel``, ``residual_root``
- ``mode``: per stage, how its aggregation nodes merge (concat | sum | wsum | gpa; ``patterns.Stage.mode``)
- dense prediction (``task: segment``, as a ``{value}`` or in ``backbone``): ``decoder`` (none | fcn |
  fpn | unet | ida_up | bifpn | nasfpn | hrnet_fuse), ``decoder_channels`` (only decoders with a width
  of their own take it: make it conditional, ``when: {decoder: [fpn, unet, ida_up]}``), ``first_level``,
  ``decoder_mode`` (null, the decoder's own, or a mode it allows: ``decoders.DECODER_MODES``; make it
  conditional on the decoders that allow the choices)
- NAS-FPN's merging cells (``decoder: nasfpn`` trials only): ``cells``, how many, and ``cell_op``, the
  choice of each cell's op (sum | gpa; default both).  ``sample_cells`` turns the flat trial parameters
  into the spec's ``cells``: each cell's inputs ``cell{c}.a`` and ``cell{c}.k`` (b = (a + 1 + k) mod the
  features it can read, so b != a), its level ``cell{c}.level``, and the last L cells (L levels)
  output every level once, as NAS-FPN's output cells (``output{j}.level`` picks among the levels left).
  Every sampled list is valid; the number of levels must be fixed (``stages`` and ``first_level``
  not searched) and ``cells`` at least L.

A dense space ranks by its task's score (``objectives: [miou_fg]``, or ``boundary_ods`` on boundary
data), which is the trial's ``val_score``; a classification space by ``val_accuracy``.

Per-stage parameters are named ``stage{i}.levels``, ``stage{i}.mode``; a parameter keeps one name
and one distribution for the whole study (the space is stored in the study and
a resumed study refuses a changed one).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlasearch import files
from dlasearch.decoders import CELL_OPS, DECODERS, MODES
from dlasearch.errors import SpaceError, did_you_mean
from dlasearch.patterns import LETTERS, PATTERNS
from dlasearch.search.proxies import PROXIES
from dlasearch.zoo import MODELS

__all__ = ['validate', 'available', 'load', 'expand_shortcuts', 'sample', 'sample_cells', 'published_params', 'task_of',
           'score_objective', 'duplicate_cap', 'PER_STAGE', 'cell_levels']

MAX_LEVELS = 10  # 1024 blocks per stage; deeper trees take minutes just to build the IR


def _spaces_dir() -> Path:
    """The shipped spaces: ``dlasearch/_spaces`` in an installed wheel, else the checkout's ``search_spaces/``."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "_spaces"
    return installed if installed.is_dir() else package.parent / "search_spaces"


SPACES_DIR = _spaces_dir()


PARAMS = {
    "pattern": "choice", "stages": "int", "levels": "int", "width": "int", "growth": "number",
    "width_multiplier": "number", "block": "choice", "cardinality": "int", "root_kernel": "int",
    "residual_root": "bool", "task": "choice", "decoder": "choice", "decoder_channels": "int", "first_level": "int",
    "mode": "choice", "decoder_mode": "choice", "cells": "int", "cell_op": "choice",
}
PER_STAGE = ("levels", "mode")  # sampled once per stage, as stage{i}.<name>
CELL_PARAMS = ("cells", "cell_op")  # sampled by sample_cells, in decoder: nasfpn trials only
DEFAULT_PARAM_VALUES = {"pattern": "dla", "stages": None, "levels": None, "width": None, "growth": 2.0,
                        "width_multiplier": 1.0, "block": "basic", "cardinality": 32, "root_kernel": 1,
                        "residual_root": False, "task": "classify", "decoder": "ida_up", "decoder_channels": None,
                        "first_level": 1, "mode": "concat", "decoder_mode": None, "cells": None, "cell_op": None}
DENSE_KEYS = ("decoder", "decoder_channels", "first_level")  # spec keys only a task: segment spec holds
DENSE_PARAMS = (*DENSE_KEYS, "decoder_mode", *CELL_PARAMS)  # params and backbone keys only a dense space takes
CHOICES = {"block": ("basic", "bottleneck", "bottleneckx"), "task": ("classify", "segment"), "decoder": DECODERS,
           "mode": MODES, "decoder_mode": (None, *MODES), "cell_op": CELL_OPS}
# The score objective of each task: what a trial's ``val_score`` holds (train.dense.SCORE_NAMES).
SCORES = {"val_accuracy": "classify", "miou_fg": "segment", "boundary_ods": "boundary"}
OBJECTIVES = {"val_accuracy": "maximize", "miou_fg": "maximize", "boundary_ods": "maximize", "params": "minimize",
              "macs": "minimize", "train_memory": "minimize", "train_seconds": "minimize"}
SAMPLERS = ("tpe", "random", "nsga2", "gp", "grid")
PRUNERS = ("hyperband", "median", "none")

SCHEMA: dict[str, Any] = {
    "description": str,
    "data": {"name": str, "image_size": int, "val_fraction": float, "root": (str, type(None)),
             "path": (str, type(None)), "limit": (int, type(None)), "flip": (bool, type(None))},
    "train": {"epochs": int, "seed": (int, type(None)), "batch_size": int, "lr": float, "momentum": float, "weight_decay": float,
              "warmup_epochs": float, "label_smoothing": float, "steps": (int, type(None)), "device": str,
              "channels_last": (bool, type(None)), "nesterov": bool, "augment": bool, "precision": str,
              "compile": str, "cuda_graph": (bool, type(None)), "init": str, "bn_batches": int,
              "small_maps": bool, "schedule": str, "class_weights": (str, type(None))},
    "study": {"name": (str, type(None)), "storage": (str, type(None)), "trials": int, "workers": int,
              "seed": int, "sampler": str, "pruner": str, "timeout": (int, float, type(None)),
              "heartbeat": int, "grace": int, "results": str, "keep": str, "artifacts": (str, type(None)),
              "threads": (int, type(None)), "screen": (int, type(None)), "proxy": str,
              "max_duplicates": (int, type(None)), "confirm": {"top": int, "seeds": int}},
    "objectives": list,
    "budget": {"params": (int, float, type(None)), "macs": (int, float, type(None)),
               "train_memory": (int, float, type(None))},
    "backbone": dict,
    "params": dict,
    "seed_published": bool,
}
DEFAULTS: dict[str, Any] = {
    "description": "",
    "data": {"name": "digits", "image_size": 32, "val_fraction": 0.2, "root": None, "path": None,
             "limit": None, "flip": None},
    "train": {"epochs": 4, "seed": None, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
              "warmup_epochs": 0.5, "label_smoothing": 0.0, "steps": None, "device": "auto",
              "channels_last": None},  # the other train options: fixed per study (study.PINNED)
    "study": {"name": None, "storage": None, "trials": 20, "workers": 1, "seed": 0, "sampler": "tpe",
              "pruner": "hyperband", "timeout": None, "heartbeat": 10, "grace": 60, "results": files.RESULTS,
              "keep": "best", "artifacts": None, "threads": None,
              "screen": None, "proxy": "params",
              "max_duplicates": None,  # None: 3 x trials (DUPLICATE_CAP)
              "confirm": {"top": 0, "seeds": 3}},  # after the search: the top K architectures, S more seeds each
    "objectives": ["val_accuracy"],
    "budget": {"params": None, "macs": None, "train_memory": None},
    "backbone": {"stem": {"channels": 16, "kernel": 3},
                 "conv_stages": [{"convs": 1, "channels": 16, "stride": 1},
                                 {"convs": 1, "channels": 32, "stride": 2}],
                 "stages": [{"blocks": 2, "channels": 32}, {"blocks": 2, "channels": 64},
                            {"blocks": 2, "channels": 128}]},
    "params": {},
    "seed_published": True,
}
KEEP = ("best", "all", "none")  # whose trained weights a study keeps
# top-level shortcuts accepted on the command line: `trials=5` means `study.trials=5`
SHORTCUTS = {"trials": "study.trials", "workers": "study.workers", "seed": "study.seed",
             "sampler": "study.sampler", "pruner": "study.pruner", "study": "study.name",
             "storage": "study.storage", "epochs": "train.epochs", "data": "data.name",
             "batch_size": "train.batch_size", "timeout": "study.timeout",
             "keep": "study.keep", "threads": "study.threads",
             "screen": "study.screen", "proxy": "study.proxy",
             "confirm": "study.confirm.top", "seeds": "study.confirm.seeds"}
DUPLICATE_CAP = 3  # study.max_duplicates unset: this many times study.trials


def _fail(path: str, msg: str) -> SpaceError:
    return SpaceError(f"{path}: {msg}" if path else msg)


def _check_type(v, t, path: str):
    types = t if isinstance(t, tuple) else (t,)
    if float in types and int not in types and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, bool) and bool not in types:
        raise _fail(path, f"{v!r} has the wrong type; expected {' or '.join(x.__name__ for x in types)}")
    if not isinstance(v, types):
        raise _fail(path, f"{v!r} has the wrong type; expected "
                          f"{' or '.join('null' if x is type(None) else x.__name__ for x in types)}")
    return v


def _check_section(d: dict, schema: dict, path: str) -> dict:
    if not isinstance(d, dict):
        raise _fail(path, f"expected a mapping with keys {', '.join(schema)}")
    out = {}
    for k, v in d.items():
        if k not in schema:
            raise _fail(f"{path}.{k}" if path else k,
                        f"unknown key{did_you_mean(k, schema)}; allowed: {', '.join(schema)}")
        sub = schema[k]
        p = f"{path}.{k}" if path else k
        out[k] = _check_section(v, sub, p) if isinstance(sub, dict) else _check_type(v, sub, p)
    return out


_FORMS = ("choices", "value", "low", "high", "step", "log")


def _merge(base: dict, over: dict, path: str = "") -> dict:
    """Deep merge; inside ``params.<name>`` a new form (choices/value/range) replaces the old one."""
    out = dict(base)
    if path.startswith("params.") and path.count(".") == 1 and any(f in over for f in _FORMS):
        out = {k: v for k, v in out.items() if k not in _FORMS}
    for k, v in over.items():
        sub = f"{path}.{k}" if path else k
        out[k] = _merge(out[k], v, sub) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_param(name: str, p, names) -> dict:
    path = f"params.{name}"
    if name not in PARAMS:
        raise _fail(path, f"unknown parameter{did_you_mean(name, PARAMS)}; allowed: {', '.join(PARAMS)}")
    if not isinstance(p, dict):
        p = {"value": p}
    allowed = {"choices", "low", "high", "step", "log", "value", "when"}
    for k in p:
        if k not in allowed:
            raise _fail(f"{path}.{k}", f"unknown key{did_you_mean(k, allowed)}; allowed: {', '.join(sorted(allowed))}")
    forms = [f for f in ("choices", "value", "low") if f in p]
    if len(forms) != 1 or ("low" in p) != ("high" in p):
        raise _fail(path, "give exactly one of {choices: [...]}, {low: L, high: H}, or {value: V}")
    kind = PARAMS[name]
    if "choices" in p:
        ch = p["choices"]
        if not isinstance(ch, list) or not ch:
            raise _fail(f"{path}.choices", f"{ch!r} must be a non-empty list")
        for c in ch:
            _check_value(name, c, f"{path}.choices")
        if len(set(map(json.dumps, ch))) != len(ch):
            raise _fail(f"{path}.choices", f"{ch!r} has duplicates")
    elif "value" in p:
        _check_value(name, p["value"], f"{path}.value")
    else:
        if kind not in ("int", "number"):
            raise _fail(path, f"a {kind} parameter takes choices or value, not a range")
        lo, hi = p["low"], p["high"]
        for k, v in (("low", lo), ("high", hi)):
            _check_value(name, v, f"{path}.{k}")
        if lo > hi:
            raise _fail(path, f"empty range: low={lo} > high={hi}")
        if p.get("log") and lo <= 0:
            raise _fail(path, f"log range needs low > 0, got {lo}")
        if "step" in p and (not isinstance(p["step"], (int, float)) or p["step"] <= 0):
            raise _fail(f"{path}.step", f"{p['step']!r} must be a positive number")
    if "when" in p:
        w = p["when"]
        if not isinstance(w, dict) or len(w) != 1:
            raise _fail(f"{path}.when", "expected one parent, e.g. {block: bottleneckx}")
        (parent, vals), = w.items()
        if parent not in names:
            raise _fail(f"{path}.when", f"conditional on {parent!r}, which is not a searched parameter"
                                        f"{did_you_mean(parent, names)}; searched: {', '.join(sorted(names))}")
        for v in vals if isinstance(vals, list) else [vals]:
            _check_value(parent, v, f"{path}.when.{parent}")
    return p


def _check_value(name: str, v, path: str):
    kind = PARAMS[name]
    if kind == "choice":
        allowed = list(PATTERNS) + list(LETTERS) if name == "pattern" else list(CHOICES[name])
        if v not in allowed:
            raise _fail(path, f"{v!r} is not allowed{did_you_mean(v, allowed)}; allowed: "
                              f"{', '.join('null' if a is None else a for a in allowed)}")
    elif kind == "bool":
        if not isinstance(v, bool):
            raise _fail(path, f"{v!r} must be true or false")
    elif name == "levels" and isinstance(v, int) and not isinstance(v, bool) and v > MAX_LEVELS:
        raise _fail(path, f"{v} is too deep: each stage gets 2**levels blocks; allowed: 1..{MAX_LEVELS}")
    elif name == "first_level":
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _fail(path, f"{v!r} must be an int >= 0 (the shallowest stage the decoder reads)")
    elif kind == "int":
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _fail(path, f"{v!r} must be an int >= 1")
    elif isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise _fail(path, f"{v!r} must be a positive number")


def validate(space: dict) -> dict:
    """Fill defaults and check a space; returns the normalised dict or raises ``SpaceError``."""
    s = _check_section(space, SCHEMA, "")
    s = _merge(DEFAULTS, s)
    params = s["params"]
    if not isinstance(params, dict):
        raise _fail("params", "expected a mapping of parameter name -> {choices|low/high|value}")
    s["params"] = {n: _check_param(n, p, set(params)) for n, p in params.items()}
    for n, p in s["params"].items():
        if "when" in p:
            (parent, _), = p["when"].items()
            if "when" in s["params"][parent]:
                raise _fail(f"params.{n}.when", f"parent {parent!r} is itself conditional; one level only")
    objs = s["objectives"]
    if not objs or not all(isinstance(o, str) and o in OBJECTIVES for o in objs) or len(set(objs)) != len(objs):
        bad = [o for o in objs if o not in OBJECTIVES] or objs
        raise _fail("objectives", f"{bad!r} invalid; choose distinct names from: {', '.join(OBJECTIVES)}")
    _check_task(s)
    _check_cells(s)
    st = s["study"]
    for k, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("keep", KEEP)):
        if st[k] not in allowed:
            raise _fail(f"study.{k}", f"{st[k]!r}{did_you_mean(st[k], allowed)}; allowed: {', '.join(allowed)}")
    if st["proxy"] not in PROXIES:
        raise _fail("study.proxy", f"{st['proxy']!r}{did_you_mean(st['proxy'], PROXIES)}; allowed: {', '.join(PROXIES)}")
    if st["screen"] is not None:
        if isinstance(st["screen"], bool) or not 2 <= st["screen"] <= 1000:  # each candidate is a journal trial
            raise _fail("study.screen", f"{st['screen']!r}: candidates per trial, an int in [2, 1000] (or null: no "
                                        f"screening); every candidate is a trial in the journal (screen=100000 grew it "
                                        f"to 43 MB before one trial trained), and past ~100 the proxy gains little")
        if st["sampler"] == "grid":
            raise _fail("study.screen", "the grid sampler visits every point once; screening needs tpe, random, "
                                        "nsga2 or gp")
    if st["sampler"] == "grid" and any("low" in p for p in s["params"].values()):
        raise _fail("study.sampler", "grid needs every parameter as choices or value, not a range")
    for k in ("trials", "workers", "heartbeat", "grace", "threads"):
        if st[k] is not None and st[k] < 1:
            raise _fail(f"study.{k}", f"{st[k]} must be >= 1")
    if st["max_duplicates"] is not None and st["max_duplicates"] < 1:
        raise _fail("study.max_duplicates", f"{st['max_duplicates']} must be >= 1 (1: the first repeated architecture "
                                            f"ends the study; null: {DUPLICATE_CAP} x trials)")
    if st["confirm"]["top"] < 0:
        raise _fail("study.confirm.top", f"{st['confirm']['top']} must be >= 0 (0: no confirmation)")
    if st["confirm"]["seeds"] < 1:
        raise _fail("study.confirm.seeds", f"{st['confirm']['seeds']} must be >= 1 (more seeds per architecture)")
    if st["timeout"] is not None and (isinstance(st["timeout"], bool) or st["timeout"] <= 0):
        raise _fail("study.timeout", f"{st['timeout']!r} must be a positive number of seconds (or null)")
    if st["name"] is not None:
        files.check_study_name(st["name"], "study.name", SpaceError)
    for k in ("epochs", "batch_size"):
        if s["train"][k] < 1:
            raise _fail(f"train.{k}", f"{s['train'][k]} must be >= 1")
    for k, v in s["budget"].items():
        if v is not None and v <= 0:
            raise _fail(f"budget.{k}", f"{v} must be positive (or null for no budget)")
    bb = s["backbone"]
    for k in bb:
        if k not in BACKBONE_KEYS:
            raise _fail(f"backbone.{k}", f"unknown key{did_you_mean(k, BACKBONE_KEYS)}; "
                                         f"allowed: {', '.join(BACKBONE_KEYS)}")
        if k in CHOICES or k == "first_level":
            _check_value(k, bb[k], f"backbone.{k}")
    if not isinstance(bb.get("stages"), list) or not bb["stages"]:
        raise _fail("backbone.stages", "expected a non-empty list of {blocks, channels[, stride]}")
    return s


BACKBONE_KEYS = ("stem", "conv_stages", "stages", "in_channels", "num_classes", "block", "cardinality", "root_kernel",
                 "residual_root", "pattern", "task", *DENSE_KEYS, "decoder_mode")


def duplicate_cap(space: dict) -> int:
    """How many sampler proposals of an already evaluated architecture a study answers before it ends:
    ``study.max_duplicates``, or ``DUPLICATE_CAP`` x ``study.trials`` when unset."""
    cap = space["study"].get("max_duplicates")
    return DUPLICATE_CAP * space["study"]["trials"] if cap is None else cap


def task_of(space: dict) -> str:
    """The spec task of a space's architectures: ``params.task``'s value, else ``backbone.task``, else classify."""
    p = space["params"].get("task")
    if p is not None:
        return p.get("value", "classify")
    return space["backbone"].get("task", "classify")


def score_objective(space: dict) -> str:
    """The objective a trial's ``val_score`` answers (val_accuracy, miou_fg or boundary_ods)."""
    return next(o for o in space["objectives"] if o in SCORES)


def _check_task(s: dict) -> None:
    """One score objective, matching the task; decoder keys only where the architectures are dense."""
    objs, task = s["objectives"], None
    scores = [o for o in objs if o in SCORES]
    if len(scores) != 1:
        raise _fail("objectives", f"{objs!r} must include exactly one score ({', '.join(SCORES)}): the others "
                                  f"trade off against it")
    p = s["params"].get("task")
    if p is not None:
        if "value" not in p:
            raise _fail("params.task", "the task is fixed per study: give {value: segment} (or backbone.task)")
        task = p["value"]
    task = task or s["backbone"].get("task", "classify")
    dense = [f"params.{k}" for k in DENSE_PARAMS if k in s["params"]] + \
        [f"backbone.{k}" for k in DENSE_PARAMS if k in s["backbone"]]
    if task == "classify" and dense:
        raise _fail(dense[0], "a decoder needs task: segment (backbone.task or params.task.value)")
    if (task == "classify") != (scores[0] == "val_accuracy"):
        want = "val_accuracy" if task == "classify" else "miou_fg (or boundary_ods on boundary data)"
        raise _fail("objectives", f"{scores[0]} does not score task {task!r} architectures; use {want}")


def _fixed(s: dict, name: str, default):
    """A parameter's one value (its ``value``, else the backbone's, else ``default``)."""
    p = s["params"].get(name)
    return p["value"] if p is not None and "value" in p else s["backbone"].get(name, default)


def cell_levels(s: dict) -> int:
    """The pyramid levels a space's nasfpn decoder reads (conv and block stages from ``first_level`` on)."""
    stages = s["params"]["stages"]["value"] if "value" in s["params"].get("stages", {}) else len(s["backbone"]["stages"])
    return len(s["backbone"]["conv_stages"]) + stages - _fixed(s, "first_level", DEFAULT_PARAM_VALUES["first_level"])


def _check_cells(s: dict) -> None:
    """``cells`` and ``cell_op``: a nasfpn decoder, a fixed number of levels L, at least L cells, no grid."""
    params = s["params"]
    if "cell_op" in params and "cells" not in params:
        raise _fail("params.cell_op", "the op of each merging cell needs params.cells (how many cells)")
    if "cells" not in params:
        return
    dec = params.get("decoder")
    decs = (dec.get("choices") or [dec.get("value")]) if dec else [s["backbone"].get("decoder", "ida_up")]
    if "nasfpn" not in decs:
        raise _fail("params.cells", f"merging cells belong to decoder nasfpn, which this space never builds "
                                    f"(decoder: {', '.join(map(str, decs))}); add nasfpn to params.decoder (or backbone.decoder)")
    for k in ("stages", "first_level"):
        if k in params and "value" not in params[k]:
            raise _fail(f"params.{k}", f"searched beside params.cells, whose inputs and levels index the decoder's "
                                       f"levels: their number must be fixed; give {k} as {{value: V}}")
    n, p = cell_levels(s), params["cells"]
    low = p.get("value", p.get("low", min(p.get("choices", [0]))))
    if low < n:
        raise _fail("params.cells", f"{low} cells cannot output each of the {n} levels once (NAS-FPN's last cells "
                                    f"are its output cells, one per level); use at least {n}")
    if s["study"]["sampler"] == "grid":
        raise _fail("study.sampler", "grid cannot enumerate merging cells (params.cells); use tpe or random")


def _parse_yaml(path: Path) -> dict:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    except (OmegaConfBaseException, Exception) as e:  # yaml.YAMLError and friends
        raise SpaceError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None


def available() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load(name_or_path: str, overrides: dict | None = None) -> dict:
    """Load a space by name (``search_spaces/<name>.yaml``) or path and merge ``overrides``."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPACES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        names = available()
        raise SpaceError(f"space {name_or_path!r} not found{did_you_mean(name_or_path, names)}; "
                         f"available: {', '.join(names)} (or a path to a .yaml file)")
    raw = _parse_yaml(path)
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: the top level must be a mapping (data:, train:, study:, params: ...), "
                         f"not a {type(raw).__name__}")
    raw = _merge(raw, expand_shortcuts(overrides or {}))
    space = validate(raw)
    space["name"] = path.stem
    return space


def expand_shortcuts(overrides: dict) -> dict:
    """``{"trials": 5, "budget": {...}}`` -> ``{"study": {"trials": 5}, "budget": {...}}``."""
    out: dict = {}
    for k, v in overrides.items():
        target = k if isinstance(v, dict) else SHORTCUTS.get(k, k)
        *parents, leaf = target.split(".")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        if isinstance(v, dict) and isinstance(d.get(leaf), dict):
            d[leaf] = _merge(d[leaf], v)
        else:
            d[leaf] = v
    return out


# ---------------------------------------------------------------- sampling

def _suggest_param(trial, name: str, p: dict):
    if "value" in p:
        return p["value"]
    if "choices" in p:
        return trial.suggest_categorical(name, p["choices"])
    lo, hi = p["low"], p["high"]
    if PARAMS[name.split(".")[-1]] == "int":
        return trial.suggest_int(name, lo, hi, step=int(p.get("step", 1)), log=bool(p.get("log", False)))
    return trial.suggest_float(name, float(lo), float(hi), step=p.get("step"), log=bool(p.get("log", False)))


def _active(p: dict, values: dict) -> bool:
    if "when" not in p:
        return True
    (parent, want), = p["when"].items()
    want = want if isinstance(want, list) else [want]
    return values.get(parent) in want


def _round(c: float, multiple: int) -> int:
    return max(multiple, int(round(c / multiple)) * multiple)


def sample(space: dict, trial) -> dict:
    """Ask ``trial`` for every active parameter and return the ``patterns`` spec it describes."""
    params = space["params"]
    values: dict = {}
    order = [n for n in PARAMS if n in params and n not in PER_STAGE + CELL_PARAMS]
    for n in order:
        p = params[n]
        if _active(p, values):
            values[n] = _suggest_param(trial, n, p)
    bb = space["backbone"]
    base_stages = bb["stages"]
    n_stages = values.get("stages", len(base_stages))
    v = {k: values.get(k, DEFAULT_PARAM_VALUES[k]) for k in DEFAULT_PARAM_VALUES}
    v.update({k: bb[k] for k in ("block", "cardinality", "root_kernel", "residual_root", "pattern", "task",
                                 *DENSE_KEYS, "decoder_mode") if k in bb and k not in values})
    block = v["block"]
    multiple = 32 if block == "bottleneckx" else 8
    stages = []
    for i in range(n_stages):
        base = base_stages[min(i, len(base_stages) - 1)]
        if "levels" in params and _active(params["levels"], values):
            lv = _suggest_param(trial, f"stage{i}.levels", params["levels"])
            blocks = 2 ** lv
        else:
            blocks = base.get("blocks", 2)
        if values.get("width") is not None:
            ch = values["width"] * v["growth"] ** i
        else:
            ch = base["channels"] * (2 ** max(0, i - len(base_stages) + 1) if i >= len(base_stages) else 1)
        stages.append({"blocks": blocks, "channels": _round(ch * v["width_multiplier"], multiple),
                       "stride": base.get("stride", 2)})
        if "mode" in params and _active(params["mode"], values):
            stages[-1]["mode"] = _suggest_param(trial, f"stage{i}.mode", params["mode"])
        elif "mode" in base:  # a spec without modes keeps exactly the keys it always had
            stages[-1]["mode"] = base["mode"]
    pattern = LETTERS.get(v["pattern"], v["pattern"])
    spec = {"pattern": pattern, "stem": bb.get("stem", DEFAULTS["backbone"]["stem"]),
            "conv_stages": bb.get("conv_stages", DEFAULTS["backbone"]["conv_stages"]), "stages": stages,
            "block": block, "cardinality": v["cardinality"], "root_kernel": v["root_kernel"],
            "residual_root": v["residual_root"]}
    if v["task"] != "classify":  # a classification spec keeps exactly the keys it always had
        spec.update(task=v["task"], **{k: v[k] for k in DENSE_KEYS})
        if v["decoder_mode"] is not None:
            spec["decoder_mode"] = v["decoder_mode"]
        if v["decoder"] == "nasfpn" and "cells" in params and _active(params["cells"], values):
            n_levels = len(spec["conv_stages"]) + n_stages - v["first_level"]
            ops = params["cell_op"] if "cell_op" in params else {"choices": list(CELL_OPS)}
            spec["cells"] = sample_cells(trial, _suggest_param(trial, "cells", params["cells"]), n_levels, ops)
    return spec


def sample_cells(trial, n_cells: int, n_levels: int, op: dict) -> list:
    """NAS-FPN's search space as flat trial parameters -> the spec's ``cells`` (``decoders.check_cells``).

    Cell c reads two of the ``n_levels + c`` features before it (the levels, then the earlier cells):
    ``cell{c}.a`` one of them, ``cell{c}.k`` which other, b = (a + 1 + k) mod (n_levels + c), so the
    two always differ.  The last ``n_levels`` cells are output cells, one per level (NAS-FPN's rule): the
    j-th of them takes the ``output{j}.level``-th of the levels not yet output, the cells before them
    ``cell{c}.level``, any level.  ``cell{c}.op`` is drawn from ``op`` (a parameter: choices or value).
    Each name always has the same choices, as Optuna needs, and every sampled list is valid."""
    if n_cells < n_levels:
        raise SpaceError(f"params.cells: {n_cells} cells cannot output each of the {n_levels} levels once; "
                         f"use at least {n_levels}")
    left, cells = list(range(n_levels)), []
    for c in range(n_cells):
        m, j = n_levels + c, c - (n_cells - n_levels)
        a = trial.suggest_categorical(f"cell{c}.a", list(range(m)))
        b = (a + 1 + trial.suggest_categorical(f"cell{c}.k", list(range(m - 1)))) % m
        if j < 0:
            level = trial.suggest_categorical(f"cell{c}.level", list(range(n_levels)))
        else:
            level = left.pop(trial.suggest_categorical(f"output{j}.level", list(range(n_levels - j))))
        cells.append([a, b, level, _suggest_param(trial, f"cell{c}.op", op)])
    return cells


def _contains(p: dict, v) -> bool:
    if "value" in p:
        return p["value"] == v
    if "choices" in p:
        return v in p["choices"]
    return p["low"] <= v <= p["high"]


def published_params(space: dict) -> list[dict]:
    """Trial parameters that reproduce a published DLA's stages and blocks, for those that fit the space."""
    from optuna.trial import FixedTrial  # heavy: optuna loads only where a space seeds published configs

    params = space["params"]
    out = []
    for name, c in MODELS.items():
        cand = {"pattern": "dla", "stages": 4, "block": c.block, "cardinality": c.cardinality,
                "root_kernel": 1, "residual_root": c.residual_root, "width": c.channels[2],
                "growth": c.channels[3] / c.channels[2], "width_multiplier": 1.0,
                **{f"stage{i}.levels": lv for i, lv in enumerate(c.levels[2:])},
                **{f"stage{i}.mode": "concat" for i in range(len(c.levels[2:]))}}  # the published DLAs concatenate
        fixed = {k: v for k, v in cand.items() if k.split(".")[-1] in params}
        if not all(_contains(params[k.split(".")[-1]], v) for k, v in fixed.items()):
            continue
        try:
            spec = sample(space, FixedTrial({k: v for k, v in fixed.items()
                                             if "value" not in params[k.split(".")[-1]]}))
        except ValueError:
            continue
        want = [{"blocks": 2 ** lv, "channels": ch} for lv, ch in zip(c.levels[2:], c.channels[2:])]
        got = [{"blocks": st["blocks"], "channels": st["channels"]} for st in spec["stages"]]
        if (got == want and spec["pattern"] == "dla" and spec["block"] == c.block
                and spec["residual_root"] == c.residual_root
                and (c.block != "bottleneckx" or spec["cardinality"] == c.cardinality)):
            out.append({"name": name, "params": {k: v for k, v in fixed.items()
                                                 if "value" not in params[k.split(".")[-1]]}})
    return out
