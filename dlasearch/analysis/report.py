"""One report per search study: ``dlasearch report study=NAME``.

A study (journal file or RDB such as PostgreSQL) becomes a folder of plain
files a reader can open without Optuna: the trials table (CSV + markdown), the
optimisation history (one objective) or the Pareto front (several), parameter
importance, accuracy against params/MACs/training memory coloured by pattern,
graphviz diagrams of the top-k architectures, and ``report.md`` linking them
all with relative links.  It works on a running study too (it reports what is
finished and says how many trials are still running).  A dense study (``space=seg``) is ranked
and plotted by its score (``miou_fg``) and shows its best trial's masks beside the ground truth.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

from dlasearch import files as dfiles, stats
from dlasearch.analysis.compare import check_writable, color, plot_style, save_figure
from dlasearch.errors import CompareError, DLASearchError, ReportError
from dlasearch import search
from dlasearch.analysis import render
from dlasearch.analysis.predictions import prediction_grid
from dlasearch.ir import from_json, to_json
from dlasearch.search import attrs, confirm
from dlasearch.search.results import SE_COLUMN, TIE_COLUMN, tie_note

__all__ = ['objectives', 'complete_trials', 'top_trials', 'progress_plot', 'importance', 'importance_plot',
           'accuracy_plot', 'diagrams', 'report', 'command']

MARKER = "report.json"
COSTS = (("params", 1e3, "parameters (thousands)"), ("macs", 1e6, "MACs per image (millions)"),
         ("train_memory", 2 ** 20, "training memory (MiB)"))
# how each objective is plotted: (divide by, axis label); accuracy in percent like every other plot
UNITS = {"val_accuracy": (0.01, "validation accuracy (%)"), "miou_fg": (0.01, "validation foreground mIoU (%)"),
         "boundary_ods": (0.01, "validation boundary ODS (%)"), "train_seconds": (1, "training time (s)"),
         **{c: (scale, label) for c, scale, label in COSTS}}
SCORES = ("val_accuracy", "miou_fg", "boundary_ods")  # a study's score objective (search.space.SCORES)


# ------------------------------------------------------------------ loading

def objectives(study) -> list[str]:
    """Objective names from the space stored with the study (``objective<i>`` for foreign studies)."""
    space = _space(study)
    names = space.get("objectives") if space else None
    if isinstance(names, list) and len(names) == len(study.directions):
        return [str(n) for n in names]
    return [f"objective{i}" for i in range(len(study.directions))]


def _space(study) -> dict:
    try:
        return json.loads(study.user_attrs.get(attrs.SPACE) or "{}")
    except json.JSONDecodeError:
        return {}


def score_name(study) -> str:
    """The study's score (``val_accuracy``, or a dense task's ``miou_fg`` / ``boundary_ods``)."""
    return next((n for n in objectives(study) if n in SCORES), "val_accuracy")


def _score(t):
    """A trial's validation score: ``val_score`` (the task's), else ``val_accuracy`` (studies from before it)."""
    u = t.user_attrs
    return u["val_score"] if u.get("val_score") is not None else u.get("val_accuracy")


def complete_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def without_duplicates(study):
    """``study`` without the trials answered from an identical earlier architecture, as an in-memory
    copy (its trials renumbered in order): what the history, the Pareto front and the importances are
    drawn from, so that an architecture proposed five times counts once."""
    import optuna

    kept = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()
            and t.user_attrs.get(attrs.DUPLICATE_OF) is None]
    if len(kept) == len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]):
        return study
    with search.quiet_optuna(optuna.logging.ERROR):
        copy = optuna.create_study(directions=study.directions)
        copy.add_trials(kept)
    return copy


def top_trials(study, k: int) -> list:
    """The best ``k`` distinct architectures by validation score (else by the first objective)."""
    done = [t for t in complete_trials(study) if "ir" in t.user_attrs and not t.user_attrs.get(attrs.DUPLICATE_OF)]
    if any(_score(t) is not None for t in done):
        done = [t for t in done if _score(t) is not None]
        done.sort(key=lambda t: (-_score(t), t.number))
    else:
        sign = 1 if study.directions[0].name == "MINIMIZE" else -1
        done.sort(key=lambda t: (sign * t.values[0], t.number))
    out, seen = [], set()
    for t in done:
        fp = t.user_attrs.get(attrs.FINGERPRINT) or t.number
        if fp not in seen:
            seen.add(fp)
            out.append(t)
    return out[:k]


# ------------------------------------------------------------------ pieces

def progress_plot(study, names: list[str], out: Path) -> tuple[list[Path], str]:
    """History (one objective) or Pareto front (several), each trial coloured by its pattern:
    (files, note when there is nothing to plot)."""
    done = [t for t in complete_trials(study) if t.values is not None]
    if not done:
        return [], "No complete trials yet, so no history or Pareto front."
    units = [UNITS.get(n, (1, n)) for n in names]
    if len(names) == 1:
        return _history_plot(done, study.directions[0].name == "MAXIMIZE", units[0], out), ""
    front = {t.number for t in study.best_trials}
    return (_pareto_plot(done, front, units[:2], out),
            "" if len(names) == 2 else f"Showing the first two of {len(names)} objectives; the front is over all "
                                       f"{len(names)}, so some of its trials look dominated in this view.")


def _by_pattern(ax, trials, x, y) -> None:
    """One scatter per pattern, in the pattern's colour (the same colours as every comparison plot)."""
    groups: dict = {}
    for t in trials:
        groups.setdefault(t.user_attrs.get(attrs.PATTERN) or "?", []).append(t)
    for pattern in sorted(groups):
        ts = groups[pattern]
        ax.scatter([x(t) for t in ts], [y(t) for t in ts], s=24, alpha=0.8, color=color(pattern), label=pattern,
                   zorder=3)


@plot_style()
def _history_plot(done, maximize: bool, unit, out: Path) -> list[Path]:
    """Each trial's score in trial order, coloured by pattern, with the best so far as a step line."""
    from matplotlib.figure import Figure

    scale, label = unit
    fig = Figure(figsize=(7.2, 4.4))
    ax = fig.subplots()
    _by_pattern(ax, done, lambda t: t.number, lambda t: t.values[0] / scale)
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t.number):
        v = t.values[0] / scale
        best = v if best is None or (v > best if maximize else v < best) else best
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="black", lw=1.3, label="best so far", zorder=2)
    ax.set_xlabel("trial")
    ax.set_ylabel(label)
    ax.set_title("optimisation history: each trial (coloured by pattern) and the best so far", fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, out / "history")


@plot_style()
def _pareto_plot(done, front: set, units, out: Path) -> list[Path]:
    """The trials on the first two objectives, coloured by pattern; the Pareto front ringed and joined."""
    from matplotlib.figure import Figure

    (sx, lx), (sy, ly) = units
    fig = Figure(figsize=(7.2, 4.8))
    ax = fig.subplots()
    _by_pattern(ax, done, lambda t: t.values[0] / sx, lambda t: t.values[1] / sy)
    best = sorted((t for t in done if t.number in front), key=lambda t: t.values[0])
    ax.scatter([t.values[0] / sx for t in best], [t.values[1] / sy for t in best], s=90, facecolors="none",
               edgecolors="black", lw=1.2, label="Pareto front", zorder=4)
    if len(best) > 1:
        ax.plot([t.values[0] / sx for t in best], [t.values[1] / sy for t in best], color="black", lw=0.8,
                alpha=0.6, zorder=2)
    ax.set_xlabel(lx)
    ax.set_ylabel(ly)
    ax.set_title(f"Pareto front ({len(best)} of {len(done)} trials), coloured by pattern", fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, out / "pareto")


def importance(study, names: list[str]):
    """fANOVA parameter importances per objective as a DataFrame (params x objectives), or a reason string."""
    import optuna
    import pandas as pd

    n = len(complete_trials(study))
    if n < 2:
        return f"Parameter importance needs at least 2 complete trials; this study has {n}."
    cols = {}
    for i, name in enumerate(names):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                    target=(lambda t, i=i: t.values[i]) if len(names) > 1 else None)
        except (RuntimeError, ValueError) as e:
            return f"Parameter importance could not be computed from {n} complete trials: {e}"
        cols[name] = imp
    df = pd.DataFrame(cols).fillna(0.0)
    if df.empty:
        return (f"Parameter importance needs a parameter sampled in every complete trial with at least two "
                f"values; none of the {n} complete trials' parameters qualifies.")
    return df.sort_values(names[0], ascending=False)


@plot_style()
def importance_plot(df, out: Path) -> list[Path]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 0.45 * len(df) * max(1, len(df.columns)) + 1.4))
    ax = fig.subplots()
    h = 0.8 / len(df.columns)
    ys = range(len(df))
    for j, col in enumerate(df.columns):
        ax.barh([y + j * h for y in ys], df[col], height=h, label=col)
    ax.set_yticks([y + h * (len(df.columns) - 1) / 2 for y in ys], list(df.index))
    ax.invert_yaxis()
    ax.set_xlabel("importance (fANOVA, normalised)")
    if len(df.columns) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, out / "importance")


@plot_style()
def accuracy_plot(df, out: Path, score: str = "val_accuracy") -> list[Path]:
    """Validation accuracy (or a dense study's ``score``) against params, MACs and training memory, one
    colour per pattern; ``accuracy_vs_cost`` or ``<score>_vs_cost``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig = Figure(figsize=(13, 4.2))
    axes = fig.subplots(1, len(COSTS), sharey=True)
    patterns = sorted(df.pattern.fillna("?").unique())
    for ax, (col, scale, label) in zip(axes, COSTS):
        for p in patterns:
            sel = df[df.pattern.fillna("?") == p]
            ax.scatter(sel[col] / scale, 100 * sel[score], s=22, alpha=0.8, color=color(p), label=p)
        x = df[col].dropna()
        if len(x) and x.min() > 0 and x.max() / x.min() > 20:  # log only where the range needs it
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(UNITS.get(score, (1, score))[1])
    axes[-1].legend(fontsize=8, loc="lower right")
    what = "accuracy" if score == "val_accuracy" else score
    fig.suptitle(f"complete trials: {what} vs cost, coloured by pattern")
    return save_figure(fig, out / f"{'accuracy' if score == 'val_accuracy' else score}_vs_cost")


def diagrams(study, trials: list, out: Path) -> tuple[list[tuple], str]:
    """Draw each top trial (svg + png) and save its IR/spec; returns ([(trial, files)], note)."""
    drawn, note = [], ""
    for rank, t in enumerate(trials, start=1):
        graph = from_json(t.user_attrs[attrs.IR])
        stem = out / "arch" / f"top{rank}-trial{t.number}"
        files = []
        dfiles.write_text(stem.with_suffix(".ir.json"), to_json(graph, indent=1) + "\n", ReportError)
        if t.user_attrs.get(attrs.SPEC):
            dfiles.write_text(stem.with_suffix(".spec.json"), json.dumps(json.loads(t.user_attrs[attrs.SPEC]), indent=1)
                              + "\n", ReportError)
        files += [stem.with_suffix(".ir.json")] + ([stem.with_suffix(".spec.json")] if t.user_attrs.get(attrs.SPEC)
                                                    else [])
        title = f"trial {t.number}: {t.user_attrs.get('arch') or t.user_attrs.get('pattern', '')}"
        try:
            files += [render.render(graph, stem.with_suffix(f".{fmt}"), format=fmt, title=title)
                      for fmt in ("svg", "png")]
        except DLASearchError as e:
            note = f"Diagrams were not drawn: {e}"
        drawn.append((t, files))
    return drawn, note


# ------------------------------------------------------------------ the report

def _fmt(v, spec=".4g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, (int, float)) and not isinstance(v, bool) and spec == ",":
        return f"{v:,.0f}"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _markdown(df) -> str:
    """A frame as a markdown table: counts as integers, other numbers to 4 digits, missing values blank.

    Formatted here, not by tabulate, which would print a count column holding one
    missing value as floats (195802 -> 1.958e+05)."""
    import pandas as pd

    df = df.copy()
    for col in df.columns:
        if col in ("params", "macs", "train_memory"):  # one format for counts across the report: 11,508,432
            df[col] = [("" if pd.isna(v) else f"{int(v):,}") for v in df[col]]
        elif col in ("number", "epochs_trained", "duplicate_of", "retry_of"):
            df[col] = [("" if pd.isna(v) else str(int(v))) for v in df[col]]
        elif pd.api.types.is_float_dtype(df[col]):
            df[col] = [("" if pd.isna(v) else f"{v:.4g}") for v in df[col]]
        else:
            df[col] = [("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)) for v in df[col]]
    return df.to_markdown(index=False, disable_numparse=True)


def _best_table(done, ranked: list, score: str = "val_accuracy"):
    """The complete trials of ``ranked`` in that order, each with the other trials of the same architecture."""
    se = [SE_COLUMN, TIE_COLUMN] if SE_COLUMN in done and done[SE_COLUMN].notna().any() else []
    cols = [c for c in dict.fromkeys(("number", "pattern", score, "val_accuracy", *se, "params", "macs",
                                      "train_memory", "arch")) if c in done.columns]
    rows = done.set_index("number", drop=False).loc[[t.number for t in ranked[:10]]]
    table = rows[cols].copy()
    table["same architecture"] = [", ".join(f"#{n}" for n in done.number[(done.fingerprint == fp)
                                                                         & (done.number != k)])
                                  for k, fp in zip(rows.number, rows.fingerprint)]
    if "at_chance" in rows and rows.at_chance.fillna(False).astype(bool).any():
        table["chance"] = [stats.CHANCE_MARK if v is True else "" for v in rows.at_chance]
    return table


def _rel(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()


def _images(files: list[Path], out: Path, alt: str) -> list[str]:
    svg = [f for f in files if f.suffix == ".svg"]
    png = [f for f in files if f.suffix == ".png"]
    lines = [f"![{alt}]({_rel(f, out)})" for f in svg]
    if png:
        lines.append(" · ".join(f"[PNG]({_rel(f, out)})" for f in png))
    return lines


def _prepare(out: Path, name: str, url: str) -> None:
    """Refuse a folder holding something other than this study's report; clear files of an older report."""
    check_writable(out)
    marker = out / MARKER
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("study") != name:
            raise ReportError(f"out={str(out)!r} holds the report of study {old.get('study')!r}; give another out=")
        for rel in old.get("files", []):
            p = (out / rel)
            if p.is_file() and out.resolve() in p.resolve().parents:
                p.unlink()
    elif out.exists() and any(out.iterdir()):
        raise ReportError(f"out={str(out)!r} is not empty and holds no report ({MARKER} is missing); "
                          f"give another out=")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"out={str(out)!r}: cannot create it: {dfiles.explain(e)}") from None


class _Page:
    """The report being written: its folder, its markdown lines and every file it links."""

    def __init__(self, out: Path):
        self.out, self.md, self.files = out, [], []

    def text(self, fname: str, body: str) -> Path:
        self.files.append(dfiles.write_text(self.out / fname, body, ReportError))
        return self.out / fname

    def images(self, files: list[Path], alt: str) -> None:
        self.files += files
        self.md += _images(files, self.out, alt)


def report(name: str, storage: str | None = None, out=None, top: int = 3, log=print) -> Path:
    """Write the study's report folder; returns the path of ``report.md``."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ReportError(f"top={top!r}: expected an int >= 0 (architectures to draw)")
    study, url = search.find_study(str(name), storage)
    out = Path(str(out)).expanduser() if out is not None else dfiles.study_dir(str(name), storage) / "report"
    try:
        _prepare(out, str(name), url)
    except CompareError as e:
        raise ReportError(str(e)) from None
    names = objectives(study)
    df = search.trials_frame(study)
    page = _Page(out)
    page.text("trials.csv", df.to_csv(index=False))
    page.text("trials.md", f"# Trials of `{name}`\n\n" + (_markdown(df) if len(df) else "No trials yet.") + "\n")
    done = df[(df.state == "COMPLETE")] if len(df) else df
    score = score_name(study)
    _summary(page, study, str(name), url, names, df, done, log)
    confirmed = _confirmed(page, study)
    ranked = top_trials(study, max(top, 10))
    _trials(page, done, ranked, score, confirmed)
    unique = without_duplicates(study)
    _history(page, unique, names)
    _importance(page, unique, names)
    _costs(page, df, score)
    _top(page, study, ranked[:top], top, names)
    if score != "val_accuracy":
        _predictions(page, study, ranked, storage)
    page.text("report.md", "\n".join(page.md))
    rels = [_rel(f, out) for f in page.files]
    page.text(MARKER, json.dumps({"study": str(name), "storage": url, "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "files": rels}, indent=1) + "\n")
    log(f"wrote {out / 'report.md'} and {len(page.files) - 1} other file(s) for study {name!r} ({len(df)} trials)")
    return out / "report.md"


def _summary(page: _Page, study, name: str, url: str, names: list[str], df, done, log) -> None:
    directions = [d.name.lower() for d in study.directions]
    counts = df.state.value_counts().to_dict() if len(df) else {}
    space = _space(study)
    md = [f"# Study report: `{name}`", "",
          f"- storage: `{url}`",
          f"- objectives: {', '.join(f'{n} ({d})' for n, d in zip(names, directions))}",
          f"- trials: {len(df)}" + (f" ({', '.join(f'{n} {s.lower()}' for s, n in counts.items())})" if counts else "")]
    if counts.get("RUNNING"):
        md.append(f"- **the study is still running**: {counts['RUNNING']} trial(s) unfinished; this report covers "
                  f"what was finished at {time.strftime('%Y-%m-%d %H:%M')}")
    if space:
        d, tr = space.get("data") or {}, space.get("train") or {}
        md.append(f"- space: {space.get('name', '?')}"
                  + (f" — {' '.join(str(space['description']).split())}" if space.get("description") else ""))
        if d and tr:
            md.append(f"- data: {d.get('name')} at {d.get('image_size')}px"
                      + (f", {d['limit']} training images" if d.get("limit") else "")
                      + f"; training: {tr.get('epochs')} epoch(s), batch {tr.get('batch_size')}, lr {tr.get('lr')}")
    dups = int(df.duplicate_of.notna().sum()) if "duplicate_of" in df else 0
    if dups:
        md.append(f"- {dups} trial(s) were answered from an identical earlier architecture (`duplicate_of` in "
                  f"trials.csv): the history, Pareto front and parameter importance below leave them out")
    low = int(done.at_chance.fillna(False).astype(bool).sum()) if "at_chance" in done else 0
    score = next((n for n in names if n in SCORES), "val_accuracy")
    why = "accuracy within chance + 2 standard errors" if score == "val_accuracy" else \
        f"{score} no better than a guesser that knows only the class frequencies"
    if low:
        md.append(f"- **{low} of {len(done)} complete trials are at chance** ({stats.CHANCE_MARK}: validation "
                  f"{why}; column `at_chance` of trials.csv): their "
                  f"ranking means nothing; train longer")
        log(f"warning: {low} of {len(done)} complete trials of {name!r} are at chance; their ranking means nothing")
    page.md += md


def _confirmed(page: _Page, study) -> bool:
    """The study's ``confirm=`` table, first: the top architectures' mean over more seeds (True: it has one)."""
    df = confirm.table(study)
    if df is None or not len(df):
        return False
    seeds = df.attrs.get("seeds", [])
    page.text("confirmed.csv", df.to_csv(index=False))
    page.md += ["", "## Confirmed over seeds", "",
                f"The top {len(df)} distinct architectures of the search, trained again with training seeds "
                f"{', '.join(map(str, seeds))} (same data split and settings):", "", confirm.markdown(df), "",
                confirm.NOTE[0].upper() + confirm.NOTE[1:] + ". [confirmed.csv](confirmed.csv)", ""]
    return True


def _trials(page: _Page, done, ranked, score: str = "val_accuracy", confirmed: bool = False) -> None:
    page.md += ["", "## Trials", ""]
    if len(done) and score in done and done[score].notna().any() and ranked:
        what = "accuracy" if score == "val_accuracy" else score
        page.md += [f"Best distinct architectures by validation {what} (in the order of the top architectures "
                    "below; each once, with the other trials that built it):", "",
                    _markdown(_best_table(done, ranked, score)), ""]
        note = tie_note(done, confirmed)
        if note:
            page.md += [note[0].upper() + note[1:] + ".", ""]
        elif score != "val_accuracy":
            page.md += [f"No standard error is given for {score}: its pixels are not independent draws, so the "
                        f"binomial one would be invented; `confirm=K seeds=S` measures the spread over seeds.", ""]
    page.md += ["Every trial: [trials.csv](trials.csv) · [trials.md](trials.md)", ""]


def _history(page: _Page, study, names: list[str]) -> None:
    prog, note = progress_plot(study, names, page.out)
    page.md += ["## " + ("Optimisation history" if len(names) == 1 else "Pareto front"), ""]
    page.images(prog, "history" if len(names) == 1 else "Pareto front")
    page.md += ([note] if note else []) + [""]


def _importance(page: _Page, study, names: list[str]) -> None:
    page.md += ["## Parameter importance", ""]
    imp = importance(study, names)
    if isinstance(imp, str):
        page.md += [imp, ""]
        return
    page.text("importance.csv", imp.to_csv(index_label="param"))
    page.md += [f"fANOVA importances over {len(complete_trials(study))} complete trials (normalised per objective; "
                f"few trials make them rough):", "", imp.to_markdown(floatfmt=".3f"), ""]
    page.images(importance_plot(imp, page.out), "parameter importance")
    page.md += ["[importance.csv](importance.csv)", ""]


def _costs(page: _Page, df, score: str = "val_accuracy") -> None:
    what = "accuracy" if score == "val_accuracy" else score
    page.md += ["## " + ("Accuracy" if score == "val_accuracy" else f"`{score}`") + " vs cost", ""]
    have = all(c in df.columns for c in (score, *(c[0] for c in COSTS), "pattern")) and len(df)
    pts = df[(df.state == "COMPLETE") & df[score].notna() & df.duplicate_of.isna()] if have else df.iloc[0:0]
    if len(pts):
        page.images(accuracy_plot(pts, page.out, score), f"{what} vs params, MACs and training memory")
        page.md += [""]
    else:
        page.md += [f"No complete trials with a validation {what} yet.", ""]


def _top(page: _Page, study, chosen: list, top: int, names: list[str]) -> None:
    page.md += [f"## Top {top} architectures", ""]
    if top and not chosen:
        page.md += ["No complete trials with an architecture yet.", ""]
    elif len(chosen) < top:
        page.md += [f"Only {len(chosen)} distinct architecture(s) completed (identical ones are drawn once).", ""]
    drawn, note = diagrams(study, chosen, page.out)
    pareto = {t.number for t in study.best_trials} if len(names) > 1 and complete_trials(study) else set()
    for rank, (t, tfiles) in enumerate(drawn, start=1):
        u = t.user_attrs
        page.md += [f"### {rank}. Trial {t.number}: {u.get('pattern', '?')}"
                    + (" (on the Pareto front)" if t.number in pareto else "")
                    + (f" {stats.CHANCE_MARK}" if u.get("at_chance") else ""), "",
                    f"{u.get('arch', '')} — "
                    + "".join(f"{k} {_fmt(u.get(k))}, " for k in ("miou_fg", "boundary_ods") if k in u)
                    + f"val_accuracy {_fmt(u.get('val_accuracy'))}, "
                    f"params {_fmt(u.get('params'), ',')}, "
                    f"MACs {_fmt(u.get('macs'), ',')}, training memory {_fmt(u.get('train_memory'), ',')} bytes", ""]
        page.images(tfiles, f"trial {t.number}")
        page.md += [" · ".join(f"[{f.name.split('.', 1)[1]}]({_rel(f, page.out)})" for f in tfiles
                               if f.suffix == ".json"), ""]
    if note:
        page.md += [note, ""]


def _predictions(page: _Page, study, ranked: list, storage) -> None:
    """A dense study's best trial on a few validation scenes (image | truth | prediction), if it kept weights."""
    page.md += ["## Predictions of the best trial", ""]
    if not ranked:
        page.md += ["No complete trial yet.", ""]
        return
    drawn, note = prediction_grid(study, ranked[0], page.out, storage)
    if drawn:
        page.md += [f"Trial {ranked[0].number} on the first validation scenes of the study's data (`dlasearch predict` "
                    f"writes the same masks for any images):", ""]
        page.images(drawn, f"trial {ranked[0].number}: image, truth, prediction")
    page.md += ([note] if note else []) + [""]


def command(args: dict) -> int:
    """``dlasearch report``: see docs/compare_report.md."""
    if "study" not in args:
        raise ReportError("study=NAME is required, e.g. `dlasearch report study=hda`")
    report(str(args["study"]), args.get("storage"), args.get("out"), args.get("top", 3))
    return 0
