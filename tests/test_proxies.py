"""Zero-cost proxies against their papers' definitions, on a net small enough to write out by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from dlasearch import IR, compile
from dlasearch.search import proxies
from dlasearch.errors import DLASearchError


def tiny():
    """input (1 ch) -> 1x1 conv to 2 channels + BN + ReLU -> global pool -> 1x1 fc to 2 classes."""
    g = IR(name="tiny")
    g.add("input", "input", channels=1)
    g.add("c1", "conv", ["input"], out=2, kernel=1)
    g.add("fc", "head", ["c1"], classes=2)
    g.add("output", "output", ["fc"])
    torch.manual_seed(0)
    return compile(g)


def by_hand(w1, w2, b2, x, train=True, double=False):
    """The same network written out with plain torch functions (BN at its init: weight 1, bias 0)."""
    h = F.conv2d(x, w1)
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


def test_synflow_uses_absolute_weights_and_an_all_ones_input(batch):
    m = tiny()
    w1, w2, b2 = leaves(m, torch.float64)
    with torch.no_grad():
        for t in (w1, w2, b2):
            t.abs_()
    out, _ = by_hand(w1, w2, b2, torch.ones(1, 1, 3, 3, dtype=torch.float64), train=False)
    g1, g2 = torch.autograd.grad(out.sum(), (w1, w2))
    want = ((w1 * g1).sum() + (w2 * g2).sum()).item()
    assert proxies.score("synflow", m, *batch) == pytest.approx(want, rel=1e-9)


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


def test_zen_is_feature_sensitivity_plus_bn_scale(batch):
    m = tiny()
    x, _ = batch
    gen = torch.Generator().manual_seed(0)  # the proxy's own draws: weights by name, x, noise
    w1 = torch.randn(m.get_parameter("c1.conv.weight").shape, generator=gen)
    torch.randn(m.get_parameter("fc.weight").shape, generator=gen)
    x1 = torch.randn(x.shape, generator=gen)
    x2 = x1 + 0.01 * torch.randn(x.shape, generator=gen)
    bn_in = F.conv2d(x1, w1)
    bn_term = 0.5 * math.log(bn_in.var(dim=(0, 2, 3), unbiased=False).mean().item())
    f1 = by_hand(w1, torch.zeros(2, 2, 1, 1), torch.zeros(2), x1)[1]
    f2 = by_hand(w1, torch.zeros(2, 2, 1, 1), torch.zeros(2), x2)[1]
    want = math.log((f1 - f2).flatten(1).norm(dim=1).mean().item()) + bn_term
    assert proxies.score("zen", m, *batch) == pytest.approx(want, rel=1e-5)


def test_zico_uses_gradient_mean_over_std_across_mini_batches(batch):
    m = tiny()
    x, y = batch
    per = [hand_grads(m, xb, yb) for xb, yb in zip(x.chunk(2), y.chunk(2))]
    want = 0.0
    for layer in range(2):
        g = torch.stack([per[0][layer][1], per[1][layer][1]])
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
