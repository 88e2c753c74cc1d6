"""The options of ``dlasearch compare``, each parsed and checked before anything runs."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from dlasearch.analysis.compare.sizing import DEFAULT_BLOCKS, STAGE_CHANNELS, decoder_fields, decoder_label, decoder_parts
from dlasearch.analysis.compare.statistics import DENSE_REFERENCE, REFERENCE
from dlasearch.decoders import DECODER_MODES, DECODERS, NECKS
from dlasearch.errors import CompareError, did_you_mean, pick
from dlasearch.patterns import LETTERS, PATTERNS
from dlasearch import files
from dlasearch.train import TrainConfig, data_options

__all__ = ['parse_patterns', 'parse_seeds', 'parse_number', 'parse_budget', 'parse_blocks', 'parse_baseline',
           'parse_decoders', 'baseline_key', 'short_number', 'CompareOptions', 'parse_options']

ALIASES = {"plain": "chain", **LETTERS}


DEFAULT_BASELINE = (2.0,)


OPTIONS = ("patterns", "data", "root", "path", "limit", "val_fraction", "image_size", "seeds", "budget",
           "blocks", "baseline", "out", "name", "task", "decoders")
TASKS = ("classify", "segment")
DEFAULT_DECODERS = tuple(d for d in DECODERS if d not in NECKS)  # none, fcn, fpn, unet, ida_up


_NOT_TRAIN_OPTIONS = ("seed", "progress")


def parse_patterns(value) -> list[str]:
    """``"chain,skip"``, a list, or letters/aliases -> pattern names in order, without repeats."""
    if value is None:
        return list(PATTERNS)
    return pick(value, list(PATTERNS), "patterns", CompareError, ALIASES, "chain,ida,dla",
                " (plain = chain, or Figure-1 letters a-f)")


def parse_decoders(value) -> list[str]:
    """``"none,fpn"`` or a list -> decoder entries in order, without repeats (task=segment's rows); a
    decoder with another merge is ``name.mode`` (``ida_up.sum``: its ``decoder_mode``), and one with
    the structure of a spec file is ``name@file`` (``nasfpn@results/<study>/best/trial7.spec.json``:
    a searched cell against the hand-designed necks, row ``nasfpn@trial7``)."""
    if value is None:
        return list(DEFAULT_DECODERS)
    items = [str(i).strip() for i in (value.split(",") if isinstance(value, str) else
                                      value if isinstance(value, (list, tuple)) else [value])]
    moded = [f"{d}.{m}" for d in DECODERS for m in DECODER_MODES[d]]
    named = [i for i in items if "@" not in i]
    if named or not items:
        named = pick(named or value, [*DECODERS, *moded], "decoders", CompareError,
                     example="none,fpn,ida_up,ida_up.sum",
                     note=" (a decoder.mode merges that decoder's aggregation nodes by the mode; "
                          "decoder@spec-file takes its structure from the file)")
    labels: dict = {}
    out = []
    for item in items:
        if "@" in item:
            name, mode, file = decoder_parts(item)
            if name not in DECODERS or mode or not file:
                raise CompareError(f"decoders={item!r}: expected decoder@spec-file with a decoder among "
                                   f"{', '.join(DECODERS)}, e.g. nasfpn@results/<study>/best/trial7.spec.json")
            decoder_fields(item)  # read and checked now, before anything trains
        elif item not in named:
            continue
        label = decoder_label(item)
        if labels.setdefault(label, item) != item:
            raise CompareError(f"decoders: {labels[label]!r} and {item!r} would both be row {label!r}; "
                               f"rename one of the files")
        if item not in out:
            out.append(item)
    return out


def parse_seeds(value) -> list[int]:
    """``seeds=3`` -> [0, 1, 2]; ``seeds=[0,5]`` or ``"0,5"`` -> those seeds."""
    if isinstance(value, bool):
        raise CompareError(f"seeds={value!r}: expected a count (seeds=3) or a list (seeds=[0,5,7])")
    if isinstance(value, int):
        if value < 1:
            raise CompareError(f"seeds={value}: expected a count >= 1 or a list of seeds")
        return list(range(value))
    items = value.split(",") if isinstance(value, str) else value
    try:
        seeds = [int(s) for s in items]
    except (TypeError, ValueError):
        seeds = []
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise CompareError(f"seeds={value!r}: expected a count >= 1 or a list of distinct seeds >= 0")
    return seeds


def parse_number(value, what: str) -> float:
    """``20000``, ``2e4``, ``"20k"`` or ``"1.5M"`` -> a positive float."""
    text = str(value).strip()
    scale = {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}.get(text[-1:], 1)
    try:
        number = float(text[:-1] if scale != 1 else text)
    except ValueError:
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise CompareError(f"{what}={value!r}: expected a positive number such as 20000, 2e4 or 20k")
    return number * scale


def parse_budget(value) -> tuple[float, float]:
    """``budget.params=P [budget.tolerance=0.05]`` (or ``budget=P``) -> (params, tolerance)."""
    if not isinstance(value, dict):
        value = {"params": value}
    unknown = set(value) - {"params", "tolerance"}
    if unknown:
        raise CompareError(f"budget: unknown key(s) {sorted(unknown)}; compare matches budget.params "
                           f"(with budget.tolerance, default 0.05)")
    if "params" not in value:
        raise CompareError("budget.params=N is required, e.g. budget.params=100000")
    tol = value.get("tolerance", 0.05)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise CompareError(f"budget.tolerance={tol!r}: expected a fraction in (0, 1), e.g. 0.05")
    return parse_number(value["params"], "budget.params"), float(tol)


def parse_blocks(value) -> tuple[int, ...]:
    """Blocks per block stage: three powers of two >= 2 (tree patterns build binary trees)."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        blocks = tuple(int(b) for b in items)
    except (TypeError, ValueError):
        blocks = ()
    if len(blocks) != len(STAGE_CHANNELS) or any(b < 2 or b & (b - 1) for b in blocks):
        raise CompareError(f"blocks={value!r}: expected {len(STAGE_CHANNELS)} powers of two >= 2, "
                           f"one per block stage, e.g. blocks=2,4,4")
    return blocks


def parse_baseline(value) -> tuple[float, ...]:
    """``baseline=2`` / ``0.5,2`` / a list -> budget multiples for plain-chain rows; false or none -> ()."""
    if value is True or value is None:
        return DEFAULT_BASELINE
    if value is False or value in ("none", "false", "", []):
        return ()
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in items:
        m = parse_number(v, "baseline")
        if m == 1:
            raise CompareError("baseline=1 is chain itself; give other budget multiples, e.g. baseline=0.5,2")
        if m not in out:
            out.append(m)
    return tuple(out)


def baseline_key(multiple: float, reference: str = REFERENCE) -> str:
    return f"{reference}_{multiple:g}x"


def short_number(x: float) -> str:
    """20000 -> '20k', 1500000 -> '1.5M': for default folder names."""
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.4g}{unit}"
    return f"{x:.4g}"


def _train_config(options: dict):
    return TrainConfig(**{**options, "progress": False})  # one progress line per run, no bars


@dataclass(frozen=True)
class CompareOptions:
    """Every option of a comparison, parsed and checked: ``parse_options`` is its one validator."""
    patterns: list            # pattern names, the reference (chain) first
    seeds: list
    budget: float             # parameters
    tolerance: float
    blocks: tuple
    baselines: tuple          # budget multiples of the plain-chain rows
    config: object            # TrainConfig
    data: dict                # data.load keywords, plus name and split seed
    image_size: object
    folder: Path
    tracking_log: object = None
    task: str = "classify"
    decoders: tuple = ()      # task=segment: the decoders on every pattern

    @property
    def reference(self) -> str:
        return REFERENCE if self.task == "classify" else DENSE_REFERENCE

    def rows(self) -> list[tuple[str, str, str | None]]:
        """(key, pattern, decoder) of every budget-matched row, the reference first: the patterns for
        classification; for segment every pattern x decoder (``dla+fpn``), plus ``chain+none``."""
        if self.task == "classify":
            return [(p, p, None) for p in self.patterns]
        cells = [(f"{p}+{decoder_label(d)}", p, d) for p in self.patterns for d in self.decoders]
        ref = (DENSE_REFERENCE, *DENSE_REFERENCE.split("+"))
        return [ref] + [c for c in cells if c[0] != DENSE_REFERENCE]

    def resolved(self) -> dict:
        """The fully resolved config, as ``config.yaml`` holds it and ``--cfg`` prints it."""
        dense = {"task": self.task, "decoders": list(self.decoders)} if self.task != "classify" else {}
        return {"command": "compare", **dense, "patterns": self.patterns,
                "data": {**self.data, "image_size": self.image_size},
                "seeds": self.seeds, "budget": {"params": self.budget, "tolerance": self.tolerance},
                "blocks": list(self.blocks), "baseline": list(self.baselines), "out": str(self.folder),
                "log": self.tracking_log, "train": dataclasses.asdict(self.config)}


def parse_options(patterns=None, data="digits", seeds=3, budget=None, *, root=None, path=None, limit=None,
                  val_fraction=None, image_size=32, blocks=DEFAULT_BLOCKS, baseline=DEFAULT_BASELINE, out=None,
                  name=None, train: dict | None = None, tracking_log=None, log=print, task="classify",
                  decoders=None) -> CompareOptions:
    """Check every option of ``compare`` (see its docstring) and return them typed; raises ``CompareError``."""
    if task not in TASKS:
        raise CompareError(f"task={task!r}{did_you_mean(str(task), TASKS)}; allowed: {', '.join(TASKS)} "
                           f"(segment: every pattern with every decoder, on dense data such as mnist_seg)")
    if decoders is not None and task != "segment":
        raise CompareError("decoders= needs task=segment: a classifier has no decoder")
    order = parse_patterns(patterns)
    if task == "segment":
        decoder_list = parse_decoders(decoders)
        if REFERENCE not in order or "none" not in decoder_list:
            log(f"added {DENSE_REFERENCE!r}: every row is compared with it")
    elif REFERENCE not in order:
        order.insert(0, REFERENCE)
        log(f"added {REFERENCE!r}: every pattern is compared with it")
    if budget is None:
        raise CompareError("budget.params=N is required, e.g. budget.params=100000")
    budget_params, tolerance = parse_budget(budget)
    train = dict(train or {})
    bad = [k for k in train if k in _NOT_TRAIN_OPTIONS]
    if bad:
        raise CompareError(f"{bad[0]}= is not a compare option: seeds come from seeds=N (or seeds=[0,5,7])")
    opts = data_options(data)
    for k, v in (("root", root), ("path", path), ("limit", limit), ("val_fraction", val_fraction)):
        if v is not None:
            opts[k] = v
    opts.setdefault("seed", 0)
    label = Path(str(opts["path"])).stem if opts["name"] == "npz" and opts.get("path") else opts["name"]
    if name is not None and (not str(name) or "/" in str(name) or str(name) in (".", "..")):
        raise CompareError(f"name={name!r}: expected a plain folder name (use out= for a path)")
    folder = Path(str(out)).expanduser() if out is not None else \
        files.results_root() / "compare" / str(name or f"{label}-{short_number(budget_params)}")
    return CompareOptions(order, parse_seeds(seeds), budget_params, tolerance, parse_blocks(blocks),
                          parse_baseline(baseline), _train_config(train), opts, image_size, folder, tracking_log,
                          task, tuple(decoder_list) if task == "segment" else ())
