"""Trained weights in and out: one self-describing ``.safetensors`` file per model.

A dlasearch checkpoint is a safetensors file whose metadata holds the IR, the
data normalisation, the class count and the training config, so the file alone
rebuilds the model and feeds it new images.  safetensors rather than
``torch.save``: loading it cannot run code (a pickle can), it is memory-mapped,
and timm publishes its DLA weights in the same format.

``read_state_dict`` also reads timm and original (ucbdrive/dla) checkpoints,
``.pth`` or ``.safetensors``; ``load_weights`` checks them against a model and
re-initialises only the classifier when the class count differs.
``dlasearch.load`` (``load`` here) returns a ready model from a run folder, a
study's ``best/`` entry, a checkpoint file or ``study=NAME trial=N``.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from dlasearch import files, ir as irmod
from dlasearch.errors import CheckpointError

__all__ = ['Preprocess', 'save', 'read_state_dict', 'head_keys', 'load_weights', 'frozen', 'build', 'load']

FORMAT = "dlasearch-checkpoint/1"
WEIGHTS = "model.safetensors"


class Preprocess:
    """Images -> the normalised batch the model was trained on: ``model(model.preprocess(images))``.

    Takes uint8 images (0..255) or floats in 0..1, ``(C, H, W)`` or ``(N, C, H, W)``;
    resizes bilinearly to the training size when it differs, then applies the
    training split's per-channel mean/std.
    """

    def __init__(self, mean, std, image_size):
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.image_size = tuple(int(s) for s in image_size)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[1] != len(self.mean):
            raise CheckpointError(f"preprocess: expected images of shape (N, {len(self.mean)}, H, W), "
                                  f"got {tuple(x.shape)}")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if tuple(x.shape[2:]) != self.image_size:
            shrink = x.shape[2] > self.image_size[0] or x.shape[3] > self.image_size[1]
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=shrink)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "image_size": list(self.image_size)}

    def __repr__(self):
        return f"Preprocess(mean={self.mean}, std={self.std}, image_size={self.image_size})"


# ------------------------------------------------------------------ writing

def save(path, model: torch.nn.Module, graph: irmod.IR, data=None, *, preprocess: dict | None = None,
         config: dict | None = None, name: str | None = None) -> Path:
    """Write ``model``'s weights with everything needed to rebuild and feed it.

    ``data`` (a ``data.Dataset``) supplies the normalisation, image size and
    classes; ``preprocess`` gives them directly (``mean``, ``std``, ``image_size``).
    """
    from safetensors.torch import save as st_save

    if data is not None:
        preprocess = {"mean": list(data.mean), "std": list(data.std), "image_size": list(data.image_size)}
    meta = {"format": FORMAT, "name": str(name or graph.graph.get("name") or "model"),
            "ir": irmod.to_json(graph), "preprocess": json.dumps(preprocess),
            "data": json.dumps(data.summary() if data is not None else None),
            "config": json.dumps(config, default=str), "torch": torch.__version__}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    files.write_atomic(path, st_save(tensors, metadata=meta))
    return path


# ------------------------------------------------------------------ reading

def read_state_dict(path) -> tuple[dict, dict]:
    """``(state_dict, metadata)`` from a ``.safetensors`` or ``torch.save`` file (``.pth``/``.pt``/``.bin``).

    Unwraps ``{"state_dict": ...}``/``{"model": ...}`` containers; never unpickles code.
    """
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    if p.suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(p), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as e:
            raise CheckpointError(f"{p}: not a readable safetensors file ({_first_line(e)})") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{p}: not a readable checkpoint ({_first_line(e)}); expected a state_dict "
                              f"saved with torch.save, or a .safetensors file") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p}: holds no state_dict (a mapping of parameter names to tensors)")
    return obj, {}


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def head_keys(graph: irmod.IR) -> set[str]:
    """The state_dict keys of the classifier(s): what a different class count re-initialises."""
    keys = set()
    for n in graph.of_kind("head"):
        fc = irmod.module_paths(graph, n)["fc"]
        keys |= {f"{fc}.weight", f"{fc}.bias"}
    return keys


def _listing(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_weights(model: torch.nn.Module, source, graph: irmod.IR | None = None) -> str:
    """Load a checkpoint (path or state_dict) into ``model``; returns a one-line note ("" if none).

    Original-implementation names are converted (``zoo.convert_original``).  A
    classifier whose class count differs is left freshly initialised and the
    note says so; any other mismatch raises ``CheckpointError`` naming up to 5
    missing and 5 unexpected keys and the first shape mismatch.
    """
    from dlasearch import zoo

    where = str(source) if not isinstance(source, dict) else "state_dict"
    sd = read_state_dict(source)[0] if not isinstance(source, dict) else dict(source)
    graph = graph if graph is not None else getattr(model, "ir", None)
    own = model.state_dict()
    if set(sd) != set(own):
        sd = zoo.convert_original(sd)
    missing, unexpected = set(own) - set(sd), set(sd) - set(own)
    shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    head = head_keys(graph) if graph is not None else set()
    note = ""
    if not missing and not unexpected and shapes and set(shapes) <= head:
        k = sorted(shapes)[0]
        note = (f"{where}: classifier re-initialised: the checkpoint predicts {sd[k].shape[0]} classes, "
                f"this model {own[k].shape[0]} ({', '.join(sorted(shapes))} left at their initial values)")
        for k in head:
            sd.pop(k, None)
        shapes = []
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        if shapes:
            k = shapes[0]
            parts.append(f"first shape mismatch: {k} is {tuple(sd[k].shape)} in the checkpoint, "
                         f"{tuple(own[k].shape)} in the model")
        raise CheckpointError(f"{where}: does not match the architecture: " + "; ".join(parts))
    model.load_state_dict(sd, strict=not note)
    return note


# ------------------------------------------------------------------ fine-tuning

class _FrozenBatchNorm(torch.nn.BatchNorm2d):
    """A BatchNorm that stays in eval mode: a frozen backbone keeps its running statistics."""

    def train(self, mode: bool = True):
        return super().train(False)


@contextlib.contextmanager
def frozen(model: torch.nn.Module, freeze: str):
    """``freeze="backbone"``: train only the classifier (backbone weights fixed, BatchNorm in eval mode)."""
    if freeze == "none":
        yield
        return
    graph = getattr(model, "ir", None)
    if graph is None or not graph.of_kind("head"):
        raise CheckpointError("freeze=backbone needs a dlasearch model with a classifier head")
    heads = {k.rsplit(".", 1)[0] for k in head_keys(graph)}
    params = [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[0] not in heads and p.requires_grad]
    norms = [m for m in model.modules() if type(m) is torch.nn.BatchNorm2d]
    for _, p in params:
        p.requires_grad_(False)
    for m in norms:
        m.__class__ = _FrozenBatchNorm
    try:
        yield
    finally:
        for _, p in params:
            p.requires_grad_(True)
        for m in norms:
            m.__class__ = torch.nn.BatchNorm2d


# ------------------------------------------------------------------ dlasearch.load

def _resolve(path) -> Path:
    """A run folder, a ``best/trialN.*`` entry or a checkpoint file -> the checkpoint file."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        if (p / WEIGHTS).is_file():
            return p / WEIGHTS
        raise CheckpointError(f"{p}: no {WEIGHTS} in this folder (a run folder written by `dlasearch train`, "
                              f"or pass a checkpoint file)")
    for suffix in (".ir.json", ".spec.json"):
        if p.name.endswith(suffix):
            weights = p.with_name(p.name[:-len(suffix)] + ".safetensors")
            if weights.is_file():
                return weights
            raise CheckpointError(f"{p}: no weights beside it ({weights.name}); the study kept none for this "
                                  f"trial (keep=none?)")
    if not p.exists():
        raise CheckpointError(f"{p}: no such run folder or checkpoint file")
    return p


def build(path) -> tuple[torch.nn.Module, dict]:
    """(model with weights, metadata) from a dlasearch checkpoint file, on CPU, in train mode."""
    from dlasearch.ir import to_module

    p = _resolve(path)
    sd, meta = read_state_dict(p)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a dlasearch checkpoint (no architecture inside); load a timm or "
                              f"original checkpoint with zoo.create(name, weights=PATH)")
    try:
        graph = irmod.from_json(meta["ir"])
    except (irmod.IRError, ValueError, KeyError) as e:
        raise CheckpointError(f"{p}: its architecture does not parse ({e})") from None
    model = to_module(graph, name=meta.get("name"))
    load_weights(model, sd, graph)
    info = {k: json.loads(meta[k]) for k in ("preprocess", "data", "config") if k in meta}
    info.update(name=meta.get("name"), path=str(p))
    pre = info.get("preprocess")
    model.preprocess = Preprocess(**pre) if pre else None
    model.checkpoint = info
    return model, info


def load(path=None, *, study: str | None = None, trial: int | None = None, storage: str | None = None,
         artifacts: str | None = None, device: str = "cpu") -> torch.nn.Module:
    """The trained model, in eval mode on ``device``, with ``model.preprocess`` attached.

    ``path``: a run folder (``model.safetensors`` inside), a ``best/trialN.*``
    entry, or a checkpoint file; or ``study=NAME, trial=N`` (``storage`` and
    ``artifacts`` as for the search) for any trial the study kept weights of.
    ``model(model.preprocess(images))`` gives logits.
    """
    from dlasearch.train import resolve_device

    if (path is None) == (study is None):
        raise CheckpointError("load: give a path, or study=NAME with trial=N (not both)")
    if study is not None:
        from dlasearch.search import keep
        if trial is None:
            raise CheckpointError(f"load: study={study!r} needs trial=N")
        with keep.fetch(study, int(trial), storage, artifacts) as p:
            model, _ = build(p)
    else:
        model, _ = build(path)
    return model.to(resolve_device(device)).eval()
