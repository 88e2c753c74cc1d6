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

The loop (``fit``) is here; its pieces have a module each, and their names stay importable from here:
``precision`` (what a run computes in), ``feeder`` (batches on the device, ``evaluate``), ``stepper``
(the training step, graphed), ``recalibrate`` (BatchNorm statistics before validation), ``graphs``
(warm-up and capture, shared by the two), ``compiling`` (``torch.compile``, ``small_maps``), ``sgd``
(parameter groups, lr schedule), ``dense`` (per-pixel scoring and class weights for segment and boundary data).
"""
from __future__ import annotations

import math
import sys
import time

import torch
from tqdm import tqdm

from dlasearch.train.compiling import (
    COMPILE_MIN_IMAGES, COMPILE_MIN_SIDE, COMPILE_MODES, compile_model, cpu_small_maps, resolve_compile,
)
from dlasearch.train.config import StopTraining, TrainResult
from dlasearch.train.data import Dataset
from dlasearch.train.dense import SCORE_NAMES, loss_weights, score_split
from dlasearch.train.feeder import Feeder, evaluate
from dlasearch.train.precision import Precision, autocast, choose_precision, cpu_bf16
from dlasearch.train.recalibrate import Recalibrator, needs_recalibration, recalibrate_bn
from dlasearch.train.sgd import param_groups, resolve_schedule, schedule
from dlasearch.train.stepper import WARMUP_STEPS, Stepper

# The engine's pieces live in their own modules; their names stay importable from here.
__all__ = ['COMPILE_MODES', 'COMPILE_MIN_SIDE', 'COMPILE_MIN_IMAGES', 'WARMUP_STEPS', 'cpu_bf16', 'Precision',
           'choose_precision', 'autocast', 'Feeder', 'evaluate', 'Stepper', 'resolve_compile', 'compile_model',
           'cpu_small_maps', 'recalibrate_bn', 'needs_recalibration', 'Recalibrator', 'fit']


def fit(model, data: Dataset, cfg, device: torch.device, prec: Precision, callback, test: bool,
        eval_epochs=None):
    """The training loop behind ``train.train`` (same arguments, same ``TrainResult``)."""
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation: CPU, so runs match anywhere
    feeder = Feeder(data, device)
    per_epoch = math.ceil(len(data.y_train) / cfg.batch_size)
    total = cfg.steps or cfg.epochs * per_epoch
    warmup = min(round(cfg.warmup_epochs * per_epoch), total // 2)
    opt = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov)
    kind, schedule_why = resolve_schedule(cfg.schedule, data.dense)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(total, warmup, kind))
    weights, weights_note = loss_weights(cfg.class_weights, data, device)
    mode, compile_why = resolve_compile(cfg.compile, device, min(data.image_size), total * cfg.batch_size)
    graph = cfg.cuda_graph if cfg.cuda_graph is not None else mode == "none"
    graph = graph and device.type == "cuda"
    fast, small_note = cpu_small_maps(model, (data.channels, *data.image_size), device, cfg.small_maps)
    net = compile_model(fast, mode)
    stepper = Stepper(net, opt, cfg, device, prec, graph, cfg.batch_size, data.dense, weights)
    recalibrate = Recalibrator(fast, cfg, device, prec, graph)
    scoring = Precision(None, prec.channels_last, "fp32: what load and export run")
    if cfg.cuda_graph and device.type != "cuda":
        stepper.graph_note = "off: CUDA graphs need a CUDA device"
    res = TrainResult(status="ok", task=data.task)
    score_name = SCORE_NAMES[data.task]
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
            loss_sum, correct, first_bad, bad_value, scored = stepper.read()
            res.train_seconds += time.perf_counter() - t0
            if first_bad:
                res.status, res.steps = "nan", first_bad - 1
                res.reason = f"loss became {bad_value} at step {first_bad} (epoch {epoch}); lower lr"
                break
            res.epochs = epoch
            metrics = {"epoch": epoch, "steps": res.steps, "lr": lr, "train_loss": loss_sum / max(seen, 1),
                       "train_accuracy": correct / max(scored if data.dense else seen, 1)}
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
            val_loss, val_acc, val_score, extra = score_split(net, feeder, "val", cfg.eval_batch_size, scoring)
            eval_seconds += time.perf_counter() - t_eval
            res.val_metrics = {f"val_{k}": v for k, v in extra.items()}
            metrics.update(val_loss=val_loss, val_accuracy=val_acc, **res.val_metrics, val_score=val_score,
                           seconds=time.perf_counter() - t0)
            res.history.append(metrics)
            res.val_loss, res.val_accuracy, res.val_score = val_loss, val_acc, val_score
            bar.set_postfix(epoch=epoch, loss=f"{metrics['train_loss']:.3f}", val=f"{val_score:.3f}")
            if cfg.progress is None and not show:  # a log file or pipe: one line per epoch instead of a bar
                dense = f", val_{score_name} {val_score:.4f}" if data.dense else ""
                print(f"epoch {epoch}/{epochs}: train_loss {metrics['train_loss']:.4f}, "
                      f"val_loss {val_loss:.4f}, val_accuracy {val_acc:.4f}{dense}, {metrics['seconds']:.1f}s",
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
        res.val_accuracy = res.val_loss = res.val_score = None
        res.val_metrics = {}
    elif test:
        _, res.test_accuracy, res.test_score, extra = score_split(net, feeder, "test", cfg.eval_batch_size, scoring)
        res.test_metrics = {f"test_{k}": v for k, v in extra.items()}
    if stepper.use_graph and stepper.graph is None:
        stepper.graph_note = f"off: fewer than {WARMUP_STEPS + 1} full batches, nothing to capture"
    res.engine = {**prec.to_dict(), "eval_precision": "fp32", "compile": mode, "compile_reason": compile_why,
                  "cuda_graph": stepper.graph_note, "bn_recalibration": recalibrate.note, "small_maps": small_note,
                  "schedule": kind, "schedule_reason": schedule_why, "loss": weights_note}
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
