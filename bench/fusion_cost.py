"""What each fusion costs: params, MACs and training images/s of every row of a dense comparison.

Why: a merge mode or neck that scores the same as another is worth choosing for what it costs to
train, and MACs do not say that on a CPU (a weighted sum or a global-pooling attention is almost no
MACs but is memory traffic).  This reads the networks a comparison trained (``archs/<row>.json``,
the exact specs) and times a full training step of each (forward, loss, backward, SGD update:
``measure.latency``) at the comparison's batch and image size, in the precision and memory format
its trainer picks on this machine, with the CPU lowering of small maps the trainer applies.  Rows
are timed in interleaved rounds (row 1, 2, ..., then again) and each row's median over rounds is
printed with the spread, so a slow moment of the machine hits every row alike; run it alone.
``--modes`` adds, untrained, every merge mode the ``--against`` row's decoder allows that no row has
(``dla+ida_up.gpa``), on that row's exact encoder: the cost of each mode on one structure.

Usage: ``python bench/fusion_cost.py [results/compare/mnist_seg-fusion] [--rounds 5] [--threads 2]``
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from dlasearch import measure  # noqa: E402
from dlasearch.decoders import DECODER_MODES  # noqa: E402
from dlasearch.ir import to_module  # noqa: E402
from dlasearch.patterns import build  # noqa: E402
from dlasearch.train.precision import choose_precision  # noqa: E402
from dlasearch.train.compiling import cpu_small_maps  # noqa: E402


def rows_of(folder: Path) -> dict:
    """Row name -> its architecture record (spec, params, MACs), from a comparison folder."""
    archs = {}
    for path in sorted((folder / "archs").glob("*.json")):
        if path.name.endswith(".ir.json"):
            continue
        rec = json.loads(path.read_text())
        archs[rec["pattern"]] = rec
    if not archs:
        raise SystemExit(f"{folder}: no archs/*.json; give a comparison folder (results/compare/<name>)")
    return archs


def other_modes(archs: dict, against: str, image_shape) -> dict:
    """The ``against`` row's network with each merge mode its decoder allows and no row has, as records
    with params and MACs counted here (``dla+ida_up.gpa``; marked untrained)."""
    rec = archs[against]
    spec = rec["spec"]
    pattern, _, decoder = against.partition("+")
    out = {}
    for mode in DECODER_MODES.get(spec.get("decoder"), ()):
        key = f"{pattern}+{spec['decoder']}.{mode}"
        if key in archs or mode == (spec.get("decoder_mode") or "concat"):
            continue
        model = to_module(build({**spec, "decoder_mode": mode}, name=key))
        out[key + " (untrained)"] = {"spec": {**spec, "decoder_mode": mode}, "params": measure.params(model),
                                     "macs": measure.macs(model, (1, *image_shape))}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", nargs="?", default=str(ROOT / "results" / "compare" / "mnist_seg-fusion"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per row and round (median)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--against", default="dla+ida_up", help="the row the ratios are against (default dla+ida_up, "
                   "DLA's own decoder; the first row when absent)")
    p.add_argument("--modes", action="store_true", help="add the --against row's decoder with each merge mode it "
                   "allows that no row has (not trained: cost only)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    folder = Path(a.folder)
    archs = rows_of(folder)
    settings = json.loads((folder / "settings.json").read_text())
    batch = settings["train"]["batch_size"]
    summary = settings["data_summary"]
    shape = (batch, summary["channels"], *summary["image_size"])
    device = torch.device("cpu")
    prec = choose_precision(a.precision, None, device)
    if a.modes and a.against in archs:
        archs.update(other_modes(archs, a.against, shape[1:]))
    models = {}
    for key, rec in archs.items():
        model = to_module(build(rec["spec"], name=key))
        if prec.channels_last:
            model = model.to(memory_format=torch.channels_last)
        models[key], _ = cpu_small_maps(model, shape[1:], device)
    with measure.CPUShare() as cpu:
        times = measure.train_speeds(models, shape, a.rounds, a.repeats, prec.channels_last, prec.amp,
                                     progress=lambda r: print(f"round {r}/{a.rounds} done", file=sys.stderr))
    against = a.against if a.against in times else next(iter(times))
    base = statistics.median(times[against])
    table = []
    for key, ips in times.items():
        med = statistics.median(ips)
        rec = archs[key]
        table.append([key, f"{rec['params']:,}", f"{rec['macs'] / 1e6:.2f}",
                      f"{med:.0f}", f"{min(ips):.0f}-{max(ips):.0f}", f"{med / base:.2f}"])
    print(f"{folder.name}: training step at batch {batch}, {'x'.join(map(str, shape[1:]))}; CPU "
          f"{torch.get_num_threads()} threads, precision {prec.to_dict()['precision']}, channels_last "
          f"{prec.channels_last}, torch {torch.__version__}; median of {a.rounds} interleaved rounds of "
          f"{a.repeats} steps")
    if warning := cpu.warning():
        print(warning)
    print(tabulate(table, headers=["row", "params", "MMACs/img", "train img/s", "range", f"vs {against}"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
