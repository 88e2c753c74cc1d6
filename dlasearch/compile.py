"""IR -> ``torch.fx.GraphModule``: straight-line generated code, no graph walking at run time.

Each IR node lowers to a few fx nodes (module calls for convs and norms,
function calls for ReLU, cat, pooling).  fx's code generator frees every
intermediate after its last use, and ``print(model.code)`` shows the forward.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import fx, nn

from dlasearch.ir import IR, module_paths, validate


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


def _conv(cin, cout, k, stride=1, groups=1, bias=False) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=bias)
    # He init on fan-out, as the original DLA (n = k*k*out_channels, groups ignored)
    conv.weight.data.normal_(0, math.sqrt(2.0 / (k * k * cout)))
    return conv


class _Lowering:
    def __init__(self, ir: IR):
        self.ir = ir
        self.g = fx.Graph()
        self.mods: dict[str, nn.Module] = {}
        self.env: dict = {}
        self.ch: dict = {}
        self.cur = ""

    def fn(self, target, args, kwargs=None, final=False):
        """A function call; ``final=True`` names it after the IR node it completes."""
        return self.g.create_node("call_function", target, args, kwargs or {}, name=self.cur if final else None)

    def mod(self, path: str, module: nn.Module, x):
        self.mods[path] = module
        return self.g.call_module(path, (x,))

    def conv_bn(self, paths, x, cin, cout, k, stride=1, groups=1, relu=True, roles=("conv", "bn"), final=False):
        y = self.mod(paths[roles[0]], _conv(cin, cout, k, stride, groups), x)
        y = self.mod(paths[roles[1]], nn.BatchNorm2d(cout), y)
        return self.fn(torch.relu, (y,), final=final) if relu else y

    def block(self, n, d, x, residual, cin):
        p = module_paths(self.ir, n)
        out, s = d["out"], d["stride"]
        if d["type"] == "basic":
            y = self.conv_bn(p, x, cin, out, 3, s, roles=("conv1", "bn1"))
            y = self.conv_bn(p, y, out, out, 3, 1, relu=False, roles=("conv2", "bn2"))
        else:
            card = d["cardinality"] if d["type"] == "bottleneckx" else 1
            inner = out * d["cardinality"] // 32 if d["type"] == "bottleneckx" else out // 2
            y = self.conv_bn(p, x, cin, inner, 1, roles=("conv1", "bn1"))
            y = self.conv_bn(p, y, inner, inner, 3, s, groups=card, roles=("conv2", "bn2"))
            y = self.conv_bn(p, y, inner, out, 1, relu=False, roles=("conv3", "bn3"))
        y = self.fn(torch.add, (y, residual))
        return self.fn(torch.relu, (y,), final=True)

    def lower(self, n):
        ir, g = self.ir, self.g
        d = ir.nodes[n]
        kind = d["kind"]
        ins = [self.env[u] for u in ir.inputs(n)]
        chs = [self.ch[u] for u in ir.inputs(n)]
        p = module_paths(ir, n)
        if kind == "input":
            self.ch[n] = d["channels"]
            return g.placeholder("x")
        if kind == "conv":
            self.ch[n] = d["out"]
            return self.conv_bn(p, ins[0], chs[0], d["out"], d["kernel"], d["stride"], relu=d["relu"], final=True)
        if kind == "block":
            self.ch[n] = d["out"]
            return self.block(n, d, ins[0], ins[-1], chs[0])
        if kind == "aggregate":
            self.ch[n] = d["out"]
            y = self.fn(torch.cat, (ins, 1))
            y = self.conv_bn(p, y, sum(chs), d["out"], d["kernel"], relu=False)
            if d["residual"] is not None:
                y = self.fn(torch.add, (y, ins[d["residual"]]))
            return self.fn(torch.relu, (y,), final=True)
        if kind == "downsample":
            self.ch[n] = chs[0]
            f = d["factor"]
            return self.fn(F.max_pool2d, (ins[0], f, f), {"ceil_mode": True}, final=True)
        if kind == "project":
            self.ch[n] = d["out"]
            return self.conv_bn(p, ins[0], chs[0], d["out"], 1, relu=False)
        if kind == "upsample":
            c, f = chs[0], d["factor"]
            self.ch[n] = c
            up = nn.ConvTranspose2d(c, c, 2 * f, stride=f, padding=f // 2, groups=c, bias=False)
            bilinear_(up)
            up.weight.requires_grad_(d["learnable"])
            y = self.mod(p["up"], up, ins[0])
            if len(ins) == 2:
                for dim in (2, 3):
                    size = g.call_method("size", (ins[1], dim))
                    y = self.fn(torch.narrow, (y, dim, 0, size), final=dim == 3)
            return y
        if kind == "head":
            self.ch[n] = d["classes"]
            y = ins[0]
            if d["pool"]:
                y = g.call_method("mean", (y, (2, 3)), {"keepdim": True})
            fc = _conv(chs[0], d["classes"], 1, bias=True)
            y = self.mod(p["fc"], fc, y)
            return g.call_method("flatten", (y, 1)) if d["pool"] else y
        if kind == "output":
            self.ch[n] = chs[0]
            return ins[0]
        raise AssertionError(kind)

    def run(self, name: str) -> fx.GraphModule:
        for n in self.ir.order():
            self.cur = re.sub(r"\W", "_", str(n))
            self.env[n] = self.lower(n)
        outs = sorted(self.ir.of_kind("output"), key=lambda o: self.ir.nodes[o]["index"])
        vals = [self.env[o] for o in outs]
        self.g.output(vals[0] if len(vals) == 1 else tuple(vals))
        self.g.lint()
        gm = fx.GraphModule(self.mods, self.g, class_name=name)
        gm.node_map = {n: v.name for n, v in self.env.items()}
        return gm


def compile(ir: IR, name: str | None = None) -> fx.GraphModule:
    """Build the torch module an IR describes; raises ``IRError`` if the IR is invalid.

    The result is a ``torch.fx.GraphModule`` (``print(model.code)`` shows its
    forward); ``model.ir`` keeps the IR it came from and ``model.node_map``
    names the fx node that holds each IR node's value.
    """
    ir = validate(ir)
    cls = name or ir.graph.get("name") or "Net"
    cls = "".join(ch if ch.isalnum() else "_" for ch in str(cls))
    if not cls[0].isalpha():
        cls = "Net_" + cls
    gm = _Lowering(ir).run(cls)
    gm.ir = ir
    return gm
