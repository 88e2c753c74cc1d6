"""Export dla34 as py, pt2 and onnx; print file sizes, load times and the ONNX max difference.

    python bench/export_sizes.py [--model dla34] [--repeats 3]

Load time: from files on disk to a model ready to run (py: import model.py + ``load()``
in a fresh interpreter, minus the bare ``import torch``; pt2: ``torch.export.load().module()``;
onnx: an onnxruntime CPU session), median of ``--repeats`` runs.  First inference of
each is timed too.  Times depend on the machine and its load: run it on an idle one.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dlasearch import zoo
from dlasearch.deploy.export import IMAGENET, export

PY_LOAD = """
import sys, time
t0 = time.perf_counter(); import torch; t1 = time.perf_counter()
sys.path.insert(0, sys.argv[1]); import model; net = model.load(); t2 = time.perf_counter()
with torch.no_grad(): net(torch.randn(1, 3, 224, 224))
t3 = time.perf_counter()
print(t2 - t1, t3 - t2)
"""


def _median(f, repeats):
    runs = [f() for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dla34")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = zoo.create(args.model)
    model.checkpoint = {"name": args.model, "preprocess": IMAGENET}
    x = torch.randn(1, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / args.model
        t0 = time.perf_counter()
        res = export(model, "py,pt2,onnx", out, log=lambda *a: None)
        export_s = time.perf_counter() - t0

        def py():
            r = subprocess.run([sys.executable, "-c", PY_LOAD, str(out)], capture_output=True, text=True, check=True)
            return tuple(float(v) for v in r.stdout.split())

        def pt2():
            t = time.perf_counter()
            net = torch.export.load(str(out / "model.pt2")).module()
            t1 = time.perf_counter()
            with torch.no_grad():
                net(x)
            return t1 - t, time.perf_counter() - t1

        def onnx():
            import onnxruntime as ort

            t = time.perf_counter()
            sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
            t1 = time.perf_counter()
            sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
            return t1 - t, time.perf_counter() - t1

        rows = [("py", ["model.py", "model.pt"], py), ("pt2", ["model.pt2"], pt2), ("onnx", ["model.onnx"], onnx)]
        print(f"{args.model}: export of all three took {export_s:.1f} s; ONNX max |onnxruntime - torch| = "
              f"{res['onnx_max_diff']:.3g}; torch threads {torch.get_num_threads()}\n")
        print("| format | files | size (MiB) | load (s) | first inference, batch 1 (s) |")
        print("|---|---|---:|---:|---:|")
        for fmt, files, f in rows:
            size = sum((out / n).stat().st_size for n in files) / 2**20
            load, first = _median(f, args.repeats)
            print(f"| {fmt} | {' + '.join(files)} | {size:.1f} | {load:.2f} | {first:.3f} |")


if __name__ == "__main__":
    main()
