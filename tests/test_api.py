"""``dlasearch.api``: run and compare from Python, with the command line's options and its checks."""
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from dlasearch.api import compare, run
from dlasearch.errors import DLASearchError
from dlasearch.search import counted

SMALL = {"pattern": {"value": "hda"}, "width": {"value": 8}, "growth": {"value": 2.0}, "levels": {"value": 1},
         "block": {"value": "basic"}, "root_kernel": {"value": 1}}


def test_run_returns_the_study_and_resumes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # results/ relative, as from the command line
    quiet = lambda *a: None  # noqa: E731
    study = run("hda", trials=1, epochs=1, data={"limit": 200}, params=SMALL, seed_published=False, log=quiet)
    assert isinstance(study, optuna.Study) and study.study_name == "hda"
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    assert (tmp_path / "results" / "hda" / "trials.csv").is_file()  # it writes what the command writes
    again = run(None, study="hda", trials=2, log=quiet)  # dlasearch run study=hda trials=2
    assert counted(again) == 2 and again.trials[0].state == TrialState.COMPLETE  # resumed, one more trial counted


def test_bad_options_are_the_command_lines_errors():
    with pytest.raises(DLASearchError, match="trials"):
        run("hda", trials="many")
    with pytest.raises(DLASearchError, match="unknown"):
        compare(budget={"params": 1e5}, colour="red")


def test_compare_returns_the_table(tmp_path):
    table = compare(patterns="chain,ida", data="digits", seeds=1, budget={"params": 2e4}, epochs=1, baseline=False,
                    out=str(tmp_path / "cmp"), log=lambda *a: None)
    assert isinstance(table, pd.DataFrame) and list(table.pattern) == ["chain", "ida"]
    assert table.test_acc_mean.between(0, 1).all()
    assert table.attrs["dir"] == tmp_path / "cmp" and len(table.attrs["runs"]) == 2
    assert (tmp_path / "cmp" / "comparison.csv").is_file()
