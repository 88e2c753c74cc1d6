"""`dlasearch compare` on digits with tiny budgets: sizing, statistics, outputs, resume and bad input."""
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

import dlasearch.train
from dlasearch.analysis import compare
from dlasearch.cli import main
from dlasearch.patterns import PATTERNS
from tests.test_data import SHARED

BUDGET = 20000
# one torch thread: on a busy 2-core machine two OpenMP threads can run ten times slower than one
COMMON = {"data": "digits", "budget": {"params": BUDGET}, "limit": 300,
          "train": {"epochs": 1, "batch_size": 64, "threads": 1}}
CLI = ["data=digits", f"budget.params={BUDGET}", "data.limit=300", "epochs=1", "batch_size=64", "threads=1"]
PLOTS = ("accuracy_vs_params", "accuracy_vs_memory", "accuracy_spread", "accuracy_curve")


def cli_with(*extra):
    """``CLI`` with ``extra`` options in place of those of the same key (a key may be given once)."""
    keys = {e.partition("=")[0] for e in extra}
    return [a for a in CLI if a.partition("=")[0] not in keys] + list(extra)
real_train = dlasearch.train.train


def within(summary, tol=0.05):
    """Every row's params within tol of its target; pattern rows' target is the budget."""
    for r in summary.itertuples():
        assert abs(r.params / r.target_params - 1) <= tol, (r.pattern, r.params, r.target_params)
        if r.pattern in PATTERNS:
            assert r.target_params == BUDGET


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """plain (= chain) and hda, 2 seeds, plus the default chain_2x baseline: 6 runs."""
    out = tmp_path_factory.mktemp("compare") / "two"
    lines = []
    res = compare.compare("plain,hda", seeds=2, out=out, log=lines.append, **COMMON)
    return res, out, "\n".join(lines)


def test_sizes_trains_and_writes_everything(two):
    res, out, printed = two
    s = res["summary"]
    assert list(s.pattern) == ["chain", "hda", "chain_2x"]
    within(s)
    assert s.set_index("pattern").target_params["chain_2x"] == 2 * BUDGET
    assert (s.runs == 2).all() and res["trained"] == 6 and res["reused"] == 0
    csv = pd.read_csv(out / "comparison.csv")
    assert list(csv.pattern) == ["chain", "hda", "chain_2x"]
    for col in ("test_acc_mean", "test_acc_std", "test_acc_ci_low", "test_acc_ci_high", "params", "macs",
                "train_memory_bytes", "train_seconds_mean", "diff_vs_chain", "p_welch", "p_holm"):
        assert col in csv.columns
        assert csv[col].notna().all() or col in ("diff_vs_chain", "p_welch", "p_holm")
    assert csv.set_index("pattern").loc[["hda", "chain_2x"], "p_welch"].between(0, 1).all()
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 6 and set(runs.seed) == {0, 1}
    assert runs.test_accuracy.between(0, 1).all() and (runs.status == "ok").all()
    assert (runs.train_seconds > 0).all() and (runs.macs > 0).all() and (runs.train_memory_bytes > 0).all()
    for stem in PLOTS:
        for ext in ("png", "svg"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000
    assert len(list((out / "runs").glob("*.json"))) == 6
    for text in (printed, (out / "comparison.md").read_text()):
        assert "| pattern" in text and "| chain " in text and "| hda " in text and "| chain_2x " in text
        assert "95% CI" in text and "p Welch" in text
    assert printed.count("] chain seed") == 2 and "[6/6] chain_2x seed 1" in printed


def test_rerun_reuses_runs_and_adds_only_new_seeds(two, monkeypatch):
    res, out, _ = two

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(dlasearch.train, "train", no_training)
    lines = []
    again = compare.compare("chain,hda", seeds=2, out=out, log=lines.append, **COMMON)
    assert again["trained"] == 0 and again["reused"] == 6
    assert sum("done earlier" in ln for ln in lines) == 6
    pd.testing.assert_frame_equal(again["runs"], res["runs"])

    calls = []
    monkeypatch.setattr(dlasearch.train, "train", lambda *a, **k: calls.append(k) or real_train(*a, **k))
    more = compare.compare("chain,hda", seeds=3, out=out, log=lambda *a: None, **COMMON)
    assert more["trained"] == 3 and more["reused"] == 6 and len(calls) == 3
    assert {c.get("test") for c in calls} == {True}


def test_all_seven_patterns_through_the_cli(tmp_path, capsys):
    out = tmp_path / "seven"
    assert main(["compare", "patterns=chain,skip,ida,tree,reentrant,hda,dla", "seeds=1", "baseline=false",
                 f"out={out}", *CLI]) == 0
    printed = capsys.readouterr().out
    s = pd.read_csv(out / "comparison.csv")
    assert list(s.pattern) == list(PATTERNS)
    within(s)
    assert s.fingerprint.nunique() == 7  # the default blocks (2, 4, 4) make tree, reentrant and hda differ
    assert len(pd.read_csv(out / "runs.csv")) == 7
    assert all(f"| {p} " in printed for p in PATTERNS) and "[7/7] dla seed 0" in printed
    assert all((out / f"{stem}.{ext}").exists() for stem in PLOTS for ext in ("png", "svg"))


def test_progress_counts_every_epoch_when_validating_less_often(tmp_path, capsys):
    """With eval_every=2 a progress line comes after epochs 2 and 3 and counts both epochs of the first
    (an ETA from validations instead of epochs read 2x too long)."""
    args = [a for a in CLI if not a.startswith("epochs=")]
    assert main(["compare", "patterns=chain", "seeds=1", "baseline=false", "epochs=3", "eval_every=2",
                 f"out={tmp_path / 'c'}", *args]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[1/1] chain seed 0 epoch")]
    assert [x.split(" | ")[1] for x in lines] == ["2/3 epochs", "3/3 epochs"], lines


def test_progress_total_leaves_out_the_runs_it_will_reuse(tmp_path, capsys):
    """A pattern added to a finished comparison trains alone: the progress total holds its epochs only,
    also while the reused runs that come after it in the order are still ahead."""
    out = f"out={tmp_path / 'c'}"
    assert main(["compare", "patterns=chain,ida", "seeds=1", "baseline=false", out, *CLI]) == 0
    capsys.readouterr()
    assert main(["compare", "patterns=chain,skip,ida", "seeds=1", "baseline=false", out, *CLI]) == 0
    printed = capsys.readouterr()
    lines = (printed.out + printed.err).splitlines()
    assert [x.split(" | ")[1] for x in lines if " epoch 1/1 " in x] == ["1/1 epochs"], lines
    assert any(x.startswith("[3/3] ida seed 0: ") and "done earlier" in x for x in lines), lines


def test_identical_networks_are_trained_once(tmp_path):
    """With 2 blocks per stage, tree and hda are one graph: hda reuses tree's runs."""
    res = compare.compare("tree,hda", seeds=1, out=tmp_path / "twins", blocks="2,2,2", baseline=False,
                          log=lambda *a: None, **COMMON)
    s = res["summary"].set_index("pattern")
    assert s.same_as["hda"] == "tree" and res["trained"] == 2 and res["reused"] == 1
    assert s.test_acc_mean["hda"] == s.test_acc_mean["tree"]


@pytest.mark.parametrize("budget", [15000, 20000, 60000, 250000, 1000000])
def test_sizing_lands_within_tolerance(budget):
    for pattern in ("chain", "dla"):
        sized = compare.size(pattern, budget, 0.05, in_channels=3, num_classes=10)
        assert abs(sized.params / budget - 1) <= 0.05
        assert all(w % sized.divisor == 0 and w >= 8 for w in sized.widths)
        assert sized.spec["pattern"] == pattern


def test_statistics_match_scipy():
    a, b = [0.91, 0.93, 0.92, 0.95], [0.90, 0.89, 0.92]
    diff, lo, hi, p = compare.welch(a, b)
    assert p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert diff == pytest.approx(sum(a) / 4 - sum(b) / 3) and lo < diff < hi
    m, s, lo, hi = compare.mean_ci(a)
    assert (lo, hi) == pytest.approx(stats.t.interval(0.95, 3, loc=m, scale=s / 2))
    assert all(math.isnan(v) for v in compare.mean_ci([0.5])[1:])
    assert compare.holm({"x": 0.01, "y": 0.04, "z": math.nan}) == pytest.approx(
        {"x": 0.02, "y": 0.04, "z": math.nan}, nan_ok=True)


def test_option_parsing():
    assert compare.parse_patterns("plain, c,dla,chain") == ["chain", "ida", "dla"]
    assert compare.parse_patterns(["hda", "f"]) == ["hda"]
    assert compare.parse_seeds(3) == [0, 1, 2] and compare.parse_seeds("4,7") == [4, 7]
    assert compare.parse_budget("20k") == (20000, 0.05)
    assert compare.parse_budget({"params": 2e4, "tolerance": 0.1}) == (20000, 0.1)
    assert compare.parse_baseline(False) == () and compare.parse_baseline("0.5,2") == (0.5, 2.0)


# ------------------------------------------------------------------ bad input: one line, exit 2

def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("dlasearch compare: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_unknown_pattern(tmp_path, capsys):
    assert main(["compare", "patterns=chain,hdaa", f"out={tmp_path / 'x'}", *CLI]) == 2
    err = one_error_line(capsys)
    assert "'hdaa'" in err and "did you mean 'hda'" in err and "chain, skip, ida" in err
    assert not (tmp_path / "x").exists()


def test_impossible_budget(tmp_path, capsys):
    argv = ["compare", "patterns=chain,dla", f"out={tmp_path / 'x'}", *cli_with("budget.params=1000")]
    assert main(argv) == 2
    err = one_error_line(capsys)
    assert "budget.params=1,000 is too small" in err and "use budget.params >=" in err
    assert not (tmp_path / "x").exists()


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["compare", "patterns=chain", f"out={blocker / 'sub'}", *CLI]) == 2
    assert "a_file is a file, not a folder" in one_error_line(capsys)
    assert main(["compare", "patterns=chain", f"out={blocker}", *CLI]) == 2
    assert "is a file" in one_error_line(capsys)
    assert blocker.read_text() == "not a folder"


def test_changed_settings_are_refused(two, capsys):
    _, out, _ = two
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main(["compare", "patterns=chain,hda", "seeds=2", f"out={out}", *cli_with("epochs=2")]) == 2
    err = one_error_line(capsys)
    assert "other settings" in err and "train.epochs: 1 -> 2" in err and "new out=" in err
    assert main(["compare", "patterns=chain,hda", "seeds=2", f"out={out}", *cli_with("budget.params=30000")]) == 2
    assert "budget.params: 20000.0 -> 30000.0" in one_error_line(capsys)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_other_folders_and_options_are_refused(tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["compare", "patterns=chain", f"out={tmp_path / 'busy'}", *CLI]) == 2
    assert "holds no comparison" in one_error_line(capsys)
    assert main(["compare", "patterns=chain", "seed=1", *CLI]) == 2
    assert "seeds=N" in one_error_line(capsys)
    assert main(["compare", "patterns=chain", "budgett=5", *CLI]) == 2
    assert "did you mean 'budget'" in one_error_line(capsys)
    assert main(["compare", "patterns=chain", "seeds=0", *CLI]) == 2
    assert "seeds=0" in one_error_line(capsys)


def test_one_seed_at_chance_shows_dashes_marks_and_one_warning(tmp_path, capsys):
    """lr=0 leaves the networks at their random init: every row is at chance and nothing needs 2 seeds is shown."""
    out = tmp_path / "chance"
    assert main(["compare", "patterns=hda", "seeds=1", "baseline=false", "lr=0", f"out={out}", *CLI]) == 0
    printed = capsys.readouterr().out
    s = pd.read_csv(out / "comparison.csv")
    assert s.at_chance.all() and pd.read_csv(out / "runs.csv").at_chance.all()
    md = (out / "comparison.md").read_text()
    for text in (printed, md):
        rows = [ln for ln in text.splitlines() if ln.startswith("| hda ")]
        assert len(rows) == 1 and "≈chance" in rows[0] and "–" in rows[0] and "n/a" not in rows[0]
        assert "–: not computed" in text and "≈chance: the mean test accuracy is within chance" in text
        assert "Spearman rank correlation of params and test accuracy: –" in text and "rho =" not in text
    warnings = [ln for ln in printed.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "chain, hda" in warnings[0]


def test_a_comparison_from_before_train_init_resumes_with_the_original_init(tmp_path):
    """A stored comparison without train.init, bn_batches and freeze predates them: it was trained with
    init=original, no BatchNorm recalibration and nothing frozen; that resumes, zero-last is refused."""
    import json

    folder = tmp_path / "old"
    folder.mkdir()
    old = {"version": 1, "train": {"epochs": 6, "lr": 0.1}}
    (folder / compare.SETTINGS).write_text(json.dumps(old))
    then = {"epochs": 6, "lr": 0.1, "init": "original", "bn_batches": 0, "freeze": "none", "schedule": "auto"}
    compare.check_settings(folder, {"version": 1, "train": then})
    with pytest.raises(compare.CompareError, match="train.init: 'original' -> 'zero-last'"):
        compare.check_settings(folder, {"version": 1, "train": {**then, "init": "zero-last"}})


@pytest.mark.skipif(not (SHARED / "FashionMNIST").is_dir(), reason=f"no Fashion-MNIST under {SHARED}")
def test_the_committed_comparison_resumes_with_its_documented_command(tmp_path, monkeypatch, capsys):
    """results/compare/fashion_mnist-100k predates init, bn_batches, freeze and the channels_last default:
    its README command keeps the stored values it does not set and reuses all 24 runs; setting one refuses."""
    import shutil

    folder = tmp_path / "fm"
    shutil.copytree(Path(__file__).resolve().parents[1] / "results" / "compare" / "fashion_mnist-100k", folder)

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(dlasearch.train, "train", no_training)
    command = ["compare", "patterns=chain,skip,ida,tree,reentrant,hda,dla", "data=fashion_mnist",
               f"data.root={SHARED}", "epochs=6", "seeds=3", "budget.params=100000", "threads=1", f"out={folder}"]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "keeping its stored train.bn_batches=0, train.channels_last=False, train.init='original'" in out
    assert "0 run(s) trained, 24 reused" in out
    assert main([*command, "bn_batches=8"]) == 2
    assert "train.bn_batches: 0 -> 8" in one_error_line(capsys)
