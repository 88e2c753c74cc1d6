"""The trainer: SGD with warm-up and cosine (classification) or poly (dense data) decay over a ``Dataset``,
on the engine in ``engine``.

``train(model, data, config)`` trains in place and returns a ``TrainResult``; ``measure_arch`` gives
the metrics known before training (params, MACs, training memory, speed).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Collection

import torch

from dlasearch import measure
from dlasearch.arch import check_fit
from dlasearch.errors import TrainError
from dlasearch.train import engine
from dlasearch.train.freeze import frozen
from dlasearch.train.config import TrainConfig, TrainResult, resolve_device
from dlasearch.train.data import Dataset
from dlasearch.train.dense import check_options

__all__ = ['evaluate', 'train', 'measure_arch']


@contextlib.contextmanager
def _threads(n: int | None):
    """Run with ``n`` torch threads (None: unchanged), restoring the previous count after."""
    before = torch.get_num_threads()
    try:
        if n:
            torch.set_num_threads(n)
        yield
    finally:
        torch.set_num_threads(before)


def evaluate(model: torch.nn.Module, data: Dataset, split: str = "val", batch_size: int = 512,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in 0..1) of ``model`` on a split, in eval mode."""
    device = next(model.parameters()).device
    prec = engine.Precision(amp_dtype, channels_last, "as given")
    return engine.evaluate(model, engine.Feeder(data.to(device), device), split, batch_size, prec)


def train(model: torch.nn.Module, data: Dataset, config: TrainConfig | None = None, *,
          callback: Callable[[int, dict], object] | None = None, test: bool = False,
          eval_epochs: Collection[int] | None = None, **overrides) -> TrainResult:
    """Train ``model`` in place on ``data`` and return a ``TrainResult``.

    After every validation (each epoch, or every ``eval_every`` epochs and the last, or with
    ``eval_epochs`` after those epochs and the last: a search passes the epochs its pruner reads)
    ``callback(epoch, metrics)`` runs (``metrics`` is the history entry); returning a
    true value or raising ``StopTraining`` ends the run with status ``stopped`` (other
    exceptions propagate).  ``test=True`` also evaluates the test split at the end (only
    then is it touched).  Keyword ``overrides`` replace fields of ``config``.
    """
    unknown = set(overrides) - set(TrainConfig.option_names())
    if unknown:
        raise TrainError(f"unknown training option(s) {sorted(unknown)}; allowed: "
                         f"{', '.join(TrainConfig.option_names())}")
    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    device = resolve_device(cfg.device)
    if getattr(model, "ir", None) is not None:
        check_fit(model.ir, data)
    check_options(cfg, data)
    prec = engine.choose_precision(cfg.precision, cfg.channels_last, device)
    cudnn = (torch.backends.cudnn.flags(enabled=True, benchmark=not cfg.deterministic,
                                        deterministic=cfg.deterministic)
             if device.type == "cuda" else contextlib.nullcontext())
    with _threads(cfg.threads), cudnn, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            frozen(model, cfg.freeze):
        torch.manual_seed(cfg.seed)
        return engine.fit(model.to(device, memory_format=prec.memory_format), data.to(device), cfg, device, prec,
                          callback, test, eval_epochs)


def measure_arch(model: torch.nn.Module, data: Dataset, config: TrainConfig, latency: bool = True,
                 cuda_peak: bool = True) -> dict:
    """The metrics known before training, on the device and precision ``config`` trains with:
    params, MACs per image, training memory at the batch size (in the ``precision`` that training runs,
    which the result names: bf16 autocast keeps about half the activations fp32 does), and speed.

    The memory count depends on shapes only (``measure.train_memory``): in fp32 it runs on the CPU
    the model was built on, before the move, as two small forwards; with autocast, on the device.
    On CUDA, ``cuda_peak`` also measures it with two real steps (``train_memory_cuda_peak_bytes``).
    Searches and comparisons skip that: it costs a trial 0.2-0.4 s on an H100, and the count stays
    within 5% of it (tests/test_cuda.py)."""
    device = resolve_device(config.device)
    prec = engine.choose_precision(config.precision, config.channels_last, device)
    amp = prec.amp
    shape = (config.batch_size, data.channels, *data.image_size)
    if amp is None and not (cuda_peak and device.type == "cuda"):
        mem = measure.train_memory(model, shape, cuda_peak=False)
        model = model.to(device)
    else:
        model = model.to(device)
        mem = measure.train_memory(model, shape, autocast_dtype=amp, cuda_peak=False)
    problem = measure.too_big(mem["total"], device)
    if problem:  # before the first step, not the allocator's traceback in it
        raise TrainError(f"batch_size={config.batch_size} at {'x'.join(map(str, shape[1:]))}: one training step "
                         f"{problem}; lower batch_size or data.image_size")
    if cuda_peak and device.type == "cuda":  # two real steps: only once the count says they fit
        mem["cuda_peak"] = measure.train_memory(model, shape, autocast_dtype=amp, cuda_peak=True)["cuda_peak"]
    out = {"params": measure.params(model), "macs": measure.macs(model, (1, *shape[1:])),
           "train_memory_bytes": mem["total"], "precision": prec.to_dict()["precision"]}
    if "cuda_peak" in mem:
        out["train_memory_cuda_peak_bytes"] = mem["cuda_peak"]
    if latency:  # inference as the model is deployed; the training step as the engine runs it (small_maps)
        fast, _ = engine.cpu_small_maps(model, shape[1:], device, config.small_maps)
        with _threads(config.threads):
            lat = measure.latency(model, shape, repeats=5, warmup=1, channels_last=prec.channels_last,
                                  autocast_dtype=amp, train=False)
            lat.update(measure.latency(fast, shape, repeats=5, warmup=1, channels_last=prec.channels_last,
                                       autocast_dtype=amp, inference=False))
        out.update({"latency_ms_batch1": lat["infer_ms_1"], f"latency_ms_batch{config.batch_size}": lat["infer_ms_B"],
                    "train_images_per_s": lat["train_images_per_s"]})
    return out
