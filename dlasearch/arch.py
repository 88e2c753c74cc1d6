"""Architectures given by name or file: a zoo name, a builder spec, or an IR JSON, and whether
they fit a dataset. Shared by ``train``, ``render`` and ``compare``.
"""
from __future__ import annotations

import json
from pathlib import Path

from dlasearch import ir as irmod, patterns, zoo
from dlasearch.errors import TrainError, did_you_mean

__all__ = ['total_stride', 'check_fit', 'read_arch', 'resolve_arch']


def total_stride(graph: irmod.IR) -> int:
    """How much the network shrinks its input: the input side over the smallest feature map's side."""
    probe = 1024
    sides = [min(s[1:]) for s in irmod.infer_shapes(graph, probe).values() if len(s) == 3]
    return max(1, probe // min(sides)) if sides else 1


def check_fit(graph: irmod.IR, data) -> None:
    """Raise ``TrainError`` unless ``graph`` fits ``data`` (a ``train.data.Dataset``, or anything with its
    ``name``, ``channels``, ``num_classes``, ``image_size`` and, for dense data, ``task``): channels, the
    kind of output (one logit vector per image for classification, per-pixel logits at the input size for
    segment/boundary data), classes, image size."""
    irmod.validate(graph)
    (inp,) = graph.of_kind("input")
    c = graph.nodes[inp]["channels"]
    if c != data.channels:
        raise TrainError(f"the architecture takes {c}-channel input but {data.name} images have "
                         f"{data.channels}; build it with in_channels={data.channels}")
    h, w = data.image_size
    s = total_stride(graph)
    if min(h, w) < s:
        raise TrainError(f"{h}x{w} images are too small for this architecture: it downsamples by {s}, "
                         f"so its deepest stage would see less than one pixel; set image_size={s} or larger")
    outs = graph.of_kind("output")
    shapes = irmod.infer_shapes(graph, (h, w))
    shape = shapes[outs[0]] if len(outs) == 1 else None
    name = graph.graph.get("name") or "the architecture"
    task = getattr(data, "task", "classify")
    if task == "classify":
        if shape is None or len(shape) != 1:
            raise TrainError(f"{name} predicts per pixel (or has several outputs), but {data.name} has one label "
                             f"per image: train a classifier on it (a zoo classifier such as dla34, or a spec with "
                             f"task: classify), or use dense data (mnist_seg, fashion_seg, folder, a mask .npz)")
    elif shape is None or len(shape) != 3 or tuple(shape[1:]) != (h, w):
        up = f"{name}up" if f"{name}up" in zoo.UP_MODELS else "a dense zoo model (" + ", ".join(zoo.UP_MODELS) + ")"
        what = "is a classifier" if shape is not None and len(shape) == 1 else \
            "does not give one per-pixel output at the input size"
        raise TrainError(f"{name} {what}; {data.name} is {task} data with a label per pixel: use {up} or a spec "
                         f"with task: segment")
    k = shape[0]
    if k != data.num_classes:
        raise TrainError(f"the architecture predicts {k} classes but {data.name} has {data.num_classes}"
                         f"{' (' + task + ')' if task != 'classify' else ''}; build it with "
                         f"num_classes={data.num_classes}")


def read_arch(arch: str) -> tuple[str, object]:
    """Parse and check ``arch`` without any data: ``("zoo", name)``, ``("spec", dict)`` or ``("ir", IR)``.

    Cheap, so a typo is reported before a dataset is downloaded.
    """
    if arch in zoo.MODELS or arch in zoo.UP_MODELS:
        return "zoo", arch
    path = Path(str(arch)).expanduser()
    if not path.is_file():
        hint = did_you_mean(arch, zoo.names())
        raise TrainError(f"arch={arch!r}: not a zoo model and not a file{hint}; use one of "
                         f"{', '.join(zoo.names())} or a path to a spec/IR .json (or spec .yaml)")
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

    Zoo models (classifiers and the dense ``*up`` models) and specs are built with the data's channels
    and classes; an IR is taken as it is, and ``check_fit`` reports a mismatch.
    """
    kind, obj = read_arch(arch)
    if kind == "ir":
        return obj
    if kind == "zoo":
        dense = obj in zoo.UP_MODELS
        c = zoo.MODELS[zoo.UP_MODELS[obj] if dense else obj]
        spec = zoo.spec(c.levels, c.channels, c.block, c.cardinality, c.residual_root, num_classes,
                        "segment" if dense else "classify")
        name = obj
    else:
        spec, name = {k: v for k, v in obj.items() if k != "name"}, obj["name"]
    return patterns.build({**spec, "in_channels": channels, "num_classes": num_classes}, name=name)
