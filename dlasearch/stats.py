"""Honest numbers for short runs: chance levels, and statistics shown only when n allows them.

One module so that ``train``, ``compare``, ``report`` and the search exports agree on
what "at chance" means and on how a statistic with too few samples is written.

Chance is the accuracy of always answering the most frequent class of the split that
is scored (0.1 on balanced 10-class data; more on an unbalanced subset).  A measured
accuracy counts as *at chance* when it is below chance + 2 standard errors of a chance
classifier on that many images, i.e. a run whose score a guesser reaches about 98% of
the time.
"""
from __future__ import annotations

import math

__all__ = ['chance', 'standard_error', 'chance_limit', 'at_chance', 'chance_line', 'chance_record', 'guesser_line',
           'chance_warning', 'fmt', 'mean_ci', 'tied', 'TIE_MARK', 'BEST_MARK', 'TIE_SE']

DASH = "–"  # the cell of a statistic that needs more samples than there are
MIN_SPREAD = 2  # std, confidence interval: two values at least
MIN_TEST = 2  # a two-sample test (Welch): two values on each side
MIN_CORRELATION = 5  # rank correlation: below five points every p-value is 0, 1 or close to it
CHANCE_MARK = "≈chance"
TIE_MARK, BEST_MARK = "tied", "best"  # a score the validation set cannot tell from the best one, and that one
TIE_SE = 2  # "tied": the gap to the best is at most this many standard errors of the difference
FOOTNOTE_DASH = f"{DASH}: needs at least {MIN_SPREAD} seeds (a rank correlation at least {MIN_CORRELATION} runs)."


def chance(labels) -> float:
    """Accuracy of always predicting the most frequent label: the score that shows nothing was learned."""
    import torch

    y = torch.as_tensor(labels).reshape(-1)
    if len(y) == 0:
        return math.nan
    return float(torch.bincount(y.long()).max()) / len(y)


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` images."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else math.nan


def tied(best: float, best_se: float, score: float, se: float) -> bool:
    """Whether ``score`` is within ``TIE_SE`` standard errors of ``best``: the standard error of the
    difference of two binomial accuracies, sqrt(best_se**2 + se**2).  Both are measured on the same
    validation images, which makes the true error of the difference somewhat smaller, so the mark
    errs towards "cannot tell them apart".  False when either SE is unknown (NaN, None)."""
    if any(v is None or not math.isfinite(v) for v in (best, best_se, score, se)):
        return False
    return best - score <= TIE_SE * math.sqrt(best_se ** 2 + se ** 2) + 1e-12


def mean_ci(values) -> tuple[float, float, float, float]:
    """(mean, sample std, 95% CI low, high) with the t-distribution; NaN where n is too small
    (missing and non-finite values are left out)."""
    import numpy as np
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return (math.nan,) * 4
    m = float(x.mean())
    if len(x) < MIN_SPREAD:
        return m, math.nan, math.nan, math.nan
    s = float(x.std(ddof=1))
    h = float(stats.t.ppf(0.975, len(x) - 1)) * s / math.sqrt(len(x))
    return m, s, m - h, m + h


def chance_limit(chance_level: float, n: int) -> float:
    """The accuracy below which a score is indistinguishable from chance: chance + 2 standard errors."""
    return chance_level + 2 * standard_error(chance_level, n)


def at_chance(accuracy, chance_level, n) -> bool:
    """True when ``accuracy`` (0..1) is within chance + 2 standard errors; False when unknown."""
    if accuracy is None or chance_level is None or not n:
        return False
    if not (math.isfinite(accuracy) and math.isfinite(chance_level)):
        return False
    return accuracy <= chance_limit(chance_level, n)


def chance_line(what: str, accuracy: float, chance_level: float, n: int) -> str:
    """The one warning line a command prints for a result at chance."""
    return (f"warning: {what} {100 * accuracy:.1f}% is at chance ({100 * chance_level:.1f}% + 2 SE = "
            f"{100 * chance_limit(chance_level, n):.1f}% on {n} images): nothing was learned; train longer "
            f"(epochs=, steps=) or lower lr")


def chance_record(dataset, val_accuracy, test_accuracy=None) -> dict:
    """Per scored split of ``dataset``: its chance level, its size, and whether the accuracy is at chance."""
    out = {}
    for split, acc in (("val", val_accuracy), ("test", test_accuracy)):
        y = dataset.split(split)[1]
        level = chance(y)
        out[split] = {"chance": level, "n": len(y), "at_chance": at_chance(acc, level, len(y)),
                      "metric": "accuracy", "score": acc}
    return out


# What a dense score is called in a warning, and the guesser its chance level is the score of
# (``train.seg_metrics.seg_chance`` / ``boundary_chance``).
METRIC_NAMES = {"accuracy": "accuracy", "miou_fg": "foreground mIoU", "boundary_ods": "boundary ODS"}
GUESSERS = {"miou_fg": "a guesser that knows only the class frequencies scores",
            "boundary_ods": "marking every pixel an edge scores"}


def guesser_line(what: str, score: float, level: float, guesser: str) -> str:
    """The one warning line for a score no better than a guesser's (dense metrics: no sampling margin)."""
    return (f"warning: {what} {100 * score:.1f}% is at chance ({guesser} {100 * level:.1f}%): nothing was "
            f"learned; train longer (epochs=, steps=) or lower lr")


def chance_warning(split: str, entry: dict) -> str:
    """The warning line for one split's ``chance_record`` entry (``split``: e.g. "validation"), whatever
    its metric: accuracy (chance + 2 SE) or a dense score (a guesser's level)."""
    metric = entry.get("metric", "accuracy")
    what = f"{split} {METRIC_NAMES.get(metric, metric)}"
    if metric == "accuracy":
        return chance_line(what, entry["score"], entry["chance"], entry["n"])
    return guesser_line(what, entry["score"], entry["chance"], GUESSERS.get(metric, "chance is"))


def fmt(x, spec: str, n: int | None = None, need: int = 1, missing: str = DASH) -> str:
    """``format(x, spec)``, or ``missing`` when x is undefined or rests on fewer than ``need`` samples."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)) or (n is not None and n < need):
        return missing
    return format(x, spec)
