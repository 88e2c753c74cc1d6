"""The options of every command, as typed tables: one schema both checks ``key=value`` input and
prints ``dlasearch <command> --help``, so the help cannot drift from what is accepted.

Where a module already defines its options (``TrainConfig``, the search-space ``SCHEMA`` and
``DEFAULTS``, ``render.OPTIONS``...), the table is built from it; this module adds the type
words and one-line meanings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dlasearch.analysis import render
from dlasearch.analysis.compare.options import _NOT_TRAIN_OPTIONS
from dlasearch.configfile import flatten
from dlasearch.deploy import export, predict
from dlasearch.errors import DLASearchError, did_you_mean
from dlasearch.ir import INITS
from dlasearch.search import rank, space
from dlasearch.train import PRECISIONS, TrainConfig
from dlasearch.train.config import CLASS_WEIGHTS
from dlasearch.train.sgd import SCHEDULES

__all__ = ['Option', 'train_options', 'data_options', 'table', 'flatten', 'check', 'help_text']

REQUIRED = object()  # default of an option that must be given


@dataclass(frozen=True)
class Option:
    """One ``key=value`` option: ``type`` is int, float, bool, str, choice, list, mapping or any."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple = ()
    nullable: bool = False


def _o(name, type_, default, help_, choices=(), nullable=None):
    return Option(name, type_, default, help_, tuple(choices), default is None if nullable is None else nullable)


# ------------------------------------------------------------------ shared pieces

_TYPES = {int: "int", float: "float", bool: "bool", str: "str"}


def train_options(skip=()) -> list[Option]:
    """``TrainConfig``'s fields, typed from their annotations and defaults."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        base = f.type.split("|")[0].strip() if isinstance(f.type, str) else f.type.__name__
        t = {"int": "int", "float": "float", "bool": "bool", "str": "str"}.get(base, "any")
        choices = {"precision": PRECISIONS, "init": INITS, "schedule": SCHEDULES,
                   "class_weights": CLASS_WEIGHTS}.get(f.name, ())
        out.append(_o(f.name, "choice" if choices else t, f.default, f.metadata.get("help", ""), choices,
                      nullable="None" in str(f.type)))
    return out


DATA_HELP = {
    "name": "digits, mnist, fashion_mnist, cifar10, npz; dense: mnist_seg, fashion_seg, folder (images/ + masks/)",
    "path": "the .npz file for data.name=npz, the folder for data.name=folder",
    "root": "download/cache folder", "limit": "a seeded, stratified subset of this many training images",
    "image_size": "resize every split once to N x N", "val_fraction": "share of the training images used for "
    "validation", "seed": "seed of the train/validation split", "flip": "allow horizontal flips",
    "download": "fetch missing files",
    "task": "dense data: segment (per-pixel classes) or boundary (object outlines)",
    "classes": "dense data of your own: the class count (default: largest label + 1, 255 = ignore)",
}


def data_options(image_size=None, val_fraction=0.1, extra=()) -> list[Option]:
    """``data=NAME|FILE.npz`` and the ``data.<key>`` options shared by train, run and compare."""
    out = [_o("data", "str", "digits", "a dataset name or a .npz path (same as data.name / data.path)"),
           _o("data.name", "str", "digits", DATA_HELP["name"]),
           _o("data.path", "str", None, DATA_HELP["path"]), _o("data.root", "str", None, DATA_HELP["root"]),
           _o("data.limit", "int", None, DATA_HELP["limit"]),
           _o("data.image_size", "any" if image_size == "auto" else "int", image_size, DATA_HELP["image_size"]
              + (" (auto: native unless the network downsamples more)" if image_size == "auto" else ""),
              nullable=True),
           _o("data.val_fraction", "float", val_fraction, DATA_HELP["val_fraction"])]
    out += [_o(f"data.{k}", t, d, DATA_HELP[k], nullable=d is None) for k, t, d in extra]
    return out


COMMON = [_o("print_config", "bool", False, "print the resolved config as YAML and exit (also --cfg)"),
          _o("log", "any", None, "experiment tracking: tensorboard, mlflow, or a list of both")]

# ------------------------------------------------------------------ per command


def _zoo():
    return [_o("format", "choice", "markdown", "table format", ("markdown", "csv"))]


def _train():
    opts = [_o("arch", "str", REQUIRED, "a zoo name, a spec .json/.yaml, or an IR .json (or the first word)")]
    opts += data_options("auto", 0.1, (("seed", "int", 0), ("flip", "bool", None), ("download", "bool", True),
                                       ("task", "str", None), ("classes", "int", None)))
    opts += [_o("image_size", "any", "auto", "old spelling of data.image_size"),
             _o("resize", "choice", "interpolate", "how image_size resizes", ("interpolate", "pad")),
             _o("test", "bool", False, "also evaluate the test split at the end"),
             _o("latency", "bool", True, "measure latency and training speed first"),
             _o("out", "str", None, "run folder path"), _o("name", "str", None, "run folder name under results/train/"),
             _o("overwrite", "bool", False, "replace a folder that holds a finished run (whole, once the new "
                                            "run is saved)"),
             _o("weights", "str", None, "a checkpoint to fine-tune from (.safetensors/.pth; timm, original or dlasearch)")]
    return opts + train_options() + COMMON


SPACE_HELP = {
    "description": "what the space is for",
    "objectives": "val_accuracy (a task: segment space: miou_fg, or boundary_ods) plus any of params, macs, "
    "train_memory, train_seconds (Pareto front)", "backbone": "the fixed part of the spec (stem, conv_stages, stages)",
    "params": "what is searched: {choices: [...]}, {low, high[, step][, log]} or {value}",
    "seed_published": "enqueue published DLA configs that fit the space",
    "study.name": "study name (default: the space's name)", "study.storage": "journal file or database URL",
    "study.trials": "total trials of the study", "study.workers": "processes on this machine",
    "study.seed": "sampler, data split and training seed", "study.sampler": "tpe, random, nsga2, gp or grid",
    "study.pruner": "hyperband, median or none", "study.timeout": "stop starting trials after N seconds",
    "study.heartbeat": "seconds between heartbeats of a running trial",
    "study.grace": "seconds without heartbeat before a trial elsewhere is stale",
    "study.results": "folder holding results/<study>/", "budget.params": "reject architectures above it",
    "budget.macs": "reject architectures above it", "budget.train_memory": "reject above it (bytes)",
    "study.keep": "trained weights kept: best (the best trials), all, or none",
    "study.threads": "torch threads per worker (default: cores / workers)",
    "study.screen": "train the best of K sampler proposals by study.proxy (null: no screening)",
    "study.proxy": "the screening proxy: synflow, snip, grad_norm, naswot, zen, zico, params or macs",
    "study.artifacts": "artifact folder for trial weights (default results/<study>/artifacts)",
    "study.max_duplicates": "sampler proposals of an already evaluated architecture (answered from it, not "
    "counted against trials) before the study ends (default: 3 x trials)",
    "study.confirm.top": "after the search, train the top K distinct architectures again (0: none)",
    "study.confirm.seeds": "more training seeds per confirmed architecture: mean and 95% CI over them",
}
_SPACE_TYPES = {str: "str", int: "int", float: "float", bool: "bool", list: "list", dict: "mapping"}


def _run():
    opts = [_o("space", "str", "hda", "a shipped space name or a .yaml path (or the first word); "
                                      "omit it to resume study=NAME as stored")]
    for key, typ in space.SCHEMA.items():
        if key == "data":
            continue
        if isinstance(typ, dict):
            for sub, t in typ.items():
                name = f"{key}.{sub}"
                if key == "train":
                    continue
                if isinstance(t, dict):  # study.confirm.top / .seeds
                    opts += [_o(f"{name}.{leaf}", _SPACE_TYPES[lt], space.DEFAULTS[key][sub][leaf],
                                SPACE_HELP.get(f"{name}.{leaf}", "")) for leaf, lt in t.items()]
                    continue
                types = t if isinstance(t, tuple) else (t,)
                words = [_SPACE_TYPES[x] for x in types if x in _SPACE_TYPES]
                choices = {"study.sampler": space.SAMPLERS, "study.pruner": space.PRUNERS}.get(name, ())
                kind = "choice" if choices else "float" if "float" in words else words[0]
                opts.append(_o(name, kind, space.DEFAULTS[key][sub], SPACE_HELP.get(name, ""), choices,
                               nullable=type(None) in types))
        else:
            opts.append(_o(key, _SPACE_TYPES[typ], space.DEFAULTS[key], SPACE_HELP.get(key, "")))
    d = space.DEFAULTS["data"]
    opts += data_options(d["image_size"], d["val_fraction"], (("flip", "bool", None),))
    tdef = space.DEFAULTS["train"]
    nullable = {k for k, t in space.SCHEMA["train"].items() if isinstance(t, tuple) and type(None) in t}
    opts += [dataclasses.replace(o, name=f"train.{o.name}", default=tdef.get(o.name, o.default),
                                 nullable=o.nullable or o.name in nullable)
             for o in train_options() if o.name in space.SCHEMA["train"]]
    by_name = {o.name: o for o in opts}
    for short, target in space.SHORTCUTS.items():
        if short != "data":
            o = by_name[target]
            opts.append(dataclasses.replace(o, name=short, help=f"= {target}"))
    return opts + COMMON


def _worker():
    return [_o("study", "str", REQUIRED, "the study to work on"),
            _o("storage", "str", None, "journal file or database URL (default results/<study>/journal.log)"),
            _o("threads", "int", None, "torch threads of this process"),
            _o("trials", "int", None, "total trials to reach (default: the study's)"),
            _o("index", "int", None, "worker number (set by `run workers=K`)"), COMMON[1]]


def _compare():
    opts = [_o("patterns", "any", "all seven", "comma list of chain, skip, ida, tree, reentrant, hda, dla (or a-f)"),
            _o("budget", "any", REQUIRED, "the parameter budget (same as budget.params)"),
            _o("budget.params", "any", REQUIRED, "the parameter budget: 20000, 2e4 or 20k"),
            _o("budget.tolerance", "float", 0.05, "allowed relative distance from the budget"),
            _o("seeds", "any", 3, "a count (seeds 0..N-1) or a list [0,5,7]"),
            _o("blocks", "any", "2,4,4", "blocks per residual stage, powers of two"),
            _o("baseline", "any", 2, "budget multiples for plain-chain baseline rows; false for none"),
            _o("out", "str", None, "output folder"), _o("name", "str", None, "its name under results/compare/"),
            _o("task", "choice", "classify", "classify, or segment: every pattern with every decoder on dense data "
               "(mnist_seg ...), scored by test foreground mIoU against chain+none", ("classify", "segment")),
            _o("decoders", "any", "none,fcn,fpn,unet,ida_up", "task=segment: comma list of none, fcn, fpn, unet, "
               "ida_up, bifpn, nasfpn, hrnet_fuse")]
    opts += data_options(32, 0.1, (("seed", "int", 0), ("task", "str", None)))
    opts += [_o(k, "any", None, f"old spelling of data.{k}") for k in ("root", "path", "limit", "val_fraction",
                                                                         "image_size")]
    return opts + train_options(skip=_NOT_TRAIN_OPTIONS) + COMMON


def _report():
    return [_o("study", "str", REQUIRED, "the study"), _o("storage", "str", None, "journal file or database URL"),
            _o("out", "str", None, "report folder (default results/<study>/report)"),
            _o("top", "int", 3, "diagrams of the k best trials")]


RENDER_HELP = {"arch": "zoo name, spec/IR .json, or figure1 (or the first word)", "format": "svg, png or pdf",
               "out": "output file", "direction": "LR or TB", "size": "input size of the resolution labels",
               "study": "draw a trial of this study", "trial": "the trial number", "storage": "the study's storage"}


def _render():
    return [_o(k, "any", None, RENDER_HELP.get(k, "see docs/render.md")) for k in render.OPTIONS]


EXPORT_HELP = {"from": "a run folder, a checkpoint file or a zoo name (or the first word)",
               "study": "export a trial of this study (with trial=)", "trial": "the trial number",
               "storage": "the study's storage", "artifacts": "the study's artifact folder, if not the default",
               "format": "comma list of py, pt2, onnx", "out": "export folder",
               "overwrite": "replace an out= folder that holds an earlier export (replaced whole)",
               "weights": "with a zoo name: a checkpoint to load", "num_classes": "with a zoo name: classes"}


def _export():
    types = {"trial": "int", "num_classes": "int", "overwrite": "bool"}
    return [_o(k, types.get(k, "any"), {"format": "py,pt2", "overwrite": False}.get(k), EXPORT_HELP[k])
            for k in export.OPTIONS]


PREDICT_HELP = {"from": "a run folder, a checkpoint file or a best/trialN.ir.json entry (or the first word)",
                "study": "use a trial of this study (with trial=)", "trial": "the trial number",
                "storage": "the study's storage", "artifacts": "the study's artifact folder, if not the default",
                "images": "an .npz (x or x_test: uint8 (N, H, W[, C])), a folder of .png files, or one .png",
                "out": "output folder (default results/predict/<model>)",
                "overwrite": "replace an out= folder that holds an earlier prediction (replaced whole)",
                "batch_size": "images per forward pass", "device": "cpu, cuda[:N] or auto"}


def _predict():
    defaults = {"images": REQUIRED, "overwrite": False, "batch_size": 64, "device": "cpu"}
    types = {"overwrite": "bool", "batch_size": "int", "trial": "int"}
    return [_o(k, types.get(k, "any"), defaults.get(k), PREDICT_HELP[k]) for k in predict.OPTIONS]


RANK_HELP = {"space": "a shipped space name or a .yaml path", "n": "distinct architectures to score",
             "proxies": "comma list of synflow, snip, grad_norm, naswot, zen, zico, params, macs",
             "batch": "images in the scoring batch", "seed": "sampling and batch seed",
             "out": "CSV path (default results/rank/<space>-n<N>-seed<S>.csv)"}


def _rank():
    defaults = {"space": REQUIRED, "n": 20, "proxies": "all", "batch": 64, "seed": 0}
    d = space.DEFAULTS["data"]
    types = {"n": "int", "batch": "int", "seed": "int"}
    return ([_o(k, types.get(k, "any"), defaults.get(k), RANK_HELP[k]) for k in rank.OPTIONS]
            + data_options(d["image_size"], d["val_fraction"], (("flip", "bool", None),)))


BENCH_HELP = {"action": "build, lookup or report (or the first word)", "name": "the benchmark's name",
              "space": "build: the space (every parameter a choice list)",
              "n": "build: architectures to train (default: the whole grid)",
              "repeat": "build: architectures retrained with the next seed (noise ceiling)",
              "workers": "build: worker processes", "threads": "build: torch threads per worker",
              "data": "build: data overrides (data.name=npz data.path=FILE ...)",
              "train": "build: training overrides (train.epochs=...)",
              "reps": "report: repetitions per replayed search strategy (0: none)",
              "trials": "report: architectures trained per replayed search",
              "k": "report: candidates per trial of tpe+screen", "proxy": "report: screening proxy (default: "
              "the best-correlated zero-cost proxy)",
              "against": "build/report: comparison folders (comma list) whose pattern ranking the table's is checked "
              "against by Spearman ρ, e.g. results/compare/cifar10_subset-1m; kept for later reports (none: forget)",
              "pattern": "lookup: only this pattern",
              "fingerprint": "lookup: fingerprints starting with this", "sort": "lookup: column to sort by",
              "top": "lookup: rows shown"}


def _bench():
    defaults = {"action": REQUIRED, "name": REQUIRED, "space": "bench", "repeat": 30, "reps": 30, "trials": 50,
                "k": 10, "sort": "val_accuracy", "top": 20}
    return [_o(k, "any", defaults.get(k), h) for k, h in BENCH_HELP.items()]


STORAGE_HELP = {"action": "serve (or the first word)",
                "storage": "the database the proxy serves: postgresql://USER@HOST/DB or sqlite:///FILE",
                "host": "address to listen on (0.0.0.0: every interface, for workers on other machines)",
                "port": "port to listen on"}


def _storage():
    defaults = {"action": REQUIRED, "storage": REQUIRED, "host": "localhost", "port": 13000}
    types = {"action": "choice", "storage": "str", "host": "str", "port": "int"}
    return [_o(k, types[k], defaults[k], h, ("serve",) if k == "action" else ()) for k, h in STORAGE_HELP.items()]


COMMANDS = {"zoo": _zoo, "bench": _bench, "train": _train, "run": _run, "worker": _worker, "compare": _compare,
            "report": _report, "render": _render, "export": _export, "predict": _predict, "rank": _rank,
            "storage": _storage}


def table(command: str) -> list[Option]:
    return COMMANDS[command]()


# ------------------------------------------------------------------ checking


def _type_error(o: Option, v) -> str | None:
    if v is None:
        return None if o.nullable or o.type in ("any", "str") else "expected a value, not null"
    if o.type == "choice":
        return None if v in o.choices else f"allowed: {', '.join(map(str, o.choices))}"
    if o.type == "bool":
        return None if isinstance(v, bool) else "allowed: true, false"
    if o.type == "int":
        return None if isinstance(v, int) and not isinstance(v, bool) else "expected an int"
    if o.type == "float":
        return None if isinstance(v, (int, float)) and not isinstance(v, bool) else "expected a number"
    if o.type == "list":
        return None if isinstance(v, list) else "expected a list, e.g. [a,b]"
    if o.type == "mapping":
        return None if isinstance(v, dict) else "expected a mapping, e.g. key.sub=value"
    if o.type == "str":
        return None if not isinstance(v, (dict, list)) else "expected a single value"
    return None


# names a user may reasonably try that a command does not take, with the reason
REFUSED = {"compare": {"seed": "seed= is not a compare option: seeds come from seeds=N (or seeds=[0,5,7])",
                       "progress": "progress= is not a compare option: compare prints its own progress"}}


def check(command: str, args: dict) -> None:
    """Raise ``DLASearchError`` for an option ``command`` does not have, or a value of the wrong type."""
    opts = {o.name: o for o in table(command)}
    mappings = {n for n, o in opts.items() if o.type in ("mapping", "any")}
    for key, v in flatten(args, mappings=mappings).items():
        o = opts.get(key)
        if key in REFUSED.get(command, {}):
            raise DLASearchError(REFUSED[command][key])
        if o is None:
            raise DLASearchError(f"unknown option {key!r}{did_you_mean(key, opts)}; "
                                 f"`dlasearch {command} --help` lists them")
        err = _type_error(o, v)
        if err:
            raise DLASearchError(f"{key}={v!r}: {err}")


# ------------------------------------------------------------------ help


def _default_text(o: Option) -> str:
    if o.default is REQUIRED:
        return "required"
    if o.default is None:
        return "-"
    if isinstance(o.default, bool):
        return str(o.default).lower()
    text = str(o.default)
    return text if len(text) <= 24 else "(see --cfg)"


def help_text(command: str, summary: str, usage: str) -> str:
    """The ``--help`` page of ``command``: every option with type, default and meaning."""
    opts = table(command)
    shown = {"choice": None, "any": "value"}  # "value": a number, word or list; the command checks it
    rows = [(o.name, "|".join(o.choices) if o.type == "choice" else shown.get(o.type, o.type), _default_text(o),
             o.help) for o in opts]
    w = [max(len(r[i]) for r in rows + [("option", "type", "default", "")]) for i in range(3)]
    w = [min(x, 24) for x in w]
    lines = [f"usage: {usage}", "", summary.replace("``", "`"), "", "options (key=value; nested keys as a.b=value):",
             f"  {'option':<{w[0]}}  {'type':<{w[1]}}  {'default':<{w[2]}}  meaning"]
    lines += [f"  {a:<{w[0]}}  {b:<{w[1]}}  {c:<{w[2]}}  {d}" for a, b, c, d in rows]
    return "\n".join(lines)
