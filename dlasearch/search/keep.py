"""Trained weights of search trials, kept through Optuna's artifact store.

Each finished trial's checkpoint (``checkpoint.save``) is uploaded with
``optuna.artifacts.upload_artifact``, so the trial records it whatever the
storage (journal file or database) and a worker on another machine uploads to
the same store.  The store is a ``FileSystemArtifactStore`` beside the study
(``results/<study>/artifacts``) unless ``study.artifacts`` names another
folder (e.g. a shared mount).  ``study.keep``: ``best`` (default) removes the
weights of every trial that is no longer best, so disk use stays bounded;
``all`` keeps every finished trial's; ``none`` uploads nothing.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import TrialState

from dlasearch import files
from dlasearch.deploy import checkpoint

__all__ = ['store_path', 'store', 'upload', 'best_numbers', 'prune', 'save_best', 'fetch']

ATTR = "weights_artifact"


def store_path(space: dict) -> Path:
    from dlasearch.search import results_dir

    return Path(space["study"].get("artifacts") or results_dir(space) / "artifacts")


def store(path: Path) -> FileSystemArtifactStore:
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def upload(trial: optuna.Trial, model, graph, data, config, space: dict) -> str | None:
    """Upload this trial's trained weights (unless ``keep=none``); returns the artifact id."""
    if space["study"].get("keep", "best") == "none":
        return None
    import dataclasses

    with tempfile.TemporaryDirectory() as tmp:
        path = checkpoint.save(Path(tmp) / f"trial{trial.number}.safetensors", model, graph, data,
                               config=dataclasses.asdict(config), name=f"trial{trial.number}")
        aid = upload_artifact(artifact_store=store(store_path(space)), file_path=str(path), study_or_trial=trial,
                              mimetype="application/octet-stream")
    trial.set_user_attr(ATTR, aid)
    return aid


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
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        aid = t.user_attrs.get(ATTR)
        if aid and t.number not in best and aid not in keep_ids:
            with contextlib.suppress(ArtifactNotFound):
                st.remove(aid)
                removed += 1
    return removed


def _artifact(study: optuna.Study, number: int) -> str | None:
    """The weights artifact of trial ``number``, following ``duplicate_of`` (a reused result)."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    seen = set()
    while number in trials and number not in seen:
        seen.add(number)
        u = trials[number].user_attrs
        if u.get(ATTR):
            return u[ATTR]
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
        try:
            download_artifact(artifact_store=st, file_path=str(tmp), artifact_id=aid)
        except ArtifactNotFound:
            continue
        os.replace(tmp, dest)
        n += 1
    return n


@contextlib.contextmanager
def fetch(study: str, trial: int, storage: str | None = None, artifacts: str | None = None):
    """Yield a temporary path holding the weights of ``trial`` in ``study``."""
    from dlasearch.search import find_study

    loaded, url = find_study(study, storage)
    numbers = [t.number for t in loaded.get_trials(deepcopy=False)]
    if trial not in numbers:
        raise checkpoint.CheckpointError(f"study {study!r} has no trial {trial} (trials 0..{len(numbers) - 1})")
    if artifacts is None:
        space = json.loads(loaded.user_attrs.get("space", "{}"))
        artifacts = (space.get("study") or {}).get("artifacts")
    if artifacts is None:
        local = url[len("journal://"):] if url.startswith("journal://") else url
        artifacts = Path(local).parent / "artifacts" if "://" not in local else files.study_dir(study, None) / "artifacts"
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
