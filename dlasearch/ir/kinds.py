"""The node kinds: everything about one kind of operation lives in one class.

Each kind declares its attributes, arity and parameter roles, its shape rule (channels and
symbolic resolution from its inputs'), its lowering to fx nodes and how a diagram draws it.
The passes, the compiler and the renderer dispatch on ``KINDS[kind]``, the way torch.fx's
``Interpreter`` dispatches on ``node.op``, so a new kind is added here and nowhere else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from dlasearch.errors import IRError
from dlasearch.ir import resolution
from dlasearch.ir.fusion import FUSIONS

__all__ = ["Attr", "Kind", "KINDS", "BLOCK_TYPES", "FUSIONS", "ORDERS", "UPSAMPLE_MODES", "conv_layer", "bilinear_"]

BLOCK_TYPES = ("basic", "bottleneck", "bottleneckx")
ORDERS = ("conv_bn_act", "act_conv_bn")  # DLA's post-activation unit | BiFPN's and NAS-FPN's pre-activation
UPSAMPLE_MODES = ("bilinear", "nearest")


@dataclass(frozen=True)
class Attr:
    """One attribute of a kind: type, default, and the rule a value must satisfy."""
    type: type | tuple
    default: Any = None
    required: bool = False
    check: Callable[[Any], bool] | None = None
    allowed: str = ""
    choices: tuple = ()  # named values: a typo gets a "did you mean" hint
    # Added after fingerprints were published: at its default it is left out of the fingerprint
    # label, so every architecture that does not use it keeps its hash.
    implicit: bool = False


def _choice(default: str, choices) -> Attr:
    """A named-value attribute added after fingerprints were published (hence implicit)."""
    return Attr(str, default, check=lambda v: v in choices, allowed=" | ".join(choices), choices=tuple(choices),
                implicit=True)


def _pos(v):
    return v >= 1


def _odd(v):
    return v >= 1 and v % 2 == 1


def _conv_bn_params(cin: int, cout: int, k: int, groups: int = 1) -> int:
    return cin // groups * cout * k * k + 2 * cout


OUT = Attr(int, required=True, check=_pos, allowed="an int >= 1")
STRIDE = Attr(int, 1, check=_pos, allowed="an int >= 1")


def conv_layer(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    """A 'same'-padded conv with He init on fan-out, as the original DLA (n = k*k*out, groups ignored)."""
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=bias)
    conv.weight.data.normal_(0, math.sqrt(2.0 / (k * k * cout)))
    return conv


def bilinear_(up: nn.ConvTranspose2d) -> None:
    """Fill a depthwise transposed conv with bilinear interpolation weights (as the original DLA)."""
    w = up.weight.data
    f = math.ceil(w.size(2) / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    for i in range(w.size(2)):
        for j in range(w.size(3)):
            w[0, 0, i, j] = (1 - math.fabs(i / f - c)) * (1 - math.fabs(j / f - c))
    for ch in range(1, w.size(0)):
        w[ch, 0, :, :] = w[0, 0, :, :]


class Kind:
    """Base of the kinds. ``doc`` is the one-line meaning shown in docs and errors."""
    name = ""
    doc = ""
    arity: tuple[int, int | None] = (1, 1)
    attrs: dict[str, Attr] = {}
    roles: tuple[str, ...] = ()
    style: dict[str, str] = {}

    def node_roles(self, d: dict) -> tuple[str, ...]:
        """The parameter-holding roles of a node with attributes ``d``."""
        return self.roles

    def params(self, d: dict, chs: list[int]) -> int:
        """Trainable parameters of a node with input channels ``chs``, without building it (budgets)."""
        return 0

    def explicit(self, d: dict) -> dict:
        """``d`` less the implicit attributes at their default: what printing and JSON need to show, so
        networks that do not use a later attribute read (and hash) as they did before it existed."""
        out = {}
        for k, v in d.items():
            a = self.attrs.get(k)
            if a is None or not (a.implicit and type(v) is type(a.default) and v == a.default):
                out[k] = v
        return out

    def label(self, d: dict) -> dict:
        """What a fingerprint hashes: the kind and explicit attributes; module names are not architecture."""
        out = self.explicit(d)
        out.pop("modules", None)
        return out

    def node_style(self, d: dict) -> dict:
        """Graphviz attributes of a node with attributes ``d`` (a mode may change the look)."""
        return self.style

    def zero_roles(self, d: dict) -> tuple[str, ...]:
        """The roles ``init=zero-last`` starts at zero: a residual branch's last norm, the classifier."""
        return ()

    def shape(self, n, d: dict, ins: list[tuple], names: list) -> tuple:
        """(channels, resolution) of node ``n`` from its inputs'; raises IRError on a mismatch."""
        return ins[0]

    def lower(self, lo, n, d: dict, ins: list, chs: list[int], paths: dict[str, str]):
        """Emit the fx nodes of node ``n`` through the lowering ``lo``; return its value."""
        raise NotImplementedError(self.name)

    def text(self, ir, n, d: dict) -> str:
        """The operation as a diagram shows it (one or two short lines)."""
        return self.name

    def short_text(self, ir, n, d: dict) -> str:
        """The label of a compact, paper-style diagram."""
        return self.text(ir, n, d)


def _stride_text(d: dict) -> str:
    return f" /{d['stride']}" if d.get("stride", 1) > 1 else ""


class Input(Kind):
    name, doc, arity = "input", "the image batch (N, channels, H, W)", (0, 0)
    attrs = {"channels": Attr(int, 3, check=_pos, allowed="an int >= 1")}
    style = {"shape": "oval", "fillcolor": "#f0f0f0"}

    def shape(self, n, d, ins, names):
        return d["channels"], ()

    def lower(self, lo, n, d, ins, chs, paths):
        return lo.g.placeholder("x")

    def text(self, ir, n, d):
        return f"input\n{d['channels']} ch"


class Conv(Kind):
    name, doc = "conv", "k x k conv (no bias) + BatchNorm + ReLU, with stride"
    attrs = {"out": OUT, "kernel": Attr(int, 3, check=_odd, allowed="an odd int >= 1"), "stride": STRIDE,
             "relu": Attr(bool, True, allowed="true or false")}
    roles = ("conv", "bn")
    style = {"shape": "box", "fillcolor": "#deebf7"}

    def shape(self, n, d, ins, names):
        return d["out"], resolution.normalize(ins[0][1] + (("d", d["stride"]),))

    def params(self, d, chs):
        return _conv_bn_params(chs[0], d["out"], d["kernel"])

    def lower(self, lo, n, d, ins, chs, paths):
        return lo.conv_bn(paths, ins[0], chs[0], d["out"], d["kernel"], d["stride"], relu=d["relu"], final=True)

    def text(self, ir, n, d):
        return f"conv {d['kernel']}x{d['kernel']} {d['out']}{_stride_text(d)}"


class Block(Kind):
    name, doc, arity = "block", "residual block; input 0 is x, optional input 1 the residual (default x)", (1, 2)
    attrs = {"type": Attr(str, "basic", check=lambda v: v in BLOCK_TYPES, allowed=" | ".join(BLOCK_TYPES)),
             "out": OUT, "stride": STRIDE, "cardinality": Attr(int, 32, check=_pos, allowed="an int >= 1")}
    roles = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")
    style = {"shape": "box", "style": "rounded,filled", "fillcolor": "#9ecae1"}

    def node_roles(self, d):
        return self.roles[:4] if d["type"] == "basic" else self.roles

    def zero_roles(self, d):
        return self.node_roles(d)[-1:]  # the branch starts as zero: the block is the identity

    def params(self, d, chs):
        out = d["out"]
        if d["type"] == "basic":
            return _conv_bn_params(chs[0], out, 3) + _conv_bn_params(out, out, 3)
        card = d["cardinality"] if d["type"] == "bottleneckx" else 1
        inner = out * d["cardinality"] // 32 if d["type"] == "bottleneckx" else out // 2
        return (_conv_bn_params(chs[0], inner, 1) + _conv_bn_params(inner, inner, 3, card)
                + _conv_bn_params(inner, out, 1))

    def shape(self, n, d, ins, names):
        out = d["out"]
        if d["type"] == "bottleneckx":
            inner = out * d["cardinality"] // 32
            if (out * d["cardinality"]) % 32 or inner < d["cardinality"] or inner % d["cardinality"]:
                raise IRError(f"node {n!r} (block bottleneckx): cardinality={d['cardinality']} does not "
                              f"divide the inner width out*cardinality/32 for out={out}; choose out a "
                              f"multiple of 32 (or a cardinality that divides it)")
        if d["type"] == "bottleneck" and out < 2:
            raise IRError(f"node {n!r} (block bottleneck): out={out} too small; expected >= 2")
        res = resolution.normalize(ins[0][1] + (("d", d["stride"]),))
        rc, rr = ins[-1]
        if rc != out or rr != res:
            raise IRError(f"node {n!r} (block): residual {names[-1]!r} has {rc} channels at "
                          f"{resolution.text(rr)}, expected {out} channels at {resolution.text(res)} "
                          f"(add a downsample/project node and pass it as input 1)")
        return out, res

    def lower(self, lo, n, d, ins, chs, paths):
        x, out, s = ins[0], d["out"], d["stride"]
        if d["type"] == "basic":
            y = lo.conv_bn(paths, x, chs[0], out, 3, s, roles=("conv1", "bn1"))
            y = lo.conv_bn(paths, y, out, out, 3, 1, relu=False, roles=("conv2", "bn2"))
        else:
            card = d["cardinality"] if d["type"] == "bottleneckx" else 1
            inner = out * d["cardinality"] // 32 if d["type"] == "bottleneckx" else out // 2
            y = lo.conv_bn(paths, x, chs[0], inner, 1, roles=("conv1", "bn1"))
            y = lo.conv_bn(paths, y, inner, inner, 3, s, groups=card, roles=("conv2", "bn2"))
            y = lo.conv_bn(paths, y, inner, out, 1, relu=False, roles=("conv3", "bn3"))
        y = lo.fn(torch.add, (y, ins[-1]))
        return lo.fn(torch.relu, (y,), final=True)

    def text(self, ir, n, d):
        return f"{d['type']} {d['out']}{_stride_text(d)}"

    def short_text(self, ir, n, d):
        return f"{d['out']}{_stride_text(d)}"


class Aggregate(Kind):
    name, arity = "aggregate", (2, None)
    doc = ("aggregation node: merge inputs by `mode`, then a k x k conv unit (conv, BN, ReLU; pre-activation "
           "with order=act_conv_bn; depthwise+pointwise with separable) with optional residual add of input "
           "`residual`; conv=false keeps the merge alone (no parameters unless mode=wsum), relu=true then "
           "adds a ReLU (HRNet's fusion)")
    attrs = {"out": OUT, "kernel": Attr(int, 1, check=_odd, allowed="an odd int >= 1"),
             "residual": Attr((int, type(None)), None, allowed="null or an input position"),
             "mode": _choice("concat", FUSIONS), "order": _choice("conv_bn_act", ORDERS),
             "separable": Attr(bool, False, allowed="true or false", implicit=True),
             "conv": Attr(bool, True, allowed="true or false", implicit=True),
             "relu": Attr(bool, False, allowed="true or false", implicit=True)}  # conv=false: HRNet's ReLU(sum)
    roles = ("conv", "bn")
    style = {"shape": "ellipse", "fillcolor": "#a1d99b"}
    _UNIT = ("kernel", "order", "separable", "residual")  # meaningless without the conv unit

    def node_roles(self, d):
        fuse = FUSIONS.get(d.get("mode"), FUSIONS["concat"]).roles
        if not d.get("conv", True):
            return fuse
        return fuse + (("dw",) if d.get("separable") else ()) + self.roles

    def params(self, d, chs):
        fuse = FUSIONS[d["mode"]]
        total = fuse.params(chs)
        if d["conv"]:
            cin, k = fuse.channels(None, chs, chs), d["kernel"]
            total += (cin * k * k + _conv_bn_params(cin, d["out"], 1)) if d["separable"] else \
                _conv_bn_params(cin, d["out"], k)
        return total

    def shape(self, n, d, ins, names):
        r0 = ins[0][1]
        for (_, r), u in zip(ins, names):
            if r != r0:
                raise IRError(f"node {n!r} (aggregate): input {u!r} is at resolution {resolution.text(r)} but "
                              f"input {names[0]!r} is at {resolution.text(r0)}; inputs must match "
                              f"(downsample or upsample first)")
        merged = FUSIONS[d["mode"]].channels(n, [c for c, _ in ins], names)
        if not d["conv"]:
            for k in self._UNIT:
                if d[k] != self.attrs[k].default:
                    raise IRError(f"node {n!r} (aggregate): {k}={d[k]!r} needs conv=true; conv=false only merges")
            if d["out"] != merged:
                raise IRError(f"node {n!r} (aggregate): conv=false outputs the {merged} merged channels "
                              f"(mode={d['mode']}), but out={d['out']}")
        elif d["relu"]:
            raise IRError(f"node {n!r} (aggregate): relu=True needs conv=false (with the conv unit, order places "
                          f"its ReLU)")
        res_i = d["residual"]
        if res_i is not None:
            if not 0 <= res_i < len(ins):
                raise IRError(f"node {n!r} (aggregate): residual={res_i} is not an input position "
                              f"(0..{len(ins) - 1})")
            if ins[res_i][0] != d["out"]:
                raise IRError(f"node {n!r} (aggregate): residual input {names[res_i]!r} has "
                              f"{ins[res_i][0]} channels, expected out={d['out']}")
        return d["out"], r0

    def lower(self, lo, n, d, ins, chs, paths):
        fuse = FUSIONS[d["mode"]]
        y = fuse.lower(lo, paths, ins, final=not (d["conv"] or d["relu"]))
        if not d["conv"]:
            return lo.fn(torch.relu, (y,), final=True) if d["relu"] else y
        pre = d["order"] == "act_conv_bn"
        if pre:
            y = lo.fn(torch.relu, (y,))
        y = lo.conv_bn(paths, y, fuse.channels(n, chs, chs), d["out"], d["kernel"], relu=False,
                       dw="dw" if d["separable"] else None)
        if d["residual"] is not None:
            y = lo.fn(torch.add, (y, ins[d["residual"]]), final=pre)
        return y if pre else lo.fn(torch.relu, (y,), final=True)

    def text(self, ir, n, d):
        mode = "" if d["mode"] == "concat" else f"{d['mode']} "
        if not d["conv"]:
            return f"{mode or 'concat '}{ir.in_degree(n)}" + ("\nrelu" if d["relu"] else "")
        kern = f" {d['kernel']}x{d['kernel']}" if d["kernel"] != 1 else ""
        sep = " sep" if d["separable"] else ""
        pre = " pre-act" if d["order"] == "act_conv_bn" else ""
        res = " +res" if d["residual"] is not None else ""
        return f"{mode}{ir.in_degree(n)} -> {d['out']}{sep}{kern}{pre}{res}"

    def node_style(self, d):
        style = {**self.style, **FUSIONS[d["mode"]].style}
        return style if d["conv"] else {**style, "shape": "circle", "fontsize": "9", "margin": "0"}


class Downsample(Kind):
    name, doc = "downsample", "max-pool, kernel = stride = factor (ceil mode: any size works)"
    attrs = {"factor": Attr(int, 2, check=lambda v: v >= 2, allowed="an int >= 2")}
    style = {"shape": "invtriangle", "fillcolor": "#fdd0a2", "fontsize": "9", "margin": "0"}

    def shape(self, n, d, ins, names):
        return ins[0][0], resolution.normalize(ins[0][1] + (("d", d["factor"]),))

    def lower(self, lo, n, d, ins, chs, paths):
        f = d["factor"]
        return lo.fn(F.max_pool2d, (ins[0], f, f), {"ceil_mode": True}, final=True)

    def text(self, ir, n, d):
        return f"pool /{d['factor']}"


class Project(Kind):
    name, doc = "project", "1x1 conv (no bias) + BatchNorm, no ReLU"
    attrs = {"out": OUT}
    roles = ("conv", "bn")
    style = {"shape": "parallelogram", "fillcolor": "#dadaeb", "fontsize": "9", "margin": "0"}

    def shape(self, n, d, ins, names):
        return d["out"], ins[0][1]

    def params(self, d, chs):
        return _conv_bn_params(chs[0], d["out"], 1)

    def lower(self, lo, n, d, ins, chs, paths):
        return lo.conv_bn(paths, ins[0], chs[0], d["out"], 1, relu=False)

    def text(self, ir, n, d):
        return f"proj {d['out']}"


# Sizes at which a crop to a size reference is checked: the upsampled map must never be smaller.
_PROBE_SIZES = (1, 2, 3, 5, 7, 31, 32, 33, 63, 100, 224, 225)


class Upsample(Kind):
    name, arity = "upsample", (1, 2)
    doc = ("x factor: depthwise transposed conv initialised to bilinear (learnable or fixed), or fixed nearest "
           "(mode=nearest, FPN); optional input 1 is a size reference the result is cropped to")
    attrs = {"factor": Attr(int, 2, check=lambda v: v >= 2 and v % 2 == 0, allowed="an even int >= 2"),
             "learnable": Attr(bool, True, allowed="true or false"), "mode": _choice("bilinear", UPSAMPLE_MODES)}
    roles = ("up",)
    style = {"shape": "triangle", "fillcolor": "#fdae6b", "fontsize": "9", "margin": "0"}

    def node_roles(self, d):
        return self.roles if d.get("mode", "bilinear") == "bilinear" else ()

    def params(self, d, chs):
        return chs[0] * (2 * d["factor"]) ** 2 if d["mode"] == "bilinear" and d["learnable"] else 0

    def label(self, d):
        lab = super().label(d)
        if d["mode"] == "nearest":  # nearest has no weights: learnable means nothing there
            lab.pop("learnable", None)
        return lab

    def shape(self, n, d, ins, names):
        res = resolution.normalize(ins[0][1] + (("u", d["factor"]),))
        if len(ins) == 2:
            ref = ins[1][1]
            if any(resolution.size(res, s) < resolution.size(ref, s) for s in _PROBE_SIZES):
                raise IRError(f"node {n!r} (upsample): upsampled size {resolution.text(res)} can be smaller "
                              f"than the size reference {names[1]!r} at {resolution.text(ref)}")
            res = ref
        return ins[0][0], res

    def lower(self, lo, n, d, ins, chs, paths):
        c, f, crop = chs[0], d["factor"], len(ins) == 2
        if d["mode"] == "nearest":
            y = lo.fn(F.interpolate, (ins[0],), {"scale_factor": float(f), "mode": "nearest"}, final=not crop)
        else:
            up = nn.ConvTranspose2d(c, c, 2 * f, stride=f, padding=f // 2, groups=c, bias=False)
            bilinear_(up)
            up.weight.requires_grad_(d["learnable"])
            y = lo.mod(paths["up"], up, ins[0])
        if crop:
            for dim in (2, 3):
                size = lo.g.call_method("size", (ins[1], dim))
                y = lo.fn(torch.narrow, (y, dim, 0, size), final=dim == 3)
        return y

    def text(self, ir, n, d):
        if d["mode"] == "nearest":
            return f"up x{d['factor']} nearest"
        return f"up x{d['factor']}" + ("" if d["learnable"] else " fixed")

    def node_style(self, d):
        return self.style if d["mode"] == "bilinear" else {**self.style, "fillcolor": "#fdd0a2"}


class Head(Kind):
    name = "head"
    doc = ("classifier as a 1x1 conv with bias; pool=true adds global average pooling "
           "and returns (N, classes), pool=false returns per-pixel logits")
    attrs = {"classes": Attr(int, required=True, check=_pos, allowed="an int >= 1"),
             "pool": Attr(bool, True, allowed="true or false")}
    roles = ("fc",)
    style = {"shape": "house", "fillcolor": "#fc9272"}

    def zero_roles(self, d):
        return self.roles  # every class starts equally likely: the first loss is ln(classes)

    def shape(self, n, d, ins, names):
        return d["classes"], resolution.POOLED if d["pool"] else ins[0][1]

    def params(self, d, chs):
        return chs[0] * d["classes"] + d["classes"]

    def lower(self, lo, n, d, ins, chs, paths):
        y = ins[0]
        if d["pool"]:
            y = lo.g.call_method("mean", (y, (2, 3)), {"keepdim": True})
        y = lo.mod(paths["fc"], conv_layer(chs[0], d["classes"], 1, bias=True), y)
        return lo.g.call_method("flatten", (y, 1)) if d["pool"] else y

    def text(self, ir, n, d):
        return f"fc {d['classes']}" + (" pooled" if d["pool"] else " per-pixel")


class Output(Kind):
    name, doc = "output", "a graph output; `index` orders several outputs"
    attrs = {"index": Attr(int, 0, check=lambda v: v >= 0, allowed="an int >= 0")}
    style = {"shape": "oval", "fillcolor": "#f0f0f0", "peripheries": "2"}

    def lower(self, lo, n, d, ins, chs, paths):
        return ins[0]

    def text(self, ir, n, d):
        return "output" if d["index"] == 0 else f"output {d['index']}"


KINDS: dict[str, Kind] = {k.name: k for k in (Input(), Conv(), Block(), Aggregate(), Downsample(), Project(),
                                              Upsample(), Head(), Output())}
