"""The checkpoint format: one self-describing ``.safetensors`` file per model, and reading others.

A dlasearch checkpoint is a safetensors file whose metadata holds the IR, the
data normalisation, the class count and the training config, so the file alone
rebuilds the model and feeds it new images.  safetensors rather than
``torch.save``: loading it cannot run code (a pickle can), it is memory-mapped,
and timm publishes its DLA weights in the same format.

``read_state_dict`` also reads timm and original (ucbdrive/dla) checkpoints,
``.pth`` or ``.safetensors``; ``load_weights`` checks them against a model and
re-initialises only the classifier when the class count differs.

Why a floor of its own, below the zoo, training, search and deploy: all four read or write this
format, so it may depend on the IR alone.  ``dlasearch.load`` (rebuilding a ready model from a run,
a study trial or a file) lives in ``deploy.checkpoint``, above the search it reads trials from.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as st_save

from dlasearch import files, ir as irmod
from dlasearch.errors import CheckpointError

__all__ = ['FORMAT', 'WEIGHTS', 'Preprocess', 'save', 'read_state_dict', 'head_keys', 'load_weights',
           'convert_original', 'first_line']

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
        try:
            with safe_open(str(p), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as e:
            raise CheckpointError(f"{p}: not a readable safetensors file ({first_line(e)})") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{p}: not a readable checkpoint ({first_line(e)}); expected a state_dict "
                              f"saved with torch.save, or a .safetensors file") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p}: holds no state_dict (a mapping of parameter names to tensors)")
    return obj, {}


def first_line(e: Exception) -> str:
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
    where = str(source) if not isinstance(source, dict) else "state_dict"
    sd = read_state_dict(source)[0] if not isinstance(source, dict) else dict(source)
    graph = graph if graph is not None else getattr(model, "ir", None)
    own = model.state_dict()
    if set(sd) != set(own):
        sd = convert_original(sd)
    missing, unexpected = set(own) - set(sd), set(sd) - set(own)
    shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    head = head_keys(graph) if graph is not None else set()
    note = ""
    stem = [k for k in shapes if _input_conv(k, sd[k], own[k], graph)]
    if len(stem) == 1:
        k = stem[0]
        sd[k], how = adapt_input_conv(sd[k], own[k].shape[1])
        note = f"{where}: stem adapted to {own[k].shape[1]}-channel input ({k}: {how}, as timm's in_chans does)"
        shapes = [x for x in shapes if x != k]
    if not missing and not unexpected and shapes and set(shapes) <= head:
        k = sorted(shapes)[0]
        note = "; ".join(filter(None, [note, (
            f"{where}: classifier re-initialised: the checkpoint predicts {sd[k].shape[0]} classes, "
            f"this model {own[k].shape[0]} ({', '.join(sorted(shapes))} left at their initial values)")]))
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


def _input_conv(key: str, theirs: torch.Tensor, ours: torch.Tensor, graph) -> bool:
    """Whether ``key`` is the stem conv that reads the image and differs only in its input channels."""
    if graph is None or theirs.dim() != 4 or ours.dim() != 4:
        return False
    if theirs.shape[0] != ours.shape[0] or theirs.shape[2:] != ours.shape[2:]:
        return False
    inputs = graph.of_kind("input")
    return len(inputs) == 1 and ours.shape[1] == graph.nodes[inputs[0]]["channels"]


def adapt_input_conv(weight: torch.Tensor, channels: int) -> tuple[torch.Tensor, str]:
    """A pretrained stem's weight for ``channels`` input channels, as timm's ``adapt_input_conv``:
    one channel sums the pretrained ones (a grey image is R=G=B, so the response is unchanged); more
    repeat them cyclically, scaled so the expected response stays the same.  Returns (weight, how)."""
    given = weight.shape[1]
    if channels == 1:
        return weight.sum(dim=1, keepdim=True), f"summed over its {given} input channels"
    reps = math.ceil(channels / given)
    return (weight.repeat(1, reps, 1, 1)[:, :channels] * (given / channels),
            f"its {given} input channels repeated to {channels} and scaled by {given}/{channels}")


_PROJECT = re.compile(r"^(?P<tree>.*)\.project\.[01]\.")


def convert_original(state_dict: dict) -> dict:
    """Make an original-implementation (ucbdrive/dla) checkpoint loadable with ``strict=True``.

    Drops the projections the original computes but never uses (those of trees
    whose first child is itself a tree) and, for segmentation checkpoints, the
    backbone's unused classifier ``base.fc``; strips a DataParallel ``module.`` prefix.
    """
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}

    def is_tree(prefix: str) -> bool:
        return any(k.startswith((prefix + ".tree1.", prefix + ".root.")) for k in sd)

    out = {}
    for k, v in sd.items():
        m = _PROJECT.match(k)
        if m and is_tree(m.group("tree") + ".tree1"):
            continue
        if k.startswith("base.fc."):
            continue
        out[k] = v
    return out
