"""Image-classification datasets held in memory as uint8 tensors.

Every dataset loads to the same shape: ``train``/``val``/``test`` splits of
uint8 ``(N, C, H, W)`` images and int64 labels.  Batches are index gathers and
augmentation/normalisation run batched in torch, so a small network on CPU is
limited by its own compute, not by a per-image Python loop.

Names: ``digits`` (scikit-learn's bundled 8x8 digits: works offline),
``mnist``, ``fashion_mnist`` (IDX ``.gz`` files), ``cifar10`` (the python
archive ``cifar-10-batches-py``) and ``npz`` (your own arrays).  Missing files
are downloaded into ``root`` (default ``~/.cache/dlasearch``) and every file is
checked against its published md5 before it is read.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dlasearch.errors import DLASearchError, did_you_mean

MAX_CLASSES = 100_000  # a label past this is a corrupt file, not a class (it would size the classifier)

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "npz")
RESIZE_MODES = ("interpolate", "pad")


class DataError(DLASearchError):
    """A dataset that cannot be loaded: unknown name, missing or corrupt file, bad arrays."""


# ------------------------------------------------------------------ sources

@dataclass(frozen=True)
class _Source:
    folder: str
    mirrors: tuple[str, ...]
    files: dict  # filename -> md5


# The md5 values are the published ones (also those torchvision checks).
_IDX = {
    "mnist": _Source("MNIST/raw", ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                                   "http://yann.lecun.com/exdb/mnist/"), {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion_mnist": _Source("FashionMNIST/raw", ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",), {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
}
_CIFAR10_ARCHIVE = _Source("", ("https://www.cs.toronto.edu/~kriz/",),
                           {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"})
_CIFAR10 = _Source("cifar-10-batches-py", (), {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e"})
# Horizontal flips keep the class of clothes and objects, not of handwritten digits.
_FLIP = {"digits": False, "mnist": False, "fashion_mnist": True, "cifar10": True, "npz": False}


def default_root() -> Path:
    """Where downloads are cached: ``$DLASEARCH_DATA``, else ``$XDG_CACHE_HOME/dlasearch``, else ~/.cache."""
    if os.environ.get("DLASEARCH_DATA"):
        return Path(os.environ["DLASEARCH_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "dlasearch"


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, md5: str) -> Path:
    got = md5sum(path)
    if got != md5:
        raise DataError(f"{path}: md5 {got} does not match the published {md5}; the file is corrupt or "
                        f"not the official one; delete it to download it again")
    return path


def _progress_default(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def download(urls, dest: Path, md5: str, progress: bool | None = None) -> Path:
    """Fetch ``dest`` from the first working URL, verify its md5, then move it into place.

    The bytes go to a temporary file beside ``dest``; only a verified file is
    renamed to ``dest``, so an interrupted or corrupt download leaves nothing behind.
    """
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                          disable=not _progress_default(progress)) as bar:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
            got = md5sum(Path(tmp))
            if got != md5:
                errors.append(f"{url}: md5 {got}, expected {md5}")
                continue
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a cache file is readable like any other
            os.replace(tmp, dest)
            return dest
        except OSError as e:  # URLError and HTTPError are OSErrors
            errors.append(f"{url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataError(f"could not download {dest.name} ({'; '.join(errors)}); put the official file at {dest} "
                    f"or choose another data.root")


def _fetch(root: Path, src: _Source, filename: str, download_missing: bool, progress) -> Path:
    path = root / src.folder / filename
    if path.exists():
        return _verify(path, src.files[filename])
    if not download_missing:
        raise DataError(f"{path} is missing; set download=true or put the official file there")
    return download([m + filename for m in src.mirrors], path, src.files[filename], progress)


# ------------------------------------------------------------------ readers

def read_idx(path: Path) -> np.ndarray:
    """The uint8 array in a gzip-compressed IDX file (the MNIST format), with its header checked."""
    try:
        with gzip.open(path, "rb") as f:
            buf = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable gzip file ({e}); the file is truncated or corrupt, "
                        f"delete it to download it again") from None
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08 or not 1 <= buf[3] <= 4:
        raise DataError(f"{path}: wrong IDX magic {buf[:4].hex() or 'empty'}; expected 00000801 (labels) "
                        f"or 00000803 (images) of uint8 data")
    ndim = buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: IDX header is cut short ({len(buf)} bytes)")
    dims = [int.from_bytes(buf[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if len(buf) - header != int(np.prod(dims)):
        raise DataError(f"{path}: IDX header says {'x'.join(map(str, dims))} = {int(np.prod(dims))} values "
                        f"but the file holds {len(buf) - header}; the file is truncated or corrupt")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx(name: str, root: Path, download_missing: bool, progress):
    src = _IDX[name]
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(_fetch(root, src, f"{prefix}-images-idx3-ubyte.gz", download_missing, progress))
        y = read_idx(_fetch(root, src, f"{prefix}-labels-idx1-ubyte.gz", download_missing, progress))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{root / src.folder}: {split} images {x.shape} and labels {y.shape} do not match")
        arrays[split] = (x[:, None], y.astype(np.int64))
    return arrays["train"], arrays["test"]


def _load_cifar10(root: Path, download_missing: bool, progress):
    folder = root / _CIFAR10.folder
    if not folder.exists():
        if not download_missing:
            raise DataError(f"{folder} is missing; set download=true or extract cifar-10-python.tar.gz there")
        archive = _fetch(root, _CIFAR10_ARCHIVE, "cifar-10-python.tar.gz", True, progress)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".cifar10."))
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
            os.replace(tmp / _CIFAR10.folder, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out = []
    for names in ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]):
        xs, ys = [], []
        for n in names:
            path = folder / n
            if not path.exists():
                raise DataError(f"{path} is missing; delete {folder} to download CIFAR-10 again")
            _verify(path, _CIFAR10.files[n])  # checked before unpickling: only the official bytes are loaded
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        out.append((np.concatenate(xs), np.concatenate(ys)))
    return out[0], out[1]


def _load_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    return (x, d.target.astype(np.int64)), None


def _as_nchw(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DataError(f"{where}: dtype {x.dtype}; expected uint8 pixels 0..255 (convert with "
                        f"np.clip(x, 0, 255).astype(np.uint8) or (x * 255).astype(np.uint8))")
    if x.ndim == 2 and x.shape[1] == 3072:
        return x.reshape(-1, 3, 32, 32)  # CIFAR rows: 1024 red, 1024 green, 1024 blue
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim == 4 and x.shape[1] in (1, 3, 4):
        return x
    raise DataError(f"{where}: shape {x.shape}; expected N x H x W, N x H x W x C or N x C x H x W "
                    f"with C in 1, 3, 4, or N x 3072 CIFAR rows")


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) != n:
        raise DataError(f"{where}: {y.dtype} array of shape {y.shape}; expected {n} integer labels (1-D)")
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: negative label {y.min()}; expected class indices 0..K-1")
    if len(y) and y.max() >= MAX_CLASSES:
        raise DataError(f"{where}: label {y.max()} is out of range; expected class indices 0..K-1 "
                        f"with K <= {MAX_CLASSES}")
    return y.astype(np.int64)


def _load_npz(path):
    if path is None:
        raise DataError("data=npz needs path=<file.npz> with arrays x, y (or x_train, y_train, x_test, y_test)")
    path = Path(path).expanduser()
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError, KeyError, zlib.error, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz archive (truncated or damaged: {e})") from None
    if {"x_train", "y_train"} <= set(arrays):
        pairs = [("x_train", "y_train"), ("x_test", "y_test")] if "x_test" in arrays else [("x_train", "y_train")]
    elif {"x", "y"} <= set(arrays):
        pairs = [("x", "y")]
    else:
        raise DataError(f"{path}: arrays {sorted(arrays)}; expected x and y, or x_train, y_train "
                        f"(and optionally x_test, y_test)")
    out = []
    for kx, ky in pairs:
        if ky not in arrays:
            raise DataError(f"{path}: has {kx} but no {ky}")
        x = _as_nchw(arrays[kx], f"{path}:{kx}")
        out.append((x, _labels(arrays[ky], len(x), f"{path}:{ky}")))
    if len(out) == 2 and out[0][0].shape[1:] != out[1][0].shape[1:]:
        raise DataError(f"{path}: train images {out[0][0].shape[1:]} and test images {out[1][0].shape[1:]} "
                        f"differ in shape")
    return out[0], (out[1] if len(out) == 2 else None)


# ------------------------------------------------------------------ dataset

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
