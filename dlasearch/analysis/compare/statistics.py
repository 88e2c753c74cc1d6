"""Statistics over seeds: means and CIs, Welch tests with Holm's correction, the summary table."""
from __future__ import annotations

import math
import warnings

from dlasearch import stats as dstats
from dlasearch.patterns import PATTERNS

__all__ = ['mean_ci', 'welch', 'holm', 'summarize', 'size_correlation', 'markdown_table']

REFERENCE = "chain"


def mean_ci(values) -> tuple[float, float, float, float]:
    """(mean, sample std, 95% CI low, high) with the t-distribution; NaN where n is too small."""
    import numpy as np
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return (math.nan,) * 4
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan, math.nan
    s = float(x.std(ddof=1))
    h = float(stats.t.ppf(0.975, len(x) - 1)) * s / math.sqrt(len(x))
    return m, s, m - h, m + h


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


def summarize(runs, archs: dict, order: list[str], chance: tuple[float, int] | None = None):
    """Per-pattern summary (a DataFrame in ``order``) from the per-run frame and the measured archs.

    ``chance`` is (chance level, images) of the test split; rows whose mean is within it are marked.
    """
    import pandas as pd

    ok = runs[runs.status == "ok"]
    acc = {p: ok[ok.pattern == p].test_accuracy.dropna().tolist() for p in order}
    ref = acc.get(REFERENCE, [])
    with warnings.catch_warnings():  # scipy warns on constant samples; those give NaN, shown as n/a
        warnings.simplefilter("ignore", RuntimeWarning)
        tests = {p: welch(acc[p], ref) for p in order if p != REFERENCE}
    adjusted = holm({p: t[3] for p, t in tests.items()})
    rows = []
    for p in order:
        a = archs[p]
        mine = runs[runs.pattern == p]
        m, s, lo, hi = mean_ci(acc[p])
        tm, ts, _, _ = mean_ci(mine.train_seconds.dropna().tolist())
        diff, dlo, dhi, pv = tests.get(p, (math.nan,) * 4)
        rows.append({
            "pattern": p, "figure": PATTERNS.get(p, "baseline"), "widths": "-".join(map(str, a["widths"])),
            "multiplier": a["multiplier"], "divisor": a["divisor"], "params": a["params"],
            "target_params": a["target_params"], "params_vs_target": a["params_vs_target"], "macs": a["macs"],
            "train_memory_bytes": a["train_memory_bytes"], "precision": a.get("precision") or "",
            "runs": len(mine), "ok_runs": len(acc[p]),
            "test_acc_mean": m, "test_acc_std": s, "test_acc_ci_low": lo, "test_acc_ci_high": hi,
            "val_acc_mean": mean_ci(ok[ok.pattern == p].val_accuracy.dropna().tolist())[0],
            "diff_vs_chain": diff, "diff_ci_low": dlo, "diff_ci_high": dhi, "p_welch": pv,
            "p_holm": adjusted.get(p, math.nan), "train_seconds_mean": tm, "train_seconds_std": ts,
            "same_as": a.get("same_as") or "", "fingerprint": a["fingerprint"],
            "at_chance": bool(chance) and dstats.at_chance(m, *chance),
        })
    return pd.DataFrame(rows)


def size_correlation(runs, keys) -> tuple[float, float, int]:
    """Spearman rank correlation of params and test accuracy over the finished runs of ``keys``: (rho, p, n)."""
    from scipy import stats

    ok = runs[(runs.status == "ok") & runs.test_accuracy.notna() & runs.pattern.isin(keys)]
    if len(ok) < dstats.MIN_CORRELATION or ok.params.nunique() < 2 or ok.test_accuracy.nunique() < 2:
        return math.nan, math.nan, len(ok)
    r = stats.spearmanr(ok.params, ok.test_accuracy)
    return float(r.statistic), float(r.pvalue), len(ok)


def _num(x, fmt: str, missing: str = dstats.DASH) -> str:
    return missing if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def markdown_table(summary) -> str:
    """The on-screen / comparison.md table: accuracies in percent, differences in points."""
    from tabulate import tabulate

    rows = []
    for r in summary.itertuples():
        pm = "" if not math.isfinite(r.test_acc_std) else f" ± {100 * r.test_acc_std:.2f}"
        ci = f"[{_num(100 * r.test_acc_ci_low, '.2f')}, {_num(100 * r.test_acc_ci_high, '.2f')}]" \
            if math.isfinite(r.test_acc_ci_low) else dstats.DASH
        if r.pattern == REFERENCE:
            diff = "reference"
        elif math.isfinite(r.diff_vs_chain):
            diff = f"{100 * r.diff_vs_chain:+.2f}"
            if math.isfinite(r.diff_ci_low):
                diff += f" [{100 * r.diff_ci_low:+.2f}, {100 * r.diff_ci_high:+.2f}]"
        else:
            diff = dstats.DASH
        tpm = "" if not math.isfinite(r.train_seconds_std) else f" ± {r.train_seconds_std:.1f}"
        label = r.pattern + (f" (= {r.same_as})" if r.same_as else "")
        rows.append([label, r.figure, r.widths, f"{r.params:,} ({100 * r.params_vs_target:+.1f}%)",
                     f"{r.macs / 1e6:.2f}M", f"{r.train_memory_bytes / 2 ** 20:.1f}" + _precision(r),
                     f"{_num(100 * r.test_acc_mean, '.2f')}{pm}" + _chance_mark(r), ci, diff, _num(r.p_welch, '.3g', '–'),
                     _num(r.p_holm, '.3g', '–'), f"{_num(r.train_seconds_mean, '.1f')}{tpm}",
                     f"{r.ok_runs}/{r.runs}"])
    headers = ["pattern", "fig.", "widths", "params (vs target)", "MACs", "train MiB", "test acc % (mean ± std)",
               "95% CI", "Δ vs chain, pp [95% CI]", "p Welch", "p Holm", "train s", "runs ok"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _precision(row) -> str:
    """The precision the memory was counted in (bf16 autocast keeps about half of fp32's activations);
    blank for a comparison measured before it was recorded."""
    p = getattr(row, "precision", "")
    return f" ({p})" if isinstance(p, str) and p else ""


def _chance_mark(row) -> str:
    return f" {dstats.CHANCE_MARK}" if getattr(row, "at_chance", False) else ""
