"""The published DLA models, built through the pattern builders, and checkpoint conversion.

Every model here is an IR from ``patterns.build`` (pattern ``dla``), compiled
with ``dlasearch.compile``; module names follow the original code
(ucbdrive/dla, and timm's port) so official checkpoints load with ``strict=True``.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from dlasearch import measure
from dlasearch.errors import did_you_mean
from dlasearch.files import write_atomic
from dlasearch.ir import IR, IRError, fingerprint, to_module
from dlasearch.ir.features import features
from dlasearch.patterns import build
from dlasearch.weights import convert_original, load_weights

__all__ = ['Config', 'spec', 'dla', 'dla_up', 'names', 'ir', 'create', 'convert_original', 'table']


@dataclass(frozen=True)
class Config:
    levels: tuple
    channels: tuple
    block: str = "basic"
    cardinality: int = 32
    residual_root: bool = False


_WIDE = (16, 32, 128, 256, 512, 1024)
_COMPACT = (16, 32, 64, 64, 128, 256)
MODELS: dict[str, Config] = {
    "dla34": Config((1, 1, 1, 2, 2, 1), (16, 32, 64, 128, 256, 512), "basic"),
    "dla46_c": Config((1, 1, 1, 2, 2, 1), _COMPACT, "bottleneck"),
    "dla46x_c": Config((1, 1, 1, 2, 2, 1), _COMPACT, "bottleneckx"),
    "dla60x_c": Config((1, 1, 1, 2, 3, 1), _COMPACT, "bottleneckx"),
    "dla60": Config((1, 1, 1, 2, 3, 1), _WIDE, "bottleneck"),
    "dla60x": Config((1, 1, 1, 2, 3, 1), _WIDE, "bottleneckx"),
    "dla102": Config((1, 1, 1, 3, 4, 1), _WIDE, "bottleneck", residual_root=True),
    "dla102x": Config((1, 1, 1, 3, 4, 1), _WIDE, "bottleneckx", residual_root=True),
    "dla102x2": Config((1, 1, 1, 3, 4, 1), _WIDE, "bottleneckx", 64, residual_root=True),
    "dla169": Config((1, 1, 2, 3, 5, 1), _WIDE, "bottleneck", residual_root=True),
}
UP_MODELS = {"dla34up": "dla34", "dla60up": "dla60", "dla102up": "dla102", "dla169up": "dla169"}


def spec(levels, channels, block="basic", cardinality=32, residual_root=False, num_classes=1000,
         task="classify") -> dict:
    """The builder spec of a DLA with the original's six stage depths and widths."""
    if not isinstance(levels, (list, tuple)) or len(levels) != 6:
        raise IRError(f"levels={levels!r}: expected six stage depths (2 conv levels, 4 tree levels)")
    if not isinstance(channels, (list, tuple)) or len(channels) != 6:
        raise IRError(f"channels={channels!r}: expected six stage widths")
    for i in range(2, 6):
        if isinstance(levels[i], bool) or not isinstance(levels[i], int) or levels[i] < 1:
            raise IRError(f"levels[{i}]={levels[i]!r}: expected a tree depth >= 1")
    return {
        "pattern": "dla", "in_channels": 3, "num_classes": num_classes,
        "stem": {"channels": channels[0], "kernel": 7},
        "conv_stages": [{"convs": levels[0], "channels": channels[0], "stride": 1},
                        {"convs": levels[1], "channels": channels[1], "stride": 2}],
        "stages": [{"blocks": 2 ** levels[i], "channels": channels[i], "stride": 2} for i in range(2, 6)],
        "block": block, "cardinality": cardinality, "root_kernel": 1, "residual_root": residual_root,
        "task": task, "first_level": 1,
    }


def dla(levels, channels, block="basic", cardinality=32, residual_root=False, num_classes=1000) -> IR:
    """The generic DLA classifier (Figure 2) as an IR."""
    return build(spec(levels, channels, block, cardinality, residual_root, num_classes), name="DLA")


def dla_up(levels, channels, block="basic", cardinality=32, residual_root=False, num_classes=19) -> IR:
    """DLA-Up for dense prediction: the DLA backbone, the IDA-up stack to stride 2, a 1x1
    classifier and the original's frozen bilinear x2 upsampling to input resolution."""
    return build(spec(levels, channels, block, cardinality, residual_root, num_classes, "segment"),
                 name="DLAUp")


def names() -> list[str]:
    return list(MODELS) + list(UP_MODELS)


def ir(name: str, num_classes: int | None = None) -> IR:
    """The IR of zoo model ``name``."""
    if name in MODELS:
        c = MODELS[name]
        g = dla(c.levels, c.channels, c.block, c.cardinality, c.residual_root,
                1000 if num_classes is None else num_classes)
    elif name in UP_MODELS:
        c = MODELS[UP_MODELS[name]]
        g = dla_up(c.levels, c.channels, c.block, c.cardinality, c.residual_root,
                   19 if num_classes is None else num_classes)
    else:
        hint = did_you_mean(name, names())
        raise IRError(f"unknown zoo model {name!r}{hint}; available: {', '.join(names())}")
    g.graph["name"] = name
    return g


def create(name: str, num_classes: int = 1000, weights=None, features_only: bool = False) -> torch.nn.Module:
    """A compiled zoo model, randomly initialised as the original unless ``weights`` is given.

    ``weights``: a timm or original checkpoint (``.pth`` or ``.safetensors``); a different
    class count re-initialises the classifier, with a warning.  ``features_only=True``
    returns the stage outputs (a list, finest first; ``model.feature_info`` as in timm).
    """
    graph = ir(name, num_classes)
    model = to_module(graph, name=name)
    if weights is not None:
        note = load_weights(model, weights, graph)
        if note:
            warnings.warn(note, stacklevel=2)
    if not features_only:
        return model
    cut = features(graph)
    feats = to_module(cut, name=f"{name}_features")
    feats.load_state_dict({k: v for k, v in model.state_dict().items() if k in feats.state_dict()})
    feats.feature_info = cut.graph["feature_info"]
    return feats


def _cache_file():
    """``<cache>/zoo-table.json`` (``$XDG_CACHE_HOME/dlasearch``, else ~/.cache/dlasearch)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "dlasearch" / "zoo-table.json"


def _row(name: str, g: IR) -> dict:
    with torch.device("meta"):  # shapes only: no weight init and no arithmetic
        m = to_module(g, name=name)
    return {
        "name": name,
        "params": measure.params(m),
        "MACs@224 (G)": round(measure.macs(m, (1, 3, 224, 224)) / 1e9, 3),
        "MACs@32 (M)": round(measure.macs(m, (1, 3, 32, 32)) / 1e6, 1),
        "blocks": len(g.of_kind("block")),
        "aggregation nodes": len(g.of_kind("aggregate")),
    }


def table(models=None, cache: bool = True):
    """A pandas table of zoo models: params, MACs at 224 and 32, blocks, aggregation nodes.

    Counting takes seconds per model, so rows are cached by IR fingerprint and torch version (a
    changed architecture or counter is recounted); an unwritable cache only costs the recount.
    """
    import pandas as pd  # heavy: only `dlasearch zoo` pays for it

    path = _cache_file()
    try:
        stored = json.loads(path.read_text()) if cache else {}
    except (OSError, ValueError):
        stored = {}
    rows, changed = [], False
    for name in models or names():
        g = ir(name)
        key = f"{fingerprint(g)}/{torch.__version__}"
        if not isinstance(stored.get(key), dict):
            stored[key], changed = _row(name, g), True
        rows.append({**stored[key], "name": name})
    if cache and changed:
        try:
            write_atomic(path, json.dumps(stored, indent=1))
        except OSError:
            pass
    return pd.DataFrame(rows)
