"""Search results that say how much to trust them (issue 31 §4): standard errors and tie marks,
``confirm=K seeds=S``, duplicates that use up no trial (with a cap), and a sampler seed per worker."""
import math

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from conftest import with_sections
from dlasearch import search, stats, train as trainmod
from dlasearch.analysis import report
from dlasearch.cli import options, parse_overrides
from dlasearch.errors import SpaceError
from dlasearch.search import confirm, resume, space
from dlasearch.search.space import SHORTCUTS
from dlasearch.search.study import counted, duplicates, make_sampler, sampler_seed

QUIET = {"log": lambda *a: None}
TWO = {"pattern": {"value": "hda"}, "width": {"choices": [8, 16]}, "growth": {"value": 2.0}, "levels": {"value": 1},
       "block": {"value": "basic"}, "root_kernel": {"value": 1}, "residual_root": {"value": False}}
ONE = {**TWO, "width": {"value": 8}}  # one architecture: every trial after the first repeats it


def tiny(tmp_path, params=TWO, **over):
    """hda on 300 digits images, 1 epoch, no pruner, one torch thread: about a second per training."""
    base = {"study": {"results": str(tmp_path), "trials": 2, "seed": 0, "pruner": "none", "threads": 1},
            "train": {"epochs": 1}, "data": {"limit": 300}, "params": params, "seed_published": False}
    return space.load("hda", with_sections(base, over))


def counting(monkeypatch) -> list:
    """Patch ``train.train`` to record the training seed of every run (search and confirm alike)."""
    seeds, real = [], trainmod.train

    def train(model, data, config, **kw):
        seeds.append(config.seed)
        return real(model, data, config, **kw)
    monkeypatch.setattr(trainmod, "train", train)
    return seeds


def frame(trials: list[tuple[float, int | None]]):
    """``trials_frame`` of an in-memory study with one complete trial per (val_accuracy, val_n)."""
    study = optuna.create_study(direction="maximize")
    for i, (p, n) in enumerate(trials):
        attrs = {"val_accuracy": p, "fingerprint": f"fp{i}", **({"val_n": n} if n else {})}
        study.add_trial(optuna.trial.create_trial(params={"w": i}, distributions={"w": CategoricalDistribution(
            list(range(len(trials))))}, value=p, user_attrs=attrs))
    return search.trials_frame(study)


# ------------------------------------------------------------------ standard errors and ties

def test_every_accuracy_gets_its_binomial_standard_error():
    df = frame([(0.99, 288), (0.9861, 288), (0.5, 60), (0.8, None)])
    for p, n, se in zip(df.val_accuracy, df.val_n, df.val_accuracy_se):
        if pd.isna(n):
            assert pd.isna(se)  # a trial recorded without its validation count: no SE invented
        else:
            assert se == pytest.approx(math.sqrt(p * (1 - p) / n), rel=1e-12)


def test_tied_marks_exactly_the_trials_within_two_standard_errors_of_the_best():
    n = 288
    accs = [285 / n, 284 / n, 283 / n, 280 / n, 277 / n, 270 / n]  # the best, 1, 2, 5, 8 and 15 images behind
    df = frame([(p, n) for p in accs])
    se = [math.sqrt(p * (1 - p) / n) for p in accs]
    want = ["best"] + ["tied" if accs[0] - p <= 2 * math.sqrt(se[0] ** 2 + s ** 2) else ""
                       for p, s in zip(accs[1:], se[1:])]
    assert list(df.tied) == want
    assert want[:2] == ["best", "tied"] and want[-1] == ""  # one image in 288 is a tie; fifteen are not
    assert "tied" in want[2:-1] and "" in want[2:-1]  # the line falls between the extremes
    note = search.results.tie_note(df)
    assert "within 2 standard errors" in note and "288 validation images" in note and "confirm=K seeds=S" in note


def test_a_dense_score_gets_no_invented_standard_error():
    study = optuna.create_study(direction="maximize")
    for i, m in enumerate((0.31, 0.30)):
        study.add_trial(optuna.trial.create_trial(value=m, user_attrs={"val_accuracy": 0.9, "val_score": m,
                                                                       "miou_fg": m, "miou": m + 0.1}))
    df = search.trials_frame(study)
    assert df.val_accuracy_se.isna().all() and df.tied.isna().all()


# ------------------------------------------------------------------ confirm=K seeds=S

def test_confirm_options_parse_validate_and_resume(tmp_path):
    args = parse_overrides(["space=hda", "confirm=2", "seeds=4", "study.max_duplicates=5"], SHORTCUTS)
    options.check("run", args)
    sp = resume.resolve(args)
    assert sp["study"]["confirm"] == {"top": 2, "seeds": 4} and sp["study"]["max_duplicates"] == 5
    old = space.load("hda")  # a space file without the new keys
    assert old["study"]["confirm"] == {"top": 0, "seeds": 3} and space.duplicate_cap(old) == 3 * old["study"]["trials"]
    for bad in ({"confirm": {"seeds": 0}}, {"max_duplicates": 0}, {"confirm": 3}):
        with pytest.raises(SpaceError):
            space.load("hda", {"study": bad})


def test_confirm_trains_top_k_with_s_seeds_and_a_rerun_reuses_them(tmp_path, monkeypatch):
    seeds = counting(monkeypatch)
    sp = tiny(tmp_path, study={"trials": 2, "confirm": {"top": 2, "seeds": 2}, "max_duplicates": 3})
    lines = []
    summary = search.run(sp, log=lines.append)
    study = search.open_study(sp, create=False)
    trained = [t for t in study.trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len(trained) == 2
    assert sorted(s for s in seeds if s != 0) == [1, 1, 2, 2]  # 2 architectures x seeds 1, 2 (the search used 0)
    assert seeds.count(0) == 2
    runs = confirm.stored_runs(study)
    assert sorted(runs) == sorted((t.user_attrs["fingerprint"], s) for t in trained for s in (1, 2))
    rows = summary["confirmed"]
    assert len(rows) == 2 and all(r["seeds"] == 2 for r in rows)
    for r in rows:
        values = [runs[(r["fingerprint"], s)]["val_score"] for s in (1, 2)]
        m, sd, lo, hi = stats.mean_ci(values)
        assert (r["mean"], r["ci_low"], r["ci_high"]) == pytest.approx((m, lo, hi), nan_ok=True)
    text = "\n".join(lines)
    assert text.rindex("confirmed: the top 2") > text.rindex("trials in 'hda'")  # printed last
    assert "mean val_accuracy ± 95% CI" in text and (tmp_path / "hda" / "confirmed.csv").is_file()
    assert "±SE" in text and "| best" in text
    # the same command again: nothing trained, the same table
    before = len(seeds)
    again = search.run(sp, log=lines.append)
    assert len(seeds) == before and [r["mean"] for r in again["confirmed"]] == [r["mean"] for r in rows]
    # resumed by name, confirm= may change (the other seeds keep their stored value)
    journal = str(tmp_path / "hda" / "journal.log")
    resumed = resume.stored("hda", journal, {"study": {"name": "hda", "confirm": {"top": 1}}})
    assert resumed["study"]["confirm"] == {"top": 1, "seeds": 2}
    # the report leads with the confirmed table
    md = report.report("hda", storage=str(tmp_path / "hda" / "journal.log"), out=tmp_path / "rep", top=0,
                       log=lambda *a: None).read_text()
    assert "## Confirmed over seeds" in md and md.index("## Confirmed over seeds") < md.index("## Trials")
    assert "val_accuracy_se" in md and (tmp_path / "rep" / "confirmed.csv").is_file()


# ------------------------------------------------------------------ duplicates

def test_a_stuck_sampler_uses_up_no_trials_and_the_cap_ends_it(tmp_path, monkeypatch):
    seeds = counting(monkeypatch)
    sp = tiny(tmp_path, ONE, study={"trials": 3, "max_duplicates": 4, "sampler": "random"})
    lines = []
    search.run(sp, log=lines.append)
    study = search.open_study(sp, create=False)
    t = study.get_trials(deepcopy=False)
    assert len(seeds) == 1  # trained once
    assert [x.user_attrs.get("duplicate_of") for x in t] == [None, 0, 0, 0, 0]
    assert counted(study) == 1 and duplicates(study) == 4  # the repeats used up no trial; the cap ended it
    text = "\n".join(lines)
    assert "stopping:" in text and "study.max_duplicates=4" in text and "with 1 of 3 trials" in text
    assert "ended at its cap" in text
    # the report leaves them out of the history and importances, and says so
    assert len(report.without_duplicates(study).trials) == 1
    md = report.report("hda", storage=str(tmp_path / "hda" / "journal.log"), out=tmp_path / "rep", top=0,
                       log=lambda *a: None).read_text()
    assert "4 trial(s) were answered from an identical earlier architecture" in md


def test_duplicates_do_not_count_against_trials(tmp_path, monkeypatch):
    seeds = counting(monkeypatch)
    sp = tiny(tmp_path, TWO, study={"trials": 2, "sampler": "random", "seed": 3})
    search.run(sp, **QUIET)
    study = search.open_study(sp, create=False)
    t = study.get_trials(deepcopy=False)
    fresh = [x for x in t if "duplicate_of" not in x.user_attrs]
    assert len(fresh) == len(seeds) == 2 == counted(study)  # two architectures, each trained once
    assert len({x.user_attrs["fingerprint"] for x in fresh}) == 2
    assert len(t) == 2 + duplicates(study) and all(x.user_attrs.get("repeated") for x in t if x not in fresh)


def test_a_queued_repeat_still_counts(tmp_path):
    """A trial asked for by name (queued: published configs, a benchmark's grid) counts as before."""
    sp = tiny(tmp_path, ONE, study={"trials": 2})
    study = search.open_study(sp)
    study.enqueue_trial({})
    study.enqueue_trial({})
    search.work(study, sp, **QUIET)
    t = study.get_trials(deepcopy=False)
    assert len(t) == 2 and t[1].user_attrs["duplicate_of"] == 0 and not t[1].user_attrs.get("repeated")


# ------------------------------------------------------------------ a sampler seed per worker

def test_each_worker_gets_its_own_sampler_seed():
    started = [1000 * (i + 1) for i in range(3)]  # what `run workers=3` numbers its workers (study.attach)
    seeds = {sampler_seed(0, 0, w) for w in started}
    assert len(seeds) == 3 and 0 not in seeds and sampler_seed(0) == 0  # the creating process keeps the study's
    assert sampler_seed(0, 0, 1000) == sampler_seed(0, 0, 1000) != sampler_seed(1, 0, 1000)  # from the study seed
    # two workers started by hand (pid as their number): 31742 before any trial, 31741 after one. The
    # seeds were added (0 + 0 + 31742 == 0 + 1 + 31741), so both drew the same first trial
    assert sampler_seed(0, 0, 31742) != sampler_seed(0, 1, 31741)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_two_workers_draw_different_first_trials(tmp_path, sampler):
    sp = space.load("hda", {"study": {"results": str(tmp_path), "sampler": sampler}})
    firsts = []
    for offset, worker in ((0, 31742), (1, 31741)):  # the case above, each on an empty study
        study = optuna.create_study(sampler=make_sampler(sp, offset, worker))
        trial = study.ask()
        space.sample(sp, trial)
        firsts.append(trial.params)
    assert firsts[0] != firsts[1]


def test_the_grid_keeps_one_order_in_every_worker(tmp_path):
    sp = space.load("figure1", {"study": {"results": str(tmp_path)}})
    orders = [make_sampler(sp, n, w)._all_grids for n, w in ((0, 0), (0, 1000), (3, 2000))]
    assert orders[0] == orders[1] == orders[2]
