"""Where datasets come from: the embedded digits, MNIST, Fashion-MNIST and CIFAR-10 files (downloaded
with md5 checks when missing), and ``.npz`` arrays of your own.
"""
from __future__ import annotations

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

import numpy as np

from dlasearch.errors import DataError

__all__ = ['default_root', 'md5sum', 'download', 'read_idx']

MAX_CLASSES = 100_000  # a label past this is a corrupt file, not a class (it would size the classifier)


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
_FLIP = {"digits": False, "mnist": False, "fashion_mnist": True, "cifar10": True, "npz": False,
         "mnist_seg": False, "fashion_seg": True, "folder": True}  # an .npz of masks flips (data._load_dense)


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


def _npz_arrays(path) -> tuple[Path, dict]:
    """Every array of an .npz file, read at once (no pickles)."""
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
    return path, arrays


def _npz_is_dense(arrays: dict) -> bool:
    """Masks, not labels: the y arrays are (N, H, W), a label per pixel."""
    y = arrays.get("y_train", arrays.get("y"))
    return y is not None and y.ndim == 3


def _load_npz(path, arrays: dict | None = None):
    if arrays is None:
        path, arrays = _npz_arrays(path)
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
