"""BatchNorm recalibration before each validation: running statistics recomputed as exact averages over
``bn_batches`` training batches, eagerly (``recalibrate_bn``) or with the forwards replayed from a CUDA
graph (``Recalibrator``)."""
from __future__ import annotations

import contextlib

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from dlasearch.train.feeder import Feeder
from dlasearch.train.graphs import capture, side_stream
from dlasearch.train.precision import Precision, autocast, forward

__all__ = ['bn_layers', 'needs_recalibration', 'fresh_statistics', 'recalibrate_bn', 'Recalibrator']


def bn_layers(model) -> list[_BatchNorm]:
    """The BatchNorm layers that keep running statistics: the ones a recalibration replaces."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def needs_recalibration(bns: list[_BatchNorm], cfg) -> bool:
    """False where there is nothing to recalibrate: ``bn_batches=0``, no BatchNorm, or a frozen backbone
    (which keeps its statistics too)."""
    return bool(bns) and cfg.bn_batches > 0 and cfg.freeze != "backbone"


@contextlib.contextmanager
def fresh_statistics(model, bns: list[_BatchNorm]):
    """Train mode with the running statistics of ``bns`` reset; the momenta and the mode are restored after,
    so a pass inside may set each momentum as its average needs."""
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)


def _batches(feeder: Feeder, cfg):
    """The first ``bn_batches`` training batches, from a generator of their own: the training batches stay
    as they were."""
    gen = torch.Generator().manual_seed(cfg.seed)
    return (x for x, _ in feeder.epoch(cfg.batch_size, gen, cfg.augment, max_batches=cfg.bn_batches))


def recalibrate_bn(model, feeder: Feeder, cfg, device: torch.device, prec: Precision) -> None:
    """Replace BatchNorm running statistics by exact averages over ``cfg.bn_batches`` training batches.

    Why: early on, the conv weights in front of each BatchNorm grow fast and the momentum-0.1
    running averages trail them, so a short run scored chance in eval mode (val loss 1e11)
    while it was learning; docs/train.md has the numbers.  Its own generator keeps the
    training batches unchanged; the buffers are updated in place, so a captured CUDA graph
    keeps using them.

    The arithmetic of ``torch.optim.swa_utils.update_bn`` (a cumulative average: batch k weighs
    1/k), without its costs: it runs the passes with autograd on, and its ``momentum=None`` makes
    every BatchNorm read its batch counter back from the device (``float(num_batches_tracked)``),
    a host sync per layer per batch on CUDA.  Here the weight 1/k is set from the host."""
    bns = bn_layers(model)
    if not needs_recalibration(bns, cfg):
        return
    with fresh_statistics(model, bns), torch.no_grad(), autocast(device, prec.amp):
        for k, x in enumerate(_batches(feeder, cfg), start=1):
            for m in bns:
                m.momentum = 1.0 / k
            model(x.contiguous(memory_format=prec.memory_format))


class Recalibrator:
    """``recalibrate_bn`` before each validation; on CUDA with graphs, its forwards replayed from a graph.

    Why: at 32 px the eager train-mode forwards are launch-bound; on an H100 the 8 of each validation
    took 0.3-0.55 s of a 100-epoch trial's 5 s (docs/engine.md).  A graph cannot follow the weight
    1/k of batch k (a BatchNorm's momentum is baked in at capture), so the graphed pass keeps each
    batch's statistics (momentum 1) and adds them to a sum, and the mean of the k batches is stored
    at the end: the same average, equal up to rounding.  The first full batch runs eagerly on a side
    stream (the warm-up a capture needs), the second is captured; other batch sizes run eagerly.  A
    capture that fails leaves the eager ``recalibrate_bn``, and ``note`` says why."""

    def __init__(self, model, cfg, device: torch.device, prec: Precision, graph: bool):
        self.model, self.cfg, self.device, self.prec = model, cfg, device, prec
        self.bns = bn_layers(model)
        self.use_graph = graph and device.type == "cuda" and bool(self.bns) and cfg.bn_batches > 0
        self.note = "graphed" if self.use_graph else "eager"
        self.stats = [t for m in self.bns for t in (m.running_mean, m.running_var)]
        self.sums = [torch.zeros_like(t) for t in self.stats] if self.use_graph else []
        self.graph, self.static_x, self.warm = None, None, False

    @property
    def active(self) -> bool:
        """False where there is nothing to recalibrate (``needs_recalibration``)."""
        return needs_recalibration(self.bns, self.cfg)

    def __call__(self, feeder: Feeder) -> None:
        if not self.active:
            return None
        if not self.use_graph:
            return recalibrate_bn(self.model, feeder, self.cfg, self.device, self.prec)
        torch._foreach_zero_(self.sums)
        k = 0
        with fresh_statistics(self.model, self.bns), torch.no_grad():
            for m in self.bns:
                m.momentum = 1.0
            for x in _batches(feeder, self.cfg):
                self._batch(x)
                k += 1
        if not self.use_graph:  # the capture failed on this pass: redo it eagerly
            return recalibrate_bn(self.model, feeder, self.cfg, self.device, self.prec)
        if k:
            torch._foreach_mul_(self.sums, 1.0 / k)
            for t, s in zip(self.stats, self.sums):
                t.copy_(s)

    def _add(self, x, cache=True):
        forward(self.model, x, self.device, self.prec, cache)
        torch._foreach_add_(self.sums, self.stats)

    def _batch(self, x) -> None:
        if self.graph is not None and len(x) == len(self.static_x):
            self.static_x.copy_(x)
            self.graph.replay()
        elif len(x) != self.cfg.batch_size or not self.use_graph:
            self._add(x)
        elif not self.warm:
            with side_stream(self.device):
                self._add(x)
            self.warm = True
        else:
            static_x = x.clone()
            graph, failed = capture(lambda: self._add(static_x, cache=False), self.device)
            if graph is None:
                self.use_graph, self.note = False, f"eager: {failed}"
                return
            self.graph, self.static_x = graph, static_x
            graph.replay()
