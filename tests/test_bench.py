"""Benchmarks: a tiny one built on digits, exported, looked up, searched from the table, analysed; screening."""
import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import with_sections
from dlasearch import search
from dlasearch.analysis import benchmark
from dlasearch.cli import main
from dlasearch.ir import fingerprint
from dlasearch.patterns import build
from dlasearch.search import bench, space
from dlasearch.search.study import grid_of

TINY = {"pattern": {"choices": ["chain", "skip"]}, "levels": {"choices": [1]}, "width": {"choices": [8]},
        "growth": {"value": 2.0}, "block": {"choices": ["basic", "bottleneck"]}}


def tiny_space(tmp_path, **over):
    base = {"data": {"name": "digits", "limit": 300, "flip": None}, "train": {"epochs": 1, "batch_size": 64},
            "study": {"results": str(tmp_path)}, "params": TINY}
    return space.load("bench", with_sections(base, over))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    folder = bench.build("tiny", tiny_space(tmp), repeat=2, log=lambda *a: None)
    return tmp, folder


def test_the_shipped_bench_space_is_a_grid_of_216_distinct_architectures():
    sp = space.load("bench")
    assert bench.grid_size(sp) == 224 and sp["study"]["sampler"] == "grid"
    import itertools
    g = grid_of(sp)
    prints = set()
    for values in itertools.product(*g.values()):
        spec = space.sample(sp, optuna.trial.FixedTrial(dict(zip(g, values))))
        prints.add(fingerprint(build({**spec, "in_channels": 3, "num_classes": 10})))
    # tree, reentrant and hda coincide when every stage has 2 blocks: 8 grid points are repeats
    assert len(prints) == 216


def test_a_build_in_two_steps_trains_each_grid_point_once(tmp_path):
    sp = tiny_space(tmp_path)
    bench.build("steps", sp, n=2, repeat=0, log=lambda *a: None)
    assert len(pd.read_csv(tmp_path / "bench" / "steps" / "bench.csv")) == 2
    bench.build("steps", sp, repeat=0, log=lambda *a: None)
    trials = search.open_study(bench.spaces("steps", sp)[0], create=False).trials
    assert len(trials) == 4 and len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4
    assert len(pd.read_csv(tmp_path / "bench" / "steps" / "bench.csv")) == 4


def test_grid_workers_share_one_grid_order():
    """Workers get seed offsets; the grid must not, or two workers' grid point 7 differ and points are skipped."""
    from dlasearch.search.study import make_sampler

    sp = space.load("figure1")
    study = optuna.create_study()
    seen = []
    for i in range(18):
        study.sampler = make_sampler(sp, offset=i % 3)
        t = study.ask()
        space.sample(sp, t)
        seen.append(json.dumps(t.params, sort_keys=True))
    assert len(set(seen)) == 18


def test_build_trains_every_architecture_once_and_exports_the_table(built):
    tmp, folder = built
    df = pd.read_csv(folder / "bench.csv")
    assert len(df) == 4 and df.fingerprint.is_unique and set(df.pattern) == {"chain", "skip"}
    assert (df.status == "ok").all() and df.val_accuracy.between(0, 1).all() and (df.params > 0).all()
    assert df.val_accuracy_seed1.notna().sum() == 2  # repeat=2: two retrained with seed 1
    for p in ("synflow", "snip", "grad_norm", "naswot", "zen", "zico"):
        assert df[p].notna().all(), p
    assert sorted(p.stem for p in (folder / "archs").glob("*.json")) == sorted(df.fingerprint)
    grid = pd.read_csv(folder / "grid.csv")
    assert len(grid) == 4 and set(grid.fingerprint) == set(df.fingerprint)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["architectures"] == 4 and meta["grid"] == 4 and meta["cost"]["first"]["trials"] == 4
    seed1 = search.open_study(bench.spaces("tiny", tiny_space(tmp), repeat=2)[1], create=False)
    assert {t.user_attrs["val_accuracy"] for t in seed1.trials} == set(df.val_accuracy_seed1.dropna())


def test_a_second_build_resumes_and_trains_nothing(built):
    tmp, folder = built
    before = (folder / "bench.csv").read_text()
    lines = []
    bench.build("tiny", tiny_space(tmp), repeat=2, log=lines.append)
    assert (folder / "bench.csv").read_text() == before
    assert any("4/4 trials done" in str(x) for x in lines) and not any("trial #" in str(x) for x in lines)


def test_proxies_in_the_table_are_repeatable(built):
    tmp, folder = built
    df = pd.read_csv(folder / "bench.csv")
    (folder / "proxies.csv").unlink()
    bench.build("tiny", tiny_space(tmp), repeat=2, log=lambda *a: None)
    again = pd.read_csv(folder / "bench.csv")
    pd.testing.assert_frame_equal(df[["fingerprint", "synflow", "naswot"]], again[["fingerprint", "synflow", "naswot"]])


def test_a_search_on_the_benchmark_answers_from_the_table(built):
    tmp, folder = built
    table = pd.read_csv(folder / "bench.csv").set_index("fingerprint")
    sp = space.load(str(folder / "space.yaml"), {"data": {"name": "bench:tiny"}, "study": {
        "results": str(tmp), "name": "from-table", "trials": 6, "sampler": "random"}})
    search.run(sp, log=lambda *a: None)
    trials = search.open_study(sp, create=False).trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        row = table.loc[t.user_attrs["fingerprint"]]
        assert t.value == row.val_accuracy and t.user_attrs["params"] == row.params
        assert "epochs_trained" not in t.user_attrs  # looked up, not trained


def test_run_data_bench_on_the_command_line_searches_the_benchmarks_space(built, capsys):
    tmp, folder = built
    assert main(["run", "data=bench:tiny", "study=cli-table", "trials=3", f"study.results={tmp}"]) == 0
    csv = pd.read_csv(tmp / "cli-table" / "trials.csv")
    assert list(csv.state) == ["COMPLETE"] * 3 and csv.fingerprint.isin(pd.read_csv(folder / "bench.csv").fingerprint).all()
    assert main(["run", "data=bench:nope", f"study.results={tmp}"]) == 2
    assert "no benchmark 'nope'" in capsys.readouterr().err


def test_an_architecture_outside_the_benchmark_fails_with_the_reason(built):
    tmp, folder = built
    sp = space.load(str(folder / "space.yaml"), {"data": {"name": "bench:tiny"}, "params": {"width": {"choices": [16]}},
                                                 "study": {"results": str(tmp), "name": "outside", "trials": 1}})
    search.run(sp, log=lambda *a: None)
    t = search.open_study(sp, create=False).trials[0]
    assert t.state == TrialState.FAIL and "not in benchmark 'tiny'" in t.user_attrs["fail_reason"]


def test_lookup_and_unknown_benchmark_on_the_command_line(built, capsys, monkeypatch):
    tmp, folder = built
    monkeypatch.chdir(tmp.parent)
    assert main(["bench", "lookup", f"name={folder}", "pattern=skip"]) == 0
    out = capsys.readouterr().out
    assert "2 of 4 architectures match" in out and "chain" not in out.split("architectures match")[0]
    assert main(["bench", "lookup", "name=nope"]) == 2
    assert "no benchmark 'nope'" in capsys.readouterr().err
    assert main(["bench", "fly", "name=x"]) == 2
    assert "build, lookup, report" in capsys.readouterr().err


def test_report_writes_correlations_regret_and_readme(built):
    tmp, folder = built
    benchmark.report(folder, simulate_reps=2, trials=3, k=2, log=lambda *a: None)
    text = (folder / "README.md").read_text()
    for section in ("Noise ceiling", "Zero-cost proxies", "Search strategies replayed", "Per pattern"):
        assert section in text, section
    curves = pd.read_csv(folder / "regret.csv")
    assert set(curves.strategy) == set(benchmark.STRATEGIES)
    assert curves.groupby(["strategy", "rep"]).trained.max().eq(3).all()
    best = pd.read_csv(folder / "bench.csv").val_accuracy.max()
    assert (curves.best <= best + 1e-12).all()
    assert (folder / "regret.png").exists() and (folder / "proxies.png").exists()
    corr = json.loads((folder / "analysis.json").read_text())["correlations"]
    assert [c["proxy"] for c in corr][-1] == "depth"
    assert {"partial_params", "partial_depth", "rho_depth"} <= set(corr[0])
    assert "(he init)" in text.lower() and "synflow is exactly 0" in text and "found_top" not in text


def test_the_report_opens_with_the_benchmarks_notes_and_a_rerun_keeps_them(built):
    tmp, folder = built
    (folder / "NOTES.md").write_text("**Read this first:** an audit found X.\n")
    try:
        for _ in range(2):
            benchmark.report(folder, simulate_reps=2, trials=3, k=2, log=lambda *a: None)
            text = (folder / "README.md").read_text()
            assert text.startswith("# Benchmark `tiny`\n\n**Read this first:** an audit found X.\n\n")
    finally:
        (folder / "NOTES.md").unlink()
    meta = json.loads((folder / "meta.json").read_text())
    assert set(meta["machine"]) == {"cpu", "cores", "python", "torch"} and meta["cost"]["first"]["median_trial_s"] > 0
    assert "Linux" not in text and "median" in text


def test_depth_counts_the_relus_of_convs_blocks_and_aggregation_nodes():
    from dlasearch.ir import IR

    g = IR(name="d")
    g.add("input", "input", channels=3)
    g.add("stem", "conv", ["input"], out=8)  # 1
    g.add("lin", "conv", ["stem"], out=8, relu=False)  # 0
    g.add("b1", "block", ["lin"], out=8)  # basic: 2
    g.add("b2", "block", ["b1"], out=8, type="bottleneck")  # 3
    g.add("root", "aggregate", ["b2", "b1"], out=8)  # 1
    g.add("fc", "head", ["root"], classes=4)
    g.add("output", "output", ["fc"])
    assert benchmark.relu_layers(g) == 7


def test_partial_correlation_and_regret_against_the_two_seed_mean():
    import numpy as np

    z = np.arange(40.0)
    wiggle = np.tile([0.0, 3.0, -3.0, 1.0], 10)
    x, y = z + wiggle, z - wiggle  # both follow z; with z held fixed they move oppositely
    from scipy import stats

    assert stats.spearmanr(x, y).statistic > 0.9 and benchmark._partial(x, y, [z]) < -0.9
    assert benchmark._partial(x, x, [z]) == pytest.approx(1.0)

    df = pd.DataFrame({"fingerprint": list("abc"), "status": "ok", "val_accuracy": [0.50, 0.48, 0.40],
                       "val_accuracy_seed1": [0.42, None, 0.44]})
    curves = pd.DataFrame({"strategy": "s", "rep": [0, 1, 0, 1], "trained": [1, 1, 2, 2],
                           "best": [0.40, 0.48, 0.50, 0.48], "best_fp": ["c", "b", "a", "b"]})
    r = benchmark.regret_summary(curves, df, marks=(1, 2)).iloc[0]
    # the table's best is b (0.48, one seed), not a (0.50 on seed 0, 0.46 over two); c counts as 0.42
    assert r["best@2"] == pytest.approx(49.0) and r["regret@2"] == pytest.approx(48 - (46 + 48) / 2)
    assert r["regret@1"] == pytest.approx(48 - (42 + 48) / 2)


def test_correlations_and_pattern_effects_on_a_known_table():
    df = pd.DataFrame({"fingerprint": list("abcd"), "pattern": ["chain", "skip", "chain", "skip"],
                       "status": "ok", "val_accuracy": [0.1, 0.2, 0.3, 0.5], "params": [1, 2, 3, 4],
                       "macs": [4, 3, 2, 1], "val_accuracy_seed1": [0.1, 0.25, 0.3, None]})
    corr = benchmark.correlations(df).set_index("proxy")
    assert corr.loc["params", "spearman"] == pytest.approx(1.0) and corr.loc["macs", "kendall"] == pytest.approx(-1.0)
    grid = pd.DataFrame({"param_pattern": ["chain", "skip", "chain", "skip"], "param_width": [8, 8, 16, 16],
                         "fingerprint": list("abcd")})
    eff = benchmark.pattern_effects(df, grid).set_index("pattern")
    assert eff.loc["skip", "delta_pp"] == pytest.approx(15.0) and eff.loc["skip", "wins"] == 2
    assert benchmark.noise(df)["n"] == 3


def test_screen_trains_only_the_best_candidate_by_the_proxy(tmp_path):
    from tests.test_search import tiny

    sp = tiny(tmp_path, study={"trials": 2, "screen": 3, "proxy": "params", "sampler": "random"},
              seed_published=False)
    search.run(sp, log=lambda *a: None)
    trials = search.open_study(sp, create=False).trials
    cands = [t for t in trials if t.user_attrs.get("candidate")]
    trained = [t for t in trials if not t.user_attrs.get("candidate")]
    assert len(cands) == 6 and all(t.state == TrialState.FAIL for t in cands)
    assert len(trained) == 2 and all("val_accuracy" in t.user_attrs or "rejected" in t.user_attrs for t in trained)
    assert not any("val_accuracy" in t.user_attrs for t in cands)  # candidates are scored, never trained
    for i, t in enumerate(sorted(trained, key=lambda t: t.number)):
        round_ = cands[3 * i:3 * i + 3]
        best = max(round_, key=lambda c: c.user_attrs.get("params", -1))
        assert t.params == best.params and "best of 3 by params" in t.user_attrs["screened"]
    csv = pd.read_csv(Path(search.results_dir(sp)) / "trials.csv")
    assert len(csv) == 2  # candidates are not trials of the search


def test_screen_needs_a_sampler_that_can_repeat_and_a_known_proxy():
    with pytest.raises(space.SpaceError, match="study.screen"):
        space.load("figure1", {"study": {"screen": 4}})
    with pytest.raises(space.SpaceError, match="study.proxy: 'synflw'.*synflow"):
        space.load("hda", {"study": {"proxy": "synflw"}})
    with pytest.raises(space.SpaceError, match="study.screen"):
        space.load("hda", {"study": {"screen": 1}})


def test_a_worker_attaches_to_a_study_made_before_screening_existed(tmp_path):
    from tests.test_search import tiny

    sp = tiny(tmp_path, seed_published=False)
    study = search.open_study(sp)
    old = json.loads(study.user_attrs["space"])
    for k in ("screen", "proxy", "threads"):
        old["study"].pop(k)
    old["data"].pop("flip")
    old["train"].pop("seed")
    old["train"].pop("init")
    old["train"].pop("bn_batches")
    study.set_user_attr("space", json.dumps(old))
    contract = json.loads(study.user_attrs["contract"])
    contract["train"].pop("init")
    contract["train"].pop("bn_batches")
    study.set_user_attr("contract", json.dumps(contract))
    _, attached = search.attach(sp["study"]["name"] or "hda", str(tmp_path / "hda" / "journal.log"))
    assert attached["study"]["screen"] is None and attached["study"]["proxy"] == "params"
    assert attached["train"]["init"] == "original"  # a resumed old study keeps training as it began
    assert attached["train"]["bn_batches"] == 16  # the default of the day: spaces never stored it
    new = tiny(tmp_path / "new", seed_published=False)
    assert search.open_study(new) and new["train"]["init"] == "zero-last"
    assert attached["name"] == sp["name"]


def test_init_and_bn_batches_are_pinned_per_study_so_a_changed_default_neither_mixes_trials_nor_refuses(
        tmp_path, monkeypatch):
    """A new study stores today's defaults; a study from before stored neither and ran with init=original
    and 16 batches: resumed from its space file without them (as `bench build` does) it keeps both,
    resumed with another value it is refused.  So with every training option a space may leave unset:
    a default changed later applies to new studies only."""
    from tests.test_search import tiny

    from dlasearch.train import TrainConfig

    sp = tiny(tmp_path, seed_published=False)
    assert "bn_batches" not in sp["train"]
    study = search.open_study(sp)
    assert sp["train"]["bn_batches"] == TrainConfig().bn_batches == 8
    assert json.loads(study.user_attrs["contract"])["train"]["bn_batches"] == 8
    assert json.loads(study.user_attrs["space"])["train"]["bn_batches"] == 8
    assert sp["train"]["init"] == "zero-last"

    for attr in ("space", "contract"):  # as a study made before these options stored it
        old = json.loads(study.user_attrs[attr])
        old["train"].pop("bn_batches")
        old["train"].pop("init")
        study.set_user_attr(attr, json.dumps(old))
    again = tiny(tmp_path, seed_published=False)
    search.open_study(again)
    assert again["train"]["bn_batches"] == 16 and again["train"]["init"] == "original"
    _, attached = search.attach("hda", str(tmp_path / "hda" / "journal.log"))
    assert attached["train"]["bn_batches"] == 16 and attached["train"]["init"] == "original"
    with pytest.raises(search.SearchError, match="bn_batches"):
        search.open_study(tiny(tmp_path, seed_published=False, train={"bn_batches": 8}))
    with pytest.raises(search.SearchError, match="init"):
        search.open_study(tiny(tmp_path, seed_published=False, train={"init": "zero-last"}))

    from dlasearch.search.study import PINNED

    assert set(PINNED) == {"init", "bn_batches", "nesterov", "augment", "precision", "compile", "cuda_graph",
                           "small_maps", "schedule", "class_weights"}
    for attr in ("space", "contract"):  # a study from before these were pinned stored none of them
        old = json.loads(study.user_attrs[attr])
        for k in ("nesterov", "augment", "precision", "compile", "cuda_graph", "small_maps", "schedule",
                  "class_weights"):
            old["train"].pop(k)
        study.set_user_attr(attr, json.dumps(old))
    monkeypatch.setattr(TrainConfig.__dataclass_fields__["augment"], "default", False)  # a default changes
    again = tiny(tmp_path, seed_published=False)
    search.open_study(again)
    assert again["train"]["augment"] is True and again["train"]["nesterov"] is True  # as its trials ran
    assert again["train"]["precision"] == "auto" and again["train"]["cuda_graph"] is None
    assert again["train"]["small_maps"] is False  # its trials ran every convolution as one
    new = tiny(tmp_path / "new", seed_published=False)
    search.open_study(new)
    assert new["train"]["augment"] is False  # a new study takes the new default


def test_a_study_resumes_with_its_data_file_named_from_another_folder(tmp_path, monkeypatch):
    """data.path absolute at creation, relative at resume (the same file): the same study; another file is not."""
    from tests.test_search import tiny

    (tmp_path / "d").mkdir()
    sp = tiny(tmp_path, seed_published=False, data={"path": str(tmp_path / "d" / "x.npz")})
    search.open_study(sp)
    monkeypatch.chdir(tmp_path / "d")
    search.open_study({**sp, "data": {**sp["data"], "path": "x.npz"}})
    with pytest.raises(search.SearchError, match="data.path"):
        search.open_study({**sp, "data": {**sp["data"], "path": "y.npz"}})


def _comparison(folder: Path, accs: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"pattern": p, "figure": "baseline" if p.endswith("_2x") else "x", "test_acc_mean": a}
            for p, a in accs.items()]
    pd.DataFrame(rows).to_csv(folder / "comparison.csv", index=False)
    return folder


def test_rank_agreement_ranks_the_chain_at_zero_and_leaves_baseline_rows_out(tmp_path):
    effects = pd.DataFrame({"pattern": ["skip", "ida", "tree"], "delta_pp": [2.0, -1.0, 1.0]})
    same = benchmark.comparison_scores(_comparison(tmp_path / "a", {"chain": 0.60, "skip": 0.70, "ida": 0.50,
                                                                    "tree": 0.65, "chain_2x": 0.99}))
    assert "chain_2x" not in same.index and same["skip"] == pytest.approx(70.0)
    a = benchmark.rank_agreement(effects, same)
    assert a["n"] == 4 and a["spearman"] == pytest.approx(1.0)
    flipped = benchmark.comparison_scores(_comparison(tmp_path / "b", {"chain": 0.60, "skip": 0.50, "ida": 0.70,
                                                                       "tree": 0.55}))
    assert benchmark.rank_agreement(effects, flipped)["spearman"] == pytest.approx(-1.0)
    assert benchmark.rank_agreement(effects.iloc[:1], flipped)["spearman"] is None  # chain and skip only


def test_bench_report_against_a_comparison_is_kept_and_a_bad_folder_is_one_line(built, capsys, monkeypatch):
    tmp, folder = built
    monkeypatch.chdir(tmp.parent)
    cmp = _comparison(tmp / "cmp", {"chain": 0.6, "skip": 0.7, "chain_2x": 0.9})
    meta = json.loads((folder / "meta.json").read_text())
    assert main(["bench", "report", f"name={folder}", "reps=0", "against=nowhere/at-all"]) == 2
    err = capsys.readouterr().err
    assert "against=nowhere/at-all" in err and "comparison.csv" in err and "Traceback" not in err
    assert json.loads((folder / "meta.json").read_text()) == meta  # nothing recorded for a bad folder
    try:
        assert main(["bench", "report", f"name={folder}", "reps=0", f"against={cmp}"]) == 0
        assert main(["bench", "report", f"name={folder}", "reps=0"]) == 0  # kept for a later report
        text = (folder / "README.md").read_text()
        assert f"`{cmp}`: only 2 pattern(s) in common" in text
        assert json.loads((folder / "analysis.json").read_text())["rank_agreement"][str(cmp)]["n"] == 2
    finally:
        assert main(["bench", "report", f"name={folder}", "reps=0", "against=none"]) == 0
    assert "carry over" not in (folder / "README.md").read_text() and json.loads(
        (folder / "meta.json").read_text()).get("against") == []
