"""What a study exports: ``trials.csv``, ``best/`` and trial architectures (all regenerable)."""
from __future__ import annotations

import json

import optuna
from optuna.trial import TrialState

from dlasearch import files
from dlasearch.errors import SearchError
from dlasearch.ir import from_json
from dlasearch.search import keep
from dlasearch.search.study import find_study, results_dir, study_name

__all__ = ['export', 'trials_frame', 'trial_ir']


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
        if u.get("candidate"):  # a screening candidate, not a trial of the search (screen.py)
            continue
        row = {"number": t.number, "state": t.state.name,
               "value": t.values[0] if t.values else None,
               "duration_s": t.duration.total_seconds() if t.duration else None}
        for k in ("pattern", "arch", "fingerprint", "params", "macs", "train_memory", "precision", "val_accuracy",
                  "train_seconds", "at_chance", "epochs_trained", "duplicate_of", "seeded_from", "retry_of", "rejected",
                  "screened", "fail_reason"):
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
