"""Dense prediction in search, compare and report: `run space=seg` ranks by foreground mIoU, keeps the best
weights and writes trials.csv; `compare task=segment` sizes (pattern, decoder) rows; the space schema
checks the dense keys; a study made before schedule/class_weights were pinned still resumes."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from conftest import with_sections
import dlasearch
from dlasearch import search
from dlasearch.analysis import report
from dlasearch.cli import main
from dlasearch.errors import SpaceError
from dlasearch.search import space
from dlasearch.search.objective import describe

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_mnist = pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(),
                                 reason=f"shared MNIST files under {SHARED} are absent")


@pytest.fixture(scope="module", autouse=True)
def scene_cache(tmp_path_factory):
    """Scene caches go to one fresh folder for this module, never the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


def tiny_seg(tmp_path, **over):
    """space=seg on 200 scenes, 1 epoch: a few seconds per trial."""
    base = {"study": {"results": str(tmp_path), "trials": 2, "seed": 0}, "train": {"epochs": 1},
            "data": {"limit": 200, "root": str(SHARED)}}
    return space.load("seg", with_sections(base, over))


@pytest.fixture(scope="module")
def seg_study(tmp_path_factory):
    """A finished 2-trial `space=seg` study (its first trial is the narrowest chain with each decoder choice)."""
    tmp = tmp_path_factory.mktemp("segstudy")
    sp = tiny_seg(tmp)
    summary = search.run(sp, log=lambda *a: None)
    return sp, Path(summary["dir"]), summary


@needs_mnist
def test_seg_space_ranks_by_foreground_miou_and_keeps_the_best_weights(seg_study):
    sp, folder, summary = seg_study
    df = pd.read_csv(folder / "trials.csv")
    assert {"miou_fg", "val_score", "miou", "val_accuracy", "at_chance"} <= set(df.columns)
    done = df[df.state == "COMPLETE"]
    assert len(done) and (done.value == done.miou_fg).all() and (done.val_score == done.miou_fg).all()
    assert done.arch.str.contains("decoder ").all()
    study = search.open_study(sp, create=False)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        assert t.intermediate_values[1] == t.value  # Hyperband read val_score (fg mIoU), not pixel accuracy
        assert json.loads(t.user_attrs["spec"])["task"] == "segment"
    best = summary["best"][0]
    weights = folder / "best" / f"trial{best}.safetensors"
    assert weights.is_file()
    model = dlasearch.load(weights)
    x = torch.zeros(2, 1, 32, 32, dtype=torch.uint8)
    assert tuple(model(model.preprocess(x)).shape) == (2, 11, 32, 32)


@needs_mnist
def test_seg_study_report_and_predict_from_a_trial(seg_study, tmp_path):
    sp, folder, summary = seg_study
    url = str(folder / "journal.log")
    md = report.report("seg", storage=url, out=tmp_path / "report", top=1, log=lambda *a: None).read_text()
    assert "miou_fg_vs_cost.svg" in md and "## Predictions of the best trial" in md
    assert (tmp_path / "report" / "predictions.png").is_file()
    x = tmp_path / "x.npz"
    import numpy as np
    np.savez(x, x=np.zeros((2, 32, 32), dtype=np.uint8))
    assert main(["predict", "study=seg", f"trial={summary['best'][0]}", f"storage={url}", f"images={x}",
                 f"out={tmp_path / 'pred'}"]) == 0
    assert len(list((tmp_path / "pred" / "masks").glob("*.png"))) == 2


@needs_mnist
def test_one_architecture_twice_is_trained_once_and_resumes(tmp_path):
    fixed = {"pattern": {"value": "chain"}, "decoder": {"value": "fpn"}, "decoder_channels": {"value": 16},
             "levels": {"value": 1}, "width": {"value": 16}, "decoder_mode": {"value": None}}
    sp = tiny_seg(tmp_path, params=fixed, study={"max_duplicates": 1})  # one architecture: repeats end the study
    search.run(sp, log=lambda *a: None)
    search.run(tiny_seg(tmp_path, params=fixed, study={"trials": 3, "max_duplicates": 2}), log=lambda *a: None)
    t = search.open_study(sp, create=False).get_trials(deepcopy=False)
    assert [x.user_attrs.get("duplicate_of") for x in t] == [None, 0, 0]
    assert t[1].user_attrs["miou_fg"] == t[0].user_attrs["miou_fg"] == t[2].values[0]


@needs_mnist
def test_compare_task_segment_writes_its_table(tmp_path, capsys):
    argv = ["compare", "task=segment", "data=mnist_seg", f"data.root={SHARED}", "data.limit=200", "decoders=none,fpn",
            "patterns=chain", "budget.params=1e5", "seeds=1", "epochs=1", "batch_size=32", "baseline=false",
            f"out={tmp_path / 'cmp'}"]
    assert main(argv) == 0
    summary = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert list(summary.pattern) == ["chain+none", "chain+fpn"]
    assert (summary.params_vs_target.abs() <= 0.05).all() and summary.test_miou_fg_mean.between(0, 1).all()
    assert "Δ vs chain+none" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert (tmp_path / "cmp" / "miou_fg_vs_params.png").is_file()
    assert "![miou_fg_curve](miou_fg_curve.svg)" in (tmp_path / "cmp" / "comparison.md").read_text()
    # the params-score correlation leaves the decoder-less floor out: chain+fpn's one run only
    assert "Spearman rank correlation of params and test foreground mIoU: – (needs at least" in capsys.readouterr().out
    assert "with different scores; here 1 run(s) of 1 size(s))" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert main(argv) == 0  # finished runs are kept, not redone
    assert "0 run(s) trained, 2 reused" in capsys.readouterr().out


def test_describe_names_the_decoder():
    spec = space.sample(space.load("seg"), _First())
    assert ", decoder " in describe(spec) and spec["task"] == "segment"
    assert "decoder" not in describe(space.sample(space.load("hda"), _First()))


class _First:
    """A stand-in trial taking the first choice and the low end of every range."""

    def suggest_categorical(self, name, choices):
        return choices[0]

    def suggest_int(self, name, low, high, step=1, log=False):
        return low

    def suggest_float(self, name, low, high, step=None, log=False):
        return low


@pytest.mark.parametrize("over, message", [
    ({"params": {"decoder": {"choices": ["none", "fpnn"]}}}, "params.decoder.choices: 'fpnn' is not allowed (did you "
                                                              "mean 'fpn'?)"),
    ({"backbone": {"decoder": "idaup"}}, "backbone.decoder: 'idaup' is not allowed (did you mean 'ida_up'?)"),
    ({"objectives": ["val_accuracy"]}, "objectives: val_accuracy does not score task 'segment' architectures"),
    ({"objectives": ["miou_fg", "val_accuracy"]}, "must include exactly one score"),
    ({"params": {"task": {"choices": ["classify", "segment"]}}}, "params.task: the task is fixed per study"),
    ({"params": {"first_level": {"value": -1}}}, "params.first_level.value: -1 must be an int >= 0"),
])
def test_space_schema_checks_the_dense_keys(over, message):
    with pytest.raises(SpaceError) as e:
        space.load("seg", over)
    assert message in str(e.value)


def test_decoder_keys_need_task_segment():
    with pytest.raises(SpaceError, match="params.decoder: a decoder needs task: segment"):
        space.load("hda", {"params": {"decoder": {"value": "fpn"}}})
    with pytest.raises(SpaceError, match="objectives: miou_fg does not score task 'classify'"):
        space.load("hda", {"objectives": ["miou_fg"]})
    sp = space.load("seg", {"train": {"schedule": "cosine", "class_weights": "none"}})
    assert sp["train"]["schedule"] == "cosine" and sp["train"]["class_weights"] == "none"


def test_miou_objective_on_classification_data_is_refused_before_a_study(tmp_path):
    sp = tiny_seg(tmp_path, data={"name": "digits", "limit": 200, "root": None},
                  backbone={"task": "segment"})
    with pytest.raises(SpaceError, match="digits is classify data; use objectives=\\[val_accuracy\\]"):
        search.run(sp, log=lambda *a: None)
    assert not (tmp_path / "seg" / "journal.log").exists()


def test_a_study_from_before_schedule_and_class_weights_resumes(tmp_path):
    """Their pinning is new: a stored contract without them reads as the classification run it was."""
    sp = space.load("hda", {"study": {"results": str(tmp_path), "trials": 1}, "data": {"limit": 200}})
    study = search.open_study(sp)
    contract = json.loads(study.user_attrs["contract"])
    assert contract["train"]["schedule"] == "auto" and contract["train"]["class_weights"] is None
    for k in ("schedule", "class_weights"):
        del contract["train"][k]
    study.set_user_attr("contract", json.dumps(contract))
    search.open_study(space.load("hda", {"study": {"results": str(tmp_path), "trials": 1}, "data": {"limit": 200}}))


def test_compare_rows_can_name_a_decoders_merge_mode():
    """``decoders=ida_up,ida_up.sum``: the same decoder with another merge is a row of its own."""
    from dlasearch.analysis.compare import CompareError, make_spec, parse_decoders
    from dlasearch.patterns import build

    assert parse_decoders("ida_up,ida_up.sum,ida_up.wsum,fpn,bifpn") == ["ida_up", "ida_up.sum", "ida_up.wsum",
                                                                          "fpn", "bifpn"]
    for bad, needle in (("ida_up.avg", "decoders='ida_up.avg'"), ("none.sum", "decoders='none.sum'")):
        with pytest.raises(CompareError, match=needle):
            parse_decoders(bad)
    widths = (8, 16, 16, 32, 64)
    plain, summed = (make_spec("dla", widths, (2, 2, 2), 1, 11, d) for d in ("ida_up", "ida_up.sum"))
    assert summed["decoder"] == "ida_up" and summed["decoder_mode"] == "sum" and "decoder_mode" not in plain
    def merges(spec):  # the decoder's aggregation nodes (ida_up's are dla_up.*) and how they merge
        return {d.get("mode") for n, d in build(spec).nodes(data=True) if d.get("kind") == "aggregate"
                and n.startswith("dla_up.")}
    assert merges(summed) == {"sum"} and "sum" not in merges(plain)


def test_compare_takes_a_decoder_from_a_spec_file(tmp_path):
    """``decoders=nasfpn@best/trial7.spec.json``: a searched NAS-FPN cell is a row beside the hand-designed
    necks, named by the file (no path in run folders), with the file's cells and the decoder's default
    width; bad entries are one line naming the entry."""
    from dlasearch.analysis.compare import CompareError, make_spec, parse_decoders
    from dlasearch.analysis.compare.options import parse_options
    from dlasearch.analysis.compare.statistics import figure
    from dlasearch.patterns import build

    cells = [[0, 3, 1, "gpa"], [4, 1, 0, "sum"], [5, 2, 2, "sum"], [6, 3, 3, "sum"]]
    best = tmp_path / "best" / "trial7.spec.json"
    best.parent.mkdir()
    best.write_text(json.dumps({"pattern": "dla", "task": "segment", "decoder": "nasfpn", "decoder_channels": 16,
                                "cells": cells}))
    entries = parse_decoders(f"fpn,nasfpn,nasfpn@{best}")
    assert entries == ["fpn", "nasfpn", f"nasfpn@{best}"]
    o = parse_options("dla", "mnist_seg", 2, 1e5, task="segment", decoders=f"fpn,nasfpn@{best}", log=lambda m: None)
    assert [k for k, _, _ in o.rows()] == ["chain+none", "dla+fpn", "dla+nasfpn@trial7"]
    assert figure("dla+nasfpn@trial7") == "fig2"
    widths = (8, 16, 16, 32, 64)
    searched, paper = (make_spec("dla", widths, (2, 2, 2), 1, 11, d) for d in entries[2:0:-1])
    assert searched["cells"] == cells and "decoder_channels" not in searched and "cells" not in paper
    cells_of = lambda spec: sorted(n.rpartition(".")[2] for n, d in build(spec).nodes(data=True)  # noqa: E731
                                   if d.get("kind") == "aggregate" and ".stack0.cell" in n)
    assert cells_of(searched) == ["cell0", "cell0_gpa", "cell1", "cell2", "cell3"]  # cell0's op is gpa
    assert len([c for c in cells_of(paper) if not c.endswith("_gpa")]) == 7
    other = tmp_path / "fpn.yaml"
    other.write_text("pattern: dla\ntask: segment\ndecoder: fpn\n")
    for bad, needle in ((f"nasfpn@{tmp_path}/nope.json", "is not a file"),
                        (f"fpn@{best}", "has decoder 'nasfpn', not 'fpn'"),
                        (f"fpn@{other}", "sets none of cells"),
                        (f"nasfpn.sum@{best}", "expected decoder@spec-file")):
        with pytest.raises(CompareError, match="decoders=.*" + needle):
            parse_decoders(bad)
    twin = tmp_path / "trial7.yaml"
    twin.write_text(f"pattern: dla\ntask: segment\ndecoder: nasfpn\ncells: {json.dumps(cells)}\n")
    with pytest.raises(CompareError, match="would both be row 'nasfpn@trial7'"):
        parse_decoders(f"nasfpn@{best},nasfpn@{twin}")


def test_compare_takes_the_boundary_task(capsys):
    """``data.task=boundary`` reaches compare (it was refused as an unknown option)."""
    assert main(["compare", "task=segment", "data=mnist_seg", "data.task=boundary", "decoders=none,ida_up",
                 "patterns=dla", "budget.params=1e5", "--cfg"]) == 0
    assert "task: boundary" in capsys.readouterr().out
