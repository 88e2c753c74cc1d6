"""Zero-cost proxies: scores of an untrained network that may predict its trained accuracy.

Each proxy follows its paper's definition and takes a compiled IR (``torch.fx.GraphModule``),
one batch of inputs and labels; none trains or changes the model (each works on a copy).

- ``grad_norm`` (Abdelfattah et al., 2021): sum over weight tensors of the L2 norm of dL/dθ.
- ``snip`` (Lee et al., 2019): connection sensitivity, Σ |θ ⊙ dL/dθ| over conv/linear weights.
- ``synflow`` (Tanaka et al., 2020): with every parameter replaced by |θ| and an all-ones input,
  R = Σ f(1); score Σ θ ⊙ dR/dθ over conv/linear weights (BatchNorm in eval mode, float64).
- ``naswot`` (Mellor et al., 2021): log|det K| of the kernel K = Σ_relu (c cᵀ + (1-c)(1-c)ᵀ) of
  the batch's binary ReLU codes c (K counts, for each pair of images, the units whose on/off
  state agrees).
- ``zen`` (Lin et al., 2021): log E‖f(x) - f(x + αε)‖ of the pre-pooling feature map with
  Gaussian weights and inputs, α = 0.01, plus Σ over BatchNorms of log √(mean batch variance).
- ``zico`` (Li et al., 2023): Σ over weight tensors of log(Σ_θ E|g_θ| / σ(g_θ)), mean and std
  of the gradient taken across mini-batches (the batch is split in two).
- ``params`` and ``macs``: the baselines every proxy must beat.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from dlasearch.train import measure
from dlasearch.errors import DLASearchError, did_you_mean

__all__ = ["PROXIES", "score", "score_all"]


def _weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Conv and linear weights, by name: the 'connections' that snip, synflow and friends score."""
    return sorted((f"{n}.weight", m.weight) for n, m in model.named_modules()
                  if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and m.weight.requires_grad)


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, dL/dweight) pairs for one cross-entropy backward pass in train mode."""
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [(w.detach(), w.grad.detach() if w.grad is not None else torch.zeros_like(w))
            for _, w in _weights(model)]


def grad_norm(model, x, y) -> float:
    return float(sum(g.norm() for _, g in _grads(model, x, y)))


def snip(model, x, y) -> float:
    return float(sum((w * g).abs().sum() for w, g in _grads(model, x, y)))


def synflow(model, x, y) -> float:
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    model.zero_grad(set_to_none=True)
    out = model(torch.ones((1, *x.shape[1:]), dtype=torch.float64))
    out.sum().backward()
    return float(sum((w.detach() * w.grad).sum() for _, w in _weights(model) if w.grad is not None))


class _Recorder(fx.Interpreter):
    """Runs a GraphModule node by node and shows every node's value to ``see(node, value, env)``."""

    def __init__(self, gm: fx.GraphModule, see: Callable):
        super().__init__(gm)
        self.see = see

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        self.see(n, out, self.env)  # env still holds this node's inputs here
        return out


@torch.no_grad()
def naswot(model, x, y) -> float:
    model.train()
    k = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64)

    def see(n, out, env):
        if n.op == "call_function" and n.target in (torch.relu, F.relu):
            c = (out.flatten(1) > 0).double()
            k.add_(c @ c.T + (1 - c) @ (1 - c).T)

    _Recorder(model, see).run(x)
    return float(torch.linalg.slogdet(k)[1])


def _feature_node(model: fx.GraphModule) -> str:
    """The fx name of the value the (first) head pools: the network's final feature map."""
    heads = model.ir.of_kind("head")
    if not heads:
        raise DLASearchError("proxy zen needs a classifier head (kind 'head') to find the feature map")
    return model.node_map[model.ir.inputs(heads[0])[0]]


@torch.no_grad()
def zen(model, x, y, alpha: float = 0.01) -> float:
    gen = torch.Generator().manual_seed(0)
    for _, w in _weights(model):
        w.copy_(torch.randn(w.shape, generator=gen))
    model.train()
    target, feats, bn_log = _feature_node(model), [], []

    def feature(n, out, env):
        if n.name == target:
            feats.append(out)

    def feature_and_bn(n, out, env):
        feature(n, out, env)
        if n.op == "call_module" and isinstance(model.get_submodule(n.target), nn.BatchNorm2d):
            var = env[n.args[0]].var(dim=(0, 2, 3), unbiased=False).mean()
            bn_log.append(0.5 * math.log(max(float(var), 1e-30)))

    x1 = torch.randn(x.shape, generator=gen)
    _Recorder(model, feature_and_bn).run(x1)
    _Recorder(model, feature).run(x1 + alpha * torch.randn(x.shape, generator=gen))
    delta = (feats[0] - feats[1]).flatten(1).norm(dim=1).mean()
    return math.log(max(float(delta), 1e-30)) + sum(bn_log)


def zico(model, x, y, splits: int = 2) -> float:
    if x.shape[0] < 2 * splits:
        raise DLASearchError(f"proxy zico needs a batch of at least {2 * splits} images, got {x.shape[0]}")
    per_batch = [[g for _, g in _grads(model, xb, yb)] for xb, yb in zip(x.chunk(splits), y.chunk(splits))]
    total = 0.0
    for layer in zip(*per_batch):
        g = torch.stack(layer)
        mean_abs, std = g.abs().mean(0), g.std(0, unbiased=False)
        ratio = (mean_abs[std > 0] / std[std > 0]).sum()
        if ratio > 0:
            total += math.log(float(ratio))
    return total


def params(model, x, y) -> float:
    return float(measure.params(model))


def macs(model, x, y) -> float:
    return float(measure.macs(model, (1, *x.shape[1:])))


PROXIES: dict[str, Callable] = {"synflow": synflow, "snip": snip, "grad_norm": grad_norm, "naswot": naswot,
                                "zen": zen, "zico": zico, "params": params, "macs": macs}


def score(name: str, model: fx.GraphModule, x: torch.Tensor, y: torch.Tensor) -> float:
    """Proxy ``name`` of ``model`` on the batch (x, y); the model itself is left untouched."""
    if name not in PROXIES:
        raise DLASearchError(f"proxy {name!r} is unknown{did_you_mean(name, PROXIES)}; "
                             f"allowed: {', '.join(PROXIES)}")
    work = copy.deepcopy(model)
    work.ir, work.node_map = model.ir, model.node_map
    torch.manual_seed(0)
    return PROXIES[name](work, x.float(), y)


def score_all(model: fx.GraphModule, x: torch.Tensor, y: torch.Tensor, names=None) -> dict[str, float]:
    """Every proxy in ``names`` (default: all) of ``model`` on the batch (x, y)."""
    return {n: score(n, model, x, y) for n in (names or PROXIES)}
