"""Architectures given by name or file: a zoo name, a builder spec, or an IR JSON, and whether
they fit a dataset. Shared by ``train``, ``render`` and ``compare``.
"""
from __future__ import annotations

import json
from pathlib import Path

from dlasearch import ir as irmod
from dlasearch.errors import TrainError, did_you_mean
from dlasearch.train.data import Dataset

__all__ = ['total_stride', 'check_fit', 'read_arch', 'resolve_arch']


def total_stride(graph: irmod.IR) -> int:
    """How much the network shrinks its input: the input side over the smallest feature map's side."""
    probe = 1024
    sides = [min(s[1:]) for s in irmod.infer_shapes(graph, probe).values() if len(s) == 3]
    return max(1, probe // min(sides)) if sides else 1


def check_fit(graph: irmod.IR, data: Dataset) -> None:
    """Raise ``TrainError`` unless ``graph`` classifies ``data``: channels, classes, image size."""
    irmod.validate(graph)
    (inp,) = graph.of_kind("input")
    c = graph.nodes[inp]["channels"]
    if c != data.channels:
        raise TrainError(f"the architecture takes {c}-channel input but {data.name} images have "
                         f"{data.channels}; build it with in_channels={data.channels}")
    outs = graph.of_kind("output")
    heads = [graph.inputs(o)[0] for o in outs]
    if len(outs) != 1 or graph.nodes[heads[0]]["kind"] != "head" or not graph.nodes[heads[0]]["pool"]:
        raise TrainError("only classifiers (one output from a pooled head) can be trained on image "
                         "classification data; this architecture has per-pixel or several outputs")
    k = graph.nodes[heads[0]]["classes"]
    if k != data.num_classes:
        raise TrainError(f"the architecture predicts {k} classes but {data.name} has {data.num_classes}; "
                         f"build it with num_classes={data.num_classes}")
    s = total_stride(graph)
    h, w = data.image_size
    if min(h, w) < s:
        raise TrainError(f"{h}x{w} images are too small for this architecture: it downsamples by {s}, "
                         f"so its deepest stage would see less than one pixel; set image_size={s} or larger")


def read_arch(arch: str) -> tuple[str, object]:
    """Parse and check ``arch`` without any data: ``("zoo", name)``, ``("spec", dict)`` or ``("ir", IR)``.

    Cheap, so a typo is reported before a dataset is downloaded.
    """
    from dlasearch import patterns, zoo

    if arch in zoo.MODELS:
        return "zoo", arch
    if arch in zoo.UP_MODELS:
        raise TrainError(f"arch={arch!r} is a segmentation model; train classifiers: {', '.join(zoo.MODELS)}")
    path = Path(str(arch)).expanduser()
    if not path.is_file():
        hint = did_you_mean(arch, zoo.names())
        raise TrainError(f"arch={arch!r}: not a zoo model and not a file{hint}; use one of "
                         f"{', '.join(zoo.MODELS)} or a path to a spec/IR .json (or spec .yaml)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise TrainError(f"arch={arch!r}: cannot read it as a text spec/IR file ({e})") from None
    if path.suffix in (".yaml", ".yml"):
        from omegaconf import OmegaConf
        try:
            obj = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
        except Exception as e:
            raise TrainError(f"{path}: not valid YAML ({e})") from None
    else:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise TrainError(f"{path}: not valid JSON ({e})") from None
    if isinstance(obj, dict) and obj.get("format") == irmod.FORMAT:
        graph = irmod.from_json(text)
        graph.graph.setdefault("name", path.stem)
        return "ir", graph
    if not isinstance(obj, dict) or not ({"pattern", "stages"} & set(obj)):
        raise TrainError(f"{path}: neither a spec (a mapping with a 'pattern' or 'stages' key) nor an IR "
                         f"(format={irmod.FORMAT!r})")
    patterns.normalize({**obj, "in_channels": 1, "num_classes": 1})  # every other field checked now
    return "spec", {**obj, "name": path.stem}


def resolve_arch(arch: str, channels: int, num_classes: int) -> irmod.IR:
    """A zoo name, a builder spec (.json/.yaml) or an IR (.json) -> an IR for this data.

    Zoo models and specs are built with the data's channels and classes; an IR
    is taken as it is, and ``check_fit`` reports a mismatch.
    """
    from dlasearch import patterns, zoo

    kind, obj = read_arch(arch)
    if kind == "ir":
        return obj
    if kind == "zoo":
        c = zoo.MODELS[obj]
        spec = zoo.spec(c.levels, c.channels, c.block, c.cardinality, c.residual_root, num_classes)
        name = obj
    else:
        spec, name = {k: v for k, v in obj.items() if k != "name"}, obj["name"]
    return patterns.build({**spec, "in_channels": channels, "num_classes": num_classes}, name=name)
