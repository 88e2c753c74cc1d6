"""Metrics of a model, each a function of (model, input shape): reused by search and reports.

``params``, ``macs``, ``train_memory_bytes`` and ``latency`` need no training,
so a search can reject an over-budget architecture before spending anything on
it; accuracy and training time come from ``dlasearch.train``.  Every function
works on a copy or in eval mode, so measuring never changes the model.
"""
from __future__ import annotations

import contextlib
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['params', 'macs', 'autocast', 'train_memory', 'train_memory_bytes', 'latency', 'train_speeds', 'CPUShare',
           'memory_of', 'too_big']


def params(model: torch.nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def macs(model: torch.nn.Module, input_shape) -> int:
    """Forward multiply-accumulates for one batch of ``input_shape`` (FlopCounterMode FLOPs / 2)."""
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(tuple(input_shape), device=p.device if p is not None else "cpu")
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def _device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _loss(out) -> torch.Tensor:
    """Cross-entropy against class 0: a real loss of the right shape for classifiers and per-pixel heads."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    total = 0
    for o in outs:
        target = torch.zeros((o.shape[0], *o.shape[2:]), dtype=torch.long, device=o.device)
        total = total + F.cross_entropy(o.float(), target)
    return total


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``'s type, or a no-op for None (plain fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def train_memory(model: torch.nn.Module, input_shape, optimizer_states: int = 1,
                 autocast_dtype: torch.dtype | None = None, cuda_peak: bool = True,
                 device: str | None = "meta") -> dict:
    """Bytes one SGD training step holds, exactly and repeatably, with its breakdown.

    ``activations``: every tensor autograd saves for backward in the forward
    pass and the loss (the input batch included), counted once per storage, and
    not counting parameters or buffers, which have their own entries.  A per-pixel
    output (dense prediction) adds the logits themselves (the trainer holds them for its
    accuracy) and the two fp32 gradients of their size that the loss's backward creates
    first (d loss / d log-probabilities, then d loss / d logits), all alive with the saved
    tensors when backward starts: at full resolution they are as large as a feature map
    (a small segmentation net's CPU peak was 12-18% above the count without them, and is now
    0.7-5% below it at batch 128..16, by the gradients, which do not exist yet when backward
    starts; tests/test_dense_train.py).  A classifier's logits are N x K numbers and stay uncounted.
    ``grads`` and ``optimizer`` (``optimizer_states`` buffers per trainable
    parameter: 1 for SGD with momentum, 2 for Adam) follow from the parameters.

    The count depends on shapes only, so it is the same on every machine.  ``device="meta"``
    (default) asks for exactly that; ``None`` counts on the model's device (so does
    ``autocast_dtype``, which meta tensors ignore: a bf16 count follows that device's autocast).
    On a CPU model the forward runs at batch 2 and 4 and the count is extended to the batch:
    every saved tensor either scales with the batch or does not depend on it, so the count is
    affine in the batch, and it equals the meta count (all 246 zoo and stored networks:
    ``bench/memory_count.py``) in a fifth of the time (meta kernels of BatchNorm run as Python
    decompositions).  When the model is on CUDA, ``cuda_peak`` is also measured:
    ``torch.cuda.max_memory_allocated`` during a step after a warm-up step, minus what was
    allocated before.
    """
    shape = tuple(input_shape)
    if _device(model).type == "cpu":
        with _restored(model) as m:  # cheaper than a copy: a GraphModule's deepcopy regenerates its code
            activations = _affine_in_batch(m, shape, autocast_dtype)
    else:
        m = copy.deepcopy(model).train()
        if device is not None and autocast_dtype is None:
            m = m.to(device)
        activations = _saved_bytes(m, shape, autocast_dtype)
    trainable = [p for p in m.parameters() if p.requires_grad]
    out = {
        "activations": activations,
        "params": _nbytes(m.parameters()),
        "buffers": _nbytes(m.buffers()),
        "grads": _nbytes(trainable),
        "optimizer": optimizer_states * _nbytes(trainable),
    }
    out["total"] = sum(out.values())
    if cuda_peak and _device(model).type == "cuda":
        out["cuda_peak"] = _cuda_peak(model, input_shape, optimizer_states, autocast_dtype)
    return out


@contextlib.contextmanager
def _restored(model: torch.nn.Module):
    """``model`` in training mode; afterwards its buffers (BatchNorm statistics, which a training
    forward updates) and its mode are as they were.  Parameters are only read."""
    buffers = [(b, b.clone()) for b in model.buffers()]
    was_training = model.training
    try:
        yield model.train()
    finally:
        with torch.no_grad():
            for b, before in buffers:
                b.copy_(before)
        model.train(was_training)


def _saved_bytes(m: torch.nn.Module, shape: tuple, autocast_dtype) -> int:
    """Bytes of the tensors autograd saves in one training forward and loss at ``shape``."""
    dev = _device(m)
    # Storages are told apart as torch.save does, by ``_cdata`` (meta storages have no data pointer).
    state = {t.untyped_storage()._cdata for t in (*m.parameters(), *m.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s._cdata not in state:
            saved[s._cdata] = s.nbytes()
        return t

    x = torch.zeros(shape, device=dev)
    saved[x.untyped_storage()._cdata] = x.untyped_storage().nbytes()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(dev, autocast_dtype):
        out = m(x)
        loss = _loss(out)
    grads = 0
    for o in (out if isinstance(out, (tuple, list)) else (out,)):
        if o.dim() > 2:  # per-pixel logits: see _output_bytes
            saved.setdefault(o.untyped_storage()._cdata, o.untyped_storage().nbytes())
            grads += 2 * o.numel() * 4
    del loss, out
    return sum(saved.values()) + grads


def _affine_in_batch(m: torch.nn.Module, shape: tuple, autocast_dtype) -> int:
    """``_saved_bytes`` at ``shape``, from two forwards at batch 2 and 4 (train-mode BatchNorm needs
    two values per channel); at the batch itself when that is as small, or if the two counts do
    not extend to an affine one."""
    batch = shape[0]
    if batch <= 4:
        return _saved_bytes(m, shape, autocast_dtype)
    at2 = _saved_bytes(m, (2, *shape[1:]), autocast_dtype)
    at4 = _saved_bytes(m, (4, *shape[1:]), autocast_dtype)
    per_image, odd = divmod(at4 - at2, 2)
    if odd or per_image < 0:
        return _saved_bytes(m, shape, autocast_dtype)
    return at2 + (batch - 2) * per_image


def _train_step(model, opt, x, device, autocast_dtype):
    """One optimiser step on a fixed batch, as a closure to time or to measure memory with."""
    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, autocast_dtype):
            loss = _loss(model(x))
        loss.backward()
        opt.step()
    return step


def _cuda_peak(model, input_shape, optimizer_states: int, autocast_dtype) -> int:
    device = _device(model)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    m = copy.deepcopy(model).train()
    opt = (torch.optim.Adam(m.parameters(), lr=0.0) if optimizer_states >= 2 else
           torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9 if optimizer_states == 1 else 0.0))
    step = _train_step(m, opt, torch.randn(tuple(input_shape), device=device), device, autocast_dtype)
    step()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del m, opt, step
    return int(peak)


def train_memory_bytes(model: torch.nn.Module, input_shape, optimizer_states: int = 1,
                       autocast_dtype: torch.dtype | None = None, device: str | None = "meta") -> int:
    """Exact training memory of one step at ``input_shape``: saved activations + params + buffers
    + grads + optimizer state (see ``train_memory`` for the breakdown)."""
    return train_memory(model, input_shape, optimizer_states, autocast_dtype, cuda_peak=False,
                        device=device)["total"]


def _median_ms(fn, repeats: int, warmup: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def latency(model: torch.nn.Module, input_shape, repeats: int = 10, warmup: int = 2,
            channels_last: bool = False, inference: bool = True, train: bool = True,
            autocast_dtype: torch.dtype | None = None) -> dict:
    """Median wall-clock times on the model's device for a batch of ``input_shape`` (batch B).

    ``infer_ms_1`` / ``infer_ms_B``: eval-mode forward at batch 1 and B;
    ``train_step_ms`` and ``train_images_per_s``: a full SGD step (forward, loss,
    backward, momentum update; lr 0 so repeated steps stay finite) at batch B.
    Runs on a copy, with the current ``torch.get_num_threads()``.
    """
    device = _device(model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m = copy.deepcopy(model).to(memory_format=fmt)
    b = int(input_shape[0])
    out: dict = {"batch": b, "channels_last": channels_last, "threads": torch.get_num_threads()}
    if inference:
        m.eval()
        for key, bs in (("infer_ms_1", 1), ("infer_ms_B", b)):
            x = torch.randn((bs, *input_shape[1:]), device=device).contiguous(memory_format=fmt)
            with torch.inference_mode(), autocast(device, autocast_dtype):
                out[key] = _median_ms(lambda: m(x), repeats, warmup, device)
    if train:
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9)
        x = torch.randn(tuple(input_shape), device=device).contiguous(memory_format=fmt)
        step = _train_step(m, opt, x, device, autocast_dtype)
        out["train_step_ms"] = _median_ms(step, repeats, warmup, device)
        out["train_images_per_s"] = b / (out["train_step_ms"] / 1e3)
    return out


def train_speeds(models: dict, input_shape, rounds: int = 5, repeats: int = 5, channels_last: bool = False,
                 autocast_dtype: torch.dtype | None = None, progress=None) -> dict:
    """Training images/s of several models measured side by side: ``rounds`` rounds, each timing every
    model in turn (``latency``'s full SGD step, median of ``repeats``), so a slow moment of the machine
    hits every model alike.  Returns {name: [img/s per round]}; compare medians, and their ratios
    rather than absolute values when the machine was shared.  ``progress(round)`` after each round."""
    out: dict = {name: [] for name in models}
    for r in range(rounds):
        for name, model in models.items():
            lat = latency(model, input_shape, repeats=repeats, warmup=2 if r == 0 else 1,
                          channels_last=channels_last, inference=False, autocast_dtype=autocast_dtype)
            out[name].append(lat["train_images_per_s"])
        if progress is not None:
            progress(r + 1)
    return out


class CPUShare:
    """The share of its threads' CPU time this process got over a ``with`` block (``.share``): near 1 on a
    quiet machine, lower when other processes took the cores, so speeds timed inside understate the
    machine (ratios measured side by side still hold).  ``warning()`` says so in one line, or is empty."""

    def __init__(self, threads: int | None = None):
        self.threads, self.share = threads, None

    def __enter__(self) -> "CPUShare":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> bool:
        threads = self.threads or torch.get_num_threads()
        self.share = (time.process_time() - self._cpu) / max(time.perf_counter() - self._wall, 1e-9) / threads
        return False

    def warning(self, below: float = 0.8) -> str:
        if self.share is None or self.share >= below:
            return ""
        return (f"warning: this process got {self.share:.0%} of its {self.threads or torch.get_num_threads()} "
                f"threads' CPU time; something else ran, so the absolute numbers understate this machine (the "
                f"ratios are measured side by side)")


def memory_of(device=None) -> int | None:
    """Bytes of memory ``device`` has: a CUDA device's total, else this machine's (``/proc/meminfo``'s
    MemTotal, or ``os.sysconf``); None when unknown."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 1e3:.3g} kB"


def too_big(need: int, device=None) -> str | None:
    """``"needs 9.6 TB, this machine has 24 GB"`` when ``need`` bytes exceed ``device``'s memory, else None:
    said before allocating, instead of the allocator's traceback."""
    have = memory_of(device)
    if have is None or need <= have:
        return None
    where = "GPU" if device is not None and torch.device(device).type == "cuda" else "machine"
    return f"needs {_size(need)}, this {where} has {_size(have)}"
