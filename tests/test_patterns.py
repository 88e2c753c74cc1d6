"""Every aggregation pattern builds, validates, compiles, runs forward+backward, and matches inferred shapes."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.fx.passes.shape_prop import ShapeProp

from conftest import tiny_spec
from dlasearch import compile
from dlasearch.ir import IRError, infer_shapes, validate
from dlasearch.patterns import PATTERNS, build

ALL = list(PATTERNS)


def check_runs(ir, size, batch=2):
    """Compile, forward+backward at ``size``; inferred shapes == actual; every parameter gets a gradient."""
    m = compile(ir).train()
    x = torch.randn(batch, ir.nodes["input"]["channels"], *size)
    ShapeProp(m).propagate(x)
    fx_nodes = {n.name: n for n in m.graph.nodes}
    for node, shape in infer_shapes(ir, size).items():
        meta = fx_nodes[m.node_map[node]].meta["tensor_meta"]
        assert tuple(meta.shape) == (batch, *shape), node
    m.zero_grad()
    out = m(x)
    out.pow(2).mean().backward()
    dead = [k for k, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not dead
    return m, out


@pytest.mark.parametrize("pattern", ALL)
@pytest.mark.parametrize("size", [(32, 32), (64, 64)])
def test_pattern_builds_and_trains(pattern, size):
    ir = build(tiny_spec(pattern))
    _, out = check_runs(ir, size)
    assert out.shape == (2, 10)


@pytest.mark.parametrize("pattern", ALL)
def test_pattern_dense_prediction(pattern):
    ir = build(tiny_spec(pattern, task="segment", num_classes=4))
    _, out = check_runs(ir, (40, 36), batch=1)
    assert out.shape == (1, 4, 40, 36)


def test_patterns_share_the_backbone_and_differ_in_aggregation():
    irs = {p: build(tiny_spec(p)) for p in ALL}
    blocks = {p: len(g.of_kind("block")) for p, g in irs.items()}
    assert len(set(blocks.values())) == 1, blocks
    aggs = {p: len(g.of_kind("aggregate")) for p, g in irs.items()}
    assert aggs["chain"] == 0
    assert aggs["skip"] == 1
    assert aggs["ida"] == len(tiny_spec()["stages"]) - 1
    # (d)/(e) aggregate every pair and every subtree: blocks-1 per stage; (f) merges same-depth nodes
    assert aggs["tree"] == aggs["reentrant"] == sum(s["blocks"] - 1 for s in tiny_spec()["stages"])
    assert aggs["hda"] == aggs["dla"] == sum(s["blocks"] // 2 for s in tiny_spec()["stages"])


def _root_inputs(ir, node):
    return [ir.nodes[u]["kind"] for u in ir.inputs(node)]


def test_tree_wiring_differs_as_in_figure_1():
    d, e = build(tiny_spec("tree")), build(tiny_spec("reentrant"))
    # stage level3 has 4 blocks: in (d) the right subtree starts from the last block, in (e) from the
    # left subtree's aggregation
    assert d.inputs("level3.tree2.tree1")[0] == "level3.tree1.tree2"
    assert e.inputs("level3.tree2.tree1")[0] == "level3.tree1.root"
    f, g = build(tiny_spec("hda")), build(tiny_spec("dla"))
    # (f): the last root merges the two blocks and the left subtree's root; DLA adds the stage input
    assert f.inputs("level3.tree2.root") == ["level3.tree2.tree2", "level3.tree2.tree1", "level3.tree1.root"]
    assert g.inputs("level3.tree2.root") == ["level3.tree2.tree2", "level3.tree2.tree1", "level3.downsample",
                                             "level3.tree1.root"]


def test_figure_letters_are_accepted():
    assert build(tiny_spec("c")).graph["name"] == "ida_net"


def test_equal_widths_allowed():
    spec = tiny_spec("hda", stages=[{"blocks": 2, "channels": 16}] * 3)
    check_runs(build(spec), (32, 32))


@pytest.mark.parametrize("bad,match", [
    ({"pattern": "fpn"}, "unknown pattern"),
    ({"block": "dense"}, "spec.block"),
    ({"stages": [{"blocks": 3, "channels": 16}]}, r"stages\[0\].blocks=3"),
    ({"stages": [{"blocks": 2, "channels": -4}]}, r"stages\[0\].channels=-4"),
    ({"stages": [{"blocks": 2, "chanels": 4}]}, "did you mean 'channels'"),
    ({"stages": []}, "non-empty"),
    ({"block": "bottleneckx", "cardinality": 32, "stages": [{"blocks": 2, "channels": 48}]}, "multiples of 32"),
    ({"root_kernel": 2}, "root_kernel"),
    ({"residual_root": "yes"}, "residual_root"),
    ({"task": "segment", "first_level": 9}, "first_level"),
    ({"depth": 3}, "unknown key 'depth'"),
])
def test_bad_specs_name_the_field(bad, match):
    with pytest.raises(IRError, match=match):
        build(tiny_spec(**bad))


spec_strategy = st.fixed_dictionaries({
    "pattern": st.sampled_from(ALL),
    "block": st.sampled_from(["basic", "bottleneck", "bottleneckx"]),
    "n_stages": st.integers(1, 3),
    "log_blocks": st.lists(st.integers(1, 2), min_size=3, max_size=3),
    "widths": st.lists(st.sampled_from([1, 2]), min_size=3, max_size=3),
    "root_kernel": st.sampled_from([1, 3]),
    "residual_root": st.booleans(),
    "cardinality": st.sampled_from([1, 4, 8]),
    "segment": st.booleans(),
    "stride": st.sampled_from([1, 2]),
})


def _make(p):
    unit = 32 if p["block"] == "bottleneckx" else 8
    stages = [{"blocks": 2 ** p["log_blocks"][i], "channels": unit * p["widths"][i], "stride": p["stride"]}
              for i in range(p["n_stages"])]
    task = "segment" if p["segment"] and p["stride"] == 2 and p["n_stages"] >= 2 else "classify"
    return {"pattern": p["pattern"], "block": p["block"], "num_classes": 3, "in_channels": 1,
            "stem": {"channels": 8, "kernel": 3}, "conv_stages": [{"convs": 1, "channels": 8, "stride": 2}],
            "stages": stages, "root_kernel": p["root_kernel"], "residual_root": p["residual_root"], "cardinality": p["cardinality"],
            "task": task, "first_level": 0}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_strategy)
def test_random_valid_specs_compile_and_run(p):
    check_runs(build(_make(p)), (32, 32), batch=2)


MUTATIONS = ["cycle", "drop_inputs", "negative_width", "unknown_kind", "dead_node", "two_inputs",
             "bad_type", "stride_mismatch", "position_gap"]


def mutate(ir, how, data):
    g = ir.copy()
    inner = [n for n in g.order() if g.nodes[n]["kind"] not in ("input", "output")]
    if how == "cycle":
        a = data.draw(st.sampled_from(inner))
        desc = [n for n in g.order() if n in __import__("networkx").descendants(g, a)
                and g.nodes[n]["kind"] != "output"]
        if not desc:
            desc = [a]
        d = data.draw(st.sampled_from(desc))
        g.add_edge(d, a, pos=g.in_degree(a)) if d != a else g.add_edge(a, a, pos=g.in_degree(a))
    elif how == "drop_inputs":
        n = data.draw(st.sampled_from(inner))
        g.remove_edges_from(list(g.in_edges(n)))
    elif how == "negative_width":
        n = data.draw(st.sampled_from([n for n in inner if "out" in g.nodes[n]]))
        g.nodes[n]["out"] = -data.draw(st.integers(0, 64))
    elif how == "unknown_kind":
        n = data.draw(st.sampled_from(inner))
        g.nodes[n]["kind"] = "transformer"
    elif how == "dead_node":
        g.add("orphan", "conv", ["input"], out=4)
    elif how == "two_inputs":
        g.add("input2", "input")
    elif how == "bad_type":
        n = data.draw(st.sampled_from([n for n in inner if "out" in g.nodes[n]]))
        g.nodes[n]["out"] = "64"
    elif how == "stride_mismatch":
        n = data.draw(st.sampled_from(g.of_kind("block")))
        g.nodes[n]["stride"] = 1 if g.nodes[n]["stride"] > 1 else 2
    elif how == "position_gap":
        n = data.draw(st.sampled_from(g.of_kind("aggregate") or g.of_kind("block")))
        u = g.inputs(n)[0]
        g.edges[u, n]["pos"] = 7
    return g


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["chain", "skip", "ida", "tree", "reentrant", "hda", "dla"]), st.sampled_from(MUTATIONS),
       st.data())
def test_mutations_that_break_an_invariant_raise(pattern, how, data):
    ir = build(tiny_spec(pattern))
    bad = mutate(ir, how, data)
    with pytest.raises(IRError):
        validate(bad)
    with pytest.raises(IRError):
        compile(bad)
