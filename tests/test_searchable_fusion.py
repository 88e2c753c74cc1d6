"""Fusion modes and necks as search choices (issue 30 §3): a stage's ``mode`` and the spec's
``decoder_mode`` change the built IR's aggregation nodes, specs without them keep their fingerprints,
bad values fail in one line; ``space=nasfpn`` samples NAS-FPN merging cells that always build,
``space=seg`` samples the necks, ``space=fusion`` a mode per stage; a tiny nasfpn study runs."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from conftest import tiny_spec
from test_fusion import RECORDED_TINY, ir_params, trainable

from dlasearch import compile, search
from dlasearch.decoders import DECODER_MODES, MODES, check_cells
from dlasearch.errors import PrecheckError, SpaceError
from dlasearch.ir import IRError, fingerprint
from dlasearch.patterns import build, normalize
from dlasearch.search import precheck, space
from dlasearch.search.study import grid_of

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_mnist = pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(),
                                 reason=f"shared MNIST files under {SHARED} are absent")
AGGREGATING = ("skip", "ida", "tree", "reentrant", "hda", "dla")


def with_modes(spec: dict, *modes) -> dict:
    spec["stages"] = [{**st, "mode": m} for st, m in zip(spec["stages"], modes)]
    return spec


def encoder_aggregates(g, prefix=""):
    return {n: g.nodes[n] for n in g.of_kind("aggregate") if n.startswith(prefix) and not n.startswith("decoder")}


# ------------------------------------------------------------ the spec

@pytest.mark.parametrize("pattern", AGGREGATING)
@pytest.mark.parametrize("mode", [m for m in MODES if m != "concat"])
def test_a_stage_mode_sets_its_aggregation_nodes(pattern, mode):
    """Every stage at ``mode``: each encoder aggregation node merges by it (gpa over more than two inputs:
    a gpa pair summed with the rest), the IR's parameters are the module's, and the forward runs."""
    g = build(with_modes(tiny_spec(pattern), mode, mode, mode))
    aggs = encoder_aggregates(g)
    assert aggs and all(d["mode"] == mode or (mode == "gpa" and d["mode"] == "sum" and f"{n}.gpa" in aggs)
                        for n, d in aggs.items())
    assert fingerprint(g) != RECORDED_TINY[pattern, "classify"]
    m = compile(g)
    assert trainable(m) == ir_params(g)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_modes_apply_per_stage_and_project_other_widths():
    """dla, stage 1 (level3) at sum: only its roots change; the stage input (16 channels) that joins its
    final root is projected to the stage's 32 first."""
    g = build(with_modes(tiny_spec("dla"), "concat", "sum", "concat"))
    modes = {n: d["mode"] for n, d in encoder_aggregates(g).items()}
    assert {m for n, m in modes.items() if n.startswith("level3.")} == {"sum"}
    assert {m for n, m in modes.items() if not n.startswith("level3.")} == {"concat"}
    proj = [n for n in g.of_kind("project") if n.startswith("level3.") and ".root.project" in n]
    assert proj and all(g.nodes[n]["out"] == 32 for n in proj)
    seg = build(with_modes(tiny_spec("dla", task="segment"), "wsum", "concat", "gpa"))
    assert compile(seg)(torch.randn(1, 3, 33, 31)).shape == (1, 10, 33, 31)


def test_ida_and_skip_merge_at_their_stage_mode():
    ida = build(with_modes(tiny_spec("ida"), "concat", "wsum", "gpa"))
    assert ida.nodes["ida.1.root"]["mode"] == "wsum" and ida.nodes["ida.2.root"]["mode"] == "gpa"
    skip = build(with_modes(tiny_spec("skip"), "concat", "concat", "gpa"))  # 3 inputs: gpa pair + sum
    assert skip.nodes["skip.root.gpa"]["mode"] == "gpa" and skip.nodes["skip.root"]["mode"] == "sum"
    assert skip.nodes["skip.root"]["residual"] is None
    rr = build({**with_modes(tiny_spec("hda"), "sum", "sum", "sum"), "residual_root": True})
    assert compile(rr)(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("pattern, task", sorted(RECORDED_TINY))
def test_concat_or_no_mode_keeps_fingerprints_and_json(pattern, task):
    plain = tiny_spec(pattern, task=task)
    explicit = with_modes(tiny_spec(pattern, task=task), "concat", "concat", "concat")
    assert fingerprint(build(explicit)) == fingerprint(build(plain)) == RECORDED_TINY[pattern, task]
    assert normalize(explicit) == normalize(plain)
    assert all("mode" not in st for st in normalize(plain)["stages"])
    assert normalize(plain)["decoder_mode"] is None


def test_chain_has_no_aggregation_to_change():
    assert fingerprint(build(with_modes(tiny_spec("chain"), "sum", "gpa", "wsum"))) == RECORDED_TINY["chain", "classify"]


@pytest.mark.parametrize("decoder", sorted(DECODER_MODES))
def test_decoder_mode_sets_the_decoders_merges(decoder):
    allowed = DECODER_MODES[decoder]
    base = build(tiny_spec(task="segment", decoder=decoder))
    for mode in MODES:
        spec = tiny_spec(task="segment", decoder=decoder, decoder_mode=mode)
        if mode not in allowed:
            with pytest.raises(IRError) as e:
                build(spec)
            assert "\n" not in str(e.value) and str(e.value).startswith(f"spec.decoder_mode={mode!r}: decoder ")
            continue
        g = build(spec)
        dec = {n: d for n, d in g.nodes(data=True) if d["kind"] == "aggregate" and not n.startswith("base.")
               and n not in ("decoder.head",)}  # hrnet_fuse's head concatenates (HRNetV2's), whatever the mode
        assert mode in {d["mode"] for d in dec.values()}
        assert (fingerprint(g) == fingerprint(base)) == (mode == allowed[0])
        m = compile(g)
        assert trainable(m) == ir_params(g)
        assert m(torch.randn(1, 3, 35, 29)).shape == (1, 10, 35, 29)


@pytest.mark.parametrize("spec, field", [
    (with_modes(tiny_spec(), "concat", "Sum", "concat"), "spec.stages[1].mode='Sum': unknown fusion mode "
                                                         "(did you mean 'sum'?); allowed: concat, sum, wsum, gpa"),
    (with_modes(tiny_spec(), 1, "sum", "sum"), "spec.stages[0].mode=1: unknown fusion mode"),
    (tiny_spec(task="segment", decoder_mode="wsun"), "spec.decoder_mode='wsun': unknown fusion mode"),
    (tiny_spec(decoder_mode="sum"), "spec.decoder_mode='sum': a decoder needs task=segment"),
    (tiny_spec(task="segment", decoder="nasfpn", decoder_mode="sum"), "spec.decoder_mode='sum': decoder 'nasfpn' "
                                                                      "has no mode to choose"),
    (tiny_spec(task="segment", decoder="fpn", decoder_mode="concat"), "spec.decoder_mode='concat': decoder 'fpn' "
                                                                      "cannot merge by concat; allowed: sum, wsum, gpa"),
])
def test_a_bad_mode_fails_in_one_line_naming_the_field(spec, field):
    with pytest.raises(IRError) as e:
        build(spec)
    assert "\n" not in str(e.value) and str(e.value).startswith(field)


# ------------------------------------------------------------ the spaces

def _random_specs(sp, n, seed=0, num_classes=11):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), directions=["maximize"])
    for _ in range(n):
        t = study.ask()
        spec = space.sample(sp, t)
        spec.update(in_channels=1, num_classes=num_classes)
        yield t, spec
        study.tell(t, 0.5)


def test_nasfpn_space_samples_only_valid_cells():
    """50 random trials: every cell list passes check_cells, its last L cells output the L levels once
    each, and the network builds, compiles and runs at 32 px."""
    sp = space.load("nasfpn")
    n = space.cell_levels(sp)
    assert n == 4
    seen = set()
    for t, spec in _random_specs(sp, 50):
        cells = spec["cells"]
        assert len(cells) == t.params["cells"] and 4 <= len(cells) <= 7
        check_cells(cells, n)
        assert sorted(c[2] for c in cells[-n:]) == list(range(n))
        assert all(c[0] != c[1] for c in cells)
        seen.update(c[3] for c in cells)
        assert {f"cell{c}.a" for c in range(len(cells))} <= set(t.params)
        g = build(spec)
        assert compile(g)(torch.randn(1, 1, 32, 32)).shape == (1, 11, 32, 32)
    assert seen == {"sum", "gpa"}


def test_nasfpn_space_with_tpe_keeps_one_distribution_per_name():
    sp = space.load("nasfpn")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3, multivariate=True,
                                                                   group=True), directions=["maximize"])
    for i in range(8):
        t = study.ask()
        spec = space.sample(sp, t)
        check_cells(spec["cells"], 4)
        study.tell(t, i / 8)


def test_seg_space_samples_the_necks_and_the_modes():
    sp = space.load("seg")
    decoders, dec_modes, stage_modes = set(), set(), set()
    for t, spec in _random_specs(sp, 60):
        decoders.add(spec["decoder"])
        dec_modes.add(spec.get("decoder_mode"))
        stage_modes.update(st.get("mode") for st in spec["stages"])
        assert ("stage0.mode" in t.params) == (spec["pattern"] != "chain")
        assert "cells" not in spec  # space=seg builds nasfpn with the paper's cells
        build(spec)
    assert {"bifpn", "nasfpn", "hrnet_fuse"} <= decoders
    assert {None, "sum", "wsum"} <= dec_modes and set(MODES) <= stage_modes


def test_fusion_space_samples_a_mode_per_stage_and_grids_them():
    sp = space.load("fusion")
    assert sp["data"]["name"] == "digits" and sp["objectives"] == ["val_accuracy"]
    for t, spec in _random_specs(sp, 6, num_classes=10):
        assert [st["mode"] for st in spec["stages"]] == [t.params[f"stage{i}.mode"] for i in range(3)]
        assert compile(build(spec))(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    grid = grid_of(space.load("fusion", {"study": {"sampler": "grid"}, "params": {"levels": {"choices": [1, 2]}}}))
    assert grid["stage2.mode"] == list(MODES) and grid["stage2.levels"] == [1, 2] and "mode" not in grid


@pytest.mark.parametrize("name, over, message", [
    ("nasfpn", {"study": {"sampler": "grid"}}, "study.sampler: grid cannot enumerate merging cells"),
    ("nasfpn", {"params": {"cells": {"low": 3, "high": 7}}}, "params.cells: 3 cells cannot output each of the "
                                                              "4 levels once"),
    ("nasfpn", {"params": {"stages": {"low": 3, "high": 4}}}, "params.stages: searched beside params.cells"),
    ("nasfpn", {"params": {"cell_op": {"choices": ["sum", "max"]}}}, "params.cell_op.choices: 'max' is not allowed; "
                                                                     "allowed: sum, gpa"),
    ("seg", {"params": {"cells": {"value": 4}, "decoder": {"choices": ["fpn", "unet"]}}},
     "params.cells: merging cells belong to decoder nasfpn, which this space never builds (decoder: fpn, unet)"),
    ("seg", {"params": {"cell_op": {"value": "sum"}}}, "params.cell_op: the op of each merging cell needs params.cells"),
    ("seg", {"params": {"decoder_mode": {"choices": ["sum", "cat"]}}}, "params.decoder_mode.choices: 'cat' is not "
                                                                        "allowed (did you mean 'concat'?); allowed: "
                                                                        "null, concat"),
    ("hda", {"params": {"mode": {"choices": ["concat", "gap"]}}}, "params.mode.choices: 'gap' is not allowed (did "
                                                                  "you mean 'gpa'?)"),
    ("hda", {"params": {"decoder_mode": {"value": "sum"}}}, "params.decoder_mode: a decoder needs task: segment"),
])
def test_a_bad_space_fails_in_one_line(name, over, message):
    with pytest.raises(SpaceError) as e:
        space.load(name, over)
    assert "\n" not in str(e.value) and str(e.value).startswith(message)


def test_the_seg_precheck_still_tries_its_combinations():
    """The per-stage mode is not one of precheck's combinations (a trial asks stage0.mode, ...), so the
    grown seg space (pattern x decoder x decoder_mode) is still checked before a study."""
    assert set(precheck._symbolic_choices(space.load("seg"))) == {"pattern", "decoder", "decoder_mode"}
    with pytest.raises(PrecheckError, match="budget.params=1000: the smallest architecture of this space has"):
        precheck.check_space(space.load("seg", {"budget": {"params": 1000}}), 1, 11)


def test_shipped_spaces_without_modes_sample_the_specs_they_always_did():
    """No stage of a space without ``mode`` gets the key, nor a dense spec ``decoder_mode``/``cells``."""
    for name in ("hda", "dla", "figure1"):
        for _, spec in _random_specs(space.load(name), 3, num_classes=10):
            assert all("mode" not in st for st in spec["stages"]) and "decoder_mode" not in spec
    names = [p["name"] for p in space.published_params(space.load("dla", {"params": {"mode": {"choices": list(MODES)}}}))]
    assert "dla34" in names  # a searched mode still seeds the published (concat) configs


# ------------------------------------------------------------ a study

@needs_mnist
def test_a_tiny_nasfpn_study_finishes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = {"study": {"results": str(tmp_path), "trials": 2, "seed": 0}, "train": {"epochs": 1},
            "data": {"limit": 200, "root": str(SHARED)}, "params": {"cells": {"low": 4, "high": 5}}}
    sp = space.load("nasfpn", base)
    summary = search.run(sp, log=lambda *a: None)
    trials = search.open_study(sp, create=False).get_trials(deepcopy=False)
    assert len(trials) == 2 and summary["dir"]
    for t in trials:
        assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs
        spec = json.loads(t.user_attrs["spec"])
        assert spec["decoder"] == "nasfpn" and 4 <= len(spec["cells"]) <= 5
        assert f"{len(spec['cells'])} cells" in t.user_attrs["arch"]
