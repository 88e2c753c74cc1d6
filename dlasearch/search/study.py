"""Studies and their storage: the one place that talks to Optuna's storages.

Opening, creating, resuming and finding studies (a journal file under ``results/<study>/`` by
default, or any RDB URL), samplers and pruners, and the liveness of running trials (heartbeats,
stale trials of dead workers). Optuna's private storage calls are wrapped here, so an Optuna
upgrade touches this file alone (and ``proxy``, for its gRPC storage proxy).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import warnings
import zlib
from pathlib import Path

import optuna
from optuna.trial import TrialState

from dlasearch import files
from dlasearch.configfile import data_identity, differences, same_data
from dlasearch.errors import SearchError, did_you_mean
from dlasearch.search import guard, journal, space as spacemod, storage_proxy
from dlasearch.train import TrainConfig
from dlasearch.train.config import with_added_later
from dlasearch.search import attrs

__all__ = ['worker_id', 'trial_id', 'fixed_params', 'set_trial_attr', 'fail_trial', 'quiet_optuna', 'results_dir', 'study_name',
           'storage_url', 'open_storage', 'make_sampler', 'grid_of', 'make_pruner', 'pruner_epochs', 'open_study', 'find_study', 'attach',
           'fail_stale', 'unattended', 'requeue_interrupted', 'Heartbeat', 'counted', 'duplicates', 'stored_space', 'with_pinned',
           'sampler_seed']

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


CONTRACT = ("params", "backbone", "data", "train", "objectives")
# training options a space may set but that have no space default: fixed per study when it is created
PINNED = tuple(k for k in spacemod.SCHEMA["train"] if k not in spacemod.DEFAULTS["train"])




def worker_id() -> str:
    """``host:pid`` of this process, as running trials record it (computed now: a fork has another pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


# ------------------------------------------------------------ the Optuna adapter: private calls live here

def trial_id(trial) -> int:
    """The storage id of a trial (Optuna keeps it private; ``number`` is per study, not per storage)."""
    return trial._trial_id


def set_trial_attr(study: optuna.Study, tid: int, key: str, value) -> None:
    """Set a user attribute of any trial of ``study`` by storage id, running or not yet loaded."""
    study._storage.set_trial_user_attr(tid, key, value)


def fixed_params(trial) -> dict | None:
    """The parameters ``enqueue_trial`` fixed for a running trial (None when the sampler chose them)."""
    return trial.study._storage.get_trial_system_attrs(trial_id(trial)).get("fixed_params")


def fail_trial(study: optuna.Study, tid: int, reason: str, **extra) -> None:
    """Mark a RUNNING trial FAIL with ``fail_reason`` (and the ``extra`` attributes) from outside its objective;
    raises ``UpdateFinishedTrialError`` or ``RuntimeError`` when another process finished it first."""
    set_trial_attr(study, tid, attrs.FAIL_REASON, reason)
    for k, v in extra.items():
        set_trial_attr(study, tid, k, v)
    study._storage.set_trial_state_values(tid, TrialState.FAIL)


@contextlib.contextmanager
def quiet_optuna(level: int = optuna.logging.WARNING):
    """Optuna's log level, and its experimental-feature warnings off, for the ``with`` block only."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(before)


def results_dir(space: dict) -> Path:
    """Where the study's exports go: its own folder, or one keyed by storage= (never another study's)."""
    return files.study_dir(study_name(space), space["study"]["storage"], Path(space["study"]["results"]))


def study_name(space: dict) -> str:
    return space["study"]["name"] or space["name"]


def storage_url(space: dict) -> str:
    """The storage URL: the space's, or the journal file under ``results/<study>/``."""
    return space["study"]["storage"] or str(Path(space["study"]["results"]) / study_name(space) / "journal.log")


def open_storage(url: str, log=print, write: bool = True):
    """An Optuna storage for a journal file path, an RDB URL or ``grpc://host:port`` (``proxy``).

    A journal is checked first (``journal.repair``): a torn last record is moved aside and the trials
    it touched are failed as stale and re-queued; a damaged middle is an error, never rewritten.
    ``write=False`` (reading a study) only checks, so a read-only journal can still be reported on."""
    if storage_proxy.is_grpc(url):
        return storage_proxy.connect(url)  # Optuna's storage proxy in front of a database (`dlasearch storage serve`)
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


def _fail_torn(storage, tid: int, log) -> None:
    """Fail a trial whose last journal record was torn off (it may still say RUNNING) and re-queue it."""
    try:
        t = storage.get_trial(tid)
    except KeyError:
        return  # the torn record was the one creating it
    if t.state != TrialState.RUNNING:
        return
    storage.set_trial_user_attr(tid, "fail_reason", "stale: its last journal record was torn (killed run)")
    storage.set_trial_user_attr(tid, "stale", True)
    storage.set_trial_state_values(tid, TrialState.FAIL)
    if t.params:
        name = next(s.study_name for s in storage.get_all_studies()
                    if any(trial_id(x) == tid for x in storage.get_all_trials(s._study_id, deepcopy=False)))
        optuna.load_study(study_name=name, storage=storage).enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    log(f"failed trial #{t.number} (its last record was torn) and re-queued its parameters")


def sampler_seed(seed: int, offset: int = 0, worker: int = 0) -> int:
    """The sampler seed of one process of a study whose seed is ``seed``: ``seed`` itself for the
    process that creates it, else one drawn from ``(seed, offset, worker)`` (``offset``: the trials
    the study already holds; ``worker``: the worker's number from ``attach``), so that a resumed
    study or another worker never replays the draws of one before it, and the same command draws
    the same again.  Drawn, not added: ``seed + offset + worker`` gave two workers started by hand
    one seed whenever their pids differed by the trials created in between (pid 31742 with no
    trial yet, pid 31741 with one), and the second's first trial was the first's, which it waited for."""
    if not offset and not worker:
        return seed
    import numpy as np  # heavy only where a process resumes or joins a study

    return int(np.random.SeedSequence([seed % 2 ** 63, offset % 2 ** 63, worker % 2 ** 63]).generate_state(1)[0])


def make_sampler(space: dict, offset: int = 0, worker: int = 0):
    """The space's sampler, seeded with ``sampler_seed(study.seed, offset, worker)``. Not the grid:
    its seed orders the grid, and every worker must number the grid points alike, or two workers'
    "grid point 7" are two different points and a finished grid leaves points out (224 trials
    covered 165 of 224 points that way); Optuna gives trial N grid point N, so workers take
    different points anyway."""
    st = space["study"]
    name = st["sampler"]
    seed = st["seed"] if name == "grid" else sampler_seed(st["seed"], offset, worker)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=min(10, max(2, st["trials"] // 3)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.GridSampler(grid_of(space), seed=seed)


def grid_of(space: dict) -> dict[str, list]:
    """The grid sampler's search space: every choice parameter, ``levels`` once per stage."""
    grid = {}
    for n, p in space["params"].items():
        values = p["choices"] if "choices" in p else [p["value"]]
        if n in spacemod.PER_STAGE:  # levels, mode
            n_max = max(space["params"].get("stages", {}).get("choices", [len(space["backbone"]["stages"])])
                        if "stages" in space["params"] else [len(space["backbone"]["stages"])])
            grid.update({f"stage{i}.{n}": values for i in range(n_max)})
        elif "choices" in p:
            grid[n] = values
    return grid


HYPERBAND_ETA = 3  # Hyperband's reduction factor (Optuna's default): rungs at epochs 1, 3, 9, 27, ...


def make_pruner(space: dict):
    if len(space["objectives"]) > 1 or space["study"]["pruner"] == "none":
        return optuna.pruners.NopPruner()
    if space["study"]["pruner"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=space["train"]["epochs"],
                                          reduction_factor=HYPERBAND_ETA)


def pruner_epochs(space: dict) -> set[int] | None:
    """The epochs whose validation accuracy the study's pruner reads (None: every epoch).

    Why: a trial need validate only where its result is read (and after its last epoch); on
    short trials the validation (BatchNorm recalibration and a pass over the split) is the
    largest cost besides the steps.  Hyperband's successive halving judges a trial only once
    its last reported epoch reaches a rung, 1 * eta**k in every bracket, and then reads that
    epoch's value, so reporting at the rungs alone gives the same decisions as every epoch.
    The median pruner reads every epoch; no pruner (or several objectives) reads none."""
    if isinstance(make_pruner(space), optuna.pruners.NopPruner):
        return set()
    if space["study"]["pruner"] == "median":
        return None
    epochs, rungs, k = space["train"]["epochs"], set(), 1
    while k <= epochs:
        rungs.add(k)
        k *= HYPERBAND_ETA
    return rungs


def open_study(space: dict, create: bool = True, log=print) -> optuna.Study:
    """Create or resume the space's study; refuse to resume one made with a different contract."""
    with quiet_optuna():
        return _open_study(space, create, log)


def _open_study(space: dict, create: bool, log) -> optuna.Study:
    files.check_study_name(study_name(space), "study", SearchError)  # also a name taken from the space file
    url = storage_url(space)
    storage = open_storage(url, log)
    name = study_name(space)
    directions = [spacemod.OBJECTIVES[o] for o in space["objectives"]]
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name in existing:
        study = optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(space))
        study.sampler = make_sampler(space, len(study.get_trials(deepcopy=False)), space["study"].get("worker", 0))
        old = study.user_attrs.get(attrs.CONTRACT)
        stored = None if old is None else _with_added_later(json.loads(old))
        _pin_unset(space, _stored_train(study))
        stored, given = _comparable(stored, json.loads(_contract(space)))
        if stored is not None and stored != given:
            diff = differences({k: stored.get(k) for k in CONTRACT}, {k: given.get(k) for k in CONTRACT})
            raise SearchError(f"study {name!r} in {url} was created with different {'; '.join(diff)}; "
                              f"resume it unchanged (`dlasearch run study={name}`), or start a new one with "
                              f"study=NEW_NAME")
        return study
    if not create:
        raise SearchError(f"study {name!r} not found in {url}; existing: {', '.join(sorted(existing)) or 'none'}")
    _pin_unset(space, {})
    study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                sampler=make_sampler(space), pruner=make_pruner(space))
    study.set_user_attr(attrs.CONTRACT, _contract(space))
    study.set_user_attr(attrs.SPACE, json.dumps({k: v for k, v in space.items() if k != "log"}))
    if space["seed_published"]:
        for pub in spacemod.published_params(space):
            study.enqueue_trial(pub["params"], user_attrs={attrs.SEEDED_FROM: pub["name"]}, skip_if_exists=True)
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
    with quiet_optuna():
        st = open_storage(url, write=False)
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False))
        if name not in names:
            hint = did_you_mean(name, names)
            raise SearchError(f"study {name!r} not found in {url}{hint}; existing: {', '.join(names) or 'none'}")
        return optuna.load_study(study_name=name, storage=st), url


def _contract(space: dict) -> str:
    """What a study's trials must share to be comparable, as stored with it (a data file with its hash)."""
    return json.dumps({k: data_identity(space[k]) if k == "data" else space[k] for k in CONTRACT}, sort_keys=True)


def _pin_unset(space: dict, stored_train: dict) -> None:
    """Training options that ``space`` leaves unset (``PINNED``) take the resumed study's value, or
    today's default for a new one, into ``space`` and its contract: a default changed later never
    mixes trials trained two ways, nor refuses the resume of a study that did not choose."""
    for k in PINNED:
        if k not in space["train"]:
            space["train"][k] = stored_train.get(k, TrainConfig.__dataclass_fields__[k].default)


def with_pinned(space: dict) -> dict:
    """``space`` with the ``PINNED`` options it leaves unset as a run fixes them: the existing study's,
    else today's defaults.  Creates nothing (``dlasearch run --cfg``)."""
    try:
        study, _ = find_study(study_name(space), storage_url(space))
    except SearchError:
        _pin_unset(space, {})  # no study to resume (or none readable): a run creates one with today's defaults
    else:
        _pin_unset(space, _stored_train(study))
    return space


def _stored_train(study: optuna.Study) -> dict:
    """The training settings ``study`` was created with (its contract's, or an old study's space's)."""
    return _with_added_later(json.loads(study.user_attrs.get(attrs.CONTRACT) or study.user_attrs[attrs.SPACE]))["train"]


def _comparable(stored: dict | None, given: dict) -> tuple[dict | None, dict]:
    """Both contracts with their data as a resume compares it (``same_data``): a data file by content,
    so a clone that keeps it at another path (or names it from another folder) resumes the study."""
    if stored is None:
        return None, given
    stored["data"], given["data"] = same_data(stored.get("data"), given.get("data"))
    return stored, given


def _with_added_later(stored: dict) -> dict:
    """``stored`` (a space or contract) with the training options added since, as it was trained."""
    if isinstance(stored.get("train"), dict):
        stored["train"] = with_added_later(stored["train"], "search")
    return stored


def stored_space(study: optuna.Study) -> dict:
    """The space ``study`` was created with, its defaults filled in again: a study made by an older
    dlasearch lacks the keys added since (a worker would fail on ``study.screen``)."""
    raw = _with_added_later(json.loads(study.user_attrs[attrs.SPACE]))
    space = spacemod.validate({k: v for k, v in raw.items() if k in spacemod.SCHEMA})
    space.update({k: v for k, v in raw.items() if k not in spacemod.SCHEMA})
    return space


def attach(study: str, storage: str, index: int | None = None) -> tuple[optuna.Study, dict]:
    """Open an existing study and the space it was created with (for ``dlasearch worker``).

    ``index`` numbers workers started together; others get one from their host and pid, so that no
    two workers draw the same random samples."""
    loaded, _ = find_study(study, storage)
    space = stored_space(loaded)
    space["study"]["storage"] = storage
    space["study"]["name"] = study
    # host and pid: workers on other machines (every container's process may be pid 1) draw apart too
    space["study"]["worker"] = 1000 * (index + 1) if index is not None else zlib.crc32(worker_id().encode())
    opened = open_study(space, create=False)
    if index is None:  # workers started by `run` leave it to run, which queued them before starting them
        requeue_interrupted(opened)
    return opened, space


def _pid_here(worker: str) -> int | None:
    """The pid of a ``host:pid`` worker id when that host is this one, else None."""
    w_host, _, w_pid = worker.rpartition(":")
    return int(w_pid) if w_host == socket.gethostname() and w_pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


CARRIED = attrs.CARRIED  # what a queued trial's retry keeps of it


def _params_key(params: dict) -> str:
    """Parameters as one string, ints and floats alike (``enqueue_trial`` keeps what it was given)."""
    return json.dumps({k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                       for k, v in params.items()}, sort_keys=True)


def requeue_interrupted(study: optuna.Study, log=print) -> list[int]:
    """Queue again the parameters of trials failed by their environment (``guard.INTERRUPTED``: a
    signal, a full disk, a lost database), once each: they do not count, so without this the study
    would never train them (a benchmark would miss a grid point for good).  Returns their numbers."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(attrs.RETRY_OF) for t in trials}
    waiting = {_params_key(t.system_attrs.get(attrs.FIXED_PARAMS) or {}) for t in trials if t.state == TrialState.WAITING}
    queued = []
    for t in trials:
        if (t.state != TrialState.FAIL or not t.user_attrs.get(guard.INTERRUPTED) or not t.params
                or t.number in retried or _params_key(t.params) in waiting):
            continue
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number,
                                                  **{k: t.user_attrs[k] for k in CARRIED if k in t.user_attrs}})
        queued.append(t.number)
    if queued:
        log(f"re-queued trial(s) {queued}: stopped by a signal, a full disk or a lost database, they do not "
            f"count against trials=")
    return queued


def fail_stale(study: optuna.Study, grace: float, retry: bool = True) -> list[int]:
    """Fail RUNNING trials whose worker is gone and re-queue their parameters; returns their numbers."""
    failed = []
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(attrs.WORKER, "")
        beat = t.user_attrs.get(attrs.HEARTBEAT) or (t.datetime_start.timestamp() if t.datetime_start else now)
        pid = _pid_here(worker)
        dead_here = pid is not None and pid != os.getpid() and not _alive(pid)
        if not (dead_here or now - beat > grace):
            continue
        reason = f"stale: worker {worker or '?'} stopped (no heartbeat for {now - beat:.0f}s)"
        try:
            fail_trial(study, trial_id(t), reason, stale=True)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker got there first
        failed.append(t.number)
        if retry and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return failed


def unattended(study: optuna.Study, interval: float) -> list[int]:
    """Counted RUNNING trials of other workers that show no sign of one: no heartbeat in the last two
    ``interval``s and no live worker process on this host. One may be an orphan (a trial created just
    as the storage went away, before its worker wrote a line), which only ``fail_stale`` frees after
    ``study.grace``: a worker that finds the study full waits for them rather than leaving them RUNNING."""
    now, me = time.time(), worker_id()
    waiting = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(attrs.WORKER, "")
        if worker == me or not guard.counts(t):
            continue
        pid = _pid_here(worker)
        if pid is not None and _alive(pid):
            continue
        beat = t.user_attrs.get(attrs.HEARTBEAT)
        if beat is None or now - beat > 2 * interval:
            waiting.append(t.number)
    return waiting


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
                set_trial_attr(self.study, self.trial_id, attrs.HEARTBEAT, time.time())
            except Exception:
                return  # the trial finished meanwhile

    def __enter__(self):
        set_trial_attr(self.study, self.trial_id, attrs.HEARTBEAT, time.time())
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def duplicates(study: optuna.Study) -> int:
    """Trials the sampler spent on architectures the study had already evaluated (``attrs.REPEATED``):
    answered from the earlier result, not counted against ``study.trials``; ``study.max_duplicates``
    of them end the study (``space.duplicate_cap``)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,))
               if t.user_attrs.get(attrs.REPEATED))


def counted(study: optuna.Study) -> int:
    """Trials that count against ``study.trials``: finished or running, except those ``guard.counts`` excludes."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,))
               if guard.counts(t))
