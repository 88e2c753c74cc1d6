"""Datasets as three splits of uint8 tensors, their transforms, and ``load`` by name."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dlasearch.errors import DataError, did_you_mean
from dlasearch.train.sources import (_CIFAR10, _FLIP, _IDX, _load_cifar10, _load_digits, _load_idx, _load_npz,
                                     default_root)

__all__ = ['Dataset', 'random_crop', 'crop_at', 'random_flip', 'resize', 'load']

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "npz")


RESIZE_MODES = ("interpolate", "pad")


@dataclass
class Dataset:
    """Three splits of uint8 ``(N, C, H, W)`` images with int64 labels, plus how to feed them.

    ``mean``/``std`` are per channel (in 0..1 units) from the training split;
    ``flip`` says whether horizontal flips keep the class; ``crop_padding`` is the
    padding of the random-crop augmentation.
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
        return dataclasses.replace(self, **moved)

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
            if order is None:
                xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            else:
                idx = order[i:i + batch_size]
                xb, yb = x[idx], y[idx]
            yield self.transform(xb, augment, generator), yb

    def summary(self) -> dict:
        return {"name": self.name, "channels": self.channels, "image_size": list(self.image_size),
                "num_classes": self.num_classes, "train": len(self.y_train), "val": len(self.y_val),
                "test": len(self.y_test), "flip": self.flip, "source": self.source}

    def resized(self, size: int | None, mode: str = "interpolate") -> "Dataset":
        """Every split at ``size`` x ``size`` (once, in memory), with statistics and crop padding to match."""
        _check_size(size, mode)
        xs = {k: getattr(self, k) if size is None else resize(getattr(self, k), size, mode)
              for k in ("x_train", "x_val", "x_test")}
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


def _split(y: np.ndarray, size, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, taken): a stratified seeded split, unstratified when a class is too rare."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
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
         flip: bool | None = None, download: bool = True, progress: bool | None = None) -> Dataset:
    """Load dataset ``name`` (one of ``DATASETS``) into memory with a seeded train/val split.

    ``val_fraction`` of the training images (after ``limit``, a seeded stratified
    subset for quick runs) become the validation split; datasets without an
    official test split (digits, an npz with only ``x``/``y``) hold out a fixed,
    seed-independent 20% as test.  ``image_size`` resizes every split once, at
    load time; ``path`` is the ``.npz`` file for ``name='npz'``.
    """
    if name not in DATASETS:
        hint = did_you_mean(name, DATASETS)
        raise DataError(f"unknown dataset {name!r}{hint}; allowed: {', '.join(DATASETS)}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction!r}; expected a number strictly between 0 and 1")
    _check_size(image_size, resize_mode)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 2):
        raise DataError(f"limit={limit!r}; expected an int >= 2 (training images to use) or null for all")
    root = Path(root).expanduser() if root is not None else default_root()
    if name == "digits":
        train, test = _load_digits()
        source = "sklearn.datasets.load_digits"
    elif name == "cifar10":
        train, test = _load_cifar10(root, download, progress)
        source = str(root / _CIFAR10.folder)
    elif name == "npz":
        train, test = _load_npz(path)
        source = str(Path(path).expanduser())
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
