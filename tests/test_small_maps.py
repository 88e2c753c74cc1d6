"""Convolutions on tiny maps as dense GEMMs: the same numbers as the convolution, on the model's own parameters."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlasearch import train, zoo
from dlasearch.train import data
from dlasearch.train.small_maps import lower_small_maps, plan, selector, small_map_conv

from test_train import tiny

CASES = [  # (input h, w), kernel, stride, padding
    ((1, 1), 3, 1, 1), ((2, 2), 3, 1, 1), ((2, 2), 3, 2, 1), ((1, 2), 3, 1, 1), ((2, 1), 3, 2, 1),
    ((2, 2), 1, 1, 0), ((2, 2), 1, 2, 0), ((1, 1), 1, 1, 0), ((2, 2), 5, 1, 2),
]


@pytest.mark.parametrize("hw, k, s, p", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_small_map_conv_is_the_convolution(hw, k, s, p, channels_last, bias):
    """Output and both gradients equal F.conv2d's (fp32 rounding), and the input's memory format is kept."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(6, 5, *hw).contiguous(memory_format=fmt)
    w = torch.randn(7, 5, k, k)
    b = torch.randn(7) if bias else None
    sel, out_hw = plan(hw, (k, k), (s, s), (p, p))
    grads = []
    for fn in (lambda x, w, b: F.conv2d(x, w, b, s, p), lambda x, w, b: small_map_conv(x, w, b, sel, out_hw)):
        xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        bs = b.clone().requires_grad_(True) if bias else None
        y = fn(xs, ws, bs)
        (y * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
        grads.append((y.detach(), xs.grad, ws.grad, bs.grad if bias else None))
    (ya, *ga), (yb, *gb) = grads
    assert yb.shape == ya.shape and yb.shape[2:] == out_hw
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    for a, b_ in zip(ga, gb):
        if a is not None:
            torch.testing.assert_close(b_, a, rtol=1e-5, atol=1e-5)
    assert yb.is_contiguous(memory_format=fmt)


def test_selector_places_each_tap_once():
    """Every (output, input) pair gets at most one tap, and a 3x3 kernel on a 1x1 map keeps its centre only."""
    sel, out = selector((2, 2), (3, 3), (1, 1), (1, 1))
    assert out == (2, 2) and sel.shape == (16, 9) and sel.sum(1).max() == 1
    assert sel.sum() == 16  # on a 2x2 map with padding 1 every output sees all 4 inputs
    sel, out = selector((1, 1), (3, 3), (1, 1), (1, 1))
    assert out == (1, 1) and sel.tolist() == [[0, 0, 0, 0, 1, 0, 0, 0, 0]]


def _conv_inputs(model, shape):
    """The input map size of every Conv2d (by module name) in one forward."""
    seen, hooks = {}, []
    for name, m in model.named_modules():
        if type(m) is torch.nn.Conv2d:
            hooks.append(m.register_forward_pre_hook(lambda _, a, name=name: seen.__setitem__(name, a[0].shape[2:])))
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return seen


def test_lowering_dla34_at_32px_rewrites_exactly_the_tiny_maps_and_shares_the_weights():
    torch.manual_seed(0)
    model = zoo.create("dla34", num_classes=10)
    keys, code = list(model.state_dict()), model.code
    fast, names = lower_small_maps(model, (3, 32, 32))
    maps = _conv_inputs(model, (3, 32, 32))
    assert sorted(names) == sorted(n for n, hw in maps.items() if hw[0] * hw[1] <= 4)
    assert {"level5.tree1.conv2", "level4.tree1.tree1.conv2", "fc"} <= set(names)
    assert "level4.tree1.tree1.conv1" not in names  # a stride-2 conv reading a 4x4 map stays a convolution
    assert list(model.state_dict()) == keys and model.code == code  # the model itself is untouched
    assert "small_map_conv" in fast.code
    params = dict(model.named_parameters())
    for name, p in fast.named_parameters():
        assert p is params[name]  # one set of weights: training the copy trains the model
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    model.train(), fast.train()
    grads = []
    for net in (model, fast):
        model.zero_grad()
        F.cross_entropy(net(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in params.items()})
    for n in names:
        torch.testing.assert_close(grads[1][n + ".weight"], grads[0][n + ".weight"], rtol=1e-3, atol=1e-5)


def test_at_224px_only_the_classifier_on_the_pooled_map_is_rewritten():
    model = zoo.create("dla34", num_classes=10)
    assert lower_small_maps(model, (3, 224, 224))[1] == ["fc"]
    assert lower_small_maps(model, (3, 224, 224), max_positions=0) == (model, [])


def test_cpu_training_runs_the_rewrite_and_says_so():
    """The engine trains through the rewritten convolutions (their weights move) and metrics.json says how many."""
    d = data.load("digits", image_size=32)
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train.train(model, d, steps=3, batch_size=64, progress=False, device="cpu")
    assert res.status == "ok"
    lowered = lower_small_maps(tiny(), (1, 32, 32))[1]
    assert lowered and res.engine["small_maps"].startswith(f"{len(lowered)} of ")
    for name in lowered:
        assert not torch.equal(model.state_dict()[name + ".weight"], before[name + ".weight"]), name


def test_engine_keeps_other_models_as_they_are():
    from dlasearch.train import engine

    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    assert engine.cpu_small_maps(plain, (1, 1, 1), torch.device("cpu")) == (plain, "off: not an fx module")
    assert engine.cpu_small_maps(tiny(), (1, 32, 32), torch.device("meta"))[1] == "off: CPU only"
    traced = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1)))
    assert engine.cpu_small_maps(traced, (1, 8, 8), torch.device("cpu")) == (
        traced, "off: no convolution on a map of <= 4 positions")


def test_bf16_autocast_matches_the_bf16_convolution():
    torch.manual_seed(0)
    x, w = torch.randn(8, 32, 2, 2).to(memory_format=torch.channels_last), torch.randn(16, 32, 3, 3)
    sel, out_hw = selector((2, 2), (3, 3), (1, 1), (1, 1))
    with torch.autocast("cpu", torch.bfloat16):
        a, b = F.conv2d(x, w, None, 1, 1), small_map_conv(x, w, None, sel, out_hw)
    assert b.dtype == a.dtype == torch.bfloat16
    torch.testing.assert_close(b.float(), a.float(), rtol=2e-2, atol=5e-2)
