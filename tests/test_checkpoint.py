"""Trained weights are kept and come back: train -> load, search -> best weights, checkpoints in, backbones."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import dlasearch
from conftest import tiny_spec
from dlasearch.deploy import checkpoint
from dlasearch.train import data as datamod
from dlasearch import search, zoo
from dlasearch.arch import resolve_arch
from dlasearch.ir import to_module
from dlasearch.cli import main
from numerics import load_case, original_weights


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    spec = tmp / "tiny.json"
    spec.write_text(json.dumps(tiny_spec("dla")))
    out = tmp / "run"
    assert main(["train", f"arch={spec}", "data.name=digits", "data.limit=600", "epochs=4", "batch_size=32",
                 "image_size=16", f"out={out}", "latency=false"]) == 0
    return out


def test_train_then_load_gives_the_predictions_of_training(run_folder):
    rec = json.loads((run_folder / "metrics.json").read_text())
    assert (run_folder / "model.safetensors").is_file() and rec["weights"] == "model.safetensors"
    model = dlasearch.load(run_folder)
    assert not model.training and model.preprocess.image_size == (16, 16)
    assert rec["metrics"]["val_accuracy"] > 0.3  # a trained model: its predictions are worth comparing
    ds = datamod.load("digits", limit=600).resized(16)
    with torch.no_grad():
        pred = model(model.preprocess(ds.x_val)).argmax(1)
    assert int((pred == ds.y_val).sum()) / len(ds.y_val) == rec["metrics"]["val_accuracy"]
    again = dlasearch.load(run_folder / "model.safetensors")
    x = model.preprocess(ds.x_val[:4])
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_a_bf16_trained_run_stores_the_accuracy_that_load_reproduces(tmp_path):
    """Training in bf16 (forced here: what precision=auto picks on AMX/AVX512-BF16 CPUs and CUDA) still
    scores in fp32, so the stored accuracy is what the loaded model gives on any machine."""
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(tiny_spec("chain")))
    out = tmp_path / "run"
    assert main(["train", f"arch={spec}", "data.name=digits", "data.limit=300", "epochs=2", "batch_size=32",
                 "image_size=16", "precision=bf16", f"out={out}", "latency=false"]) == 0
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["engine"]["precision"] == "bf16" and rec["engine"]["eval_precision"] == "fp32"
    model = dlasearch.load(out)
    ds = datamod.load("digits", limit=300).resized(16)
    with torch.no_grad():
        pred = model(model.preprocess(ds.x_val)).argmax(1)
    assert int((pred == ds.y_val).sum()) / len(ds.y_val) == rec["metrics"]["val_accuracy"]


def _npz(tmp_path, classes=4, n=48):
    rng = np.random.default_rng(0)
    path = tmp_path / "rgb.npz"
    np.savez(path, x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=np.arange(n) % classes)
    return path


def test_finetune_a_timm_named_checkpoint_with_other_classes_and_frozen_backbone(tmp_path, capsys):
    torch.manual_seed(1)
    ckpt = tmp_path / "dla34.safetensors"
    save_file(zoo.create("dla34").state_dict(), str(ckpt))  # the published layout, 1000 classes
    out = tmp_path / "ft"
    assert main(["train", "arch=dla34", f"weights={ckpt}", f"data={_npz(tmp_path)}", "epochs=1", "batch_size=16",
                 "freeze=backbone", "lr=0.01", "latency=false", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "classifier re-initialised" in printed and "predicts 1000 classes, this model 4" in printed
    total = sum(v.numel() for v in zoo.create("dla34", num_classes=4).parameters())
    assert f"freeze=backbone: {total - 4 * 512 - 4:,} parameters frozen" in printed  # all but fc: 4x512 + 4
    assert "2,052 trainable (fc)" in printed
    before = checkpoint.read_state_dict(ckpt)[0]
    after = checkpoint.read_state_dict(out / "model.safetensors")[0]
    assert after["fc.weight"].shape == (4, 512, 1, 1)
    backbone = [k for k in before if not k.startswith("fc.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # weights and BatchNorm statistics fixed


def test_original_pth_checkpoint_loads_through_convert_original(tmp_path):
    """An original-implementation .pth (DataParallel prefix, dead entries and all) gives the original's outputs."""
    case = load_case("dla34_224")
    path = tmp_path / "dla34-ba72cf86.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in original_weights(case).items()}}, path)
    ours = zoo.create("dla34", weights=path).eval()
    with torch.no_grad():
        got = ours(case["x"])
    want = case["y_eval"]
    assert ((got - want).norm() / want.norm()).item() < 1e-5


def test_mismatched_and_corrupt_checkpoints_are_one_line(tmp_path, capsys):
    ckpt = tmp_path / "dla46.safetensors"
    save_file(zoo.create("dla46_c").state_dict(), str(ckpt))
    with pytest.raises(checkpoint.CheckpointError) as e:
        zoo.create("dla34", weights=ckpt)
    msg = str(e.value)
    assert msg.startswith(str(ckpt)) and "missing key(s)" in msg and "unexpected key(s)" in msg
    assert "first shape mismatch" in msg and "(+" in msg and len(msg.splitlines()) == 1
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint at all")
    assert main(["train", "arch=dla34", f"weights={bad}", "epochs=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and "not a readable checkpoint" in err and len(err.splitlines()) == 1
    trunc = tmp_path / "cut.safetensors"
    trunc.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(checkpoint.CheckpointError, match="not a readable safetensors file"):
        checkpoint.read_state_dict(trunc)


def test_features_only_returns_each_stage():
    m = zoo.create("dla34", features_only=True).eval()
    with torch.no_grad():
        feats = m(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4),
                                               (2, 512, 2, 2)]
    assert [i["reduction"] for i in m.feature_info] == [2, 4, 8, 16, 32]
    assert not any(k.startswith("fc.") for k in m.state_dict())
    seg = zoo.create("dla34up", features_only=True)
    assert [i["num_chs"] for i in seg.feature_info] == [32, 64, 128, 256, 512]
    assert all(k.startswith("base.") for k in seg.state_dict())


def test_features_only_keeps_loaded_weights(tmp_path):
    torch.manual_seed(0)
    full = zoo.create("dla34")
    path = tmp_path / "w.safetensors"
    save_file(full.state_dict(), str(path))
    feats = zoo.create("dla34", weights=path, features_only=True)
    assert torch.equal(feats.state_dict()["level5.root.conv.weight"], full.state_dict()["level5.root.conv.weight"])


def _search_keeps_best(tmp_path, **study):
    from test_search import tiny

    sp = tiny(tmp_path, study={"trials": 3, **study}, seed_published=False)
    summary = search.run(sp, log=lambda *a: None)
    best = summary["best"][0]
    folder = Path(summary["dir"])  # results/<study>, or results/<study>@<hash> for another storage
    kept = folder / "best" / f"trial{best}.safetensors"
    assert kept.is_file()
    a = dlasearch.load(kept)
    b = dlasearch.load(study=search.study_name(sp), trial=best, storage=sp["study"]["storage"] or
                       str(folder / "journal.log"), artifacts=str(folder / "artifacts"))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    return sp, summary


def test_search_keeps_only_the_best_weights_on_a_journal(tmp_path):
    sp, summary = _search_keeps_best(tmp_path)
    store = tmp_path / "hda" / "artifacts"
    assert len(list(store.iterdir())) == len(summary["best"])  # keep=best: the others were removed
    others = [t.number for t in search.open_study(sp, create=False).get_trials()
              if t.state.name == "COMPLETE" and t.number not in summary["best"]
              and "duplicate_of" not in t.user_attrs]
    for n in others:
        with pytest.raises(checkpoint.CheckpointError, match="no weights kept"):
            dlasearch.load(study="hda", trial=n, storage=str(tmp_path / "hda" / "journal.log"))


def test_keep_none_stores_no_weights(tmp_path):
    from test_search import tiny

    sp = tiny(tmp_path, study={"trials": 1, "keep": "none"}, seed_published=False)
    search.run(sp, log=lambda *a: None)
    assert not (tmp_path / "hda" / "artifacts").exists() or not any((tmp_path / "hda" / "artifacts").iterdir())
    assert not list((tmp_path / "hda" / "best").glob("*.safetensors"))


def test_search_keeps_best_weights_on_postgres(tmp_path):
    import os
    import time

    import optuna
    from test_search import _pg_url

    url = _pg_url()
    if url is None:
        pytest.skip("no PostgreSQL server: set DLASEARCH_TEST_POSTGRES=postgresql://... (.ci/run does)")
    name = f"keep{os.getpid()}_{int(time.time())}"
    try:
        _search_keeps_best(tmp_path, storage=url, name=name)
    finally:
        optuna.delete_study(study_name=name, storage=url)


@pytest.mark.parametrize("channels", [1, 6])
def test_rgb_weights_adapt_the_stem_to_other_channel_counts(channels):
    """A 3-channel checkpoint on grayscale data failed blaming fc.weight; the stem is adapted as timm's
    in_chans: summed for 1 channel (a grey image gives the RGB net's output), repeated and scaled for more."""
    torch.manual_seed(0)
    rgb = zoo.create("dla34").eval()
    graph = resolve_arch("dla34", channels, 1000)
    model = to_module(graph).eval()
    note = checkpoint.load_weights(model, rgb.state_dict(), graph)
    assert "stem adapted to" in note and f"{channels}-channel" in note and "classifier" not in note
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        if channels == 1:  # R=G=B: summing the stem's input channels leaves every output unchanged
            torch.testing.assert_close(model(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)
        else:  # channels equal: repeating twice and halving keeps the response (exactly so at a multiple of 3)
            torch.testing.assert_close(model(x.expand(-1, channels, -1, -1)), rgb(x.expand(-1, 3, -1, -1)),
                                       rtol=1e-4, atol=1e-4)


def test_train_with_rgb_weights_on_grayscale_data_adapts_the_stem(tmp_path, capsys):
    ckpt = tmp_path / "dla34.safetensors"
    save_file(zoo.create("dla34").state_dict(), str(ckpt))
    assert main(["train", "arch=dla34", f"weights={ckpt}", "data=digits", "data.limit=64", "epochs=1",
                 "batch_size=16", "latency=false", f"out={tmp_path / 'g'}"]) == 0
    printed = capsys.readouterr().out
    assert "stem adapted to 1-channel input" in printed and "summed over its 3 input channels" in printed
    assert "classifier re-initialised" in printed and "predicts 1000 classes, this model 10" in printed
