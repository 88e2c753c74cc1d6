"""Plots of a comparison (accuracy vs params, vs training memory, per-pattern spread, validation curves), PNG + SVG."""
from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path

from dlasearch import files
from dlasearch.analysis.compare.statistics import ACCURACY, Metric
from dlasearch.errors import CompareError

__all__ = ['plot_style', 'save_figure', 'color', 'plots', 'curves']

PATTERN_COLORS = {"chain": "#4d4d4d", "skip": "#1f77b4", "ida": "#2ca02c", "tree": "#ff7f0e",
                  "reentrant": "#9467bd", "hda": "#d62728", "dla": "#17becf"}


PLOT_STYLE = "ggplot"
# dense rows (pattern+decoder): the pattern's colour, one marker per decoder
DECODER_MARKERS = {"none": "o", "fcn": "v", "fpn": "p", "unet": "^", "ida_up": "D", "bifpn": "P", "nasfpn": "X",
                   "hrnet_fuse": "*"}


@contextlib.contextmanager
def plot_style():
    """One look for every plot of comparisons and reports (also a decorator), set per figure so a
    caller's own matplotlib style is left as it was."""
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
    """A pattern's colour; a dense row ``dla+fpn`` takes its pattern's."""
    return PATTERN_COLORS.get(str(pattern).partition("+")[0], "#7f7f7f")


def _marker(r) -> str:
    if r.figure == "baseline":
        return "s"
    return DECODER_MARKERS.get(r.pattern.partition("+")[2].partition(".")[0], "o")  # ida_up.sum: ida_up's


def _stat(r, metric: Metric, k: str) -> float:
    return getattr(r, f"{metric.prefix}_{k}")


def _ci_err(r, metric: Metric = ACCURACY):
    """Matplotlib yerr for a row's mean ± 95% CI in percent (None when the CI is undefined)."""
    mean, lo, hi = (_stat(r, metric, k) for k in ("mean", "ci_low", "ci_high"))
    if not math.isfinite(lo):
        return None
    return [[100 * (mean - lo)], [100 * (hi - mean)]]


def _cost_panel(ax, rows, ok, col: str, scale: float, metric: Metric = ACCURACY) -> None:
    """Per-seed dots and mean ± CI per row at its cost; rows with the same cost are nudged apart sideways."""
    xs = [getattr(r, col) / scale for r in rows]
    span = (max(xs) - min(xs)) or max(xs) * 0.02
    for i, (r, x) in enumerate(zip(rows, xs)):
        twins = [j for j, other in enumerate(xs) if abs(other - x) <= 0.001 * abs(x)]
        x += (twins.index(i) - (len(twins) - 1) / 2) * 0.012 * span
        pts = ok[ok.pattern == r.pattern]
        marker = "o" if metric is ACCURACY and r.figure != "baseline" else _marker(r)
        ax.scatter([x] * len(pts), 100 * pts[metric.column], s=14, alpha=0.45, color=color(r.pattern), marker=marker)
        if math.isfinite(_stat(r, metric, "mean")):
            ax.errorbar([x], [100 * _stat(r, metric, "mean")], yerr=_ci_err(r, metric), fmt=marker, ms=6, capsize=3,
                        color=color(r.pattern), label=r.pattern)
    ax.grid(alpha=0.3)


@plot_style()
def plots(summary, runs, folder: Path, metric: Metric = ACCURACY) -> list[Path]:
    """Score vs params, vs training memory (per-seed points, mean ± 95% CI) and per-row spread.

    The budget-matched patterns sit within a few percent of each other, so when
    baseline rows stretch the axis they get a panel of their own (zoomed) beside
    the full view.  Files are named ``accuracy_*`` for classification and ``<score>_*``
    (``miou_fg_vs_params``) for dense comparisons."""
    from matplotlib.figure import Figure

    ok = runs[(runs.status == "ok") & runs[metric.column].notna()]
    rows = list(summary.itertuples())
    matched = [r for r in rows if r.figure != "baseline"]
    name = "accuracy" if metric is ACCURACY else metric.column.removeprefix("test_")
    written = []
    for stem, col, scale, xlabel in ((f"{name}_vs_params", "params", 1e3, "parameters (thousands)"),
                                     (f"{name}_vs_memory", "train_memory_bytes", 2 ** 20,
                                      "training memory at the batch size (MiB)")):
        panels = [("budget-matched patterns", matched)] + ([("with params-only baselines", rows)]
                                                           if len(matched) < len(rows) else [])
        fig = Figure(figsize=(5.2 * len(panels), 4.4))
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        for ax, (title, chosen) in zip(axes, panels):
            _cost_panel(ax, chosen, ok, col, scale, metric)
            ax.set_xlabel(xlabel)
            ax.set_title(title, fontsize=10)
        axes[0].set_ylabel(f"{metric.label} (%)")
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
        fig.suptitle(f"{metric.label}: seeds (dots), mean ± 95% CI")
        written += save_figure(fig, folder / stem)
    fig = Figure(figsize=(max(6.4, 0.9 * len(summary) + 1.5), 4.4))
    ax = fig.subplots()
    for i, r in enumerate(summary.itertuples()):
        pts = ok[ok.pattern == r.pattern][metric.column].to_numpy()
        jitter = [(j - (len(pts) - 1) / 2) * 0.06 for j in range(len(pts))]
        ax.scatter([i + d for d in jitter], 100 * pts, s=18, alpha=0.7, color=color(r.pattern))
        if math.isfinite(_stat(r, metric, "mean")):
            ax.errorbar([i + 0.25], [100 * _stat(r, metric, "mean")], yerr=_ci_err(r, metric), fmt="D", ms=5,
                        capsize=3, color="black")
    ref = summary[summary.pattern == metric.reference][f"{metric.prefix}_mean"]
    if len(ref) and math.isfinite(ref.iloc[0]):
        ax.axhline(100 * ref.iloc[0], ls="--", lw=1, color=color(metric.reference), label=f"{metric.reference} mean")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(range(len(summary)), list(summary.pattern), rotation=30)
    ax.set_ylabel(f"{metric.label} (%)")
    ax.set_title(f"per-seed {metric.label} (dots) and mean ± 95% CI (diamond)")
    ax.grid(axis="y", alpha=0.3)
    written += save_figure(fig, folder / f"{name}_spread")
    return written


@plot_style()
def curves(histories: dict, folder: Path, metric: Metric = ACCURACY) -> list[Path]:
    """Validation score per epoch of every row: the mean over its seeds, the band their min..max.

    It shows whether the schedule was long enough: a row still climbing at its last epoch would rank
    differently with more training.  ``histories`` maps a row to its runs' per-epoch records."""
    from matplotlib.figure import Figure

    key = "val_accuracy" if metric is ACCURACY else "val_score"
    fig = Figure(figsize=(7.2, 4.4))
    ax = fig.subplots()
    drawn = 0
    for row, runs in histories.items():
        by_epoch: dict = {}
        for history in runs:
            for h in history:
                if isinstance(h, dict) and isinstance(h.get(key), (int, float)) and math.isfinite(h[key]):
                    by_epoch.setdefault(h["epoch"], []).append(100 * h[key])
        if not by_epoch:
            continue
        epochs = sorted(by_epoch)
        values = [by_epoch[e] for e in epochs]
        mean = [sum(v) / len(v) for v in values]
        style = "--" if re.search(r"_[\d.]+x$", row) else "-"  # the params-only baselines (chain_2x) dashed
        ax.plot(epochs, mean, style, lw=1.4, color=color(row), marker=DECODER_MARKERS.get(row.partition("+")[2].partition(".")[0]),
                markevery=max(1, len(epochs) // 6), ms=4, label=f"{row} ({max(len(v) for v in values)} seeds)")
        ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], color=color(row), alpha=0.12)
        drawn += 1
    if not drawn:
        return []
    name = "accuracy" if metric is ACCURACY else metric.column.removeprefix("test_")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric.label.removeprefix('test ')} (%)")
    ax.set_title("validation score per epoch: mean over seeds (line), min..max (band)", fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, folder / f"{name}_curve")
