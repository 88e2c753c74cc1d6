"""Convolutions on tiny maps as one dense matrix product: an exact rewrite for training on CPU.

Why: at 32 px a DLA's last stages run on 2x2 and 1x1 maps, and there oneDNN's convolution kernels
(the weight gradient above all) are slow: on an AMX CPU dla34 spent 60% of its convolution time
on such maps, bf16 slower than fp32 (docs/engine.md).  On a map of P <= 4 positions a convolution
is a linear map from P*Cin to P'*Cout numbers; its (P'*Cout, P*Cin) matrix is the kernel's taps
placed by a constant 0/1 selector, so the forward is one GEMM, the backward two, and the selector
GEMM that places the taps is a small fraction of their arithmetic (5% of a training step's for a
256-channel 3x3 convolution on 2x2 maps at batch 128).  The arithmetic is the convolution's (taps
that see only padding are skipped), so outputs and gradients equal the convolution's up to
rounding.

``lower_small_maps`` is an fx pass over the compiled IR: it finds, at a given input size, the
convolutions whose input map has at most ``MAX_POSITIONS`` positions and calls ``small_map_conv``
there instead of the module.  The result shares every parameter and buffer with the model, so
training it trains the model, and the model (what is saved, exported and counted) is unchanged.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["MAX_POSITIONS", "selector", "plan", "takes", "small_map_conv", "lower_small_maps"]

# Measured on the AMX CPU (docs/engine.md): dense wins 1.9-7.4x on 1x1 and 2x2 maps, loses 2-5x on 4x4 maps.
MAX_POSITIONS = 4


def selector(in_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """The (P'*P, kh*kw) 0/1 matrix whose row (o, i) picks the tap joining input position i to output
    position o (a zero row where none does), and the output map size."""
    (h, w), (kh, kw), (sh, sw), (ph, pw) = in_hw, kernel, stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    sel = torch.zeros(ho * wo, h * w, kh * kw)
    for oi in range(ho):
        for oj in range(wo):
            for ki in range(kh):
                for kj in range(kw):
                    ii, jj = oi * sh - ph + ki, oj * sw - pw + kj
                    if 0 <= ii < h and 0 <= jj < w:
                        sel[oi * wo + oj, ii * w + jj, ki * kw + kj] = 1.0
    return sel.reshape(ho * wo * h * w, kh * kw), (ho, wo)


def plan(in_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
         padding: tuple[int, int]) -> tuple[torch.Tensor | None, tuple[int, int]]:
    """``small_map_conv``'s ``sel`` and ``out_hw`` for a convolution: no selector for a 1x1 stride-1
    unpadded kernel (already a GEMM over the positions), else ``selector``'s."""
    if tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0):
        return None, tuple(in_hw)
    return selector(in_hw, kernel, stride, padding)


def takes(m: nn.Module, in_hw: tuple[int, int], max_positions: int = MAX_POSITIONS) -> bool:
    """Whether the rewrite takes module ``m`` called on maps of ``in_hw``: a plain zero-padded Conv2d
    (groups 1, dilation 1) on at most ``max_positions`` positions."""
    return (type(m) is nn.Conv2d and m.groups == 1 and m.dilation == (1, 1) and m.padding_mode == "zeros"
            and not isinstance(m.padding, str) and in_hw[0] * in_hw[1] <= max_positions)


def small_map_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sel: torch.Tensor | None,
                   out_hw: tuple[int, int]) -> torch.Tensor:
    """``F.conv2d`` of ``x`` (N, Cin, H, W) as a dense GEMM, with ``sel`` and ``out_hw`` from ``plan``.
    The output keeps the input's memory format."""
    n, ci, h, w = x.shape
    co = weight.shape[0]
    ho, wo = out_hw
    xf = x.permute(0, 2, 3, 1)  # positions-major, channels inner: a view of a channels_last input
    if sel is None:
        y = F.linear(xf.reshape(n * h * w, ci), weight.reshape(co, ci))
    else:
        p, q = h * w, ho * wo
        m = (sel @ weight.reshape(co * ci, -1).t()).view(q, p, co, ci).permute(0, 2, 1, 3).reshape(q * co, p * ci)
        y = F.linear(xf.reshape(n, p * ci), m)
    y = y.view(n, ho, wo, co).permute(0, 3, 1, 2)
    if bias is not None:
        y = y + bias.view(1, co, 1, 1).to(y.dtype)
    if x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous()
    return y


def lower_small_maps(gm: fx.GraphModule, input_shape: tuple[int, ...],
                     max_positions: int = MAX_POSITIONS) -> tuple[fx.GraphModule, list[str]]:
    """A copy of ``gm`` whose convolutions on maps of at most ``max_positions`` positions (at
    ``input_shape``, e.g. (3, 32, 32)) run as ``small_map_conv``; ``gm`` itself is untouched and shares
    its parameters and buffers with the copy.  Returns the copy and the rewritten modules' names
    (empty list: ``gm`` itself is returned)."""
    maps = _input_maps(gm, input_shape)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    consts: dict[str, torch.Tensor] = {}
    lowered: list[str] = []
    for node in gm.graph.nodes:
        mod = gm.get_submodule(node.target) if node.op == "call_module" else None
        seen = maps.get(node.target, set()) if mod is not None else set()
        hw = next(iter(seen)) if len(seen) == 1 else None  # called once, or always on one map size
        if hw is None or not takes(mod, hw, max_positions):
            env[node] = graph.node_copy(node, lambda a: env[a])
            continue
        sel, out_hw = plan(hw, mod.kernel_size, mod.stride, mod.padding)
        sel_node = None
        if sel is not None:
            name = f"_sel_{len(consts)}"
            consts[name] = sel.to(mod.weight.device)
            sel_node = graph.get_attr(name)
        w = graph.get_attr(f"{node.target}.weight")
        b = graph.get_attr(f"{node.target}.bias") if mod.bias is not None else None
        env[node] = graph.call_function(small_map_conv, (env[node.args[0]], w, b, sel_node, out_hw))
        env[node].name = node.name
        lowered.append(node.target)
    if not lowered:
        return gm, []
    graph.lint()
    root = {n.target: consts[n.target] if n.target in consts else operator.attrgetter(n.target)(gm)
            for n in graph.nodes if n.op in ("call_module", "get_attr")}
    out = fx.GraphModule(root, graph, class_name=type(gm).__name__)
    for name, t in consts.items():  # buffers, so that .to(device) moves them
        delattr(out, name)
        out.register_buffer(name, t, persistent=False)
    out.train(gm.training)
    return out, lowered


def _input_maps(gm: nn.Module, input_shape) -> dict[str, set[tuple[int, int]]]:
    """The input map sizes each Conv2d of ``gm`` sees in a forward of one zero image (eval mode, no grad:
    no BatchNorm statistic moves)."""
    seen: dict[str, set] = {}
    hooks = [m.register_forward_pre_hook(lambda _, a, name=name: seen.setdefault(name, set()).add(
        tuple(a[0].shape[2:]))) for name, m in gm.named_modules() if type(m) is nn.Conv2d]
    was_training = gm.training
    p = next(gm.parameters(), None)
    try:
        with torch.no_grad():
            gm.eval()(torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu"))
    finally:
        gm.train(was_training)
        for h in hooks:
            h.remove()
    return seen
