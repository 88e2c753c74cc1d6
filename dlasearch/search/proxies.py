"""Zero-cost proxies: scores of an untrained network that may predict its trained accuracy.

Each proxy computes what its authors' published code computes (not only what the paper's formula
says: where the two differ, the code wins, because that is what the reported correlations were
measured with). ``tests/reference/proxies/README.md`` cites each file, and the tests compare every
proxy with values recorded by a step-by-step re-implementation of that code. Every proxy takes a
compiled IR (``torch.fx.GraphModule``), one batch of inputs and labels; none changes the model
(``score`` works on a copy). The "layers" are the ``nn.Conv2d`` and ``nn.Linear`` modules, as in
every reference (dlasearch's classifier is a 1x1 conv; an upsampling ``ConvTranspose2d`` is neither).

- ``grad_norm`` (zero-cost-nas ``grad_norm.py``): Σ over layers of ‖∂L/∂W‖₂, one cross-entropy
  backward on the batch, BatchNorm kept, train mode.
- ``snip`` (zero-cost-nas ``snip.py``): Σ |∂L/∂m| for a mask m = 1 on every layer weight, which is
  Σ |W ⊙ ∂L/∂W|; same pass as grad_norm.
- ``synflow`` (zero-cost-nas ``synflow.py``): every state_dict entry made |·|, float64, BatchNorm
  *removed* (its ``bn=False`` copy), R = Σ f(1) for one all-ones image; Σ |W ⊙ ∂R/∂W|.
  ``bn="train"`` keeps BatchNorm in train mode (its ``synflow_bn``), ``bn="eval"`` in eval mode
  (dlasearch's synflow before it followed the reference).
- ``naswot`` (nas-without-training ``score_networks.py``/``scores.py``): log|det K|, K = Σ over ReLUs
  of c cᵀ + (1-c)(1-c)ᵀ with c = (ReLU input > 0) per image, train mode. The reference's first
  (jacobian) pass only arms its hooks; in train mode its second pass sees the codes of the first.
  Only ReLUs of activations count (batch first, ≥ 2 dims): a BiFPN fusion-weight ReLU does not.
- ``zen`` (ZenNAS ``compute_zen_score.py``): weights Gaussian N(0,1) (BatchNorm γ=1, β=0, biases 0),
  two Gaussian inputs x, ε; log mean_i Σ |f(x) - f(x + 0.01 ε)| of the pre-pooling features, plus
  Σ over BatchNorms of log √(mean running_var), read after both train-mode forwards updated it.
  Differences kept: the draws come from a generator seeded with ``seed`` (reference: the global
  one); ``repeat=1`` as ZenNAS's search (its command-line default is 32); residual links stay
  (ZenNAS's search scores its PlainNets built with ``no_reslink=True``; an IR has no such switch).
- ``zico`` (ZiCo ``compute_zico.py``): Σ over layers of log Σ_θ mean|g_θ| / std(g_θ) over the θ
  with std ≠ 0 (a layer whose sum is 0 is skipped), mean and population std across mini-batches,
  float32 as its numpy code. As the reference, gradients *accumulate* (no zero_grad between
  batches): the k-th record is the sum of the first k batches' gradients. Difference kept: the
  mini-batches are the one batch split in ``splits`` (ZiCo: two loader batches).
- ``params`` and ``macs``: the baselines every proxy must beat.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from dlasearch import measure
from dlasearch.errors import DLASearchError, did_you_mean
from dlasearch.ir import to_module

__all__ = ["PROXIES", "score", "score_all", "proxy_batch", "scores"]


def _layers(model: nn.Module) -> list[nn.Module]:
    """Conv2d and Linear modules in registration order: what every reference code scores."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _grad(m: nn.Module) -> torch.Tensor:
    return m.weight.grad.detach() if m.weight.grad is not None else torch.zeros_like(m.weight)


def _backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[nn.Module]:
    """One cross-entropy backward on the whole batch in train mode (zero-cost-nas, split_data=1)."""
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return _layers(model)


def grad_norm(model, x, y) -> float:
    return float(sum(float(_grad(m).norm()) for m in _backward(model, x, y)))


def snip(model, x, y) -> float:
    for m in _layers(model):  # the reference's mask gets a gradient even where W is frozen
        m.weight.requires_grad_(True)
    return float(sum(float((m.weight.detach() * _grad(m)).abs().sum()) for m in _backward(model, x, y)))


def _without_bn(model: nn.Module) -> None:
    """Replace every BatchNorm by the identity, as zero-cost-nas's ``copynet(bn=False)`` does."""
    for name, m in list(model.named_modules()):
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, nn.Identity())


def synflow(model, x, y, bn: str | None = None) -> float:
    if bn not in (None, "train", "eval"):
        raise DLASearchError(f"synflow bn={bn!r}; allowed: None (removed, the reference), 'train', 'eval'")
    if bn is None:
        _without_bn(model)
    with torch.no_grad():
        for t in model.state_dict().values():  # parameters and buffers, as the reference's linearize
            t.abs_()
    model.double().train(bn != "eval")
    model.zero_grad(set_to_none=True)
    model(torch.ones((1, *x.shape[1:]), dtype=torch.float64)).sum().backward()
    return float(sum((m.weight.detach() * _grad(m)).abs().sum() for m in _layers(model)))


class _Recorder(fx.Interpreter):
    """Runs a GraphModule node by node and shows every node's value to ``see(node, value)``."""

    def __init__(self, gm: fx.GraphModule, see: Callable):
        super().__init__(gm)
        self.see = see

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        self.see(n, out)
        return out


def _is_relu(model: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_function":
        return n.target in (torch.relu, F.relu, torch.relu_)
    return n.op == "call_module" and "ReLU" in type(model.get_submodule(n.target)).__name__


@torch.no_grad()
def naswot(model, x, y) -> float:
    model.train()
    b = x.shape[0]
    k = torch.zeros(b, b, dtype=torch.float64)

    def see(n, out):
        if _is_relu(model, n) and isinstance(out, torch.Tensor) and out.dim() > 1 and out.shape[0] == b:
            c = (out.flatten(1) > 0).double()  # relu(v) > 0 exactly where v > 0: the input's code
            k.add_(c @ c.T + (1 - c) @ (1 - c).T)

    _Recorder(model, see).run(x)
    return float(torch.linalg.slogdet(k)[1])


def _feature_node(model: fx.GraphModule) -> str:
    """The fx name of the value the (first) head pools: the network's final feature map."""
    heads = model.ir.of_kind("head")
    if not heads:
        raise DLASearchError("proxy zen needs a classifier head (kind 'head') to find the feature map")
    return model.node_map[model.ir.inputs(heads[0])[0]]


def _upto(model: fx.GraphModule, name: str) -> fx.GraphModule:
    """A module that computes fx node ``name`` and nothing after it (ZenNAS's ``forward_pre_GAP``),
    sharing ``model``'s submodules, so its BatchNorms update ``model``'s running statistics."""
    g, env = fx.Graph(), {}
    for n in model.graph.nodes:
        env[n] = g.node_copy(n, env.__getitem__)
        if n.name == name:
            g.output(env[n])
            break
    gm = fx.GraphModule(model, g)
    gm.graph.eliminate_dead_code()  # a branch that feeds only later nodes
    gm.recompile()
    return gm


def _gaussian_init(model: nn.Module, gen: torch.Generator) -> None:
    """ZenNAS's ``network_weight_gaussian_init``: draws in module order, norms at γ=1, β=0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.normal_(generator=gen)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            m.weight.fill_(1.0)
            m.bias.zero_()


@torch.no_grad()
def zen(model, x, y, alpha: float = 0.01, repeat: int = 1, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    features = _upto(model, _feature_node(model))
    model.train()
    got = []
    for _ in range(repeat):
        _gaussian_init(model, gen)
        x1 = torch.randn(x.shape, generator=gen)
        x2 = torch.randn(x.shape, generator=gen)
        f1, f2 = features(x1), features(x1 + alpha * x2)  # both forwards update running_var
        delta = (f1 - f2).abs().sum(dim=tuple(range(1, f1.dim()))).mean()
        bn = sum(float(torch.log(torch.sqrt(m.running_var.mean())))
                 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        got.append(float(torch.log(delta)) + bn)
    return sum(got) / len(got)


def zico(model, x, y, splits: int = 2) -> float:
    if x.shape[0] < 2 * splits:
        raise DLASearchError(f"proxy zico needs a batch of at least {2 * splits} images, got {x.shape[0]}")
    model.train()
    model.zero_grad(set_to_none=True)
    layers = _layers(model)
    records: list[list[torch.Tensor]] = [[] for _ in layers]
    for xb, yb in zip(x.chunk(splits), y.chunk(splits)):
        F.cross_entropy(model(xb), yb).backward()  # no zero_grad: the reference accumulates
        for rec, m in zip(records, layers):
            rec.append(_grad(m).flatten().clone())
    total = 0.0
    for rec in records:
        g = torch.stack(rec)  # float32, computed as numpy's mean and (two-pass) std do
        d = g - g.mean(0)
        std, mean_abs = (d * d).mean(0).sqrt(), g.abs().mean(0)
        nz = std != 0
        s = float((mean_abs[nz] / std[nz]).sum())
        if s != 0:
            total += math.log(s)
    return total


def params(model, x, y) -> float:
    return float(measure.params(model))


def macs(model, x, y) -> float:
    return float(measure.macs(model, (1, *x.shape[1:])))


PROXIES: dict[str, Callable] = {"synflow": synflow, "snip": snip, "grad_norm": grad_norm, "naswot": naswot,
                                "zen": zen, "zico": zico, "params": params, "macs": macs}


def score(name: str, model: fx.GraphModule, x: torch.Tensor, y: torch.Tensor, **options) -> float:
    """Proxy ``name`` of ``model`` on the batch (x, y); the model itself is left untouched.

    ``options`` go to the proxy (``synflow``: ``bn``; ``zen``: ``alpha``, ``repeat``, ``seed``;
    ``zico``: ``splits``)."""
    if name not in PROXIES:
        raise DLASearchError(f"proxy {name!r} is unknown{did_you_mean(name, PROXIES)}; "
                             f"allowed: {', '.join(PROXIES)}")
    work = copy.deepcopy(model)
    work.ir, work.node_map = model.ir, model.node_map
    torch.manual_seed(0)
    return PROXIES[name](work, x.float(), y, **options)


def score_all(model: fx.GraphModule, x: torch.Tensor, y: torch.Tensor, names=None) -> dict[str, float]:
    """Every proxy in ``names`` (default: all) of ``model`` on the batch (x, y)."""
    return {n: score(n, model, x, y) for n in (names or PROXIES)}


def proxy_batch(data, batch: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed batch every proxy scores on: ``batch`` training images drawn with ``seed``, normalised."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.y_train), generator=gen)[:batch]
    return data.transform(data.x_train[idx]), data.y_train[idx]


def scores(ir, x: torch.Tensor, y: torch.Tensor, names, seed: int = 0) -> dict[str, float]:
    """Every proxy in ``names`` for one architecture, its weights initialised with ``seed`` (repeatable)."""
    model = to_module(ir, seed=seed)
    return {name: score(name, model, x, y) for name in names}
