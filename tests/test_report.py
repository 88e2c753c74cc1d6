"""`dlasearch report`: every file is written and every report.md link resolves; bad input is one line."""
import json
import os
import re
import shutil
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution

from conftest import tiny_spec
from dlasearch.analysis import report
from dlasearch import search
from dlasearch.search import space
from dlasearch.cli import main
from dlasearch.ir import fingerprint, to_json
from dlasearch.patterns import build

needs_dot = pytest.mark.skipif(shutil.which("dot") is None and not os.environ.get("CI"),
                               reason="graphviz `dot` is not installed")


def links(md: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", md.read_text())


def assert_links_resolve(md: Path) -> list[str]:
    found = links(md)
    assert found
    for link in found:
        assert not link.startswith("/") and "://" not in link, link
        assert (md.parent / link).is_file(), f"{md} links to missing {link}"
    return found


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A real 3-trial study (1 epoch on 300 digits images) under <tmp>/results/hda/journal.log."""
    root = tmp_path_factory.mktemp("study")
    sp = space.load("hda", {"study": {"results": str(root / "results"), "trials": 3}, "train": {"epochs": 1},
                            "data": {"limit": 300}, "seed_published": False,
                            "params": {"width": {"choices": [8, 16]}, "levels": {"value": 1},
                                       "block": {"value": "basic"}, "growth": {"value": 2.0}}})
    study = search.open_study(sp)
    sp["study"]["threads"] = 1  # what `search.run` does, on one torch thread (fast on a busy machine)
    search.work(study, sp, log=lambda *a: None)
    return root


@needs_dot
def test_report_of_a_real_study(study_dir, monkeypatch, capsys):
    monkeypatch.chdir(study_dir)  # default storage and out: results/hda/...
    assert main(["report", "study=hda", "top=2"]) == 0
    out = study_dir / "results" / "hda" / "report"
    assert "report.md" in capsys.readouterr().out
    found = assert_links_resolve(out / "report.md")
    for name in ("trials.csv", "trials.md", "history.svg", "history.png", "accuracy_vs_cost.svg",
                 "accuracy_vs_cost.png"):
        assert name in found and (out / name).stat().st_size > 0
    df = pd.read_csv(out / "trials.csv")
    assert len(df) - df.repeated.fillna(False).astype(bool).sum() == 3  # a repeated architecture uses up no trial
    drawn = [f for f in found if f.startswith("arch/") and f.endswith(".svg")]
    assert 1 <= len(drawn) <= 2 and all((out / f.replace(".svg", ".png")).exists() for f in drawn)
    text = (out / "report.md").read_text()
    assert "## Parameter importance" in text and ("importance.svg" in found or "Parameter importance" in text)
    # a rerun rewrites the same study's report in place
    assert main(["report", "study=hda", "top=1"]) == 0
    svgs = [f for f in assert_links_resolve(out / "report.md") if f.startswith("arch/") and f.endswith(".svg")]
    assert len(svgs) == 1
    assert len(list((out / "arch").glob("*.svg"))) == 1


def synthetic(url: str, name: str, n: int, objectives=("val_accuracy", "params")) -> None:
    """A study of ``n`` finished trials with real IRs, no training (fast); objectives as a search writes them."""
    directions = [{"val_accuracy": "maximize"}.get(o, "minimize") for o in objectives]
    study = optuna.create_study(study_name=name, storage=search.open_storage(url), directions=directions)
    study.set_user_attr("space", json.dumps({"name": "synthetic", "objectives": list(objectives)}))
    pats = ["chain", "ida", "hda", "dla"]
    for i in range(n):
        pattern, width = pats[i % 4], (8, 16, 32)[i % 3]
        ir = build(tiny_spec(pattern, stem={"channels": width, "kernel": 3}))
        attrs = {"pattern": pattern, "val_accuracy": 0.5 + 0.04 * ((i * 7) % 5) + 0.01 * width / 8,
                 "params": 10000 * (1 + i % 3) + 500 * i, "macs": 2e6 * (1 + i % 3), "train_memory": 3e7 + 1e6 * i,
                 "ir": to_json(ir), "fingerprint": fingerprint(ir), "arch": f"{pattern}, stem {width}",
                 "spec": json.dumps(tiny_spec(pattern))}
        study.add_trial(optuna.trial.create_trial(
            params={"pattern": pattern, "width": width},
            distributions={"pattern": CategoricalDistribution(pats), "width": CategoricalDistribution([8, 16, 32])},
            values=[attrs[o] for o in objectives], user_attrs=attrs))


@needs_dot
def test_multi_objective_study_in_a_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    synthetic(url, "pareto", 8)
    md = report.report("pareto", storage=url, out=tmp_path / "rep", top=3, log=lambda *a: None)
    found = assert_links_resolve(md)
    for name in ("pareto.svg", "pareto.png", "importance.svg", "importance.png", "importance.csv",
                 "accuracy_vs_cost.svg", "trials.csv"):
        assert name in found
    imp = pd.read_csv(tmp_path / "rep" / "importance.csv", index_col="param")
    assert set(imp.index) == {"pattern", "width"} and set(imp.columns) == {"val_accuracy", "params"}
    assert len([f for f in found if f.startswith("arch/") and f.endswith(".svg")]) == 3
    assert "Pareto front" in md.read_text()


@needs_dot
def test_too_few_trials_are_noted_not_fatal(tmp_path):
    journal = str(tmp_path / "journal.log")
    synthetic(journal, "one", 1, objectives=("val_accuracy",))
    md = report.report("one", storage=journal, out=tmp_path / "rep", log=lambda *a: None)
    assert_links_resolve(md)
    text = md.read_text()
    assert "needs at least 2 complete trials; this study has 1" in text
    assert "Only 1 distinct architecture" in text
    assert not (tmp_path / "rep" / "importance.csv").exists()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("dlasearch report: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_missing_study_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["report", "study=nope"]) == 2
    assert "no journal file at results/nope/journal.log" in one_error_line(capsys)
    assert not (tmp_path / "results").exists()
    journal = str(tmp_path / "j.log")
    synthetic(journal, "present", 1, objectives=("val_accuracy",))
    assert main(["report", "study=presnt", f"storage={journal}"]) == 2
    err = one_error_line(capsys)
    assert "'presnt' not found" in err and "did you mean 'present'" in err
    assert main(["report", f"storage={journal}"]) == 2
    assert "study=NAME is required" in one_error_line(capsys)
    assert main(["report", "study=present", f"storage={journal}", "top=-1"]) == 2
    assert "top=-1" in one_error_line(capsys)


def test_output_folder_is_not_overwritten(tmp_path, capsys):
    journal = str(tmp_path / "j.log")
    synthetic(journal, "a", 1, objectives=("val_accuracy",))
    synthetic(journal, "b", 1, objectives=("val_accuracy",))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["report", "study=a", f"storage={journal}", f"out={busy}"]) == 2
    assert "holds no report" in one_error_line(capsys)
    assert main(["report", "study=a", f"storage={journal}", f"out={tmp_path / 'rep'}", "top=0"]) == 0
    capsys.readouterr()
    assert main(["report", "study=b", f"storage={journal}", f"out={tmp_path / 'rep'}"]) == 2
    assert "holds the report of study 'a'" in one_error_line(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["report", "study=a", f"storage={journal}", f"out={blocker / 'sub'}"]) == 2
    assert "is a file, not a folder" in one_error_line(capsys)
    assert (busy / "notes.txt").read_text() == "mine"


@needs_dot
def test_postgres_study(tmp_path):
    url = os.environ.get("DLASEARCH_TEST_POSTGRES")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must provide DLASEARCH_TEST_POSTGRES (.ci/run starts a server)")
        pytest.skip("no PostgreSQL server: set DLASEARCH_TEST_POSTGRES=postgresql://... (.ci/run does)")
    name = f"report{os.getpid()}_{int(time.time())}"
    synthetic(url, name, 4)
    try:
        md = report.report(name, storage=url, out=tmp_path / "rep", log=lambda *a: None)
        assert "pareto.svg" in assert_links_resolve(md)
    finally:
        optuna.delete_study(study_name=name, storage=url)


@needs_dot
def test_best_table_lists_each_architecture_once_in_top_order_and_marks_chance(tmp_path, monkeypatch):
    journal = str(tmp_path / "journal.log")
    synthetic(journal, "ties", 4, objectives=("val_accuracy",))
    study = optuna.load_study(study_name="ties", storage=search.open_storage(journal))
    first = study.trials[0]
    for acc in (0.9, 0.9):  # the same architecture twice more, now the best: a tie, not two rows
        study.add_trial(optuna.trial.create_trial(
            params=first.params, distributions=first.distributions, values=[acc],
            user_attrs={**first.user_attrs, "val_accuracy": acc}))
    low = study.trials[1]
    study.add_trial(optuna.trial.create_trial(params=low.params, distributions=low.distributions, values=[0.1],
                                              user_attrs={**low.user_attrs, "val_accuracy": 0.1, "at_chance": True,
                                                          "fingerprint": "other", "ir": low.user_attrs["ir"]}))
    labels = []
    real = report.save_figure
    monkeypatch.setattr(report, "save_figure", lambda fig, stem: labels.extend(
        a.get_ylabel() for a in fig.axes) or real(fig, stem))
    lines = []
    md = report.report("ties", storage=journal, out=tmp_path / "rep", top=3, log=lines.append)
    text = md.read_text()
    table = text.split("Best distinct architectures")[1].split("\n\n")[1].splitlines()[2:]
    numbers = [int(row.split("|")[1]) for row in table]
    tops = [int(n) for n in re.findall(r"^### \d+\. Trial (\d+)", text, re.M)]
    assert numbers[:3] == tops and sorted(numbers) == [1, 2, 3, 4, 6]  # 5 architectures, each once
    assert numbers[0] == 4 and "#0, #5" in table[0]  # trial 4 (0.9, earlier than 5) stands for 0, 4 and 5
    assert "≈chance" in table[-1] and "**1 of 7 complete trials are at chance**" in text
    assert sum(ln.startswith("warning:") for ln in lines) == 1
    assert "validation accuracy (%)" in labels  # the history plot in percent, like every other plot


def test_history_has_a_best_so_far_line_and_both_plots_colour_trials_by_pattern(tmp_path, monkeypatch):
    figures = {}
    real = report.save_figure
    monkeypatch.setattr(report, "save_figure", lambda fig, stem: figures.__setitem__(stem.name, fig) or real(fig, stem))
    for name, objectives in (("one", ("val_accuracy",)), ("two", ("val_accuracy", "params"))):
        journal = str(tmp_path / f"{name}.log")
        synthetic(journal, name, 8, objectives=objectives)
        study = optuna.load_study(study_name=name, storage=search.open_storage(journal))
        report.progress_plot(study, list(objectives), tmp_path)
    (ax,) = figures["history"].axes
    labels = ax.get_legend_handles_labels()[1]
    assert {"chain", "ida", "hda", "dla", "best so far"} <= set(labels)
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "best so far"]
    best = list(line.get_ydata())
    values = [100 * t.values[0] for t in optuna.load_study(study_name="one", storage=search.open_storage(
        str(tmp_path / "one.log"))).trials]
    assert best == [max(values[:i + 1]) for i in range(len(values))]  # the running best, in percent
    (ax,) = figures["pareto"].axes
    assert {"chain", "ida", "hda", "dla", "Pareto front"} <= set(ax.get_legend_handles_labels()[1])
