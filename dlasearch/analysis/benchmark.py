"""What a benchmark says: noise ceiling, pattern effects, proxy correlations, search regret.

Everything here reads a finished ``results/bench/<name>/`` folder (``search.bench`` writes it)
and adds ``analysis.json``, ``regret.csv``, the plots and ``README.md``, so a report can be
rewritten without training anything. Search strategies are replayed against the table: each
repetition is a fresh in-memory Optuna study whose trials are answered by lookup.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from dlasearch import files
from dlasearch.analysis.compare.plots import color, plot_style, save_figure
from dlasearch.search import space as spacemod
from dlasearch.search.bench import Bench, BenchError
from dlasearch.search.screen import screen
from dlasearch.search.study import make_sampler, quiet_optuna

__all__ = ["PROXY_COLUMNS", "STRATEGIES", "noise", "pattern_effects", "correlations", "simulate",
           "regret_summary", "report"]

PROXY_COLUMNS = ("params", "macs", "synflow", "snip", "grad_norm", "naswot", "zen", "zico")
STRATEGIES = ("random", "tpe", "nsga2", "tpe+screen")
MARKS = (10, 25, 50)


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df.status == "ok") & df.val_accuracy.notna()]


def noise(df: pd.DataFrame) -> dict:
    """The noise ceiling: how well seed 0 predicts seed 1 on the repeated architectures."""
    from scipy import stats

    r = _ok(df).dropna(subset=["val_accuracy_seed1"])
    if len(r) < 3:
        return {"n": len(r)}
    d = (r.val_accuracy_seed1 - r.val_accuracy) * 100
    return {"n": len(r), "spearman": stats.spearmanr(r.val_accuracy, r.val_accuracy_seed1).statistic,
            "kendall": stats.kendalltau(r.val_accuracy, r.val_accuracy_seed1).statistic,
            "mean_abs_diff_pp": float(d.abs().mean()), "sd_diff_pp": float(d.std(ddof=1)),
            "seed_sd_pp": float(d.std(ddof=1) / math.sqrt(2))}


def pattern_effects(df: pd.DataFrame, grid: pd.DataFrame, reference: str = "chain") -> pd.DataFrame:
    """Each pattern against ``reference`` on the same backbone (depth, width, block): paired Δ, CI, Holm p."""
    from scipy import stats

    from dlasearch.analysis.compare.statistics import holm

    keys = [c for c in grid.columns if c.startswith("param_") and c != "param_pattern"]
    acc = _ok(df).set_index("fingerprint").val_accuracy
    g = grid.assign(acc=grid.fingerprint.map(acc)).dropna(subset=["acc"])
    g = g.assign(cell=g[keys].astype(str).agg("|".join, axis=1))
    wide = g.pivot_table(index="cell", columns="param_pattern", values="acc", aggfunc="first")
    if reference not in wide:
        return pd.DataFrame()
    rows = []
    for p in [c for c in wide.columns if c != reference]:
        pair = wide[[p, reference]].dropna()
        if len(pair) < 2:
            continue
        d = (pair[p] - pair[reference]) * 100
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        rows.append({"pattern": p, "cells": len(d), "mean_acc": pair[p].mean() * 100,
                     "delta_pp": d.mean(), "ci_low": d.mean() - half, "ci_high": d.mean() + half,
                     "wins": int((d > 0).sum()), "p": stats.ttest_rel(pair[p], pair[reference]).pvalue})
    out = pd.DataFrame(rows)
    if len(out):
        out["p_holm"] = out.pattern.map(holm(dict(zip(out.pattern, out.p))))
        out = out.sort_values("delta_pp", ascending=False)
    return out


def correlations(df: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ and Kendall τ of each proxy with seed-0 accuracy, overall and per pattern."""
    from scipy import stats

    ok = _ok(df)
    rows = []
    for p in [c for c in PROXY_COLUMNS if c in ok]:
        r = ok.dropna(subset=[p])
        row = {"proxy": p, "n": len(r), "spearman": stats.spearmanr(r[p], r.val_accuracy).statistic,
               "kendall": stats.kendalltau(r[p], r.val_accuracy).statistic}
        for pat, sub in r.groupby("pattern"):
            row[f"spearman_{pat}"] = stats.spearmanr(sub[p], sub.val_accuracy).statistic if len(sub) > 2 else None
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ search strategies against the table

def _strategy_space(bench: Bench, strategy: str, trials: int) -> dict:
    sp = spacemod.load(str(bench.space_path))
    sampler = {"tpe+screen": "tpe"}.get(strategy, strategy)
    sp["study"] = {**sp["study"], "sampler": sampler, "trials": trials}
    sp["objectives"] = ["val_accuracy", "params"] if strategy == "nsga2" else ["val_accuracy"]
    return sp


def simulate(bench: Bench, strategy: str, reps: int = 30, trials: int = 50, k: int = 10,
             proxy: str = "synflow", log=print) -> pd.DataFrame:
    """Best seed-0 accuracy found after each trained architecture, for ``reps`` seeded repetitions.

    A repeated architecture is answered from the study as ``dlasearch run`` does, so the x axis
    counts distinct architectures trained; ``tpe+screen`` trains the best of ``k`` TPE proposals
    by ``proxy``.
    """
    if strategy not in STRATEGIES:
        raise BenchError(f"strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    rows = []
    sp = _strategy_space(bench, strategy, trials)

    def lookup(t):
        spacemod.sample(sp, t)
        return bench.row(bench.fingerprint_of(t.params) or "")

    def score(t):
        row = lookup(t)
        return None if row is None else row.get(proxy)

    for rep in range(reps):
        with quiet_optuna(optuna.logging.ERROR):
            study = optuna.create_study(directions=["maximize"] * (len(sp["objectives"]) == 1)
                                        or ["maximize", "minimize"], sampler=make_sampler(sp, offset=rep))
            seen, best, asks = set(), -math.inf, 0
            while len(seen) < trials and asks < 20 * trials:
                if strategy == "tpe+screen":
                    screen(study, k, score, proxy)
                t = study.ask()
                asks += 1
                row = lookup(t)
                if row is None or row["val_accuracy"] is None:
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
                    if row is not None and row["fingerprint"] not in seen:  # trained, and diverged
                        seen.add(row["fingerprint"])
                        rows.append({"strategy": strategy, "rep": rep, "trained": len(seen), "best": best})
                    continue
                study.tell(t, [row["val_accuracy"], row["params"]][:len(sp["objectives"])])
                if row["fingerprint"] not in seen:
                    seen.add(row["fingerprint"])
                    best = max(best, row["val_accuracy"])
                    rows.append({"strategy": strategy, "rep": rep, "trained": len(seen), "best": best})
        if (rep + 1) % 10 == 0 or rep + 1 == reps:
            log(f"  {strategy}: {rep + 1}/{reps} repetitions")
    return pd.DataFrame(rows)


def regret_summary(curves: pd.DataFrame, top: float, marks=MARKS) -> pd.DataFrame:
    """Mean best-found accuracy and regret (pp) at each mark, with the 95% CI of the mean over repetitions."""
    from scipy import stats

    rows = []
    for s, g in curves.groupby("strategy", sort=False):
        row = {"strategy": s, "reps": g.rep.nunique()}
        for m in marks:
            at = g[g.trained == m].best * 100
            if len(at) < 2:
                continue
            half = stats.t.ppf(0.975, len(at) - 1) * at.std(ddof=1) / math.sqrt(len(at))
            row[f"best@{m}"] = at.mean()
            row[f"ci@{m}"] = half
            row[f"regret@{m}"] = top * 100 - at.mean()
            row[f"found_top@{m}"] = float((at >= top * 100 - 1e-9).mean())
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ plots and README

def _plot_regret(curves: pd.DataFrame, top: float, folder: Path) -> None:
    from matplotlib.figure import Figure

    with plot_style():
        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        for s, g in curves.groupby("strategy", sort=False):
            by = g.groupby("trained").best
            m, sd, n = by.mean() * 100, by.std(ddof=1) * 100, by.count()
            half = 1.96 * sd / np.sqrt(n)
            ax.plot(m.index, m.values, label=s)
            ax.fill_between(m.index, (m - half).values, (m + half).values, alpha=0.2)
        ax.axhline(top * 100, color="k", lw=0.8, ls="--", label="best in table")
        ax.set_xlabel("architectures trained")
        ax.set_ylabel("best validation accuracy found (%)")
        ax.set_title("Search strategies replayed on the benchmark (mean, 95% CI)")
        ax.legend()
        save_figure(fig, folder / "regret")


def _plot_proxies(df: pd.DataFrame, folder: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    ok = _ok(df)
    cols = [c for c in PROXY_COLUMNS if c in ok]
    ncols = math.ceil(len(cols) / 2)
    with plot_style():
        fig = Figure(figsize=(3 * ncols, 5.6), layout="constrained")
        axes = fig.subplots(2, ncols)
        for ax, p in zip(axes.flat, cols):
            for pat, sub in ok.groupby("pattern"):
                ax.scatter(sub[p], sub.val_accuracy * 100, s=6, label=pat, color=color(pat))
            if p in ("params", "macs", "synflow", "snip", "grad_norm") and (ok[p] > 0).all():
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # short log ranges label minor ticks on top of each other
            ax.set_title(p, fontsize=9)
            ax.tick_params(labelsize=7)
        axes.flat[0].legend(fontsize=6, markerscale=2)
        fig.supylabel("validation accuracy (%)", fontsize=9)
        save_figure(fig, folder / "proxies")


def _md(df: pd.DataFrame, fmt: str = ".3f") -> str:
    return df.to_markdown(index=False, floatfmt=fmt) if len(df) else "(not enough data)"


def report(folder: Path, simulate_reps: int = 30, trials: int = 50, k: int = 10, proxy: str | None = None,
           command: str = "", log=print) -> Path:
    """Analyse ``folder`` (a bench export): write analysis.json, regret.csv, plots and README.md."""
    bench = Bench(folder)
    if command and not bench.meta.get("command"):  # the first build's command line, kept for later reports
        files.write_atomic(folder / "meta.json", json.dumps({**bench.meta, "command": command}, indent=1))
    command = bench.meta.get("command") or command
    df = bench.df
    ok = _ok(df)
    ceiling, effects, corr = noise(df), pattern_effects(df, bench.grid), correlations(df)
    zero_cost = corr[~corr.proxy.isin(["params", "macs"])]
    chosen = proxy or (zero_cost.sort_values("spearman", ascending=False).proxy.iloc[0] if len(zero_cost) else "params")
    complete = len(bench.grid) >= bench.meta["grid"]
    curves = pd.DataFrame()
    if simulate_reps and complete:
        cache = folder / "regret.csv"
        key = f"reps={simulate_reps} trials={trials} k={k} proxy={chosen}"
        if cache.exists() and (folder / "regret.key").exists() and (folder / "regret.key").read_text() == key:
            curves = pd.read_csv(cache)
        else:
            t0 = time.time()
            curves = pd.concat([simulate(bench, s, simulate_reps, trials, k, chosen, log) for s in STRATEGIES],
                               ignore_index=True)
            log(f"  replayed {len(STRATEGIES)} strategies x {simulate_reps} repetitions in {time.time() - t0:.0f} s")
            files.write_atomic(cache, curves.to_csv(index=False))
            files.write_atomic(folder / "regret.key", key)
    top = float(ok.val_accuracy.max()) if len(ok) else float("nan")
    regret = regret_summary(curves, top) if len(curves) else pd.DataFrame()
    if len(ok):
        _plot_proxies(df, folder)
    if len(curves):
        _plot_regret(curves, top, folder)
    analysis = {"noise": ceiling, "screen_proxy": chosen, "top_accuracy": top,
                "pattern_effects": effects.to_dict("records"), "correlations": corr.to_dict("records"),
                "regret": regret.to_dict("records")}
    files.write_atomic(folder / "analysis.json", json.dumps(analysis, indent=1, default=float))
    files.write_atomic(folder / "README.md", _readme(bench, ok, ceiling, effects, corr, regret, chosen, k,
                                                     simulate_reps, trials, complete, command))
    log(f"wrote {folder / 'README.md'}")
    return folder


def _readme(bench: Bench, ok, ceiling, effects, corr, regret, proxy, k, reps, trials, complete, command) -> str:
    m, name = bench.meta, bench.meta["name"]
    sp = spacemod.load(str(bench.space_path))
    cost = m["cost"]
    per_pattern = ok.groupby("pattern").agg(architectures=("fingerprint", "count"),
                                            mean_acc=("val_accuracy", lambda s: s.mean() * 100),
                                            best_acc=("val_accuracy", lambda s: s.max() * 100),
                                            median_params=("params", "median")).reset_index()
    lines = [f"# Benchmark `{name}`", "",
             f"{m['architectures']} distinct architectures of space `{m['space']}` "
             f"({m['grid_points_done']} of {m['grid']} grid points"
             + ("" if complete else ", **incomplete: a uniform random sample so far**")
             + f"), each trained once; {m['repeats']} retrained with a second seed.", "",
             "## How it was built", "", "```sh", command or f"dlasearch bench build name={name} space={m['space']}",
             "```", "",
             f"- Data: `{sp['data']['name']}` {sp['data'].get('path') or ''}, {sp['data']['image_size']}px, "
             f"validation fraction {sp['data']['val_fraction']} (accuracy is on that validation split).",
             f"- Schedule: {sp['train']['epochs']} epochs, batch {sp['train']['batch_size']}, lr {sp['train']['lr']}, "
             f"warm-up {sp['train']['warmup_epochs']} epoch(s) then cosine, SGD with Nesterov momentum, "
             f"init={sp['train'].get('init', 'original')}.",
             f"- Machine: {m['machine']['processor']}, {m['machine']['platform']}, torch {m['machine']['torch']}."]
    for label, c in cost.items():
        if c:
            lines.append(f"- Cost ({'seed 0' if label == 'first' else 'second seed'}): {c['trials']} trials, "
                         f"{c['trial_s'] / 3600:.2f} h of trial time over {c['workers']} worker process(es), "
                         f"first start {c['start']}, last finish {c['end']} ({c['wall_s'] / 60:.0f} min apart, "
                         f"pauses between runs included).")
    lines += ["", "Files: `bench.csv` (one row per architecture: pattern, params, MACs, train memory in bytes, "
              "accuracy per seed, proxies), `grid.csv` (trial parameters to fingerprint), `archs/<fingerprint>.json` "
              "(the IR), `space.yaml`, `meta.json`, `analysis.json`, `regret.csv`.", "",
              "## Per pattern", "", _md(per_pattern, ".1f"), ""]
    lines += ["## Noise ceiling", ""]
    if ceiling.get("n", 0) >= 3:
        lines += [f"{ceiling['n']} architectures trained with two seeds: Spearman {ceiling['spearman']:.3f}, "
                  f"Kendall τ {ceiling['kendall']:.3f}; mean |Δ| {ceiling['mean_abs_diff_pp']:.2f} pp, so one run's "
                  f"seed-to-seed standard deviation is about {ceiling['seed_sd_pp']:.2f} pp. No predictor of a single "
                  f"run's accuracy can rank much better than the other seed does.", ""]
    else:
        lines += ["Not enough repeated architectures yet.", ""]
    lines += ["## Patterns against the plain chain on the same backbone", "",
              "Each pattern's accuracy minus the chain's on the same depth, width and block (paired over backbone "
              "cells), in percentage points, with its 95% CI, paired t-test p and Holm-corrected p.", "",
              _md(effects.rename(columns={"delta_pp": "Δ pp", "ci_low": "CI low", "ci_high": "CI high"}), ".3g"), ""]
    show = corr[["proxy", "n", "spearman", "kendall"] + [c for c in corr.columns if c.startswith("spearman_")]]
    lines += ["## Zero-cost proxies against accuracy", "",
              "Spearman ρ and Kendall τ over all architectures, then Spearman within each pattern. Proxies are "
              "scored on one fixed batch of 64 training images with seeded initial weights.", "",
              _md(show, ".3f"), "", "![proxies](proxies.png)", ""]
    lines += ["## Search strategies replayed on the table", ""]
    if len(regret):
        lines += [f"{reps} repetitions of each strategy, {trials} architectures trained each. `best@N`: mean best "
                  f"validation accuracy (%) after N trained, `ci`: half-width of its 95% CI, `regret`: best in table "
                  f"minus it, `found_top`: share of repetitions that found the table's best. `tpe+screen` trains "
                  f"the best of {k} TPE proposals by `{proxy}`; `nsga2` searches accuracy against params.", "",
                  _md(regret, ".2f"), "", "![regret](regret.png)", ""]
    else:
        lines += ["Replayed only on a complete benchmark.", ""]
    return "\n".join(lines) + "\n"
