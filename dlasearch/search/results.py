"""What a study exports: ``trials.csv``, ``best/`` and trial architectures (all regenerable)."""
from __future__ import annotations

import json
import math

import optuna
from optuna.trial import TrialState

from dlasearch import files, stats
from dlasearch.errors import SearchError
from dlasearch.ir import from_json
from dlasearch.search import keep
from dlasearch.search.space import duplicate_cap, score_objective
from dlasearch.search.study import counted, duplicates, find_study, results_dir, study_name
from dlasearch.search import attrs

__all__ = ['export', 'trials_frame', 'trial_ir', 'mark_ties', 'tie_note', 'SE_COLUMN', 'TIE_COLUMN']

SE_COLUMN, TIE_COLUMN = "val_accuracy_se", "tied"  # trials.csv: the binomial SE, and best / tied / blank


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
    have_se = len(df) and SE_COLUMN in df and df[SE_COLUMN].notna().any()
    cols = [c for c in ("number", "state", "pattern", score, "val_accuracy") if c in df.columns] \
        + ([SE_COLUMN, TIE_COLUMN] if have_se else []) \
        + [c for c in ("params", "macs", "train_memory", "arch") if c in df.columns] \
        + (["at_chance"] if len(df) and df.at_chance.any() else [])
    cols = list(dict.fromkeys(cols))
    unique = df[(df.state == "COMPLETE") & df.duplicate_of.isna()] if len(df) else df
    top = unique.sort_values(score, ascending=False).head(10)[cols] if len(unique) and score in df else unique
    dups = int(df.duplicate_of.notna().sum()) if len(df) else 0
    free = duplicates(study)
    log(f"\n{len(df)} trials in {study_name(space)!r}: "
        + (", ".join(f"{n} {s}" for s, n in df.state.value_counts().items()) if len(df) else "none finished yet")
        + (f" ({dups} answered from an identical earlier architecture"
           + (f", {free} of them not counted against trials" if free else "") + ")" if dups else ""))
    if free >= duplicate_cap(space) and counted(study) < space["study"]["trials"]:
        log(f"the study ended at its cap on repeated architectures (study.max_duplicates={duplicate_cap(space)}) "
            f"with {counted(study)} of {space['study']['trials']} trials")
    if len(top):
        log(top.rename(columns={SE_COLUMN: "±SE"}).to_markdown(index=False, floatfmt=".4g"))
        note = tie_note(df, confirmed=space["study"]["confirm"]["top"] > 0)
        if note:
            log(note)
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
        for k in (attrs.PATTERN, attrs.ARCH, attrs.FINGERPRINT, *attrs.MEASURED, attrs.VAL_ACCURACY):
            row[k] = u.get(k)
        # binomial on the validation images; blank for a dense study, whose trials record no val_n: its
        # pixels are not independent draws, so a binomial SE would be invented (confirm= gives the seed spread)
        p, n = u.get(attrs.VAL_ACCURACY), u.get(attrs.VAL_N)
        row[attrs.VAL_N] = n
        row[SE_COLUMN] = stats.standard_error(p, n) if p is not None and n else None
        row[TIE_COLUMN] = None
        for k in (*dense, attrs.TRAIN_SECONDS, attrs.AT_CHANCE, attrs.EPOCHS_TRAINED, attrs.DUPLICATE_OF,
                  attrs.REPEATED, attrs.SEEDED_FROM, attrs.RETRY_OF, attrs.REJECTED, attrs.SCREENED, attrs.FAIL_REASON):
            row[k] = u.get(k)
        row.update({f"param_{k}": v for k, v in t.params.items()})
        rows.append(row)
    return mark_ties(pd.DataFrame(rows))


def mark_ties(df):
    """Fill ``tied``: ``best`` for the complete trial(s) with the highest validation accuracy, ``tied``
    for those within ``stats.TIE_SE`` standard errors of it (``stats.tied``), blank otherwise and
    wherever the SE is unknown (dense studies, trials recorded before ``val_n``)."""
    if not len(df) or SE_COLUMN not in df:
        return df
    ok = (df.state == "COMPLETE") & df[SE_COLUMN].notna() & df[attrs.VAL_ACCURACY].notna()
    if not ok.any():
        return df
    i = df[ok][attrs.VAL_ACCURACY].idxmax()
    best, best_se = float(df.at[i, attrs.VAL_ACCURACY]), float(df.at[i, SE_COLUMN])
    df[TIE_COLUMN] = [(stats.BEST_MARK if p == best else stats.TIE_MARK if stats.tied(best, best_se, p, se) else "")
                      if good else None
                      for good, p, se in zip(ok, df[attrs.VAL_ACCURACY], df[SE_COLUMN])]
    return df


def tie_note(df, confirmed: bool = False) -> str | None:
    """The line under a table with tie marks: what ``tied`` means, on how many images, and what helps."""
    if not len(df) or TIE_COLUMN not in df or not (df[TIE_COLUMN] == stats.TIE_MARK).any():
        return None
    ties = df[(df[TIE_COLUMN] == stats.TIE_MARK) & df[attrs.DUPLICATE_OF].isna()]
    n = df[attrs.VAL_N].dropna()
    images = f" on {int(n.iloc[0])} validation images" if len(n) and n.nunique() == 1 else ""
    gap = (df[df[TIE_COLUMN] == stats.BEST_MARK][attrs.VAL_ACCURACY].max() - ties[attrs.VAL_ACCURACY].min()
           if len(ties) else math.nan)
    return (f"{len(ties)} architecture(s) marked {stats.TIE_MARK}: within {stats.TIE_SE} standard errors of the "
            f"best (binomial SE sqrt(p(1-p)/n){images}"
            + (f"; the widest gap is {100 * gap:.2f} points" if math.isfinite(gap) else "")
            + "): this validation set cannot tell them apart; "
            + ("the confirmed table trains the top ones again with more seeds" if confirmed else
               "confirm=K seeds=S trains the top K again with S more seeds"))


def trial_ir(study: str, trial: int, storage: str | None = None):
    """The IR of trial ``trial`` in ``study`` (journal under results/<study>/ unless ``storage``)."""
    trials = find_study(study, storage)[0].get_trials(deepcopy=False)
    match = [t for t in trials if t.number == trial]
    if not match or "ir" not in match[0].user_attrs:
        raise SearchError(f"study {study!r} has no trial {trial} with an architecture "
                          f"(trials 0..{len(trials) - 1})")
    return from_json(match[0].user_attrs[attrs.IR])
