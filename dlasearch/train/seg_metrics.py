"""Per-pixel metrics and losses for dense prediction: segmentation mIoU, boundary F / ODS, class weights.

Why here and not torchmetrics: the trainer scores on the device and reads the result once per
epoch (see ``engine``); these accumulators keep integer counts on the device, never read them
back per batch, and need nothing beyond torch.  The definitions match torchmetrics'
(``MulticlassJaccardIndex(average='macro')``, ``BinaryF1Score``), which the tests check.

Conventions: targets are int64 (N, H, W) with ``ignore_index`` (255) on pixels that count for
nothing; a confusion matrix has the target on rows and the prediction on columns.  A target
value that is neither a class nor ``ignore_index`` is counted on the device and raised as a
``DataError`` by ``compute()``: checking it per batch would cost a host sync.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dlasearch import stats
from dlasearch.errors import DataError

__all__ = ['ConfusionMatrix', 'BoundaryF', 'default_thresholds', 'class_pixel_counts', 'median_frequency_weights',
           'edge_class_weights', 'pixel_cross_entropy', 'seg_chance', 'seg_at_chance', 'seg_chance_line',
           'boundary_chance', 'boundary_at_chance']

IGNORE = 255
FIXED_THRESHOLD = 0.5  # the boundary F everyone quotes: an edge where p(edge) > 0.5, i.e. the 2-class argmax


def _add_counts(bins: torch.Tensor, idx: torch.Tensor, by_index: bool | None = None) -> None:
    """bins[i] += number of times i occurs in idx, without reading anything back to the host.

    ``torch.bincount`` on CUDA reads the min and max of its input back to the host to size its
    output (two syncs per call), so off the CPU the counts go in with ``index_add_`` instead."""
    if by_index is None:
        by_index = bins.device.type != "cpu"
    if by_index:
        bins.index_add_(0, idx, torch.ones((), dtype=bins.dtype, device=bins.device).expand(idx.numel()))
    else:
        bins += torch.bincount(idx, minlength=bins.numel())


def _check_target(output: torch.Tensor, target: torch.Tensor, pred_shape) -> None:
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError(f"target must be an integer tensor (int64 class indices), got {target.dtype}")
    if tuple(pred_shape) != tuple(target.shape):
        raise ValueError(f"prediction shape {tuple(output.shape)} does not fit target shape {tuple(target.shape)}")


class ConfusionMatrix:
    """Accumulates a K x K confusion matrix of segmentation pixels over batches, on their device.

    ``compute()`` follows torchmetrics' ``MulticlassJaccardIndex(average='macro', ignore_index=255)``:
    a class's IoU is TP / (TP + FP + FN) over the non-ignored pixels of the whole dataset (not a mean
    of per-image IoUs), and ``miou`` averages it over the classes that occur in the target or in
    the prediction.  A class absent from both has no IoU (NaN in ``per_class_iou``; torchmetrics'
    ``average='none'`` writes 0 there) and does not enter the mean, so a val split missing a class
    is not scored 0 for it.  ``miou_fg`` is the same mean without class 0 (background): a net
    that predicts only background scores exactly 0, where plain ``miou`` still credits it with
    the background IoU.  The original DLA ``segment.py`` scores the same way (``nanmean`` of
    ``diag / (rows + cols - diag)``).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a class index (0..{num_classes - 1}); pick one outside")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.bins: torch.Tensor | None = None  # K*K cells, then ignored, bad target, bad prediction

    def reset(self) -> None:
        if self.bins is not None:
            self.bins.zero_()

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``output`` logits (N, K, H, W) or class predictions (N, H, W); ``target`` (N, H, W)."""
        k = self.num_classes
        if output.dim() == target.dim() + 1:
            if output.shape[1] != k:
                raise ValueError(f"logits have {output.shape[1]} channels, expected num_classes={k}")
            pred = output.argmax(1)
        else:
            pred = output
        _check_target(output, target, pred.shape)
        if pred.dtype.is_floating_point:
            raise TypeError(f"predictions must be class indices, got {pred.dtype}; pass logits as (N, K, H, W)")
        if self.bins is None:
            self.bins = torch.zeros(k * k + 3, dtype=torch.int64, device=target.device)
        t = target.reshape(-1).long()
        p = pred.reshape(-1).to(t.device).long()
        t_ok = (t >= 0) & (t < k)
        p_ok = (p >= 0) & (p < k)
        ignored = t == self.ignore_index if self.ignore_index is not None else torch.zeros_like(t_ok)
        idx = torch.where(t_ok & p_ok, t * k + p,
                          torch.where(ignored, k * k, torch.where(t_ok, k * k + 2, k * k + 1)))
        _add_counts(self.bins, idx)

    @property
    def counts(self) -> torch.Tensor:
        """The (K, K) int64 confusion matrix on the device (rows: target, columns: prediction)."""
        k = self.num_classes
        if self.bins is None:
            return torch.zeros(k, k, dtype=torch.int64)
        return self.bins[:k * k].view(k, k)

    def compute(self) -> dict:
        """The metrics as Python numbers, reading the device once: ``miou``, ``miou_fg``, ``pixel_accuracy``
        (NaN before any pixel), ``per_class_iou`` (K floats, NaN for absent classes), ``class_pixels``
        (target pixels per class), ``pixels`` (scored), ``ignored``, ``confusion`` (K x K ints)."""
        k = self.num_classes
        bins = self.bins.cpu() if self.bins is not None else torch.zeros(k * k + 3, dtype=torch.int64)
        bad_target, bad_pred = int(bins[k * k + 1]), int(bins[k * k + 2])
        if bad_target or bad_pred:
            raise DataError(f"segmentation labels out of range: {bad_target} target pixels and {bad_pred} predicted "
                            f"pixels are neither a class 0..{k - 1} nor ignore_index={self.ignore_index}")
        cm = bins[:k * k].view(k, k)
        c = cm.double()
        tp = c.diag()
        union = c.sum(0) + c.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
        pixels = int(cm.sum())
        return {
            "miou": _nanmean(iou),
            "miou_fg": _nanmean(iou[1:]),
            "pixel_accuracy": float(tp.sum()) / pixels if pixels else math.nan,
            "per_class_iou": iou.tolist(),
            "class_pixels": cm.sum(1).tolist(),  # target pixels per class: class weights, chance level
            "pixels": pixels,
            "ignored": int(bins[k * k]),
            "confusion": cm.tolist(),
        }


def _nanmean(x: torch.Tensor) -> float:
    keep = x[~torch.isnan(x)]
    return float(keep.mean()) if keep.numel() else math.nan


def default_thresholds() -> torch.Tensor:
    """0.01, 0.02, ..., 0.99: the 99 thresholds of ODS (0.5 exactly among them)."""
    return torch.arange(1, 100, dtype=torch.float64) / 100


class BoundaryF:
    """Boundary (edge) precision, recall and F over a dataset: at p > 0.5, and ODS.

    ODS (optimal dataset scale) is the best F over a fixed set of thresholds, with the counts of
    each threshold summed over the whole dataset before P, R and F are formed (one threshold for
    all images, unlike OIS).  All thresholds come from one pass: each pixel's edge probability is
    bucketed between consecutive thresholds and the buckets are counted, so 99 thresholds cost
    one histogram.

    Matching: ``tolerance=0`` (the default) is pixel-exact, identical to torchmetrics'
    ``BinaryF1Score(threshold=0.5)``.  The BSDS benchmark instead thins predictions and matches
    them one-to-one to ground truth within 0.0075 of the image diagonal (about 4 px on BSDS500).
    ``tolerance=r`` approximates that cheaply: a predicted edge pixel is correct if a ground-truth
    edge lies within r px (Chebyshev distance, max-pool dilation of the ground truth), and a
    ground-truth edge pixel is recalled if a predicted edge lies within r px (dilation of the
    prediction, which commutes with thresholding: max-pool the probabilities, then threshold).
    The matching is many-to-one, so thick predictions are not penalised as BSDS would: scores
    with r > 0 are optimistic relative to the benchmark and comparable only among themselves.
    """

    def __init__(self, thresholds: torch.Tensor | None = None, tolerance: int = 0, ignore_index: int | None = IGNORE):
        thr = default_thresholds() if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float64)
        thr = torch.unique(torch.cat([thr.reshape(-1), torch.tensor([FIXED_THRESHOLD], dtype=torch.float64)]))
        if thr.numel() == 0 or thr.min() <= 0 or thr.max() >= 1:
            raise ValueError("thresholds must lie strictly between 0 and 1")
        if tolerance < 0 or int(tolerance) != tolerance:
            raise ValueError(f"tolerance must be a whole number of pixels >= 0, got {tolerance}")
        if ignore_index in (0, 1):
            raise ValueError(f"ignore_index {ignore_index} is an edge label (0 or 1); pick one outside")
        self.thresholds = thr.float()  # compared with float32 probabilities, as the brute force would
        self.threshold_values = thr.tolist()  # as given (0.67, not float32's 0.6700000166893005), for reports
        self.fixed = int(torch.nonzero(self.thresholds == FIXED_THRESHOLD)[0])
        self.tolerance = int(tolerance)
        self.ignore_index = ignore_index
        self.bins: torch.Tensor | None = None  # 3 histograms of B buckets, then a dump bin and a bad-label bin

    def reset(self) -> None:
        if self.bins is not None:
            self.bins.zero_()

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``output`` logits (N, 2, H, W) or edge probabilities in 0..1 (N, H, W); target (N, H, W) 0/1."""
        if output.dim() == target.dim() + 1:
            if output.shape[1] != 2:
                raise ValueError(f"boundary logits need 2 channels (non-edge, edge), got {output.shape[1]}")
            prob = output.float().softmax(1)[:, 1]
        else:
            prob = output.float()
        _check_target(output, target, prob.shape)
        if target.dim() != 3:
            raise ValueError(f"boundary targets must be (N, H, W), got {tuple(target.shape)}")
        dev = target.device
        prob = prob.to(dev).contiguous()  # the edge channel of (N, 2, H, W) is strided; bucketize wants it dense
        if self.thresholds.device != dev:  # moved once: a host-to-device copy per batch would sync
            self.thresholds = self.thresholds.to(dev)
        thr = self.thresholds
        b_count = thr.numel() + 1  # bucket b: the number of thresholds strictly below p, so p > t_j <=> b > j
        if self.bins is None:
            self.bins = torch.zeros(3 * b_count + 2, dtype=torch.int64, device=dev)
        dump, bad_bin = 3 * b_count, 3 * b_count + 1
        t = target.long()
        valid = (t == 0) | (t == 1)
        bad = ~valid if self.ignore_index is None else ~valid & (t != self.ignore_index)
        edge = t == 1
        bucket = torch.bucketize(prob, thr)
        if self.tolerance:
            r = self.tolerance
            near_edge = _dilate(edge.float(), r) > 0
            pred_bucket = torch.bucketize(_dilate(torch.where(valid, prob, torch.zeros_like(prob)), r), thr)
        else:
            near_edge, pred_bucket = edge, bucket
        idx = torch.cat([
            torch.where(valid, bucket, torch.where(bad, bad_bin, dump)).reshape(-1),  # every scored pixel
            torch.where(valid & near_edge, b_count + bucket, dump).reshape(-1),  # predictions near a true edge
            torch.where(edge, 2 * b_count + pred_bucket, dump).reshape(-1),  # true edges near a prediction
        ])
        _add_counts(self.bins, idx)

    def compute(self) -> dict:
        """P, R, F at p > 0.5 (``precision``, ``recall``, ``f``) and at the ODS threshold (``ods``...); one read."""
        b_count = self.thresholds.numel() + 1
        bins = self.bins.cpu() if self.bins is not None else torch.zeros(3 * b_count + 2, dtype=torch.int64)
        if int(bins[-1]):
            raise DataError(f"boundary labels out of range: {int(bins[-1])} target pixels are neither 0, 1 nor "
                            f"ignore_index={self.ignore_index}")
        h = bins[:3 * b_count].view(3, b_count).double()
        above = h.flip(1).cumsum(1).flip(1)[:, 1:]  # above[:, j]: pixels with p > t_j
        predicted, hit, recalled = above[0], above[1], above[2]
        edges = float(h[2].sum())
        precision = torch.where(predicted > 0, hit / predicted.clamp_min(1), torch.zeros_like(hit))
        recall = recalled / edges if edges else torch.zeros_like(recalled)
        total = precision + recall
        f = torch.where(total > 0, 2 * precision * recall / total.where(total > 0, torch.ones_like(total)),
                        torch.zeros_like(total))
        best = int(f.argmax())
        j = self.fixed
        return {
            "f": float(f[j]), "precision": float(precision[j]), "recall": float(recall[j]),
            "ods": float(f[best]), "ods_threshold": self.threshold_values[best],
            "ods_precision": float(precision[best]), "ods_recall": float(recall[best]),
            "edge_pixels": int(edges), "pixels": int(h[0].sum()), "tolerance": self.tolerance,
        }


def _dilate(x: torch.Tensor, r: int) -> torch.Tensor:
    """Max over the (2r+1)^2 square around each pixel of an (N, H, W) map."""
    return F.max_pool2d(x.unsqueeze(1), 2 * r + 1, stride=1, padding=r).squeeze(1)


# ------------------------------------------------------------ losses

def class_pixel_counts(labels: torch.Tensor, num_classes: int, ignore_index: int | None = IGNORE) -> torch.Tensor:
    """Pixels per class over label maps (ignore pixels left out): what the class weights are made from."""
    y = torch.as_tensor(labels).reshape(-1).long()
    if ignore_index is not None:
        y = y[y != ignore_index]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"labels out of range: values {int(y.min())}..{int(y.max())} for {num_classes} classes "
                        f"(ignore_index={ignore_index})")
    return torch.bincount(y, minlength=num_classes)


def median_frequency_weights(class_pixel_counts) -> torch.Tensor:
    """Median-frequency balancing (Eigen & Fergus 2015): w_c = median(freq) / freq_c, float32 (K,).

    freq_c is class c's share of all labelled pixels, and the median is over the classes that
    occur, so the normaliser cancels and w_c = median(count) / count_c.  (Eigen & Fergus divide
    each class's pixels by the pixels of the images it occurs in; that needs per-image counts and
    gives the same ordering.)  A class with no pixels gets 1: it adds nothing to a loss over
    labels that lack it, and if the counts come from a sample of the data, a class the sample
    missed still trains at a neutral weight rather than not at all.  With an even number of
    classes present the median is the mean of the two middle counts."""
    counts = torch.as_tensor(class_pixel_counts, dtype=torch.float64).reshape(-1)
    if (counts < 0).any():
        raise ValueError("class pixel counts must be >= 0")
    present = counts > 0
    weights = torch.ones_like(counts)
    if present.any():
        c = counts[present].sort().values
        n = c.numel()
        median = (c[(n - 1) // 2] + c[n // 2]) / 2
        weights[present] = median / counts[present]
    return weights.float()


def edge_class_weights(edge_fraction: float) -> torch.Tensor:
    """Class weights (non-edge, edge) = (1, (1 - f) / f) for a boundary loss, f the share of edge pixels.

    The original DLA ``segment.py --edge-weight W`` weights its 2-class NLL loss by (1, W) with W
    chosen by hand; this picks the W at which edge and non-edge pixels carry equal total weight.
    It is HED's class-balanced loss (edge weight 1 - f, non-edge f) scaled by 1/f, which changes
    nothing under ``pixel_cross_entropy``'s weighted mean.  HED takes f per image; here it is one
    number for the training set (``class_pixel_counts(...)[1] / total``)."""
    f = float(edge_fraction)
    if not 0 < f < 1:
        raise DataError(f"edge fraction must be strictly between 0 and 1, got {f}: the labels have "
                        f"{'no edge' if f <= 0 else 'only edge'} pixels")
    return torch.tensor([1.0, (1 - f) / f], dtype=torch.float32)


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                        ignore_index: int = IGNORE, label_smoothing: float = 0.0) -> torch.Tensor:
    """Weighted mean cross-entropy over the non-ignored pixels: ``F.cross_entropy`` with ``weight=``,
    except that a batch whose pixels are all ignored gives 0, not 0/0 = NaN (a random crop can land
    on a void region, and the trainer stops a run on a non-finite loss).  Pass ``weights`` already on
    the device: a CPU tensor is copied there on every call.  No host read and no data-dependent shape:
    the trainer captures it in a CUDA graph."""
    w = None if weights is None else weights.to(logits.device, torch.float32)
    losses = F.cross_entropy(logits.float(), target, weight=w, ignore_index=ignore_index, reduction="none",
                             label_smoothing=label_smoothing)
    valid = target != ignore_index
    if w is None:
        denom = valid.sum().float()
    else:
        safe = target.where(valid, torch.zeros_like(target))
        denom = torch.where(valid, w[safe], torch.zeros((), device=w.device)).sum()
    return losses.sum() / denom.clamp_min(torch.finfo(torch.float32).eps)


# ------------------------------------------------------------ chance

def seg_chance(class_pixels) -> float:
    """The foreground mIoU a net reaches knowing only the class frequencies p_c of the scored pixels.

    The better of two such guessers: always answering the most frequent class (fg mIoU p_max / n_fg
    when that class is foreground, else 0), and drawing each pixel's class from the frequencies
    (expected IoU_c = p_c^2 / (p_c^2 + 2 p_c (1 - p_c)) = p_c / (2 - p_c), to within 1/pixels),
    each averaged over the n_fg foreground classes present, as ``miou_fg`` is.  On VOC-like data
    (70% background, 20 classes near 1.5% each) that is about 0.8%; on a binary task with 30%
    foreground, 18%.  NaN when no foreground pixel is scored."""
    counts = torch.as_tensor(class_pixels, dtype=torch.float64).reshape(-1)
    total = counts.sum()
    fg = counts[1:]
    n_fg = int((fg > 0).sum())
    if total <= 0 or n_fg == 0:
        return math.nan
    p = counts / total
    constant = float(p.max()) / n_fg if int(p.argmax()) > 0 else 0.0
    guess = float((p[1:] / (2 - p[1:]))[fg > 0].sum()) / n_fg
    return max(constant, guess)


def seg_at_chance(miou_fg, class_pixels) -> bool:
    """True when ``miou_fg`` is no better than ``seg_chance``: the net has learned nothing about where
    things are (a net predicting only background scores 0).  No sampling margin is added, unlike
    ``stats.at_chance``: the guessers' score spreads by about 1/sqrt(pixels) (0.2 points at 30%
    foreground on 10^5 pixels, and a val split has far more).  False when unknown (no score, or
    no foreground pixel to score)."""
    level = seg_chance(class_pixels)
    if miou_fg is None or not (math.isfinite(miou_fg) and math.isfinite(level)):
        return False
    return miou_fg <= level + 1e-12


def seg_chance_line(what: str, miou_fg: float, level: float) -> str:
    """The one warning line for a segmentation result at chance (cf. ``stats.chance_line``)."""
    return stats.guesser_line(what, miou_fg, level, stats.GUESSERS["miou_fg"])


def boundary_chance(edge_fraction: float) -> float:
    """The ODS of a net that knows only the share f of edge pixels: 2f / (1 + f).

    A prediction independent of the target that marks a share q of the pixels has precision f and
    recall q at every threshold, so F = 2fq / (f + q), largest at q = 1: marking every pixel an edge
    (any constant output does so below its value).  ODS takes the best threshold, so this is its
    chance level (pixel-exact matching, ``tolerance=0``).  NaN without edge pixels."""
    f = float(edge_fraction)
    return 2 * f / (1 + f) if 0 < f <= 1 else math.nan


def boundary_at_chance(ods, edge_fraction: float) -> bool:
    """True when ``ods`` is no better than ``boundary_chance``; False when unknown."""
    level = boundary_chance(edge_fraction)
    if ods is None or not (math.isfinite(ods) and math.isfinite(level)):
        return False
    return ods <= level + 1e-12
