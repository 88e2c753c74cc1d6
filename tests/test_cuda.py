"""CUDA engine checks (``pytest -m cuda``; bench/gpu_check.sh runs them): bf16 training, the graphed step,
and the meta-device memory count against the CUDA peak.  They skip, saying why, without a GPU."""
from __future__ import annotations

import pytest
import torch

from dlasearch import data, measure, train, zoo
from test_train import tiny

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (CI has none)")]


@pytest.fixture(scope="module")
def digits32():
    return data.load("digits", image_size=32)


def test_trains_on_cuda_in_bf16_with_a_graph(digits32):
    res = train.train(tiny(), digits32, epochs=3, batch_size=64, progress=False, test=True)
    assert res.status == "ok" and res.engine["precision"] == "bf16", res.engine
    assert res.engine["memory_format"] == "channels_last" and res.engine["cuda_graph"] == "on", res.engine
    assert res.val_accuracy > 0.5 and 0 <= res.test_accuracy <= 1, res.history


def test_graph_replay_matches_eager(digits32):
    """The graphed step (with its own SGD update reading a device lr) follows the same trajectory as eager.

    A stable learning rate: max-pool backward on CUDA is not bitwise deterministic, and at a diverging
    rate those last-bit differences grow to percents within a few steps."""
    runs = [train.train(tiny(), digits32, steps=12, batch_size=64, lr=0.01, precision="fp32", cuda_graph=g,
                        progress=False) for g in (False, True)]
    assert runs[1].engine["cuda_graph"] == "on" and runs[0].engine["cuda_graph"] == "off"
    a, b = runs[0].history[-1], runs[1].history[-1]
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-2), (a, b)
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=2e-2), (a, b)


def test_nan_found_with_a_graph(digits32):
    res = train.train(tiny(), digits32, epochs=2, lr=1e6, progress=False)
    assert res.status == "nan" and "lower lr" in res.reason


def test_memory_prediction_within_5_percent():
    """dla46_c at batch 256 in bf16: the meta-device count against torch.cuda.max_memory_allocated."""
    model = zoo.create("dla46_c", num_classes=10).cuda()
    mem = measure.train_memory(model, (256, 3, 32, 32), autocast_dtype=torch.bfloat16)
    assert "cuda_peak" in mem, mem
    assert abs(mem["total"] - mem["cuda_peak"]) <= 0.05 * mem["cuda_peak"], mem
