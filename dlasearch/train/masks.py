"""Dense (per-pixel) data: masks of your own (.npz arrays or an images/ + masks/ folder), mask resizing,
and the joint image + mask augmentation.

Masks are integer class indices per pixel; 255 means *ignore* (not scored, not trained on),
as in VOC and Cityscapes.  Masks are only ever resampled nearest-neighbour, so no label
is invented between two classes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlasearch.errors import DataError
from dlasearch.train.sources import _as_nchw

__all__ = ['IGNORE', 'augment_pair', 'augments', 'draw_augment', 'apply_augment', 'resize_masks', 'check_masks',
           'npz_masks', 'folder_masks']

IGNORE = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# ------------------------------------------------------------------ augmentation

def augment_pair(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None, padding: int = 0,
                 flip: bool = False, scale: tuple = (1.0, 1.0), image_mode: str = "bilinear",
                 ignore: int = IGNORE) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly scale, crop (with ``padding``) and flip uint8 images (N, C, H, W) and int masks (N, H, W) alike.

    Each image is scaled by ``s`` uniform in ``scale``, padded by ``padding``, and an
    H x W window is cut at a random offset (the scaled image is placed at random inside
    the window when it is smaller); a random half is mirrored left-right.  One sampling
    grid serves both: the image is resampled with ``image_mode`` (bilinear), the mask
    nearest-neighbour, and pixels from outside the image become 0 / ``ignore``.  At
    ``s = 1`` this is an exact integer crop.  Draws come from ``generator`` (CPU) and
    everything else runs on ``x``'s device, batched.  It is ``apply_augment(draw_augment(...))``:
    the trainer makes an epoch's draws in one go and moves them to the device once.
    """
    if not augments(padding, flip, scale):
        return x, y
    draws = draw_augment(len(x), generator, flip, scale)
    return apply_augment(x, y, draws.to(x.device), padding, image_mode, ignore)


def augments(padding: int, flip: bool, scale: tuple) -> bool:
    """Whether ``augment_pair`` changes anything (and so draws anything) with these settings."""
    return padding > 0 or flip or not float(scale[0]) == float(scale[1]) == 1.0


def draw_augment(n: int, generator: torch.Generator | None = None, flip: bool = False,
                 scale: tuple = (1.0, 1.0)) -> torch.Tensor:
    """The random draws of ``augment_pair`` for ``n`` pairs, on the CPU, as float32 rows
    (scale factor, window offset in y, in x, mirror 0/1)."""
    lo, hi = float(scale[0]), float(scale[1])
    s = (lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)).float()
    u = torch.rand(2, n, generator=generator)
    f = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return torch.stack([s, u[0], u[1], f.float()])


def apply_augment(x: torch.Tensor, y: torch.Tensor, draws: torch.Tensor, padding: int = 0,
                  image_mode: str = "bilinear", ignore: int = IGNORE) -> tuple[torch.Tensor, torch.Tensor]:
    """``augment_pair`` with its draws given (``draw_augment``'s rows, on ``x``'s device): no host transfer."""
    n, _, h, w = x.shape
    dev = x.device
    s, f = draws[0], draws[3] > 0.5
    zero = torch.zeros((), device=dev)

    def coords(size: int, uu: torch.Tensor) -> torch.Tensor:
        r = s * size + 2 * padding - size                     # room to move the window (< 0: image smaller)
        low, high = torch.minimum(r, zero), torch.maximum(r, zero)
        off = low + torch.floor(uu * (torch.floor(high - low) + 1))
        pix = torch.arange(size, dtype=torch.float32, device=dev)
        src = (pix[None, :] + off[:, None] - padding + 0.5) / s[:, None] - 0.5
        return (2 * src + 1) / size - 1                        # grid_sample's align_corners=False units

    gy, gx = coords(h, draws[1]), coords(w, draws[2])
    gx = torch.where(f[:, None], -gx, gx)                      # mirror: x -> w - 1 - x in these units
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    xo = F.grid_sample(x.float(), grid, mode=image_mode, padding_mode="zeros", align_corners=False)
    xo = xo.round_().clamp_(0, 255).to(x.dtype)
    yo = F.grid_sample(y.float()[:, None] + 1, grid, mode="nearest", padding_mode="zeros",
                       align_corners=False)[:, 0].round_().long()
    yo = torch.where(yo == 0, torch.full((), ignore, dtype=torch.long, device=dev), yo - 1)
    return xo, yo.to(y.dtype)


def resize_masks(y: torch.Tensor, size: int, mode: str = "interpolate", chunk: int = 4096) -> torch.Tensor:
    """Masks (N, H, W) to ``size`` x ``size``: nearest-neighbour, or centred ``pad`` with ignore (255)."""
    h, w = y.shape[1:]
    if (h, w) == (size, size):
        return y
    if mode == "pad":
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(y, (left, size - w - left, top, size - h - top), value=IGNORE)
    parts = [F.interpolate(y[i:i + chunk, None].float(), size=(size, size), mode="nearest-exact")[:, 0].to(y.dtype)
             for i in range(0, len(y), chunk)]
    return torch.cat(parts) if parts else y.new_zeros((0, size, size))


# ------------------------------------------------------------------ your own masks

def check_masks(y: np.ndarray, where: str, classes: int | None = None) -> int:
    """Reject float masks and labels outside 0..classes-1 (255 = ignore); return the class count."""
    if not np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_:
        raise DataError(f"{where}: {y.dtype} masks; expected integer class indices per pixel (255 = ignore)")
    values = np.flatnonzero(np.bincount(y.ravel(), minlength=256)) if y.dtype == np.uint8 else np.unique(y)
    valid = values[values != IGNORE]
    limit = IGNORE if classes is None else classes
    bad = valid[(valid < 0) | (valid >= limit)]
    if len(bad):
        allowed = "0..254" if classes is None else f"0..{classes - 1}"
        raise DataError(f"{where}: label {int(bad[0])} (of {len(bad)} out of range); expected class indices "
                        f"{allowed}, or 255 for ignore")
    return classes if classes is not None else (int(valid.max()) + 1 if len(valid) else 1)


def npz_masks(arrays: dict, path: Path, classes: int | None = None):
    """``(x, y)`` train and test pairs of an .npz whose y arrays are (N, H, W) masks; test may be None."""
    pairs = [("x_train", "y_train"), ("x_test", "y_test")] if "x_test" in arrays else [("x_train", "y_train")]
    if "x_train" not in arrays:
        pairs = [("x", "y")]
    out = []
    for kx, ky in pairs:
        if ky not in arrays:
            raise DataError(f"{path}: has {kx} but no {ky}")
        x = _as_nchw(arrays[kx], f"{path}:{kx}")
        y = arrays[ky]
        if y.ndim != 3 or len(y) != len(x):
            raise DataError(f"{path}:{ky}: shape {y.shape}; expected {len(x)} masks of shape H x W")
        if y.shape[1:] != x.shape[2:]:
            raise DataError(f"{path}: {kx} images are {x.shape[2]}x{x.shape[3]} but {ky} masks are "
                            f"{y.shape[1]}x{y.shape[2]}; every mask must match its image's size")
        check_masks(y, f"{path}:{ky}", classes)
        out.append((x, y.astype(np.uint8)))
    if len(out) == 2 and out[0][0].shape[1:] != out[1][0].shape[1:]:
        raise DataError(f"{path}: train images {out[0][0].shape[1:]} and test images {out[1][0].shape[1:]} "
                        f"differ in shape")
    return out[0], (out[1] if len(out) == 2 else None)


def _listing(folder: Path, suffixes) -> dict:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in suffixes}


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    images, masks = folder / "images", folder / "masks"
    for sub in (images, masks):
        if not sub.is_dir():
            raise DataError(f"{folder}: no {sub.name}/ folder; expected {folder}/images/*.png and "
                            f"{folder}/masks/*.png with matching names")
    ims, mks = _listing(images, IMAGE_SUFFIXES), _listing(masks, (".png",))
    if not ims:
        raise DataError(f"{images}: no images (.png, .jpg); expected images/*.png with masks/*.png of the same names")
    only_i, only_m = sorted(set(ims) - set(mks)), sorted(set(mks) - set(ims))
    if only_i or only_m:
        few = (lambda names: ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else ""))
        parts = ([f"images without a mask: {few(only_i)}"] if only_i else []) + \
                ([f"masks without an image: {few(only_m)}"] if only_m else [])
        raise DataError(f"{folder}: image and mask names do not match ({'; '.join(parts)})")
    return [(ims[k], mks[k]) for k in sorted(ims)]


def _read(path: Path, mask: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # heavy; only folder datasets need it

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mask:
                if mode in ("F",):
                    raise DataError(f"{path}: float mask (mode F); expected integer class indices (255 = ignore)")
                if mode not in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
                    raise DataError(f"{path}: {mode} mask; expected a single-channel or palette PNG whose "
                                    f"pixel values are class indices")
                return np.asarray(im.convert("L") if mode == "1" else im)
            return np.asarray(im.convert("L" if mode in ("L", "1", "P") and _gray(im) else "RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def _gray(im) -> bool:
    if im.mode != "P":
        return True
    pal = np.asarray(im.convert("RGB"))
    return bool((pal[..., 0] == pal[..., 1]).all() and (pal[..., 1] == pal[..., 2]).all())


def _load_pairs(folder: Path, image_size: int | None, classes: int | None):
    from PIL import Image  # heavy; only folder datasets need it

    xs, ys, first = [], [], None
    for ip, mp in _pairs(folder):
        x, y = _read(ip, False), _read(mp, True)
        if x.shape[:2] != y.shape:
            raise DataError(f"{mp}: mask is {y.shape[1]}x{y.shape[0]} but image {ip.name} is "
                            f"{x.shape[1]}x{x.shape[0]}; every mask must match its image's size")
        check_masks(y, str(mp), classes)
        if image_size is not None and x.shape[:2] != (image_size, image_size):
            x = np.asarray(Image.fromarray(x).resize((image_size, image_size), Image.BILINEAR))
            y = np.asarray(Image.fromarray(y.astype(np.int32)).resize((image_size, image_size), Image.NEAREST))
        if first is None:
            first = (ip, x.shape[:2])
        elif x.shape[:2] != first[1]:
            raise DataError(f"{folder}: images differ in size ({first[0].name} {first[1][1]}x{first[1][0]}, "
                            f"{ip.name} {x.shape[1]}x{x.shape[0]}); set image_size=N to resize them all")
        xs.append(x), ys.append(y.astype(np.uint8))
    if any(x.ndim == 3 for x in xs):
        xs = [x if x.ndim == 3 else np.repeat(x[..., None], 3, axis=2) for x in xs]
    x = np.stack(xs)
    return _as_nchw(x, str(folder)) if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2)), np.stack(ys)


def folder_masks(path, image_size: int | None = None, classes: int | None = None):
    """``(x, y)`` train and test pairs of a folder: ``images/`` + ``masks/``, or ``train/`` (+ ``test/``) of those.

    Images are .png or .jpg (grey stays one channel, anything else becomes RGB); masks are
    single-channel or palette PNGs of class indices with the same file names.  Images of
    different sizes need ``image_size`` (each is then resized: bilinear, its mask nearest).
    """
    if path is None:
        raise DataError("data=folder needs path=<folder> with images/*.png and masks/*.png")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; expected a folder with images/ and masks/")
    if (folder / "train").is_dir():
        train = _load_pairs(folder / "train", image_size, classes)
        test = _load_pairs(folder / "test", image_size, classes) if (folder / "test").is_dir() else None
    else:
        train, test = _load_pairs(folder, image_size, classes), None
    if test is not None and train[0].shape[1:] != test[0].shape[1:]:
        raise DataError(f"{folder}: train images {train[0].shape[1:]} and test images {test[0].shape[1:]} "
                        f"differ in shape; set image_size=N")
    return train, test
