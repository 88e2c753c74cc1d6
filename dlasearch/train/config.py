"""What a training run is told (``TrainConfig``, every option with its meaning) and what it returns."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from dlasearch.errors import TrainError
from dlasearch.ir.lower import INITS
from dlasearch.train.compiling import COMPILE_MODES
from dlasearch.train.precision import choose_precision
from dlasearch.train.sgd import SCHEDULES

__all__ = ['CLASS_WEIGHTS', 'ADDED_LATER', 'with_added_later', 'StopTraining', 'TrainConfig', 'TrainResult',
           'resolve_device', 'autocast_dtype']

PRECISIONS = ("auto", "fp32", "bf16")
CLASS_WEIGHTS = ("none", "auto")

# Options added after results existed, with the value those results were made with: a stored
# study or comparison that lacks one is read with this value, so resuming it keeps its behaviour.
# Comparisons stored every training option from the start, so one without bn_batches or freeze
# predates them (no recalibration, nothing frozen); a search space never held bn_batches, and its
# studies ran with the default of the day, 16 (before 2026-11-26 08:14 UTC: none).  A study stores
# the options its space leaves unset since 2026-11-27 (search.study.PINNED); before, it ran with
# the defaults below, unchanged since each option was added.  ``schedule`` (2026-12-04): every comparison
# before it was classification, where ``auto`` is the cosine decay it ran with; ``class_weights``' null
# default needs no entry (a missing key reads as null).  Studies pin both since 2026-12-04 (space=seg);
# every study before was classification, trained as these say.
ADDED_LATER = {"init": "original"}
ADDED_LATER_BY = {"compare": {"bn_batches": 0, "freeze": "none", "schedule": "auto"},
                  "search": {"bn_batches": 16, "nesterov": True, "augment": True, "precision": "auto",
                             "compile": "auto", "cuda_graph": None, "small_maps": False, "schedule": "auto",
                             "class_weights": None}}


def with_added_later(train: dict, made_by: str) -> dict:
    """The stored ``train`` settings of a study (``made_by="search"``) or comparison (``"compare"``),
    with the options added since filled in as those results were trained."""
    return {**ADDED_LATER, **ADDED_LATER_BY[made_by], **train}


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
    warmup_epochs: float = _opt(1.0, "linear warm-up, then the schedule's decay to 0")
    schedule: str = _opt("auto", "lr decay after the warm-up: cosine, poly (lr * (1 - t)^0.9, the original DLA "
                         "segment.py) or auto (poly on dense data, cosine on classification)")
    label_smoothing: float = _opt(0.0, "cross-entropy label smoothing")
    class_weights: str | None = _opt(None, "dense data: per-class loss weights, none or auto (segment: median-"
                                     "frequency weights of the training masks; boundary: edge weight (1-f)/f, f the "
                                     "edge share). null: auto for boundary (edges are a small share of pixels, 15% "
                                     "on mnist_seg, a few % on photos; balancing them raised ODS, the boundary score, "
                                     "on mnist_seg, and the original DLA set this weight by hand); auto for segment "
                                     "too: unweighted, a net on 90%-background scenes learned only background "
                                     "(fg mIoU 0.000 against 0.11 with auto, 2 seeds, docs/train.md)")
    augment: bool = _opt(True, "random crop with padding, plus flips where they keep the class")
    seed: int = _opt(0, "initial weights, shuffling and augmentation")
    init: str = _opt("zero-last", "initial weights where a run builds the network (train arch=, run, compare, "
                     "bench): zero-last (He init, then the last norm of each residual branch and the "
                     "classifier at zero) or original (the original DLA's He init everywhere)")
    device: str = _opt("auto", "auto (CUDA when present), cpu, cuda[:N]")
    precision: str = _opt("auto", "auto (bf16 autocast on CUDA and on CPUs with native bf16, else fp32), fp32, bf16")
    channels_last: bool | None = _opt(None, "NHWC memory format (null: on with bf16 and on CPU)")
    compile: str = _opt("auto", "auto, none, default or reduce-overhead (auto: torch.compile only where it pays, docs/engine.md)")
    cuda_graph: bool | None = _opt(None, "capture the training step in a CUDA graph (null: on CUDA unless compiled)")
    small_maps: bool = _opt(True, "on CPU: convolutions on maps of <= 4 positions run as dense GEMMs, the same "
                            "arithmetic 1.9-7.4x faster there (docs/engine.md)")
    threads: int | None = _opt(None, "torch intra-op threads (null: torch's setting)")
    eval_batch_size: int = _opt(512, "batch size of evaluation")
    deterministic: bool = _opt(True, "on CUDA: deterministic cuDNN kernels, no autotuning")
    progress: bool | None = _opt(None, "bar (true), none (false), or null: a bar on a terminal, else one line per epoch")
    freeze: str = _opt("none", "backbone: fine-tune only the classifier (with weights=); none: train everything")
    bn_batches: int = _opt(8, "recompute BatchNorm statistics from this many training batches before each evaluation "
                           "(0: off; docs/engine.md: 8 match 16 within 0.1 point at half the cost)")
    eval_every: int = _opt(1, "validate every N epochs and after the last; the callback runs after each validation. "
                           "The trained weights and the final accuracies do not depend on it")

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
        if self.batch_size == 1:  # BatchNorm in training needs two values per channel (1x1 maps at the end)
            raise TrainError("batch_size=1: training needs batch_size >= 2 (BatchNorm normalises each channel over "
                             "the batch, and one image at a 1x1 map gives it one value); use batch_size=2 or more")
        integer("eval_batch_size", 1)
        integer("seed", 0)
        integer("threads", 1, none_ok=True)
        integer("bn_batches", 0)
        integer("eval_every", 1)
        number("lr", 0)
        number("momentum", 0, 1, hi_open=True)
        number("weight_decay", 0)
        number("warmup_epochs", 0)
        number("label_smoothing", 0, 1, hi_open=True)
        for name in ("nesterov", "augment", "deterministic", "small_maps"):
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
        if self.init not in INITS:
            raise TrainError(f"init={self.init!r}; allowed: {', '.join(INITS)}")
        if self.schedule not in SCHEDULES:
            raise TrainError(f"schedule={self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if self.class_weights is not None and self.class_weights not in CLASS_WEIGHTS:
            raise TrainError(f"class_weights={self.class_weights!r}; allowed: none, auto, or null (auto on dense "
                             f"data, none on classification)")
        if self.precision not in PRECISIONS:
            raise TrainError(f"precision={self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        resolve_device(self.device)

    @classmethod
    def option_names(cls) -> list[str]:
        """The field names, i.e. the ``key=value`` options ``dlasearch train`` accepts for training."""
        return [f.name for f in dataclasses.fields(cls)]


@dataclass
class TrainResult:
    """What a run produced; ``status`` is ``ok``, ``nan`` (loss diverged) or ``stopped`` (by the callback).

    ``val_score``/``test_score`` is the task's primary metric, what a search or comparison ranks by:
    accuracy (classify), foreground mIoU (segment), ODS F (boundary).  ``val_accuracy`` is pixel
    accuracy on dense data; ``val_metrics``/``test_metrics`` hold the task's other metrics under
    their prefixed names (``val_miou``, ``val_miou_fg``, ``val_per_class_iou``; ``val_boundary_f``, ...)."""

    status: str
    history: list = field(default_factory=list)
    val_accuracy: float | None = None
    val_loss: float | None = None
    test_accuracy: float | None = None
    task: str = "classify"
    val_score: float | None = None
    test_score: float | None = None
    val_metrics: dict = field(default_factory=dict)
    test_metrics: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    epochs: int = 0
    steps: int = 0
    reason: str = ""
    engine: dict = field(default_factory=dict)  # precision, memory format, compile, CUDA graph: what ran and why

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def scores(self) -> dict:
        """Every validation and test metric under its ``metrics.json`` name (test: null unless ``test=True``)."""
        return {"val_accuracy": self.val_accuracy, "val_score": self.val_score, **self.val_metrics,
                "test_accuracy": self.test_accuracy, "test_score": self.test_score, **self.test_metrics}


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
    return choose_precision(config.precision, config.channels_last, device).amp
