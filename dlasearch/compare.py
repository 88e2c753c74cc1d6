"""Compare aggregation patterns at one parameter budget: ``dlasearch compare``.

Every pattern is built on the same backbone (stem, two conv stages, three
residual-block stages) and then widened or narrowed by one multiplier on all
stage channels until its parameter count lands within ``tolerance`` of the
budget.  What is left to differ is how the layers are aggregated, so accuracy
differences measure aggregation rather than size.  Each pattern is trained with
every seed; a run is one JSON file written atomically, so a rerun trains only
what is missing.

Statistics are over seeds: mean, standard deviation and a t-distribution 95%
CI of test accuracy, and the difference to ``chain`` (Figure 1a, no
aggregation) with a Welch t-test (unequal variances, few seeds) and a
Holm-adjusted p-value (several patterns are compared with the same chain).
Params-only baselines, plain chains at multiples of the budget (``chain_2x`` by
default), show how much accuracy size alone buys on the same data and
schedule: a pattern that beats ``chain`` by less than ``chain_2x`` does gains
less than doubling a plain network would.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from dlasearch import checkpoint, files
from dlasearch import stats as dstats
from dlasearch.errors import DLASearchError, did_you_mean
from dlasearch.patterns import LETTERS, PATTERNS

STEM = {"channels": 16, "kernel": 3}
CONV_STAGES = ((16, 1), (32, 2))  # (channels, stride) before the multiplier
STAGE_CHANNELS = (32, 64, 128)
# Three block stages; 2 blocks in every stage would make tree, reentrant and hda one graph
# (a depth-1 tree has nothing to re-enter or merge), so the deeper two stages hold depth-2 trees.
DEFAULT_BLOCKS = (2, 4, 4)
MIN_WIDTH = 8
DIVISORS = (8, 4, 2, 1)  # widths are multiples of 8 when that can reach the budget, else finer
MAX_MULTIPLIER = 64.0
ALIASES = {"plain": "chain", **LETTERS}
REFERENCE = "chain"
DEFAULT_BASELINE = (2.0,)
PATTERN_COLORS = {"chain": "#4d4d4d", "skip": "#1f77b4", "ida": "#2ca02c", "tree": "#ff7f0e",
                  "reentrant": "#9467bd", "hda": "#d62728", "dla": "#17becf"}
OPTIONS = ("patterns", "data", "root", "path", "limit", "val_fraction", "image_size", "seeds", "budget",
           "blocks", "baseline", "out", "name")
_NOT_TRAIN_OPTIONS = ("seed", "progress")
SETTINGS = "settings.json"


class CompareError(DLASearchError):
    """A comparison that cannot run as asked: pattern, budget, seeds, output folder."""


# ------------------------------------------------------------------ options

def parse_patterns(value) -> list[str]:
    """``"chain,skip"``, a list, or letters/aliases -> pattern names in order, without repeats."""
    if value is None:
        return list(PATTERNS)
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not items:
        raise CompareError(f"patterns={value!r}: expected a comma-separated list such as chain,ida,dla")
    allowed = [*PATTERNS, *ALIASES]
    out = []
    for item in items:
        name = str(item).strip()
        name = ALIASES.get(name, name)
        if name not in PATTERNS:
            close = difflib.get_close_matches(str(item).strip(), allowed, n=1)
            hint = f" (did you mean {ALIASES.get(close[0], close[0])!r}?)" if close else ""
            raise CompareError(f"patterns: unknown pattern {str(item).strip()!r}{hint}; allowed: "
                               f"{', '.join(PATTERNS)} (plain = chain, or Figure-1 letters a-f)")
        if name not in out:
            out.append(name)
    return out


def parse_seeds(value) -> list[int]:
    """``seeds=3`` -> [0, 1, 2]; ``seeds=[0,5]`` or ``"0,5"`` -> those seeds."""
    if isinstance(value, bool):
        raise CompareError(f"seeds={value!r}: expected a count (seeds=3) or a list (seeds=[0,5,7])")
    if isinstance(value, int):
        if value < 1:
            raise CompareError(f"seeds={value}: expected a count >= 1 or a list of seeds")
        return list(range(value))
    items = value.split(",") if isinstance(value, str) else value
    try:
        seeds = [int(s) for s in items]
    except (TypeError, ValueError):
        seeds = []
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise CompareError(f"seeds={value!r}: expected a count >= 1 or a list of distinct seeds >= 0")
    return seeds


def parse_number(value, what: str) -> float:
    """``20000``, ``2e4``, ``"20k"`` or ``"1.5M"`` -> a positive float."""
    text = str(value).strip()
    scale = {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}.get(text[-1:], 1)
    try:
        number = float(text[:-1] if scale != 1 else text)
    except ValueError:
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise CompareError(f"{what}={value!r}: expected a positive number such as 20000, 2e4 or 20k")
    return number * scale


def parse_budget(value) -> tuple[float, float]:
    """``budget.params=P [budget.tolerance=0.05]`` (or ``budget=P``) -> (params, tolerance)."""
    if not isinstance(value, dict):
        value = {"params": value}
    unknown = set(value) - {"params", "tolerance"}
    if unknown:
        raise CompareError(f"budget: unknown key(s) {sorted(unknown)}; compare matches budget.params "
                           f"(with budget.tolerance, default 0.05)")
    if "params" not in value:
        raise CompareError("budget.params=N is required, e.g. budget.params=100000")
    tol = value.get("tolerance", 0.05)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise CompareError(f"budget.tolerance={tol!r}: expected a fraction in (0, 1), e.g. 0.05")
    return parse_number(value["params"], "budget.params"), float(tol)


def parse_blocks(value) -> tuple[int, ...]:
    """Blocks per block stage: three powers of two >= 2 (tree patterns build binary trees)."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        blocks = tuple(int(b) for b in items)
    except (TypeError, ValueError):
        blocks = ()
    if len(blocks) != len(STAGE_CHANNELS) or any(b < 2 or b & (b - 1) for b in blocks):
        raise CompareError(f"blocks={value!r}: expected {len(STAGE_CHANNELS)} powers of two >= 2, "
                           f"one per block stage, e.g. blocks=2,4,4")
    return blocks


def parse_baseline(value) -> tuple[float, ...]:
    """``baseline=2`` / ``0.5,2`` / a list -> budget multiples for plain-chain rows; false or none -> ()."""
    if value is True or value is None:
        return DEFAULT_BASELINE
    if value is False or value in ("none", "false", "", []):
        return ()
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in items:
        m = parse_number(v, "baseline")
        if m == 1:
            raise CompareError("baseline=1 is chain itself; give other budget multiples, e.g. baseline=0.5,2")
        if m not in out:
            out.append(m)
    return tuple(out)


def baseline_key(multiple: float) -> str:
    return f"{REFERENCE}_{multiple:g}x"


def short_number(x: float) -> str:
    """20000 -> '20k', 1500000 -> '1.5M': for default folder names."""
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.4g}{unit}"
    return f"{x:.4g}"


# ------------------------------------------------------------------ sizing

BASE_WIDTHS = (*(c for c, _ in CONV_STAGES), *STAGE_CHANNELS)


def widths_at(multiplier: float, divisor: int) -> tuple[int, ...]:
    """Stage channels at ``multiplier``: the base widths scaled and rounded to multiples of ``divisor``."""
    return tuple(max(MIN_WIDTH, divisor * round(c * multiplier / divisor)) for c in BASE_WIDTHS)


def make_spec(pattern: str, widths, blocks, in_channels: int, num_classes: int) -> dict:
    """The comparison backbone with ``pattern`` and per-stage ``widths`` (conv stages first)."""
    nconv = len(CONV_STAGES)
    return {"pattern": pattern, "in_channels": in_channels, "num_classes": num_classes, "stem": dict(STEM),
            "conv_stages": [{"convs": 1, "channels": w, "stride": s}
                            for w, (_, s) in zip(widths[:nconv], CONV_STAGES)],
            "stages": [{"blocks": b, "channels": w, "stride": 2} for b, w in zip(blocks, widths[nconv:])]}


@dataclass
class Sized:
    """One pattern at the width that meets the budget."""

    pattern: str
    spec: dict
    widths: tuple
    multiplier: float
    divisor: int
    params: int


class _Counter:
    """Parameter counts per widths tuple, each compiled once on the meta device."""

    def __init__(self, pattern, blocks, in_channels, num_classes):
        self.args = (pattern, blocks, in_channels, num_classes)
        self.cache: dict = {}

    def spec(self, widths) -> dict:
        pattern, blocks, c, k = self.args
        return make_spec(pattern, widths, blocks, c, k)

    def __call__(self, widths) -> int:
        if widths not in self.cache:
            import torch

            from dlasearch.ir import to_module
            from dlasearch.measure import params
            from dlasearch.patterns import build

            with torch.device("meta"):  # shapes only: a huge candidate allocates nothing
                self.cache[widths] = params(to_module(build(self.spec(widths))))
        return self.cache[widths]


def _candidates(divisor: int, top: float) -> list[tuple[float, tuple]]:
    """(multiplier, widths) for every distinct width setting with multiplier in (0, top], in order.

    Widths change only where some ``c * m / divisor`` crosses k + 1/2; one
    multiplier between consecutive crossings stands for its whole interval.
    """
    cuts = sorted({divisor * (k + 0.5) / c for c in BASE_WIDTHS
                   for k in range(int(c * top / divisor) + 1) if divisor * (k + 0.5) / c < top})
    edges = [0.0, *cuts, top]
    out, seen = [], set()
    for lo, hi in zip(edges, edges[1:]):
        m = (lo + hi) / 2 if hi > lo else hi
        w = widths_at(m, divisor)
        if w not in seen:
            seen.add(w)
            out.append((m, w))
    return out


def size(pattern: str, budget: float, tolerance: float = 0.05, blocks=DEFAULT_BLOCKS, in_channels: int = 3,
         num_classes: int = 10) -> Sized:
    """Find the multiplier that puts ``pattern`` within ``tolerance`` of ``budget`` parameters.

    Parameters grow monotonically with the multiplier, so a bisection over the
    distinct width settings finds the two that bracket the budget; the closer
    one wins.  Widths are multiples of 8 when that lands within tolerance; one
    8-channel step of the widest stage changes params by about 16/width, which
    small budgets cannot absorb, so multiples of 4, 2 and 1 are tried next.
    Raises ``CompareError`` when no width fits.
    """
    count = _Counter(pattern, tuple(blocks), in_channels, num_classes)
    hi_limit = budget * (1 + tolerance)
    narrowest = count(widths_at(0.0, 1))
    if narrowest > hi_limit:
        raise CompareError(
            f"budget.params={budget:,.0f} is too small for pattern {pattern!r}: even its narrowest form "
            f"(every stage {MIN_WIDTH} channels, fixed {STEM['channels']}-channel stem) has {narrowest:,} "
            f"params; use budget.params >= {math.ceil(narrowest / (1 + tolerance)):,}")
    top = 1.0
    while count(widths_at(top, 1)) <= hi_limit:
        if top >= MAX_MULTIPLIER:
            raise CompareError(f"budget.params={budget:,.0f} is too large: pattern {pattern!r} has only "
                               f"{count(widths_at(top, 1)):,} params at width multiplier {top:g}")
        top *= 2
    nearest: list[int] = []
    for divisor in DIVISORS:
        cands = _candidates(divisor, 1.5 * top)
        lo, hi = -1, len(cands)  # invariant: params(cands[lo]) <= budget < params(cands[hi])
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if count(cands[mid][1]) <= budget:
                lo = mid
            else:
                hi = mid
        err, m, w = min((abs(count(cands[i][1]) - budget) / budget, *cands[i]) for i in (lo, hi)
                        if 0 <= i < len(cands))
        if err <= tolerance:
            return Sized(pattern, count.spec(w), w, m, divisor, count(w))
        nearest = [count(cands[i][1]) for i in (lo, hi) if 0 <= i < len(cands)]
    near = " and ".join(f"{p:,}" for p in nearest) or "none"
    raise CompareError(f"pattern {pattern!r} cannot be sized to budget.params={budget:,.0f} ±{tolerance:.0%}: "
                       f"the nearest widths give {near} params; change budget.params or budget.tolerance")


# ------------------------------------------------------------------ statistics

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
            "train_memory_bytes": a["train_memory_bytes"], "runs": len(mine), "ok_runs": len(acc[p]),
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


# ------------------------------------------------------------------ presentation

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
                     f"{r.macs / 1e6:.2f}M", f"{r.train_memory_bytes / 2 ** 20:.1f}",
                     f"{_num(100 * r.test_acc_mean, '.2f')}{pm}" + _chance_mark(r), ci, diff, _num(r.p_welch, '.3g', '–'),
                     _num(r.p_holm, '.3g', '–'), f"{_num(r.train_seconds_mean, '.1f')}{tpm}",
                     f"{r.ok_runs}/{r.runs}"])
    headers = ["pattern", "fig.", "widths", "params (vs target)", "MACs", "train MiB", "test acc % (mean ± std)",
               "95% CI", "Δ vs chain, pp [95% CI]", "p Welch", "p Holm", "train s", "runs ok"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _chance_mark(row) -> str:
    return f" {dstats.CHANCE_MARK}" if getattr(row, "at_chance", False) else ""


PLOT_STYLE = "ggplot"


@contextlib.contextmanager
def plot_style():
    """One look for every plot (also a decorator): Optuna draws its history and Pareto plots in
    ggplot and cannot be told otherwise, so the plots drawn here use ggplot too."""
    import matplotlib.style

    with matplotlib.style.context(PLOT_STYLE):
        yield


def save_figure(fig, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg (SVG ids salted with a constant, so reruns give the same file)."""
    import matplotlib

    paths = []
    with matplotlib.rc_context({"svg.hashsalt": "dlasearch"}):
        for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
            path = stem.with_suffix(f".{ext}")
            try:
                fig.savefig(path, dpi=150, bbox_inches="tight", metadata=meta)
            except OSError as e:
                raise CompareError(f"cannot write {path}: {files.explain(e)}") from None
            paths.append(path)
    return paths


def color(pattern) -> str:
    return PATTERN_COLORS.get(pattern, "#7f7f7f")


def _ci_err(r):
    """Matplotlib yerr for a row's mean ± 95% CI in percent (None when the CI is undefined)."""
    if not math.isfinite(r.test_acc_ci_low):
        return None
    return [[100 * (r.test_acc_mean - r.test_acc_ci_low)], [100 * (r.test_acc_ci_high - r.test_acc_mean)]]


def _cost_panel(ax, rows, ok, col: str, scale: float) -> None:
    """Per-seed dots and mean ± CI per row at its cost; rows with the same cost are nudged apart sideways."""
    xs = [getattr(r, col) / scale for r in rows]
    span = (max(xs) - min(xs)) or max(xs) * 0.02
    for i, (r, x) in enumerate(zip(rows, xs)):
        twins = [j for j, other in enumerate(xs) if abs(other - x) <= 0.001 * abs(x)]
        x += (twins.index(i) - (len(twins) - 1) / 2) * 0.012 * span
        pts = ok[ok.pattern == r.pattern]
        marker = "o" if r.pattern in PATTERNS else "s"
        ax.scatter([x] * len(pts), 100 * pts.test_accuracy, s=14, alpha=0.45, color=color(r.pattern), marker=marker)
        if math.isfinite(r.test_acc_mean):
            ax.errorbar([x], [100 * r.test_acc_mean], yerr=_ci_err(r), fmt=marker, ms=6, capsize=3,
                        color=color(r.pattern), label=r.pattern)
    ax.grid(alpha=0.3)


@plot_style()
def plots(summary, runs, folder: Path) -> list[Path]:
    """Accuracy vs params, vs training memory (per-seed points, mean ± 95% CI) and per-pattern spread.

    The budget-matched patterns sit within a few percent of each other, so when
    baseline rows stretch the axis they get a panel of their own (zoomed) beside
    the full view."""
    from matplotlib.figure import Figure

    ok = runs[(runs.status == "ok") & runs.test_accuracy.notna()]
    rows = list(summary.itertuples())
    matched = [r for r in rows if r.pattern in PATTERNS]
    written = []
    for stem, col, scale, xlabel in (("accuracy_vs_params", "params", 1e3, "parameters (thousands)"),
                                     ("accuracy_vs_memory", "train_memory_bytes", 2 ** 20,
                                      "training memory at the batch size (MiB)")):
        panels = [("budget-matched patterns", matched)] + ([("with params-only baselines", rows)]
                                                           if len(matched) < len(rows) else [])
        fig = Figure(figsize=(5.2 * len(panels), 4.4))
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        for ax, (title, chosen) in zip(axes, panels):
            _cost_panel(ax, chosen, ok, col, scale)
            ax.set_xlabel(xlabel)
            ax.set_title(title, fontsize=10)
        axes[0].set_ylabel("test accuracy (%)")
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
        fig.suptitle("test accuracy: seeds (dots), mean ± 95% CI")
        written += save_figure(fig, folder / stem)
    fig = Figure(figsize=(max(6.4, 0.9 * len(summary) + 1.5), 4.4))
    ax = fig.subplots()
    for i, r in enumerate(summary.itertuples()):
        pts = ok[ok.pattern == r.pattern].test_accuracy.to_numpy()
        jitter = [(j - (len(pts) - 1) / 2) * 0.06 for j in range(len(pts))]
        ax.scatter([i + d for d in jitter], 100 * pts, s=18, alpha=0.7, color=color(r.pattern))
        if math.isfinite(r.test_acc_mean):
            ax.errorbar([i + 0.25], [100 * r.test_acc_mean], yerr=_ci_err(r), fmt="D", ms=5, capsize=3, color="black")
    ref = summary[summary.pattern == REFERENCE]
    if len(ref) and math.isfinite(ref.test_acc_mean.iloc[0]):
        ax.axhline(100 * ref.test_acc_mean.iloc[0], ls="--", lw=1, color=color(REFERENCE), label="chain mean")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(range(len(summary)), list(summary.pattern), rotation=30)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("per-seed test accuracy (dots) and mean ± 95% CI (diamond)")
    ax.grid(axis="y", alpha=0.3)
    written += save_figure(fig, folder / "accuracy_spread")
    return written


# ------------------------------------------------------------------ files

def check_writable(folder: Path, option: str = "out") -> None:
    """Raise unless ``folder`` exists as a writable directory or can be created (nothing is created)."""
    files.check_writable(folder, option, CompareError)


def _write_json(path: Path, obj) -> None:
    files.write_text(path, json.dumps(obj, indent=1, default=str) + "\n", CompareError)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def check_settings(folder: Path, settings: dict) -> None:
    """Refuse a folder holding another comparison (different data, training or budget) or other files."""
    stored = _read_json(folder / SETTINGS)
    if stored is None:
        if folder.exists() and any(folder.iterdir()):
            raise CompareError(f"out={str(folder)!r} is not empty and holds no comparison ({SETTINGS} is missing "
                               f"or unreadable); choose another out= or name=")
        return
    diffs = []
    for section in sorted(settings):  # the stored file also records data_summary and torch, not compared
        old, new = stored.get(section), settings.get(section)
        if isinstance(old, dict) and isinstance(new, dict):
            diffs += [f"{section}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                      if old.get(k) != new.get(k)]
        elif old != new:
            diffs.append(f"{section}: {old!r} -> {new!r}")
    if diffs:
        raise CompareError(f"{folder} holds a comparison with other settings ({'; '.join(diffs[:4])}"
                           f"{'; ...' if len(diffs) > 4 else ''}); rerun with the same settings, or give a new "
                           f"out= or name=")


def run_path(folder: Path, pattern: str, seed: int) -> Path:
    return folder / "runs" / f"{pattern}-seed{seed}.json"


# ------------------------------------------------------------------ the comparison

def _train_config(options: dict):
    from dlasearch.train import TrainConfig

    return TrainConfig(**{**options, "progress": False})  # one progress line per run, no bars


def _contract(data_opts: dict, image_size, config, budget, tolerance, blocks) -> dict:
    train = {k: v for k, v in dataclasses.asdict(config).items()
             if k not in ("seed", "progress", "threads", "device", "eval_batch_size", "compile", "cuda_graph")}
    data = {k: v for k, v in data_opts.items() if k not in ("root", "download")}
    if data.get("path") is not None:
        data["path"] = str(Path(str(data["path"])).expanduser().resolve())
    return {"version": 1, "data": {**data, "image_size": image_size}, "train": train,
            "budget": {"params": budget, "tolerance": tolerance},
            "backbone": {"stem": STEM, "conv_stages": [list(c) for c in CONV_STAGES],
                         "stage_channels": list(STAGE_CHANNELS), "blocks": list(blocks)}}


def _measure(folder: Path, key: str, sized: Sized, ds, config, target: float) -> tuple[dict, object]:
    """The architecture record of one row (measured once, then read back), and its IR."""
    from dlasearch import ir as irmod
    from dlasearch.ir import to_module
    from dlasearch.patterns import build
    from dlasearch.train import measure_arch

    graph = build(sized.spec, name=key)
    fp = irmod.fingerprint(graph)
    path = folder / "archs" / f"{key}.json"
    stored = _read_json(path)
    if stored and stored.get("fingerprint") == fp and stored.get("target_params") == target:
        return stored, graph
    m = measure_arch(to_module(graph), ds, config, latency=False)
    rec = {"pattern": key, "built_as": sized.pattern, "fingerprint": fp, "widths": list(sized.widths),
           "multiplier": sized.multiplier, "divisor": sized.divisor, "params": m["params"],
           "target_params": target, "params_vs_target": m["params"] / target - 1, "macs": m["macs"],
           "train_memory_bytes": m["train_memory_bytes"], "batch_size": config.batch_size, "spec": sized.spec}
    files.write_text(folder / "archs" / f"{key}.ir.json", irmod.to_json(graph, indent=1) + "\n", CompareError)
    _write_json(path, rec)
    return rec, graph


def _train_one(graph, ds, config, seed: int, callback=None):
    import torch

    from dlasearch import train as trainmod
    from dlasearch.ir import to_module

    torch.manual_seed(seed)  # initial weights: the same seed gives the same network
    model = to_module(graph)
    return trainmod.train(model, ds, dataclasses.replace(config, seed=seed), test=True, callback=callback), model


def compare(patterns=None, data="digits", seeds=3, budget=None, *, root=None, path=None, limit=None,
            val_fraction=None, image_size=32, blocks=DEFAULT_BLOCKS, baseline=DEFAULT_BASELINE, out=None,
            name=None, train: dict | None = None, log=print, tracking_log=None, print_config: bool = False,
            show_progress: bool = True) -> dict:
    """Size, train and summarise every pattern; returns {"dir", "summary", "runs", "trained", "reused"}.

    ``budget`` is ``{"params": P, "tolerance": 0.05}`` or a number; ``baseline``
    the budget multiples of the plain-chain rows; ``train`` holds ``TrainConfig``
    fields (not ``seed``: that comes from ``seeds``).
    Everything is checked (options, folder, every pattern's sizing) before the
    first run trains.
    """
    import pandas as pd
    import torch

    from dlasearch import data as datamod
    from dlasearch.patterns import build
    from dlasearch.train import check_fit, data_options

    order = parse_patterns(patterns)
    if REFERENCE not in order:
        order.insert(0, REFERENCE)
        log(f"added {REFERENCE!r}: every pattern is compared with it")
    seed_list = parse_seeds(seeds)
    if budget is None:
        raise CompareError("budget.params=N is required, e.g. budget.params=100000")
    budget_params, tolerance = parse_budget(budget)
    blocks = parse_blocks(blocks)
    multiples = parse_baseline(baseline)
    train = dict(train or {})
    bad = [k for k in train if k in _NOT_TRAIN_OPTIONS]
    if bad:
        raise CompareError(f"{bad[0]}= is not a compare option: seeds come from seeds=N (or seeds=[0,5,7])")
    config = _train_config(train)
    opts = data_options(data)
    for k, v in (("root", root), ("path", path), ("limit", limit), ("val_fraction", val_fraction)):
        if v is not None:
            opts[k] = v
    opts.setdefault("seed", 0)
    label = Path(str(opts["path"])).stem if opts["name"] == "npz" and opts.get("path") else opts["name"]
    if name is not None and (not str(name) or "/" in str(name) or str(name) in (".", "..")):
        raise CompareError(f"name={name!r}: expected a plain folder name (use out= for a path)")
    folder = Path(str(out)).expanduser() if out is not None else \
        files.results_root() / "compare" / str(name or f"{label}-{short_number(budget_params)}")
    check_writable(folder)
    settings = _contract(opts, image_size, config, budget_params, tolerance, blocks)
    resolved = {"command": "compare", "patterns": order, "data": {**opts, "image_size": image_size},
                "seeds": seed_list, "budget": {"params": budget_params, "tolerance": tolerance},
                "blocks": list(blocks), "baseline": list(multiples), "out": str(folder), "log": tracking_log,
                "train": dataclasses.asdict(config)}
    if print_config:
        from dlasearch.options import print_config as show

        show(resolved)
        return {"dir": folder, "config": resolved}
    from dlasearch import tracking
    from dlasearch.progress import Progress

    tracking.parse(tracking_log)
    check_settings(folder, settings)

    load_opts = {k: v for k, v in opts.items() if k not in ("name", "seed")}
    ds = datamod.load(opts["name"], seed=opts["seed"], image_size=image_size, progress=False, **load_opts)
    chance = (dstats.chance(ds.y_test), len(ds.y_test))
    targets = {p: budget_params for p in order}
    sized = {p: size(p, budget_params, tolerance, blocks, ds.channels, ds.num_classes) for p in order}
    for m in multiples:
        key = baseline_key(m)
        targets[key] = budget_params * m
        try:
            sized[key] = size(REFERENCE, targets[key], tolerance, blocks, ds.channels, ds.num_classes)
        except CompareError as e:
            raise CompareError(f"baseline {key} ({m:g} x budget): {e}; or set baseline=false") from None
    rows = list(sized)
    check_fit(build(sized[REFERENCE].spec), ds)  # all rows share the backbone, so its input size
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CompareError(f"out={str(folder)!r}: cannot create it: {files.explain(e)}") from None
    _write_json(folder / SETTINGS, {**settings, "data_summary": ds.summary(), "torch": torch.__version__})
    from dlasearch.options import write_config

    write_config(folder, resolved)

    archs, graphs = {}, {}
    for key in rows:
        archs[key], graphs[key] = _measure(folder, key, sized[key], ds, config, targets[key])
    by_fp: dict = {}
    for key in rows:
        first = by_fp.setdefault(archs[key]["fingerprint"], key)
        archs[key]["same_as"] = first if first != key else None

    total = len(rows) * len(seed_list)
    t_start = time.perf_counter()
    progress = Progress(total * config.epochs, "compare", show=show_progress)
    try:
        records = _runs(rows, seed_list, archs, graphs, folder, ds, config, chance, progress, tracking_log, log)
    finally:
        progress.close()
    trained = sum(1 for r in records if r.pop("trained"))
    reused = len(records) - trained
    runs = pd.DataFrame(records)
    summary = summarize(runs, archs, rows, chance)
    rho, rho_p, rho_n = size_correlation(runs, order)
    table = markdown_table(summary)
    notes = _notes(summary, rho, rho_p, rho_n, budget_params, tolerance, seed_list, ds, config, multiples)
    notes += _honesty_notes(summary, seed_list, chance)
    written = _write_outputs(folder, summary, runs, table, notes)
    log("\n" + table + "\n\n" + "\n".join(f"- {n}" for n in notes))
    low = summary[summary.at_chance]
    if len(low):
        log(f"warning: mean test accuracy of {', '.join(low.pattern)} is at chance (within "
            f"{100 * dstats.chance_limit(*chance):.1f}%); their differences mean nothing; train longer (epochs=)")
    log(f"\n{trained} run(s) trained, {reused} reused in {time.perf_counter() - t_start:.0f}s; "
        f"wrote {', '.join(p.name for p in written)} to {folder}")
    return {"dir": folder, "summary": summary, "runs": runs, "trained": trained, "reused": reused,
            "files": written, "spearman": (rho, rho_p, rho_n)}


def _runs(rows, seed_list, archs, graphs, folder, ds, config, chance, progress, tracking_log, log) -> list[dict]:
    """Train (or reuse) every (row, seed) run; one record per run, with live progress per epoch."""
    import torch

    from dlasearch import tracking

    total, records = len(rows) * len(seed_list), []
    for i, (key, seed) in enumerate(((k, s) for k in rows for s in seed_list), start=1):
        a = archs[key]
        path_ = run_path(folder, key, seed)
        rec = _read_json(path_)
        twin = a["same_as"] and _read_json(run_path(folder, a["same_as"], seed))
        if rec is not None and rec.get("fingerprint") != a["fingerprint"]:
            raise CompareError(f"{path_} holds a run of another architecture than {key!r} at these settings; "
                               f"move it away, or give a new out=")
        trained = False
        if rec is not None:
            how = "done earlier"
        elif twin:
            rec = {**twin, "pattern": key, "same_as": a["same_as"]}
            _write_json(path_, rec)
            how = f"same network as {a['same_as']}"
        else:
            t0 = time.perf_counter()

            def on_epoch(epoch, metrics, tracker=None, key=key, seed=seed, i=i):
                progress.update(f"[{i}/{total}] {key} seed {seed} epoch {epoch}/{config.epochs}")
                if tracker is not None:
                    tracker.epoch(epoch, metrics)

            with tracking.open_tracker(tracking_log, folder, f"{key}-seed{seed}") as tracker:
                res, model = _train_one(graphs[key], ds, config, seed,
                                        callback=lambda e, m, t=tracker: on_epoch(e, m, t))
            trained = True
            if res.status == "ok":  # weights first: the run's .json marks it finished
                checkpoint.save(path_.with_suffix(".safetensors"), model, graphs[key], ds,
                                config=dataclasses.asdict(dataclasses.replace(config, seed=seed)),
                                name=f"{key}-seed{seed}")
            rec = {"pattern": key, "seed": seed, "fingerprint": a["fingerprint"], "status": res.status,
                   "reason": res.reason, "test_accuracy": res.test_accuracy, "val_accuracy": res.val_accuracy,
                   "train_seconds": res.train_seconds, "wall_seconds": time.perf_counter() - t0,
                   "epochs": res.epochs, "steps": res.steps, "history": res.history, "same_as": None,
                   "torch": torch.__version__, "device": config.device,
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            _write_json(path_, rec)
            how = f"{rec['wall_seconds']:.1f}s"
        progress.drop(config.epochs - (rec.get("epochs") or 0 if trained else 0))
        acc = rec.get("test_accuracy")
        low = dstats.at_chance(acc, *chance)
        log(f"[{i}/{total}] {key} seed {seed}: "
            + (f"test accuracy {100 * acc:.2f}%" + (f" {dstats.CHANCE_MARK}" if low else "")
               if acc is not None else f"status {rec.get('status')}")
            + f" ({how})")
        records.append({"pattern": key, "seed": seed, "status": rec.get("status"),
                        "test_accuracy": acc, "val_accuracy": rec.get("val_accuracy"),
                        "train_seconds": rec.get("train_seconds"), "epochs": rec.get("epochs"),
                        "steps": rec.get("steps"), "params": a["params"], "macs": a["macs"],
                        "train_memory_bytes": a["train_memory_bytes"], "widths": "-".join(map(str, a["widths"])),
                        "fingerprint": a["fingerprint"], "same_as": rec.get("same_as") or "", "at_chance": low,
                        "trained": trained})
    return records


def _notes(summary, rho, rho_p, rho_n, budget, tolerance, seeds, ds, config, multiples) -> list[str]:
    notes = [f"{ds.name}: {len(ds.y_train)} train / {len(ds.y_val)} val / {len(ds.y_test)} test images at "
             f"{ds.image_size[0]}x{ds.image_size[1]}; {config.epochs} epoch(s), batch {config.batch_size}, "
             f"lr {config.lr}; seeds {', '.join(map(str, seeds))} (initial weights, order, augmentation; "
             f"the data split is fixed).",
             f"Every pattern is within ±{tolerance:.0%} of {budget:,.0f} parameters (one width multiplier on "
             f"all stage channels). Test accuracy is on the held-out test split; CIs use the t-distribution over "
             f"seeds; Δ is against chain with Welch's t-test, p Holm adjusts for the {len(summary) - 1} "
             f"comparisons with chain."]
    for m in multiples:
        notes.append(f"{baseline_key(m)}: a plain chain sized to {m:g} x the budget (params-only baseline). Its Δ "
                     f"vs chain is what resizing a plain network to {m:g} x its parameters buys on this data "
                     f"and schedule; set each pattern's Δ beside it.")
    if math.isfinite(rho):
        notes.append(f"Spearman rank correlation of params and test accuracy over the {rho_n} budget-matched "
                     f"runs: rho = {rho:+.2f} (p = {rho_p:.2g}); near 0 means the remaining size differences "
                     f"(within ±{tolerance:.0%}) do not explain the ranking.")
    else:
        notes.append(f"Spearman rank correlation of params and test accuracy: {dstats.DASH} (needs at least "
                     f"{dstats.MIN_CORRELATION} finished runs with different params and accuracies; {rho_n} here).")
    twins = summary[summary.same_as != ""]
    for r in twins.itertuples():
        notes.append(f"{r.pattern} builds the same network as {r.same_as} (same fingerprint); its runs are "
                     f"shared, not retrained.")
    failed = summary[summary.ok_runs < summary.runs]
    for r in failed.itertuples():
        notes.append(f"{r.pattern}: {r.runs - r.ok_runs} of {r.runs} runs diverged (NaN loss) and are left "
                     f"out of its statistics.")
    return notes


def _honesty_notes(summary, seeds, chance) -> list[str]:
    """Footnotes for statistics that were not computed and for rows at chance."""
    notes = []
    if len(seeds) < dstats.MIN_SPREAD or (summary.ok_runs < dstats.MIN_SPREAD).any():
        notes.append(f"{dstats.DASH}: not computed: a std, CI, Welch test or Holm p-value needs at least "
                     f"{dstats.MIN_SPREAD} finished seeds per row (and a spread: identical accuracies give no test).")
    if summary.at_chance.any():
        level, n = chance
        notes.append(f"{dstats.CHANCE_MARK}: the mean test accuracy is within chance + 2 standard errors "
                     f"({100 * level:.1f}% + 2 SE on {n} images = {100 * dstats.chance_limit(level, n):.1f}%): "
                     f"the network learned nothing measurable on this schedule.")
    return notes


def _write_outputs(folder: Path, summary, runs, table: str, notes: list[str]) -> list[Path]:
    written = []
    for fname, text in (("comparison.csv", summary.to_csv(index=False)), ("runs.csv", runs.to_csv(index=False))):
        written.append(files.write_text(folder / fname, text, CompareError))
    images = plots(summary, runs, folder)
    md = ["# Aggregation patterns at one parameter budget", "", table, "", *[f"- {n}" for n in notes], ""]
    md += [f"![{p.stem}]({p.name})" for p in images if p.suffix == ".svg"]
    md += ["", "Per-pattern summary: [comparison.csv](comparison.csv); per run: [runs.csv](runs.csv); "
               "architectures: `archs/`; raw runs: `runs/`.", ""]
    files.write_text(folder / "comparison.md", "\n".join(md), CompareError)
    return [*written, folder / "comparison.md", *images]


# ------------------------------------------------------------------ CLI

def command(args: dict) -> int:
    """``dlasearch compare``: see docs/compare_report.md."""
    from dlasearch.train import TrainConfig

    train_names = [n for n in TrainConfig.option_names() if n not in _NOT_TRAIN_OPTIONS]
    allowed = (*OPTIONS, *train_names, "log", "print_config")
    data = args.get("data")
    if isinstance(data, dict) and "image_size" in data:
        args["image_size"] = data.pop("image_size")  # data.image_size: the spelling train and run use
    old = [k for k in ("root", "path", "limit", "val_fraction") if k in args]
    if old:
        print(f"note: {', '.join(f'{k}=' for k in old)} is now spelled "
              f"{', '.join(f'data.{k}=' for k in old)} (as in train and run)", file=sys.stderr)
    for k in args:
        if k not in allowed:
            if k in _NOT_TRAIN_OPTIONS:
                raise CompareError(f"{k}= is not a compare option: seeds come from seeds=N (or seeds=[0,5,7])")
            hint = did_you_mean(k, allowed)
            raise CompareError(f"unknown option {k!r}{hint}; allowed: {', '.join(allowed)}")
    opts = {k: args[k] for k in OPTIONS if k in args}
    train = {k: args[k] for k in train_names if k in args}
    compare(opts.pop("patterns", None), opts.pop("data", "digits"), opts.pop("seeds", 3),
            opts.pop("budget", None), train=train, log=lambda *a: print(*a, flush=True),
            tracking_log=args.get("log"), print_config=bool(args.get("print_config")), **opts)
    return 0
