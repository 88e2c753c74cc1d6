"""dlasearch's IDA-up against what a user would pick instead: segmentation_models_pytorch's FPN and
Unet with a ResNet-18 encoder, on the same data, crop, schedule and seeds.

Why: a search over aggregation patterns is worth running only if its dense networks stand up to the
decoders people reach for.  Every model here is trained by dlasearch's own trainer (the same loss
with median-frequency class weights, poly schedule, augmentation, batches and seeds) and scored by
the same confusion matrix, so the only difference is the network:

- ``smp_fpn``, ``smp_unet``: ``smp.FPN`` / ``smp.Unet("resnet18", encoder_weights=None)`` (random init,
  nothing downloaded), ``in_channels`` and ``classes`` from the data;
- ``dla_ida_up``: the comparison backbone (``compare``'s sizing) with the paper's IDA-up decoder, sized
  to ``smp_fpn``'s parameter count (±5%);
- ``dla34up``: the zoo's DLA-34 with IDA-up, as published.

It records params, MACs per image (torch's FlopCounterMode / 2: the same count for every model),
test foreground mIoU and the training images/s of each run.  ``--speed`` measures training speed
on its own, as the comparison to quote: a full training step of every model at the runs' batch,
precision and memory format, side by side in interleaved rounds (``measure.train_speeds``), with
nothing else running, into ``speed.json`` beside ``--out``; the table shows it when present.
Resumable: every finished (model, seed) run is a line of ``--out`` (JSON lines), a rerun trains
only what is missing and prints the table from all; a file made with other settings is refused.

smp needs torchvision, and no torchvision wheel loads beside the CPU build of torch 2.13.0 that the
project pins (PyPI's torchvision 0.28.0 is linked against CUDA's libc10_cuda.so), so this runs in a
venv of its own with torch's CUDA build, which runs on a CPU too (a 5.5 GB install):

    python3 -m venv /tmp/smp && /tmp/smp/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        segmentation-models-pytorch -e .
    /tmp/smp/bin/python bench/seg_vs_smp.py [--seeds 3] [--epochs 30] [--limit 2000] [--threads 2]
        [--out results/seg_vs_smp/mnist_seg.jsonl] [--root ../shared/data]
    /tmp/smp/bin/python bench/seg_vs_smp.py --speed [--threads 2]    # alone on the machine
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from dlasearch import measure, train as trainmod  # noqa: E402
from dlasearch.analysis.compare import make_spec, size  # noqa: E402
from dlasearch.analysis.compare.statistics import mean_ci  # noqa: E402
from dlasearch.arch import resolve_arch  # noqa: E402
from dlasearch.ir import to_module  # noqa: E402
from dlasearch.patterns import build  # noqa: E402
from dlasearch.search.bench import machine  # noqa: E402
from dlasearch.train import data as datamod  # noqa: E402
from dlasearch.train.compiling import cpu_small_maps  # noqa: E402
from dlasearch.train.precision import choose_precision  # noqa: E402

MODELS = ("smp_fpn", "smp_unet", "dla_ida_up", "dla34up")


def smp_model(name: str, channels: int, classes: int, seed: int):
    try:
        import segmentation_models_pytorch as smp
    except ImportError as e:
        sys.exit(f"segmentation_models_pytorch does not import here ({e}); see this file's docstring for the venv")
    torch.manual_seed(seed)  # smp initialises from torch's global generator
    cls = {"smp_fpn": smp.FPN, "smp_unet": smp.Unet}[name]
    return cls("resnet18", encoder_weights=None, in_channels=channels, classes=classes)


def models(ds, seed: int) -> dict:
    """Every model of the table, built for ``seed``; dla_ida_up sized to smp_fpn's parameter count."""
    out = {n: smp_model(n, ds.channels, ds.num_classes, seed) for n in ("smp_fpn", "smp_unet")}
    target = sum(p.numel() for p in out["smp_fpn"].parameters())
    sized = size("dla", target, 0.05, (2, 4, 4), ds.channels, ds.num_classes, "ida_up")
    out["dla_ida_up"] = to_module(build(sized.spec, name="dla_ida_up"), init="zero-last", seed=seed)
    out["dla34up"] = to_module(resolve_arch("dla34up", ds.channels, ds.num_classes), init="zero-last", seed=seed)
    return out


def macs(model, ds) -> int:
    x = torch.zeros(1, ds.channels, *ds.image_size)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def stored(path: Path, settings: dict) -> dict:
    runs = {}
    if path.is_file():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            rec = json.loads(line)
            if rec["settings"] != settings:
                sys.exit(f"{path}:{n} was made with other settings {rec['settings']}; pass those, or --out NEW_FILE")
            runs[(rec["model"], rec["seed"])] = rec
    return runs


def speeds(ds, threads: int, rounds: int = 5) -> dict:
    """Training images/s of every model, side by side, as the runs train them (batch 32, the trainer's
    precision and memory format, small maps lowered for the fx models): {model: median}, plus the setting."""
    device = torch.device("cpu")
    prec = choose_precision("auto", None, device)
    shape = (32, ds.channels, *ds.image_size)
    built = {}
    for name, model in models(ds, 0).items():
        model = model.to(memory_format=prec.memory_format)
        built[name], _ = cpu_small_maps(model, shape[1:], device)
    with measure.CPUShare(threads) as cpu:
        runs = measure.train_speeds(built, shape, rounds, 5, prec.channels_last, prec.amp,
                                    progress=lambda r: print(f"speed: round {r}/{rounds}", flush=True))
    return {"img_s": {n: sorted(v)[len(v) // 2] for n, v in runs.items()}, "rounds": runs, "threads": threads,
            "cpu_share": round(cpu.share, 3), "precision": prec.to_dict(), "batch": 32, "torch": torch.__version__,
            "cpu": machine()["cpu"], "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def table(runs: dict, speed: dict | None = None) -> str:
    col = "train img/s (side by side)" if speed else "train img/s (median of runs)"
    rows = [f"| model | params | MACs/image | {col} | test fg mIoU % (mean ± sd) | 95% CI | seeds |",
            "|---|---:|---:|---:|---:|---|---:|"]
    for name in MODELS:
        rs = [r for (m, _), r in sorted(runs.items()) if m == name]
        if not rs:
            continue
        scores = [100 * r["test_miou_fg"] for r in rs]
        mean, sd, lo, hi = mean_ci(scores)
        speeds_ = sorted(r["train_img_s"] for r in rs)
        ips = speed["img_s"][name] if speed and name in speed["img_s"] else speeds_[len(speeds_) // 2]
        spread = (f"{mean:.2f} ± {sd:.2f} | [{lo:.2f}, {hi:.2f}]" if len(scores) > 1
                  else f"{mean:.2f} | – (one seed)")
        rows.append(f"| {name} | {rs[0]['params']:,} | {rs[0]['macs'] / 1e6:.1f}M | {ips:.0f} | "
                    f"{spread} | {len(rs)} |")
    if speed:
        rows.append(f"\nimg/s: {speed['threads']} thread(s) of {speed['cpu']}, {speed['precision']['precision']}, "
                    f"{speed['precision']['memory_format']}, batch {speed['batch']}, torch {speed['torch']}; median of "
                    f"{len(next(iter(speed['rounds'].values())))} interleaved rounds ({speed['measured']}; the "
                    f"process had {speed['cpu_share']:.0%} of its threads' CPU time)")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="train only these")
    ap.add_argument("--seed", type=int, default=None, help="train only this seed (a second process on another "
                    "core can take one; both append to --out)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "seg_vs_smp" / "mnist_seg.jsonl")
    ap.add_argument("--speed", action="store_true", help="measure training img/s side by side (run it alone on "
                    "the machine) into speed.json beside --out, then print the table; trains nothing")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    settings = {"data": "mnist_seg", "limit": a.limit, "image_size": a.image_size, "epochs": a.epochs,
                "batch_size": 32, "lr": 0.1, "torch": torch.__version__}
    runs = stored(a.out, settings)
    ds = datamod.load("mnist_seg", root=a.root, limit=a.limit, image_size=a.image_size, seed=0)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    speed_file = a.out.with_name("speed.json")
    if a.speed:
        speed_file.write_text(json.dumps(speeds(ds, a.threads), indent=1) + "\n")
        print(table(runs, json.loads(speed_file.read_text())))
        return
    for seed in range(a.seeds) if a.seed is None else [a.seed]:
        todo = [n for n in MODELS if n in a.models and (n, seed) not in runs]
        if not todo:
            continue
        built = models(ds, seed)
        for name in todo:
            runs.update(stored(a.out, settings))  # another process (--seed) may have finished it meanwhile
            if (name, seed) in runs:
                continue
            model = built[name]
            config = trainmod.TrainConfig(epochs=a.epochs, batch_size=32, lr=0.1, seed=seed, threads=a.threads,
                                          progress=False)
            t0 = time.perf_counter()
            res = trainmod.train(model, ds, config, test=True)
            rec = {"model": name, "seed": seed, "status": res.status, "params": sum(p.numel() for p in model.parameters()),
                   "macs": macs(model, ds), "train_seconds": res.train_seconds,
                   "train_img_s": len(ds.y_train) * res.epochs / res.train_seconds,
                   "test_miou_fg": res.test_score, "test_metrics": {k: v for k, v in res.test_metrics.items()
                                                                    if isinstance(v, (int, float))},
                   "wall_seconds": time.perf_counter() - t0, "settings": settings,
                   "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"},
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            with open(a.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
            runs[(name, seed)] = rec
            print(f"{name} seed {seed}: test fg mIoU {100 * res.test_score:.2f}% "
                  f"({rec['params']:,} params, {rec['train_img_s']:.0f} img/s)", flush=True)
    print(table(runs, json.loads(speed_file.read_text()) if speed_file.is_file() else None))


if __name__ == "__main__":
    main()
