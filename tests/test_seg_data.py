"""Dense-prediction data: generated digit scenes, boundary targets, masks of your own, joint augmentation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dlasearch.errors import DataError
from dlasearch.train import data, masks, scenes, sources

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(),
                                  reason=f"shared MNIST files under {SHARED} are absent")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Scene caches go to a fresh folder per test, never the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def mnist_arrays():
    if not (SHARED / "MNIST" / "raw").is_dir():
        pytest.skip(f"shared MNIST files under {SHARED} are absent")
    raw = SHARED / "MNIST" / "raw"
    return {split: (sources.read_idx(raw / f"{p}-images-idx3-ubyte.gz"),
                    sources.read_idx(raw / f"{p}-labels-idx1-ubyte.gz").astype(np.int64))
            for split, p in (("train", "train"), ("test", "t10k"))}


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """mnist_seg at its defaults (6000 train scenes, 1000 test, 64x64)."""
    if not (SHARED / "MNIST" / "raw").is_dir():
        pytest.skip(f"shared MNIST files under {SHARED} are absent")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        return data.load("mnist_seg", root=SHARED, download=False)


# ------------------------------------------------------------------ the generator

def test_generator_is_seeded_and_prefix_stable(mnist_arrays):
    x, y = mnist_arrays["train"]
    a, b = scenes.generate(x, y, 40, seed=0), scenes.generate(x, y, 40, seed=0)
    for f in ("images", "labels", "digits", "boxes", "areas"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    other = scenes.generate(x, y, 40, seed=1)
    assert not np.array_equal(a.images, other.images) and not np.array_equal(a.digits, other.digits)
    short = scenes.generate(x, y, 15, seed=0)  # a smaller limit is a prefix of a larger one
    assert np.array_equal(short.images, a.images[:15]) and np.array_equal(short.labels, a.labels[:15])
    counts = (a.classes >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() <= 4 and a.images.shape == (40, 64, 64)


def test_render_by_hand():
    square = np.zeros((28, 28), np.uint8)
    square[4:24, 4:24] = 200
    small = np.zeros((28, 28), np.uint8)
    small[10:18, 10:18] = 255
    glyphs = np.stack([square, small])[None]                     # one scene, two slots
    images, labels, areas = scenes.render(glyphs, [[3, 7]], [[[0, 0, 28], [0, 0, 56]]], canvas=64)
    img, lab = images[0], labels[0]
    assert (img[4:19, 4:19] == 200).all() and (lab[4:19, 4:19] == 4).all()   # slot 0 copied exactly at side 28
    assert img[19, 22] == 214 and lab[19, 22] == 4               # slot 1's faint rim (64) inked over it: 64 + 0.75 * 200
    assert lab[30, 30] == 8 and img[30, 30] == 255               # slot 1 at 2x: rows/cols 20..35
    assert lab[22, 22] == 8                                      # overlap: the later glyph is on top
    assert lab[50, 50] == 0 and img[50, 50] == 0 and lab[19, 30] == 0 and lab[20, 30] == 8
    assert set(np.unique(lab)) == {0, 4, 8}
    assert areas.tolist() == [[400, 256]]                        # 20x20 square; 16x16 after 2x bilinear
    skipped = scenes.render(glyphs, [[3, -1]], [[[0, 0, 28], [0, 0, 56]]], canvas=64)
    assert set(np.unique(skipped[1])) == {0, 4} and skipped[2].tolist() == [[400, 0]]


def test_render_real_digit_is_copied_with_threshold(mnist_arrays):
    x, y = mnist_arrays["train"]
    digit = x[0]
    images, labels, _ = scenes.render(digit[None, None], [[int(y[0])]], [[[5, 9, 28]]], canvas=64)
    assert np.array_equal(images[0, 5:33, 9:37], digit)
    assert np.array_equal(labels[0, 5:33, 9:37], np.where(digit >= 128, y[0] + 1, 0))
    assert labels[0].sum() == labels[0, 5:33, 9:37].sum()


def test_train_scenes_use_train_digits_and_test_scenes_test_digits(mnist_arrays):
    for split in ("train", "test"):
        sc = scenes.load_scenes("mnist_seg", SHARED, split, 30, download=False)
        x, y = mnist_arrays[split]
        assert sc.digits.max() < len(x)
        present = sc.digits >= 0
        assert np.array_equal(sc.classes[present], y[sc.digits[present]])
        again, labels, _ = scenes.render(x[np.maximum(sc.digits, 0)], sc.classes, sc.boxes, 64)
        assert np.array_equal(again, sc.images) and np.array_equal(labels, sc.labels)
        other = mnist_arrays["test" if split == "train" else "train"][0]
        assert not np.array_equal(scenes.render(other[np.maximum(sc.digits, 0) % len(other)], sc.classes, sc.boxes, 64)[0],
                                  sc.images)


def test_default_scenes_spread_and_background(seg):
    s = seg.summary()
    json.dumps(s)  # goes into run records as is
    assert (s["train"] + s["val"], s["test"], s["num_classes"], s["task"]) == (6000, 1000, 11, "segment")
    assert seg.y_train.dtype == torch.int64 and seg.y_train.shape == (5400, 64, 64) and seg.x_train.dtype == torch.uint8
    assert 0.85 < s["background_fraction"] < 0.95 and s["background_fraction"] == s["pixel_frequencies"][0]
    assert sum(s["pixel_frequencies"]) == pytest.approx(1, abs=1e-4) and min(s["pixel_frequencies"]) > 0.002
    sc = s["scenes"]
    assert sc["object_area_p95"] / sc["object_area_p5"] > 16 and sc["object_area_spread"] > 16
    assert int(seg.y_train.max()) == 10 and int(seg.y_test.max()) == 10 and (seg.flip, seg.crop_padding) == (False, 8)


@needs_shared
def test_scene_cache_is_reused(monkeypatch):
    first = scenes.load_scenes("mnist_seg", SHARED, "train", 25, download=False)
    [cached] = list(scenes.cache_dir().iterdir())
    stamp = cached.stat().st_mtime_ns

    def no_generation(*a, **k):
        raise AssertionError("the cached scenes were generated again")

    monkeypatch.setattr(scenes, "generate", no_generation)
    again = scenes.load_scenes("mnist_seg", SHARED, "train", 25, download=False)
    assert np.array_equal(again.images, first.images) and np.array_equal(again.labels, first.labels)
    assert np.array_equal(again.digits, first.digits) and cached.stat().st_mtime_ns == stamp
    with pytest.raises(AssertionError, match="generated again"):  # other parameters: another cache entry
        scenes.load_scenes("mnist_seg", SHARED, "train", 25, scenes.SceneSpec(canvas=48), download=False)


@needs_shared
def test_canvas_size_and_fashion():
    d = data.load("fashion_seg", root=SHARED, download=False, limit=40, image_size=32)
    assert d.image_size == (32, 32) and d.y_train.shape[1:] == (32, 32) and d.flip
    assert d.num_classes == 11 and d.summary()["scenes"]["canvas"] == 32


# ------------------------------------------------------------------ boundary

def _edges_by_loops(lab: np.ndarray) -> np.ndarray:
    out = np.zeros(lab.shape, np.int64)
    h, w = lab.shape
    for i in range(h):
        for j in range(w):
            if lab[i, j] == 255:
                out[i, j] = 255
                continue
            for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                if 0 <= a < h and 0 <= b < w and lab[a, b] != 255 and lab[a, b] != lab[i, j]:
                    out[i, j] = 1
    return out


def test_boundary_is_thin_and_on_label_changes():
    lab = np.zeros((12, 12), np.uint8)
    lab[2:10, 2:10] = 3
    lab[4:8, 6:10] = 5          # touches class 3: an edge between objects
    lab[0, 11] = 255
    got = scenes.boundary(torch.from_numpy(lab)[None])[0].numpy()
    assert np.array_equal(got, _edges_by_loops(lab))
    assert got.dtype == np.int64 and set(np.unique(got)) == {0, 1, 255}
    assert got[5].tolist() == [0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0]   # 2 px at each change, one per side
    assert got[6, 3] == 0 and got[0, 0] == 0                          # inside objects / background: no edge


@needs_shared
def test_boundary_task_on_scenes():
    d = data.load("mnist_seg", root=SHARED, download=False, limit=30, task="boundary")
    assert (d.task, d.num_classes) == ("boundary", 2) and d.y_train.dtype == torch.int64
    lab = d.labels["train"].numpy()
    for i in range(3):
        assert np.array_equal(d.y_train[i].numpy(), _edges_by_loops(lab[i]))
    s = d.summary()
    assert 0.02 < s["pixel_frequencies"][1] < 0.2 and "background_fraction" not in s
    small = d.resized(32)  # edges recomputed from nearest-resized label maps, not resampled
    assert torch.equal(small.y_train, scenes.boundary(small.labels["train"])) and small.labels["train"].shape[1:] == (32, 32)
    x, y = d.pairs("train", torch.arange(8), augment=True, generator=torch.Generator().manual_seed(0))
    assert set(y.unique().tolist()) <= {0, 1, 255} and x.shape == (8, 1, 64, 64)


# ------------------------------------------------------------------ your own masks

def _mask_npz(path: Path, n=20, h=12, w=10, channels=3, **extra) -> dict:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (n, h, w, channels), dtype=np.uint8),
              "y_train": rng.integers(0, 4, (n, h, w)).astype(np.uint8),
              "x_test": rng.integers(0, 256, (5, h, w, channels), dtype=np.uint8),
              "y_test": rng.integers(0, 4, (5, h, w)).astype(np.uint8)}
    arrays["y_train"][0, 0, :] = 255
    arrays.update(extra)
    np.savez(path, **arrays)
    return arrays


def test_npz_masks_round_trip(tmp_path):
    arrays = _mask_npz(tmp_path / "m.npz")
    d = data.load("npz", path=tmp_path / "m.npz")
    assert (d.task, d.num_classes, d.channels, d.image_size, d.flip) == ("segment", 4, 3, (12, 10), True)
    assert d.y_test.dtype == torch.int64 and torch.equal(d.y_test, torch.from_numpy(arrays["y_test"]).long())
    assert torch.equal(d.x_test, torch.from_numpy(arrays["x_test"]).permute(0, 3, 1, 2))
    assert len(d.y_train) + len(d.y_val) == 20 and int((torch.cat([d.y_train, d.y_val]) == 255).sum()) == 10
    assert data.load("npz", path=tmp_path / "m.npz", classes=6).num_classes == 6
    b = data.load("npz", path=tmp_path / "m.npz", task="boundary")
    assert b.num_classes == 2 and torch.equal(b.y_test, scenes.boundary(torch.from_numpy(arrays["y_test"])))
    big = d.resized(24)  # masks: nearest only, so only labels that exist
    assert set(big.y_train.unique().tolist()) <= {0, 1, 2, 3, 255}
    rows, cols = (((torch.arange(24) + 0.5) * n / 24).long() for n in (12, 10))   # nearest-exact centres
    assert torch.equal(big.y_test, d.y_test[:, rows][:, :, cols])
    padded = d.resized(16, "pad")
    assert int(padded.y_test[:, 0].eq(255).all()) and torch.equal(padded.y_test[:, 2:14, 3:13], d.y_test)


def _png(path: Path, array: np.ndarray, palette: bool = False):
    from PIL import Image

    im = Image.fromarray(array)
    if palette:  # a VOC-style mask: palette indices are the classes
        im = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        im.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _folder(root: Path, n=10, h=9, w=11, seed=0):
    rng = np.random.default_rng(seed)
    xs, ys = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), rng.integers(0, 3, (n, h, w)).astype(np.uint8)
    ys[:, 0, 0] = 255
    for i in range(n):
        _png(root / "images" / f"img{i:02d}.png", xs[i])
        _png(root / "masks" / f"img{i:02d}.png", ys[i], palette=i % 2 == 0)  # palette and plain grey masks
    return xs, ys


def test_folder_round_trip(tmp_path):
    xs, ys = _folder(tmp_path / "voc")
    d = data.load("folder", path=tmp_path / "voc")
    assert (d.task, d.num_classes, d.channels, d.image_size) == ("segment", 3, 3, (9, 11))
    assert len(d.y_test) == 2 and len(d.y_train) + len(d.y_val) == 8   # no test/: a fixed 20% held out
    both = torch.cat([d.x_train, d.x_val, d.x_test]).permute(0, 2, 3, 1).numpy()
    masks_ = torch.cat([d.y_train, d.y_val, d.y_test]).numpy()
    for x, y in zip(both, masks_):
        [i] = [k for k in range(len(xs)) if np.array_equal(xs[k], x)]
        assert np.array_equal(ys[i], y)
    _folder(tmp_path / "split" / "train", n=6)
    tx, ty = _folder(tmp_path / "split" / "test", n=3, seed=1)
    s = data.load("folder", path=tmp_path / "split", image_size=16)
    assert len(s.y_test) == 3 and s.image_size == (16, 16) and set(s.y_test.unique().tolist()) <= {0, 1, 2, 255}


# ------------------------------------------------------------------ bad input names the file

def _bad_folder(tmp_path: Path, problem: str) -> tuple[Path, str]:
    root = tmp_path / "bad"
    _folder(root, n=4)
    if problem == "size":
        _png(root / "masks" / "img01.png", np.zeros((5, 5), np.uint8))
        return root, "img01.png"
    if problem == "names":
        (root / "masks" / "img02.png").rename(root / "masks" / "other.png")
        return root, "img02"
    if problem == "label":
        _png(root / "masks" / "img03.png", np.full((9, 11), 7, np.uint8))
        return root, "img03.png"
    if problem == "rgb":
        _png(root / "masks" / "img00.png", np.zeros((9, 11, 3), np.uint8))
        return root, "img00.png"
    if problem == "empty":
        for p in (root / "images").iterdir():
            p.unlink()
        return root, "images"
    if problem in ("images", "masks"):
        for p in (root / problem).iterdir():
            p.unlink()
        (root / problem).rmdir()
        return root, f"no {problem}/ folder"
    raise AssertionError(problem)


@pytest.mark.parametrize("problem", ["size", "names", "label", "rgb", "empty", "images", "masks"])
def test_bad_folder_names_the_file(tmp_path, problem):
    root, what = _bad_folder(tmp_path, problem)
    with pytest.raises(DataError) as e:
        data.load("folder", path=root, classes=3)
    msg = str(e.value)
    assert "\n" not in msg and what in msg and str(root) in msg


@pytest.mark.parametrize("change, message", [
    ({"y_train": np.zeros((20, 12, 10), np.float32)}, "float32 masks"),
    ({"y_train": np.full((20, 12, 10), 300, np.int16)}, "label 300"),
    ({"y_train": np.full((20, 12, 10), -1, np.int16)}, "label -1"),
    ({"y_test": np.zeros((5, 11, 10), np.uint8)}, "every mask must match its image"),
])
def test_bad_npz_masks_name_the_file(tmp_path, change, message):
    _mask_npz(tmp_path / "bad.npz", **change)
    with pytest.raises(DataError, match=message) as e:
        data.load("npz", path=tmp_path / "bad.npz")
    assert "bad.npz" in str(e.value)


def test_labels_beyond_classes(tmp_path):
    _mask_npz(tmp_path / "m.npz")
    with pytest.raises(DataError, match=r"m\.npz.*label 3 .*expected class indices 0\.\.2, or 255"):
        data.load("npz", path=tmp_path / "m.npz", classes=3)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "mnist", "task": "boundary"}, "needs per-pixel masks"),
    ({"name": "digits", "classes": 4}, "needs per-pixel masks"),
    ({"name": "digits", "task": "segmnt"}, "did you mean 'segment'"),
    ({"name": "folder"}, "needs path="),
    ({"name": "folder", "path": "/nonexistent/voc"}, "no such folder"),
    ({"name": "digits", "classes": 1}, "classes=1"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(DataError, match=message):
        data.load(kwargs.pop("name"), root=SHARED, download=False, **kwargs)


# ------------------------------------------------------------------ joint augmentation

def _coded(n=16, h=20, w=24, seed=0):
    """Masks with labels 0..10, images whose pixel values encode the mask (20 * label + 5)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 11, (n, h // 4, w // 4), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2)
    return (y * 20 + 5).to(torch.uint8)[:, None].repeat(1, 2, 1, 1), y


def test_augmentation_keeps_image_and_mask_aligned():
    x, y = _coded()
    kw = dict(padding=4, flip=True, scale=(0.75, 1.25))
    xo, yo = masks.augment_pair(x, y, torch.Generator().manual_seed(1), image_mode="nearest", **kw)
    valid = yo != 255
    assert yo.dtype == torch.int64 and xo.dtype == torch.uint8 and xo.shape == x.shape and yo.shape == y.shape
    assert torch.equal(xo[:, 0][valid], (yo[valid] * 20 + 5).to(torch.uint8)) and (xo[:, 0][~valid] == 0).all()
    assert set(yo.unique().tolist()) <= set(range(11)) | {255} and 0 < (~valid).float().mean() < 0.5
    xb, yb = masks.augment_pair(x, y, torch.Generator().manual_seed(1), **kw)   # bilinear image, same geometry
    assert torch.equal(yb, yo) and not torch.equal(xb, xo)
    again = masks.augment_pair(x, y, torch.Generator().manual_seed(1), **kw)
    assert torch.equal(again[0], xb) and torch.equal(again[1], yb)
    y8 = torch.where(y == 10, 255, y).to(torch.uint8)                         # uint8 maps with ignore pixels
    _, yo8 = masks.augment_pair(x, y8, torch.Generator().manual_seed(1), **kw)
    assert yo8.dtype == torch.uint8 and torch.equal(yo8.long(), torch.where(yo == 10, 255, yo))


def test_augmentation_at_scale_one_is_an_exact_crop_and_flip():
    x, y = _coded(n=12)
    xo, yo = masks.augment_pair(x, y, torch.Generator().manual_seed(2), padding=3, flip=True)
    xp = torch.nn.functional.pad(x, (3,) * 4)
    yp = torch.nn.functional.pad(y, (3,) * 4, value=255)
    flips = 0
    for i in range(len(x)):
        views = [(xp[i, :, a:a + 20, b:b + 24], yp[i, a:a + 20, b:b + 24]) for a in range(7) for b in range(7)]
        plain = any(torch.equal(xo[i], u) and torch.equal(yo[i], v) for u, v in views)
        mirrored = any(torch.equal(xo[i], u.flip(-1)) and torch.equal(yo[i], v.flip(-1)) for u, v in views)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 0 < flips < len(x)
    assert masks.augment_pair(x, y, None) == (x, y)   # nothing asked: the pair itself (the evaluation path)


def test_random_scale_resizes_mask_and_image_together():
    x, y = _coded(n=6, h=32, w=32)
    xo, yo = masks.augment_pair(x, y, torch.Generator().manual_seed(0), scale=(0.5, 0.5))
    assert torch.equal((yo == 255).float().mean((1, 2)), torch.full((6,), 0.75))    # a 16x16 picture inside
    xn, yn = masks.augment_pair(x, y, torch.Generator().manual_seed(0), scale=(0.5, 0.5), image_mode="nearest")
    assert torch.equal(yn, yo) and torch.equal(xn[:, 0][yn != 255], (yn[yn != 255] * 20 + 5).to(torch.uint8))


@needs_shared
def test_dataset_batches_for_dense_data():
    d = data.load("mnist_seg", root=SHARED, download=False, limit=40)
    xb, yb = next(d.batches("val", 8))
    assert xb.dtype == torch.float32 and torch.equal(yb, d.y_val[:8])    # evaluation: no augmentation
    g = torch.Generator().manual_seed(0)
    seen = [y for _, y in d.batches("train", 16, shuffle=True, augment=True, generator=g)]
    assert sum(len(y) for y in seen) == len(d.y_train) and all(y.shape[1:] == (64, 64) for y in seen)
    assert set(torch.cat(seen).unique().tolist()) <= set(range(11)) | {255}
    x, y = d.pairs("train", torch.arange(4))
    assert torch.equal(x, d.x_train[:4]) and torch.equal(y, d.y_train[:4])
