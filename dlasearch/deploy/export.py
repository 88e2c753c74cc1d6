"""``dlasearch export``: hand a trained model to someone who does not have dlasearch.

Formats: ``py`` (a readable ``model.py`` with the straight-line fx forward, plus
``model.pt`` weights; only torch is needed), ``pt2`` (``torch.export`` program
with a dynamic batch dimension) and ``onnx`` (checked against torch with
onnxruntime at export time).  Every export writes a ``README.md`` saying what
goes in and how to load it.  Files are built in a temporary folder and moved
into place, so a failed export leaves the target as it was.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch

from dlasearch.errors import ExportError, pick
from dlasearch.files import explain, replace_dir, sibling_dir
from dlasearch import zoo
from dlasearch.deploy import checkpoint

__all__ = ['parse_formats', 'write_py', 'write_pt2', 'write_onnx', 'export', 'command']

FORMATS = ("py", "pt2", "onnx")
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
# the normalisation the published DLA models were trained with (ImageNet statistics)
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "image_size": [224, 224]}


def parse_formats(value) -> list[str]:
    return pick(value if isinstance(value, (list, tuple)) else str(value), list(FORMATS), "format", ExportError,
                example=",".join(FORMATS), note=" (comma-separated)")


def _check_onnx() -> None:
    missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise ExportError(f"format=onnx needs the onnx extra (missing: {', '.join(missing)}); install it with "
                          f"pip install 'dlasearch[onnx]' (or pip install {' '.join(ONNX_PACKAGES)})")


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"out={out}: is a file; give a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    held = sorted(p.name for p in out.iterdir())
    shown = f"{', '.join(held[:5])}{' ...' if len(held) > 5 else ''}"
    if not overwrite:
        raise ExportError(f"out={out}: exists and holds {shown}; pass overwrite=true to replace it, or choose "
                          f"another out=")
    if not (out / "export.json").is_file():  # overwrite replaces the folder whole: only ever an export
        raise ExportError(f"out={out}: holds {shown}, which is not a dlasearch export (no export.json), so "
                          f"overwrite=true will not replace it; choose another out=, or empty it")


# ------------------------------------------------------------------ py

def _ctor(m: torch.nn.Module) -> str:
    """The constructor call that rebuilds leaf module ``m`` (compiled models use only these three)."""
    if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
        args = (f"{m.in_channels}, {m.out_channels}, {m.kernel_size}, stride={m.stride}, padding={m.padding}, "
                f"groups={m.groups}, bias={m.bias is not None}")
        return f"nn.{type(m).__name__}({args})"
    if type(m) is torch.nn.BatchNorm2d:
        return f"nn.BatchNorm2d({m.num_features}, eps={m.eps}, momentum={m.momentum})"
    raise ExportError(f"format=py: cannot write a {type(m).__name__} module; only models built by dlasearch "
                      f"(Conv2d, ConvTranspose2d, BatchNorm2d) export as Python")


PY_TEMPLATE = '''"""{name}: a network exported by dlasearch. Needs only torch.

    import model
    net = model.load()                        # eval mode, weights from model.pt beside this file
    logits = net(model.preprocess(images))    # images: uint8 (N, {channels}, H, W) or floats in 0..1

Trained on {image_size[0]}x{image_size[1]} images normalised per channel with MEAN and STD below.
The forward is the code torch.fx generated for the architecture: one line per operation,
intermediates freed after their last use.
"""
import pathlib

import torch
import torch.nn.functional as F
from torch import nn

MEAN = {mean}
STD = {std}
IMAGE_SIZE = {image_size}
NUM_CLASSES = {classes}


def _parent(root, path):
    """The container of dotted ``path`` (made of plain modules where missing) and the last name."""
    *parents, leaf = path.split(".")
    for p in parents:
        if not hasattr(root, p):
            root.add_module(p, nn.Module())
        root = getattr(root, p)
    return root, leaf


def _put(root, path, module):
    """Register ``module`` at dotted ``path``, keeping checkpoint names."""
    parent, leaf = _parent(root, path)
    parent.add_module(leaf, module)


def _put_param(root, path, shape):
    """Register a parameter no layer owns (BiFPN's fusion weights) at ``path``; model.pt fills it."""
    parent, leaf = _parent(root, path)
    parent.register_parameter(leaf, nn.Parameter(torch.ones(shape)))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
{modules}
{frozen}
{forward}

def preprocess(images):
    """uint8 (0..255) or float (0..1) images -> the normalised batch the model was trained on."""
    x = torch.as_tensor(images)
    x = x.unsqueeze(0) if x.ndim == 3 else x
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if tuple(x.shape[2:]) != tuple(IMAGE_SIZE):
        shrink = x.shape[2] > IMAGE_SIZE[0] or x.shape[3] > IMAGE_SIZE[1]
        x = F.interpolate(x, size=IMAGE_SIZE, mode="bilinear", align_corners=False, antialias=shrink)
    mean = torch.tensor(MEAN, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def load(weights=None, device="cpu"):
    """The model with its trained weights (``model.pt`` beside this file unless ``weights``), in eval mode."""
    net = Model()
    path = pathlib.Path(weights) if weights else pathlib.Path(__file__).with_name("model.pt")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.to(device).eval()
'''


def write_py(model, pre: dict, classes, folder: Path) -> list[Path]:
    """``model.py`` (readable source) and ``model.pt`` (its state_dict) in ``folder``."""
    # a plain nn.Module is a dotted path's container (one may hold only a bare parameter): _put rebuilds it
    leaves = [(n, m) for n, m in model.named_modules()
              if n and not list(m.children()) and type(m) is not torch.nn.Module]
    owned = {f"{n}.{k}" for n, m in leaves for k, _ in m.named_parameters(recurse=False)}
    bare = [(n, tuple(p.shape)) for n, p in model.named_parameters() if n not in owned]  # wsum's weights
    modules = "\n".join([f"        _put(self, {n!r}, {_ctor(m)})" for n, m in leaves]
                         + [f"        _put_param(self, {n!r}, {shape})" for n, shape in bare])
    fixed = [n for n, p in model.named_parameters() if not p.requires_grad]
    frozen = (f"        for name in {fixed!r}:  # fixed bilinear upsampling\n"
              f"            self.get_parameter(name).requires_grad_(False)\n") if fixed else ""
    forward = "\n".join(("    " + line) if line.strip() else "" for line in model.code.strip("\n").splitlines())
    text = PY_TEMPLATE.format(name=model.checkpoint.get("name") or "model", channels=len(pre["mean"]),
                              image_size=tuple(pre["image_size"]), mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                              classes=classes, modules=modules, frozen=frozen, forward=forward)
    compile(text, "model.py", "exec")  # a syntax error here is a dlasearch bug: fail before writing
    (folder / "model.py").write_text(text)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _write_buffered(folder / "model.pt", lambda f: torch.save(sd, f))
    return [folder / "model.py", folder / "model.pt"]


def _write_buffered(path: Path, save) -> None:
    """``save(file)`` into memory, then the bytes to ``path``: torch's zip writer, writing to a file
    that fails (a full disk, a file-size limit), throws from its destructor and aborts the process
    (exit 134, C++ frames) before any handler runs; Python's own write raises an ``OSError``."""
    buf = io.BytesIO()
    save(buf)
    with open(path, "wb") as f:
        f.write(buf.getbuffer())


# ------------------------------------------------------------------ pt2 / onnx

def _example(pre: dict, channels: int) -> torch.Tensor:
    return torch.randn(2, channels, *pre["image_size"], generator=torch.Generator().manual_seed(0))


def write_pt2(model, x: torch.Tensor, folder: Path) -> list[Path]:
    batch = torch.export.Dim("batch", min=1, max=65536)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    _write_buffered(folder / "model.pt2", lambda f: torch.export.save(ep, f))
    return [folder / "model.pt2"]


def write_onnx(model, x: torch.Tensor, folder: Path, log=print) -> tuple[list[Path], float]:
    """``model.onnx`` plus its check: the largest |onnxruntime - torch| on a random batch."""
    import numpy as np
    import onnxruntime as ort

    path = folder / "model.onnx"
    batch = torch.export.Dim("batch", min=1, max=65536)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" notes concern ops DLA never uses
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=({0: batch},),
                          external_data=False, verbose=False)
    quiet.setLevel(level)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = torch.cat([x, x[:1] * 0.5])  # a batch size other than the example's: the batch dim is dynamic
    got = sess.run(None, {sess.get_inputs()[0].name: check.numpy()})
    with torch.no_grad():
        want = model(check)
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))
    return [path], diff


# ------------------------------------------------------------------ README + driver

def _readme(name: str, source: str, pre: dict, classes, channels: int, outputs: str, formats, diff) -> str:
    h, w = pre["image_size"]
    lines = [f"# {name}", "", f"Exported by dlasearch from `{source}`.", "",
             f"- Input: float32 `(N, {channels}, {h}, {w})`; N (the batch) may be any size.",
             f"- Normalisation: `x = (pixels / 255 - mean) / std` per channel, mean = {list(pre['mean'])}, "
             f"std = {list(pre['std'])}.",
             f"- Output: {outputs}.", f"- Classes: {classes}.", "", "## Load it", ""]
    if "py" in formats:
        lines += ["`model.py` + `model.pt` (needs only torch; `model.py` is the readable forward):", "", "```python",
                  "import sys; sys.path.insert(0, 'THIS_FOLDER')", "import model",
                  "net = model.load()                       # eval mode",
                  "logits = net(model.preprocess(images))   # uint8 images or floats in 0..1", "```", ""]
    if "pt2" in formats:
        lines += ["`model.pt2` (torch.export program; dynamic batch, fixed height and width):", "", "```python",
                  "import torch", "net = torch.export.load('model.pt2').module()", "logits = net(x)", "```", ""]
    if "onnx" in formats:
        lines += ["`model.onnx` (dynamic batch, fixed height and width; checked against torch with onnxruntime "
                  f"on CPU at export: max |difference| = {diff:.3g}):", "", "```python", "import onnxruntime as ort",
                  "sess = ort.InferenceSession('model.onnx', providers=['CPUExecutionProvider'])",
                  "logits = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]", "```", ""]
    return "\n".join(lines)


def export(model, formats, out, *, overwrite: bool = False, source: str = "", log=print) -> dict:
    """Write ``model`` (built by ``checkpoint.build`` or the zoo) in ``formats`` into folder ``out``."""
    formats = parse_formats(formats)
    out = Path(str(out)).expanduser()
    _check_target(out, overwrite)
    if "onnx" in formats:
        _check_onnx()
    info = getattr(model, "checkpoint", None) or {}
    pre = info.get("preprocess") or IMAGENET
    graph = model.ir
    (inp,) = graph.of_kind("input")
    channels = graph.nodes[inp]["channels"]
    heads = graph.of_kind("head")
    classes = graph.nodes[heads[0]]["classes"] if heads else None
    model = model.cpu().eval()
    x = _example(pre, channels)
    with torch.no_grad():
        y = model(x)
    outputs = (f"logits `{tuple(y.shape[1:])}` per image" if isinstance(y, torch.Tensor)
               else f"{len(y)} feature maps " + ", ".join(f"`{tuple(t.shape[1:])}`" for t in y))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_dir(out)
    written, diff = [], None
    try:
        if "py" in formats:
            written += write_py(model, pre, classes, tmp)
        if "pt2" in formats:
            written += write_pt2(model, x, tmp)
        if "onnx" in formats:
            files, diff = write_onnx(model, x, tmp, log)
            written += files
            log(f"onnx: onnxruntime vs torch on CPU, max |difference| = {diff:.3g}")
        name = info.get("name") or graph.graph.get("name") or "model"
        (tmp / "README.md").write_text(_readme(name, source, pre, classes, channels, outputs, formats, diff))
        (tmp / "export.json").write_text(json.dumps({"source": source, "formats": formats, "preprocess": pre,
                                                     "classes": classes, "onnx_max_diff": diff}, indent=1) + "\n")
        try:  # the whole folder: a previous export's other formats must not stay beside the new README
            replace_dir(tmp, out)
        except OSError as e:
            raise ExportError(f"out={out}: cannot replace it: {explain(e)}") from None
    except OSError as e:  # writing the files beside out, before out is touched
        raise ExportError(f"out={out}: cannot write the export beside it ({tmp.name}): {explain(e)}; "
                          f"{out} is as it was") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = {p.name: (out / p.name).stat().st_size for p in written}
    log(f"exported {', '.join(formats)} to {out}: " + ", ".join(f"{k} ({v / 2**20:.1f} MiB)" for k, v in files.items())
        + "; see README.md there")
    return {"out": str(out), "files": files, "onnx_max_diff": diff}


OPTIONS = ("from", "study", "trial", "storage", "artifacts", "format", "out", "overwrite", "weights", "num_classes")


def command(args: dict) -> int:
    """``dlasearch export from=<run folder | checkpoint | zoo name> | study=NAME trial=N format=... out=DIR``."""
    formats = parse_formats(args.get("format", "py,pt2"))
    if not isinstance(args.get("overwrite", False), bool):
        raise ExportError(f"overwrite={args['overwrite']!r}; expected true or false")
    src, study = args.get("from"), args.get("study")
    if (src is None) == (study is None):
        raise ExportError("give from=<run folder | checkpoint file | zoo name>, or study=NAME trial=N")
    if study is not None:
        if args.get("trial") is None:
            raise ExportError(f"study={study!r} needs trial=N")
        model = checkpoint.load(study=str(study), trial=int(args["trial"]), storage=args.get("storage"),
                                artifacts=args.get("artifacts"))
        source, default = f"study={study} trial={args['trial']}", f"{study}-trial{args['trial']}"
    elif str(src) in zoo.names():
        classes = args.get("num_classes")
        model = zoo.create(str(src), int(classes if classes is not None else 1000 if str(src) in zoo.MODELS else 19))
        if args.get("weights") is not None:
            note = checkpoint.load_weights(model, str(args["weights"]))
            if note:
                print(note)
        model.checkpoint = {"name": str(src), "preprocess": IMAGENET}
        source, default = str(src) + (f" with weights {args['weights']}" if args.get("weights") else
                                      " (random weights: pass weights=PATH for trained ones)"), str(src)
    else:
        if args.get("weights") is not None or "num_classes" in args:
            raise ExportError("weights= and num_classes= apply to zoo models only (from=dla34 weights=PATH); "
                              f"from={src!r} already holds its weights")
        model, _ = checkpoint.build(src)
        source, default = str(src), Path(str(src)).name.replace(".safetensors", "")
    export(model, formats, args.get("out") or Path("export") / default,
           overwrite=bool(args.get("overwrite", False)), source=source)
    return 0
