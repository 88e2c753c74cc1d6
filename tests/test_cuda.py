"""CUDA engine checks (``pytest -m cuda``; bench/gpu_check.sh runs them): bf16 training, the graphed step,
and the meta-device memory count against the CUDA peak.  They skip, saying why, without a GPU."""
from __future__ import annotations

import pytest
import torch

from dlasearch.train import data, engine, measure
from dlasearch import train, zoo
from dlasearch.train import trainer
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
    """The graphed step (its own SGD update, lr read from the device) does what the eager step does.

    Checked after the captured step (warm-up steps, then capture and replay), with deterministic cuDNN:
    memorising one batch is chaotic, so over more steps last-bit differences grow to percents."""
    dev = torch.device("cuda")
    x, y = digits32.transform(digits32.x_train[:64]).cuda(), digits32.y_train[:64].cuda()
    params = []
    for graph in (False, True):
        model = tiny().cuda()
        opt = torch.optim.SGD(trainer._param_groups(model, 5e-4), lr=0.01, momentum=0.9, nesterov=True)
        step = engine.Stepper(model, opt, train.TrainConfig(device="cuda"), dev,
                              engine.choose_precision("fp32", None, dev), graph, 64)
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
            for _ in range(engine.WARMUP_STEPS + 1):
                step(x, y)
        assert step.graph_note == ("on" if graph else "off") and (step.graph is not None) == graph
        params.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_nan_found_with_a_graph(digits32):
    res = train.train(tiny(), digits32, epochs=2, lr=1e6, progress=False)
    assert res.status == "nan" and "lower lr" in res.reason


def test_memory_prediction_within_5_percent():
    """dla46_c at batch 256 in bf16: the meta-device count against torch.cuda.max_memory_allocated."""
    model = zoo.create("dla46_c", num_classes=10).cuda()
    mem = measure.train_memory(model, (256, 3, 32, 32), autocast_dtype=torch.bfloat16)
    assert "cuda_peak" in mem, mem
    assert abs(mem["total"] - mem["cuda_peak"]) <= 0.05 * mem["cuda_peak"], mem
