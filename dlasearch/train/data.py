"""Datasets as three splits of uint8 tensors, their transforms, and ``load`` by name.

A dataset has a ``task``: ``classify`` (one int64 label per image), ``segment`` (an
int64 (H, W) mask per image, 255 = ignore) or ``boundary`` (a 0/1 edge mask of the
segmentation, see ``scenes.boundary``).  Dense data: the generated ``mnist_seg`` /
``fashion_seg`` scenes, an ``.npz`` whose y arrays are (N, H, W) masks, or a ``folder``
of ``images/`` + ``masks/``; ``task=boundary`` asks any of them for edges.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dlasearch import measure
from dlasearch.errors import DataError, did_you_mean
from dlasearch.train import scenes
from dlasearch.train.masks import IGNORE, augment_pair, check_masks, folder_masks, npz_masks, resize_masks
from dlasearch.train.sources import (_CIFAR10, _FLIP, _IDX, _load_cifar10, _load_digits, _load_idx, _load_npz,
                                     _npz_arrays, _npz_is_dense, default_root)

__all__ = ['Dataset', 'random_crop', 'crop_at', 'random_flip', 'resize', 'load', 'augment_pair', 'IGNORE']

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "npz", "mnist_seg", "fashion_seg", "folder")
TASKS = ("classify", "segment", "boundary")
DENSE_SCALE = (0.75, 1.25)  # random-scale range of dense augmentation


RESIZE_MODES = ("interpolate", "pad")


@dataclass
class Dataset:
    """Three splits of uint8 ``(N, C, H, W)`` images with int64 labels, plus how to feed them.

    ``mean``/``std`` are per channel (in 0..1 units) from the training split;
    ``flip`` says whether horizontal flips keep the class; ``crop_padding`` is the
    padding of the random-crop augmentation.  Dense tasks (``segment``, ``boundary``)
    hold int64 (N, H, W) masks with 255 = ignore and also randomly ``scale``;
    ``labels`` keeps a boundary task's label maps (uint8, per split) so edges are
    recomputed after resizing or augmenting instead of resampled; ``info`` says how
    generated data was made.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple
    flip: bool
    crop_padding: int
    source: str = ""
    task: str = "classify"
    scale: tuple = (1.0, 1.0)
    labels: dict | None = field(default=None, repr=False)
    info: dict = field(default_factory=dict)

    @property
    def dense(self) -> bool:
        """Per-pixel targets (segment or boundary) rather than one label per image."""
        return self.task != "classify"

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "val", "test"):
            raise DataError(f"split {name!r}; allowed: train, val, test")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def to(self, device) -> "Dataset":
        """The same data on ``device`` (the whole uint8 set fits easily on a GPU)."""
        moved = {f: getattr(self, f).to(device) for f in
                 ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        if self.labels is not None:
            moved["labels"] = {k: v.to(device) for k, v in self.labels.items()}
        return dataclasses.replace(self, **moved)

    def pairs(self, split: str, index=None, augment: bool = False,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and int64 targets of ``split`` (rows ``index``, default all), jointly augmented if asked.

        Dense data go through ``augment_pair`` (crop with padding, flip, random scale; masks
        nearest, 255 outside); a boundary task augments its label maps and recomputes the
        edges.  Classification crops/flips images as ``transform`` does.  Without
        ``augment`` this is the deterministic evaluation path: the stored pairs as they are.
        """
        x, y = self.split(split)
        lab = self.labels[split] if self.labels is not None and self.task == "boundary" else y
        if index is not None:
            x, y, lab = x[index], y[index], lab[index]
        if not augment:
            return x, y
        if not self.dense:
            x = random_crop(x, self.crop_padding, generator)
            return (random_flip(x, generator) if self.flip else x), y
        x, lab = augment_pair(x, lab, generator, self.crop_padding, self.flip, self.scale)
        return x, (scenes.boundary(lab) if self.task == "boundary" else lab.long())

    def transform(self, x: torch.Tensor, augment: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 batch -> normalised float32 batch, with random crop (+ flip) when ``augment``."""
        if augment:
            x = random_crop(x, self.crop_padding, generator)
            if self.flip:
                x = random_flip(x, generator)
        c = x.shape[1]
        mean = torch.tensor(self.mean, device=x.device).view(1, c, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, c, 1, 1)
        return (x.float().div_(255.0) - mean).div_(std)

    def batches(self, split: str, batch_size: int, shuffle: bool = False, augment: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` batches of ``split``; shuffling/augmentation draw from ``generator``."""
        x, y = self.split(split)
        n = len(y)
        order = torch.randperm(n, generator=generator).to(x.device) if shuffle else None
        for i in range(0, n, batch_size):
            if self.dense:
                idx = slice(i, i + batch_size) if order is None else order[i:i + batch_size]
                xb, yb = self.pairs(split, idx, augment, generator)
                yield self.transform(xb), yb
                continue
            if order is None:
                xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            else:
                idx = order[i:i + batch_size]
                xb, yb = x[idx], y[idx]
            yield self.transform(xb, augment, generator), yb

    def summary(self) -> dict:
        out = {"name": self.name, "channels": self.channels, "image_size": list(self.image_size),
               "num_classes": self.num_classes, "train": len(self.y_train), "val": len(self.y_val),
               "test": len(self.y_test), "flip": self.flip, "source": self.source}
        if not self.dense:
            return out
        counts = torch.bincount(self.y_train.reshape(-1).cpu(), minlength=IGNORE + 1).double()
        scored = counts[:self.num_classes].sum().clamp(min=1)
        freq = [round(float(c / scored), 6) for c in counts[:self.num_classes]]
        out.update(task=self.task, scale=list(self.scale), ignore_index=IGNORE, pixel_frequencies=freq,
                   ignored_fraction=round(float(counts[IGNORE] / counts.sum().clamp(min=1)), 6))
        if self.task == "segment":
            out["background_fraction"] = freq[0]  # class 0: background by convention (VOC, the scenes)
        return {**out, **self.info}

    def resized(self, size: int | None, mode: str = "interpolate") -> "Dataset":
        """Every split at ``size`` x ``size`` (once, in memory), with statistics and crop padding to match."""
        _check_size(size, mode)
        xs = {k: getattr(self, k) if size is None else resize(getattr(self, k), size, mode)
              for k in ("x_train", "x_val", "x_test")}
        if self.dense and size is not None:  # masks: nearest only (pad: 255)
            if self.labels is not None:
                labels = {k: resize_masks(v, size, mode) for k, v in self.labels.items()}
                xs.update(labels=labels, **{f"y_{k}": scenes.boundary(v) for k, v in labels.items()})
            else:
                xs.update({k: resize_masks(getattr(self, k), size, mode) for k in ("y_train", "y_val", "y_test")})
        mean, std = _channel_stats(xs["x_train"])
        return dataclasses.replace(self, **xs, mean=mean, std=std,
                                   crop_padding=max(1, round(xs["x_train"].shape[2] / 8)))


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` and cut a random window of the original size per image (one gather)."""
    if padding <= 0:
        return x
    n = len(x)
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    return crop_at(x, padding, oy, ox)


def crop_at(x: torch.Tensor, padding: int, oy: torch.Tensor, ox: torch.Tensor) -> torch.Tensor:
    """The crop of ``random_crop`` at given window offsets (on ``x``'s device: no host round trip)."""
    n, _, h, w = x.shape
    xp = F.pad(x, (padding,) * 4)
    rows = oy[:, None] + torch.arange(h, device=x.device)
    cols = ox[:, None] + torch.arange(w, device=x.device)
    out = xp[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)  # advanced indexing put channels last


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    mask = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


def _check_size(size, mode: str) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DataError(f"image_size={size!r}; expected a positive int (e.g. 32) or null for the native size")
    if mode not in RESIZE_MODES:
        raise DataError(f"resize={mode!r}; allowed: {', '.join(RESIZE_MODES)}")


def resize(x: torch.Tensor, size: int, mode: str = "interpolate", chunk: int = 4096) -> torch.Tensor:
    """uint8 images to ``size`` x ``size``: bilinear ``interpolate`` or centred zero ``pad``."""
    h, w = x.shape[2:]
    if (h, w) == (size, size):
        return x
    n, c = len(x), x.shape[1]  # the uint8 result, and one chunk's float copy when interpolating
    need = n * c * size * size + (0 if mode == "pad" else min(n, chunk) * c * size * size * 4)
    problem = measure.too_big(need)
    if problem:
        raise DataError(f"image_size={size}: {n} images of {c}x{size}x{size} {problem}; choose a smaller "
                        f"data.image_size")
    if mode == "pad":
        if size < h or size < w:
            raise DataError(f"resize=pad cannot shrink {h}x{w} images to image_size={size}; "
                            f"use resize=interpolate or image_size >= {max(h, w)}")
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(x, (left, size - w - left, top, size - h - top))
    shrink = size < h or size < w
    parts = [F.interpolate(x[i:i + chunk].float(), size=(size, size), mode="bilinear", align_corners=False,
                           antialias=shrink).round_().clamp_(0, 255).to(torch.uint8)
             for i in range(0, len(x), chunk)]
    return torch.cat(parts) if parts else x.new_zeros((0, x.shape[1], size, size))


def _channel_stats(x: torch.Tensor) -> tuple[tuple, tuple]:
    """Exact per-channel mean/std in 0..1 units from a 256-bin histogram (no float copy of the set)."""
    v = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1).to(torch.int64), minlength=256).double()
        p = hist / hist.sum()
        m = float((p * v).sum())
        means.append(m)
        stds.append(max(float((p * v * v).sum()) - m * m, 0.0) ** 0.5 or 1.0)
    return tuple(means), tuple(stds)


def _split(y: np.ndarray, size, seed: int, stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, taken): a stratified seeded split, unstratified when a class is too rare (or for masks)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        if not stratify:
            raise ValueError("masks have no class per image")
        keep, take = train_test_split(idx, test_size=size, stratify=y, random_state=seed)
    except ValueError:
        try:
            keep, take = train_test_split(idx, test_size=size, random_state=seed)
        except ValueError as e:
            raise DataError(f"cannot split {len(y)} images: {e}; use more images or another "
                            f"val_fraction/limit") from None
    return np.sort(keep), np.sort(take)


def load(name: str, *, root=None, path=None, val_fraction: float = 0.1, seed: int = 0,
         image_size: int | None = None, resize_mode: str = "interpolate", limit: int | None = None,
         flip: bool | None = None, download: bool = True, progress: bool | None = None,
         task: str | None = None, classes: int | None = None) -> Dataset:
    """Load dataset ``name`` (one of ``DATASETS``) into memory with a seeded train/val split.

    ``val_fraction`` of the training images (after ``limit``, a seeded stratified
    subset for quick runs) become the validation split; datasets without an
    official test split (digits, an npz with only ``x``/``y``) hold out a fixed,
    seed-independent 20% as test.  ``image_size`` resizes every split once, at
    load time; ``path`` is the ``.npz`` file for ``name='npz'`` (or the folder
    for ``name='folder'``).  Dense data: ``task`` is ``segment`` (their default) or
    ``boundary``; ``classes`` fixes the class count of your masks (default: the
    largest label + 1).  For ``mnist_seg``/``fashion_seg``, ``limit`` is the number
    of training scenes (default 6000; test: 1000) and ``image_size`` the canvas (64).
    """
    if name not in DATASETS:
        hint = did_you_mean(name, DATASETS)
        raise DataError(f"unknown dataset {name!r}{hint}; allowed: {', '.join(DATASETS)}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction!r}; expected a number strictly between 0 and 1")
    _check_size(image_size, resize_mode)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 2):
        raise DataError(f"limit={limit!r}; expected an int >= 2 (training images to use) or null for all")
    if task is not None and task not in TASKS:
        raise DataError(f"task={task!r}{did_you_mean(task, TASKS)}; allowed: {', '.join(TASKS)}")
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes <= 255):
        raise DataError(f"classes={classes!r}; expected an int 2..255 (mask values 0..classes-1, 255 = ignore) "
                        f"or null for the largest label + 1")
    root = Path(root).expanduser() if root is not None else default_root()
    if name in scenes.SOURCES:
        return _load_scenes(name, root, val_fraction, seed, image_size, limit, flip, download, progress, task)
    arrays = None
    if name == "npz":
        path, arrays = _npz_arrays(path)
    if name == "folder" or (arrays is not None and _npz_is_dense(arrays)):
        train, test = folder_masks(path, image_size, classes) if arrays is None else npz_masks(arrays, path, classes)
        return _load_dense(name, train, test, str(Path(path).expanduser()),
                           val_fraction=val_fraction, seed=seed, limit=limit, flip=flip, task=task,
                           classes=classes).resized(image_size, resize_mode)
    if task not in (None, "classify") or classes is not None:
        what = f"task={task}" if task not in (None, "classify") else f"classes={classes}"
        raise DataError(f"{what} needs per-pixel masks; dataset {name!r} has one label per image "
                        f"(dense data: mnist_seg, fashion_seg, folder, or an .npz with (N, H, W) y arrays)")
    if name == "digits":
        train, test = _load_digits()
        source = "sklearn.datasets.load_digits"
    elif name == "cifar10":
        train, test = _load_cifar10(root, download, progress)
        source = str(root / _CIFAR10.folder)
    elif name == "npz":
        train, test = _load_npz(path, arrays)
        source = str(path)
    else:
        train, test = _load_idx(name, root, download, progress)
        source = str(root / _IDX[name].folder)
    x, y = train
    if test is None:
        keep, held = _split(y, 0.2, 0)
        test, (x, y) = (x[held], y[held]), (x[keep], y[keep])
    if limit is not None and limit < len(y):
        _, take = _split(y, limit, seed)
        x, y = x[take], y[take]
    if len(y) < 2:
        raise DataError(f"dataset {name!r} has {len(y)} training images; need at least 2 for a train/val split")
    tr, va = _split(y, val_fraction, seed)
    if len(tr) == 0:
        raise DataError(f"val_fraction={val_fraction} leaves no training images out of {len(y)}")
    num_classes = int(max(y.max(), test[1].max() if len(test[1]) else 0)) + 1
    if len(np.unique(y)) < 2:
        raise DataError(f"dataset {name!r} has a single class ({int(y[0])}) in its training images; "
                        f"a classifier needs at least 2")
    t = {k: torch.from_numpy(np.require(a, requirements=["C", "W"])) for k, a in
         {"x_train": x[tr], "y_train": y[tr], "x_val": x[va], "y_val": y[va],
          "x_test": test[0], "y_test": test[1]}.items()}
    ds = Dataset(name=name, **t, num_classes=num_classes, mean=(), std=(),
                 flip=_FLIP[name] if flip is None else bool(flip), crop_padding=0, source=source)
    return ds.resized(image_size, resize_mode)


def _seeded_splits(n: int, test, val_fraction: float, seed: int, limit: int | None):
    """Index sets (held-out test or None, train, val) of ``n`` dense samples: the classification rules, unstratified."""
    idx, held = np.arange(n), None
    if test is None:
        keep, held = _split(idx, 0.2, 0, stratify=False)
        idx = keep
    if limit is not None and limit < len(idx):
        _, take = _split(idx, limit, seed, stratify=False)
        idx = idx[take]
    if len(idx) < 2:
        raise DataError(f"{len(idx)} training images; need at least 2 for a train/val split")
    tr, va = _split(idx, val_fraction, seed, stratify=False)
    if len(tr) == 0:
        raise DataError(f"val_fraction={val_fraction} leaves no training images out of {len(idx)}")
    return held, idx[tr], idx[va]


def _load_dense(name: str, train, test, source: str, *, val_fraction, seed, limit, flip, task, classes,
                num_classes: int | None = None, info: dict | None = None, scale=DENSE_SCALE) -> Dataset:
    """A dense ``Dataset`` (native size) from uint8 ``(x (N, C, H, W), y (N, H, W))`` train and test pairs.

    Flips default on (segmentation masks flip with their images) except for digit scenes.
    """
    x, y = train
    held, tr, va = _seeded_splits(len(y), test, val_fraction, seed, limit)
    if held is not None:
        test = (x[held], y[held])
    if num_classes is None:
        num_classes = max(check_masks(y, f"{source} (train masks)", classes),
                          check_masks(test[1], f"{source} (test masks)", classes) if len(test[1]) else 1)
    if num_classes < 2 and (task or "segment") == "segment":
        raise DataError(f"{source}: every training mask is class 0 (or 255); segmentation needs at least 2 "
                        f"classes (set classes=K if other classes exist)")
    splits = {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": test}
    t = {f"x_{k}": torch.from_numpy(np.require(v[0], requirements=["C", "W"])) for k, v in splits.items()}
    maps = {k: torch.from_numpy(np.require(v[1], np.uint8, ["C", "W"])) for k, v in splits.items()}
    labels = None
    if task == "boundary":
        labels, num_classes = maps, 2
        t.update({f"y_{k}": scenes.boundary(v) for k, v in maps.items()})
    else:
        t.update({f"y_{k}": v.long() for k, v in maps.items()})
    ds = Dataset(name=name, **t, num_classes=num_classes, mean=(), std=(),
                 flip=(name == "npz" or _FLIP[name]) if flip is None else bool(flip), crop_padding=0, source=source,
                 task=task or "segment", scale=tuple(scale), labels=labels, info=info or {})
    return ds.resized(None)


def _load_scenes(name, root, val_fraction, seed, image_size, limit, flip, download, progress, task) -> Dataset:
    """Generated scenes (cached): ``limit`` training scenes (train + val), the fixed test scenes."""
    spec = scenes.SceneSpec(canvas=image_size or 64).check()
    n = limit if limit is not None else scenes.DEFAULT_SCENES["train"]
    train = scenes.load_scenes(name, root, "train", n, spec, download=download, progress=progress)
    test = scenes.load_scenes(name, root, "test", scenes.DEFAULT_SCENES["test"], spec, download=download,
                              progress=progress)
    areas = train.object_areas()
    p5, p95 = (float(v) for v in np.percentile(areas, [5, 95]))
    info = {"scenes": {"canvas": spec.canvas, "objects": [spec.min_objects, spec.max_objects],
                       "scale": list(spec.scale), "scale_law": "log-arcsine", "seed": scenes.SCENE_SEED,
                       "object_area_p5": p5, "object_area_p95": p95, "object_area_spread": round(p95 / max(p5, 1), 3),
                       "object_area_unit": f"stroke pixels at {spec.canvas}x{spec.canvas}, as drawn"}}
    pair = (lambda sc: (sc.images[:, None], sc.labels))
    return _load_dense(name, pair(train), pair(test), str(root / _IDX[scenes.SOURCES[name]].folder),
                       val_fraction=val_fraction, seed=seed, limit=None, flip=flip, task=task, classes=None,
                       num_classes=scenes.NUM_CLASSES, info=info)
