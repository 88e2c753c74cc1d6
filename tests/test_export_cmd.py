"""`dlasearch export`: py without dlasearch, pt2 with a dynamic batch, onnx vs onnxruntime, and its bad input."""
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from conftest import tiny_spec
from dlasearch.deploy import checkpoint, export as exportmod
from dlasearch.cli import main
from dlasearch.ir import to_module
from dlasearch.patterns import build

PRE = {"mean": [0.3], "std": [0.2], "image_size": [32, 32]}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small trained-looking checkpoint: random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    graph = build({**tiny_spec("dla", num_classes=5), "in_channels": 1}, name="tiny")
    model = to_module(graph)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    checkpoint.save(path, model, graph, preprocess=PRE)
    return path


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny"
    formats = "py,pt2,onnx" if importlib.util.find_spec("onnxruntime") else "py,pt2"
    assert main(["export", f"from={ckpt}", f"format={formats}", f"out={out}"]) == 0
    return out


def _reference(ckpt, x):
    model, _ = checkpoint.build(ckpt)
    with torch.no_grad():
        return model.eval()(x)


BLOCKER = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "dlasearch" or name.startswith("dlasearch."):
            raise ImportError("dlasearch is blocked in this test")
sys.meta_path.insert(0, Blocker())
try:
    import dlasearch
    raise SystemExit("dlasearch was importable")
except ImportError:
    pass
sys.path.insert(0, sys.argv[1])
import torch, model
torch.set_num_threads(int(sys.argv[4]))  # the same reduction order as the parent: identical outputs
net = model.load()
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save({"y": net(x), "pre": model.preprocess(torch.full((1, 1, 8, 8), 255, dtype=torch.uint8))}, sys.argv[3])
"""


def test_py_export_runs_without_dlasearch(ckpt, exported, tmp_path):
    x = torch.randn(3, 1, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "use.py"
    script.write_text(BLOCKER)
    r = subprocess.run([sys.executable, str(script), str(exported), str(tmp_path / "x.pt"), str(tmp_path / "y.pt"),
                        str(torch.get_num_threads())],
                       cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = torch.load(tmp_path / "y.pt")
    torch.testing.assert_close(got["y"], _reference(ckpt, x), rtol=0, atol=0)
    want = checkpoint.Preprocess(**PRE)(torch.full((1, 1, 8, 8), 255, dtype=torch.uint8))
    torch.testing.assert_close(got["pre"], want)
    text = (exported / "model.py").read_text()
    assert "def forward(self, x):" in text and "torch.cat(" in text and "dlasearch" not in text.split('"""', 2)[2]


def test_pt2_has_a_dynamic_batch(ckpt, exported):
    prog = torch.export.load(str(exported / "model.pt2")).module()
    for n in (1, 5):
        x = torch.randn(n, 1, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(prog(x), _reference(ckpt, x), rtol=1e-5, atol=1e-5)


def test_onnx_matches_torch_in_onnxruntime(ckpt, exported):
    pytest.importorskip("onnxruntime", reason="onnxruntime cannot be installed here (pip install 'dlasearch[onnx]')")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 32, 32)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), _reference(ckpt, x), rtol=1e-4, atol=1e-4)
    info = json.loads((exported / "export.json").read_text())
    assert info["onnx_max_diff"] < 1e-4


def test_readme_says_shape_normalisation_classes_and_how_to_load(exported):
    text = (exported / "README.md").read_text()
    assert "(N, 1, 32, 32)" in text and "[0.3]" in text and "[0.2]" in text and "Classes: 5" in text
    assert "model.load()" in text and "torch.export.load" in text


def test_features_only_model_exports(tmp_path):
    model = __import__("dlasearch").zoo.create("dla34", features_only=True)
    model.checkpoint = {"name": "dla34_features", "preprocess": {**exportmod.IMAGENET, "image_size": [64, 64]}}
    res = exportmod.export(model, "pt2", tmp_path / "f", log=lambda *a: None)
    prog = torch.export.load(res["out"] + "/model.pt2").module()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(prog(x), model.eval()(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input(ckpt, tmp_path, capsys, monkeypatch):
    err = _one_line_error(capsys, ["export", f"from={ckpt}", "format=py,tflite", f"out={tmp_path / 'a'}"])
    assert "format='tflite'" in err and "allowed: py, pt2, onnx" in err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    err = _one_line_error(capsys, ["export", f"from={ckpt}", "format=py", f"out={tmp_path / 'busy'}"])
    assert "notes.txt" in err and "overwrite=true" in err
    # overwrite=true replaces a folder whole, so it never replaces one that holds anything but an export
    err = _one_line_error(capsys, ["export", f"from={ckpt}", "format=py", f"out={tmp_path / 'busy'}", "overwrite=true"])
    assert "not a dlasearch export" in err and "notes.txt" in err
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 50)
    err = _one_line_error(capsys, ["export", f"from={bad}", f"out={tmp_path / 'b'}"])
    assert str(bad) in err and "not a readable safetensors file" in err
    err = _one_line_error(capsys, ["export", f"from={tmp_path / 'nothing'}", f"out={tmp_path / 'c'}"])
    assert "no such run folder or checkpoint file" in err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    err = _one_line_error(capsys, ["export", f"from={ckpt}", "format=onnx", f"out={tmp_path / 'd'}"])
    assert "pip install 'dlasearch[onnx]'" in err and "onnxruntime" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()  # nothing written on refusal
