"""Trained weights of search trials, kept through Optuna's artifact store.

Each finished trial's checkpoint (``checkpoint.save``) is uploaded with
``optuna.artifacts.upload_artifact``, so the trial records it whatever the
storage (journal file or database) and a worker on another machine uploads to
the same store.  The store is a ``FileSystemArtifactStore`` beside the study
(``results/<study>/artifacts``) unless ``study.artifacts`` names another
folder (e.g. a shared mount).  ``study.keep``: ``best`` (default) removes the
weights of every trial that is no longer best, so disk use stays bounded;
``all`` keeps every finished trial's; ``none`` uploads nothing.

A full disk (or a read-only store) while the weights are uploaded never costs the trial: it stays
COMPLETE with ``weights_missing`` (and ``weights_pending``, the checkpoint in the temp dir, when
that could be saved); the store's writes go through a temporary file, so no part of a file stays.
``recover``, when ``run`` resumes the study, uploads what is pending, or retrains (same seed) the
trials whose weights are wanted and cannot otherwise be had.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import TrialState

from dlasearch import files, weights as checkpoint
from dlasearch.search.journal import JournalWriteError
from dlasearch.search.study import find_study, results_dir
from dlasearch.search import attrs

__all__ = ['store_path', 'Store', 'store', 'upload', 'recover', 'best_numbers', 'prune', 'save_best', 'fetch']

ATTR = attrs.WEIGHTS_ARTIFACT
MISSING = attrs.WEIGHTS_MISSING  # why a finished trial's weights are not in the store (yet)
PENDING = attrs.WEIGHTS_PENDING  # its checkpoint, saved outside the store, waiting for the upload


def store_path(space: dict) -> Path:
    return Path(space["study"].get("artifacts") or results_dir(space) / "artifacts")


class Store(FileSystemArtifactStore):
    """Optuna's file store, writing each artifact through a temporary file and a rename: a write
    that fails (full disk, file-size limit) leaves no part of a file behind."""

    def __init__(self, folder: Path):
        super().__init__(str(folder))
        self.folder = Path(folder)

    def write(self, artifact_id: str, content_body) -> None:
        path = self.folder / artifact_id
        if path.parent != self.folder:
            raise ValueError(f"invalid artifact id {artifact_id!r}")
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{artifact_id}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(content_body, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def store(path: Path) -> Store:
    path.mkdir(parents=True, exist_ok=True)
    return Store(path)


def upload(trial: optuna.Trial, model, graph, data, config, space: dict, log=print) -> str | None:
    """Upload this trial's trained weights (unless ``keep=none``); returns the artifact id.

    A failed write (full disk, read-only store) is noted on the trial, not raised: its metrics stand,
    and ``recover`` uploads the weights later (from ``PENDING`` if the checkpoint could be saved)."""
    if space["study"].get("keep", "best") == "none":
        return None
    tmp = path = None
    try:
        try:
            tmp = Path(tempfile.mkdtemp(prefix="dlasearch-weights-"))
            path = tmp / f"trial{trial.number}.safetensors"
            checkpoint.save(path, model, graph, data, config=dataclasses.asdict(config), name=f"trial{trial.number}")
            aid = upload_artifact(artifact_store=store(store_path(space)), file_path=str(path), study_or_trial=trial,
                                  mimetype="application/octet-stream")
        except JournalWriteError:
            raise  # the journal itself is full: the study stops (the trial is retried as stale)
        except OSError as e:
            reason = files.explain(e)
            trial.set_user_attr(MISSING, reason)
            if path is not None and path.is_file():  # written atomically: complete, so it can be uploaded later
                trial.set_user_attr(PENDING, str(path))
                tmp = None
            log(f"  trial #{trial.number}: its weights could not be kept ({reason}); its result is kept, and "
                f"the next `dlasearch run` of this study keeps them "
                + ("from a copy in the temp folder" if tmp is None else "by retraining it"))
            return None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    trial.set_user_attr(ATTR, aid)
    return aid


def recover(study: optuna.Study, space: dict, retrain, log=print) -> int:
    """Keep the weights that ``upload`` could not: those of every trial ``keep=`` wants that has none.

    From its pending checkpoint when that is still there; else ``retrain(trial)`` (a model trained
    again from the same seed) after one line saying so.  Uploaded to the study (a finished trial
    cannot take attributes) under ``weights_artifact:<number>``; returns how many were kept."""
    keep = space["study"].get("keep", "best")
    if keep == "none":
        return 0
    wanted = best_numbers(study) if keep == "best" else None
    if wanted is not None:  # a best trial that reused a result shows the weights of the trial it reused
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        wanted |= {by_number[n].user_attrs.get(attrs.DUPLICATE_OF) for n in wanted if n in by_number}
    done = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        u = t.user_attrs
        if (MISSING not in u or retrain is None or (wanted is not None and t.number not in wanted)
                or _artifact(study, t.number)):
            continue
        pending = Path(u[PENDING]) if u.get(PENDING) else None
        tmp = Path(tempfile.mkdtemp(prefix="dlasearch-weights-"))
        try:
            if pending is None or not pending.is_file():
                log(f"trial #{t.number}: its weights were not kept ({u[MISSING]}) and cannot be recovered "
                    f"without retraining; retraining it (same seed) to keep them")
                model, graph, data, config = retrain(t)
                pending = checkpoint.save(tmp / f"trial{t.number}.safetensors", model, graph, data,
                                          config=dataclasses.asdict(config), name=f"trial{t.number}")
            aid = upload_artifact(artifact_store=store(store_path(space)), file_path=str(pending),
                                  study_or_trial=study, mimetype="application/octet-stream")
            study.set_user_attr(f"{ATTR}:{t.number}", aid)
        except JournalWriteError:
            raise
        except OSError as e:
            log(f"trial #{t.number}: its weights still cannot be kept ({files.explain(e)}); the next run retries")
            continue
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if u.get(PENDING) and Path(u[PENDING]).parent.name.startswith("dlasearch-weights-"):
            shutil.rmtree(Path(u[PENDING]).parent, ignore_errors=True)
        done += 1
    return done


def best_numbers(study: optuna.Study) -> set[int]:
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return set()
    return {t.number for t in study.best_trials}


def prune(study: optuna.Study, space: dict) -> int:
    """``keep=best``: remove the weights of finished trials that are not (or no longer) best."""
    if space["study"].get("keep", "best") != "best":
        return 0
    best = best_numbers(study)
    keep_ids = {_artifact(study, n) for n in best}
    st, removed = store(store_path(space)), 0
    kept = [(t.number, t.user_attrs.get(ATTR)) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    kept += [(int(k.rpartition(":")[2]), v) for k, v in study.user_attrs.items() if k.startswith(f"{ATTR}:")]
    for number, aid in kept:
        if aid and number not in best and aid not in keep_ids:
            with contextlib.suppress(ArtifactNotFound):
                st.remove(aid)
                removed += 1
    return removed


def _artifact(study: optuna.Study, number: int) -> str | None:
    """The weights artifact of trial ``number``, following ``duplicate_of`` (a reused result); also one
    ``recover`` kept for it after it finished."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    later = study.user_attrs
    seen = set()
    while number in trials and number not in seen:
        seen.add(number)
        u = trials[number].user_attrs
        if u.get(ATTR) or later.get(f"{ATTR}:{number}"):
            return u.get(ATTR) or later[f"{ATTR}:{number}"]
        number = u.get("duplicate_of")
    return None


def save_best(study: optuna.Study, space: dict, trials, folder: Path) -> int:
    """Copy the kept weights of ``trials`` to ``folder/trialN.safetensors``; returns how many."""
    st, n = store(store_path(space)), 0
    for t in trials:
        aid = _artifact(study, t.number)
        if not aid:
            continue
        dest = folder / f"trial{t.number}.safetensors"
        tmp = folder / f".{dest.name}.tmp"
        tmp.unlink(missing_ok=True)  # left by a killed run or a full disk: download_artifact refuses to overwrite it
        try:
            download_artifact(artifact_store=st, file_path=str(tmp), artifact_id=aid)
            os.replace(tmp, dest)
        except ArtifactNotFound:
            continue
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        n += 1
    return n


@contextlib.contextmanager
def fetch(study: str, trial: int, storage: str | None = None, artifacts: str | None = None):
    """Yield a temporary path holding the weights of ``trial`` in ``study``."""
    loaded, url = find_study(study, storage)
    numbers = [t.number for t in loaded.get_trials(deepcopy=False)]
    if trial not in numbers:
        raise checkpoint.CheckpointError(f"study {study!r} has no trial {trial} (trials 0..{len(numbers) - 1})")
    if artifacts is None:
        space = json.loads(loaded.user_attrs.get(attrs.SPACE, "{}"))
        artifacts = (space.get("study") or {}).get("artifacts")
    if artifacts is None:
        local = url[len("journal://"):] if url.startswith("journal://") else url
        made = space.get("study") or {}  # a database's store is where `run` put it: results_dir of its space
        artifacts = Path(local).parent / "artifacts" if "://" not in local else \
            files.study_dir(study, made.get("storage") or url, made.get("results")) / "artifacts"
    aid = _artifact(loaded, trial)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"trial{trial}.safetensors"
        try:
            if not aid:
                raise ArtifactNotFound(aid)
            download_artifact(artifact_store=FileSystemArtifactStore(str(artifacts)), file_path=str(path),
                              artifact_id=aid)
        except ArtifactNotFound:
            raise checkpoint.CheckpointError(
                f"study {study!r} trial {trial}: no weights kept in {artifacts} (only finished trials have weights; "
                f"keep=best keeps the best trials' only, keep=all every trial's)") from None
        yield path
