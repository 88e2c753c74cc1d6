"""Aggregation modes (concat, sum, wsum, gpa), pre-activation, separable convs and nearest upsampling.

Each mode's compiled forward is checked against a plain-torch recomputation from the same weights,
parameter counts from the IR against the built module, and the fingerprints of every existing
network against the values recorded before the modes existed (new attributes at their defaults
must not change any hash).
"""
import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_spec

from dlasearch import IR, compile, zoo
from dlasearch.ir import KINDS, IRError, fingerprint, from_json, symbolic_shapes, to_json
from dlasearch.ir.fusion import WSUM_EPS
from dlasearch.patterns import build

MODES = ("concat", "sum", "wsum", "gpa")
ORDERS = ("conv_bn_act", "act_conv_bn")

# Recorded with the code before aggregation modes and decoders existed (task 30 §1 / 27 §2).
RECORDED = {
    "dla34": "1ac1bcfd7aebd396", "dla46_c": "ae5cdd39e7da1a3d", "dla46x_c": "333d30473b247671",
    "dla60x_c": "8d1e248f75957c8a", "dla60": "68481fc481867697", "dla60x": "4e7a2ac914efa533",
    "dla102": "31845bbcea3ac41c", "dla102x": "09f2bd7a75f51509", "dla102x2": "540efa27e6300145",
    "dla169": "3a30be9179cd61a7", "dla34up": "3b4d9776bf21b356", "dla60up": "a15c611b85618df3",
    "dla102up": "3ba5c3a6fe7daefd", "dla169up": "5ded224dcfd94121",
}
RECORDED_TINY = {
    ("chain", "classify"): "8fd0b2b73c392eae", ("chain", "segment"): "de88014a36cc3020",
    ("skip", "classify"): "8799088a9e666fc7", ("skip", "segment"): "85a553a2849f0896",
    ("ida", "classify"): "125443e0a35ecc7f", ("ida", "segment"): "4d68fb803582c6fe",
    ("tree", "classify"): "fb8ce423abf78d52", ("tree", "segment"): "65747d5824679140",
    ("reentrant", "classify"): "3fd8fafe3a6a0931", ("reentrant", "segment"): "079ff1c436f50873",
    ("hda", "classify"): "92d370daf27f5936", ("hda", "segment"): "0ce68f6bd71b3620",
    ("dla", "classify"): "86af052b3a9f6bf5", ("dla", "segment"): "a815133a69d36db6",
}


def ir_params(g) -> int:
    """Parameters counted from the IR alone (each kind's ``params``), as budget checks count them."""
    shapes = symbolic_shapes(g)
    return sum(KINDS[d["kind"]].params(d, [shapes[u][0] for u in g.inputs(n)]) for n, d in g.nodes(data=True))


def trainable(m) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def fused_graph(mode="concat", order="conv_bn_act", separable=False, residual=None, conv=True, n_inputs=2,
                channels=(6, 6, 6), out=6, kernel=3):
    """input -> n_inputs convs -> one aggregate; outputs: the aggregate (0) and its inputs (1..)."""
    g = IR(name="fused")
    g.add("input", "input", channels=3)
    ins = [g.add(f"x{i}", "conv", ["input"], out=channels[i], kernel=1) for i in range(n_inputs)]
    g.add("agg", "aggregate", ins, out=out, kernel=kernel if conv else 1, mode=mode, order=order,
          separable=separable, residual=residual, conv=conv)
    g.add("output", "output", ["agg"])
    for i, x in enumerate(ins):
        g.add(f"out{i}", "output", [x], index=i + 1)
    return g


def randomize_(m):
    """Non-trivial BatchNorm statistics and affine parameters, so eval mode is not the identity."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen))
                mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                mod.weight.copy_(torch.randn(mod.num_features, generator=gen))
                mod.bias.copy_(torch.randn(mod.num_features, generator=gen))


def reference(m, d, xs):
    """The aggregate node recomputed with plain torch from the compiled module's weights."""
    agg = m.get_submodule("agg") if d["conv"] else None
    if d["mode"] == "concat":
        y = torch.cat(xs, 1)
    elif d["mode"] == "sum":
        y = sum(xs)
    elif d["mode"] == "wsum":
        w = agg.fuse if d["conv"] else m.get_parameter("agg")
        w = torch.relu(w)
        y = sum(wi * x for wi, x in zip(w / (w.sum() + WSUM_EPS), xs))
    else:
        a, b = xs
        y = a + b * torch.sigmoid(a.amax(dim=(2, 3), keepdim=True))
    if not d["conv"]:
        return y
    if d["order"] == "act_conv_bn":
        y = torch.relu(y)
    k = d["kernel"]
    if d["separable"]:
        y = F.conv2d(y, agg.dw.weight, padding=k // 2, groups=y.shape[1])
        y = F.conv2d(y, agg.conv.weight)
    else:
        y = F.conv2d(y, agg.conv.weight, padding=k // 2)
    bn = agg.bn
    y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    if d["residual"] is not None:
        y = y + xs[d["residual"]]
    return y if d["order"] == "act_conv_bn" else torch.relu(y)


CASES = [dict(mode=mo, order=o, separable=s, residual=r)
         for mo, o, s, r in itertools.product(MODES, ORDERS, (False, True), (None, 1))]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_each_mode_matches_plain_torch(case):
    g = fused_graph(**case)
    m = compile(g).eval()
    randomize_(m)
    if case["mode"] == "wsum":
        with torch.no_grad():
            m.agg.fuse.copy_(torch.tensor([0.3, 1.7]))
    x = torch.randn(2, 3, 7, 5, generator=torch.Generator().manual_seed(1))
    y, *xs = m(x)
    d = m.ir.nodes["agg"]
    torch.testing.assert_close(y, reference(m, d, xs))
    assert trainable(m) == ir_params(g)


@pytest.mark.parametrize("mode", MODES)
def test_parameter_free_merge(mode):
    """conv=false keeps the merge alone: FCN's score sums have no parameters (wsum keeps its weights)."""
    g = fused_graph(mode=mode, conv=False, out=12 if mode == "concat" else 6)
    m = compile(g).eval()
    y, *xs = m(torch.randn(1, 3, 5, 9))
    torch.testing.assert_close(y, reference(m, m.ir.nodes["agg"], xs))
    convs = sum(trainable(m.get_submodule(f"x{i}")) for i in range(2))
    assert trainable(m) == ir_params(g) == convs + (2 if mode == "wsum" else 0)


def test_wsum_weights_are_non_negative_and_learn():
    g = fused_graph(mode="wsum", conv=False, n_inputs=3)
    m = compile(g)
    with torch.no_grad():
        m.get_parameter("agg").copy_(torch.tensor([-2.0, 1.0, 3.0]))
    y, _, b, c = m(torch.randn(2, 3, 4, 4))
    # ReLU zeroes the negative weight: the first input does not contribute at all
    torch.testing.assert_close(y, (1.0 * b + 3.0 * c) / (4.0 + WSUM_EPS))
    y.square().sum().backward()
    grad = m.get_parameter("agg").grad
    assert grad is not None and grad[0] == 0 and grad[1:].abs().min() > 0
    fresh = compile(fused_graph(mode="wsum", n_inputs=3))  # initialised to 1: every weight learns
    assert torch.equal(fresh.agg.fuse.detach(), torch.ones(3))
    fresh(torch.randn(2, 3, 4, 4))[0].sum().backward()
    assert fresh.agg.fuse.grad.abs().min() > 0


def test_gpa_gates_input_1_by_the_global_max_of_input_0():
    g = fused_graph(mode="gpa", conv=False)
    m = compile(g)
    y, a, b = m(torch.randn(1, 3, 6, 6))
    gate = torch.sigmoid(a.flatten(2).max(2).values)[..., None, None]
    torch.testing.assert_close(y, a + b * gate)


def test_nearest_upsampling_is_fixed_and_crops():
    g = IR(name="up")
    g.add("input", "input", channels=3)
    g.add("c", "conv", ["input"], out=4, stride=2)
    g.add("u", "upsample", ["c", "input"], factor=2, mode="nearest")
    g.add("output", "output", ["u"])
    g.add("out1", "output", ["c"], index=1)
    m = compile(g)
    y, c = m(torch.randn(1, 3, 9, 7))
    assert y.shape == (1, 4, 9, 7)
    torch.testing.assert_close(y, c.repeat_interleave(2, 2).repeat_interleave(2, 3)[:, :, :9, :7])
    assert trainable(m) == ir_params(g) == KINDS["conv"].params(m.ir.nodes["c"], [3])
    learnable = IR(g)
    learnable.nodes["u"]["learnable"] = False  # meaningless for nearest: the same architecture
    assert fingerprint(learnable) == fingerprint(g)
    bilinear = IR(g)
    bilinear.nodes["u"]["mode"] = "bilinear"
    assert fingerprint(bilinear) != fingerprint(g)


def test_modes_enter_the_fingerprint_only_when_used():
    fps = {fingerprint(fused_graph(**c)) for c in CASES}
    assert len(fps) == len(CASES)
    plain = fused_graph()
    explicit = fused_graph(mode="concat", order="conv_bn_act", separable=False, conv=True)
    assert fingerprint(plain) == fingerprint(explicit)
    for c in CASES:  # JSON keeps every attribute
        g = fused_graph(**c)
        assert fingerprint(from_json(to_json(g))) == fingerprint(g)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_zoo_fingerprints_unchanged(name):
    assert fingerprint(zoo.ir(name)) == RECORDED[name]


@pytest.mark.parametrize("pattern, task", sorted(RECORDED_TINY))
def test_pattern_fingerprints_unchanged(pattern, task):
    assert fingerprint(build(tiny_spec(pattern, task=task))) == RECORDED_TINY[pattern, task]


@pytest.mark.parametrize("kw, match", [
    (dict(mode="gpa", n_inputs=3), r"mode=gpa merges exactly 2 inputs"),
    (dict(mode="wsun"), r"attribute mode='wsun' is invalid \(did you mean 'wsum'\?\); expected concat \| sum"),
    (dict(mode="sum", channels=(6, 8, 6)), r"mode=sum needs inputs of equal channels, got 'x0': 6, 'x1': 8"),
    (dict(mode="wsum", channels=(6, 8, 6)), r"mode=wsum needs inputs of equal channels"),
    (dict(order="act_bn_conv"), r"attribute order='act_bn_conv' is invalid .*act_conv_bn"),
    (dict(separable="yes"), r"attribute separable='yes' is invalid; expected true or false"),
    (dict(mode="sum", conv=False, out=8), r"conv=false outputs the 6 merged channels \(mode=sum\), but out=8"),
    (dict(mode="sum", conv=False, residual=0), r"residual=0 needs conv=true"),
    (dict(conv=False, separable=True, out=12), r"separable=True needs conv=true"),
])
def test_bad_modes_raise_one_line(kw, match):
    with pytest.raises(IRError, match=match) as e:
        compile(fused_graph(**kw))
    assert "\n" not in str(e.value)


def test_bad_upsample_mode_raises_one_line():
    g = IR(name="up")
    g.add("input", "input", channels=3)
    g.add("u", "upsample", ["input"], mode="neareset")
    g.add("output", "output", ["u"])
    with pytest.raises(IRError, match=r"mode='neareset' is invalid \(did you mean 'nearest'\?\)") as e:
        compile(g)
    assert "\n" not in str(e.value)
