"""Running a search: ``dlasearch run`` and its worker processes, each looping over trials."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState

from dlasearch import files, stats
from dlasearch.configfile import write_config
from dlasearch.errors import SearchError
from dlasearch.search import guard, journal, keep, precheck
from dlasearch.search.objective import Objective
from dlasearch.search.results import export
from dlasearch.search.screen import screen
from dlasearch.search.table import TableObjective, is_bench
from dlasearch.search.study import (counted, fail_stale, fail_trial, open_study, quiet_optuna, requeue_interrupted,
                                    results_dir, storage_url, study_name, trial_id, worker_id)
from dlasearch.train import data as datamod, tracking
from dlasearch.train.progress import Progress
from dlasearch.search import attrs

__all__ = ['load_data', 'work', 'run']


def load_data(space: dict):
    d = space["data"]
    return datamod.load(d["name"], root=d["root"], path=d["path"], val_fraction=d["val_fraction"],
                        seed=space["study"]["seed"], image_size=d["image_size"], limit=d["limit"],
                        flip=d.get("flip"), progress=False)


def _best_line(study: optuna.Study) -> str:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return "best: none yet"
    if len(study.directions) > 1:
        return f"Pareto front: {len(study.best_trials)} trials"
    b = max(done, key=lambda t: t.values[0])
    name = json.loads(study.user_attrs.get(attrs.SPACE) or "{}").get("objectives", ["val_accuracy"])[0]
    return f"best #{b.number} {name}={b.values[0]:.4f} ({b.user_attrs.get('pattern', '?')})"


def work(study: optuna.Study, space: dict, data=None, log=print, train_fn=None) -> None:
    """Run trials in this process until the study holds ``study.trials`` trials (or timeout)."""
    if is_bench(space):
        objective = TableObjective(space, log)
    else:
        objective = Objective(space, data if data is not None else load_data(space), log, train_fn)
    total, epochs = space["study"]["trials"], space["train"]["epochs"]
    deadline = time.time() + space["study"]["timeout"] if space["study"]["timeout"] else math.inf
    # progress belongs to the command's console output: shown when logging goes to print
    objective.progress = Progress(max(0, total - counted(study)) * epochs, "search", show=log is print)
    backends = tracking.parse(space.get("log"))
    fn, callbacks = objective, [_logger(log)]
    if backends:
        objective.tracker = tracking.StudyTracker(backends, results_dir(space), space["objectives"])
        fn, callbacks = objective.tracker.wrap(objective), callbacks + objective.tracker.callbacks()
    try:
        with quiet_optuna(optuna.logging.ERROR):
            _trials(study, space, objective, fn, callbacks, deadline, log)
    except Exception as e:
        failed = journal.write_error(e)
        if failed is None:
            raise
        raise SearchError(f"cannot write the journal {failed.strerror}; it still holds every finished trial; "
                          f"make room and rerun the same command to resume") from None
    except KeyboardInterrupt as e:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get(attrs.WORKER) == worker_id():
                try:
                    fail_trial(study, trial_id(t), guard.interrupt_reason(e), **{guard.INTERRUPTED: True})
                except Exception:
                    pass
        raise
    finally:
        objective.progress.close()
        if objective.tracker is not None:
            objective.tracker.close()


def _trials(study, space: dict, objective: Objective, fn, callbacks, deadline: float, log) -> None:
    """One trial at a time until the study holds ``study.trials`` counted trials or the deadline passes."""
    total, epochs = space["study"]["trials"], space["train"]["epochs"]
    while time.time() < deadline:
        guard.stop_if_orphaned()
        stale = fail_stale(study, space["study"]["grace"])
        if stale:
            log(f"failed stale trial(s) {stale} left by a stopped worker; re-queued their parameters")
        k = counted(study)
        if k >= total:
            return
        log(f"trial {k + 1}/{total} | {_best_line(study)}")
        objective.epochs_run, objective.position = 0, f"{k + 1}/{total}"
        if space["study"]["screen"]:
            screen(study, space["study"]["screen"], objective.screen_score, space["study"]["proxy"])
        study.optimize(fn, n_trials=1, catch=(Exception,), callbacks=callbacks)
        if objective.fatal is not None:
            raise objective.fatal
        objective.progress.drop(epochs - objective.epochs_run)  # pruned, rejected or reused early
        keep.prune(study, space)


def _logger(log):
    def callback(study, t):
        if t.state == TrialState.COMPLETE:
            vals = ", ".join(f"{o}={v:.4g}" for o, v in zip(json.loads(study.user_attrs[attrs.SPACE])["objectives"],
                                                             t.values))
            log(f"  trial #{t.number} complete: {vals}"
                + (f" {stats.CHANCE_MARK}" if t.user_attrs.get(attrs.AT_CHANCE) else ""))
        elif t.state == TrialState.PRUNED:
            log(f"  trial #{t.number} pruned: {t.user_attrs.get('rejected') or 'by the pruner'}")
        else:
            reason = t.user_attrs.get(attrs.FAIL_REASON) or t.system_attrs.get(attrs.FAIL_REASON) or "error"
            log(f"  trial #{t.number} failed: {reason}")
    return callback


def run(space: dict, log=print) -> dict:
    """``dlasearch run``: open/resume the study, run its workers, export results; returns a summary.

    Everything is checked before the study is created (data, training options, output folder), so a
    failed start never leaves a study whose name the corrected command could not use."""
    if is_bench(space):
        data = retrain = None
        TableObjective(space, log)  # checks the benchmark exists
    else:
        data = load_data(space)
        retrain = Objective(space, data, log).retrain  # checks the training options (device, precision, lr ...)
        precheck.check_space(space, data.channels, data.num_classes)
    files.check_writable(results_dir(space), "study.results", SearchError)
    study = open_study(space, log=log)
    requeue_interrupted(study, log)  # here, before any worker starts: queued once, not once per worker
    keep.recover(study, space, retrain, log)  # weights a full disk kept out of the store on an earlier run
    workers = space["study"]["workers"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = space["study"]["threads"] or max(1, cores // workers)
    url = storage_url(space)
    log(f"study {study_name(space)!r} ({url}): {counted(study)}/{space['study']['trials']} trials done, "
        f"{workers} worker(s) x {threads} thread(s)")
    write_config(results_dir(space), {k: v for k, v in space.items() if k != "name"} | {"space": space["name"]})
    try:
        _run_workers(study, space, workers, threads, url, data, log)
    except KeyboardInterrupt:
        export(study, space, log=log)  # what finished is in trials.csv even after Ctrl-C
        raise
    return export(study, space, log=log)


def _run_workers(study, space: dict, workers: int, threads: int, url: str, data, log) -> None:
    if workers == 1:
        space = {**space, "study": {**space["study"], "threads": threads}}
        work(study, space, data=data, log=log)
    else:
        tracking_names = tracking.parse(space.get("log"))
        env = {**os.environ, guard.PARENT_ENV: str(os.getpid())}
        procs = [subprocess.Popen([sys.executable, "-m", "dlasearch.cli", "worker",
                                   f"study={study_name(space)}", f"storage={url}", f"threads={threads}",
                                   f"trials={space['study']['trials']}", f"index={i}"]
                                  + ([f"log={','.join(tracking_names)}"] if tracking_names else []),
                                  env=env, preexec_fn=guard.die_with_parent if sys.platform == "linux" else None)
                 for i in range(workers)]
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt as e:
            for p in procs:
                p.send_signal(signal.SIGTERM if isinstance(e, guard.Terminated) else signal.SIGINT)
            for p in procs:
                p.wait()
            raise
        if any(codes):
            log(f"warning: worker exit codes {codes}")
