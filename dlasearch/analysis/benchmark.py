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
from dlasearch.ir import from_json
from dlasearch.analysis.compare.plots import color, plot_style, save_figure
from dlasearch.search import space as spacemod
from dlasearch.search.bench import Bench, BenchError
from dlasearch.search.screen import screen
from dlasearch.search.study import make_sampler, quiet_optuna
from dlasearch.analysis.compare.statistics import holm

__all__ = ["PROXY_COLUMNS", "STRATEGIES", "relu_layers", "noise", "pattern_effects", "comparison_scores",
           "rank_agreement", "correlations", "simulate", "regret_summary", "report"]

PROXY_COLUMNS = ("params", "macs", "synflow", "snip", "grad_norm", "naswot", "zen", "zico")
DEPTH = "depth"  # ReLU layers of each architecture (``relu_layers``): a predictor every proxy is read against
NOTES = "NOTES.md"  # a benchmark's caveats, written by hand; the README opens with them
STRATEGIES = ("random", "tpe", "nsga2", "tpe+screen")
MARKS = (10, 25, 50)


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df.status == "ok") & df.val_accuracy.notna()]


def relu_layers(ir) -> int:
    """Depth as the number of ReLU layers in the IR: 1 per ``conv`` with ``relu``, 2 per basic and 3 per
    bottleneck ``block`` (one after each inner conv but the last, one after the residual add), 1 per
    ``aggregate`` with its conv unit.  Why: after a short schedule accuracy falls with depth, and most
    zero-cost proxies grow with it, so each proxy is also read with depth held fixed."""
    per_block = {"basic": 2, "bottleneck": 3, "bottleneckx": 3}
    n = 0
    for node in ir.nodes:
        d = ir.nodes[node]
        if d["kind"] == "conv":
            n += bool(d.get("relu", True))
        elif d["kind"] == "block":
            n += per_block[d.get("type", "basic")]
        elif d["kind"] == "aggregate":
            n += bool(d.get("conv", True))
    return n


def _with_depth(bench: Bench) -> pd.DataFrame:
    """``bench.df`` with the ``depth`` of each architecture whose IR is in ``archs/``."""
    def depth(fp):
        path = bench.folder / "archs" / f"{fp}.json"
        return relu_layers(from_json(path.read_text())) if path.exists() else np.nan

    return bench.df.assign(**{DEPTH: [depth(fp) for fp in bench.df.fingerprint]})


def _two_seed(df: pd.DataFrame) -> pd.Series:
    """Accuracy per fingerprint: the mean of both seeds where an architecture has two, else seed 0."""
    ok = _ok(df)
    return ok.set_index("fingerprint")[["val_accuracy", "val_accuracy_seed1"]].mean(axis=1)


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


def comparison_scores(folder: Path) -> pd.Series:
    """Mean test accuracy per pattern of a classification ``compare`` folder, its params-only baseline rows
    (``chain_2x`` ...) left out: the budget-matched ranking a benchmark's pattern effects should agree with."""
    path = Path(folder) / "comparison.csv"
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise BenchError(f"against={folder}: {path} cannot be read ({type(e).__name__}); give the folder of a "
                         f"finished `dlasearch compare` run, e.g. results/compare/cifar10_subset-1m") from None
    if not {"pattern", "figure", "test_acc_mean"} <= set(df.columns) or "decoder" in df.columns:
        raise BenchError(f"against={folder}: {path} is not a classification comparison (needs pattern, figure and "
                         f"test_acc_mean columns, no decoder); give a `dlasearch compare` folder of task=classify")
    rows = df[df.figure != "baseline"].dropna(subset=["test_acc_mean"])
    return rows.set_index("pattern").test_acc_mean * 100


def rank_agreement(effects: pd.DataFrame, scores: pd.Series, reference: str = "chain") -> dict:
    """Spearman ρ between the benchmark's pattern ranking (``reference`` at 0, every other pattern at its paired
    Δ) and ``scores`` (a comparison's accuracy per pattern), over the patterns both hold."""
    from scipy import stats

    mine = pd.Series({reference: 0.0, **dict(zip(effects.get("pattern", []), effects.get("delta_pp", [])))})
    common = [p for p in mine.index if p in scores.index]
    if len(common) < 3:
        return {"n": len(common), "spearman": None, "p": None, "patterns": common}
    r = stats.spearmanr(mine[common], scores[common])
    return {"n": len(common), "spearman": float(r.statistic), "p": float(r.pvalue), "patterns": common}


def _partial(x, y, controls) -> float:
    """Partial Spearman ρ of x and y given ``controls``: Pearson of the ranks' residuals after a least-squares
    fit on the controls' ranks (and a constant)."""
    from scipy import stats

    z = np.column_stack([np.ones(len(x))] + [stats.rankdata(c) for c in controls])
    res = [v - z @ np.linalg.lstsq(z, v, rcond=None)[0] for v in (stats.rankdata(x), stats.rankdata(y))]
    return float(np.corrcoef(*res)[0, 1]) if all(r.std() > 0 for r in res) else float("nan")


def correlations(df: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ and Kendall τ of each proxy with seed-0 accuracy, overall and per pattern; with a
    ``depth`` column also the partial ρ given params and given depth, and each proxy's ρ with depth."""
    from scipy import stats

    ok = _ok(df)
    has_depth = DEPTH in ok and ok[DEPTH].notna().all()
    rows = []
    for p in [c for c in (*PROXY_COLUMNS, DEPTH) if c in ok and (c != DEPTH or has_depth)]:
        r = ok.dropna(subset=[p])
        row = {"proxy": p, "n": len(r), "spearman": stats.spearmanr(r[p], r.val_accuracy).statistic,
               "kendall": stats.kendalltau(r[p], r.val_accuracy).statistic}
        if has_depth:
            row["partial_params"] = _partial(r[p], r.val_accuracy, [r.params]) if p != "params" else None
            row["partial_depth"] = _partial(r[p], r.val_accuracy, [r[DEPTH]]) if p != DEPTH else None
            row["rho_depth"] = stats.spearmanr(r[p], r[DEPTH]).statistic if p != DEPTH else None
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
            seen, best, best_fp, asks = set(), -math.inf, None, 0
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
                        rows.append({"strategy": strategy, "rep": rep, "trained": len(seen), "best": best,
                                     "best_fp": best_fp})
                    continue
                study.tell(t, [row["val_accuracy"], row["params"]][:len(sp["objectives"])])
                if row["fingerprint"] not in seen:
                    seen.add(row["fingerprint"])
                    if row["val_accuracy"] > best:
                        best, best_fp = row["val_accuracy"], row["fingerprint"]
                    rows.append({"strategy": strategy, "rep": rep, "trained": len(seen), "best": best,
                                 "best_fp": best_fp})
        if (rep + 1) % 10 == 0 or rep + 1 == reps:
            log(f"  {strategy}: {rep + 1}/{reps} repetitions")
    return pd.DataFrame(rows)


def regret_summary(curves: pd.DataFrame, df: pd.DataFrame, marks=MARKS) -> pd.DataFrame:
    """At each mark: the mean best seed-0 accuracy found (what the search saw) with its 95% CI over
    repetitions, and the regret (pp): the table's best accuracy minus that of the architecture found,
    both as the mean of two seeds where the table has two (``_two_seed``).  Why not "found the
    table's best": that best is one seed-0 value, and a lucky seed picks it as much as a good network."""
    from scipy import stats

    acc = _two_seed(df)
    top = float(acc.max()) * 100
    rows = []
    for s, g in curves.groupby("strategy", sort=False):
        row = {"strategy": s, "reps": g.rep.nunique()}
        for m in marks:
            at = g[g.trained == m]
            if len(at) < 2:
                continue
            seen = at.best * 100
            row[f"best@{m}"] = seen.mean()
            row[f"ci@{m}"] = stats.t.ppf(0.975, len(at) - 1) * seen.std(ddof=1) / math.sqrt(len(at))
            row[f"regret@{m}"] = top - at.best_fp.map(acc).mean() * 100
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
    cols = [c for c in (*PROXY_COLUMNS, DEPTH) if c in ok and ok[c].notna().all()]
    ncols = math.ceil(len(cols) / 2)
    with plot_style():
        fig = Figure(figsize=(3 * ncols, 5.6), layout="constrained")
        axes = fig.subplots(2, ncols)
        for ax in axes.flat[len(cols):]:
            ax.set_visible(False)
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
    if not len(df):
        return "(not enough data)"
    return df.astype(object).where(df.notna(), None).to_markdown(index=False, floatfmt=fmt, missingval="–")


def report(folder: Path, simulate_reps: int = 30, trials: int = 50, k: int = 10, proxy: str | None = None,
           command: str = "", against: list[str] | None = None, log=print) -> Path:
    """Analyse ``folder`` (a bench export): write analysis.json, regret.csv, plots and README.md.

    ``against``: comparison folders whose pattern ranking the benchmark's is checked against (kept in
    meta.json, so a later report without it checks the same ones; ``[]`` forgets them)."""
    bench = Bench(folder)
    against = [str(a) for a in (bench.meta.get("against", []) if against is None else against)]
    scores = {a: comparison_scores(Path(a)) for a in against}  # a bad folder fails before anything is written
    keep = {"against": against} if against != bench.meta.get("against", []) else {}
    if command and command != bench.meta.get("command"):  # the latest build's command line, kept for reports
        keep["command"] = command
    if keep:
        bench.meta.update(keep)
        files.write_atomic(folder / "meta.json", json.dumps(bench.meta, indent=1))
    command = bench.meta.get("command") or command
    df = _with_depth(bench)
    ok = _ok(df)
    ceiling, effects, corr = noise(df), pattern_effects(df, bench.grid), correlations(df)
    agreement = {a: rank_agreement(effects, s) for a, s in scores.items()}
    zero_cost = corr[~corr.proxy.isin(["params", "macs", DEPTH])]
    chosen = proxy or (zero_cost.sort_values("spearman", ascending=False).proxy.iloc[0] if len(zero_cost) else "params")
    complete = len(bench.grid) >= bench.meta["grid"]
    curves = pd.DataFrame()
    if simulate_reps and complete:
        cache = folder / "regret.csv"
        key = f"reps={simulate_reps} trials={trials} k={k} proxy={chosen}"
        if cache.exists() and (folder / "regret.key").exists() and (folder / "regret.key").read_text() == key:
            curves = pd.read_csv(cache)
        if "best_fp" not in curves:  # none cached, another key, or cached before regret named what it found
            t0 = time.time()
            curves = pd.concat([simulate(bench, s, simulate_reps, trials, k, chosen, log) for s in STRATEGIES],
                               ignore_index=True)
            log(f"  replayed {len(STRATEGIES)} strategies x {simulate_reps} repetitions in {time.time() - t0:.0f} s")
            files.write_atomic(cache, curves.to_csv(index=False))
            files.write_atomic(folder / "regret.key", key)
    top = float(ok.val_accuracy.max()) if len(ok) else float("nan")
    regret = regret_summary(curves, df) if len(curves) else pd.DataFrame()
    if len(ok):
        _plot_proxies(df, folder)
    if len(curves):
        _plot_regret(curves, top, folder)
    analysis = {"noise": ceiling, "screen_proxy": chosen, "top_accuracy": top,
                "top_two_seed_accuracy": float(_two_seed(df).max()) if len(ok) else None,
                "median_trial_s": {k: c.get("median_trial_s") for k, c in bench.meta["cost"].items() if c},
                "pattern_effects": effects.to_dict("records"), "rank_agreement": agreement,
                "correlations": corr.astype(object).where(corr.notna(), None).to_dict("records"),
                "regret": regret.to_dict("records")}
    files.write_atomic(folder / "analysis.json", json.dumps(analysis, indent=1, default=float))
    files.write_atomic(folder / "README.md", _readme(bench, ok, ceiling, effects, corr, regret, chosen, k,
                                                     simulate_reps, trials, complete, command, agreement))
    log(f"wrote {folder / 'README.md'}")
    return folder


def _machine_text(machine: dict) -> str:
    """CPU model, cores and torch (a meta.json from before that recorded only the architecture and platform
    is shown without the platform string, which names a kernel and host)."""
    cpu = machine.get("cpu") or machine.get("processor", "?")
    cores = f", {machine['cores']} cores" if machine.get("cores") else ""
    return f"{cpu}{cores}, torch {machine.get('torch', '?')}"


def _agreement_lines(agreement: dict) -> list[str]:
    """One line per comparison the pattern ranking is checked against."""
    lines = []
    for folder, a in agreement.items():
        if a["spearman"] is None:
            lines.append(f"- `{folder}`: only {a['n']} pattern(s) in common, too few to rank.")
        else:
            lines.append(f"- `{folder}`: Spearman ρ **{a['spearman']:+.2f}** (p {a['p']:.2g}) over {a['n']} patterns "
                         f"({', '.join(a['patterns'])}).")
    return lines


def _readme(bench: Bench, ok, ceiling, effects, corr, regret, proxy, k, reps, trials, complete, command,
            agreement=None) -> str:
    m, name = bench.meta, bench.meta["name"]
    sp = spacemod.load(str(bench.space_path))
    cost = m["cost"]
    per_pattern = ok.groupby("pattern").agg(architectures=("fingerprint", "count"),
                                            mean_acc=("val_accuracy", lambda s: s.mean() * 100),
                                            best_acc=("val_accuracy", lambda s: s.max() * 100),
                                            median_params=("params", "median")).reset_index()
    notes = bench.folder / NOTES
    lines = [f"# Benchmark `{name}`", "", *([notes.read_text().strip(), ""] if notes.exists() else []),
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
             f"- Machine: {_machine_text(m['machine'])}."]
    for label, c in cost.items():
        if c:
            median = f", median {c['median_trial_s']:.0f} s per trained architecture" if "median_trial_s" in c else ""
            lines.append(f"- Cost ({'seed 0' if label == 'first' else 'second seed'}): {c['trials']} trials, "
                         f"{c['trial_s'] / 3600:.2f} h of trial time over {c['workers']} worker process(es){median}, "
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
    if agreement:
        lines += ["Does this ranking carry over to networks trained at a matched parameter budget? The patterns ranked "
                  "by Δ above (chain at 0) against each comparison's mean test accuracy per pattern (its params-only "
                  "baseline rows left out):", "", *_agreement_lines(agreement), ""]
    overall = corr[[c for c in corr.columns if not c.startswith("spearman_")]]
    lines += ["## Zero-cost proxies against accuracy", "",
              "Spearman ρ and Kendall τ of each proxy with seed-0 accuracy over all architectures; `partial_params` "
              "and `partial_depth`: partial Spearman ρ with params or depth held fixed (Pearson correlation of the "
              "rank residuals after a linear fit on the control's ranks); `rho_depth`: the proxy's ρ with depth. "
              "Depth is the number of ReLU layers of each architecture's IR (one per conv, two per basic and three "
              "per bottleneck block, one per aggregation node), a baseline like params and MACs. Proxies are scored "
              "on one fixed batch of 64 training images with seeded initial weights under `init=original` (He "
              "init), whatever init the benchmark trained with: under `zero-last` the classifier starts at zero, "
              "so synflow is exactly 0 and snip is constant (0) for every network.", "",
              _md(overall, ".3f"), "", "Spearman ρ within each pattern:", "",
              _md(corr[["proxy"] + [c for c in corr.columns if c.startswith("spearman_")]], ".3f"), "",
              "![proxies](proxies.png)", ""]
    lines += ["## Search strategies replayed on the table", ""]
    if len(regret):
        two = int(ok.val_accuracy_seed1.notna().sum())
        lines += [f"{reps} repetitions of each strategy, {trials} architectures trained each. `best@N`: mean over "
                  f"repetitions of the best seed-0 validation accuracy (%) found after N trained (what the search "
                  f"sees), `ci`: half-width of its 95% CI. `regret@N` (pp): the table's best accuracy minus that of "
                  f"the architecture found, each taken as the mean of its two seeds where it has both ({two} of "
                  f"{len(ok)}), else its seed-0 value: a search that picks a lucky seed-0 value is not credited "
                  f"with the noise. `tpe+screen` trains the best of {k} TPE proposals by `{proxy}` (the zero-cost "
                  f"proxy best correlated with accuracy on this table, which flatters it); `nsga2` searches "
                  f"accuracy against params.", "",
                  _md(regret, ".2f"), "", "![regret](regret.png)", ""]
    else:
        lines += ["Replayed only on a complete benchmark.", ""]
    return "\n".join(lines) + "\n"
