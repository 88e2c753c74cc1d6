"""Trial speed: raw training-step img/s (eager, compiled, graphed) against whole-trial img/s, side by side.

Why: a search is worth as many trials as it can afford.  For each model and
precision this prints one row: the step alone (synthetic batch, the trainer's
SGD), and a whole trial as a search runs it (build the IR, lower it, count
memory, train, evaluate), with the share of the trial's wall time that went into
training steps ("step share": the engine's own step time, warm-ups and graph
captures excluded; "trial / best raw" compares the trial's img/s with the
fastest raw step).  Not a timed test: numbers taken on a shared machine are
only indicative.

    python bench/trial_speed.py                      # CPU rows (and CUDA rows when a GPU is present)
    python bench/trial_speed.py --device cuda --epochs 5 --out bench/out/trial_speed_cuda.md
    python bench/trial_speed.py --rows dla46_c@32 --compile   # add compiled rows on CPU too (slow to compile)
    python bench/trial_speed.py --rows hda1m@32 --epochs 5 --limit 4000 --eval-every 1 5 hyperband  # validation cost
    python bench/trial_speed.py --device cpu --rows dla34@32 --small-maps off on   # the small-map rewrite's gain

Rows: dla34@32, dla46_c@32, hda1m@32 (the 1M-parameter compare net), dla34@224.
Data: the CIFAR-10 subset (``--data``), resized for 224; synthetic when absent.
"""
from __future__ import annotations

import argparse
import collections
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlasearch.analysis import compare
from dlasearch.train import data as datamod, engine, sgd
from dlasearch import ir as irmod, train, zoo  # noqa: E402
from dlasearch.train import trainer  # noqa: E402
from dlasearch.ir import to_module  # noqa: E402
from dlasearch.patterns import build  # noqa: E402
from dlasearch.search.study import pruner_epochs  # noqa: E402

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-subset" / "cifar10_subset.npz"
START = time.perf_counter()


def graph_of(name: str) -> irmod.IR:
    if name == "hda1m":
        return build(compare.size("hda", 1e6).spec, name="hda1m")
    return zoo.ir(name, num_classes=10)


def load(path: Path, size: int, limit: int | None):
    if path.is_file():
        ds = datamod.load("npz", path=str(path), limit=limit, progress=False)
    else:  # synthetic stand-in: speed only
        g = torch.Generator().manual_seed(0)
        n = limit or 4500
        x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (n,), generator=g)
        ds = datamod.Dataset(name="synthetic", x_train=x, y_train=y, x_val=x[:500], y_val=y[:500], x_test=x[:500],
                             y_test=y[:500], num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3, flip=True,
                             crop_padding=4, source="synthetic")
    return ds.resized(None if size == ds.image_size[0] else size)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_rate(make, px, device, prec, batch, mode: str, seconds: float, small_maps: bool = True) -> tuple[float, str]:
    """img/s of the bare step on one synthetic batch: mode eager | compiled | graphed; with the engine's
    small-map rewrite on CPU unless ``small_maps`` is false."""
    cfg = train.TrainConfig(device=str(device), batch_size=batch, compile="none", cuda_graph=mode == "graphed")
    torch.manual_seed(0)
    model = make().to(device, memory_format=prec.memory_format)
    model, _ = engine.cpu_small_maps(model, (3, px, px), device, small_maps)
    note = ""
    if mode == "compiled":
        model, note = compiled(model)
    opt = torch.optim.SGD(sgd.param_groups(model, cfg.weight_decay), lr=0.01, momentum=0.9, nesterov=True)
    step = engine.Stepper(model, opt, cfg, device, prec, mode == "graphed", batch)
    x = torch.randn(batch, 3, px, px, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    t0 = time.perf_counter()
    for _ in range(engine.WARMUP_STEPS + 2):  # warm-up, compile, capture
        step(x, y)
    _sync(device)
    warm = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(5):
            step(x, y)
        n += 5
        _sync(device)
        if time.perf_counter() - t0 > seconds:
            break
    rate = n * batch / (time.perf_counter() - t0)
    if mode == "graphed":
        note = f"graph {step.graph_note}"
    if mode == "compiled":
        note += f"; compile+warm-up {warm:.1f}s"
    return rate, note


def compiled(model):
    """torch.compile with static shapes, counting symbolic-shape warnings (pow_by_natural) and recompiles."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    seen = collections.Counter()

    class Count(logging.Handler):
        def emit(self, record):
            seen["pow_by_natural" if "pow_by_natural" in record.getMessage() else "other"] += 1

    h = Count(logging.WARNING)
    logging.getLogger("torch").addHandler(h)
    COMPILE_LOG.append((h, counters, seen))
    return engine.compile_model(model, "default"), ""


COMPILE_LOG: list = []


def compile_note() -> str:
    if not COMPILE_LOG:
        return ""
    h, counters, seen = COMPILE_LOG.pop()
    logging.getLogger("torch").removeHandler(h)
    frames = counters["stats"].get("unique_graphs", 0)
    return f"; {frames} graph(s), {seen['pow_by_natural']} pow_by_natural warnings"


def trial(name, graph, ds, device, prec, cfg, eval_epochs=None) -> tuple[float, float, dict]:
    """Wall seconds of a whole trial, the training images it saw, and its phase times."""
    phases = {}
    t = time.perf_counter()
    g = graph_of(name) if name != "hda1m" else graph  # the IR build (the sized hda net is built once)
    phases["build"] = time.perf_counter() - t
    t = time.perf_counter()
    torch.manual_seed(0)
    model = to_module(g)
    phases["lower"] = time.perf_counter() - t
    t = time.perf_counter()
    train.measure_arch(model, ds, cfg, latency=False, cuda_peak=False)
    phases["measure"] = time.perf_counter() - t
    t = time.perf_counter()
    res = train.train(model, ds, cfg, eval_epochs=eval_epochs)
    phases["train"] = time.perf_counter() - t
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        train.save_run(Path(d), g, {"metrics": res.to_dict()})
    phases["write"] = time.perf_counter() - t
    wall = sum(phases.values())
    n = len(ds.y_train)  # images actually seen: an epoch's last batch is partial
    per_epoch = -(-n // cfg.batch_size)
    images = res.steps // per_epoch * n + res.steps % per_epoch * cfg.batch_size
    return wall, images, {**phases, "engine": res.engine}


def timm_row(dev_name: str, args) -> str:
    """timm's dla34 against ours at 224, bf16 + channels_last, both compiled (skipped without timm)."""
    try:
        import timm
    except ImportError:
        return "timm row skipped: timm is not importable here"
    if args.budget and time.perf_counter() - START > args.budget:
        return "timm row skipped: past --budget"
    device = torch.device(dev_name)
    prec = engine.choose_precision("bf16", None, device)
    batch = args.batch or 128
    mode = "compiled" if device.type == "cuda" or args.compile else "eager"
    ours, _ = raw_rate(lambda: zoo.create("dla34", num_classes=10), 224, device, prec, batch, mode, args.seconds)
    compile_note()
    theirs, _ = raw_rate(lambda: timm.create_model("dla34", num_classes=10), 224, device, prec, batch, mode,
                         args.seconds)
    compile_note()
    return (f"timm dla34@224 {mode} bf16+CL on {dev_name}, batch {batch}: dlasearch {ours:,.0f} img/s, "
            f"timm {theirs:,.0f} img/s, ratio {ours / theirs:.2f}x")


def trial_line(dev_name, name, px, batch, pname, prec, graph, ds, epochs, every, eager, comp, graphed,
               notes, bn_batches: int = train.TrainConfig.bn_batches, small_maps: bool = True) -> str:
    """One whole trial, as a table row beside the raw step rates."""
    device = torch.device(dev_name)
    rungs = every == "hyperband"  # as a search trial under Hyperband validates: at its rungs and the last epoch
    cfg = train.TrainConfig(device=dev_name, epochs=epochs, batch_size=batch, precision=prec.to_dict()["precision"],
                            channels_last=prec.channels_last, progress=False,
                            warmup_epochs=min(1.0, epochs / 2), eval_every=1 if rungs else int(every),
                            bn_batches=bn_batches, small_maps=small_maps)
    eval_epochs = pruner_epochs({"objectives": ["val_accuracy"], "study": {"pruner": "hyperband"},
                                 "train": {"epochs": epochs}}) if rungs else None
    wall, images, phases = trial(name, graph, ds, device, prec, cfg, eval_epochs)
    eng = phases.pop("engine")
    share = eng["seconds"]["steps"] / wall  # the engine's own step time: steadier than a raw-step cell
    inside = ", ".join(f"{k} {v:.2f}s" for k, v in eng["seconds"].items())
    row_notes = notes + [f"small_maps {eng['small_maps']}",
                         f"validation {sorted(eval_epochs | {epochs})}" if rungs else f"eval_every {every}",
                         f"bn_batches {bn_batches} ({eng.get('bn_recalibration', 'eager')})",
                         "phases " + ", ".join(f"{k} {v:.2f}s" for k, v in phases.items()) + f" (train: {inside})",
                         *([f"graphed steps {eng['graphed_steps']}"] if "graphed_steps" in eng else [])]
    return (f"| {dev_name} | {name} | {px} | {batch} | {pname.split('+')[0]}{'+CL' if prec.channels_last else ''}"
            f"{' dense' if small_maps and not eng['small_maps'].startswith('off') else ''} | "
            f"{eager:,.0f} | {f'{comp:,.0f}' if comp else '-'} | {f'{graphed:,.0f}' if graphed else '-'} | "
            f"{images / wall:,.0f} | {images / wall / max(eager, comp or 0, graphed or 0):.2f} | "
            f"{share:.0%} | {wall:.1f} | {'; '.join(n for n in row_notes if n)} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CPU rows, plus CUDA rows when present), cpu, cuda")
    ap.add_argument("--rows", default=None, help="comma list of model@size (default: all; CPU skips @224)")
    ap.add_argument("--epochs", type=int, default=None, help="trial epochs (default: 5 on CUDA, 1 on CPU)")
    ap.add_argument("--limit", type=int, default=None, help="training images (default: all 4,500 on CUDA, "
                                                            "1,024 on CPU, 2,048 at 224)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 512 at 32 px on CUDA, 128 else)")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing window per raw-step cell")
    ap.add_argument("--compile", action="store_true", help="also compiled rows on CPU (on CUDA: bf16 rows)")
    ap.add_argument("--no-compile", action="store_true",
                    help="no compiled cell on CUDA either (it costs 25-60 s of compilation a row)")
    ap.add_argument("--budget", type=float, default=None, help="skip the remaining cells after this many seconds")
    ap.add_argument("--data", default=str(CIFAR))
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    ap.add_argument("--eval-every", nargs="+", default=["1"],
                    help="one trial row per value of train eval_every (e.g. 1 5: every epoch vs only the last), "
                         "or hyperband: after Hyperband's rungs and the last epoch, as a search trial")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "fp32+CL", "bf16"],
                    help="fp32 (contiguous), fp32+CL (fp32 in channels_last), bf16 (autocast + channels_last)")
    ap.add_argument("--small-maps", nargs="+", default=["on"], choices=["on", "off"],
                    help="one row per setting of train small_maps (on CPU: convolutions on maps of <= 4 positions "
                         "as dense GEMMs, in the raw steps too); 'dense' in the precision column where it ran")
    ap.add_argument("--bn-batches", type=int, nargs="+", default=[train.TrainConfig.bn_batches],
                    help="one trial row per value of train bn_batches (BatchNorm recalibration batches)")
    ap.add_argument("--trials", type=int, default=1,
                    help="trial rows per cell: the first trial of a model pays one-off costs (cuDNN autotuning "
                         "of new shapes, allocator growth) that later ones do not")
    ap.add_argument("--timm", default="yes", choices=["yes", "no", "only"],
                    help="the row against timm's compiled dla34 at 224: yes (last), no, only (no other rows)")
    args = ap.parse_args(argv)
    bad = [e for e in args.eval_every if e != "hyperband" and not (e.isdigit() and int(e) >= 1)]
    if bad:
        ap.error(f"--eval-every {bad[0]}: expected an int >= 1 or hyperband")
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"],
               "cuda": ["cuda"]}[args.device]
    lines = ["| device | model | px | batch | precision | eager img/s | compiled img/s | graphed img/s | "
             "trial img/s | trial / best raw | step share | trial s | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for dev_name in devices:
        device = torch.device(dev_name)
        cuda = device.type == "cuda"
        rows = (args.rows.split(",") if args.rows else
                ["dla34@32", "dla46_c@32", "hda1m@32"] + (["dla34@224"] if cuda else []))
        if args.timm == "only":
            rows = []
        for row in rows:
            name, px = row.split("@")
            px = int(px)
            graph = graph_of(name)
            batch = args.batch or (512 if cuda and px == 32 else 128)
            limit = args.limit or (None if cuda and px == 32 else 2048 if px == 224 else 1024)
            ds = load(Path(args.data), px, limit).to(device)  # a search worker moves its data once
            epochs = args.epochs or (5 if cuda else 1)
            for pname, dense in ((p, d == "on") for p in args.precisions for d in args.small_maps):
                if args.budget and time.perf_counter() - START > args.budget:
                    print(f"| {dev_name} | {name} | {px} | {batch} | {pname} | skipped: past --budget |", flush=True)
                    continue
                cl = True if pname.endswith("+CL") else False if pname == "fp32" else None  # fp32: contiguous
                prec = engine.choose_precision(pname.split("+")[0], cl, device)
                with trainer._threads(None):
                    make = lambda: to_module(graph)  # noqa: E731
                    eager, _ = raw_rate(make, px, device, prec, batch, "eager", args.seconds, dense)
                    comp = graphed = None
                    notes = []
                    if ((cuda and pname == "bf16") or args.compile) and not args.no_compile:
                        comp, n = raw_rate(make, px, device, prec, batch, "compiled", args.seconds, dense)
                        notes.append(n.lstrip("; ") + compile_note())
                    if cuda:
                        graphed, n = raw_rate(make, px, device, prec, batch, "graphed", args.seconds, dense)
                        notes.append(n)
                for every in args.eval_every:
                    for bn in args.bn_batches:
                        for _ in range(args.trials):
                            line = trial_line(dev_name, name, px, batch, pname, prec, graph, ds, epochs, every,
                                              eager, comp, graphed, notes, bn, dense)
                            lines.append(line)
                            print(line, flush=True)
    if args.timm != "no":
        lines.append(timm_row(devices[-1], args))
        print(lines[-1])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"torch {torch.__version__}, "
                                  f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA'}, "
                                  f"{torch.get_num_threads()} CPU threads, "
                                  f"CPU bf16: {engine.cpu_bf16() or 'none'}\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
