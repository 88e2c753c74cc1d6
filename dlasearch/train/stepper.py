"""The training step (``Stepper``): forward, backward and SGD, eager or replayed from a CUDA graph, with
its bookkeeping (loss, accuracy, the first non-finite loss) kept on the device.

Dense data train on the per-pixel cross-entropy (``seg_metrics.pixel_cross_entropy``: pixels labelled
255 ignored, optional class weights) and count accuracy over the pixels not ignored; both are fixed-shape
device arithmetic, so the step is captured in a CUDA graph as a classifier's is."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from dlasearch.errors import TrainError
from dlasearch.train.graphs import capture, side_stream
from dlasearch.train.precision import Precision, forward
from dlasearch.train.seg_metrics import IGNORE, pixel_cross_entropy

__all__ = ['WARMUP_STEPS', 'Stepper']

WARMUP_STEPS = 3  # eager steps before a CUDA graph is captured (lazy initialisation happens outside capture)


class Stepper:
    """One SGD step per call, eager or replayed from a CUDA graph; its bookkeeping stays on the device.

    A graph is captured per batch size: one for the full batches and one for an epoch's last partial
    batch, so every step of a long enough run is replayed.  Each graph has its own memory pool; they
    share the parameters, the optimizer state, the learning-rate tensor and the counters, which all
    live outside any capture.  ``setup_seconds`` is the wall time of the warm-up steps and captures."""

    def __init__(self, model, opt, cfg, device: torch.device, prec: Precision, graph: bool, full_batch: int,
                 dense: bool = False, weights: torch.Tensor | None = None):
        self.model, self.opt, self.cfg, self.device, self.prec = model, opt, cfg, device, prec
        self.dense, self.weights = dense, weights  # per-pixel loss; its class weights, already on the device
        self.use_graph, self.full_batch = graph, full_batch
        self.graphs: dict[int, tuple] = {}  # batch size -> (CUDAGraph, static x, static y)
        self.warm: dict[int, int] = {}  # batch size -> eager warm-up steps taken
        self.replays = 0
        self.setup_seconds = 0.0
        z = dict(device=device)
        self.t = torch.zeros((), dtype=torch.int64, **z)  # steps taken (device counter)
        self.first_bad = torch.zeros((), dtype=torch.int64, **z)  # first step with a non-finite loss (0: none)
        self.bad_value = torch.zeros((), dtype=torch.float32, **z)
        self.loss_sum = torch.zeros((), dtype=torch.float64, **z)
        self.correct = torch.zeros((), dtype=torch.int64, **z)
        self.scored = torch.zeros((), dtype=torch.int64, **z)  # dense: pixels not ignored (accuracy's denominator)
        self.lr = torch.zeros((), dtype=torch.float32, **z)  # what a replayed update reads
        self.graph_note = "on" if graph else "off"

    @property
    def graph(self):
        """The full-batch graph (None until captured)."""
        return self.graphs.get(self.full_batch, (None,))[0]

    def _forward_loss(self, x, y, cache=True):
        out = forward(self.model, x, self.device, self.prec, cache)
        if self.dense:
            if out.ndim != 4 or out.shape[2:] != y.shape[1:]:
                raise TrainError(f"the model returns shape {tuple(out.shape)}; dense training needs per-pixel "
                                 f"logits (batch, classes, {y.shape[1]}, {y.shape[2]})")
            return out, pixel_cross_entropy(out, y, self.weights, label_smoothing=self.cfg.label_smoothing)
        if out.ndim != 2:
            raise TrainError(f"the model returns shape {tuple(out.shape)}; training needs (batch, classes) logits")
        return out, F.cross_entropy(out.float(), y, label_smoothing=self.cfg.label_smoothing)

    def _account(self, out, y, loss):
        self.t += 1
        loss = loss.detach()
        new = ~torch.isfinite(loss) & (self.first_bad == 0)
        self.first_bad.copy_(torch.where(new, self.t, self.first_bad))
        self.bad_value.copy_(torch.where(new, loss, self.bad_value))
        self.loss_sum += loss.double() * len(y)
        if self.dense:
            valid = y != IGNORE
            self.correct += ((out.detach().argmax(1) == y) & valid).sum()
            self.scored += valid.sum()
        else:
            self.correct += (out.detach().argmax(1) == y).sum()

    def eager(self, x, y):
        out, loss = self._forward_loss(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self._account(out, y, loss)

    def __call__(self, x, y):
        n = len(y)
        if not self.use_graph:
            return self.eager(x, y)
        if n not in self.graphs:
            t0 = time.perf_counter()
            try:
                if self._warm_up(x, y):
                    return None
                if not self._capture(x, y):  # an op that cannot be captured: keep training eagerly, and say so
                    return self.eager(x, y)
            finally:
                torch.cuda.synchronize(self.device)
                self.setup_seconds += time.perf_counter() - t0
        graph, static_x, static_y = self.graphs[n]
        static_x.copy_(x)
        static_y.copy_(y)
        self.lr.fill_(self.opt.param_groups[0]["lr"])
        graph.replay()
        self.replays += 1

    def _warm_up(self, x, y) -> bool:
        """An eager step on a side stream while this batch size still needs one (cuDNN, cuBLAS and the
        optimizer state initialise outside the capture); the first size takes WARMUP_STEPS, a later one
        only its own shapes."""
        n = len(y)
        if self.warm.get(n, 0) >= (WARMUP_STEPS if not self.graphs else 1):
            return False
        self.warm[n] = self.warm.get(n, 0) + 1
        with side_stream(self.device):
            self.eager(x, y)
        return True

    @torch.no_grad()
    def _update(self):
        """SGD (weight decay, momentum, nesterov) as ``torch.optim.SGD`` computes it, with the learning rate
        read from a device tensor so that a replayed graph follows the schedule."""
        m, nesterov = self.cfg.momentum, self.cfg.nesterov
        for group in self.opt.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            if not ps:
                continue
            gs = [p.grad for p in ps]
            if group["weight_decay"]:
                gs = torch._foreach_add(gs, ps, alpha=group["weight_decay"])
            if m:
                bufs = [self.opt.state[p]["momentum_buffer"] for p in ps]
                torch._foreach_mul_(bufs, m)
                torch._foreach_add_(bufs, gs)
                gs = torch._foreach_add(gs, bufs, alpha=m) if nesterov else bufs
            torch._foreach_sub_(ps, torch._foreach_mul(gs, self.lr))

    def _step(self, x, y):
        """The step a graph records: forward, backward, the update, the bookkeeping."""
        out, loss = self._forward_loss(x, y, cache=False)
        loss.backward()
        self._update()
        self._account(out, y, loss)

    def _capture(self, x, y) -> bool:
        """Capture the step for this batch size; on failure the graphs are dropped and ``graph_note`` says why."""
        static_x, static_y = x.clone(), y.clone()
        self.opt.zero_grad(set_to_none=True)  # the graph allocates its own gradients in its pool
        graph, failed = capture(lambda: self._step(static_x, static_y), self.device)
        if graph is None:
            self.use_graph, self.graphs = False, {}
            self.graph_note = f"off: {failed}"
            return False
        self.graphs[len(y)] = (graph, static_x, static_y)
        return True

    def read(self) -> tuple[float, int, int, float, int]:
        """(loss sum, correct, first non-finite step or 0, that loss, scored pixels (dense; else 0)) since the
        last ``reset``: one host sync."""
        vals = torch.stack([self.loss_sum, self.correct.double(), self.first_bad.double(),
                            self.bad_value.double(), self.scored.double()]).tolist()
        return vals[0], int(vals[1]), int(vals[2]), vals[3], int(vals[4])

    def reset(self):
        self.loss_sum.zero_()
        self.correct.zero_()
        self.scored.zero_()
