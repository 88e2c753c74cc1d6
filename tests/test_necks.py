"""Necks as IR patterns (bifpn, nasfpn, hrnet_fuse): shapes at odd sizes, counts, the structure each paper
describes, NAS-FPN cells from the spec, export of BiFPN's bare fusion weights, and unchanged fingerprints."""
import importlib.util
import re
import sys

import pytest
import torch
from conftest import tiny_spec
from test_fusion import fused_graph, ir_params, randomize_, trainable

from dlasearch import IR, compile
from dlasearch.decoders import NASFPN_PAPER, NECKS, nasfpn_cells
from dlasearch.deploy import checkpoint, export as exportmod
from dlasearch.ir import IRError, fingerprint, infer_shapes
from dlasearch.patterns import Spec, build

# Recorded before the necks existed: adding them (and aggregate's `relu`) changes no earlier decoder.
RECORDED_DECODERS = {
    ("dla", "none"): "a6aae52f522f2541", ("dla", "fcn"): "23965084994dc58c", ("dla", "fpn"): "b1ca5f5d7a5d63de",
    ("dla", "unet"): "94754d000850821e", ("dla", "ida_up"): "a815133a69d36db6",
    ("chain", "none"): "7169b4c4798e6d12", ("chain", "fcn"): "4791d93cc4d15d99",
    ("chain", "fpn"): "d0333cfb94828fdb", ("chain", "unet"): "0bd2e8faf9c29af2",
    ("chain", "ida_up"): "de88014a36cc3020",
}
# The necks as docs/necks.md draws and counts them (tiny_spec, dla encoder): a change here is a new architecture.
RECORDED_NECKS = {"bifpn": "a7d1d7b5233c949f", "nasfpn": "16e5133559330be9", "hrnet_fuse": "95fb1453b7a5ab89"}


def seg(pattern="dla", **kw):
    return build(tiny_spec(pattern, task="segment", **kw))


def decoder_nodes(g, kind=None):
    return [n for n in g.order() if n.startswith("decoder.") and (kind is None or g.nodes[n]["kind"] == kind)]


def cells_of(g):
    """NAS-FPN's merging cells (each ends in its conv unit), in build order."""
    return [n for n in decoder_nodes(g, "aggregate") if re.fullmatch(r"cell\d+", n.split(".")[-1])]


@pytest.mark.parametrize("pattern", ("dla", "chain"))
@pytest.mark.parametrize("neck", NECKS)
def test_necks_give_logits_at_odd_input_sizes(neck, pattern):
    for kw in ({}, {"first_level": 0}, {"first_level": 3, "neck_repeats": 3}):
        g = seg(pattern, decoder=neck, **kw)
        m = compile(g).eval()
        (out,) = g.of_kind("output")
        for size in ((37, 45), (33, 30)):
            with torch.no_grad():
                y = m(torch.randn(1, 3, *size))
            assert y.shape == (1, 10, *size) and infer_shapes(g, size)[out] == (10, *size), kw


@pytest.mark.parametrize("neck", NECKS)
def test_neck_params_from_the_ir_equal_the_module(neck):
    for kw in ({}, {"first_level": 0}, {"decoder_channels": 24}, {"neck_repeats": 3}):
        g = seg(decoder=neck, **kw)
        assert trainable(compile(g)) == ir_params(g), kw


def test_bifpn_fusion_weights_receive_gradients():
    m = compile(seg(decoder="bifpn", neck_repeats=3))
    fuse = {n: p for n, p in m.named_parameters() if n.endswith(".fuse")}
    assert len(fuse) == 3 + 3 + 3 + 3 + 3  # 4 levels: 3 top-down nodes per layer, 3 bottom-up in all but the last
    assert all(torch.equal(p.detach(), torch.ones_like(p)) for p in fuse.values())  # BiFPN starts at equal weights
    y = m(torch.randn(2, 3, 35, 29))
    torch.nn.functional.cross_entropy(y, torch.randint(0, 10, (2, 35, 29))).backward()
    assert all(p.grad is not None and p.grad.abs().min() > 0 for p in fuse.values())


def test_bifpn_structure():
    """Per layer a top-down pass of [input, up(coarser)] and a bottom-up pass of [input, top-down,
    down(finer output)] ([input, down] at the top), each wsum -> ReLU -> separable 3x3 -> BN."""
    g = seg(decoder="bifpn", decoder_channels=16)
    aggs = decoder_nodes(g, "aggregate")
    assert {(g.nodes[n]["mode"], g.nodes[n]["order"], g.nodes[n]["separable"], g.nodes[n]["kernel"],
             g.nodes[n]["out"]) for n in aggs} == {("wsum", "act_conv_bn", True, 3, 16)}
    td = [n for n in aggs if ".td" in n]
    out = [n for n in aggs if ".out" in n]
    assert len(td) == 2 * 3 and len(out) == 3  # 2 layers; the last layer's bottom-up pass reaches no head
    assert [len(g.inputs(n)) for n in out] == [3, 3, 2]
    assert g.inputs("decoder.level2.out0") == ["decoder.level2.proj", "decoder.level2.td0", "decoder.level2.down0"]
    assert g.inputs("decoder.level2.down0") == ["decoder.level1.td0"]  # the finer output, max-pooled
    assert g.inputs("decoder.level4.out0") == ["decoder.level4.proj", "decoder.level4.down0"]
    assert g.inputs("decoder.level1.td0") == ["decoder.level1.proj", "decoder.level1.up0"]
    assert g.inputs("decoder.level1.td1") == ["decoder.level1.td0", "decoder.level1.up1"]  # layer 2 reads layer 1
    assert all(g.nodes[n]["mode"] == "nearest" for n in decoder_nodes(g, "upsample"))
    assert len(decoder_nodes(g, "project")) == 4  # every input level projected to the common width
    assert g.inputs("fc") == ["decoder.level1.td1"]  # the head reads the finest output


def test_hrnet_fuse_structure():
    """Branch j = ReLU(sum_i T_ij(x_i)); coarser: 1x1 conv+BN, nearest up; finer: stride-2 3x3 convs, the last
    without ReLU; HRNetV2's head concatenates every branch at the finest resolution."""
    g = seg(decoder="hrnet_fuse")
    sums = [f"decoder.level{k}.fuse0" for k in range(1, 5)]
    for j, n in enumerate(sums):
        d = g.nodes[n]
        assert (d["mode"], d["conv"], d["relu"]) == ("sum", False, True) and len(g.inputs(n)) == 4
        assert g.inputs(n)[j].startswith(f"base.level{j + 1}.")  # its own branch, untransformed
    convs = [g.nodes[n] for n in decoder_nodes(g, "conv") if n.startswith("decoder.level4.fuse0_from1_")]
    assert [(c["stride"], c["relu"], c["out"]) for c in convs] == [(2, True, 16), (2, True, 16), (2, False, 32)]
    assert [g.nodes[u]["kind"] for u in g.inputs("decoder.level1.fuse0_from4_up")] == ["project", "conv"]
    assert g.nodes["decoder.level1.fuse0_from4_up"]["factor"] == 8
    head = g.nodes["decoder.head"]
    assert (head["mode"], head["kernel"], head["out"]) == ("concat", 1, 16 + 16 + 32 + 32)
    assert [n for n in g.order() if n.endswith(".transition")] == []  # null width: each branch keeps its stage's
    wide = seg(decoder="hrnet_fuse", decoder_channels=8)  # HRNet-W8: branch k is 8 * 2**k wide
    assert [wide.nodes[f"decoder.level{k}.fuse0"]["out"] for k in range(1, 5)] == [8, 16, 32, 64]
    assert wide.nodes["decoder.level4.transition"]["kind"] == "conv"  # HRNet's 3x3 transition into a branch


def test_nasfpn_default_is_the_papers_cells():
    assert nasfpn_cells(5) == tuple((*ins, lvl, op) for ins, lvl, op in NASFPN_PAPER)
    for n in range(2, 8):
        cells = nasfpn_cells(n)
        assert len(cells) == 7 and {c[-2] for c in cells} <= set(range(n)) and cells[2][-2] == 0
    spec = dict(decoder="nasfpn", first_level=0)  # 5 levels: the paper's P3..P7
    explicit = seg(**spec, cells=[list(c) for c in nasfpn_cells(5)])
    assert fingerprint(seg(**spec)) == fingerprint(explicit)


def test_nasfpn_cells_follow_the_reference_code():
    """The paper's stack on 5 levels: 7 cells, gpa's input 0 is the coarser, an output cell (the last at its
    level) sums the unread features of its level, and what no cell reads joins the head's finest map."""
    g = seg(decoder="nasfpn", first_level=0)
    cells = cells_of(g)
    assert [n.split(".")[1] for n in cells] == ["level1", "level1", "level0", "level1", "level2", "level4", "level3"]
    assert [g.nodes[n]["mode"] for n in cells] == ["gpa", "sum", "sum", "sum", "sum", "sum", "gpa"]
    assert all(g.nodes[n]["order"] == "act_conv_bn" and g.nodes[n]["kernel"] == 3 for n in cells)
    c0 = "decoder.level1.stack0.cell0"  # gpa(P6 up to P4, P4): P6 gates P4
    assert g.inputs(c0) == [f"{c0}_in0_up", "decoder.level1.proj"]
    assert g.inputs(f"{c0}_in0_up")[0] == "base.level3.tree2.root" and g.nodes[f"{c0}_in0_up"]["factor"] == 4
    # output cells: P5's = gpa(cells 2, 3) + the P5 input no cell read; P7's = gpa(cells 1, 4) + P7's input
    for c, level, extra in ((4, 2, "decoder.level2.proj"), (5, 4, "base.level4.root")):
        gpa = f"decoder.level{level}.stack0.cell{c}_gpa"
        assert g.nodes[gpa]["mode"] == "gpa" and not g.nodes[gpa]["conv"]
        assert g.inputs(f"decoder.level{level}.stack0.cell{c}") == [gpa, extra]
    head = g.inputs("fc")[0]  # P3's output, and P6's (read by no cell) nearest-upsampled
    assert g.nodes[head]["mode"] == "sum" and g.inputs(head)[0] == "decoder.level0.stack0.cell2"
    assert g.inputs(g.inputs(head)[1])[0] == "decoder.level3.stack0.cell6"


def test_nasfpn_cells_from_the_spec_change_the_graph():
    default = seg(decoder="nasfpn")
    mine = [[0, 1, 1, "sum"], [3, 4, 2, "gpa"], [0, 5, 0, "sum"]]
    g = seg(decoder="nasfpn", cells=mine)
    assert fingerprint(g) != fingerprint(default)
    assert len(cells_of(g)) == 3
    other = seg(decoder="nasfpn", cells=[[0, 1, 1, "gpa"], *mine[1:]])  # one op changed
    assert fingerprint(other) != fingerprint(g)
    stacked = seg(decoder="nasfpn", cells=mine, neck_repeats=2)
    assert len(cells_of(stacked)) == 6
    assert Spec.parse(Spec.parse(tiny_spec(task="segment", decoder="nasfpn", cells=mine)).to_dict()).cells == \
        tuple(tuple(c) for c in mine)  # the JSON form round-trips


def test_every_cell_list_in_range_builds():
    """Whatever cells a search samples, no feature is dead: unread ones are summed into the head."""
    for cells in ([[0, 1, 3, "sum"]], [[3, 2, 3, "gpa"], [4, 0, 0, "sum"]], [[1, 2, 3, "sum"], [0, 1, 2, "sum"]]):
        g = seg(decoder="nasfpn", cells=cells)
        assert compile(g)(torch.randn(1, 3, 33, 30)).shape == (1, 10, 33, 30)


@pytest.mark.parametrize("bad, match", [
    ({"cells": [[0, 9, 1, "sum"]]}, r"spec.cells\[0\]=\[0, 9, 1, 'sum'\]: input 9 out of range; cell 0 reads 0..3"),
    ({"cells": [[0, 1, 1, "sum"], [0, 6, 1, "sum"]]}, r"spec.cells\[1\].*input 6 out of range; cell 1 reads 0..4"),
    ({"cells": [[0, 1, 4, "sum"]]}, r"level 4 out of range 0..3"),
    ({"cells": [[0, 1, 1, "max"]]}, r"op 'max' unknown; allowed: sum, gpa"),
    ({"cells": [[0, 1, 1, "gap"]]}, r"op 'gap' unknown \(did you mean 'gpa'\?\)"),
    ({"cells": [[0, 1, 2, 1, "gpa"]]}, r"op gpa merges exactly 2 inputs .*, got 3"),
    ({"cells": [[0, 0, 1, "sum"]]}, r"an input is given twice"),
    ({"cells": [[0, 1, "sum"]]}, r"spec.cells\[0\]=\[0, 1, 'sum'\]: expected \[input, input, level, op\]"),
    ({"cells": []}, r"spec.cells=\[\]: expected null"),
    ({"cells": [[0, True, 1, "sum"]]}, r"input True out of range"),
    ({"decoder": "fpn", "cells": [[0, 1, 1, "sum"]]}, r"spec.cells: only decoder nasfpn has merging cells"),
    ({"neck_repeats": 0}, r"spec.neck_repeats=0: expected null .* or an int >= 1"),
    ({"decoder": "unet", "neck_repeats": 2}, r"spec.neck_repeats=2: decoder 'unet' does not repeat"),
    ({"stages": [{"blocks": 2, "channels": 16}, {"blocks": 2, "channels": 32, "stride": 3}]},
     r"spec.stages\[1\].stride=3: decoder 'nasfpn' resamples between the levels it reads by powers of two"),
])
def test_bad_neck_specs_name_the_field(bad, match):
    with pytest.raises(IRError, match=match) as e:
        seg(**{"decoder": "nasfpn", **bad})
    assert "\n" not in str(e.value)


def test_aggregate_relu_after_a_conv_less_merge():
    """HRNet's ReLU(sum): aggregate conv=false relu=true; only meaningful without the conv unit."""
    g = IR(name="relu")
    g.add("input", "input", channels=3)
    g.add("a", "conv", ["input"], out=4, kernel=1, relu=False)
    g.add("b", "conv", ["input"], out=4, kernel=1, relu=False)
    g.add("s", "aggregate", ["a", "b"], out=4, mode="sum", conv=False, relu=True)
    g.add("output", "output", ["s"])
    g.add("o1", "output", ["a"], index=1)
    g.add("o2", "output", ["b"], index=2)
    m = compile(g).eval()
    randomize_(m)
    y, a, b = m(torch.randn(2, 3, 5, 7))
    torch.testing.assert_close(y, torch.relu(a + b))
    plain = IR(g)
    plain.nodes["s"]["relu"] = False
    assert fingerprint(plain) != fingerprint(g)
    bad = IR(g)
    bad.nodes["s"].update(conv=True, kernel=1)
    with pytest.raises(IRError, match=r"relu=True needs conv=false") as e:
        compile(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("pattern, decoder", sorted(RECORDED_DECODERS))
def test_earlier_decoder_fingerprints_unchanged(pattern, decoder):
    assert fingerprint(seg(pattern, decoder=decoder)) == RECORDED_DECODERS[pattern, decoder]


@pytest.mark.parametrize("neck", NECKS)
def test_neck_fingerprints_are_the_documented_ones(neck):
    assert fingerprint(seg(decoder=neck)) == RECORDED_NECKS[neck]


def test_bifpn_exports_round_trip(tmp_path):
    """wsum's weights are parameters no layer owns: model.py registers them, and py and pt2 reproduce the net."""
    torch.manual_seed(0)
    pre = {"mean": [0.3], "std": [0.2], "image_size": [33, 30]}
    graph = build(tiny_spec(task="segment", decoder="bifpn", in_channels=1, num_classes=5), name="bifpn")
    model = compile(graph)
    randomize_(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".fuse"):
                p.copy_(torch.rand_like(p) + 0.5)  # trained weights, not the initial ones
    path = tmp_path / "bifpn.safetensors"
    checkpoint.save(path, model, graph, preprocess=pre)
    loaded, _ = checkpoint.build(path)
    exportmod.export(loaded, "py,pt2", tmp_path / "out", log=lambda *a: None)
    x = torch.randn(3, 1, 33, 30)
    with torch.no_grad():
        want = model.eval()(x)
        torch.testing.assert_close(loaded.eval()(x), want, rtol=0, atol=0)
        text = (tmp_path / "out" / "model.py").read_text()
        assert "_put_param(self, 'decoder.level1.td0.fuse', (2,))" in text
        spec = importlib.util.spec_from_file_location("bifpn_model", tmp_path / "out" / "model.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules.pop("bifpn_model", None)
        spec.loader.exec_module(mod)
        net = mod.load()
        torch.testing.assert_close(net(x), want, rtol=1e-6, atol=1e-6)
        prog = torch.export.load(str(tmp_path / "out" / "model.pt2")).module()
        torch.testing.assert_close(prog(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", (True, False))
def test_write_py_registers_parameters_no_layer_owns(conv, tmp_path):
    """A conv-less wsum keeps its weights on a plain container (or the root): model.py still has them."""
    model = compile(fused_graph(mode="wsum", conv=conv, n_inputs=3))
    with torch.no_grad():
        model.get_parameter("agg.fuse" if conv else "agg").copy_(torch.tensor([0.5, 2.0, 0.0]))
    model.checkpoint = {"name": "wsum"}
    exportmod.write_py(model, {"mean": [0.0] * 3, "std": [1.0] * 3, "image_size": [8, 8]}, None, tmp_path)
    spec = importlib.util.spec_from_file_location(f"wsum_{conv}", tmp_path / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.load()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for a, b in zip(net(x), model.eval()(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
