"""The trial engine: the training loop of ``train.train``, written so the hardware, not Python, sets the pace.

Why a separate engine: a search trial is a few epochs of a small net, so the
time goes to everything around the arithmetic.  Here

* nothing waits for the device during an epoch: the finite-loss check and the
  running loss/accuracy are accumulated on the device and read once per epoch;
* an epoch's shuffle and augmentation offsets are drawn on the CPU generator
  in one go (runs stay seeded the same on any device) and moved once, so crops,
  flips and normalisation run on the device with no per-batch transfer;
* ``precision=auto`` picks bf16 autocast + channels_last for training where the hardware
  has native bf16 (CUDA, CPUs with AMX or AVX512-BF16), fp32 elsewhere (channels_last on CPUs);
  validation and test scoring always run in fp32, the numerics ``load`` and every export give, so
  a stored accuracy is what the saved model reproduces on any machine;
* on CUDA the whole step (forward, backward, SGD) is captured in a CUDA graph
  and replayed, one graph for the full batches and one for an epoch's last partial batch;
* on CPU, convolutions on maps of at most 4 positions run as dense GEMMs (``small_maps``), an exact
  rewrite, 1.9-7.4x faster there than oneDNN's convolutions;
* ``compile=default|reduce-overhead`` wraps the model in ``torch.compile`` with
  static shapes; ``auto`` compiles only long, large-image CUDA runs (``resolve_compile``).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import fx

from dlasearch.train.data import Dataset, crop_at

__all__ = ['cpu_bf16', 'Precision', 'choose_precision', 'autocast', 'Feeder', 'evaluate', 'Stepper', 'resolve_compile',
           'compile_model', 'cpu_small_maps', 'recalibrate_bn', 'Recalibrator', 'fit']

COMPILE_MODES = ("auto", "none", "default", "reduce-overhead")
WARMUP_STEPS = 3  # eager steps before a CUDA graph is captured (lazy initialisation happens outside capture)


# ------------------------------------------------------------ precision

@lru_cache(maxsize=1)
def cpu_bf16() -> str | None:
    """The CPU feature that runs bf16 convolutions natively (``amx_bf16``, ``avx512_bf16``), or None."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    for feature in ("amx_bf16", "avx512_bf16"):
        if feature in flags:
            return feature
    cap = torch.backends.cpu.get_cpu_capability()
    return cap.lower() if "AMX" in cap.upper() else None


@dataclass(frozen=True)
class Precision:
    """What a run computes in, and why (recorded in ``metrics.json``)."""

    amp: torch.dtype | None  # autocast dtype; None: plain fp32
    channels_last: bool
    reason: str

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def to_dict(self) -> dict:
        return {"precision": "bf16" if self.amp is not None else "fp32",
                "memory_format": "channels_last" if self.channels_last else "contiguous", "reason": self.reason}


def choose_precision(precision: str, channels_last: bool | None, device: torch.device) -> Precision:
    """Resolve ``precision`` (auto/fp32/bf16) and ``channels_last`` (null: with bf16) for ``device``."""
    if precision == "auto":
        if device.type == "cuda":
            amp, why = torch.bfloat16, "precision=auto on CUDA: bf16 autocast"
        else:
            feature = cpu_bf16()
            cap = torch.backends.cpu.get_cpu_capability()
            amp = torch.bfloat16 if feature else None
            why = (f"precision=auto on a CPU with native bf16 ({feature}): bf16 autocast" if feature else
                   f"precision=auto on a CPU without native bf16 (capability {cap}; bf16 would be emulated, "
                   f"slower): fp32")
    else:
        amp = torch.bfloat16 if precision == "bf16" else None
        why = f"precision={precision}"
    if channels_last is None:  # NHWC: what bf16 kernels want, and on CPU faster in fp32 too (docs/engine.md)
        channels_last = amp is not None or device.type == "cpu"
        why += ("; channels_last=on, following the precision" if amp is not None else
                "; channels_last=on (on CPU, faster in fp32 too)" if channels_last else
                "; channels_last=off, following the precision")
    else:
        why += f"; channels_last={str(channels_last).lower()} as set"
    return Precision(amp, channels_last, why)


def autocast(device: torch.device, amp: torch.dtype | None, cache: bool = True):
    """Autocast to ``amp`` (disabled for None); ``cache=False`` is what CUDA graph capture needs."""
    return torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None, cache_enabled=cache)


# ------------------------------------------------------------ batches on the device

class Feeder:
    """Normalised (and augmented) batches of a dataset that already sits on ``device``, with no host sync."""

    def __init__(self, data: Dataset, device: torch.device):
        self.data, self.device = data, device
        c = data.channels
        self.mean = torch.tensor(data.mean, dtype=torch.float32).view(1, c, 1, 1).to(device)
        self.std = torch.tensor(data.std, dtype=torch.float32).view(1, c, 1, 1).to(device)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float().div_(255.0) - self.mean).div_(self.std)

    def epoch(self, batch_size: int, generator: torch.Generator, augment: bool, max_batches: int | None = None):
        """One shuffled, augmented pass over ``train``; every random draw of the epoch is made (on the CPU
        generator) and moved before the first batch."""
        d = self.data
        n = len(d.y_train)
        pad = d.crop_padding if augment else 0
        plan = [torch.randperm(n, generator=generator)]
        if pad > 0:
            plan += [torch.randint(0, 2 * pad + 1, (n,), generator=generator) for _ in range(2)]
        if augment and d.flip:
            plan.append((torch.rand(n, generator=generator) < 0.5).long())
        plan = torch.stack(plan)
        if self.device.type == "cuda":
            plan = plan.pin_memory()
        plan = plan.to(self.device, non_blocking=True)
        for k, i in enumerate(range(0, n, batch_size)):
            if max_batches is not None and k >= max_batches:
                return
            p = plan[:, i:i + batch_size]
            x, y = d.x_train[p[0]], d.y_train[p[0]]
            if pad > 0:
                x = crop_at(x, pad, p[1], p[2])
            if augment and d.flip:
                x = torch.where(p[-1].bool().view(-1, 1, 1, 1), x.flip(3), x)
            yield self.normalize(x), y

    def split(self, name: str, batch_size: int):
        x, y = self.data.split(name)
        for i in range(0, len(y), batch_size):
            yield self.normalize(x[i:i + batch_size]), y[i:i + batch_size]


@torch.inference_mode()
def evaluate(model: torch.nn.Module, feeder: Feeder, split: str, batch_size: int, prec: Precision):
    """(mean cross-entropy, accuracy) on a split, in eval mode; one host read at the end."""
    was_training = model.training
    model.eval()
    dev = feeder.device
    loss = torch.zeros((), device=dev, dtype=torch.float64)
    correct = torch.zeros((), device=dev, dtype=torch.int64)
    n = 0
    try:
        for x, y in feeder.split(split, batch_size):
            with autocast(dev, prec.amp):
                out = model(x.contiguous(memory_format=prec.memory_format)).float()
            loss += F.cross_entropy(out, y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
            n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        return float("nan"), float("nan")
    return float(loss) / n, int(correct) / n


# ------------------------------------------------------------ the training step

class Stepper:
    """One SGD step per call, eager or replayed from a CUDA graph; its bookkeeping stays on the device.

    A graph is captured per batch size: one for the full batches and one for an epoch's last partial
    batch, so every step of a long enough run is replayed.  Each graph has its own memory pool; they
    share the parameters, the optimizer state, the learning-rate tensor and the counters, which all
    live outside any capture.  ``setup_seconds`` is the wall time of the warm-up steps and captures."""

    def __init__(self, model, opt, cfg, device: torch.device, prec: Precision, graph: bool, full_batch: int):
        self.model, self.opt, self.cfg, self.device, self.prec = model, opt, cfg, device, prec
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
        self.lr = torch.zeros((), dtype=torch.float32, **z)  # what a replayed update reads
        self.graph_note = "on" if graph else "off"

    @property
    def graph(self):
        """The full-batch graph (None until captured)."""
        return self.graphs.get(self.full_batch, (None,))[0]

    def _forward_loss(self, x, y, cache=True):
        with autocast(self.device, self.prec.amp, cache):
            out = self.model(x.contiguous(memory_format=self.prec.memory_format))
        if out.ndim != 2:
            from dlasearch.errors import TrainError
            raise TrainError(f"the model returns shape {tuple(out.shape)}; training needs (batch, classes) logits")
        return out, F.cross_entropy(out.float(), y, label_smoothing=self.cfg.label_smoothing)

    def _account(self, out, y, loss):
        self.t += 1
        loss = loss.detach()
        new = ~torch.isfinite(loss) & (self.first_bad == 0)
        self.first_bad.copy_(torch.where(new, self.t, self.first_bad))
        self.bad_value.copy_(torch.where(new, loss, self.bad_value))
        self.loss_sum += loss.double() * len(y)
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
                try:
                    self._capture(x, y)
                except Exception as e:  # an op that cannot be captured: keep training eagerly, and say so
                    self.use_graph, self.graphs = False, {}
                    self.graph_note = f"off: capture failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                    torch.cuda.synchronize(self.device)
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
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.eager(x, y)
        torch.cuda.current_stream(self.device).wait_stream(side)
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

    def _capture(self, x, y):
        static_x, static_y = x.clone(), y.clone()
        self.opt.zero_grad(set_to_none=True)  # the graph allocates its own gradients in its pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out, loss = self._forward_loss(static_x, static_y, cache=False)
            loss.backward()
            self._update()
            self._account(out, static_y, loss)
        self.graphs[len(y)] = (graph, static_x, static_y)

    def read(self) -> tuple[float, int, int, float]:
        """(loss sum, correct, first non-finite step or 0, that loss) since the last ``reset``: one host sync."""
        vals = torch.stack([self.loss_sum, self.correct.double(), self.first_bad.double(),
                            self.bad_value.double()]).tolist()
        return vals[0], int(vals[1]), int(vals[2]), vals[3]

    def reset(self):
        self.loss_sum.zero_()
        self.correct.zero_()


# From bench/trial_speed.py on an H100 (docs/engine.md): at 32 px the compiled step is slower than the
# graphed one; at 224 px it is ~1.2x faster but costs ~30 s, earned back after ~700k training images.
COMPILE_MIN_SIDE = 128
COMPILE_MIN_IMAGES = 700_000


def resolve_compile(mode: str, device: torch.device, side: int, images: int) -> tuple[str, str]:
    """``compile=auto`` -> the mode that pays off for this trial, with the reason."""
    if mode != "auto":
        return mode, f"compile={mode} as set"
    if device.type != "cuda":
        return "none", "compile=auto on CPU: none (compile time is not earned back by short trials)"
    if side >= COMPILE_MIN_SIDE and images >= COMPILE_MIN_IMAGES:
        return "default", f"compile=auto: default ({images:,} images at {side} px earn back the compile time)"
    return "none", (f"compile=auto: none ({images:,} images at {side} px: the CUDA-graphed eager step is "
                    f"faster than compiling)")


def compile_model(model, mode: str):
    """``torch.compile`` with static shapes (sizes traced as constants: no symbolic ceil-mode arithmetic,
    no recompiles for the batch size), or the model itself for ``none``/``auto``."""
    if mode in ("auto", "none"):
        return model
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)


def cpu_small_maps(model, input_shape: tuple[int, ...], device: torch.device, on: bool = True):
    """What the engine trains and evaluates on ``device``: on CPU a copy of an fx model whose convolutions on
    maps of <= 4 positions (at ``input_shape``) run as dense GEMMs, sharing the model's parameters and
    buffers (``small_maps.lower_small_maps``); elsewhere the model.  Returns it and a note for metrics.json."""
    if not on:
        return model, "off: small_maps=false"
    if device.type != "cpu":
        return model, "off: CPU only"
    if not isinstance(model, fx.GraphModule):
        return model, "off: not an fx module"
    from dlasearch.train.small_maps import MAX_POSITIONS, lower_small_maps

    fast, names = lower_small_maps(model, input_shape)
    if not names:
        return model, f"off: no convolution on a map of <= {MAX_POSITIONS} positions"
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return fast, f"{len(names)} of {convs} convolutions (on maps of <= {MAX_POSITIONS} positions) as dense GEMMs"


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
    if cfg.bn_batches == 0 or cfg.freeze == "backbone":  # a frozen backbone keeps its statistics too
        return
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
    was_training = model.training
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    try:
        with torch.no_grad(), autocast(device, prec.amp):
            batches = feeder.epoch(cfg.batch_size, gen, cfg.augment, max_batches=cfg.bn_batches)
            for k, (x, _) in enumerate(batches, start=1):
                for m in bns:
                    m.momentum = 1.0 / k
                model(x.contiguous(memory_format=prec.memory_format))
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)


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
        self.bns = [m for m in model.modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        self.use_graph = graph and device.type == "cuda" and bool(self.bns) and cfg.bn_batches > 0
        self.note = "graphed" if self.use_graph else "eager"
        self.stats = [t for m in self.bns for t in (m.running_mean, m.running_var)]
        self.sums = [torch.zeros_like(t) for t in self.stats] if self.use_graph else []
        self.graph, self.static_x, self.warm = None, None, False

    @property
    def active(self) -> bool:
        """False where there is nothing to recalibrate (``bn_batches=0``, a frozen backbone, no BatchNorm)."""
        return bool(self.bns) and self.cfg.bn_batches > 0 and self.cfg.freeze != "backbone"

    def __call__(self, feeder: Feeder) -> None:
        if not self.use_graph or self.cfg.freeze == "backbone":
            return recalibrate_bn(self.model, feeder, self.cfg, self.device, self.prec)
        momenta = [m.momentum for m in self.bns]
        was_training = self.model.training
        self.model.train()
        for m in self.bns:
            m.reset_running_stats()
            m.momentum = 1.0
        torch._foreach_zero_(self.sums)
        gen = torch.Generator().manual_seed(self.cfg.seed)
        k = 0
        try:
            with torch.no_grad():
                for x, _ in feeder.epoch(self.cfg.batch_size, gen, self.cfg.augment, max_batches=self.cfg.bn_batches):
                    self._batch(x)
                    k += 1
        finally:
            for m, momentum in zip(self.bns, momenta):
                m.momentum = momentum
            self.model.train(was_training)
        if not self.use_graph:  # the capture failed on this pass: redo it eagerly
            return recalibrate_bn(self.model, feeder, self.cfg, self.device, self.prec)
        if k:
            torch._foreach_mul_(self.sums, 1.0 / k)
            for t, s in zip(self.stats, self.sums):
                t.copy_(s)

    def _add(self, x, cache=True):
        with autocast(self.device, self.prec.amp, cache):
            self.model(x.contiguous(memory_format=self.prec.memory_format))
        torch._foreach_add_(self.sums, self.stats)

    def _batch(self, x) -> None:
        if self.graph is not None and len(x) == len(self.static_x):
            self.static_x.copy_(x)
            self.graph.replay()
        elif len(x) != self.cfg.batch_size or not self.use_graph:
            self._add(x)
        elif not self.warm:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._add(x)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.warm = True
        else:
            static_x, graph = x.clone(), torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._add(static_x, cache=False)
            except Exception as e:  # an op that cannot be captured
                self.use_graph = False
                self.note = f"eager: capture failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                torch.cuda.synchronize(self.device)
                return
            self.graph, self.static_x = graph, static_x
            graph.replay()


def fit(model, data: Dataset, cfg, device: torch.device, prec: Precision, callback, test: bool,
        eval_epochs=None):
    """The training loop behind ``train.train`` (same arguments, same ``TrainResult``)."""
    from tqdm import tqdm

    from dlasearch.train import StopTraining, TrainResult
    from dlasearch.train.trainer import _param_groups, _schedule

    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation: CPU, so runs match anywhere
    feeder = Feeder(data, device)
    per_epoch = math.ceil(len(data.y_train) / cfg.batch_size)
    total = cfg.steps or cfg.epochs * per_epoch
    warmup = min(round(cfg.warmup_epochs * per_epoch), total // 2)
    opt = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(total, warmup))
    mode, compile_why = resolve_compile(cfg.compile, device, min(data.image_size), total * cfg.batch_size)
    graph = cfg.cuda_graph if cfg.cuda_graph is not None else mode == "none"
    graph = graph and device.type == "cuda"
    fast, small_note = cpu_small_maps(model, (data.channels, *data.image_size), device, cfg.small_maps)
    net = compile_model(fast, mode)
    stepper = Stepper(net, opt, cfg, device, prec, graph, cfg.batch_size)
    recalibrate = Recalibrator(fast, cfg, device, prec, graph)
    scoring = Precision(None, prec.channels_last, "fp32: what load and export run")
    if cfg.cuda_graph and device.type != "cuda":
        stepper.graph_note = "off: CUDA graphs need a CUDA device"
    res = TrainResult(status="ok")
    show = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    bar = tqdm(total=total, desc="train", unit="step", disable=not show, leave=False)
    net.train()
    epochs = math.ceil(total / per_epoch)
    recal_seconds = eval_seconds = 0.0
    try:
        for epoch in range(1, epochs + 1):
            _sync(device)
            t0 = time.perf_counter()
            stepper.reset()
            seen, lr = 0, opt.param_groups[0]["lr"]
            for x, y in feeder.epoch(cfg.batch_size, gen, cfg.augment, max_batches=total - res.steps):
                stepper(x, y)
                sched.step()
                res.steps += 1
                seen += len(y)
                bar.update(1)
            loss_sum, correct, first_bad, bad_value = stepper.read()
            res.train_seconds += time.perf_counter() - t0
            if first_bad:
                res.status, res.steps = "nan", first_bad - 1
                res.reason = f"loss became {bad_value} at step {first_bad} (epoch {epoch}); lower lr"
                break
            res.epochs = epoch
            metrics = {"epoch": epoch, "steps": res.steps, "lr": lr, "train_loss": loss_sum / max(seen, 1),
                       "train_accuracy": correct / max(seen, 1)}
            skip = epoch not in eval_epochs if eval_epochs is not None else epoch % cfg.eval_every
            if skip and epoch < epochs:  # skipped validation changes no weight
                res.history.append({**metrics, "seconds": time.perf_counter() - t0})
                bar.set_postfix(epoch=epoch, loss=f"{metrics['train_loss']:.3f}")
                continue
            if recalibrate.active:
                t_recal = time.perf_counter()
                recalibrate(feeder)
                _sync(device)  # scoring syncs anyway; this one splits the time between the two
                recal_seconds += time.perf_counter() - t_recal
            t_eval = time.perf_counter()
            val_loss, val_acc = evaluate(net, feeder, "val", cfg.eval_batch_size, scoring)
            eval_seconds += time.perf_counter() - t_eval
            metrics.update(val_loss=val_loss, val_accuracy=val_acc, seconds=time.perf_counter() - t0)
            res.history.append(metrics)
            res.val_loss, res.val_accuracy = val_loss, val_acc
            bar.set_postfix(epoch=epoch, loss=f"{metrics['train_loss']:.3f}", val=f"{val_acc:.3f}")
            if cfg.progress is None and not show:  # a log file or pipe: one line per epoch instead of a bar
                print(f"epoch {epoch}/{epochs}: train_loss {metrics['train_loss']:.4f}, "
                      f"val_loss {val_loss:.4f}, val_accuracy {val_acc:.4f}, {metrics['seconds']:.1f}s",
                      file=sys.stderr, flush=True)
            if not math.isfinite(val_loss):
                res.status, res.reason = "nan", f"validation loss became {val_loss} after epoch {epoch}; lower lr"
                break
            if callback is not None:
                try:
                    stop = callback(epoch, metrics)
                except StopTraining as e:
                    res.status, res.reason = "stopped", str(e) or f"stopped by the callback after epoch {epoch}"
                    break
                if stop:
                    res.status, res.reason = "stopped", f"stopped by the callback after epoch {epoch}"
                    break
    finally:
        bar.close()
    if res.status == "nan":
        res.val_accuracy = res.val_loss = None
    elif test:
        res.test_accuracy = evaluate(net, feeder, "test", cfg.eval_batch_size, scoring)[1]
    if stepper.use_graph and stepper.graph is None:
        stepper.graph_note = f"off: fewer than {WARMUP_STEPS + 1} full batches, nothing to capture"
    res.engine = {**prec.to_dict(), "eval_precision": "fp32", "compile": mode, "compile_reason": compile_why, "cuda_graph": stepper.graph_note,
                  "bn_recalibration": recalibrate.note, "small_maps": small_note}
    if stepper.replays:
        res.engine["graphed_steps"] = f"{stepper.replays}/{res.steps}"
    # Where the wall time went: train_seconds holds the steps (graph set-up included), the rest is
    # validation: BatchNorm recalibration, then scoring the validation split.
    res.engine["seconds"] = {"steps": round(res.train_seconds - stepper.setup_seconds, 4),
                             "graph_setup": round(stepper.setup_seconds, 4),
                             "recalibration": round(recal_seconds, 4), "scoring": round(eval_seconds, 4)}
    return res


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
