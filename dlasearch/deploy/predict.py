"""``dlasearch predict``: a trained model's answers for your images, as files a person can open.

Dense models (segment, boundary) give one palette PNG mask per image, at the image's own size (class 0
black, then the PASCAL VOC colours, so every mask and every tool that knows VOC agree), and an overlay:
the image with the coloured mask blended in.  Classifiers give ``predictions.csv``: each image's label
and per-class probabilities.  Images are an ``.npz`` (``x`` or ``x_test``, uint8 ``(N, H, W[, C])``), a
folder of PNGs or one PNG; the model's own ``preprocess`` resizes and normalises them as in training.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlasearch import files
from dlasearch.deploy import checkpoint
from dlasearch.errors import PredictError
from dlasearch.weights import WEIGHTS

__all__ = ['OPTIONS', 'palette', 'read_images', 'load_model', 'predict', 'command']

OPTIONS = ("from", "study", "trial", "storage", "artifacts", "images", "out", "overwrite", "batch_size", "device")
MARKER = "predict.json"  # what marks a folder as predict's own, so overwrite=true may replace it
ALPHA = 0.5  # the mask's share of an overlay pixel where the mask is not background
NPZ_KEYS = ("x", "x_test")


def palette() -> list[int]:
    """The PASCAL VOC palette (768 ints): class 0 black, then well-separated colours built from the bits
    of the class index (1 dark red, 2 dark green, 3 olive, ...); 255 (ignore) comes out light."""
    out = []
    for c in range(256):
        r = g = b = 0
        for shift in range(8):
            r |= ((c >> 0) & 1) << (7 - shift)
            g |= ((c >> 1) & 1) << (7 - shift)
            b |= ((c >> 2) & 1) << (7 - shift)
            c >>= 3
        out += [r, g, b]
    return out


# ------------------------------------------------------------------ reading images

def read_images(path) -> list[tuple[str, np.ndarray]]:
    """``[(name, uint8 (H, W, C))]`` from an ``.npz``, a folder of PNGs or one PNG, in a stable order."""
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise PredictError(f"images={path}: no such file or folder")
    if p.is_dir():
        pngs = sorted(q for q in p.iterdir() if q.suffix.lower() == ".png" and q.is_file())
        if not pngs:
            raise PredictError(f"images={path}: the folder holds no .png files")
        return [(q.stem, _png(q)) for q in pngs]
    if p.suffix.lower() == ".npz":
        return _npz(p)
    if p.suffix.lower() == ".png":
        return [(p.stem, _png(p))]
    raise PredictError(f"images={path}: expected an .npz (key {' or '.join(NPZ_KEYS)}), a folder of .png files "
                       f"or one .png")


def _npz(p: Path) -> list[tuple[str, np.ndarray]]:
    try:
        with np.load(p, allow_pickle=False) as z:
            key = next((k for k in NPZ_KEYS if k in z.files), None)
            if key is None:
                raise PredictError(f"images={p}: no array named {' or '.join(NPZ_KEYS)} (it holds "
                                   f"{', '.join(z.files) or 'nothing'})")
            x = z[key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PredictError(f"images={p}: not a readable .npz ({why})") from None
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and not 1 <= x.shape[-1] <= 4) or not len(x):
        raise PredictError(f"images={p}: {key} is {x.dtype} {x.shape}; expected uint8 images (N, H, W) or "
                           f"(N, H, W, C), channels last")
    x = x[..., None] if x.ndim == 3 else x
    width = len(str(len(x) - 1))
    return [(f"{i:0{width}d}", x[i]) for i in range(len(x))]


def _png(p: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # heavy: only predict reads image files

    try:
        with Image.open(p) as im:
            im.load()
            gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
            arr = np.asarray(im.convert("L" if gray else "RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise PredictError(f"images={p}: not a readable PNG ({str(e).splitlines()[0] if str(e) else 'unknown'})") \
            from None
    return arr[..., None] if arr.ndim == 2 else arr


# ------------------------------------------------------------------ the model

def load_model(source=None, *, study=None, trial=None, storage=None, artifacts=None, device: str = "cpu"):
    """``dlasearch.load`` of a run folder, checkpoint or ``best/`` entry, or a study's trial; refuses an
    export folder (it runs without dlasearch: its README says how) and a model without preprocessing."""
    if (source is None) == (study is None):
        raise PredictError("give from=<run folder | checkpoint file | best/trialN.ir.json>, or study=NAME trial=N")
    if study is not None:
        if trial is None:
            raise PredictError(f"study={study!r} needs trial=N")
        if isinstance(trial, bool) or not isinstance(trial, int) or trial < 0:
            raise PredictError(f"trial={trial!r}: expected an int >= 0")
        model = checkpoint.load(study=str(study), trial=trial, storage=storage, artifacts=artifacts, device=device)
    else:
        p = Path(str(source)).expanduser()
        if p.is_dir() and not (p / WEIGHTS).is_file() and (p / "export.json").is_file():
            raise PredictError(f"from={source}: an export folder (it runs without dlasearch, see its README.md); "
                               f"give the run folder or checkpoint it was exported from")
        model = checkpoint.load(p, device=device)
    if getattr(model, "preprocess", None) is None:
        raise PredictError(f"from={source or study}: the checkpoint records no preprocessing (mean, std, image size)")
    return model


# ------------------------------------------------------------------ predicting

def _batches(images, size: int):
    """Runs of at most ``size`` consecutive images of one shape (a folder's PNGs may differ in size)."""
    run: list = []
    for item in images:
        if run and (len(run) == size or item[1].shape != run[0][1].shape):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


@torch.inference_mode()
def _answers(model, images, batch_size: int, device):
    """Per batch: (names, images, output) where output is (N, K) probabilities or (N, H, W) class maps."""
    for batch in _batches(images, batch_size):
        names, arrs = [n for n, _ in batch], np.stack([a for _, a in batch])
        x = torch.from_numpy(arrs).permute(0, 3, 1, 2).to(device)
        y = model(model.preprocess(x))
        if not isinstance(y, torch.Tensor) or y.ndim not in (2, 4):
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else f"{len(y)} outputs"
            raise PredictError(f"the model gives {shape}; predict takes classifiers (N, K) and dense models "
                               f"(N, K, H, W)")
        if y.ndim == 2:
            yield names, arrs, y.float().softmax(1).cpu().numpy()
            continue
        h, w = arrs.shape[1:3]
        if tuple(y.shape[2:]) != (h, w):  # back to the image's own size: masks lie on the images
            y = F.interpolate(y.float(), size=(h, w), mode="bilinear", align_corners=False)
        yield names, arrs, y.argmax(1).to(torch.uint8).cpu().numpy()


def _overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    blend = ((1 - ALPHA) * rgb + ALPHA * colours[mask]).round().astype(np.uint8)
    return np.where((mask > 0)[..., None], blend, rgb)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PredictError(f"out={out}: is a file; give a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return files.check_writable(out, "out", PredictError)
    held = sorted(p.name for p in out.iterdir())
    shown = f"{', '.join(held[:5])}{' ...' if len(held) > 5 else ''}"
    if not overwrite:
        raise PredictError(f"out={out}: exists and holds {shown}; pass overwrite=true to replace it, or choose "
                           f"another out=")
    if not (out / MARKER).is_file():
        raise PredictError(f"out={out}: holds {shown}, which is no earlier prediction (no {MARKER}), so "
                           f"overwrite=true will not replace it; choose another out=, or empty it")


def predict(model, images, out, *, overwrite: bool = False, batch_size: int = 64, source: str = "",
            log=print) -> dict:
    """Write ``model``'s answers for ``images`` (a path, see ``read_images``) into folder ``out`` (whole)."""
    from PIL import Image  # heavy: only predict writes images

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PredictError(f"batch_size={batch_size!r}: expected an int >= 1")
    out = Path(str(out)).expanduser()
    _check_out(out, overwrite)
    items = read_images(images)
    channels = len(model.preprocess.mean)
    bad = next(((n, a.shape[2]) for n, a in items if a.shape[2] != channels), None)
    if bad is not None:
        raise PredictError(f"images={images}: image {bad[0]} has {bad[1]} channel(s), but the model takes "
                           f"{channels} ({'grayscale' if channels == 1 else 'RGB' if channels == 3 else 'channels'})")
    device = next(model.parameters()).device
    pal = palette()
    colours = np.asarray(pal, dtype=np.float32).reshape(256, 3)
    tmp = files.sibling_dir(out)
    rows, task = [], None
    try:
        for names, arrs, y in _answers(model, items, batch_size, device):
            task = "classify" if y.ndim == 2 else "dense"
            for name, image, ans in zip(names, arrs, y):
                if task == "classify":
                    rows.append([name, int(ans.argmax()), *(f"{p:.6g}" for p in ans)])
                    continue
                mask = Image.fromarray(ans, mode="P")
                mask.putpalette(pal)
                (tmp / "masks").mkdir(exist_ok=True)
                (tmp / "overlays").mkdir(exist_ok=True)
                mask.save(tmp / "masks" / f"{name}.png")
                Image.fromarray(_overlay(image, ans, colours)).save(tmp / "overlays" / f"{name}.png")
        if task == "classify":
            k = len(rows[0]) - 2
            head = ",".join(["image", "label", *(f"p{c}" for c in range(k))])
            (tmp / "predictions.csv").write_text(head + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
        record = {"source": source, "images": str(images), "count": len(items), "task": task,
                  "image_size": list(model.preprocess.image_size), "channels": channels}
        (tmp / MARKER).write_text(json.dumps(record, indent=1) + "\n")
        try:
            files.replace_dir(tmp, out)
        except OSError as e:
            raise PredictError(f"out={out}: cannot replace it: {files.explain(e)}") from None
    except OSError as e:
        raise PredictError(f"out={out}: cannot write: {files.explain(e)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    what = "predictions.csv" if task == "classify" else "masks/ and overlays/ (palette PNGs, class 0 black)"
    log(f"predicted {len(items)} image(s) with {source or 'the model'}: wrote {what} to {out}")
    return {"out": str(out), "count": len(items), "task": task}


def command(args: dict) -> int:
    """``dlasearch predict from=<run | checkpoint> | study=NAME trial=N images=<npz | folder | png> out=DIR``."""
    if "images" not in args:
        raise PredictError("images=<file.npz | folder of .png | file.png> is required")
    if not isinstance(args.get("overwrite", False), bool):
        raise PredictError(f"overwrite={args['overwrite']!r}; expected true or false")
    src, study = args.get("from"), args.get("study")
    model = load_model(src, study=study, trial=args.get("trial"), storage=args.get("storage"),
                       artifacts=args.get("artifacts"), device=str(args.get("device", "cpu")))
    name = f"{study}-trial{args.get('trial')}" if study is not None else \
        (model.checkpoint or {}).get("name") or Path(str(src)).stem
    out = args.get("out") or files.results_root() / "predict" / str(name)
    source = f"study={study} trial={args.get('trial')}" if study is not None else str(src)
    predict(model, args["images"], out, overwrite=args.get("overwrite", False),
            batch_size=args.get("batch_size", 64), source=source)
    return 0
