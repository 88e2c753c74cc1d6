"""What a study exports: ``trials.csv``, ``best/`` and trial architectures (all regenerable)."""
from __future__ import annotations

import json

import optuna
from optuna.trial import TrialState

from dlasearch import files
from dlasearch.errors import SearchError
from dlasearch.ir import from_json
from dlasearch.search import keep
from dlasearch.search.space import score_objective
from dlasearch.search.study import find_study, results_dir, study_name
from dlasearch.search import attrs

__all__ = ['export', 'trials_frame', 'trial_ir']


def export(study: optuna.Study, space: dict, log=print) -> dict:
    """Write ``trials.csv`` and the best (or Pareto) architectures' IR JSON; print a summary table."""
    out = results_dir(space)
    df = trials_frame(study)
    files.write_text(out / "trials.csv", df.to_csv(index=False), SearchError)
    best, seen = [], set()
    if any(t.state == TrialState.COMPLETE for t in study.trials):
        for t in study.best_trials:  # ties and repeated architectures: one file per fingerprint
            if t.user_attrs.get(attrs.FINGERPRINT) not in seen:
                seen.add(t.user_attrs.get(attrs.FINGERPRINT))
                best.append(t)
    best_dir = out / "best"
    for t in best:
        files.write_text(best_dir / f"trial{t.number}.ir.json", json.dumps(json.loads(t.user_attrs[attrs.IR]), indent=1),
                         SearchError)
        files.write_text(best_dir / f"trial{t.number}.spec.json", json.dumps(json.loads(t.user_attrs[attrs.SPEC]),
                                                                              indent=1), SearchError)
    if space["study"]["storage"]:
        files.write_text(out / "storage.txt", f"{space['study']['storage']}\n", SearchError)
    weights = keep.save_best(study, space, best, best_dir)
    score = score_objective(space)  # val_accuracy, or a dense task's miou_fg / boundary_ods
    cols = [c for c in ("number", "state", "pattern", score, "val_accuracy", "params", "macs", "train_memory",
                        "arch") if c in df.columns] + (["at_chance"] if len(df) and df.at_chance.any() else [])
    cols = list(dict.fromkeys(cols))
    unique = df[(df.state == "COMPLETE") & df.duplicate_of.isna()] if len(df) else df
    top = unique.sort_values(score, ascending=False).head(10)[cols] if len(unique) and score in df else unique
    dups = int(df.duplicate_of.notna().sum()) if len(df) else 0
    log(f"\n{len(df)} trials in {study_name(space)!r}: "
        + (", ".join(f"{n} {s}" for s, n in df.state.value_counts().items()) if len(df) else "none finished yet")
        + (f" ({dups} answered from an identical earlier architecture)" if dups else ""))
    if len(top):
        log(top.to_markdown(index=False, floatfmt=".4g"))
    low = unique[unique.at_chance.fillna(False).astype(bool)] if len(unique) else unique
    if len(low):
        what = "accuracy" if score == "val_accuracy" else score
        log(f"warning: {len(low)} of {len(unique)} complete trials have a validation {what} at chance "
            f"(column at_chance of trials.csv): their ranking means nothing; train longer (epochs=)")
    log(f"\nwrote {out / 'trials.csv'} and {len(best)} best architecture(s) under {best_dir}"
        + (f" ({weights} with trained weights: dlasearch.load(PATH) or dlasearch export)" if weights else ""))
    return {"trials": len(df), "best": [t.number for t in best], "dir": str(out)}


DENSE_COLUMNS = (attrs.VAL_SCORE, attrs.MIOU_FG, attrs.MIOU, attrs.BOUNDARY_ODS)  # only where a trial has them: dense studies


def trials_frame(study: optuna.Study):
    """One row per trial: Optuna's columns plus pattern, fingerprint and metrics, without IR blobs.

    A dense study adds its scores (``val_score``, ``miou_fg`` and ``miou``, or ``boundary_ods``) after
    ``val_accuracy`` (pixel accuracy there); a classification study's columns stay as they were."""
    import pandas as pd

    have = {k for t in study.get_trials(deepcopy=False) for k in DENSE_COLUMNS if k in t.user_attrs}
    dense = [k for k in DENSE_COLUMNS if k in have] if have & {attrs.MIOU_FG, attrs.BOUNDARY_ODS} else []
    rows = []
    for t in study.get_trials(deepcopy=False):
        u = t.user_attrs
        if u.get("candidate"):  # a screening candidate, not a trial of the search (screen.py)
            continue
        row = {"number": t.number, "state": t.state.name,
               "value": t.values[0] if t.values else None,
               "duration_s": t.duration.total_seconds() if t.duration else None}
        for k in (attrs.PATTERN, attrs.ARCH, attrs.FINGERPRINT, *attrs.MEASURED, attrs.VAL_ACCURACY, *dense,
                  attrs.TRAIN_SECONDS, attrs.AT_CHANCE, attrs.EPOCHS_TRAINED, attrs.DUPLICATE_OF, attrs.SEEDED_FROM,
                  attrs.RETRY_OF, attrs.REJECTED, attrs.SCREENED, attrs.FAIL_REASON):
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
    return from_json(match[0].user_attrs[attrs.IR])
