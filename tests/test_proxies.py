"""Zero-cost proxies against their reference implementations.

Two kinds of check: values recorded by ``tests/reference/proxies/make_fixtures.py`` (a step-by-step
re-implementation of each published code path, README.md there cites them) on two small DLA
networks, which catches any departure from the reference code; and a net small enough to write out
by hand, which shows what each proxy computes.
"""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlasearch import IR, compile
from dlasearch.errors import DLASearchError
from dlasearch.patterns import build
from dlasearch.search import proxies

FIXTURES = json.loads((Path(__file__).parent / "reference" / "proxies" / "fixtures.json").read_text())
# fixture key -> (dlasearch proxy, its options, rtol): float64 references must agree to rounding,
# float32 ones (their sums and numpy's reductions run in float32) to a few float32 ulps.
CASES = {"synflow": ("synflow", {}, 1e-9), "synflow_bn": ("synflow", {"bn": "train"}, 1e-9),
         "snip": ("snip", {}, 1e-5), "grad_norm": ("grad_norm", {}, 1e-5), "naswot": ("naswot", {}, 1e-9),
         "zen": ("zen", {}, 1e-5), "zen_repeat3": ("zen", {"repeat": 3}, 1e-5), "zico": ("zico", {}, 1e-3)}
# zico divides mean |g| by std(g) over entries whose std is near 0, so the reduction order that the number of
# torch threads sets moves it by ~1e-4 (263.731 at 2 threads against the fixture's 263.768 at 1)


@pytest.fixture(scope="module")
def fixture_batch():
    b = FIXTURES["batch"]
    gen = torch.Generator().manual_seed(b["seed"])
    x = torch.randn(*b["shape"], generator=gen)
    assert float(x.double().sum()) == pytest.approx(b["x_sum"], rel=1e-12), "the fixture batch is drawn differently"
    return x, torch.arange(b["shape"][0]) % 10


@pytest.fixture(scope="module", params=sorted(FIXTURES["networks"]))
def fixture_net(request):
    d = FIXTURES["networks"][request.param]
    model = compile(build(d["spec"]), seed=d["seed"])
    got = float(sum(t.double().sum() for t in model.state_dict().values()))
    assert got == pytest.approx(d["param_sum"], rel=1e-9), "the fixture network is built differently"
    return model, d["values"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_proxy_matches_its_reference_implementation(fixture_net, fixture_batch, case):
    model, values = fixture_net
    name, options, rtol = CASES[case]
    assert proxies.score(name, model, *fixture_batch, **options) == pytest.approx(values[case], rel=rtol)


def test_every_proxy_has_reference_values():
    for d in FIXTURES["networks"].values():
        assert set(d["values"]) == set(CASES)
    assert {name for name, _, _ in CASES.values()} == set(proxies.PROXIES) - {"params", "macs"}


def tiny():
    """input (1 ch) -> 1x1 conv to 2 channels + BN + ReLU -> global pool -> 1x1 fc to 2 classes."""
    g = IR(name="tiny")
    g.add("input", "input", channels=1)
    g.add("c1", "conv", ["input"], out=2, kernel=1)
    g.add("fc", "head", ["c1"], classes=2)
    g.add("output", "output", ["fc"])
    torch.manual_seed(0)
    return compile(g)


def by_hand(w1, w2, b2, x, bn=True, train=True):
    """The same network written out with plain torch functions (BN at its init: weight 1, bias 0)."""
    h = F.conv2d(x, w1)
    if bn:
        ones, zeros = torch.ones(2, dtype=h.dtype), torch.zeros(2, dtype=h.dtype)
        h = F.batch_norm(h, zeros.clone(), ones.clone(), ones, zeros, training=train, eps=1e-5)
    h = torch.relu(h)
    return F.conv2d(h.mean((2, 3), keepdim=True), w2, b2).flatten(1), h


def leaves(m, dtype=torch.float32):
    return [m.get_parameter(k).detach().to(dtype).clone().requires_grad_()
            for k in ("c1.conv.weight", "fc.weight", "fc.bias")]


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(4, 1, 3, 3, generator=gen), torch.tensor([0, 1, 1, 0])


def hand_grads(m, x, y):
    w1, w2, b2 = leaves(m)
    loss = F.cross_entropy(by_hand(w1, w2, b2, x)[0], y)
    g1, g2 = torch.autograd.grad(loss, (w1, w2))
    return (w1, g1), (w2, g2)


def test_grad_norm_is_the_sum_of_weight_gradient_norms(batch):
    m = tiny()
    want = sum(g.norm().item() for _, g in hand_grads(m, *batch))
    assert proxies.score("grad_norm", m, *batch) == pytest.approx(want, rel=1e-5)


def test_snip_is_the_summed_connection_sensitivity(batch):
    m = tiny()
    want = sum((w * g).abs().sum().item() for w, g in hand_grads(m, *batch))
    assert proxies.score("snip", m, *batch) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("bn", [None, "eval"])
def test_synflow_uses_absolute_weights_an_all_ones_input_and_no_batchnorm(batch, bn):
    m = tiny()
    w1, w2, b2 = leaves(m, torch.float64)
    with torch.no_grad():
        for t in (w1, w2, b2):
            t.abs_()
    out, _ = by_hand(w1, w2, b2, torch.ones(1, 1, 3, 3, dtype=torch.float64), bn=bn is not None, train=False)
    g1, g2 = torch.autograd.grad(out.sum(), (w1, w2))
    want = ((w1 * g1).sum() + (w2 * g2).sum()).item()
    assert proxies.score("synflow", m, *batch, bn=bn) == pytest.approx(want, rel=1e-9)
    with pytest.raises(DLASearchError, match="allowed"):
        proxies.score("synflow", m, *batch, bn="off")


def test_naswot_is_the_log_determinant_of_the_relu_code_kernel(batch):
    m = tiny()
    x, y = batch
    w1, w2, b2 = leaves(m)
    _, h = by_hand(w1, w2, b2, x)
    c = (h.flatten(1) > 0).double()
    agree = c @ c.T + (1 - c) @ (1 - c).T  # units whose on/off state two images share
    assert agree.diagonal().eq(c.shape[1]).all()
    want = torch.linalg.slogdet(agree)[1].item()
    assert proxies.score("naswot", m, x, y) == pytest.approx(want, rel=1e-9)


def test_naswot_of_identical_images_is_minus_infinity(batch):
    x, y = batch
    x = x[:1].repeat(4, 1, 1, 1)
    assert proxies.score("naswot", tiny(), x, y) == -math.inf


def test_zen_is_l1_feature_sensitivity_plus_log_running_bn_scale(batch):
    m = tiny()
    x, _ = batch
    assert [n for n, k in m.named_modules() if isinstance(k, nn.Conv2d)] == ["fc", "c1.conv"]
    gen = torch.Generator().manual_seed(0)  # the proxy's draws: weights in module order, x, noise
    torch.randn(m.get_parameter("fc.weight").shape, generator=gen)
    w1 = torch.randn(m.get_parameter("c1.conv.weight").shape, generator=gen)
    x1 = torch.randn(x.shape, generator=gen)
    x2 = x1 + 0.01 * torch.randn(x.shape, generator=gen)
    f1 = by_hand(w1, torch.zeros(2, 2, 1, 1), torch.zeros(2), x1)[1]
    f2 = by_hand(w1, torch.zeros(2, 2, 1, 1), torch.zeros(2), x2)[1]
    # running_var starts at 1; each train-mode forward moves it 10% towards the unbiased batch variance
    var = [F.conv2d(v, w1).var(dim=(0, 2, 3), unbiased=True) for v in (x1, x2)]
    running = 0.9 * (0.9 * 1 + 0.1 * var[0]) + 0.1 * var[1]
    want = math.log((f1 - f2).abs().sum((1, 2, 3)).mean().item()) + math.log(math.sqrt(running.mean().item()))
    assert proxies.score("zen", m, *batch) == pytest.approx(want, rel=1e-5)


def test_zico_accumulates_gradients_across_mini_batches(batch):
    m = tiny()
    x, y = batch
    per = [hand_grads(m, xb, yb) for xb, yb in zip(x.chunk(2), y.chunk(2))]
    want = 0.0
    for layer in range(2):
        first, second = per[0][layer][1], per[1][layer][1]
        g = torch.stack([first, first + second])  # no zero_grad between the two batches
        mean_abs, std = g.abs().mean(0), g.std(0, unbiased=False)
        want += math.log((mean_abs[std > 0] / std[std > 0]).sum().item())
    assert proxies.score("zico", m, x, y) == pytest.approx(want, rel=1e-5)


def test_baselines_and_the_model_is_left_untouched(batch):
    m = tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    got = proxies.score_all(m, *batch)
    assert set(got) == set(proxies.PROXIES)
    assert got["params"] == 2 + 2 + 2 + 4 + 2  # conv, bn weight+bias, fc weight+bias
    assert got["macs"] == 9 * 2 + 2 * 2  # 1x1 conv at 3x3, then the fc
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in m.parameters()) and m.training


def test_unknown_proxy_and_small_batches_are_clear_errors(batch):
    with pytest.raises(DLASearchError, match="did you mean 'snip'"):
        proxies.score("snp", tiny(), *batch)
    x, y = batch
    with pytest.raises(DLASearchError, match="at least 4 images"):
        proxies.score("zico", tiny(), x[:2], y[:2])


def test_rank_scores_distinct_sampled_architectures_of_a_space():
    from dlasearch.search import rank, space

    sp = space.load("hda", {"data": {"limit": 200}})
    df = rank.rank(sp, 3, ["params", "naswot"], batch=8, log=lambda *_: None)
    assert len(df) == 3 and df["fingerprint"].is_unique
    assert (df["params"] > 0).all() and df["naswot"].notna().all()
    assert list(df.columns[:3]) == ["fingerprint", "pattern", "arch"]
