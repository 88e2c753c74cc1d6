"""Train one architecture on one dataset, and measure it: the unit every search trial runs.

SGD (momentum, nesterov) with linear warm-up and a cosine schedule, seeded so
that the same seed gives the same numbers.  ``train`` calls ``callback(epoch,
metrics)`` after each epoch so a search can prune; a NaN/inf loss ends the run
with ``status="nan"`` rather than an exception.  ``run`` is what ``dlasearch
train`` does: resolve the architecture for the data, measure it, train it and
write ``metrics.json`` and ``ir.json`` atomically into a run folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dlasearch import engine
from dlasearch import ir as irmod
from dlasearch.data import Dataset
from dlasearch import files
from dlasearch.engine import COMPILE_MODES
from dlasearch.errors import DLASearchError, did_you_mean

PRECISIONS = ("auto", "fp32", "bf16")
MAX_AUTO_GROWTH = 8  # image_size=auto never enlarges images more than this (a silent multi-GB run otherwise)


class TrainError(DLASearchError):
    """A training setting, or an architecture that does not fit the data."""


class StopTraining(Exception):
    """Raise from an epoch callback to end training early (e.g. a pruned search trial)."""


def _opt(default, help_: str):
    """A config field whose one-line meaning ``--help`` shows (kept beside the field it explains)."""
    return field(default=default, metadata={"help": help_})


@dataclass
class TrainConfig:
    """Every knob of a training run; ``dlasearch train key=value`` sets them by name."""

    epochs: int = _opt(10, "epochs to train")
    steps: int | None = _opt(None, "a step budget; replaces epochs")
    batch_size: int = _opt(128, "training batch size (also the batch of the memory and speed metrics)")
    lr: float = _opt(0.1, "SGD learning rate")
    momentum: float = _opt(0.9, "SGD momentum")
    nesterov: bool = _opt(True, "Nesterov momentum")
    weight_decay: float = _opt(5e-4, "on weights only, not on biases and norm scales")
    warmup_epochs: float = _opt(1.0, "linear warm-up, then cosine decay to 0")
    label_smoothing: float = _opt(0.0, "cross-entropy label smoothing")
    augment: bool = _opt(True, "random crop with padding, plus flips where they keep the class")
    seed: int = _opt(0, "initial weights, shuffling and augmentation")
    device: str = _opt("auto", "auto (CUDA when present), cpu, cuda[:N]")
    precision: str = _opt("auto", "auto (bf16 autocast on CUDA and on CPUs with native bf16, else fp32), fp32, bf16")
    channels_last: bool | None = _opt(None, "NHWC memory format (null: on with bf16)")
    compile: str = _opt("auto", "auto, none, default or reduce-overhead (auto: torch.compile only where it pays, docs/engine.md)")
    cuda_graph: bool | None = _opt(None, "capture the training step in a CUDA graph (null: on CUDA unless compiled)")
    threads: int | None = _opt(None, "torch intra-op threads (null: torch's setting)")
    eval_batch_size: int = _opt(512, "batch size of evaluation")
    deterministic: bool = _opt(True, "on CUDA: deterministic cuDNN kernels, no autotuning")
    progress: bool | None = _opt(None, "bar (true), none (false), or null: a bar on a terminal, else one line per epoch")
    freeze: str = _opt("none", "backbone: fine-tune only the classifier (with weights=); none: train everything")
    bn_batches: int = _opt(16, "recompute BatchNorm statistics from this many training batches before each evaluation (0: off)")

    def __post_init__(self):
        def integer(name, lo, none_ok=False):
            v = getattr(self, name)
            if v is None and none_ok:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise TrainError(f"{name}={v!r}: expected an int >= {lo}" + (" or null" if none_ok else ""))

        def number(name, lo, hi=math.inf, hi_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi \
                    or (hi_open and v == hi) or not math.isfinite(v):
                rng = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}{')' if hi_open else ']'}"
                raise TrainError(f"{name}={v!r}: expected a number {rng}")

        integer("epochs", 1)
        integer("steps", 1, none_ok=True)
        integer("batch_size", 1)
        integer("eval_batch_size", 1)
        integer("seed", 0)
        integer("threads", 1, none_ok=True)
        integer("bn_batches", 0)
        number("lr", 0)
        number("momentum", 0, 1, hi_open=True)
        number("weight_decay", 0)
        number("warmup_epochs", 0)
        number("label_smoothing", 0, 1, hi_open=True)
        for name in ("nesterov", "augment", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise TrainError(f"{name}={getattr(self, name)!r}: expected true or false")
        for name in ("channels_last", "cuda_graph"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise TrainError(f"{name}={getattr(self, name)!r}: expected true, false or null (auto)")
        if self.compile not in COMPILE_MODES:
            raise TrainError(f"compile={self.compile!r}; allowed: {', '.join(COMPILE_MODES)}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise TrainError(f"progress={self.progress!r}: expected true, false or null (auto)")
        if self.nesterov and self.momentum == 0:
            raise TrainError("nesterov=true needs momentum > 0; set momentum=0.9 or nesterov=false")
        if self.freeze not in ("none", "backbone"):
            raise TrainError(f"freeze={self.freeze!r}; allowed: none, backbone")
        if self.precision not in PRECISIONS:
            raise TrainError(f"precision={self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        resolve_device(self.device)

    @classmethod
    def option_names(cls) -> list[str]:
        """The field names, i.e. the ``key=value`` options ``dlasearch train`` accepts for training."""
        return [f.name for f in dataclasses.fields(cls)]


@dataclass
class TrainResult:
    """What a run produced; ``status`` is ``ok``, ``nan`` (loss diverged) or ``stopped`` (by the callback)."""

    status: str
    history: list = field(default_factory=list)
    val_accuracy: float | None = None
    val_loss: float | None = None
    test_accuracy: float | None = None
    train_seconds: float = 0.0
    epochs: int = 0
    steps: int = 0
    reason: str = ""
    engine: dict = field(default_factory=dict)  # precision, memory format, compile, CUDA graph: what ran and why

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else must name a usable torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise TrainError(f"device={device!r}: not a torch device; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device={device!r}: CUDA is not available here; use device=auto or cpu")
    if dev.type not in ("cpu", "cuda"):
        raise TrainError(f"device={device!r}: allowed: auto, cpu, cuda[:N]")
    return dev


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a run uses (None: plain fp32)."""
    return engine.choose_precision(config.precision, config.channels_last, device).amp


# ------------------------------------------------------------ architecture vs data

def total_stride(graph: irmod.IR) -> int:
    """How much the network shrinks its input: the input side over the smallest feature map's side."""
    probe = 1024
    sides = [min(s[1:]) for s in irmod.infer_shapes(graph, probe).values() if len(s) == 3]
    return max(1, probe // min(sides)) if sides else 1


def check_fit(graph: irmod.IR, data: Dataset) -> None:
    """Raise ``TrainError`` unless ``graph`` classifies ``data``: channels, classes, image size."""
    irmod.validate(graph)
    (inp,) = graph.of_kind("input")
    c = graph.nodes[inp]["channels"]
    if c != data.channels:
        raise TrainError(f"the architecture takes {c}-channel input but {data.name} images have "
                         f"{data.channels}; build it with in_channels={data.channels}")
    outs = graph.of_kind("output")
    heads = [graph.inputs(o)[0] for o in outs]
    if len(outs) != 1 or graph.nodes[heads[0]]["kind"] != "head" or not graph.nodes[heads[0]]["pool"]:
        raise TrainError("only classifiers (one output from a pooled head) can be trained on image "
                         "classification data; this architecture has per-pixel or several outputs")
    k = graph.nodes[heads[0]]["classes"]
    if k != data.num_classes:
        raise TrainError(f"the architecture predicts {k} classes but {data.name} has {data.num_classes}; "
                         f"build it with num_classes={data.num_classes}")
    s = total_stride(graph)
    h, w = data.image_size
    if min(h, w) < s:
        raise TrainError(f"{h}x{w} images are too small for this architecture: it downsamples by {s}, "
                         f"so its deepest stage would see less than one pixel; set image_size={s} or larger")


def read_arch(arch: str) -> tuple[str, object]:
    """Parse and check ``arch`` without any data: ``("zoo", name)``, ``("spec", dict)`` or ``("ir", IR)``.

    Cheap, so a typo is reported before a dataset is downloaded.
    """
    from dlasearch import patterns, zoo

    if arch in zoo.MODELS:
        return "zoo", arch
    if arch in zoo.UP_MODELS:
        raise TrainError(f"arch={arch!r} is a segmentation model; train classifiers: {', '.join(zoo.MODELS)}")
    path = Path(str(arch)).expanduser()
    if not path.is_file():
        hint = did_you_mean(arch, zoo.names())
        raise TrainError(f"arch={arch!r}: not a zoo model and not a file{hint}; use one of "
                         f"{', '.join(zoo.MODELS)} or a path to a spec/IR .json (or spec .yaml)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise TrainError(f"arch={arch!r}: cannot read it as a text spec/IR file ({e})") from None
    if path.suffix in (".yaml", ".yml"):
        from omegaconf import OmegaConf
        try:
            obj = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
        except Exception as e:
            raise TrainError(f"{path}: not valid YAML ({e})") from None
    else:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise TrainError(f"{path}: not valid JSON ({e})") from None
    if isinstance(obj, dict) and obj.get("format") == irmod.FORMAT:
        graph = irmod.from_json(text)
        graph.graph.setdefault("name", path.stem)
        return "ir", graph
    if not isinstance(obj, dict) or not ({"pattern", "stages"} & set(obj)):
        raise TrainError(f"{path}: neither a spec (a mapping with a 'pattern' or 'stages' key) nor an IR "
                         f"(format={irmod.FORMAT!r})")
    patterns.normalize({**obj, "in_channels": 1, "num_classes": 1})  # every other field checked now
    return "spec", {**obj, "name": path.stem}


def resolve_arch(arch: str, channels: int, num_classes: int) -> irmod.IR:
    """A zoo name, a builder spec (.json/.yaml) or an IR (.json) -> an IR for this data.

    Zoo models and specs are built with the data's channels and classes; an IR
    is taken as it is, and ``check_fit`` reports a mismatch.
    """
    from dlasearch import patterns, zoo

    kind, obj = read_arch(arch)
    if kind == "ir":
        return obj
    if kind == "zoo":
        c = zoo.MODELS[obj]
        spec = zoo.spec(c.levels, c.channels, c.block, c.cardinality, c.residual_root, num_classes)
        name = obj
    else:
        spec, name = {k: v for k, v in obj.items() if k != "name"}, obj["name"]
    return patterns.build({**spec, "in_channels": channels, "num_classes": num_classes}, name=name)


# ------------------------------------------------------------ training

def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _schedule(total: int, warmup: int) -> Callable[[int], float]:
    """LR factor per step: linear warm-up to 1, then cosine to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return factor


@contextlib.contextmanager
def _threads(n: int | None):
    """Run with ``n`` torch threads (None: unchanged), restoring the previous count after."""
    before = torch.get_num_threads()
    try:
        if n:
            torch.set_num_threads(n)
        yield
    finally:
        torch.set_num_threads(before)


def evaluate(model: torch.nn.Module, data: Dataset, split: str = "val", batch_size: int = 512,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in 0..1) of ``model`` on a split, in eval mode."""
    device = next(model.parameters()).device
    prec = engine.Precision(amp_dtype, channels_last, "as given")
    return engine.evaluate(model, engine.Feeder(data.to(device), device), split, batch_size, prec)


def train(model: torch.nn.Module, data: Dataset, config: TrainConfig | None = None, *,
          callback: Callable[[int, dict], object] | None = None, test: bool = False,
          **overrides) -> TrainResult:
    """Train ``model`` in place on ``data`` and return a ``TrainResult``.

    After every epoch ``callback(epoch, metrics)`` runs (``metrics`` is the
    history entry); returning a true value or raising ``StopTraining`` ends the
    run with status ``stopped`` (other exceptions propagate).  ``test=True``
    also evaluates the test split at the end (only then is it touched).
    Keyword ``overrides`` replace fields of ``config``.
    """
    unknown = set(overrides) - set(TrainConfig.option_names())
    if unknown:
        raise TrainError(f"unknown training option(s) {sorted(unknown)}; allowed: "
                         f"{', '.join(TrainConfig.option_names())}")
    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    device = resolve_device(cfg.device)
    if getattr(model, "ir", None) is not None:
        check_fit(model.ir, data)
    prec = engine.choose_precision(cfg.precision, cfg.channels_last, device)
    cudnn = (torch.backends.cudnn.flags(enabled=True, benchmark=not cfg.deterministic,
                                        deterministic=cfg.deterministic)
             if device.type == "cuda" else contextlib.nullcontext())
    from dlasearch.checkpoint import frozen

    with _threads(cfg.threads), cudnn, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            frozen(model, cfg.freeze):
        torch.manual_seed(cfg.seed)
        return engine.fit(model.to(device, memory_format=prec.memory_format), data.to(device), cfg, device, prec,
                          callback, test)


# ------------------------------------------------------------ one measured run (the CLI command)

def measure_arch(model: torch.nn.Module, data: Dataset, config: TrainConfig, latency: bool = True) -> dict:
    """The metrics known before training, on the device and precision ``config`` trains with:
    params, MACs per image, training memory at the batch size, and speed."""
    from dlasearch import measure

    device = resolve_device(config.device)
    prec = engine.choose_precision(config.precision, config.channels_last, device)
    amp = prec.amp
    model = model.to(device)
    shape = (config.batch_size, data.channels, *data.image_size)
    mem = measure.train_memory(model, shape, autocast_dtype=amp)
    out = {"params": measure.params(model), "macs": measure.macs(model, (1, *shape[1:])),
           "train_memory_bytes": mem["total"]}
    if "cuda_peak" in mem:
        out["train_memory_cuda_peak_bytes"] = mem["cuda_peak"]
    if latency:
        with _threads(config.threads):
            lat = measure.latency(model, shape, repeats=5, warmup=1, channels_last=prec.channels_last,
                                  autocast_dtype=amp)
        out.update({"latency_ms_batch1": lat["infer_ms_1"], f"latency_ms_batch{config.batch_size}": lat["infer_ms_B"],
                    "train_images_per_s": lat["train_images_per_s"]})
    return out


def save_run(folder: Path, graph: irmod.IR, record: dict, trained=None) -> Path:
    """Write the weights (``trained`` = (model, dataset, config)), ``ir.json``, then ``metrics.json``
    (last: a folder without it is an unfinished run)."""
    from dlasearch import checkpoint

    folder = Path(folder)
    if trained is not None:
        model, ds, config = trained
        checkpoint.save(folder / checkpoint.WEIGHTS, model, graph, ds, config=dataclasses.asdict(config),
                        name=record.get("name"))
    files.write_atomic(folder / "ir.json", irmod.to_json(graph, indent=1) + "\n")
    files.write_atomic(folder / "metrics.json", json.dumps(record, indent=1, default=str) + "\n")
    return folder


def save_or_fallback(folder: Path, graph: irmod.IR, record: dict, trained=None) -> Path:
    """``save_run``; if ``folder`` cannot be written after training, save the run in a fallback folder
    (under ``results/train``, else the temp dir) and name it in the error, so the training is never lost."""
    try:
        return save_run(folder, graph, record, trained)
    except OSError as e:
        reason = files.explain(e)
    for base in (files.results_root() / "train", Path(tempfile.gettempdir())):
        try:
            base.mkdir(parents=True, exist_ok=True)
            fallback = Path(tempfile.mkdtemp(prefix=f"unsaved-{Path(folder).name}-", dir=base))
            save_run(fallback, graph, record, trained)
        except OSError:
            continue
        raise TrainError(f"cannot write {folder}: {reason}; the finished run was saved to {fallback} instead")
    raise TrainError(f"cannot write {folder}: {reason}, nor any fallback folder; the run is lost")


def run_folder(out: str | None, name: str | None, default_name: str, base: Path | None = None) -> Path:
    """``out`` as given, else ``base/<name>`` (default ``<time>-<arch>-<data>``, unique)."""
    if out is not None:
        return Path(str(out)).expanduser()
    base = files.results_root() / "train" if base is None else base
    stem = str(name) if name is not None else f"{time.strftime('%Y%m%d-%H%M%S')}-{default_name}"
    files.check_name(stem, "name", TrainError)
    folder, i = base / stem, 2
    while name is None and folder.exists():
        folder, i = base / f"{stem}-{i}", i + 1
    return folder


DATA_OPTIONS = ("name", "root", "path", "val_fraction", "limit", "flip", "download", "seed")


def data_options(value) -> dict:
    """``data=<name>``, ``data=<file.npz>`` or ``data.name=... data.root=...`` -> ``data.load`` keywords."""
    if value is None:
        value = {"name": "digits"}
    if isinstance(value, str):
        value = {"name": "npz", "path": value} if value.endswith(".npz") else {"name": value}
    if not isinstance(value, dict):
        raise TrainError(f"data={value!r}: expected a dataset name, a .npz path, or data.name=... options")
    value = {"name": "digits", **value}
    unknown = set(value) - set(DATA_OPTIONS)
    if unknown:
        raise TrainError(f"unknown data option(s) {sorted(unknown)}; allowed: "
                         f"{', '.join('data.' + k for k in DATA_OPTIONS)}")
    return dict(value)


def resolved_config(arch, data, config: TrainConfig, *, image_size="auto", resize: str = "interpolate",
                    test: bool = False, latency: bool = True, out=None, name=None, log=None) -> dict:
    """Everything a ``dlasearch train`` run uses, as ``config.yaml`` holds it (``--cfg`` prints it)."""
    opts = data_options(data)
    return {"command": "train", "arch": arch, "data": {**opts, "image_size": image_size}, "resize": resize,
            "test": test, "latency": latency, "out": out, "name": name, "log": log,
            "train": dataclasses.asdict(config)}


def run(arch: str, data: dict | str | None, config: TrainConfig, *, image_size="auto",
        resize: str = "interpolate", test: bool = False, latency: bool = True,
        out: str | None = None, name: str | None = None, weights: str | None = None,
        log=None) -> tuple[dict, Path]:
    """Resolve, check, measure and train one architecture; write its run folder; return (record, folder).

    Every input is checked before anything runs or is written.  ``image_size``
    ``auto`` keeps the native size unless the network downsamples more than
    that, then uses its total stride (e.g. digits 8x8 -> 32 for a DLA).  ``weights``: a
    checkpoint to start from (fine-tuning; a different class count re-initialises the classifier).
    """
    from dlasearch import data as datamod
    from dlasearch import checkpoint, stats
    from dlasearch.ir import to_module

    read_arch(arch)
    if weights is not None:
        checkpoint.read_state_dict(weights)  # a missing or corrupt file fails before the data loads
    files.check_writable(run_folder(out, name, "probe"), "out" if out is not None else "name", TrainError)
    opts = data_options(data)
    split_seed = opts.pop("seed", 0)
    ds = datamod.load(opts.pop("name"), seed=split_seed, **opts)
    graph = resolve_arch(arch, ds.channels, ds.num_classes)
    if image_size == "auto":
        stride = total_stride(graph)
        image_size = stride if min(ds.image_size) < stride else None
        if image_size is not None and image_size > MAX_AUTO_GROWTH * min(ds.image_size):
            raise TrainError(f"image_size=auto would grow {ds.name}'s {min(ds.image_size)} px images to {image_size} px "
                             f"(the architecture downsamples {stride}x); set image_size=N explicitly, or use an "
                             f"architecture with fewer stages")
    ds = ds.resized(image_size, resize)
    check_fit(graph, ds)
    arch_name = str(graph.graph.get("name") or Path(str(arch)).stem)
    folder = run_folder(out, name, f"{arch_name}-{ds.name}")
    torch.manual_seed(config.seed)  # the same seed gives the same initial weights
    model = to_module(graph)
    if weights is not None:
        note = checkpoint.load_weights(model, weights, graph)
        if note:
            print(note)
    record = {"arch": str(arch), "name": arch_name, "fingerprint": irmod.fingerprint(graph),
              "data": {**ds.summary(), "split_seed": split_seed, "resize": resize},
              "config": dataclasses.asdict(config), "device": str(resolve_device(config.device)),
              "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "normalisation": {"mean": list(ds.mean), "std": list(ds.std)},
              "weights_from": None if weights is None else str(weights), "weights": checkpoint.WEIGHTS}
    from dlasearch import options, tracking

    options.write_config(folder, resolved_config(arch, data, config, image_size=image_size, resize=resize,
                                                 test=test, latency=latency, out=str(folder), name=name, log=log)
                         | {"data": {**opts, "name": ds.name, "image_size": list(ds.image_size)}})
    metrics = measure_arch(model, ds, config, latency)
    with tracking.open_tracker(log, folder, arch_name) as tracker:
        result = train(model, ds, config, test=test, callback=tracker.epoch)
    metrics.update({"val_accuracy": result.val_accuracy, "test_accuracy": result.test_accuracy,
                    "train_seconds": result.train_seconds})
    record.update({"status": result.status, "reason": result.reason, "engine": result.engine, "metrics": metrics,
                   "epochs": result.epochs, "steps": result.steps, "history": result.history,
                   "chance": stats.chance_record(ds, result.val_accuracy, result.test_accuracy if test else None)})
    folder = save_or_fallback(folder, graph, record, (model, ds, config))
    return record, folder
