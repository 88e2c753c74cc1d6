"""Dense-prediction metrics and losses (train.seg_metrics) against torchmetrics, brute force and hand-worked numbers."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import (
    BinaryF1Score, BinaryPrecision, BinaryRecall, MulticlassAccuracy, MulticlassConfusionMatrix,
    MulticlassJaccardIndex,
)

from dlasearch.errors import DataError
from dlasearch.train import seg_metrics as seg

K = 6


def same(a: dict, b: dict) -> bool:
    """Exact equality of two metric dicts, NaN equal to NaN (an absent class is NaN in both)."""
    return repr(a) == repr(b)


def seg_batches(seed=0, batches=4, device="cpu"):
    """Random (logits or predictions, target) batches: 10% ignore, class 4 nowhere, class 5 only predicted,
    class 3 only in the target; odd batches give logits, even ones class indices."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(batches):
        n, h, w = 2, 7 + i, 9
        target = torch.randint(0, 4, (n, h, w), generator=g)  # classes 0..3
        target[torch.rand(n, h, w, generator=g) < 0.1] = 255
        pred = torch.randint(0, K, (n, h, w), generator=g)
        pred[(pred == 3) | (pred == 4)] = 1  # 3 never predicted, 4 never anywhere
        pred = torch.where(torch.rand(n, h, w, generator=g) < 0.4, target.clamp(max=2), pred)  # some skill
        if i % 2:
            logits = torch.randn(n, K, h, w, generator=g)
            logits.scatter_(1, pred.unsqueeze(1), 10.0)  # argmax == pred
            out.append((logits.to(device), target.to(device), pred.to(device)))
        else:
            out.append((pred.to(device), target.to(device), pred.to(device)))
    return out


def test_confusion_matrix_matches_torchmetrics_over_batches():
    data = seg_batches()
    cm = seg.ConfusionMatrix(K)
    jac = MulticlassJaccardIndex(K, average="macro", ignore_index=255)
    per = MulticlassJaccardIndex(K, average="none", ignore_index=255)
    acc = MulticlassAccuracy(K, average="micro", ignore_index=255)
    conf = MulticlassConfusionMatrix(K, ignore_index=255)
    for output, target, pred in data:
        cm.update(output, target)
        for metric in (jac, per, acc, conf):
            metric.update(pred, target)
    m = cm.compute()
    assert m["confusion"] == conf.compute().tolist()
    assert m["miou"] == pytest.approx(float(jac.compute()), abs=1e-6)
    assert m["pixel_accuracy"] == pytest.approx(float(acc.compute()), abs=1e-6)
    ref = per.compute().tolist()
    union = conf.compute().sum(0) + conf.compute().sum(1)
    assert [math.isnan(v) for v in m["per_class_iou"]] == (union == 0).tolist() == [False] * 4 + [True, False]
    for ours, theirs in zip(m["per_class_iou"], ref):
        assert math.isnan(ours) or ours == pytest.approx(theirs, abs=1e-6)
    assert m["per_class_iou"][5] == 0.0  # predicted only: IoU 0, and it counts in the mean
    present = [v for c, v in enumerate(ref) if c > 0 and union[c] > 0]
    assert m["miou_fg"] == pytest.approx(sum(present) / len(present), abs=1e-6)
    assert m["miou_fg"] != pytest.approx(m["miou"])
    # batches accumulated == one computation over everything
    whole = seg.ConfusionMatrix(K)
    whole.update(torch.cat([p.reshape(-1) for *_, p in data]), torch.cat([t.reshape(-1) for _, t, _ in data]))
    assert same(whole.compute(), m)
    assert m["ignored"] == sum(int((t == 255).sum()) for _, t, _ in data)
    assert m["class_pixels"] == [int((torch.cat([t.reshape(-1) for _, t, _ in data]) == c).sum()) for c in range(K)]


def test_hand_checked_2x3_example():
    # target  0 0 1      pred  0 1 1     valid pairs (t, p): (0,0) (0,1) (1,1) (1,1) (2,2); the 255 pixel
    #         1 2 255          1 2 3     is dropped with its prediction 3, so class 3 is absent (NaN).
    # class 0: TP 1, FP 0, FN 1 -> 1/2;  class 1: TP 2, FP 1, FN 0 -> 2/3;  class 2: TP 1 -> 1
    # miou = (1/2 + 2/3 + 1) / 3 = 13/18;  miou_fg = (2/3 + 1) / 2 = 5/6;  pixel accuracy = 4/5
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 3]]])
    cm = seg.ConfusionMatrix(4)
    cm.update(pred, target)
    m = cm.compute()
    assert m["per_class_iou"][:3] == pytest.approx([1 / 2, 2 / 3, 1.0]) and math.isnan(m["per_class_iou"][3])
    assert m["miou"] == pytest.approx(13 / 18)
    assert m["miou_fg"] == pytest.approx(5 / 6)
    assert m["pixel_accuracy"] == pytest.approx(4 / 5)
    assert (m["pixels"], m["ignored"], m["class_pixels"]) == (5, 1, [2, 2, 1, 0])


def test_background_only_is_at_chance_and_perfect_is_one():
    target = torch.zeros(2, 16, 16, dtype=torch.int64)
    target[:, 4:8, 4:8] = 1
    target[:, 10:12, :] = 2
    target[0, 0, :] = 255
    lazy = seg.ConfusionMatrix(3)
    lazy.update(torch.zeros_like(target), target)
    m = lazy.compute()
    assert m["miou_fg"] == 0.0 and m["miou"] > 0  # plain mIoU still credits the background IoU
    assert seg.seg_at_chance(m["miou_fg"], m["class_pixels"])
    assert "at chance" in seg.seg_chance_line("validation fg mIoU", m["miou_fg"], seg.seg_chance(m["class_pixels"]))
    perfect = seg.ConfusionMatrix(3)
    perfect.update(F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float(), target)
    p = perfect.compute()
    assert p["miou"] == p["miou_fg"] == p["pixel_accuracy"] == 1.0
    assert not seg.seg_at_chance(p["miou_fg"], p["class_pixels"])


def test_chance_level_of_guessers_that_know_only_frequencies():
    # 70/20/10: the majority is background (constant guess: fg 0); drawing from the frequencies
    # gives p/(2-p): (0.2/1.8 + 0.1/1.9) / 2 = 0.0819
    assert seg.seg_chance([70, 20, 10]) == pytest.approx((0.2 / 1.8 + 0.1 / 1.9) / 2)
    # binary 10/90: answering "foreground" everywhere scores 0.9 > 0.9/1.1
    assert seg.seg_chance([10, 90]) == pytest.approx(0.9)
    assert seg.seg_at_chance(0.85, [10, 90]) and not seg.seg_at_chance(0.95, [10, 90])
    assert math.isnan(seg.seg_chance([5, 0, 0]))
    assert not seg.seg_at_chance(0.0, [5, 0, 0]) and not seg.seg_at_chance(None, [70, 20, 10])
    assert not seg.seg_at_chance(float("nan"), [70, 20, 10])


def test_guesser_drawing_from_frequencies_scores_the_chance_level():
    g = torch.Generator().manual_seed(1)
    probs = torch.tensor([0.6, 0.3, 0.1])
    target = torch.multinomial(probs, 400_000, replacement=True, generator=g).view(1, 400, 1000)
    guess = torch.multinomial(probs, 400_000, replacement=True, generator=g).view(1, 400, 1000)
    cm = seg.ConfusionMatrix(3)
    cm.update(guess, target)
    m = cm.compute()
    assert m["miou_fg"] == pytest.approx(seg.seg_chance(m["class_pixels"]), abs=3e-3)


def test_bad_labels_raise_at_compute():
    cm = seg.ConfusionMatrix(4)
    cm.update(torch.zeros(1, 2, 2, dtype=torch.int64), torch.tensor([[[0, 7], [255, 1]]]))
    with pytest.raises(DataError, match="1 target pixels"):
        cm.compute()
    with pytest.raises(ValueError, match="ignore_index"):
        seg.ConfusionMatrix(4, ignore_index=2)
    edges = seg.BoundaryF()
    edges.update(torch.rand(1, 2, 2), torch.tensor([[[0, 2], [255, 1]]]))
    with pytest.raises(DataError, match="1 target pixels"):
        edges.compute()


def test_both_counting_paths_agree():
    idx = torch.randint(0, 50, (10_000,), generator=torch.Generator().manual_seed(3))
    a, b = torch.zeros(53, dtype=torch.int64), torch.zeros(53, dtype=torch.int64)
    seg._add_counts(a, idx, by_index=False)
    seg._add_counts(b, idx, by_index=True)
    assert torch.equal(a, b) and int(a.sum()) == 10_000


# ------------------------------------------------------------ boundaries

def edge_batches(seed=0, batches=3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(batches):
        target = (torch.rand(2, 12, 10 + i, generator=g) < 0.2).long()
        target[torch.rand(target.shape, generator=g) < 0.05] = 255
        score = 1.5 * (target == 1).float() + torch.randn(target.shape, generator=g)
        prob = torch.sigmoid(score - 1.0)
        out.append((prob, target))
    return out


def test_boundary_f_matches_torchmetrics_and_ods_is_the_best_threshold():
    data = edge_batches()
    bf = seg.BoundaryF()
    tm = [BinaryF1Score(threshold=0.5, ignore_index=255), BinaryPrecision(threshold=0.5, ignore_index=255),
          BinaryRecall(threshold=0.5, ignore_index=255)]
    for i, (prob, target) in enumerate(data):
        if i == 1:  # logits (N, 2, H, W) whose softmax edge channel is prob
            logit = torch.logit(prob.double())
            bf.update(torch.stack([torch.zeros_like(logit), logit], 1).float(), target)
        else:
            bf.update(prob, target)
        for metric in tm:
            metric.update(prob, target)
    m = bf.compute()
    assert m["f"] == pytest.approx(float(tm[0].compute()), abs=1e-5)
    assert m["precision"] == pytest.approx(float(tm[1].compute()), abs=1e-5)
    assert m["recall"] == pytest.approx(float(tm[2].compute()), abs=1e-5)
    # brute force: every threshold, counts summed over the whole dataset
    p = torch.cat([x.reshape(-1) for x, _ in data])
    t = torch.cat([y.reshape(-1) for _, y in data])
    p, t = p[t != 255], t[t != 255]
    best, best_t = -1.0, None
    for thr in bf.thresholds.tolist():
        hit = p > torch.tensor(thr, dtype=torch.float32)
        tp, fp, fn = int((hit & (t == 1)).sum()), int((hit & (t == 0)).sum()), int((~hit & (t == 1)).sum())
        f = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if f > best:
            best, best_t = f, thr
    assert m["ods"] == pytest.approx(best, abs=1e-6) and m["ods_threshold"] == pytest.approx(best_t)
    assert m["ods"] >= m["f"] and m["ods_threshold"] != 0.5  # the data are built so 0.5 is not the best
    assert len(bf.thresholds) == 99 and m["edge_pixels"] == int((t == 1).sum()) and m["pixels"] == len(t)


def test_boundary_fixed_threshold_is_strict_like_the_argmax():
    # p = 0.5 exactly (a 2-class tie) is not an edge at the fixed threshold, as in BinaryF1Score and argmax
    target = torch.tensor([[[1, 0], [1, 1]]])
    bf, tm = seg.BoundaryF(), BinaryF1Score(threshold=0.5)
    bf.update(torch.zeros(1, 2, 2, 2), target)  # equal logits: softmax 0.5 everywhere
    tm.update(torch.full((1, 2, 2), 0.5), target)
    m = bf.compute()
    assert m["f"] == float(tm.compute()) == 0.0
    assert m["ods"] == pytest.approx(6 / 7) and m["ods_threshold"] == 0.01  # 2*3 / (2*3 + 1 + 0)


def test_boundary_tolerance_forgives_a_one_pixel_shift():
    target = torch.zeros(1, 8, 8, dtype=torch.int64)
    target[0, :, 3] = 1
    prob = torch.full((1, 8, 8), 0.1)
    prob[0, :, 4] = 0.9  # the edge, one pixel to the right
    exact, near = seg.BoundaryF(), seg.BoundaryF(tolerance=1)
    exact.update(prob, target)
    near.update(prob, target)
    assert exact.compute()["f"] == 0.0
    n = near.compute()
    assert (n["f"], n["precision"], n["recall"]) == (1.0, 1.0, 1.0)
    far = seg.BoundaryF(tolerance=1)
    shifted = torch.roll(prob, 1, dims=2)  # two pixels away: out of reach
    far.update(shifted, target)
    assert far.compute()["f"] == 0.0
    # a prediction on an ignored pixel recalls nothing
    ignored = target.clone()
    ignored[0, :, 4] = 255
    masked = seg.BoundaryF(tolerance=1)
    masked.update(prob, ignored)
    assert masked.compute()["recall"] == 0.0


# ------------------------------------------------------------ losses

def test_median_frequency_weights_hand_checked():
    # present counts 10, 40, 50, 100 -> median (40 + 50) / 2 = 45; w = 45 / count; the absent class gets 1
    w = seg.median_frequency_weights([100, 10, 50, 0, 40])
    assert w.dtype == torch.float32
    assert w.tolist() == pytest.approx([0.45, 4.5, 0.9, 1.0, 1.125])
    assert seg.median_frequency_weights(torch.tensor([30, 10, 20])).tolist() == pytest.approx([2 / 3, 2.0, 1.0])
    assert seg.median_frequency_weights([0, 0]).tolist() == [1.0, 1.0]


def test_class_pixel_counts_leaves_out_ignore_and_checks_range():
    labels = torch.tensor([[[0, 1, 1], [255, 2, 0]]])
    assert seg.class_pixel_counts(labels, 4).tolist() == [2, 2, 1, 0]
    with pytest.raises(DataError, match="out of range"):
        seg.class_pixel_counts(torch.tensor([0, 4]), 4)


def test_edge_weights_balance_the_classes_like_hed():
    w = seg.edge_class_weights(0.1)
    assert w.tolist() == pytest.approx([1.0, 9.0])  # 90% non-edge x 1 == 10% edge x 9
    with pytest.raises(DataError):
        seg.edge_class_weights(0.0)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 2, 6, 6, generator=g)
    target = (torch.rand(2, 6, 6, generator=g) < 0.1).long()
    hed = torch.tensor([0.1, 0.9])  # HED: edge 1 - f, non-edge f: the same up to scale
    assert float(seg.pixel_cross_entropy(logits, target, w)) == pytest.approx(
        float(seg.pixel_cross_entropy(logits, target, hed)), rel=1e-5)


def test_pixel_cross_entropy_equals_torch_and_survives_an_all_ignored_batch():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 5, 4, 7, generator=g)
    target = torch.randint(0, 5, (3, 4, 7), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    w = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25])
    for weights in (None, w):
        ours = seg.pixel_cross_entropy(logits, target, weights)
        assert float(ours) == pytest.approx(float(F.cross_entropy(logits, target, weight=weights, ignore_index=255)),
                                            rel=1e-5)
    void = torch.full_like(target, 255)
    assert math.isnan(float(F.cross_entropy(logits, void, ignore_index=255)))  # what the wrapper avoids
    x = logits.clone().requires_grad_()
    loss = seg.pixel_cross_entropy(x, void, w)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(x.grad).all() and not x.grad.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the device path (index_add_ "
                    "counting, no host sync per batch) runs only on a GPU")
def test_cuda_updates_never_sync_and_match_cpu():
    data = seg_batches(device="cuda")
    edges = [(p.cuda(), t.cuda()) for p, t in edge_batches()]
    gpu, cpu = seg.ConfusionMatrix(K), seg.ConfusionMatrix(K)
    egpu, ecpu = seg.BoundaryF(tolerance=1), seg.BoundaryF(tolerance=1)
    for output, target, _ in data:
        cpu.update(output.cpu(), target.cpu())
    for prob, target in edges:
        ecpu.update(prob.cpu(), target.cpu())
    gpu.update(*data[0][:2])  # the first batch allocates the counts and moves the thresholds: once, not per batch
    egpu.update(*edges[0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for output, target, _ in data[1:]:
            gpu.update(output, target)
        for prob, target in edges[1:]:
            egpu.update(prob, target)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert gpu.bins.device.type == "cuda"
    assert same(gpu.compute(), cpu.compute())
    assert same(egpu.compute(), ecpu.compute())
