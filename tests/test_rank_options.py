"""`dlasearch rank` takes the data options train/run/compare take, refuses an empty proxy list, and
ends on a space with fewer distinct architectures than asked for."""
import pandas as pd

from dlasearch.cli import main
from dlasearch.search import rank, space as spacemod


def test_rank_takes_data_options_and_marks_over_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r.csv"
    assert main(["rank", "space=hda", "data=digits", "data.limit=200", "n=2", "proxies=params,naswot",
                 "budget.params=1e5", f"out={out}"]) == 2  # budget is not a rank option: refused, one line
    capsys.readouterr()
    assert main(["rank", "space=hda", "data.name=digits", "data.limit=200", "n=2", "proxies=params",
                 f"out={out}"]) == 0
    df = pd.read_csv(out)
    assert len(df) == 2 and "over_budget" in df.columns and not df.over_budget.any()
    assert "sorted by params" in capsys.readouterr().out


def test_rank_refuses_an_empty_proxy_list(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["rank", "space=hda", "proxies=[]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "proxies=" in err[0]


def test_a_small_space_ends_the_draws():
    sp = spacemod.load("hda", {"params": {"levels": {"value": 1}, "width": {"value": 16}, "growth": {"value": 2.0},
                                          "block": {"value": "basic"}, "root_kernel": {"value": 1},
                                          "residual_root": {"value": False}}})
    archs = rank.sample_archs(sp, 1000, 1, 10, max_draws=10 ** 6)
    assert len(archs) == 1  # one architecture, found at once; then EXHAUSTED draws end it, not 10**6
