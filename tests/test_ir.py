"""IR passes: validation errors name the problem, JSON round-trips, fingerprints identify architectures."""
import random

import pytest
import torch

from conftest import tiny_spec
from dlasearch import IR, IRError, compile, zoo
from dlasearch.ir import fingerprint, from_json, infer_shapes, to_json, validate
from dlasearch.patterns import build


def small():
    g = IR(name="small")
    g.add("input", "input", channels=3)
    g.add("stem", "conv", ["input"], out=8, stride=2)
    g.add("b1", "block", ["stem"], out=8)
    g.add("b2", "block", ["b1"], out=8)
    g.add("agg", "aggregate", ["b2", "b1"], out=8, residual=0)
    g.add("fc", "head", ["agg"], classes=4)
    g.add("output", "output", ["fc"])
    return g


def test_small_graph_is_valid_and_prints():
    g = validate(small())
    assert "agg = aggregate(b2, b1; out=8, kernel=1, residual=0)" in str(g)
    assert compile(g)(torch.randn(1, 3, 32, 32)).shape == (1, 4)


@pytest.mark.parametrize("mutate,match", [
    (lambda g: g.add_edge("agg", "b1", pos=1), "cycle"),
    (lambda g: g.remove_node("input"), r"'stem' \(conv\): has 0 inputs, expected exactly 1"),
    (lambda g: g.add("in2", "input"), "exactly one input"),
    (lambda g: g.remove_edge("b1", "agg"), r"'agg' \(aggregate\): has 1 inputs, expected at least 2"),
    (lambda g: g.remove_edge("b2", "agg"), r"'agg': input positions \[1\] must be 0..0 with no gaps"),
    (lambda g: g.nodes["b2"].update(out=16), r"'b2' \(block\): residual 'b1' has 8 channels at ceil\(H/2\), "
                                             r"expected 16 channels"),
    (lambda g: g.nodes["agg"].update(out=16), r"'agg' \(aggregate\): residual input 'b2' has 8 channels"),
    (lambda g: g.nodes["b1"].update(kind="lstm"), "unknown kind 'lstm'"),
    (lambda g: g.nodes["stem"].update(out=-3), r"attribute out=-3 is invalid; expected an int >= 1"),
    (lambda g: g.nodes["stem"].update(kernel=2), "expected an odd int"),
    (lambda g: g.nodes["stem"].update(colour="red"), "unknown attribute 'colour'"),
    (lambda g: g.nodes["b1"].update(type="bottleneckx", cardinality=3), "cardinality=3 does not divide"),
    (lambda g: g.nodes["b2"].update(stride=2), r"'b2' \(block\): residual 'b1' has 8 channels at ceil\(H/2\), expected 8 channels at ceil\(H/4\)"),
    (lambda g: g.add("dead", "conv", ["stem"], out=4), "'dead': does not reach any output"),
    (lambda g: g.nodes["agg"].update(residual=5), "residual=5 is not an input position"),
    (lambda g: g.nodes["b1"].update(modules={"conv1": "b2.conv1"}), "already used by node"),
    (lambda g: g.nodes["b1"].update(modules={"conv1": "fc.x"}), "nests inside module 'fc'"),
    (lambda g: g.nodes["output"].update(index=3), "output indices"),
])
def test_invalid_graphs_raise_clear_errors(mutate, match):
    g = small()
    mutate(g)
    with pytest.raises(IRError, match=match):
        validate(g)


def test_zero_last_init_starts_every_block_as_the_identity_and_every_class_equal():
    """init=zero-last: the loss at init is ln(classes) however deep the chain; original keeps He init."""
    g = IR(name="chain")
    g.add("input", "input", channels=3)
    g.add("stem", "conv", ["input"], out=8)
    prev = "stem"
    for i in range(6):
        prev = g.add(f"b{i}", "block", [prev], out=8, type="basic" if i % 2 else "bottleneck")
    g.add("fc", "head", [prev], classes=5)
    g.add("output", "output", ["fc"])
    x = torch.randn(4, 3, 16, 16)
    torch.manual_seed(0)
    original = compile(g).train()
    torch.manual_seed(0)
    zero = compile(g, init="zero-last").train()
    assert original(x).abs().max() > 0.1
    assert torch.equal(zero(x), torch.zeros(4, 5))
    zeroed = {n for n, p in zero.named_parameters() if not torch.equal(p, dict(original.named_parameters())[n])}
    assert zeroed == {*(f"b{i}.bn{3 if i % 2 == 0 else 2}.weight" for i in range(6)), "fc.weight", "fc.bias"}
    with pytest.raises(IRError, match="init='he'; allowed: original, zero-last"):
        compile(g, init="he")


def test_add_rejects_unknown_inputs_and_kinds():
    g = IR()
    g.add("input", "input")
    with pytest.raises(IRError, match="input 0 is 'nope'"):
        g.add("x", "conv", ["nope"], out=4)
    with pytest.raises(IRError, match="unknown kind"):
        g.add("y", "attention", ["input"])
    with pytest.raises(IRError, match="already exists"):
        g.add("input", "input")


def test_resolution_mismatch_in_aggregation():
    g = small()
    g.add("pool", "downsample", ["b1"], factor=2)
    g.remove_edge("b1", "agg")
    g.add_edge("pool", "agg", pos=1)
    with pytest.raises(IRError, match=r"input 'pool' is at resolution ceil\(H/4\)"):
        validate(g)


@pytest.mark.parametrize("size", [0, -5, (32,), (32, 0), 3.5, "big", (True, 3)])
def test_unsupported_input_sizes(size):
    with pytest.raises(IRError, match="input size"):
        infer_shapes(small(), size)


def test_shape_inference_handles_odd_sizes():
    shapes = infer_shapes(zoo.ir("dla34up", 3), (49, 33))
    assert shapes["base.level5.root"] == (512, 2, 2)
    assert shapes["output"] == (3, 49, 33)


@pytest.mark.parametrize("name", ["dla34", "dla102x2", "dla34up"])
def test_json_round_trip_is_lossless(name):
    g = zoo.ir(name)
    text = to_json(g)
    h = from_json(text)
    assert to_json(h) == text
    assert dict(g.nodes(data=True)) == dict(h.nodes(data=True))
    assert {(u, v, p) for u, v, p in g.edges(data="pos")} == {(u, v, p) for u, v, p in h.edges(data="pos")}
    assert fingerprint(g) == fingerprint(h)
    assert compile(h).state_dict().keys() == compile(g).state_dict().keys()


@pytest.mark.parametrize("text,match", [
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "format"),
    ('{"format": "dlasearch-ir/1", "nodes": [{"kind": "input"}]}', "needs 'name'"),
    ('{"format": "dlasearch-ir/1", "nodes": [{"name": "input", "kind": "input"}], "edges": [["input", "x", 0]]}',
     "node 'x', which does not exist"),
])
def test_bad_json(text, match):
    with pytest.raises(IRError, match=match):
        from_json(text)


def _shuffled_copy(g, seed):
    """Same architecture: nodes renamed and inserted in a random order."""
    rng = random.Random(seed)
    names = {n: f"n{i}" for i, n in enumerate(rng.sample(list(g.nodes), len(g)))}
    h = IR()
    for n in rng.sample(list(g.nodes), len(g)):
        h.add_node(names[n], **g.nodes[n])
    edges = list(g.edges(data="pos"))
    rng.shuffle(edges)
    for u, v, p in edges:
        h.add_edge(names[u], names[v], pos=p)
    return h


@pytest.mark.parametrize("pattern", ["chain", "skip", "ida", "tree", "reentrant", "hda", "dla"])
def test_fingerprint_ignores_names_and_order(pattern):
    g = build(tiny_spec(pattern))
    fp = fingerprint(g)
    assert fingerprint(_shuffled_copy(g, 0)) == fp
    assert fingerprint(_shuffled_copy(g, 1)) == fp
    h = g.copy()
    for n in h.nodes:
        h.nodes[n].pop("modules", None)
    assert fingerprint(h) == fp


def test_fingerprint_sees_edge_order_attributes_wiring_and_kind():
    g = small()
    swapped = small()
    swapped.edges["b2", "agg"]["pos"], swapped.edges["b1", "agg"]["pos"] = 1, 0
    swapped.nodes["agg"]["residual"] = 1
    attr = small()
    attr.nodes["agg"]["kernel"] = 3
    rewired = small()
    rewired.remove_edge("b1", "agg")
    rewired.add_edge("stem", "agg", pos=1)
    kind = small()
    kind.nodes["b2"]["type"] = "bottleneck"
    fps = [fingerprint(x) for x in (g, swapped, attr, rewired, kind)]
    assert len(set(fps)) == 5
    assert len({fingerprint(build(tiny_spec(p))) for p in
                ["chain", "skip", "ida", "tree", "reentrant", "hda", "dla"]}) == 7


def test_fingerprint_distinguishes_sharing_from_copies():
    """Two identical branches vs one branch used twice: same unfolded tree, different networks."""
    g1 = IR()
    g1.add("input", "input")
    g1.add("a", "conv", ["input"], out=4)
    g1.add("b", "conv", ["input"], out=4)
    g1.add("c1", "conv", ["a"], out=4)
    g1.add("c2", "conv", ["b"], out=4)
    g1.add("agg", "aggregate", ["c1", "c2"], out=4)
    g1.add("output", "output", ["agg"])
    g2 = IR()
    g2.add("input", "input")
    g2.add("a", "conv", ["input"], out=4)
    g2.add("c1", "conv", ["a"], out=4)
    g2.add("c2", "conv", ["a"], out=4)
    g2.add("agg", "aggregate", ["c1", "c2"], out=4)
    g2.add("output", "output", ["agg"])
    assert fingerprint(g1) != fingerprint(g2)
    assert fingerprint(g1) == fingerprint(_shuffled_copy(g1, 3))
