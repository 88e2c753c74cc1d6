"""`dlasearch predict`: palette masks and overlays for dense models, a CSV for classifiers, one-line errors."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_spec
from dlasearch.cli import main
from dlasearch.deploy import checkpoint, predict as predictmod
from dlasearch.ir import to_module
from dlasearch.patterns import build

PRE = {"mean": [0.3], "std": [0.2], "image_size": [32, 32]}


def _ckpt(folder, **spec) -> str:
    """An untrained checkpoint with non-trivial BatchNorm statistics: predictions only need a model."""
    torch.manual_seed(0)
    graph = build({**tiny_spec("dla", **spec), "in_channels": 1}, name="tiny")
    model = to_module(graph)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = folder / "tiny.safetensors"
    checkpoint.save(path, model, graph, preprocess=PRE)
    return str(path)


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    return _ckpt(tmp_path_factory.mktemp("seg"), task="segment", decoder="fpn", num_classes=4)


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    return _ckpt(tmp_path_factory.mktemp("clf"), num_classes=5)


def _images(n=3, h=40, w=36, c=None):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, h, w) + ((c,) if c else ()), dtype=np.uint8)


def test_dense_npz_gives_palette_masks_and_overlays_at_the_image_size(seg, tmp_path):
    np.savez(tmp_path / "x.npz", x_test=_images())
    assert main(["predict", f"from={seg}", f"images={tmp_path / 'x.npz'}", f"out={tmp_path / 'out'}"]) == 0
    masks = sorted((tmp_path / "out" / "masks").iterdir())
    assert [p.name for p in masks] == ["0.png", "1.png", "2.png"]
    for p in masks:
        with Image.open(p) as im:
            assert im.mode == "P" and im.size == (36, 40)  # (W, H) of the input, not the 32 px it ran at
            assert im.getpalette()[:6] == [0, 0, 0, 128, 0, 0]  # class 0 black, then the VOC colours
            assert np.asarray(im).max() < 4
        with Image.open(tmp_path / "out" / "overlays" / p.name) as ov:
            assert ov.mode == "RGB" and ov.size == (36, 40)
    record = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert record["count"] == 3 and record["task"] == "dense"


def test_the_mask_is_the_models_argmax(seg, tmp_path):
    x = _images(2, 32, 32)
    np.savez(tmp_path / "x.npz", x=x)
    predictmod.predict(checkpoint.load(seg), tmp_path / "x.npz", tmp_path / "out", log=lambda *a: None)
    model = checkpoint.load(seg)
    with torch.no_grad():
        want = model(model.preprocess(torch.from_numpy(x)[:, None])).argmax(1).numpy()
    got = np.stack([np.asarray(Image.open(tmp_path / "out" / "masks" / f"{i}.png")) for i in range(2)])
    assert (got == want).all()


def test_png_folder_of_mixed_sizes_and_one_png(seg, tmp_path):
    (tmp_path / "pngs").mkdir()
    Image.fromarray(_images(1, 20, 24)[0]).save(tmp_path / "pngs" / "a.png")
    Image.fromarray(_images(1, 33, 31)[0]).save(tmp_path / "pngs" / "b.png")
    assert main(["predict", seg, f"images={tmp_path / 'pngs'}", f"out={tmp_path / 'o1'}"]) == 0
    sizes = {p.stem: Image.open(p).size for p in (tmp_path / "o1" / "masks").iterdir()}
    assert sizes == {"a": (24, 20), "b": (31, 33)}
    assert main(["predict", seg, f"images={tmp_path / 'pngs' / 'b.png'}", f"out={tmp_path / 'o2'}"]) == 0
    assert [p.name for p in (tmp_path / "o2" / "masks").iterdir()] == ["b.png"]
    # overwrite=true replaces an earlier prediction whole
    assert main(["predict", seg, f"images={tmp_path / 'pngs' / 'a.png'}", f"out={tmp_path / 'o2'}",
                 "overwrite=true"]) == 0
    assert [p.name for p in (tmp_path / "o2" / "masks").iterdir()] == ["a.png"]


def test_classifier_writes_labels_and_probabilities(clf, tmp_path):
    np.savez(tmp_path / "x.npz", x=_images(4, 32, 32, 1))
    assert main(["predict", f"from={clf}", f"images={tmp_path / 'x.npz'}", f"out={tmp_path / 'out'}"]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert [r["image"] for r in rows] == ["0", "1", "2", "3"]
    assert list(rows[0]) == ["image", "label", "p0", "p1", "p2", "p3", "p4"]
    for r in rows:
        probs = [float(r[f"p{c}"]) for c in range(5)]
        assert abs(sum(probs) - 1) < 1e-4 and int(r["label"]) == int(np.argmax(probs))
    assert not (tmp_path / "out" / "masks").exists()


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_line(seg, tmp_path, capsys):
    out = f"out={tmp_path / 'o'}"
    assert "no such file or folder" in _one_line_error(capsys, ["predict", seg, f"images={tmp_path / 'no.npz'}", out])
    (tmp_path / "a.txt").write_text("x")
    assert "expected an .npz" in _one_line_error(capsys, ["predict", seg, f"images={tmp_path / 'a.txt'}", out])
    np.savez(tmp_path / "y.npz", y=np.zeros(3))
    assert "no array named x or x_test" in _one_line_error(capsys, ["predict", seg, f"images={tmp_path / 'y.npz'}",
                                                                    out])
    np.savez(tmp_path / "f.npz", x=np.zeros((2, 8, 8), dtype=np.float32))
    assert "expected uint8 images" in _one_line_error(capsys, ["predict", seg, f"images={tmp_path / 'f.npz'}", out])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert "not a readable .npz" in _one_line_error(capsys, ["predict", seg, f"images={tmp_path / 'bad.npz'}", out])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert "not a readable PNG" in _one_line_error(capsys, ["predict", seg, f"images={tmp_path / 'bad.png'}", out])
    Image.fromarray(_images(1, 16, 16, 3)[0]).save(tmp_path / "rgb.png")
    err = _one_line_error(capsys, ["predict", seg, f"images={tmp_path / 'rgb.png'}", out])
    assert "3 channel(s), but the model takes 1 (grayscale)" in err
    (tmp_path / "empty").mkdir()
    assert "no .png files" in _one_line_error(capsys, ["predict", seg, f"images={tmp_path / 'empty'}", out])
    Image.fromarray(_images(1, 16, 16)[0]).save(tmp_path / "g.png")
    err = _one_line_error(capsys, ["predict", f"from={tmp_path / 'nothing'}", f"images={tmp_path / 'g.png'}", out])
    assert "no such run folder or checkpoint file" in err
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "export.json").write_text("{}")
    err = _one_line_error(capsys, ["predict", f"from={tmp_path / 'exp'}", f"images={tmp_path / 'g.png'}", out])
    assert "an export folder" in err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    err = _one_line_error(capsys, ["predict", seg, f"images={tmp_path / 'g.png'}", f"out={tmp_path / 'busy'}",
                                   "overwrite=true"])
    assert "no earlier prediction" in err and (tmp_path / "busy" / "notes.txt").exists()
    assert "images=" in _one_line_error(capsys, ["predict", seg, out])
    assert "study='s' needs trial=N" in _one_line_error(capsys, ["predict", "study=s", f"images={tmp_path / 'g.png'}"])
    assert not (tmp_path / "o").exists()  # nothing written on refusal
