"""Dataset loaders on real data: shapes, dtypes, labels, seeded splits, and rejection of bad files."""
from __future__ import annotations

import dataclasses
import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dlasearch.train import data, sources
from dlasearch.errors import DLASearchError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data folder {SHARED} is absent")
CIFAR_NPZ = SHARED / "cifar-10-subset" / "cifar10_subset.npz"


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def mnist():
    return data.load("mnist", root=SHARED, download=False)


# ------------------------------------------------------------------ loaders

def test_digits_shapes_dtypes_split(digits):
    d = digits
    assert (d.channels, d.num_classes, d.image_size, d.flip) == (1, 10, (8, 8), False)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (1293, 144, 360)
    for x, y in (d.split("train"), d.split("val"), d.split("test")):
        assert x.dtype == torch.uint8 and x.shape[1:] == (1, 8, 8) and y.dtype == torch.int64
        assert len(x) == len(y) and int(y.min()) == 0 and int(y.max()) == 9
        assert int(x.max()) == 255  # digits' 0..16 scale is stretched to 0..255
    assert set(d.y_val.tolist()) == set(range(10))  # stratified


def test_split_is_seeded_and_test_is_fixed(digits):
    again = data.load("digits", seed=0)
    other = data.load("digits", seed=1)
    assert torch.equal(again.x_val, digits.x_val) and torch.equal(again.y_train, digits.y_train)
    assert not torch.equal(other.x_val, digits.x_val)
    assert torch.equal(other.x_test, digits.x_test)  # held out the same way whatever the seed


@needs_shared
def test_mnist(mnist):
    d = mnist
    assert (d.channels, d.num_classes, d.image_size, d.flip) == (1, 10, (28, 28), False)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (54000, 6000, 10000)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    counts = torch.bincount(torch.cat([d.y_train, d.y_val]), minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(d.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert d.mean[0] == pytest.approx(0.1307, abs=1e-3) and d.std[0] == pytest.approx(0.3081, abs=1e-3)


@needs_shared
def test_fashion_mnist_slice_and_resize():
    d = data.load("fashion_mnist", root=SHARED, download=False, limit=2000, image_size=32, resize_mode="pad")
    assert (d.channels, d.num_classes, d.image_size, d.flip) == (1, 10, (32, 32), True)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (1800, 200, 10000)
    assert torch.bincount(torch.cat([d.y_train, d.y_val])).tolist() == [200] * 10  # stratified slice
    assert torch.bincount(d.y_test).tolist() == [1000] * 10
    assert d.x_test[:, :, :2].sum() == 0 and d.x_test[:, :, :, 30:].sum() == 0  # zero border
    native = sources.read_idx(SHARED / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz")
    assert torch.equal(d.x_test[:, 0, 2:30, 2:30], torch.from_numpy(native.copy()))
    same = data.load("fashion_mnist", root=SHARED, download=False, limit=2000, image_size=32, resize_mode="pad")
    assert torch.equal(same.x_train, d.x_train)


@needs_shared
def test_cifar10_subset_as_npz():
    d = data.load("npz", path=CIFAR_NPZ)
    assert (d.channels, d.num_classes, d.image_size) == (3, 10, (32, 32))
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (4500, 500, 1000)
    z = np.load(CIFAR_NPZ)
    assert torch.equal(d.x_test[0], torch.from_numpy(z["x_test"][0].reshape(3, 32, 32)))
    assert torch.bincount(d.y_test).tolist() == [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]


@needs_shared
def test_cifar10_python_batches(tmp_path, monkeypatch):
    """The cifar10 loader on a cifar-10-batches-py folder built from the real subset (md5s of those files)."""
    z = np.load(CIFAR_NPZ)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {f"data_batch_{i}": (z["x_train"][z["train_batch"] == i], z["y_train"][z["train_batch"] == i])
               for i in range(1, 6)}
    batches["test_batch"] = (z["x_test"], z["y_test"])
    for name, (x, y) in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": [int(v) for v in y]}, f)
        monkeypatch.setitem(sources._CIFAR10.files, name, sources.md5sum(folder / name))
    d = data.load("cifar10", root=tmp_path, download=False)
    assert (d.channels, d.num_classes, d.flip) == (3, 10, True)
    assert (len(d.y_train) + len(d.y_val), len(d.y_test)) == (5000, 1000)
    assert torch.equal(d.x_test[5], torch.from_numpy(z["x_test"][5].reshape(3, 32, 32)))
    with open(folder / "test_batch", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(data.DataError, match="md5"):
        data.load("cifar10", root=tmp_path, download=False)


# ------------------------------------------------------------------ files: download, md5, IDX

@needs_shared
def test_download_from_a_mirror_verifies_md5(tmp_path, monkeypatch):
    mirror = (SHARED / "MNIST" / "raw").as_uri() + "/"
    monkeypatch.setitem(sources._IDX, "mnist", dataclasses.replace(sources._IDX["mnist"], mirrors=(mirror,)))
    d = data.load("mnist", root=tmp_path, progress=False)
    assert len(d.y_test) == 10000
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == sorted(sources._IDX["mnist"].files)


@needs_shared
def test_download_with_wrong_md5_leaves_nothing(tmp_path):
    src = SHARED / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    bad = tmp_path / "mirror" / src.name
    bad.parent.mkdir()
    bad.write_bytes(src.read_bytes()[:-10] + b"0123456789")
    dest = tmp_path / "root" / src.name
    with pytest.raises(data.DataError, match="md5"):
        sources.download([bad.as_uri()], dest, sources._IDX["mnist"].files[src.name], progress=False)
    assert list(dest.parent.iterdir()) == []


def test_download_unreachable_says_where_to_put_the_file(tmp_path):
    dest = tmp_path / "x.gz"
    with pytest.raises(data.DataError, match=r"put the official file at .*x\.gz"):
        sources.download([(tmp_path / "nowhere.gz").as_uri()], dest, "0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


@needs_shared
def test_corrupt_local_copy_is_rejected(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (SHARED / "MNIST" / "raw").iterdir():
        (raw / f.name).symlink_to(f)
    target = raw / "train-labels-idx1-ubyte.gz"
    good = target.read_bytes()
    target.unlink()
    target.write_bytes(good[:1000])  # truncated
    with pytest.raises(data.DataError, match=r"md5 .* does not match .*delete it"):
        data.load("mnist", root=tmp_path, download=False)


def test_missing_file_without_download(tmp_path):
    with pytest.raises(data.DataError, match="missing; set download=true"):
        data.load("fashion_mnist", root=tmp_path, download=False)


def _gz(path: Path, payload: bytes) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(payload)
    return path


def test_read_idx_checks_header_and_gzip(tmp_path):
    ok = _gz(tmp_path / "ok.gz", bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3]))
    assert sources.read_idx(ok).tolist() == [1, 2, 3]
    with pytest.raises(data.DataError, match="wrong IDX magic"):
        sources.read_idx(_gz(tmp_path / "magic.gz", bytes([0, 0, 9, 1]) + (3).to_bytes(4, "big") + bytes(3)))
    with pytest.raises(data.DataError, match="truncated or corrupt"):
        sources.read_idx(_gz(tmp_path / "short.gz", bytes([0, 0, 8, 3]) + b"".join(
            n.to_bytes(4, "big") for n in (2, 28, 28)) + bytes(100)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(ok.read_bytes()[:-6])
    with pytest.raises(data.DataError, match="not a readable gzip"):
        sources.read_idx(cut)
    plain = tmp_path / "plain.gz"
    plain.write_bytes(b"not gzip at all")
    with pytest.raises(data.DataError, match="not a readable gzip"):
        sources.read_idx(plain)


# ------------------------------------------------------------------ npz

def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_layouts_agree(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    y = np.arange(40) % 4
    nhwc = data.load("npz", path=_npz(tmp_path / "a.npz", x=x, y=y))
    nchw = data.load("npz", path=_npz(tmp_path / "b.npz", x=x.transpose(0, 3, 1, 2), y=y))
    assert torch.equal(nhwc.x_train, nchw.x_train) and torch.equal(nhwc.x_test, nchw.x_test)
    assert (nhwc.channels, nhwc.num_classes, nhwc.image_size) == (3, 4, (16, 16))
    assert len(nhwc.y_test) == 8  # no test arrays: a fixed 20% is held out
    gray = data.load("npz", path=_npz(tmp_path / "c.npz", x_train=x[..., 0], y_train=y,
                                      x_test=x[:5, ..., 0], y_test=y[:5]))
    assert gray.channels == 1 and len(gray.y_test) == 5


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((10, 8, 8), np.float32), "y": np.zeros(10, np.int64)}, "float32; expected uint8"),
    ({"x": np.zeros((10, 8, 8), np.uint8), "y": np.zeros(9, np.int64)}, "expected 10 integer labels"),
    ({"x": np.zeros((10, 8, 8), np.uint8), "y": np.zeros(10, np.float64)}, "expected 10 integer labels"),
    ({"x": np.zeros((10, 8, 8), np.uint8), "y": -np.ones(10, np.int64)}, "negative label"),
    ({"x": np.zeros((10, 100), np.uint8), "y": np.zeros(10, np.int64)}, "N x 3072 CIFAR rows"),
    ({"images": np.zeros((10, 8, 8), np.uint8)}, "expected x and y"),
])
def test_bad_npz_is_rejected(tmp_path, arrays, message):
    with pytest.raises(data.DataError, match=message):
        data.load("npz", path=_npz(tmp_path / "bad.npz", **arrays))


def test_npz_path_problems(tmp_path):
    with pytest.raises(data.DataError, match="needs path="):
        data.load("npz")
    with pytest.raises(data.DataError, match="no such file"):
        data.load("npz", path=tmp_path / "absent.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    with pytest.raises(data.DataError, match="not a readable .npz"):
        data.load("npz", path=junk)


# ------------------------------------------------------------------ options

@pytest.mark.parametrize("kwargs, message", [
    ({"name": "imagenet"}, "unknown dataset 'imagenet'; allowed: digits, mnist"),
    ({"name": "mnits"}, "did you mean 'mnist'"),
    ({"name": "digits", "val_fraction": 0}, "val_fraction=0"),
    ({"name": "digits", "image_size": 0}, "image_size=0"),
    ({"name": "digits", "resize_mode": "zoom"}, "resize='zoom'; allowed: interpolate, pad"),
    ({"name": "digits", "limit": 1}, "limit=1"),
    ({"name": "digits", "image_size": 4, "resize_mode": "pad"}, "cannot shrink"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(DLASearchError, match=message):
        data.load(kwargs.pop("name"), **kwargs)


# ------------------------------------------------------------------ batches and augmentation

def test_batches_cover_the_split_once(digits):
    g = torch.Generator().manual_seed(0)
    seen = [y for _, y in digits.batches("train", 100, shuffle=True, generator=g)]
    assert sorted(torch.cat(seen).tolist()) == sorted(digits.y_train.tolist())
    x, _ = next(digits.batches("train", 2000))
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1, abs=1e-3)


def test_random_crop_is_a_window_of_the_padded_image():
    x = torch.randint(0, 256, (16, 2, 6, 6), dtype=torch.uint8)
    out = data.random_crop(x, 2, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [padded[i, :, a:a + 6, b:b + 6] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_only_where_it_keeps_the_class(digits):
    x = torch.randint(0, 256, (64, 1, 5, 5), dtype=torch.uint8)
    out = data.random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) and not torch.equal(o, i) for o, i in zip(out, x)]
    assert all(torch.equal(o, i) or f for o, i, f in zip(out, x, flipped)) and 10 < sum(flipped) < 54
    nocrop = dataclasses.replace(digits, crop_padding=0)
    xb = digits.x_train[:64]
    assert torch.equal(nocrop.transform(xb, augment=True), nocrop.transform(xb))  # digits never flip


def test_augmentation_is_deterministic(digits):
    xb = digits.x_train[:32]
    a = digits.transform(xb, augment=True, generator=torch.Generator().manual_seed(3))
    b = digits.transform(xb, augment=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (32, 1, 8, 8) and not torch.equal(a, digits.transform(xb))


def test_resize_interpolates_batched(digits):
    big = digits.resized(32)
    assert big.image_size == (32, 32) and big.x_train.dtype == torch.uint8 and big.crop_padding == 4
    assert len(big.y_train) == len(digits.y_train) and torch.equal(big.y_train, digits.y_train)


@needs_shared
def test_shared_folder_is_not_written():
    """Loading from the shared copies must never create files there (it is read-only for tests)."""
    before = sorted(p.name for p in (SHARED / "MNIST" / "raw").iterdir())
    data.load("mnist", root=SHARED, download=False, limit=100)
    assert sorted(p.name for p in (SHARED / "MNIST" / "raw").iterdir()) == before
