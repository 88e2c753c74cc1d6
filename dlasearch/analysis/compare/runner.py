"""Running a comparison: settings, sizing, training every (pattern, seed), resumable, and the outputs."""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from dlasearch import files, stats as dstats
from dlasearch.analysis.compare.options import (_NOT_TRAIN_OPTIONS, DEFAULT_BASELINE, OPTIONS, CompareOptions,
                                                baseline_key, parse_options)
from dlasearch.analysis.compare.plots import curves, plots
from dlasearch.analysis.compare.sizing import (CONV_STAGES, DEFAULT_BLOCKS, STAGE_CHANNELS, STEM, Sized,
                                               decoder_fields, decoder_label, decoder_parts, size)
from dlasearch.analysis.compare.statistics import (ACCURACY, Metric, chance_of, markdown_table, metric_for,
                                                   size_correlation, summarize)
from dlasearch import weights as checkpoint
from dlasearch.errors import CompareError
from dlasearch import ir as irmod, train as trainmod
from dlasearch.arch import check_fit
from dlasearch.configfile import data_identity, print_config as show, same_data, write_config
from dlasearch.ir import to_module
from dlasearch.patterns import build
from dlasearch.search import guard
from dlasearch.train import TrainConfig, data as datamod, measure_arch, tracking
from dlasearch.train.config import with_added_later
from dlasearch.train.progress import Progress

__all__ = ['check_writable', 'check_settings', 'keep_stored', 'run_path', 'compare', 'from_options', 'command']

SETTINGS = "settings.json"
LOCK = ".lock"  # held by the comparison running in the folder (``guard.hold``)


def check_writable(folder: Path, option: str = "out") -> None:
    """Raise unless ``folder`` exists as a writable directory or can be created (nothing is created)."""
    files.check_writable(folder, option, CompareError)


def _write_json(path: Path, obj) -> None:
    files.write_text(path, json.dumps(obj, indent=1, default=str) + "\n", CompareError)


def _read_json(path: Path):
    """The JSON object in ``path``; None when it is missing or unreadable (that run is redone); valid JSON
    that is no object (a list, a number) is a damaged folder: one ``CompareError`` naming the file."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict):
        raise CompareError(f"{path} holds a JSON {type(value).__name__}, not the object dlasearch writes (the "
                           f"comparison folder is damaged): move that file away, or give a new out=")
    return value


def check_settings(folder: Path, settings: dict) -> None:
    """Refuse a folder holding another comparison (different data, training or budget) or other files."""
    stored = _read_json(folder / SETTINGS)
    if stored is None:
        if folder.exists() and any(p.name != LOCK for p in folder.iterdir()):
            raise CompareError(f"out={str(folder)!r} is not empty and holds no comparison ({SETTINGS} is missing "
                               f"or unreadable); choose another out= or name=")
        return
    if isinstance(stored.get("train"), dict):
        stored["train"] = with_added_later(stored["train"], "compare")  # as a comparison from before them trained
    diffs = []
    for section in sorted(settings):  # the stored file also records data_summary and torch, not compared
        old, new = stored.get(section), settings.get(section)
        if section == "data":  # a data file by its content, wherever this machine keeps it
            old, new = same_data(old, new)
        if isinstance(old, dict) and isinstance(new, dict):
            diffs += [f"{section}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                      if old.get(k) != new.get(k)]
        elif old != new:
            diffs.append(f"{section}: {old!r} -> {new!r}")
    if diffs:
        raise CompareError(f"{folder} holds a comparison with other settings ({'; '.join(diffs[:4])}"
                           f"{'; ...' if len(diffs) > 4 else ''}); rerun with the same settings, or give a new "
                           f"out= or name=")


def keep_stored(o: CompareOptions, given, log=print) -> CompareOptions:
    """Resuming: each training option the command does not set (not in ``given``) takes the stored
    comparison's value, so a default changed since (bn_batches 16 -> 8) does not refuse the
    documented command; an option it sets must still match (``check_settings``)."""
    stored = _read_json(o.folder / SETTINGS)
    if not isinstance(stored, dict) or not isinstance(stored.get("train"), dict):
        return o
    names = {f.name for f in dataclasses.fields(o.config)}
    kept = {k: v for k, v in with_added_later(stored["train"], "compare").items()
            if k in names and k not in given and getattr(o.config, k) != v}
    if not kept:
        return o
    log(f"resuming {o.folder}: keeping its stored {', '.join(f'train.{k}={v!r}' for k, v in sorted(kept.items()))} "
        f"(not set on this command)")
    return dataclasses.replace(o, config=dataclasses.replace(o.config, **kept))


def run_path(folder: Path, pattern: str, seed: int) -> Path:
    return folder / "runs" / f"{pattern}-seed{seed}.json"


def _contract(data_opts: dict, image_size, config, budget, tolerance, blocks, task: str = "classify") -> dict:
    train = {k: v for k, v in dataclasses.asdict(config).items()
             if k not in ("seed", "progress", "threads", "device", "eval_batch_size", "compile", "cuda_graph",
                          "small_maps", "eval_every")}
    data = data_identity({k: v for k, v in data_opts.items() if k not in ("root", "download")})
    if data.get("path") is not None:
        data["path"] = files.portable(data["path"])  # relative to the project root: a clone reads the same
    dense = {"task": task} if task != "classify" else {}  # a classification contract keeps its old keys
    return {"version": 1, **dense, "data": {**data, "image_size": image_size}, "train": train,
            "budget": {"params": budget, "tolerance": tolerance},
            "backbone": {"stem": STEM, "conv_stages": [list(c) for c in CONV_STAGES],
                         "stage_channels": list(STAGE_CHANNELS), "blocks": list(blocks)}}


def _measure(folder: Path, key: str, sized: Sized, ds, config, target: float) -> tuple[dict, object]:
    """The architecture record of one row (measured once, then read back), and its IR."""
    graph = build(sized.spec, name=key)
    fp = irmod.fingerprint(graph)
    path = folder / "archs" / f"{key}.json"
    stored = _read_json(path)
    if stored and stored.get("fingerprint") == fp and stored.get("target_params") == target:
        return stored, graph
    m = measure_arch(to_module(graph), ds, config, latency=False, cuda_peak=False)
    rec = {"pattern": key, "built_as": sized.pattern, "fingerprint": fp, "widths": list(sized.widths),
           "multiplier": sized.multiplier, "divisor": sized.divisor, "params": m["params"],
           "target_params": target, "params_vs_target": m["params"] / target - 1, "macs": m["macs"],
           "train_memory_bytes": m["train_memory_bytes"], "precision": m["precision"], "batch_size": config.batch_size,
           "spec": sized.spec, **({"decoder": sized.decoder} if sized.decoder else {})}
    files.write_text(folder / "archs" / f"{key}.ir.json", irmod.to_json(graph, indent=1) + "\n", CompareError)
    _write_json(path, rec)
    return rec, graph


def _train_one(graph, ds, config, seed: int, callback=None):
    model = to_module(graph, init=config.init, seed=seed)  # the same seed gives the same network
    return trainmod.train(model, ds, dataclasses.replace(config, seed=seed), test=True, callback=callback), model


def compare(patterns=None, data="digits", seeds=3, budget=None, *, root=None, path=None, limit=None,
            val_fraction=None, image_size=32, blocks=DEFAULT_BLOCKS, baseline=DEFAULT_BASELINE, out=None,
            name=None, train: dict | None = None, log=print, tracking_log=None, print_config: bool = False,
            show_progress: bool = True, task: str = "classify", decoders=None) -> dict:
    """Size, train and summarise every pattern; returns {"dir", "summary", "runs", "trained", "reused"}.

    ``budget`` is ``{"params": P, "tolerance": 0.05}`` or a number; ``baseline``
    the budget multiples of the plain-chain rows; ``train`` holds ``TrainConfig``
    fields (not ``seed``: that comes from ``seeds``).  ``task="segment"``: every
    pattern with every one of ``decoders`` on dense data, scored by the data's
    score (foreground mIoU) and tested against ``chain+none``.
    Everything is checked (options, folder, every pattern's sizing) before the
    first run trains.
    """
    o = parse_options(patterns, data, seeds, budget, root=root, path=path, limit=limit, val_fraction=val_fraction,
                      image_size=image_size, blocks=blocks, baseline=baseline, out=out, name=name, train=train,
                      tracking_log=tracking_log, log=log, task=task, decoders=decoders)
    o = keep_stored(o, set(train or ()), log)
    check_writable(o.folder)
    settings = _contract(o.data, o.image_size, o.config, o.budget, o.tolerance, o.blocks, o.task)
    if print_config:
        show(o.resolved())
        return {"dir": o.folder, "config": o.resolved()}

    tracking.parse(o.tracking_log)
    check_settings(o.folder, settings)
    ds, sized, targets = _size_all(o)
    # one comparison in a folder at a time (two would mix recipes); checked again under the lock
    with guard.hold(o.folder / LOCK, str(o.folder), "wait for it to finish, or give another out= or name=",
                    CompareError):
        check_settings(o.folder, settings)
        _start_folder(o, settings, ds)
        return _train_and_report(o, sized, targets, ds, show_progress, log)


def _train_and_report(o: CompareOptions, sized, targets, ds, show_progress: bool, log) -> dict:
    rows = list(sized)
    archs, graphs = {}, {}
    for key in rows:
        archs[key], graphs[key] = _measure(o.folder, key, sized[key], ds, o.config, targets[key])
    by_fp: dict = {}
    for key in rows:
        first = by_fp.setdefault(archs[key]["fingerprint"], key)
        archs[key]["same_as"] = first if first != key else None
    t_start = time.perf_counter()
    chance = chance_of(ds)  # of the test split, for the score the comparison ranks by
    records = _run_all(o, rows, archs, graphs, ds, chance, show_progress, log)
    return _report(o, rows, archs, records, ds, chance, t_start, log)


def _size_all(o: CompareOptions):
    """Load the data and size every row (patterns and baselines) on the budget: (dataset, sized, targets)."""
    load_opts = {k: v for k, v in o.data.items() if k not in ("name", "seed")}
    ds = datamod.load(o.data["name"], seed=o.data["seed"], image_size=o.image_size, progress=False, **load_opts)
    if ds.dense != (o.task == "segment"):
        raise CompareError(f"task=segment needs dense data (mnist_seg, fashion_seg, folder, a mask .npz); {ds.name} "
                           f"has one label per image" if o.task == "segment" else
                           f"{ds.name} is {ds.task} data with a label per pixel: add task=segment (and decoders=...)")
    rows = o.rows()
    targets = {k: o.budget for k, _, _ in rows}
    sized = {k: size(p, o.budget, o.tolerance, o.blocks, ds.channels, ds.num_classes, d) for k, p, d in rows}
    _, ref_pattern, ref_decoder = rows[0]
    for m in o.baselines:
        key = baseline_key(m, o.reference)
        targets[key] = o.budget * m
        try:
            sized[key] = size(ref_pattern, targets[key], o.tolerance, o.blocks, ds.channels, ds.num_classes,
                              ref_decoder)
        except CompareError as e:
            raise CompareError(f"baseline {key} ({m:g} x budget): {e}; or set baseline=false") from None
    check_fit(build(sized[o.reference].spec), ds)  # all rows share the backbone, so its input size
    return ds, sized, targets


def _start_folder(o: CompareOptions, settings: dict, ds) -> None:
    """Create the output folder with its settings and config.yaml (everything was checked before)."""
    import torch

    try:
        o.folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CompareError(f"out={str(o.folder)!r}: cannot create it: {files.explain(e)}") from None
    summary = ds.summary()
    if isinstance(summary.get("source"), str) and Path(summary["source"]).exists():
        summary["source"] = files.portable(summary["source"])  # no machine's folder names in results
    _write_json(o.folder / SETTINGS, {**settings, "data_summary": summary, "torch": torch.__version__})
    write_config(o.folder, o.resolved())


def _run_all(o: CompareOptions, rows, archs, graphs, ds, chance, show_progress: bool, log) -> list[dict]:
    todo = sum(1 for s in o.seeds for k in rows if _to_train(o.folder, k, s, archs[k]))
    progress = Progress(todo * o.config.epochs, "compare", show=show_progress)
    try:
        return _runs(rows, o.seeds, archs, graphs, o.folder, ds, o.config, chance, progress, o.tracking_log, log,
                     metric_for(ds))
    finally:
        progress.close()


def _report(o: CompareOptions, rows, archs, records, ds, chance, t_start: float, log) -> dict:
    """Summarise the runs, write the table, CSVs and plots, and say what was trained and reused."""
    import pandas as pd

    trained = sum(1 for r in records if r.pop("trained"))
    reused = len(records) - trained
    folder = o.folder
    runs = pd.DataFrame(records)
    metric = metric_for(ds)
    summary = summarize(runs, archs, rows, chance, metric)
    # dense: rows without a decoder are a floor (a 1x1 map upsampled), not a competitor of the size-matched
    # decoders; with them in, the correlation would only say that they are the smallest and the worst
    decoded = [k for k, _, d in o.rows() if d is None or decoder_parts(d)[0] != "none"]
    spearman = size_correlation(runs, decoded, metric.column)
    rho, rho_p, rho_n, _ = spearman
    table = markdown_table(summary, metric)
    notes = _notes(summary, spearman, o.budget, o.tolerance, o.seeds, ds, o.config, o.baselines, metric)
    notes += _honesty_notes(summary, o.seeds, chance, metric)
    notes += [f"{p}+{decoder_label(d)}: {decoder_parts(d)[0]} with the "
              f"{', '.join(k for k, _ in decoder_fields(d))} of {decoder_parts(d)[2]} (its width is the "
              f"decoder's default, as on every row)" for p in o.patterns for d in o.decoders if "@" in d]
    histories = {r.pattern: [(_read_json(run_path(folder, r.pattern, s)) or {}).get("history") or []
                             for s in o.seeds] for r in summary.itertuples()}
    written = _write_outputs(folder, summary, runs, table, notes, metric, histories)
    log("\n" + table + "\n\n" + "\n".join(f"- {n}" for n in notes))
    low = summary[summary.at_chance]
    if len(low):
        log(f"warning: mean {metric.label} of {', '.join(low.pattern)} is at chance (within "
            f"{100 * chance.limit():.1f}%); their differences mean nothing; train longer (epochs=)")
    log(f"\n{trained} run(s) trained, {reused} reused in {time.perf_counter() - t_start:.0f}s; "
        f"wrote {', '.join(p.name for p in written)} to {folder}")
    return {"dir": folder, "summary": summary, "runs": runs, "trained": trained, "reused": reused,
            "files": written, "spearman": (rho, rho_p, rho_n)}


def _to_train(folder: Path, key: str, seed: int, arch: dict) -> bool:
    """Whether ``_runs`` will train this run: not when its record exists, nor for a network that is
    another row's (it copies that row's run).  Counted before the first run, so reused runs that come
    late (another pattern added to a finished comparison) never stand in the ETA."""
    return not arch["same_as"] and _read_json(run_path(folder, key, seed)) is None


def _runs(rows, seed_list, archs, graphs, folder, ds, config, chance, progress, tracking_log, log,
          metric: Metric = ACCURACY) -> list[dict]:
    """Train (or reuse) every (row, seed) run; one record per run, with live progress per epoch.

    Seed by seed, every pattern at seed 0 first: a comparison stopped part-way (and resumed in a
    later session) has the same number of seeds for every pattern so far."""
    import torch

    total, records = len(rows) * len(seed_list), []
    for i, (key, seed) in enumerate(((k, s) for s in seed_list for k in rows), start=1):
        a = archs[key]
        path_ = run_path(folder, key, seed)
        rec = _read_json(path_)
        twin = a["same_as"] and _read_json(run_path(folder, a["same_as"], seed))
        if rec is not None and rec.get("fingerprint") != a["fingerprint"]:
            raise CompareError(f"{path_} holds a run of another architecture than {key!r} at these settings; "
                               f"move it away, or give a new out=")
        trained = False
        counted = [0]  # epochs the progress line has counted for this run (up to its last validation)
        if rec is not None:
            how = "done earlier"
        elif twin:
            rec = {**twin, "pattern": key, "same_as": a["same_as"]}
            _write_json(path_, rec)
            how = f"same network as {a['same_as']}"
        else:
            t0 = time.perf_counter()

            def on_epoch(epoch, metrics, tracker=None, key=key, seed=seed, i=i, counted=counted):
                # with eval_every > 1 one call covers the epochs since the previous validation
                progress.update(f"[{i}/{total}] {key} seed {seed} epoch {epoch}/{config.epochs}",
                                n=epoch - counted[0])
                counted[0] = epoch
                if tracker is not None:
                    tracker.epoch(epoch, metrics)

            with tracking.open_tracker(tracking_log, folder, f"{key}-seed{seed}") as tracker:
                res, model = _train_one(graphs[key], ds, config, seed,
                                        callback=lambda e, m, t=tracker: on_epoch(e, m, t))
            trained = True
            if res.status == "ok":  # weights first: the run's .json marks it finished
                checkpoint.save(path_.with_suffix(".safetensors"), model, graphs[key], ds,
                                config=dataclasses.asdict(dataclasses.replace(config, seed=seed)),
                                name=f"{key}-seed{seed}")
            rec = {"pattern": key, "seed": seed, "fingerprint": a["fingerprint"], "status": res.status,
                   "reason": res.reason, "test_accuracy": res.test_accuracy, "val_accuracy": res.val_accuracy,
                   **({"test_score": res.test_score, "val_score": res.val_score, **res.test_metrics}
                      if metric is not ACCURACY else {}),  # dense: the task's score and metrics
                   "train_seconds": res.train_seconds, "wall_seconds": time.perf_counter() - t0,
                   "epochs": res.epochs, "steps": res.steps, "history": res.history, "same_as": None,
                   "torch": torch.__version__, "device": config.device,
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            _write_json(path_, rec)
            how = f"{rec['wall_seconds']:.1f}s"
        if trained:  # stopped early, or trained past its last validation
            progress.drop(config.epochs - counted[0])
        acc = rec.get("test_accuracy" if metric is ACCURACY else "test_score")
        low = chance.low(acc)
        log(f"[{i}/{total}] {key} seed {seed}: "
            + (f"{metric.label} {100 * acc:.2f}%" + (f" {dstats.CHANCE_MARK}" if low else "")
               if acc is not None else f"status {rec.get('status')}")
            + f" ({how})")
        dense = {} if metric is ACCURACY else {metric.column: acc, "val_score": rec.get("val_score")}
        records.append({"pattern": key, "seed": seed, "status": rec.get("status"),
                        "test_accuracy": rec.get("test_accuracy"), "val_accuracy": rec.get("val_accuracy"), **dense,
                        "train_seconds": rec.get("train_seconds"), "epochs": rec.get("epochs"),
                        "steps": rec.get("steps"), "params": a["params"], "macs": a["macs"],
                        "train_memory_bytes": a["train_memory_bytes"], "precision": a.get("precision") or "",
                        "widths": "-".join(map(str, a["widths"])),
                        "fingerprint": a["fingerprint"], "same_as": rec.get("same_as") or "", "at_chance": low,
                        "trained": trained})
    return records


def _notes(summary, spearman, budget, tolerance, seeds, ds, config, multiples,
           metric: Metric = ACCURACY) -> list[str]:
    """``spearman``: (rho, p, runs, distinct sizes) of the size correlation."""
    ref, what, dense = metric.reference, metric.label, metric is not ACCURACY
    rho, rho_p, rho_n, sizes = spearman
    notes = [f"{ds.name}: {len(ds.y_train)} train / {len(ds.y_val)} val / {len(ds.y_test)} test images at "
             f"{ds.image_size[0]}x{ds.image_size[1]}; {config.epochs} epoch(s), batch {config.batch_size}, "
             f"lr {config.lr}; seeds {', '.join(map(str, seeds))} (initial weights, order, augmentation; "
             f"the data split is fixed).",
             f"Every {'pattern+decoder row' if dense else 'pattern'} is within ±{tolerance:.0%} of {budget:,.0f} "
             f"parameters (one width multiplier on all stage channels"
             + ("; each decoder keeps its default width: fpn, unet, bifpn and nasfpn 32 channels, ida_up and "
                "hrnet_fuse the stage widths, none and fcn class scores" if dense else "")
             + f"). {what[0].upper() + what[1:]} is on the held-out test split; CIs use the t-distribution over "
             f"seeds; Δ is against {ref} with Welch's t-test, p Holm adjusts for the {len(summary) - 1} "
             f"comparisons with {ref}."]
    if dense:
        notes.append(f"{ref}: the reference, a plain chain encoder without decoder aggregation (a 1x1 classifier "
                     f"on the deepest stage, upsampled: FCN-32s). A decoder's effect on one encoder is the "
                     f"difference of that pattern's rows (their Δs share the reference).")
    for m in multiples:
        notes.append(f"{baseline_key(m, ref)}: a plain chain{' without decoder' if dense else ''} sized to {m:g} x "
                     f"the budget (params-only baseline). Its Δ "
                     f"vs {ref} is what resizing a plain network to {m:g} x its parameters buys on this data "
                     f"and schedule; set each pattern's Δ beside it.")
    if math.isfinite(rho):
        notes.append(f"Spearman rank correlation of params and {what} over the {rho_n} budget-matched "
                     f"runs{' with a decoder' if dense else ''}: rho = {rho:+.2f} (p = {rho_p:.2g}); near 0 means the remaining size differences "
                     f"(within ±{tolerance:.0%}) do not explain the ranking.")
    else:
        notes.append(f"Spearman rank correlation of params and {what}: {dstats.DASH} (needs at least "
                     f"{dstats.MIN_CORRELATION} finished runs{' with a decoder' if dense else ''}, of at least two "
                     f"network sizes, with different {'scores' if dense else 'accuracies'}; here {rho_n} run(s) "
                     f"of {sizes} size(s)).")
    twins = summary[summary.same_as != ""]
    for r in twins.itertuples():
        notes.append(f"{r.pattern} builds the same network as {r.same_as} (same fingerprint); its runs are "
                     f"shared, not retrained.")
    failed = summary[summary.ok_runs < summary.runs]
    for r in failed.itertuples():
        notes.append(f"{r.pattern}: {r.runs - r.ok_runs} of {r.runs} runs diverged (NaN loss) and are left "
                     f"out of its statistics.")
    return notes


def _honesty_notes(summary, seeds, chance, metric: Metric = ACCURACY) -> list[str]:
    """Footnotes for statistics that were not computed and for rows at chance."""
    notes = []
    if len(seeds) < dstats.MIN_SPREAD or (summary.ok_runs < dstats.MIN_SPREAD).any():
        notes.append(f"{dstats.DASH}: not computed: a std, CI, Welch test or Holm p-value needs at least "
                     f"{dstats.MIN_SPREAD} finished seeds per row (and a spread: identical accuracies give no test).")
    if summary.at_chance.any() and chance.dense:
        notes.append(f"{dstats.CHANCE_MARK}: the mean {metric.label} is no better than chance "
                     f"({100 * chance.level:.1f}%: a guesser that knows only the class frequencies of the {chance.n:,} scored test pixels): "
                     f"the network learned nothing measurable on this schedule.")
    elif summary.at_chance.any():
        level, n = chance.level, chance.n
        notes.append(f"{dstats.CHANCE_MARK}: the mean test accuracy is within chance + 2 standard errors "
                     f"({100 * level:.1f}% + 2 SE on {n} images = {100 * dstats.chance_limit(level, n):.1f}%): "
                     f"the network learned nothing measurable on this schedule.")
    return notes


def _write_outputs(folder: Path, summary, runs, table: str, notes: list[str], metric: Metric = ACCURACY,
                   histories: dict | None = None) -> list[Path]:
    written = []
    for fname, text in (("comparison.csv", summary.to_csv(index=False)), ("runs.csv", runs.to_csv(index=False))):
        written.append(files.write_text(folder / fname, text, CompareError))
    images = plots(summary, runs, folder, metric) + (curves(histories, folder, metric) if histories else [])
    title = "Aggregation patterns" + (" and decoders" if metric is not ACCURACY else "") + " at one parameter budget"
    md = [f"# {title}", "", table, "", *[f"- {n}" for n in notes], ""]
    md += [f"![{p.stem}]({p.name})" for p in images if p.suffix == ".svg"]
    md += ["", "Per-pattern summary: [comparison.csv](comparison.csv); per run: [runs.csv](runs.csv); "
               "architectures: `archs/`; raw runs: `runs/`.", ""]
    files.write_text(folder / "comparison.md", "\n".join(md), CompareError)
    return [*written, folder / "comparison.md", *images]


def command(args: dict) -> int:
    """``dlasearch compare``: see docs/compare_report.md."""
    from_options(args, log=lambda *a: print(*a, flush=True))
    return 0


def from_options(args: dict, log=print) -> dict:
    """A comparison from the command line's parsed options (``dlasearch.api.compare`` too); returns
    ``compare``'s result."""
    train_names = [n for n in TrainConfig.option_names() if n not in _NOT_TRAIN_OPTIONS]
    data = args.get("data")
    if isinstance(data, dict) and "image_size" in data:
        args["image_size"] = data.pop("image_size")  # data.image_size: the spelling train and run use
    old = [k for k in ("root", "path", "limit", "val_fraction") if k in args]
    if old:
        print(f"note: {', '.join(f'{k}=' for k in old)} is now spelled "
              f"{', '.join(f'data.{k}=' for k in old)} (as in train and run)", file=sys.stderr)
    opts = {k: args[k] for k in OPTIONS if k in args}
    train = {k: args[k] for k in train_names if k in args}
    return compare(opts.pop("patterns", None), opts.pop("data", "digits"), opts.pop("seeds", 3),
                   opts.pop("budget", None), train=train, log=log, tracking_log=args.get("log"),
                   print_config=bool(args.get("print_config")), **opts)
