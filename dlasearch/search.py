"""Optuna search over depth, width and aggregation pattern: ``dlasearch run space=hda``.

Per trial: sample a spec -> IR -> fingerprint -> params/MACs/training memory
-> reject over-budget architectures before training -> train with per-epoch
reporting (pruning) -> record metrics, IR JSON and fingerprint on the trial.
A fingerprint already evaluated in the study is answered from the stored
result, not retrained.

Storage: an Optuna journal file ``results/<study>/journal.log`` by default
(safe for several local processes), or any RDB URL (``postgresql://``,
``mysql://``, ``sqlite://``) for many machines.  Every running trial writes a
heartbeat into its user attributes; before each trial a worker fails trials
whose worker died (same host: the process is gone; elsewhere: no heartbeat for
``study.grace`` seconds) and re-queues their parameters, so a SIGKILLed worker
leaves no trial RUNNING on any storage (Optuna's own heartbeat covers RDB only).
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from dlasearch import files, guard, journal, keep, precheck
from dlasearch import space as spacemod
from dlasearch import stats
from dlasearch.errors import DLASearchError, did_you_mean
from dlasearch.ir import IRError, fingerprint, from_json, to_json
from dlasearch.patterns import build

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
CONTRACT = ("params", "backbone", "data", "train", "objectives")
ME = f"{socket.gethostname()}:{os.getpid()}"


class SearchError(DLASearchError):
    """A study that cannot be opened, resumed or attached to as asked."""


# ------------------------------------------------------------------ storage

def results_dir(space: dict) -> Path:
    """Where the study's exports go: its own folder, or one keyed by storage= (never another study's)."""
    return files.study_dir(study_name(space), space["study"]["storage"], Path(space["study"]["results"]))


def study_name(space: dict) -> str:
    return space["study"]["name"] or space["name"]


def storage_url(space: dict) -> str:
    """The storage URL: the space's, or the journal file under ``results/<study>/``."""
    return space["study"]["storage"] or str(Path(space["study"]["results"]) / study_name(space) / "journal.log")


def open_storage(url: str, log=print, write: bool = True):
    """An Optuna storage for a journal file path or an RDB URL.

    A journal is checked first (``journal.repair``): a torn last record is moved aside and the trials
    it touched are failed as stale and re-queued; a damaged middle is an error, never rewritten.
    ``write=False`` (reading a study) only checks, so a read-only journal can still be reported on."""
    if "://" in url:
        if url.startswith("journal://"):
            url = url[len("journal://"):]
        else:
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
            except Exception as e:  # sqlalchemy's errors name the driver/host problem
                raise SearchError(f"storage={url!r}: cannot open: {str(e).splitlines()[0]}") from None
    path = Path(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if write:
            open(path, "ab").close()  # a read-only or immutable journal is refused now, not at the first write
        torn = journal.repair(path, log, write)
        storage = optuna.storages.JournalStorage(journal.SafeJournalBackend(str(path)))
    except OSError as e:
        raise SearchError(f"storage={url!r}: cannot write the journal file: {files.explain(e)}") from None
    for trial_id in torn:
        _fail_torn(storage, trial_id, log)
    return storage


def _fail_torn(storage, trial_id: int, log) -> None:
    """Fail a trial whose last journal record was torn off (it may still say RUNNING) and re-queue it."""
    try:
        t = storage.get_trial(trial_id)
    except KeyError:
        return  # the torn record was the one creating it
    if t.state != TrialState.RUNNING:
        return
    storage.set_trial_user_attr(trial_id, "fail_reason", "stale: its last journal record was torn (killed run)")
    storage.set_trial_user_attr(trial_id, "stale", True)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)
    if t.params:
        name = next(s.study_name for s in storage.get_all_studies()
                    if any(x._trial_id == trial_id for x in storage.get_all_trials(s._study_id, deepcopy=False)))
        optuna.load_study(study_name=name, storage=storage).enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    log(f"failed trial #{t.number} (its last record was torn) and re-queued its parameters")


def make_sampler(space: dict, offset: int = 0):
    """The space's sampler; ``offset`` shifts its seed so a resumed study or a second worker does
    not replay the random draws of the first."""
    st = space["study"]
    name, seed = st["sampler"], st["seed"] + offset
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=min(10, max(2, st["trials"] // 3)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    grid = {}
    for n, p in space["params"].items():
        values = p["choices"] if "choices" in p else [p["value"]]
        if n == "levels":
            n_max = max(space["params"].get("stages", {}).get("choices", [len(space["backbone"]["stages"])])
                        if "stages" in space["params"] else [len(space["backbone"]["stages"])])
            grid.update({f"stage{i}.levels": values for i in range(n_max)})
        elif "choices" in p:
            grid[n] = values
    return optuna.samplers.GridSampler(grid, seed=seed)


def make_pruner(space: dict):
    if len(space["objectives"]) > 1 or space["study"]["pruner"] == "none":
        return optuna.pruners.NopPruner()
    if space["study"]["pruner"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=space["train"]["epochs"])


def open_study(space: dict, create: bool = True, log=print) -> optuna.Study:
    """Create or resume the space's study; refuse to resume one made with a different contract."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    url = storage_url(space)
    storage = open_storage(url, log)
    name = study_name(space)
    directions = [spacemod.OBJECTIVES[o] for o in space["objectives"]]
    contract = json.dumps({k: space[k] for k in CONTRACT}, sort_keys=True)
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name in existing:
        study = optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(space))
        study.sampler = make_sampler(space, len(study.get_trials(deepcopy=False)) + space["study"].get("worker", 0))
        old = study.user_attrs.get("contract")
        if old is not None and old != contract:
            from dlasearch.resume import differences

            stored = json.loads(old)
            diff = differences({k: stored.get(k) for k in CONTRACT}, {k: space[k] for k in CONTRACT})
            raise SearchError(f"study {name!r} in {url} was created with different {'; '.join(diff)}; "
                              f"resume it unchanged (`dlasearch run study={name}`), or start a new one with "
                              f"study=NEW_NAME")
        return study
    if not create:
        raise SearchError(f"study {name!r} not found in {url}; existing: {', '.join(sorted(existing)) or 'none'}")
    study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                sampler=make_sampler(space), pruner=make_pruner(space))
    study.set_user_attr("contract", contract)
    study.set_user_attr("space", json.dumps({k: v for k, v in space.items() if k != "log"}))
    if space["seed_published"]:
        for pub in spacemod.published_params(space):
            study.enqueue_trial(pub["params"], user_attrs={"seeded_from": pub["name"]}, skip_if_exists=True)
    return study


def find_study(name: str, storage: str | None = None) -> tuple[optuna.Study, str]:
    """An existing study and its storage URL (the journal under ``results/<name>/`` by default).

    Never creates anything: a missing journal file, database file or study is one clear error."""

    files.check_name(name, "study", SearchError)
    url = str(storage) if storage else str(files.default_journal(name))
    local = url[len("journal://"):] if url.startswith("journal://") else url
    if "://" not in local and not Path(local).is_file():
        raise SearchError(f"study {name!r}: no journal file at {local}; pass storage=URL (a journal file or a "
                          f"database such as postgresql://user@host/db)")
    if local.startswith("sqlite:///") and not Path(local[len("sqlite:///"):]).is_file():
        raise SearchError(f"study {name!r}: no database file at {local[len('sqlite:///'):]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_storage(url, write=False)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False))
    if name not in names:
        hint = did_you_mean(name, names)
        raise SearchError(f"study {name!r} not found in {url}{hint}; existing: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=st), url


def attach(study: str, storage: str, index: int | None = None) -> tuple[optuna.Study, dict]:
    """Open an existing study and the space it was created with (for ``dlasearch worker``).

    ``index`` numbers workers started together; others get one from their pid, so that no two
    workers draw the same random samples."""
    loaded, _ = find_study(study, storage)
    space = json.loads(loaded.user_attrs["space"])
    space["study"]["storage"] = storage
    space["study"]["name"] = study
    space["study"]["worker"] = 1000 * (index + 1) if index is not None else os.getpid()
    return open_study(space, create=False), space


# ------------------------------------------------------------ stale trials

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale(study: optuna.Study, grace: float, retry: bool = True) -> list[int]:
    """Fail RUNNING trials whose worker is gone and re-queue their parameters; returns their numbers."""
    failed = []
    now = time.time()
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        beat = t.user_attrs.get("heartbeat") or (t.datetime_start.timestamp() if t.datetime_start else now)
        w_host, _, w_pid = worker.rpartition(":")
        dead_here = w_host == host and w_pid.isdigit() and int(w_pid) != os.getpid() and not _alive(int(w_pid))
        if not (dead_here or now - beat > grace):
            continue
        reason = f"stale: worker {worker or '?'} stopped (no heartbeat for {now - beat:.0f}s)"
        try:
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
            study._storage.set_trial_user_attr(t._trial_id, "stale", True)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker got there first
        failed.append(t.number)
        if retry and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return failed


class Heartbeat:
    """Writes ``heartbeat`` (unix time) into a running trial's user attributes every ``interval`` s."""

    def __init__(self, study: optuna.Study, trial_id: int, interval: float):
        self.study, self.trial_id, self.interval = study, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(self.interval):
            guard.stop_if_orphaned()
            try:
                self.study._storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception:
                return  # the trial finished meanwhile

    def __enter__(self):
        self.study._storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


# ------------------------------------------------------------------ trials

def counted(study: optuna.Study) -> int:
    """Trials that count against ``study.trials``: finished or running, excluding stale ones (retried)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,))
               if not t.user_attrs.get("stale") and not t.user_attrs.get("surplus"))


def describe(spec: dict) -> str:
    st = spec["stages"]
    return (f"{spec['pattern']}, {len(st)} stages, blocks {'-'.join(str(s['blocks']) for s in st)}, "
            f"widths {'-'.join(str(s['channels']) for s in st)}, {spec['block']}"
            + (f" x{spec['cardinality']}" if spec["block"] == "bottleneckx" else "")
            + (f", root k{spec['root_kernel']}" if spec["root_kernel"] != 1 else "")
            + (", residual root" if spec["residual_root"] else ""))


class Objective:
    """One trial: build, measure, check budgets, train; answers duplicates from the study."""

    def __init__(self, space: dict, data, log=print, train_fn=None):
        from dlasearch import train as trainmod

        self.space, self.data, self.log = space, data, log
        self.train_fn = train_fn or trainmod.train
        self.trainmod = trainmod
        self.multi = len(space["objectives"]) > 1
        self.chance = (stats.chance(data.y_val), len(data.y_val))
        self.progress = self.tracker = None
        self.epochs_run, self.position = 0, "?"
        self.fatal = None
        self.grace = space["study"]["grace"]
        url = storage_url(space)
        self.claims = None if "://" in url and not url.startswith("journal://") else \
            Path(url.removeprefix("journal://")).parent / "claims"
        # on the training device once per worker, not once per trial
        self.data = data.to(trainmod.resolve_device(self._config().device))

    def values(self, metrics: dict):
        vals = [metrics[o] for o in self.space["objectives"]]
        return vals[0] if len(vals) == 1 else vals

    def __call__(self, trial: optuna.Trial):
        try:
            trial.set_user_attr("worker", ME)
            if guard.surplus(trial, self.space["study"]["trials"]):
                return self._surplus(trial)
            with Heartbeat(trial.study, trial._trial_id, self.space["study"]["heartbeat"]):
                return self._run(trial)
        except (optuna.TrialPruned, TrialFailed):
            raise
        except journal.JournalWriteError as e:
            self.fatal = e  # Optuna catches it to fail the trial; ``work`` then stops the study with it
            raise
        except KeyboardInterrupt as e:
            trial.set_user_attr("fail_reason", guard.interrupt_reason(e))
            raise
        except Exception as e:  # recorded on the trial; the study goes on (out of memory included)
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            raise

    def _run(self, trial):
        try:
            spec = spacemod.sample(self.space, trial)
            spec.update(in_channels=self.data.channels, num_classes=self.data.num_classes)
            trial.set_user_attr("pattern", spec["pattern"])
            trial.set_user_attr("spec", json.dumps(spec))
            trial.set_user_attr("arch", describe(spec))
            ir = build(spec, name=f"trial{trial.number}")
        except IRError as e:
            return self._fail(trial, f"invalid architecture: {e}")
        fp = fingerprint(ir)
        trial.set_user_attr("fingerprint", fp)
        trial.set_user_attr("ir", to_json(ir))
        with guard.claim(self.claims, fp, trial, self.log, reap=lambda: fail_stale(trial.study, self.grace)):
            dup = self._duplicate(trial, fp)
            if dup is not None:
                return dup
            return self._train(trial, spec, ir)

    def _surplus(self, trial):
        """A trial another worker's made redundant: not run, not counted; fixed parameters go back in the queue."""
        trial.set_user_attr("surplus", True)
        fixed = trial.system_attrs.get("fixed_params")
        if fixed:
            trial.study.enqueue_trial(fixed, user_attrs={k: v for k, v in trial.user_attrs.items()
                                                         if k in ("retry_of", "seeded_from")})
        return self._fail(trial, f"surplus: the study already has {self.space['study']['trials']} trials")

    def _train(self, trial, spec: dict, ir):
        from dlasearch.ir import to_module

        budget = self.space["budget"].get("params")
        if budget is not None and precheck.count_params(ir) > budget:  # before building it: no OOM
            over = f"params={precheck.count_params(ir):.4g} > budget {budget:.4g}"
            trial.set_user_attr("params", precheck.count_params(ir))
            trial.set_user_attr("rejected", over)
            raise optuna.TrialPruned(f"over budget: {over}")
        model = to_module(ir)
        config = self._config()
        m = self.trainmod.measure_arch(model, self.data, config, latency=False)
        metrics = {"params": m["params"], "macs": m["macs"], "train_memory": m["train_memory_bytes"]}
        for k, v in metrics.items():
            trial.set_user_attr(k, v)
        self.log(f"  trial #{trial.number}: {describe(spec)} | {metrics['params'] / 1e3:.1f}k params, "
                 f"{metrics['macs'] / 1e6:.1f}M MACs, {metrics['train_memory'] / 2**20:.1f} MiB train memory")
        over = [f"{k}={metrics[k]:.4g} > budget {b:.4g}" for k, b in self.space["budget"].items()
                if b is not None and metrics[k] > b]
        if over:
            trial.set_user_attr("rejected", "; ".join(over))
            raise optuna.TrialPruned(f"over budget: {'; '.join(over)}")
        result = self.train_fn(model, self.data, config, callback=self._reporter(trial))
        trial.set_user_attr("status", result.status)
        trial.set_user_attr("train_seconds", result.train_seconds)
        trial.set_user_attr("epochs_trained", result.epochs)
        if result.status == "nan":
            return self._fail(trial, f"training diverged (NaN/inf loss) {result.reason}".strip())
        if result.status == "stopped":
            trial.set_user_attr("val_accuracy", result.val_accuracy)
            raise optuna.TrialPruned(f"pruned after epoch {result.epochs}: val_accuracy={result.val_accuracy}")
        metrics.update(val_accuracy=result.val_accuracy, train_seconds=result.train_seconds)
        trial.set_user_attr("val_accuracy", result.val_accuracy)
        keep.upload(trial, model, ir, self.data, config, self.space)
        trial.set_user_attr("at_chance", stats.at_chance(result.val_accuracy, *self.chance))
        return self.values(metrics)

    def _fail(self, trial, reason: str):
        trial.set_user_attr("fail_reason", reason)
        raise TrialFailed(reason)

    def _duplicate(self, trial, fp: str):
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if t.user_attrs.get("fingerprint") == fp and t.number != trial.number:
                trial.set_user_attr("duplicate_of", t.number)
                for k in ("params", "macs", "train_memory", "val_accuracy", "train_seconds", "status",
                          "rejected", "at_chance"):
                    if k in t.user_attrs:
                        trial.set_user_attr(k, t.user_attrs[k])
                if t.state == TrialState.PRUNED:
                    raise optuna.TrialPruned(f"same architecture as trial #{t.number}, which was pruned")
                self.log(f"  trial #{trial.number}: same architecture as #{t.number}; reusing its result")
                return t.values[0] if len(t.values) == 1 else list(t.values)
        return None

    def _config(self):
        """The training config; TrainConfig checks every value (so a bad space fails before any trial)."""
        values = {k: v for k, v in self.space["train"].items() if v is not None}
        values["seed"] = self.space["study"]["seed"]
        values["progress"] = False  # the search prints one line per trial instead
        if self.space["study"].get("threads"):
            values["threads"] = self.space["study"]["threads"]
        return self.trainmod.TrainConfig(**values)

    def _reporter(self, trial):
        """Per epoch: progress, tracking, and (single objective) Optuna's pruning."""
        self.epochs_run = 0

        def report(epoch: int, metrics: dict):
            self.epochs_run = epoch
            if self.progress is not None:
                self.progress.update(f"trial {self.position} (#{trial.number}) epoch {epoch}/"
                                     f"{self.space['train']['epochs']} val {metrics['val_accuracy']:.3f}")
            if self.tracker is not None:
                self.tracker.epoch(trial.number, epoch, metrics)
            if self.multi:
                return
            trial.report(metrics["val_accuracy"], epoch)
            if trial.should_prune():
                raise self.trainmod.StopTraining(f"pruned at epoch {epoch}")
        return report


class TrialFailed(Exception):
    """A trial that cannot produce a result (its reason is in the ``fail_reason`` user attribute)."""


# -------------------------------------------------------------------- runs

def load_data(space: dict):
    from dlasearch import data as datamod

    d = space["data"]
    return datamod.load(d["name"], root=d["root"], path=d["path"], val_fraction=d["val_fraction"],
                        seed=space["study"]["seed"], image_size=d["image_size"], limit=d["limit"],
                        progress=False)


def _best_line(study: optuna.Study) -> str:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return "best: none yet"
    if len(study.directions) > 1:
        return f"Pareto front: {len(study.best_trials)} trials"
    b = max(done, key=lambda t: t.values[0])
    return f"best #{b.number} val_accuracy={b.values[0]:.4f} ({b.user_attrs.get('pattern', '?')})"


def work(study: optuna.Study, space: dict, data=None, log=print, train_fn=None) -> None:
    """Run trials in this process until the study holds ``study.trials`` trials (or timeout)."""
    import torch

    if space["study"].get("threads"):
        torch.set_num_threads(space["study"]["threads"])
    data = data if data is not None else load_data(space)
    from dlasearch import tracking
    from dlasearch.progress import Progress

    objective = Objective(space, data, log, train_fn)
    total = space["study"]["trials"]
    epochs = space["train"]["epochs"]
    deadline = time.time() + space["study"]["timeout"] if space["study"]["timeout"] else math.inf
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # progress belongs to the command's console output: shown when logging goes to print
    objective.progress = Progress(max(0, total - counted(study)) * epochs, "search", show=log is print)
    backends = tracking.parse(space.get("log"))
    fn, callbacks = objective, [_logger(log)]
    if backends:
        objective.tracker = tracking.StudyTracker(backends, results_dir(space), space["objectives"])
        fn, callbacks = objective.tracker.wrap(objective), callbacks + objective.tracker.callbacks()
    try:
        while time.time() < deadline:
            guard.stop_if_orphaned()
            stale = fail_stale(study, space["study"]["grace"])
            if stale:
                log(f"failed stale trial(s) {stale} left by a stopped worker; re-queued their parameters")
            k = counted(study)
            if k >= total:
                break
            log(f"trial {k + 1}/{total} | {_best_line(study)}")
            objective.epochs_run, objective.position = 0, f"{k + 1}/{total}"
            study.optimize(fn, n_trials=1, catch=(Exception,), callbacks=callbacks)
            if objective.fatal is not None:
                raise objective.fatal
            objective.progress.drop(epochs - objective.epochs_run)  # pruned, rejected or reused early
            keep.prune(study, space)
    except Exception as e:
        failed = journal.write_error(e)
        if failed is None:
            raise
        raise SearchError(f"cannot write the journal {failed.strerror}; it still holds every finished trial; "
                          f"make room and rerun the same command to resume") from None
    except KeyboardInterrupt as e:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker") == ME:
                try:
                    study._storage.set_trial_user_attr(t._trial_id, "fail_reason", guard.interrupt_reason(e))
                    study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                except Exception:
                    pass
        raise
    finally:
        objective.progress.close()
        if objective.tracker is not None:
            objective.tracker.close()


def _logger(log):
    def callback(study, t):
        if t.state == TrialState.COMPLETE:
            vals = ", ".join(f"{o}={v:.4g}" for o, v in zip(json.loads(study.user_attrs["space"])["objectives"],
                                                             t.values))
            log(f"  trial #{t.number} complete: {vals}"
                + (f" {stats.CHANCE_MARK}" if t.user_attrs.get("at_chance") else ""))
        elif t.state == TrialState.PRUNED:
            log(f"  trial #{t.number} pruned: {t.user_attrs.get('rejected') or 'by the pruner'}")
        else:
            reason = t.user_attrs.get("fail_reason") or t.system_attrs.get("fail_reason") or "error"
            log(f"  trial #{t.number} failed: {reason}")
    return callback


def run(space: dict, log=print) -> dict:
    """``dlasearch run``: open/resume the study, run its workers, export results; returns a summary.

    Everything is checked before the study is created (data, training options, output folder), so a
    failed start never leaves a study whose name the corrected command could not use."""
    data = load_data(space)
    Objective(space, data, log)  # checks the training options (device, precision, lr ...)
    precheck.check_space(space, data.channels, data.num_classes)
    files.check_writable(results_dir(space), "study.results", SearchError)
    study = open_study(space, log=log)
    workers = space["study"]["workers"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // workers)
    url = storage_url(space)
    log(f"study {study_name(space)!r} ({url}): {counted(study)}/{space['study']['trials']} trials done, "
        f"{workers} worker(s) x {threads} thread(s)")
    from dlasearch.options import write_config

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
        from dlasearch.tracking import parse

        tracking_names = parse(space.get("log"))
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


def export(study: optuna.Study, space: dict, log=print) -> dict:
    """Write ``trials.csv`` and the best (or Pareto) architectures' IR JSON; print a summary table."""
    out = results_dir(space)
    df = trials_frame(study)
    files.write_text(out / "trials.csv", df.to_csv(index=False), SearchError)
    best, seen = [], set()
    if any(t.state == TrialState.COMPLETE for t in study.trials):
        for t in study.best_trials:  # ties and repeated architectures: one file per fingerprint
            if t.user_attrs.get("fingerprint") not in seen:
                seen.add(t.user_attrs.get("fingerprint"))
                best.append(t)
    best_dir = out / "best"
    for t in best:
        files.write_text(best_dir / f"trial{t.number}.ir.json", json.dumps(json.loads(t.user_attrs["ir"]), indent=1),
                         SearchError)
        files.write_text(best_dir / f"trial{t.number}.spec.json", json.dumps(json.loads(t.user_attrs["spec"]),
                                                                              indent=1), SearchError)
    if space["study"]["storage"]:
        files.write_text(out / "storage.txt", f"{space['study']['storage']}\n", SearchError)
    weights = keep.save_best(study, space, best, best_dir)
    cols = [c for c in ("number", "state", "pattern", "val_accuracy", "params", "macs", "train_memory",
                        "arch") if c in df.columns] + (["at_chance"] if len(df) and df.at_chance.any() else [])
    unique = df[(df.state == "COMPLETE") & df.duplicate_of.isna()] if len(df) else df
    top = unique.sort_values("val_accuracy", ascending=False).head(10)[cols] if len(unique) else unique
    dups = int(df.duplicate_of.notna().sum()) if len(df) else 0
    log(f"\n{len(df)} trials in {study_name(space)!r}: "
        + ", ".join(f"{n} {s}" for s, n in df.state.value_counts().items())
        + (f" ({dups} answered from an identical earlier architecture)" if dups else ""))
    if len(top):
        log(top.to_markdown(index=False, floatfmt=".4g"))
    low = unique[unique.at_chance.fillna(False).astype(bool)] if len(unique) else unique
    if len(low):
        log(f"warning: {len(low)} of {len(unique)} complete trials have a validation accuracy at chance "
            f"(column at_chance of trials.csv): their ranking means nothing; train longer (epochs=)")
    log(f"\nwrote {out / 'trials.csv'} and {len(best)} best architecture(s) under {best_dir}"
        + (f" ({weights} with trained weights: dlasearch.load(PATH) or dlasearch export)" if weights else ""))
    return {"trials": len(df), "best": [t.number for t in best], "dir": str(out)}


def trials_frame(study: optuna.Study):
    """One row per trial: Optuna's columns plus pattern, fingerprint and metrics, without IR blobs."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        u = t.user_attrs
        row = {"number": t.number, "state": t.state.name,
               "value": t.values[0] if t.values else None,
               "duration_s": t.duration.total_seconds() if t.duration else None}
        for k in ("pattern", "arch", "fingerprint", "params", "macs", "train_memory", "val_accuracy",
                  "train_seconds", "at_chance", "epochs_trained", "duplicate_of", "seeded_from", "retry_of", "rejected",
                  "fail_reason"):
            row[k] = u.get(k)
        row.update({f"param_{k}": v for k, v in t.params.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def trial_ir(study: str, trial: int, storage: str | None = None):
    """The IR of trial ``trial`` in ``study`` (journal under results/<study>/ unless ``storage``)."""
    trials = find_study(study, storage)[0].get_trials(deepcopy=False)
    match = [t for t in trials if t.number == trial]
    if not match or "ir" not in match[0].user_attrs:
        raise SearchError(f"study {study!r} has no trial {trial} with an architecture "
                          f"(trials 0..{len(trials) - 1})")
    return from_json(match[0].user_attrs["ir"])
