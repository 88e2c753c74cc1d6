"""``dlasearch.load``: a ready model from a run folder, a study's ``best/`` entry, a checkpoint file or
``study=NAME trial=N``.

The format itself (writing and reading ``.safetensors`` checkpoints, timm and original ones
included) is ``dlasearch.weights``, a lower floor that zoo, training and search share; this module
re-exports it for ``dlasearch.deploy.checkpoint``'s users.  It sits above the search because a
study's trials are among the things it loads.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dlasearch import ir as irmod
from dlasearch.errors import CheckpointError
from dlasearch.ir import to_module
from dlasearch.search import keep
from dlasearch.train import resolve_device
from dlasearch.train.freeze import frozen
from dlasearch.weights import FORMAT, WEIGHTS, Preprocess, head_keys, load_weights, read_state_dict, save

__all__ = ['Preprocess', 'save', 'read_state_dict', 'head_keys', 'load_weights', 'frozen', 'build', 'load']

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
    if (path is None) == (study is None):
        raise CheckpointError("load: give a path, or study=NAME with trial=N (not both)")
    if study is not None:
        if trial is None:
            raise CheckpointError(f"load: study={study!r} needs trial=N")
        with keep.fetch(study, int(trial), storage, artifacts) as p:
            model, _ = build(p)
    else:
        model, _ = build(path)
    return model.to(resolve_device(device)).eval()
