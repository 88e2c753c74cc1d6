"""The trainer learns for real, is repeatable, stops cleanly; ``dlasearch train`` writes a complete run."""
from __future__ import annotations

import json

import pytest
import torch

from dlasearch.ir import to_module
from dlasearch.train import data
from dlasearch import arch, ir, patterns, train
from dlasearch.cli import main
from dlasearch.errors import DLASearchError

from tests.test_data import SHARED

# A DLA with the full downsampling (stride 32) and tiny widths: trains in seconds on CPU.
TINY = {"pattern": "dla", "stem": {"channels": 8, "kernel": 3},
        "conv_stages": [{"convs": 1, "channels": 8}, {"convs": 1, "channels": 16, "stride": 2}],
        "stages": [{"blocks": 2, "channels": 16}, {"blocks": 2, "channels": 32},
                   {"blocks": 2, "channels": 32}, {"blocks": 2, "channels": 64}]}


def tiny(in_channels=1, num_classes=10, seed=0):
    torch.manual_seed(seed)
    return to_module(patterns.build({**TINY, "in_channels": in_channels, "num_classes": num_classes}, "tiny"))


@pytest.fixture(scope="module")
def digits32():
    return data.load("digits", image_size=32)


def test_learns_digits(digits32):
    res = train.train(tiny(), digits32, epochs=8, batch_size=64, augment=False, progress=False)
    assert res.status == "ok" and res.epochs == 8 and len(res.history) == 8
    assert res.val_accuracy >= 0.90, res.history
    assert res.test_accuracy is None and res.train_seconds > 0


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data absent")
def test_fashion_mnist_slice_beats_chance():
    d = data.load("fashion_mnist", root=SHARED, download=False, limit=3000, image_size=32)
    res = train.train(tiny(), d, epochs=3, batch_size=64, progress=False)
    assert res.status == "ok" and res.val_accuracy > 0.5, res.history  # chance is 0.1


def test_validating_less_often_leaves_the_weights_and_final_accuracies_unchanged(digits32):
    """eval_every=3 over 4 epochs validates after epochs 3 and 4 only, and the callback runs then."""
    seen = []
    kw = dict(epochs=4, batch_size=64, progress=False, test=True)
    every = train.train(m1 := tiny(), digits32, **kw)
    sparse = train.train(m2 := tiny(), digits32, eval_every=3, callback=lambda e, m: seen.append(e), **kw)
    assert seen == [3, 4] and [("val_accuracy" in h) for h in sparse.history] == [False, False, True, True]
    assert [h["train_loss"] for h in sparse.history] == [h["train_loss"] for h in every.history]
    assert (sparse.val_accuracy, sparse.test_accuracy) == (every.val_accuracy, every.test_accuracy)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_same_seed_same_numbers(digits32):
    a = train.train(tiny(seed=1), digits32, steps=4, batch_size=32, seed=1, progress=False)
    b = train.train(tiny(seed=1), digits32, steps=4, batch_size=32, seed=1, progress=False)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in b.history]
    c = train.train(tiny(seed=1), digits32, steps=4, batch_size=32, seed=2, progress=False)
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]  # the seed drives shuffling/augmentation


def test_step_budget_and_schedule(digits32):
    res = train.train(tiny(), digits32, steps=3, batch_size=64, warmup_epochs=0, progress=False)
    assert (res.steps, res.epochs, res.status) == (3, 1, "ok")
    assert res.history[0]["lr"] == pytest.approx(0.1)  # no warm-up: the first step runs at the peak lr


def test_nan_loss_ends_with_nan_status(digits32):
    res = train.train(tiny(), digits32, epochs=2, lr=1e6, progress=False)
    assert res.status == "nan" and "lower lr" in res.reason
    assert res.val_accuracy is None and res.test_accuracy is None


def test_callback_can_stop(digits32):
    calls = []
    res = train.train(tiny(), digits32, epochs=3, batch_size=256, progress=False,
                      callback=lambda epoch, m: calls.append((epoch, m["val_accuracy"])) or epoch == 1)
    assert res.status == "stopped" and res.epochs == 1 and calls[0][0] == 1

    def prune(epoch, metrics):
        raise train.StopTraining("pruned by the search")

    res = train.train(tiny(), digits32, epochs=3, batch_size=256, progress=False, callback=prune)
    assert (res.status, res.reason, len(res.history)) == ("stopped", "pruned by the search", 1)


def test_test_split_only_when_asked(digits32, monkeypatch):
    used = []
    split = data.Dataset.split

    def spy(self, name):
        used.append(name)
        return split(self, name)

    monkeypatch.setattr(data.Dataset, "split", spy)
    res = train.train(tiny(), digits32, steps=2, batch_size=64, progress=False)
    assert "test" not in used and res.test_accuracy is None
    res = train.train(tiny(), digits32, steps=2, batch_size=64, progress=False, test=True)
    assert used[-1] == "test" and 0 <= res.test_accuracy <= 1


def test_channels_last_and_threads(digits32):
    before = torch.get_num_threads()
    res = train.train(tiny(), digits32, steps=2, batch_size=32, channels_last=True, threads=1, progress=False)
    assert res.status == "ok" and torch.get_num_threads() == before


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs=0: expected an int >= 1"),
    ({"batch_size": -1}, "batch_size=-1"),
    ({"steps": 0}, "steps=0"),
    ({"lr": -0.1}, "lr=-0.1"),
    ({"momentum": 1.0}, "momentum=1.0"),
    ({"momentum": 0.0}, "nesterov=true needs momentum > 0"),
    ({"precision": "fp16"}, "allowed: auto, fp32, bf16"),
    ({"init": "he"}, "init='he'; allowed: original, zero-last"),
    ({"device": "tpu"}, "device='tpu'"),
    ({"epoch": 3}, "unknown training option"),
])
def test_bad_settings(digits32, kwargs, message):
    with pytest.raises(train.TrainError, match=message):
        train.train(tiny(), digits32, **kwargs)


def test_architecture_must_fit_the_data(digits32):
    with pytest.raises(train.TrainError, match="too small .* downsamples by 32.*image_size=32"):
        train.train(tiny(), data.load("digits"))
    with pytest.raises(train.TrainError, match="takes 3-channel input .* in_channels=1"):
        train.train(tiny(in_channels=3), digits32)
    with pytest.raises(train.TrainError, match="predicts 5 classes .* num_classes=10"):
        train.train(tiny(num_classes=5), digits32)
    assert issubclass(train.TrainError, DLASearchError)


def test_resolve_arch(tmp_path):
    g = arch.resolve_arch("dla46_c", 1, 7)
    assert g.nodes["input"]["channels"] == 1 and g.nodes["fc"]["classes"] == 7 and arch.total_stride(g) == 32
    spec = tmp_path / "net.json"
    spec.write_text(json.dumps({**TINY, "in_channels": 3, "num_classes": 100}))
    g = arch.resolve_arch(str(spec), 1, 10)  # a spec follows the data
    assert g.nodes["input"]["channels"] == 1 and g.nodes["fc"]["classes"] == 10
    saved = tmp_path / "ir.json"
    saved.write_text(ir.to_json(patterns.build({**TINY, "in_channels": 3})))
    with pytest.raises(train.TrainError, match="3-channel input"):  # an IR is taken as it is
        arch.check_fit(arch.resolve_arch(str(saved), 1, 10), data.load("digits", image_size=32))
    g = arch.resolve_arch("dla34up", 1, 10)  # a dense zoo model, built for the data like a classifier
    assert g.nodes["input"]["channels"] == 1 and ir.infer_shapes(g, 32)[g.of_kind("output")[0]] == (10, 32, 32)
    with pytest.raises(train.TrainError, match="dla34up predicts per pixel .* digits has one label per image"):
        arch.check_fit(g, data.load("digits", image_size=32))
    with pytest.raises(train.TrainError, match="not a zoo model"):
        arch.resolve_arch("dla35", 1, 10)
    spec.write_text(json.dumps({**TINY, "blocks": 3}))
    with pytest.raises(DLASearchError, match="unknown key 'blocks'"):  # found before any data is loaded
        arch.read_arch(str(spec))


# ------------------------------------------------------------------ CLI

def test_cli_train_writes_a_complete_run(tmp_path, capsys):
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    out = tmp_path / "run"
    rc = main(["train", f"arch={spec}", "data=digits", "epochs=1", "batch_size=64", f"out={out}",
               "latency=false", "test=true"])
    assert rc == 0
    assert "val_accuracy" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.yaml", "ir.json", "metrics.json", "model.safetensors"]  # no temp files left
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["status"] == "ok" and rec["data"]["image_size"] == [32, 32] and rec["config"]["epochs"] == 1
    m = rec["metrics"]
    assert m["params"] > 0 and m["macs"] > 0 and m["train_memory_bytes"] > 0
    assert 0 <= m["val_accuracy"] <= 1 and 0 <= m["test_accuracy"] <= 1 and m["train_seconds"] > 0
    g = ir.from_json((out / "ir.json").read_text())
    assert ir.fingerprint(g) == rec["fingerprint"] and g.nodes["input"]["channels"] == 1


def test_cli_zoo_name_and_default_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "arch=dla46_c", "data=digits", "steps=1", "batch_size=8", "name=smoke"])
    assert rc == 0
    rec = json.loads((tmp_path / "results" / "train" / "smoke" / "metrics.json").read_text())
    assert rec["name"] == "dla46_c" and rec["steps"] == 1 and rec["metrics"]["train_images_per_s"] > 0
    assert "latency_ms_batch8" in rec["metrics"]


@pytest.mark.parametrize("args, message", [
    (["data=imagenet"], "unknown dataset 'imagenet'; allowed: digits, mnist, fashion_mnist, cifar10, npz"),
    (["epochs=0"], "epochs=0"),
    (["batch_size=-4"], "batch_size=-4"),
    (["data.lmit=5"], "did you mean 'data.limit'"),
    (["lrr=0.1"], "did you mean 'lr'"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    out = tmp_path / "run"
    assert main(["train", f"arch={spec}", f"out={out}", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("dlasearch train: error:")
    assert not out.exists()


def test_short_run_of_a_zoo_dla_on_digits_is_not_at_chance(digits32):
    """dla46_c, 2 epochs of 11 steps: the BatchNorm averages used to lag the weights (val loss 1e11, 10%)."""
    from dlasearch import stats

    torch.manual_seed(0)
    model = to_module(arch.resolve_arch("dla46_c", 1, 10))
    res = train.train(model, digits32, epochs=2, progress=False, threads=1)
    n = len(digits32.y_val)
    assert res.val_loss < 5, res.history
    assert not stats.at_chance(res.val_accuracy, stats.chance(digits32.y_val), n), res.history


def test_cli_train_warns_at_chance(tmp_path, capsys):
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    out = tmp_path / "run"
    assert main(["train", f"arch={spec}", "steps=1", "lr=0", f"out={out}", "latency=false", "bn_batches=0", "progress=false"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: validation accuracy") and "at chance" in err[0]
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["chance"]["val"]["at_chance"] is True and rec["chance"]["val"]["n"] == 144
