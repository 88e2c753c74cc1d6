"""One measured run, as ``dlasearch train`` makes it: resolve, check, train and write a run folder."""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from dlasearch import files, ir as irmod, weights as checkpoint
from dlasearch.arch import check_fit, read_arch, resolve_arch, total_stride
from dlasearch.configfile import write_config
from dlasearch.errors import TrainError
from dlasearch.ir import to_module
from dlasearch.train import data as datamod, freeze, scenes, tracking
from dlasearch.train.config import TrainConfig, resolve_device
from dlasearch.train.dense import chance_record, check_options
from dlasearch.train.trainer import measure_arch, train

__all__ = ['save_run', 'save_or_fallback', 'run_folder', 'data_options', 'resolved_config', 'run', 'finished']

MAX_AUTO_GROWTH = 8  # image_size=auto never enlarges images more than this (a silent multi-GB run otherwise)


def save_run(folder: Path, graph: irmod.IR, record: dict, trained=None) -> Path:
    """Write the weights (``trained`` = (model, dataset, config)), ``ir.json``, then ``metrics.json``
    (last: a folder without it is an unfinished run)."""
    folder = Path(folder)
    if trained is not None:
        model, ds, config = trained
        checkpoint.save(folder / checkpoint.WEIGHTS, model, graph, ds, config=dataclasses.asdict(config),
                        name=record.get("name"))
    files.write_atomic(folder / "ir.json", irmod.to_json(graph, indent=1) + "\n")
    files.write_atomic(folder / "metrics.json", json.dumps(record, indent=1, default=str) + "\n")
    return folder


def save_or_fallback(folder: Path, graph: irmod.IR, record: dict, trained=None) -> Path:
    """``save_run``; if ``folder`` cannot be written after training, save the run in a fallback folder
    (under ``results/train``, else the temp dir) and name it in the error, so the training is never lost."""
    try:
        return save_run(folder, graph, record, trained)
    except OSError as e:
        reason = files.explain(e)
    for base in (files.results_root() / "train", Path(tempfile.gettempdir())):
        try:
            base.mkdir(parents=True, exist_ok=True)
            fallback = Path(tempfile.mkdtemp(prefix=f"unsaved-{Path(folder).name}-", dir=base))
            save_run(fallback, graph, record, trained)
        except OSError:
            continue
        raise TrainError(f"cannot write {folder}: {reason}; the finished run was saved to {fallback} instead")
    raise TrainError(f"cannot write {folder}: {reason}, nor any fallback folder; the run is lost")


def run_folder(out: str | None, name: str | None, default_name: str, base: Path | None = None) -> Path:
    """``out`` as given, else ``base/<name>`` (default ``<time>-<arch>-<data>``, unique)."""
    if out is not None:
        return Path(str(out)).expanduser()
    base = files.results_root() / "train" if base is None else base
    stem = str(name) if name is not None else f"{time.strftime('%Y%m%d-%H%M%S')}-{default_name}"
    files.check_name(stem, "name", TrainError)
    folder, i = base / stem, 2
    while name is None and folder.exists():
        folder, i = base / f"{stem}-{i}", i + 1
    return folder


DATA_OPTIONS = ("name", "root", "path", "val_fraction", "limit", "flip", "download", "seed", "task", "classes")


def data_options(value) -> dict:
    """``data=<name>``, ``data=<file.npz>``, ``data=<images/ + masks/ folder>`` or ``data.name=... data.root=...``
    -> ``data.load`` keywords."""
    if value is None:
        value = {"name": "digits"}
    if isinstance(value, str):
        value = ({"name": "npz", "path": value} if value.endswith(".npz") else
                 {"name": "folder", "path": value} if Path(value).expanduser().is_dir() else {"name": value})
    if not isinstance(value, dict):
        raise TrainError(f"data={value!r}: expected a dataset name, a .npz path, or data.name=... options")
    value = {"name": "digits", **value}
    unknown = set(value) - set(DATA_OPTIONS)
    if unknown:
        raise TrainError(f"unknown data option(s) {sorted(unknown)}; allowed: "
                         f"{', '.join('data.' + k for k in DATA_OPTIONS)}")
    return dict(value)


def resolved_config(arch, data, config: TrainConfig, *, image_size="auto", resize: str = "interpolate",
                    test: bool = False, latency: bool = True, out=None, name=None, log=None,
                    overwrite: bool = False, weights=None) -> dict:
    """Everything a ``dlasearch train`` run uses, as ``config.yaml`` holds it (``--cfg`` prints it)."""
    opts = data_options(data)
    return {"command": "train", "arch": arch, "data": {**opts, "image_size": image_size}, "resize": resize,
            "test": test, "latency": latency, "out": out, "name": name, "overwrite": overwrite, "log": log,
            "weights": None if weights is None else str(weights), "train": dataclasses.asdict(config)}


def run(arch: str, data: dict | str | None, config: TrainConfig, *, image_size="auto",
        resize: str = "interpolate", test: bool = False, latency: bool = True,
        out: str | None = None, name: str | None = None, weights: str | None = None,
        log=None, overwrite: bool = False) -> tuple[dict, Path]:
    """Resolve, check, measure and train one architecture; write its run folder; return (record, folder).

    Every input is checked before anything runs or is written.  ``image_size``
    ``auto`` keeps the native size unless the network downsamples more than
    that, then uses its total stride (e.g. digits 8x8 -> 32 for a DLA).  ``weights``: a
    checkpoint to start from (fine-tuning; a different class count re-initialises the classifier).
    A folder holding a finished run is refused unless ``overwrite``; then the new run is trained in a
    sibling folder that replaces the old one whole at the end, so a killed retrain leaves the old run.
    """
    read_arch(arch)
    tracking.parse(log)  # a missing package or an MLflow server that does not answer: before anything runs
    if weights is not None:
        checkpoint.read_state_dict(weights)  # a missing or corrupt file fails before the data loads
    option = "out" if out is not None else "name"
    target = run_folder(out, name, "probe")
    files.check_writable(target, option, TrainError)
    replacing = finished(target)
    if replacing and not overwrite:
        raise TrainError(f"{option}={out if out is not None else name!r}: {target} holds a finished run "
                         f"(metrics.json or {checkpoint.WEIGHTS}); pass overwrite=true to replace it, or choose "
                         f"another {option}=")
    opts = data_options(data)
    split_seed = opts.pop("seed", 0)
    canvas = {"image_size": image_size} if opts["name"] in scenes.SOURCES and isinstance(image_size, int) else {}
    ds = datamod.load(opts.pop("name"), seed=split_seed, **opts, **canvas)  # scenes: drawn at that size, not resized
    graph = resolve_arch(arch, ds.channels, ds.num_classes)
    if image_size == "auto":
        stride = total_stride(graph)
        image_size = stride if min(ds.image_size) < stride else None
        if image_size is not None and image_size > MAX_AUTO_GROWTH * min(ds.image_size):
            raise TrainError(f"image_size=auto would grow {ds.name}'s {min(ds.image_size)} px images to {image_size} px "
                             f"(the architecture downsamples {stride}x); set image_size=N explicitly, or use an "
                             f"architecture with fewer stages")
    ds = ds.resized(image_size, resize)
    check_fit(graph, ds)
    check_options(config, ds)
    arch_name = str(graph.graph.get("name") or Path(str(arch)).stem)
    folder = run_folder(out, name, f"{arch_name}-{ds.name}")
    model = to_module(graph, init=config.init, seed=config.seed)  # weights= then replaces what it holds
    if weights is not None:
        note = checkpoint.load_weights(model, weights, graph)
        if note:
            print(note)
    fixed = freeze.describe(model, config.freeze)
    if fixed is not None:
        print(f"freeze={config.freeze}: {fixed['frozen_params']:,} parameters frozen and "
              f"{fixed['batchnorm_layers_fixed']} BatchNorm layers' statistics fixed; {fixed['trainable_params']:,} "
              f"trainable ({', '.join(fixed['trained'])})")
    record = {"arch": str(arch), "name": arch_name, "fingerprint": irmod.fingerprint(graph),
              "data": {**ds.summary(), "split_seed": split_seed, "resize": resize},
              "config": dataclasses.asdict(config), "device": str(resolve_device(config.device)),
              "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "normalisation": {"mean": list(ds.mean), "std": list(ds.std)},
              "weights_from": None if weights is None else str(weights), "weights": checkpoint.WEIGHTS,
              "freeze": fixed}
    work = files.sibling_dir(folder, "train") if replacing else folder
    try:
        metrics = measure_arch(model, ds, config, latency)  # first: a step that cannot fit leaves no folder behind
        write_config(work, resolved_config(arch, data, config, image_size=image_size, resize=resize, test=test,
                                           latency=latency, out=str(folder), name=name, log=log, overwrite=overwrite,
                                           weights=weights)
                     | {"data": {**opts, "name": ds.name, "image_size": list(ds.image_size)}})
        with tracking.open_tracker(log, work, arch_name) as tracker:
            result = train(model, ds, config, test=test, callback=tracker.epoch)
        metrics.update({**result.scores(), "train_seconds": result.train_seconds})
        record.update({"status": result.status, "reason": result.reason, "task": result.task, "engine": result.engine,
                       "metrics": metrics, "epochs": result.epochs, "steps": result.steps, "history": result.history,
                       "chance": chance_record(ds, result.val_score, result.test_score if test else None)})
        saved = save_or_fallback(work, graph, record, (model, ds, config))
    except BaseException:
        if replacing:  # interrupted or failed: the old run stays as it was
            shutil.rmtree(work, ignore_errors=True)
        raise
    return record, (_replace(work, folder) if replacing and saved == work else saved)


def finished(folder: Path) -> bool:
    """Whether ``folder`` holds a finished run (``metrics.json`` or weights), which a new one would replace."""
    return (Path(folder) / "metrics.json").exists() or (Path(folder) / checkpoint.WEIGHTS).exists()


def _replace(work: Path, folder: Path) -> Path:
    """Swap the finished new run ``work`` in for the old run ``folder`` and delete the old one."""
    try:
        files.replace_dir(work, folder)
    except OSError as e:
        raise TrainError(f"cannot replace {folder}: {files.explain(e)}; the new run is in {work}") from None
    shutil.rmtree(work, ignore_errors=True)  # it now holds the old run
    return folder
