"""Segmentation scenes made from MNIST / Fashion-MNIST glyphs, their boundary targets, and a disk cache.

A scene is a ``canvas`` x ``canvas`` black image with 1..4 glyphs pasted at random
places and sizes (side ``28 * s * canvas / 64`` px, ``s`` in 0.5..2 with ``log s``
arcsine-distributed: log-uniform would bound the 5th-95th percentile spread of box
areas below 16x; the U shape gives ~23x in stroke area on MNIST).  Glyphs are drawn
in order as white ink (alpha = intensity), so a later glyph covers an earlier one;
the label map holds ``class + 1`` where the drawn glyph's resampled value is >= 128,
and 0 (background) elsewhere.  Train scenes take glyphs of the official training
images, test scenes those of the official test images (other writers).

Every random quantity has its own seeded stream and glyph ``j`` of the flattened
(scene, slot) order is ``perm[j]`` of a seeded permutation, so the first ``k``
scenes of ``n > k`` are the ``k`` scenes: a smaller ``limit`` is a prefix.

``task=boundary`` (``load(..., task="boundary")``, ``data.task=boundary``) turns
any label map into 1-2 px outlines: a pixel is an edge (1) when one of its
4-neighbours carries a different label, so a label change is marked on both sides;
pixels labelled 255 (ignore) stay 255 and are never compared.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlasearch import files
from dlasearch.errors import DataError
from dlasearch.train.sources import _IDX, _fetch, read_idx

__all__ = ['SceneSpec', 'Scenes', 'render', 'generate', 'boundary', 'load_scenes', 'cache_dir']

IGNORE = 255
GLYPH = 28            # MNIST side in px
SCENE_SEED = 0        # scenes are the dataset (fixed like MNIST itself); the split seed only picks val
SOURCES = {"mnist_seg": "mnist", "fashion_seg": "fashion_mnist"}
NUM_CLASSES = 11      # background + 10 source classes
DEFAULT_SCENES = {"train": 6000, "test": 1000}
_CHUNK = 1024         # scenes rendered at once (bounds the sampling grid's memory)


@dataclass(frozen=True)
class SceneSpec:
    """What a scene looks like; every field is part of the cache key."""

    canvas: int = 64
    min_objects: int = 1
    max_objects: int = 4
    scale: tuple = (0.5, 2.0)   # glyph side factor (log-arcsine); 1 = 28 px on a 64 px canvas
    threshold: int = 128        # a pixel is labelled where the drawn glyph is at least this bright

    def check(self) -> "SceneSpec":
        if isinstance(self.canvas, bool) or not isinstance(self.canvas, int) or self.canvas < 8:
            raise DataError(f"image_size={self.canvas!r} for generated scenes; expected an int >= 8 (default 64)")
        if not 1 <= self.min_objects <= self.max_objects:
            raise DataError(f"objects per scene {self.min_objects}..{self.max_objects}; expected 1 <= min <= max")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise DataError(f"scene scale range {self.scale}; expected 0 < low <= high")
        return self


@dataclass
class Scenes:
    """Generated scenes with their provenance: which source glyph went where, and how big it was drawn."""

    images: np.ndarray   # (N, H, W) uint8
    labels: np.ndarray   # (N, H, W) uint8: 0 background, class + 1 on strokes
    digits: np.ndarray   # (N, K) int64 index into the source split; -1 = empty slot
    classes: np.ndarray  # (N, K) int64 source class; -1 = empty slot
    boxes: np.ndarray    # (N, K, 3) int64 top, left, side in px
    areas: np.ndarray    # (N, K) int64 stroke pixels of each glyph as drawn (before later glyphs cover it)

    def object_areas(self) -> np.ndarray:
        return self.areas[self.classes >= 0]


def render(glyphs, classes, boxes, canvas: int, threshold: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint ``glyphs`` (N, K, h, w) uint8 at ``boxes`` (N, K, 3: top, left, side) in slot order.

    Returns ``(images, labels, areas)``: uint8 (N, canvas, canvas) images and label maps
    (``classes + 1`` on strokes, slots with class -1 are skipped) and the stroke area of
    each drawn glyph.  Bilinear resampling; at side = h a glyph is copied exactly.
    """
    g = torch.from_numpy(np.array(glyphs, dtype=np.uint8))  # a copy: IDX arrays are read-only buffers
    cls = torch.as_tensor(np.asarray(classes, dtype=np.int64))
    bx = torch.as_tensor(np.asarray(boxes, dtype=np.int64))
    n, k = cls.shape
    image = torch.zeros(n, canvas, canvas)
    label = torch.zeros(n, canvas, canvas, dtype=torch.uint8)
    areas = torch.zeros(n, k, dtype=torch.int64)
    pix = torch.arange(canvas, dtype=torch.float32) + 0.5
    for s in range(k):
        top, left, side = (bx[:, s, i, None].float() for i in range(3))
        gy = 2 * (pix - top) / side - 1                          # (N, canvas): -1..1 inside the box
        gx = 2 * (pix - left) / side - 1
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        v = F.grid_sample(g[:, s, None].float(), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)[:, 0].round_()
        present = (cls[:, s] >= 0).view(-1, 1, 1)
        v = torch.where(present, v, torch.zeros(()))
        stroke = v >= threshold
        areas[:, s] = torch.count_nonzero(stroke, dim=(1, 2))
        image = v + (1 - v / 255.0) * image                     # white ink with alpha = intensity
        label = torch.where(stroke, (cls[:, s] + 1).clamp(min=0).to(torch.uint8).view(-1, 1, 1), label)
    images = image.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return images, label.numpy(), areas.numpy()


def _stream(seed: int, split: str, what: int) -> np.random.Generator:
    return np.random.default_rng([seed, {"train": 0, "test": 1}.get(split, 2), what])


def generate(images: np.ndarray, labels: np.ndarray, n: int, seed: int = SCENE_SEED,
             spec: SceneSpec = SceneSpec(), split: str = "train") -> Scenes:
    """``n`` scenes from source ``images`` (M, 28, 28) uint8 with ``labels`` (M,), seeded.

    Each quantity has its own stream (object counts, sizes, rows, columns, glyph order),
    so scene ``i`` does not depend on ``n``.
    """
    spec.check()
    k, m, c = spec.max_objects, len(images), spec.canvas
    count = _stream(seed, split, 0).integers(spec.min_objects, spec.max_objects + 1, size=n)
    lo, hi = np.log(spec.scale[0]), np.log(spec.scale[1])
    u = np.sin(np.pi / 2 * _stream(seed, split, 1).random(size=(n, k))) ** 2   # arcsine: U-shaped on 0..1
    s = np.exp(lo + (hi - lo) * u)
    side = np.clip(np.rint(GLYPH * s * c / 64.0), 1, c).astype(np.int64)
    top = np.floor(_stream(seed, split, 2).random(size=(n, k)) * (c - side + 1)).astype(np.int64)
    left = np.floor(_stream(seed, split, 3).random(size=(n, k)) * (c - side + 1)).astype(np.int64)
    order = _stream(seed, split, 4).permutation(m)
    digits = order[np.arange(n * k) % m].reshape(n, k)
    present = np.arange(k)[None, :] < count[:, None]
    digits = np.where(present, digits, -1)
    classes = np.where(present, labels[np.maximum(digits, 0)], -1).astype(np.int64)
    boxes = np.stack([top, left, side], axis=-1)
    out_x, out_y, out_a = [], [], []
    for i in range(0, n, _CHUNK):
        sl = slice(i, i + _CHUNK)
        x, y, a = render(images[np.maximum(digits[sl], 0)], classes[sl], boxes[sl], c, spec.threshold)
        out_x.append(x), out_y.append(y), out_a.append(a)
    cat = (lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape, np.uint8))
    return Scenes(cat(out_x, (0, c, c)), cat(out_y, (0, c, c)), digits.astype(np.int64), classes,
                  boxes, cat(out_a, (0, k)).astype(np.int64))


def boundary(labels: torch.Tensor, ignore: int = IGNORE) -> torch.Tensor:
    """int64 (N, H, W) edge map of label maps: 1 where a 4-neighbour differs, 0 elsewhere, ``ignore`` kept."""
    lab = torch.as_tensor(labels)
    valid = lab != ignore
    edge = torch.zeros_like(valid)
    for dim in (1, 2):
        n = lab.shape[dim]
        a, b = lab.narrow(dim, 0, n - 1), lab.narrow(dim, 1, n - 1)
        diff = (a != b) & valid.narrow(dim, 0, n - 1) & valid.narrow(dim, 1, n - 1)
        edge.narrow(dim, 0, n - 1).logical_or_(diff)
        edge.narrow(dim, 1, n - 1).logical_or_(diff)
    return torch.where(valid, edge.long(), torch.full((), ignore, dtype=torch.long))


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dlasearch/scenes`` (else ~/.cache/...): never ``data.root``, which may be read-only."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "dlasearch" / "scenes"


_CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()  # the generator's version: edits invalidate the cache
_FIELDS = ("images", "labels", "digits", "classes", "boxes", "areas")


def _read_cache(path: Path) -> Scenes | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return Scenes(**{f: z[f] for f in _FIELDS})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # absent or damaged: only a cache miss, regenerated and replaced


def _write_cache(path: Path, scenes: Scenes) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{f: getattr(scenes, f) for f in _FIELDS})
    try:
        files.write_atomic(path, buf.getvalue())
    except OSError:
        pass  # an unwritable cache only costs regenerating next time


def load_scenes(name: str, root: Path, split: str, n: int, spec: SceneSpec = SceneSpec(), seed: int = SCENE_SEED,
                download: bool = True, progress=None, cache: bool = True) -> Scenes:
    """The ``n`` scenes of ``split`` for dataset ``name`` (mnist_seg, fashion_seg), from the cache when there.

    The cache key hashes the source files' (verified) md5s, ``spec``, ``n``, ``seed`` and this
    module's own text, so any change regenerates and nothing stale is ever returned.
    """
    src = _IDX[SOURCES[name]]
    prefix = "train" if split == "train" else "t10k"
    paths = [_fetch(root, src, f"{prefix}-{kind}-idx{d}-ubyte.gz", download, progress)
             for kind, d in (("images", 3), ("labels", 1))]  # _fetch verifies each md5 (cheap next to a render)
    key = json.dumps({"sources": [src.files[p.name] for p in paths], "spec": asdict(spec), "n": n, "seed": seed,
                      "split": split, "code": _CODE}, sort_keys=True)
    path = cache_dir() / f"{name}-{split}-{n}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if cache:
        hit = _read_cache(path)
        if hit is not None and len(hit.images) == n:
            return hit
    x, y = read_idx(paths[0]), read_idx(paths[1])
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{paths[0].parent}: {split} images {x.shape} and labels {y.shape} do not match")
    scenes = generate(x, y.astype(np.int64), n, seed, spec, split)
    if cache:
        _write_cache(path, scenes)
    return scenes
