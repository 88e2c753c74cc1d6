"""Metrics computed before training: exact against hand counts and references, repeatable, side-effect free."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from dlasearch import measure
from dlasearch import zoo

REFERENCE = Path(__file__).resolve().parent / "reference" / "dla_models.json"
DLA34_MACS_224 = 3060043776  # also in the reference file: ucbdrive/dla and timm under FlopCounterMode


def tiny_model():
    """conv (no bias) + BN + ReLU + linear: small enough to count every byte by hand."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def hand_count(batch: int) -> dict:
    """The bytes of one SGD-with-momentum step of ``tiny_model`` on (batch, 1, 8, 8), float32/int64."""
    f32, i64 = 4, 8
    activations = (
        batch * 1 * 8 * 8 * f32      # the input batch (saved by the conv)
        + batch * 4 * 8 * 8 * f32    # conv output (saved by BN)
        + 2 * 4 * f32                # BN's batch mean and inverse std
        + batch * 4 * 8 * 8 * f32    # ReLU output (saved by ReLU; the Linear saves a view of it)
        + batch * 10 * f32           # log-softmax output (saved by the loss)
        + batch * i64                # targets
        + f32                        # nll_loss total weight
    )
    params = (4 * 1 * 3 * 3 + 4 + 4 + 10 * 256 + 10) * f32
    buffers = (4 + 4) * f32 + i64  # running mean/var, num_batches_tracked
    return {"activations": activations, "params": params, "buffers": buffers, "grads": params,
            "optimizer": params, "total": activations + buffers + 3 * params}


@pytest.mark.parametrize("batch", [1, 2, 16])
def test_train_memory_matches_hand_count(batch):
    m = tiny_model()
    assert measure.train_memory(m, (batch, 1, 8, 8)) == hand_count(batch)
    assert measure.train_memory_bytes(m, (batch, 1, 8, 8)) == hand_count(batch)["total"]


def test_train_memory_is_repeatable_and_device_independent():
    m = tiny_model()
    runs = [measure.train_memory_bytes(m, (8, 1, 8, 8)) for _ in range(2)]
    assert runs[0] == runs[1] == measure.train_memory_bytes(m, (8, 1, 8, 8), device=None)
    big = zoo.create("dla46_c", 10)
    assert measure.train_memory_bytes(big, (4, 3, 32, 32)) == measure.train_memory_bytes(big, (4, 3, 32, 32))


@pytest.mark.parametrize("name, shape", [("dla46_c", (128, 3, 32, 32)), ("dla46x_c", (37, 3, 32, 32)),
                                         ("dla34up", (6, 3, 64, 64)), ("reentrant", (128, 1, 28, 28))])
def test_train_memory_of_a_cpu_model_equals_the_meta_count(name, shape):
    """A CPU model is counted from batches 2 and 4 (affine in the batch): the same bytes as the meta
    forward at the full batch, for plain, grouped-bottleneck, per-pixel and pattern networks."""
    import copy

    from dlasearch.analysis.compare import size
    from dlasearch.patterns import build

    from dlasearch.ir import to_module

    torch.manual_seed(0)
    m = zoo.create(name, 10) if name in zoo.names() else to_module(build(size(name, 1e5, in_channels=1).spec))
    on_meta = measure.train_memory(copy.deepcopy(m).to("meta"), shape)
    assert measure.train_memory(m, shape) == on_meta
    bf16 = measure.train_memory(m, shape, autocast_dtype=torch.bfloat16)["activations"]
    assert bf16 == measure._saved_bytes(copy.deepcopy(m).train(), shape, torch.bfloat16)  # the full-batch forward
    assert bf16 != on_meta["activations"]  # autocast was on: bf16 activations and weight copies


def test_train_memory_counts_only_trainable_state():
    m = tiny_model()
    m[0].weight.requires_grad_(False)
    got = measure.train_memory(m, (2, 1, 8, 8), optimizer_states=2)
    want = hand_count(2)
    assert got["params"] == want["params"]
    assert got["grads"] == want["grads"] - 36 * 4 and got["optimizer"] == 2 * got["grads"]


def test_measuring_leaves_the_model_alone():
    m = tiny_model().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    measure.train_memory(m, (4, 1, 8, 8))
    measure.latency(m, (4, 1, 8, 8), repeats=2, warmup=1)
    measure.macs(m, (1, 1, 8, 8))
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert m.training and all(p.grad is None for p in m.parameters())


def test_macs_and_params_match_the_reference():
    m = zoo.create("dla34", 1000)
    ref = json.loads(REFERENCE.read_text())["models"]["dla34"]
    assert ref["macs_224"] == DLA34_MACS_224
    assert measure.params(m) == ref["params_1000_classes"]
    assert measure.macs(m, (1, 3, 224, 224)) == DLA34_MACS_224


def test_train_speeds_times_every_model_in_each_round_and_leaves_them_untouched():
    """Benchmarks compare models side by side (bench/fusion_cost.py, bench/seg_vs_smp.py): one img/s per
    round per model, in the order given, progress after each round, the models' weights unchanged."""
    models = {"a": torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3)),
              "b": torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))}
    for m in models.values():
        m(torch.zeros(1, 1, 8, 8))
    before = {k: [p.clone() for p in m.parameters()] for k, m in models.items()}
    seen = []
    out = measure.train_speeds(models, (2, 1, 8, 8), rounds=3, repeats=1, progress=seen.append)
    assert list(out) == ["a", "b"] and all(len(v) == 3 and min(v) > 0 for v in out.values())
    assert seen == [1, 2, 3]
    assert all(torch.equal(p, q) for k, m in models.items() for p, q in zip(m.parameters(), before[k]))


def test_latency_reports_medians_and_throughput():
    m = zoo.create("dla46_c", 10)
    lat = measure.latency(m, (4, 3, 32, 32), repeats=3, warmup=1, channels_last=True)
    assert lat["batch"] == 4 and lat["channels_last"] is True and lat["threads"] >= 1
    assert lat["infer_ms_1"] > 0 and lat["infer_ms_B"] > 0 and lat["train_step_ms"] > 0
    assert lat["train_images_per_s"] == pytest.approx(4 / (lat["train_step_ms"] / 1e3))
    only = measure.latency(m, (4, 3, 32, 32), repeats=1, warmup=0, train=False)
    assert "train_step_ms" not in only and "infer_ms_B" in only


def test_cpu_share_reads_a_sleeping_block_as_a_busy_machine_and_a_busy_one_as_quiet():
    """A block that sleeps got almost none of its threads' CPU time: the bench scripts then warn that their
    absolute speeds understate the machine; a block that computes on one thread gets most of it."""
    with measure.CPUShare(threads=1) as idle:
        time.sleep(0.2)
    assert idle.share < 0.5 and "understate this machine" in idle.warning() and "1 threads'" in idle.warning()
    with measure.CPUShare(threads=1) as busy:
        t = time.process_time()
        while time.process_time() - t < 0.2:
            pass
    assert busy.share > idle.share and measure.CPUShare().warning() == ""  # nothing measured: no warning
