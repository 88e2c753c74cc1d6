"""``confirm=K seeds=S``: after a search, how far its best architectures hold up over training seeds.

A search ranks each architecture by one training run, scored on a few hundred validation images:
the first few often differ by an image or two, and the winner of many such runs is partly the
luckiest one (its search score is biased upwards). So the top K distinct architectures (by
validation score, one per fingerprint, duplicates left out) are trained again with S more training
seeds (the search's seed + 1, ..., + S: same data split, same settings), and each gets the mean of
those S runs with a 95% t-interval (``stats.mean_ci``). The search's own run is shown beside it but
not averaged in: it is the run the architecture was chosen on.

Every finished (architecture, seed) run is stored in the study itself (user attribute
``confirm:<fingerprint>:<seed>``, the result as JSON), so rerunning the command trains only what is
missing, and ``dlasearch report`` finds the table wherever the study is stored.
"""
from __future__ import annotations

import json
import math

import optuna
from optuna.trial import TrialState

from dlasearch import files, stats
from dlasearch.errors import SearchError
from dlasearch.ir import from_json
from dlasearch.search import attrs
from dlasearch.search.space import score_objective
from dlasearch.search.study import results_dir

__all__ = ['top', 'confirm_seeds', 'stored_runs', 'run', 'table', 'show', 'markdown', 'NOTE']

NOTE = ("mean over the confirming seeds only, with its 95% t-interval (the search's own run, on which the "
        "architecture was chosen, is shown but not averaged in); architectures whose intervals overlap are "
        "not told apart by these seeds either")


def _score(t) -> float | None:
    u = t.user_attrs
    return u[attrs.VAL_SCORE] if u.get(attrs.VAL_SCORE) is not None else u.get(attrs.VAL_ACCURACY)


def top(study: optuna.Study, k: int) -> list:
    """The ``k`` best distinct architectures by validation score: complete trials that trained (not
    answered from an identical one), one per fingerprint, best first (ties: the earlier trial)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if attrs.IR in t.user_attrs and t.user_attrs.get(attrs.DUPLICATE_OF) is None and _score(t) is not None]
    done.sort(key=lambda t: (-_score(t), t.number))
    out, seen = [], set()
    for t in done:
        fp = t.user_attrs.get(attrs.FINGERPRINT) or str(t.number)
        if fp not in seen:
            seen.add(fp)
            out.append(t)
    return out[:k]


def confirm_seeds(base: int, n: int) -> list[int]:
    """The training seeds of the confirming runs: the ``n`` after the search's own ``base``."""
    return [base + i for i in range(1, n + 1)]


def _key(fp: str, seed: int) -> str:
    return f"{attrs.CONFIRM_RUN}{fp}:{seed}"


def stored_runs(study: optuna.Study) -> dict[tuple[str, int], dict]:
    """Every confirming run the study holds, by (fingerprint, seed)."""
    out = {}
    for k, v in study.user_attrs.items():
        if not k.startswith(attrs.CONFIRM_RUN):
            continue
        fp, _, seed = k[len(attrs.CONFIRM_RUN):].rpartition(":")
        try:
            out[(fp, int(seed))] = json.loads(v)
        except (ValueError, TypeError):
            continue  # not one of ours
    return out


def run(study: optuna.Study, space: dict, objective, log=print):
    """Train what is missing of the top ``study.confirm.top`` architectures x ``study.confirm.seeds``
    seeds with ``objective`` (``Objective.train_seed``), store each run, and return ``table(study)``."""
    k, n = space["study"]["confirm"]["top"], space["study"]["confirm"]["seeds"]
    chosen = top(study, k)
    if not chosen:
        log("confirm: no complete trial to confirm yet")
        return None
    seeds = confirm_seeds(objective.base_seed(), n)
    fps = [t.user_attrs.get(attrs.FINGERPRINT) or str(t.number) for t in chosen]
    study.set_user_attr(attrs.CONFIRM, json.dumps({"top": k, "seeds": seeds, "fingerprints": fps,
                                                   "trials": [t.number for t in chosen],
                                                   "score": score_objective(space)}))
    have = stored_runs(study)
    todo = [(t, fp, s) for t, fp in zip(chosen, fps) for s in seeds if (fp, s) not in have]
    name = score_objective(space)
    log(f"\nconfirm: the top {len(chosen)} architecture(s) with {n} more seed(s) each ({', '.join(map(str, seeds))}): "
        + (f"{len(todo)} run(s) to train" if todo else "every run is stored already")
        + (f", {len(chosen) * n - len(todo)} stored" if todo and len(todo) < len(chosen) * n else ""))
    for i, (t, fp, seed) in enumerate(todo, 1):
        try:
            result = objective.train_seed(from_json(t.user_attrs[attrs.IR]), seed)
        except Exception as e:  # recorded nowhere: the next run tries it again
            log(f"  confirm {i}/{len(todo)}: trial #{t.number} seed {seed} failed: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}")
            continue
        score = result.val_score if result.val_score is not None else result.val_accuracy
        record = {"trial": t.number, "seed": seed, "status": result.status, "val_score": score,
                  "val_accuracy": result.val_accuracy, "train_seconds": result.train_seconds,
                  "epochs": result.epochs}
        if t.user_attrs.get(attrs.VAL_N) is not None:
            record["val_n"] = t.user_attrs[attrs.VAL_N]
        study.set_user_attr(_key(fp, seed), json.dumps(record))
        log(f"  confirm {i}/{len(todo)}: trial #{t.number} seed {seed}: "
            + (f"{name}={score:.4f}" if score is not None else f"no score ({result.status}: {result.reason})")
            + f", {result.train_seconds:.1f} s")
    return table(study)


def table(study: optuna.Study):
    """The confirmed architectures of the study's last ``confirm=`` run, best mean first, as a DataFrame
    (None when the study has none): trial, arch, the search's score and its SE, the confirming scores,
    their mean, std and 95% CI."""
    import pandas as pd

    raw = study.user_attrs.get(attrs.CONFIRM)
    if not raw:
        return None
    setting = json.loads(raw)
    runs = stored_runs(study)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    rows = []
    for number, fp in zip(setting["trials"], setting["fingerprints"]):
        t = by_number.get(number)
        if t is None:
            continue
        values = [runs[(fp, s)]["val_score"] for s in setting["seeds"] if (fp, s) in runs]
        m, sd, lo, hi = stats.mean_ci(values)
        u = t.user_attrs
        search = _score(t)
        n_val = u.get(attrs.VAL_N)
        rows.append({"trial": number, "pattern": u.get(attrs.PATTERN), "arch": u.get(attrs.ARCH), "fingerprint": fp,
                     "params": u.get(attrs.PARAMS), "search": search,
                     "search_se": stats.standard_error(search, n_val) if n_val and search is not None else math.nan,
                     "seeds": len(values), "mean": m, "std": sd, "ci_low": lo, "ci_high": hi,
                     "runs": " ".join(f"{v:.4f}" if v is not None else "nan" for v in values)})
    df = pd.DataFrame(rows, columns=["trial", "pattern", "arch", "fingerprint", "params", "search", "search_se",
                                     "seeds", "mean", "std", "ci_low", "ci_high", "runs"])
    if len(df):
        df = df.sort_values(["mean", "search"], ascending=False, na_position="last", kind="stable")
        df.insert(0, "rank", range(1, len(df) + 1))
    df.attrs.update(score=setting.get("score", "val_accuracy"), seeds=setting["seeds"], top=setting["top"])
    return df


def markdown(df) -> str:
    """The confirmed table as markdown: one row per architecture, mean ± half the 95% CI."""
    score = df.attrs.get("score", "val_accuracy")

    def cell(r) -> str:
        if not math.isfinite(r["mean"]):
            return stats.DASH
        if not math.isfinite(r["ci_low"]):
            return f"{r['mean']:.4f} (one seed: no interval)"
        lo, hi = max(r["ci_low"], 0.0), min(r["ci_high"], 1.0)  # a score lies in [0, 1]; the t-interval does not know
        return f"{r['mean']:.4f} ± {(r['ci_high'] - r['ci_low']) / 2:.4f} [{lo:.4f}, {hi:.4f}]"

    shown = df.assign(**{f"search {score}": [f"{s:.4f}" + (f" ± {se:.4f}" if math.isfinite(se) else "")
                                             if s is not None and math.isfinite(s) else stats.DASH
                                             for s, se in zip(df.search, df.search_se)],
                         f"mean {score} ± 95% CI": [cell(r) for _, r in df.iterrows()],
                         "trial": [f"#{n}" for n in df.trial]})
    cols = ["rank", "trial", "arch", f"search {score}", f"mean {score} ± 95% CI", "seeds", "runs"]
    return shown[cols].to_markdown(index=False, disable_numparse=True)


def show(df, space: dict, log=print) -> list[dict]:
    """Write ``confirmed.csv`` next to ``trials.csv`` and print the table; returns its rows."""
    if df is None or not len(df):
        return []
    out = results_dir(space)
    files.write_text(out / "confirmed.csv", df.to_csv(index=False), SearchError)
    seeds = df.attrs.get("seeds", [])
    log(f"\nconfirmed: the top {len(df)} architecture(s), trained again with seeds {', '.join(map(str, seeds))} "
        f"({out / 'confirmed.csv'})")
    log(markdown(df))
    log(NOTE)
    return df.to_dict("records")
