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
import sqlalchemy.exc
from optuna.trial import TrialState

from dlasearch import files, stats
from dlasearch.configfile import write_config
from dlasearch.errors import SearchError, behind
from dlasearch.search import confirm as confirmmod, guard, journal, keep, precheck
from dlasearch.search.objective import Objective
from dlasearch.search.results import export
from dlasearch.search.screen import screen
from dlasearch.search.table import TableObjective, is_bench
from dlasearch.search.space import duplicate_cap
from dlasearch.search.study import (counted, duplicates, fail_stale, fail_trial, open_study, quiet_optuna,
                                    requeue_interrupted, results_dir, storage_url, study_name, trial_id, unattended,
                                    worker_id)
from dlasearch.train import data as datamod, tracking
from dlasearch.train.progress import Progress
from dlasearch.search import attrs, storage_proxy

__all__ = ['load_data', 'work', 'run', 'cap_reached']


def load_data(space: dict):
    d = space["data"]
    return datamod.load(d["name"], root=d["root"], path=d["path"], val_fraction=d["val_fraction"],
                        seed=space["study"]["seed"], image_size=d["image_size"], limit=d["limit"],
                        flip=d.get("flip"), progress=False)


def _best_line(study: optuna.Study) -> str:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return "best: none yet"
    if len(study.directions) > 1:  # one architecture once, however often it was proposed
        front = {t.user_attrs.get(attrs.FINGERPRINT) or t.number for t in study.best_trials}
        return f"Pareto front: {len(front)} architecture(s)"
    b = max(done, key=lambda t: t.values[0])
    name = json.loads(study.user_attrs.get(attrs.SPACE) or "{}").get("objectives", ["val_accuracy"])[0]
    return f"best #{b.number} {name}={b.values[0]:.4f} ({b.user_attrs.get('pattern', '?')})"


def work(study: optuna.Study, space: dict, data=None, log=print, train_fn=None) -> None:
    """Run trials in this process until the study holds ``study.trials`` trials (or timeout)."""
    if is_bench(space):
        objective = TableObjective(space, log)
    else:
        _check_store(space)
        objective = Objective(space, data if data is not None else load_data(space), log, train_fn)
    total, epochs = space["study"]["trials"], space["train"]["epochs"]
    deadline = time.time() + space["study"]["timeout"] if space["study"]["timeout"] else math.inf
    # progress belongs to the command's console output: shown when logging goes to print
    objective.progress = Progress(max(0, total - counted(study)) * epochs, "search", show=log is print)
    backends = tracking.parse(_tracking_log(study, space.get("log"), log))
    fn, callbacks = objective, [_logger(log)]
    if backends:
        objective.tracker = tracking.StudyTracker(backends, results_dir(space), space["objectives"])
        fn, callbacks = objective.tracker.wrap(objective), callbacks + objective.tracker.callbacks()
    try:
        with quiet_optuna(optuna.logging.ERROR):
            _trials(study, space, objective, fn, callbacks, deadline, log)
    except Exception as e:
        lost = storage_proxy.lost(e)  # Optuna may mask it (an UnboundLocalError while it fails the trial)
        if lost is not None:
            raise lost from None
        down = _database_down(e)
        if down is not None:
            raise SearchError(f"storage={storage_url(space)}: the database stopped answering ({down}); it keeps every "
                              f"trial finished before; when it is back, rerun the same command to resume (the trial "
                              f"that was running is failed as stale and trained again)") from None
        failed = journal.write_error(e)
        if failed is None:
            raise
        raise SearchError(f"cannot write the journal {failed.strerror}; it still holds every finished trial; "
                          f"once that is fixed, rerun the same command to resume") from None
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
    told = set()
    while time.time() < deadline:
        guard.stop_if_orphaned()
        stale = fail_stale(study, space["study"]["grace"])
        if stale:
            log(f"failed stale trial(s) {stale} left by a stopped worker; re-queued their parameters")
        k = counted(study)
        if k >= total:
            waiting = unattended(study, space["study"]["heartbeat"])
            if not waiting:
                return
            if set(waiting) - told:
                log(f"waiting for trial(s) {waiting}: RUNNING, but no worker has shown a heartbeat; unless one "
                    f"does, each is failed as stale after study.grace={space['study']['grace']} s and trained again")
                told |= set(waiting)
            time.sleep(min(space["study"]["heartbeat"], 2.0))
            continue
        stop = cap_reached(study, space)
        if stop:
            log(stop)
            return
        dups = duplicates(study)
        log(f"trial {k + 1}/{total} | {_best_line(study)}"
            + (f" | {dups} repeated architecture(s) not counted" if dups else ""))
        objective.epochs_run, objective.position = 0, f"{k + 1}/{total}"
        if space["study"]["screen"]:
            screen(study, space["study"]["screen"], objective.screen_score, space["study"]["proxy"])
        study.optimize(fn, n_trials=1, catch=(Exception,), callbacks=callbacks)
        if objective.fatal is not None:
            raise objective.fatal
        if not getattr(objective, "was_duplicate", False):  # a repeated architecture used up no trial
            objective.progress.drop(epochs - objective.epochs_run)  # pruned, rejected or reused early
        keep.prune(study, space)


def cap_reached(study, space: dict) -> str | None:
    """The line that says the study ends because the sampler keeps proposing architectures it has
    already evaluated (``study.max_duplicates`` of them), or None while it may go on."""
    cap, dups = duplicate_cap(space), duplicates(study)
    if dups < cap:
        return None
    return (f"stopping: the sampler proposed an architecture the study had already evaluated {dups} times "
            f"(study.max_duplicates={cap}), so it ends with {counted(study)} of {space['study']['trials']} "
            f"trials: the space holds few distinct architectures, or the sampler has settled on one; "
            f"widen the space or raise study.max_duplicates")


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
    if not is_bench(space):
        _check_store(space)
    study = open_study(space, log=log)
    requeue_interrupted(study, log)  # here, before any worker starts: queued once, not once per worker
    keep.recover(study, space, retrain, log)  # weights a full disk kept out of the store on an earlier run
    workers = space["study"]["workers"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = space["study"]["threads"] or max(1, cores // workers)
    url = storage_url(space)
    dups = duplicates(study)
    log(f"study {study_name(space)!r} ({url}): {counted(study)}/{space['study']['trials']} trials done"
        + (f" (+{dups} repeated architecture(s), not counted)" if dups else "")
        + f", {workers} worker(s) x {threads} thread(s)")
    write_config(results_dir(space), {k: v for k, v in space.items() if k != "name"} | {"space": space["name"]})
    try:
        _run_workers(study, space, workers, threads, url, data, log)
        confirmed = _confirm(study, space, data, space["study"]["threads"] or cores, log)  # one process now
    except KeyboardInterrupt:
        export(study, space, log=log)  # what finished is in trials.csv even after Ctrl-C
        raise
    summary = export(study, space, log=log)
    if confirmed is not None:  # the last word: how far the top architectures hold up over seeds
        summary["confirmed"] = confirmmod.show(confirmed, space, log)
    return summary


def _confirm(study, space: dict, data, threads: int, log):
    """``confirm=K seeds=S``: train the top K architectures with S more seeds (those not stored yet)."""
    if not space["study"]["confirm"]["top"]:
        return None
    if is_bench(space):
        log("confirm= needs training; a search answered from a benchmark (data=bench:...) has one seed per "
            "architecture: nothing to confirm")
        return None
    objective = Objective({**space, "study": {**space["study"], "threads": threads}}, data, log)
    with quiet_optuna(optuna.logging.ERROR):
        return confirmmod.run(study, space, objective, log)


def _database_down(e: BaseException) -> str | None:
    """The first line of the lost-connection error behind ``e``, or None.  Optuna masks it: telling the
    trial fails, reading the trial back in its ``finally`` fails too, and an ``UnboundLocalError``
    ('updated_state') surfaces with the database error two contexts down."""
    db = behind(e, lambda x: isinstance(x, sqlalchemy.exc.OperationalError) or (
        isinstance(x, sqlalchemy.exc.DBAPIError) and x.connection_invalidated))
    if db is None:
        return None
    return str(db.orig if getattr(db, "orig", None) is not None else db).strip().splitlines()[0][:160]


def _tracking_log(study: optuna.Study, given, log):
    """``log=`` as given (and remembered by the study), else as the study was last run with."""
    stored = study.user_attrs.get(attrs.TRACKING_LOG)
    if given is None:
        if stored and stored != "none":
            log(f"log={stored}: as this study was last run (log=none turns it off)")
        return stored
    value = ",".join(tracking.parse(given)) or "none"
    if value != stored:
        study.set_user_attr(attrs.TRACKING_LOG, value)
    return value


def _check_store(space: dict) -> None:
    """The weights store must take a file before any trial trains (it is written after the training)."""
    if space["study"]["keep"] != "none":
        files.check_writable(keep.store_path(space), "study.artifacts", SearchError)


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
