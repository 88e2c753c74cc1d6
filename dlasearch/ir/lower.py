"""IR -> ``torch.fx.GraphModule``: straight-line generated code, no graph walking at run time.

Each IR node lowers to a few fx nodes through its kind's ``lower`` (module calls for convs and
norms, function calls for ReLU, cat, pooling).  fx's code generator frees every intermediate
after its last use, and ``print(model.code)`` shows the forward.
"""
from __future__ import annotations

import re

import torch
from torch import fx, nn

from dlasearch.errors import IRError
from dlasearch.ir.graph import IR, module_paths
from dlasearch.ir.kinds import KINDS, conv_layer
from dlasearch.ir.passes import symbolic_shapes, validate

__all__ = ["to_module", "Lowering", "INITS"]

# original: the original DLA's He init (fan-out) everywhere.  zero-last: then the last norm of
# every residual branch and the classifier start at zero (Goyal et al. 2017): at init each block is
# the identity and the loss is ln(classes), whatever the depth of the chain or the class count.
INITS = ("original", "zero-last")


class Lowering:
    """The state of one lowering: the fx graph being built and the modules it calls."""

    def __init__(self, ir: IR):
        self.ir = ir
        self.g = fx.Graph()
        self.mods: dict[str, nn.Module] = {}
        self.env: dict = {}
        self.cur = ""

    def fn(self, target, args, kwargs=None, final=False):
        """A function call; ``final=True`` names it after the IR node it completes."""
        return self.g.create_node("call_function", target, args, kwargs or {}, name=self.cur if final else None)

    def mod(self, path: str, module: nn.Module, x):
        """Register ``module`` under ``path`` and call it on ``x``."""
        self.mods[path] = module
        return self.g.call_module(path, (x,))

    def param(self, path: str, value: torch.Tensor):
        """Register a bare parameter (initialised to ``value``) under ``path`` and read it."""
        self.mods[path] = nn.Parameter(value)
        return self.g.get_attr(path)

    def conv_bn(self, paths, x, cin, cout, k, stride=1, groups=1, relu=True, roles=("conv", "bn"), final=False,
                dw: str | None = None):
        """conv -> BatchNorm (-> ReLU), the modules named by ``paths[roles[i]]``.

        ``dw`` names the role of a depthwise k x k conv run first, making the conv a pointwise 1x1
        (a separable conv, as BiFPN's and MobileNet's: k*k*cin + cin*cout weights, not k*k*cin*cout).
        """
        if dw is not None:
            x = self.mod(paths[dw], conv_layer(cin, cin, k, stride, cin), x)
            k, stride = 1, 1
        y = self.mod(paths[roles[0]], conv_layer(cin, cout, k, stride, groups), x)
        y = self.mod(paths[roles[1]], nn.BatchNorm2d(cout), y)
        return self.fn(torch.relu, (y,), final=final) if relu else y

    def run(self, name: str) -> fx.GraphModule:
        """Lower every node in topological order; return the GraphModule named ``name``."""
        ir = self.ir
        channels = {n: c for n, (c, _) in symbolic_shapes(ir).items()}
        for n in ir.order():
            self.cur = re.sub(r"\W", "_", str(n))
            d, names = ir.nodes[n], ir.inputs(n)
            self.env[n] = KINDS[d["kind"]].lower(self, n, d, [self.env[u] for u in names],
                                                 [channels[u] for u in names], module_paths(ir, n))
        outs = sorted(ir.of_kind("output"), key=lambda o: ir.nodes[o]["index"])
        vals = [self.env[o] for o in outs]
        self.g.output(vals[0] if len(vals) == 1 else tuple(vals))
        self.g.lint()
        gm = fx.GraphModule(self.mods, self.g, class_name=name)
        gm.node_map = {n: v.name for n, v in self.env.items()}
        return gm


def to_module(ir: IR, name: str | None = None, init: str = "original", seed: int | None = None) -> fx.GraphModule:
    """Build the torch module an IR describes; raises ``IRError`` if the IR is invalid.

    ``init`` (one of ``INITS``) sets the initial weights; ``zero-last`` is what training from
    scratch uses by default, ``original`` what loading weights and zero-cost proxies expect.
    They are drawn from torch's global generator, or with ``seed`` from one seeded with it
    (the global state is left as it was): the same seed gives the same network.

    The result is a ``torch.fx.GraphModule`` (``print(model.code)`` shows its forward) named
    ``name`` (default: the IR's name); ``model.ir`` keeps the IR it came from and
    ``model.node_map`` names the fx node that holds each IR node's value.
    """
    ir = validate(ir)
    cls = name or ir.graph.get("name") or "Net"
    cls = "".join(ch if ch.isalnum() else "_" for ch in str(cls))
    if not cls[0].isalpha():
        cls = "Net_" + cls
    if init not in INITS:
        raise IRError(f"init={init!r}; allowed: {', '.join(INITS)}")
    if seed is None:
        gm = Lowering(ir).run(cls)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gm = Lowering(ir).run(cls)
    gm.ir = ir
    if init == "zero-last":
        _zero_last(gm, ir)
    return gm


def _zero_last(gm: fx.GraphModule, ir: IR) -> None:
    with torch.no_grad():
        for n, d in ir.nodes(data=True):
            paths = module_paths(ir, n)
            for role in KINDS[d["kind"]].zero_roles(d):
                m = gm.get_submodule(paths[role])
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
