"""The trial engine: precision chosen from the hardware and recorded, batches made on the device, no lost steps."""
from __future__ import annotations

import contextlib
import copy
import json
import types

import pytest
import torch

from dlasearch.train import data, engine, precision, recalibrate, sgd, stepper
from dlasearch import train
from dlasearch.cli import main
from test_train import tiny

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits32():
    return data.load("digits", image_size=32)


def test_auto_precision_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: "amx_bf16")
    p = engine.choose_precision("auto", None, CPU)
    assert p.amp is torch.bfloat16 and p.channels_last and "amx_bf16" in p.reason
    monkeypatch.setattr(precision, "cpu_bf16", lambda: None)
    p = engine.choose_precision("auto", None, CPU)
    assert p.amp is None and p.channels_last and "without native bf16" in p.reason  # NHWC pays on CPU in fp32 too
    assert p.to_dict()["precision"] == "fp32" and p.to_dict()["memory_format"] == "channels_last"
    p = engine.choose_precision("fp32", None, torch.device("cuda"))
    assert p.amp is None and not p.channels_last
    p = engine.choose_precision("auto", None, torch.device("cuda"))
    assert p.amp is torch.bfloat16 and p.channels_last
    p = engine.choose_precision("bf16", False, CPU)  # an explicit setting wins
    assert p.amp is torch.bfloat16 and not p.channels_last and "as set" in p.reason


def test_bn_recalibration_is_update_bns_average(digits32):
    """The recalibration computes what torch.optim.swa_utils.update_bn computes (a cumulative average over
    the batches), bit for bit, leaves the momenta and the mode as they were, and stores statistics that
    differ from the ones training left behind."""
    from torch.optim.swa_utils import update_bn

    model = tiny()
    train.train(model, digits32, epochs=1, batch_size=64, progress=False)  # running stats from training
    cfg = train.TrainConfig(batch_size=32, bn_batches=3)
    ours, theirs = copy.deepcopy(model).eval(), copy.deepcopy(model)
    feeder = engine.Feeder(digits32, CPU)
    engine.recalibrate_bn(ours, feeder, cfg, CPU, engine.choose_precision("fp32", None, CPU))
    batches = feeder.epoch(32, torch.Generator().manual_seed(cfg.seed), cfg.augment, max_batches=3)
    update_bn((x for x, _ in batches), theirs)
    bns = [m for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not ours.training and all(m.momentum == 0.1 for m in bns)
    for (name, a), b, c in zip(ours.state_dict().items(), theirs.state_dict().values(),
                               model.state_dict().values()):
        assert torch.equal(a, b), name
        if name.endswith("running_var"):
            assert not torch.equal(a, c), name


def test_feeder_batches_match_the_dataset_transform(digits32):
    feeder = engine.Feeder(digits32, CPU)
    (x, y), = list(feeder.split("val", 10_000))
    assert torch.equal(x, digits32.transform(digits32.x_val)) and torch.equal(y, digits32.y_val)
    ep = lambda seed: list(feeder.epoch(64, torch.Generator().manual_seed(seed), augment=True))  # noqa: E731
    a, b, c = ep(0), ep(0), ep(1)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    assert sum(len(y) for _, y in a) == len(digits32.y_train)  # the last partial batch is kept
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(digits32.y_train.tolist())
    assert a[0][0].shape[1:] == digits32.x_train.shape[1:]


def test_feeder_stops_at_the_step_budget(digits32):
    batches = list(engine.Feeder(digits32, CPU).epoch(64, torch.Generator(), augment=False, max_batches=3))
    assert len(batches) == 3


def test_result_says_what_ran(digits32, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: None)
    res = train.train(tiny(), digits32, steps=2, batch_size=64, progress=False)
    assert res.engine["precision"] == "fp32" and res.engine["memory_format"] == "channels_last"
    assert res.engine["compile"] == "none" and "on CPU" in res.engine["compile_reason"]
    assert res.engine["cuda_graph"] == "off" and res.engine["bn_recalibration"] == "eager"
    res = train.train(tiny(), digits32, steps=2, batch_size=64, progress=False, cuda_graph=True)
    assert res.engine["cuda_graph"].startswith("off: CUDA graphs need")


def test_result_says_where_the_time_went(digits32):
    """engine.seconds splits a run's time into steps, graph set-up, BatchNorm recalibration and scoring,
    the split that tells which fixed cost of a short trial to cut."""
    took = train.train(tiny(), digits32, epochs=2, batch_size=64, bn_batches=2, progress=False).engine["seconds"]
    assert set(took) == {"steps", "graph_setup", "recalibration", "scoring"}, took
    assert took["steps"] > 0 and took["recalibration"] > 0 and took["scoring"] > 0 and took["graph_setup"] == 0
    took = train.train(tiny(), digits32, epochs=1, batch_size=64, bn_batches=0, progress=False).engine["seconds"]
    assert took["recalibration"] == 0 and took["scoring"] > 0


def test_compile_auto_pays_only_for_long_large_image_cuda_runs():
    cuda = torch.device("cuda")
    assert engine.resolve_compile("auto", CPU, 224, 10**9)[0] == "none"
    assert engine.resolve_compile("auto", cuda, 32, 10**9)[0] == "none"  # launch-bound: the graph wins
    assert engine.resolve_compile("auto", cuda, 224, 22_500)[0] == "none"  # a short trial
    mode, why = engine.resolve_compile("auto", cuda, 224, 2_000_000)
    assert mode == "default" and "earn back" in why
    assert engine.resolve_compile("reduce-overhead", CPU, 32, 1) == ("reduce-overhead", "compile=reduce-overhead as set")


def test_bf16_channels_last_trains(digits32):
    res = train.train(tiny(), digits32, steps=3, batch_size=64, precision="bf16", progress=False)
    assert res.status == "ok" and res.engine["precision"] == "bf16"
    assert res.engine["memory_format"] == "channels_last" and 0 <= res.val_accuracy <= 1


def test_nan_is_found_without_a_sync_per_step(digits32):
    res = train.train(tiny(), digits32, epochs=2, lr=1e6, progress=False)
    assert res.status == "nan" and "at step" in res.reason and res.epochs == 0
    assert res.steps < len(res.reason) * 1000  # the count of finite steps, not every step run


@pytest.mark.parametrize("opts, message", [
    ({"compile": "fast"}, "compile='fast'; allowed: auto, none, default, reduce-overhead"),
    ({"cuda_graph": "yes"}, "cuda_graph='yes': expected true, false or null"),
    ({"channels_last": 1}, "channels_last=1: expected true, false or null"),
])
def test_bad_engine_options(opts, message):
    with pytest.raises(train.TrainError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train.TrainConfig(**opts)


def test_metrics_json_records_precision(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "arch=dla34", "data.name=digits", "data.limit=200", "steps=1", "batch_size=32",
                 "compile=none", f"out={out}"]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["engine"]["precision"] in ("fp32", "bf16") and record["engine"]["reason"]
    assert record["config"]["compile"] == "none"
    assert main(["train", "arch=dla34", "compile=max"]) == 2
    assert "compile='max'; allowed" in capsys.readouterr().err


@pytest.mark.parametrize("momentum, nesterov", [(0.9, True), (0.9, False), (0.0, False)])
def test_graph_update_is_torch_sgd(digits32, momentum, nesterov):
    """The SGD update the CUDA graph replays (lr read from a tensor) equals torch.optim.SGD's, step for step."""
    cfg = train.TrainConfig(momentum=momentum, nesterov=nesterov, device="cpu")
    x, y = digits32.transform(digits32.x_train[:32]), digits32.y_train[:32]
    models = [tiny(), tiny()]
    opts = [torch.optim.SGD(sgd.param_groups(m, 5e-4), lr=0.1, momentum=momentum, nesterov=nesterov)
            for m in models]
    steppers = [engine.Stepper(m, o, cfg, CPU, engine.choose_precision("fp32", None, CPU), False, 32)
                for m, o in zip(models, opts)]
    steppers[1].lr = torch.tensor(0.1)
    for k in range(3):
        steppers[0].eager(x, y)
        if k == 0:  # the graph is captured after eager warm-up steps, which create the momentum buffers
            steppers[1].eager(x, y)
            continue
        out, loss = steppers[1]._forward_loss(x, y)
        opts[1].zero_grad(set_to_none=True)
        loss.backward()
        steppers[1]._update()
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)  # rounding only


@pytest.fixture
def stand_in_cuda(monkeypatch):
    """The engine's CUDA graph paths on the CPU: no side stream, no sync, and a "graph" that replays its
    recorded step by running it again (``replay`` given); without ``replay``, every capture fails."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    for mod in (stepper, recalibrate):
        monkeypatch.setattr(mod, "side_stream", lambda device: contextlib.nullcontext())

    def graphs(replay=None, error=None):
        if replay is not None:
            for mod in (stepper, recalibrate):
                monkeypatch.setattr(mod, "capture", lambda record, device: (types.SimpleNamespace(
                    replay=lambda: replay(record)), None))
        else:
            def fail(graph):
                raise error
            monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
            monkeypatch.setattr(torch.cuda, "graph", fail)
    return graphs


@pytest.mark.parametrize("fails", [False, True])
def test_graphed_step_paths(digits32, stand_in_cuda, fails):
    """The graphed Stepper's control flow: eager warm-ups, one graph per batch size, replays that do what the
    eager step does; a capture that fails leaves eager steps (the same arithmetic) and a note saying why."""
    fp32 = engine.choose_precision("fp32", None, CPU)
    x, y = digits32.transform(digits32.x_train[:32]), digits32.y_train[:32]
    models = [tiny(), tiny()]
    opts = [torch.optim.SGD(sgd.param_groups(m, 5e-4), lr=0.1, momentum=0.9, nesterov=True) for m in models]
    if fails:
        stand_in_cuda(error=AssertionError())  # no message: the note still reads
    else:  # a real replay writes fresh gradients into the graph's pool: none accumulate
        stand_in_cuda(replay=lambda record: (opts[0].zero_grad(set_to_none=True), record()))
    graphed, eager = (engine.Stepper(m, o, train.TrainConfig(), CPU, fp32, g, 32)
                      for m, o, g in zip(models, opts, (True, False)))
    batches = [(x, y)] * (engine.WARMUP_STEPS + 2) + [(x[:12], y[:12])] * 3 + [(x, y)]
    for bx, by in batches:
        graphed(bx, by)
        eager(bx, by)
    if fails:
        assert graphed.graph_note == "off: capture failed (AssertionError: )" and not graphed.use_graph
        assert graphed.replays == 0 and graphed.graphs == {}
    else:
        assert graphed.graph_note == "on" and sorted(graphed.graphs) == [12, 32] and graphed.replays == 5
    assert graphed.setup_seconds > 0 and int(graphed.t) == int(eager.t) == len(batches)
    for p, q in zip(*(m.parameters() for m in models)):
        if fails:
            assert torch.equal(p, q)
        else:
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)  # the replayed update: rounding only
    torch.testing.assert_close(graphed.read(), eager.read(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("fails", [False, True])
def test_graphed_recalibration_paths(digits32, stand_in_cuda, fails):
    """The graphed Recalibrator's control flow: a warm-up, a capture and replays summing per-batch statistics,
    the partial batch eager, over several passes, store the eager average; a failed capture redoes the pass
    eagerly (bit for bit) and says why.  Momenta and mode are left as they were."""
    fp32 = engine.choose_precision("fp32", None, CPU)
    model = tiny()
    cfg = train.TrainConfig(batch_size=256, bn_batches=100)  # the whole split: a partial batch
    if fails:
        stand_in_cuda(error=RuntimeError("not capturable\nthe rest of the message"))
    else:
        stand_in_cuda(replay=lambda record: record())
    feeder = engine.Feeder(digits32, CPU)
    ours, theirs = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    recal = engine.Recalibrator(ours, cfg, CPU, fp32, graph=True)
    assert recal.active and not recal.use_graph  # on CPU; turned on below as on CUDA
    recal.use_graph, recal.note, recal.sums = True, "graphed", [torch.zeros_like(t) for t in recal.stats]
    for _ in range(3):
        recal(feeder)
        engine.recalibrate_bn(theirs, feeder, cfg, CPU, fp32)
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            if fails:
                assert torch.equal(a, b), name
            else:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    if fails:
        assert recal.note == "eager: capture failed (RuntimeError: not capturable)" and recal.graph is None
    else:
        assert recal.note == "graphed" and recal.graph is not None and len(recal.static_x) == 256
    assert not ours.training and all(m.momentum == 0.1 for m in recalibrate.bn_layers(ours))


def test_recalibration_is_skipped_where_nothing_needs_it(digits32):
    """bn_batches=0 and a frozen backbone leave the statistics alone, on the eager path and the graphed one."""
    fp32 = engine.choose_precision("fp32", None, CPU)
    feeder = engine.Feeder(digits32, CPU)
    for opts in ({"bn_batches": 0}, {"freeze": "backbone"}):
        model = tiny()
        before = copy.deepcopy(model.state_dict())
        cfg = train.TrainConfig(batch_size=64, **opts)
        recal = engine.Recalibrator(model, cfg, CPU, fp32, graph=True)
        assert not recal.active
        recal(feeder)
        engine.recalibrate_bn(model, feeder, cfg, CPU, fp32)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.values()))
