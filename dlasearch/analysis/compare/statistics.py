"""Statistics over seeds: means and CIs, Welch tests with Holm's correction, the summary table."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from dlasearch import stats as dstats
from dlasearch.analysis.compare.sizing import decoder_parts
from dlasearch.decoders import DECODERS
from dlasearch.patterns import PATTERNS
from dlasearch.train import dense

__all__ = ['Metric', 'ACCURACY', 'metric_for', 'Chance', 'chance_of', 'figure', 'mean_ci', 'welch', 'holm', 'summarize',
           'size_correlation', 'markdown_table']

REFERENCE = "chain"
DENSE_REFERENCE = "chain+none"  # dense rows are (pattern, decoder): no aggregation in encoder or decoder


@dataclass(frozen=True)
class Metric:
    """What a comparison ranks by: its ``runs.csv`` column, its ``comparison.csv`` column prefix and
    difference column, the reference row every other row is tested against, and its words."""
    column: str      # runs.csv: test_accuracy, test_miou_fg, test_boundary_ods
    prefix: str      # comparison.csv: <prefix>_mean, _std, _ci_low, _ci_high
    diff: str        # comparison.csv: the difference to the reference
    reference: str
    label: str       # plots and notes
    short: str       # table header
    val: str         # comparison.csv: mean validation score


ACCURACY = Metric("test_accuracy", "test_acc", "diff_vs_chain", REFERENCE, "test accuracy", "test acc",
                  "val_acc_mean")
_DENSE_WORDS = {"miou_fg": ("test foreground mIoU", "test fg mIoU"), "boundary_ods": ("test boundary ODS", "test ODS")}


def metric_for(data) -> Metric:
    """Accuracy for classification data; the task's score (``dense.SCORE_NAMES``) for dense data."""
    if not data.dense:
        return ACCURACY
    score = dense.SCORE_NAMES[data.task]
    label, short = _DENSE_WORDS[score]
    return Metric(f"test_{score}", f"test_{score}", "diff_vs_reference", DENSE_REFERENCE, label, short,
                  f"val_{score}_mean")


@dataclass(frozen=True)
class Chance:
    """The test split's chance level: accuracy within chance + 2 SE of ``n`` images (classification), or
    a dense score no better than the frequency guesser's (``dense.chance_record``; ``n`` scored pixels)."""
    level: float
    n: int
    dense: bool = False

    def low(self, score) -> bool:
        if score is None or not math.isfinite(score):
            return False
        return score <= self.level + 1e-12 if self.dense else dstats.at_chance(score, self.level, self.n)

    def limit(self) -> float:
        return self.level if self.dense else dstats.chance_limit(self.level, self.n)


def chance_of(data) -> Chance:
    """The chance level of ``data``'s test split for the score a comparison ranks it by."""
    if not data.dense:
        return Chance(dstats.chance(data.y_test), len(data.y_test))
    rec = dense.chance_record(data, None, None)["test"]
    return Chance(rec["chance"], rec["n"], True)


mean_ci = dstats.mean_ci  # (mean, sample std, 95% CI low, high): one definition for compare and a search's confirm=


def welch(a, b) -> tuple[float, float, float, float]:
    """Welch's t-test of mean(a) - mean(b): (difference, 95% CI low, high, two-sided p)."""
    import numpy as np
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return (math.nan,) * 4
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:  # constant samples (e.g. every seed at chance): no spread, so no test
        return diff, math.nan, math.nan, math.nan
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    h = float(stats.t.ppf(0.975, df)) * se
    return diff, diff - h, diff + h, p


def holm(pvalues: dict) -> dict:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and is not counted)."""
    valid = sorted((p, k) for k, p in pvalues.items() if p is not None and math.isfinite(p))
    out = {k: math.nan for k in pvalues}
    running = 0.0
    for i, (p, k) in enumerate(valid):
        running = max(running, min(1.0, (len(valid) - i) * p))
        out[k] = running
    return out


def summarize(runs, archs: dict, order: list[str], chance=None, metric: Metric = ACCURACY):
    """Per-row summary (a DataFrame in ``order``) from the per-run frame and the measured archs.

    ``chance`` (a ``Chance``, or (chance level, images) of the test split): rows whose mean is within it
    are marked.  ``metric``: what is summarised and tested against which reference row.
    """
    import pandas as pd

    if isinstance(chance, tuple) and not isinstance(chance, Chance):
        chance = Chance(*chance)
    ok = runs[runs.status == "ok"]
    acc = {p: ok[ok.pattern == p][metric.column].dropna().tolist() for p in order}
    ref = acc.get(metric.reference, [])
    with warnings.catch_warnings():  # scipy warns on constant samples; those give NaN, shown as n/a
        warnings.simplefilter("ignore", RuntimeWarning)
        tests = {p: welch(acc[p], ref) for p in order if p != metric.reference}
    adjusted = holm({p: t[3] for p, t in tests.items()})
    val = "val_accuracy" if metric is ACCURACY else "val_score"
    rows = []
    for p in order:
        a = archs[p]
        mine = runs[runs.pattern == p]
        m, s, lo, hi = mean_ci(acc[p])
        tm, ts, _, _ = mean_ci(mine.train_seconds.dropna().tolist())
        diff, dlo, dhi, pv = tests.get(p, (math.nan,) * 4)
        rows.append({
            "pattern": p, "figure": figure(p), "widths": "-".join(map(str, a["widths"])),
            "multiplier": a["multiplier"], "divisor": a["divisor"], "params": a["params"],
            "target_params": a["target_params"], "params_vs_target": a["params_vs_target"], "macs": a["macs"],
            "train_memory_bytes": a["train_memory_bytes"], "precision": a.get("precision") or "",
            "runs": len(mine), "ok_runs": len(acc[p]),
            f"{metric.prefix}_mean": m, f"{metric.prefix}_std": s, f"{metric.prefix}_ci_low": lo,
            f"{metric.prefix}_ci_high": hi,
            metric.val: mean_ci(ok[ok.pattern == p][val].dropna().tolist())[0] if val in ok else math.nan,
            metric.diff: diff, "diff_ci_low": dlo, "diff_ci_high": dhi, "p_welch": pv,
            "p_holm": adjusted.get(p, math.nan), "train_seconds_mean": tm, "train_seconds_std": ts,
            "same_as": a.get("same_as") or "", "fingerprint": a["fingerprint"],
            "at_chance": bool(chance) and chance.low(m),
        })
    return pd.DataFrame(rows)


def figure(key: str) -> str:
    """The paper's figure of a row's pattern (``fig2`` for dla; ``chain+fpn`` is ``a``), or ``baseline``
    for a params-only row (``chain_2x``, ``chain+none_2x``)."""
    if key in PATTERNS:
        return PATTERNS[key]
    pattern, plus, decoder = key.partition("+")
    return PATTERNS[pattern] if plus and pattern in PATTERNS and decoder_parts(decoder)[0] in DECODERS else "baseline"


def size_correlation(runs, keys, column: str = "test_accuracy") -> tuple[float, float, int, int]:
    """Spearman rank correlation of params and ``column`` over the finished runs of ``keys``: (rho, p, n,
    distinct parameter counts among them), rho and p NaN when too few runs or sizes leave it undefined."""
    from scipy import stats

    ok = runs[(runs.status == "ok") & runs[column].notna() & runs.pattern.isin(keys)]
    sizes = ok.params.nunique()
    if len(ok) < dstats.MIN_CORRELATION or sizes < 2 or ok[column].nunique() < 2:
        return math.nan, math.nan, len(ok), sizes
    r = stats.spearmanr(ok.params, ok[column])
    return float(r.statistic), float(r.pvalue), len(ok), sizes


def _num(x, fmt: str, missing: str = dstats.DASH) -> str:
    return missing if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def markdown_table(summary, metric: Metric = ACCURACY) -> str:
    """The on-screen / comparison.md table: scores in percent, differences in points."""
    from tabulate import tabulate

    rows = []
    for r in summary.itertuples():
        mean, std, lo, hi = (getattr(r, f"{metric.prefix}_{k}") for k in ("mean", "std", "ci_low", "ci_high"))
        d = getattr(r, metric.diff)
        pm = "" if not math.isfinite(std) else f" ± {100 * std:.2f}"
        ci = f"[{_num(100 * lo, '.2f')}, {_num(100 * hi, '.2f')}]" if math.isfinite(lo) else dstats.DASH
        if r.pattern == metric.reference:
            diff = "reference"
        elif math.isfinite(d):
            diff = f"{100 * d:+.2f}"
            if math.isfinite(r.diff_ci_low):
                diff += f" [{100 * r.diff_ci_low:+.2f}, {100 * r.diff_ci_high:+.2f}]"
        else:
            diff = dstats.DASH
        tpm = "" if not math.isfinite(r.train_seconds_std) else f" ± {r.train_seconds_std:.1f}"
        label = r.pattern + (f" (= {r.same_as})" if r.same_as else "")
        rows.append([label, r.figure, r.widths, f"{r.params:,} ({100 * r.params_vs_target:+.1f}%)",
                     f"{r.macs / 1e6:.2f}M", f"{r.train_memory_bytes / 2 ** 20:.1f}" + _precision(r),
                     f"{_num(100 * mean, '.2f')}{pm}" + _chance_mark(r), ci, diff, _num(r.p_welch, '.3g', '–'),
                     _num(r.p_holm, '.3g', '–'), f"{_num(r.train_seconds_mean, '.1f')}{tpm}",
                     f"{r.ok_runs}/{r.runs}"])
    headers = ["pattern" if metric is ACCURACY else "pattern+decoder", "fig.", "widths", "params (vs target)", "MACs",
               "train MiB", f"{metric.short} % (mean ± std)", "95% CI", f"Δ vs {metric.reference}, pp [95% CI]",
               "p Welch", "p Holm", "train s", "runs ok"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _precision(row) -> str:
    """The precision the memory was counted in (bf16 autocast keeps about half of fp32's activations);
    blank for a comparison measured before it was recorded."""
    p = getattr(row, "precision", "")
    return f" ({p})" if isinstance(p, str) and p else ""


def _chance_mark(row) -> str:
    return f" {dstats.CHANCE_MARK}" if getattr(row, "at_chance", False) else ""
