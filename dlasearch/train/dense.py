"""What dense prediction (``segment``, ``boundary``) adds to training: the loss's class weights, the
scoring of a split (mIoU, boundary F / ODS) and the chance level of each score.

Classification keeps its own, older path (``feeder.evaluate``, ``stats.chance_record``); ``score_split`` and
``chance_record`` dispatch on the task, so the engine and ``runs`` call one function for both.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dlasearch import stats
from dlasearch.errors import TrainError
from dlasearch.train.feeder import Feeder, evaluate
from dlasearch.train.precision import Precision, forward
from dlasearch.train.seg_metrics import (
    IGNORE, BoundaryF, ConfusionMatrix, boundary_at_chance, boundary_chance, class_pixel_counts, edge_class_weights,
    median_frequency_weights, seg_at_chance, seg_chance,
)

__all__ = ['SCORE_NAMES', 'check_options', 'loss_weights', 'score_split', 'evaluate_dense', 'chance_record']

# The primary metric of each task: what ``val_score`` holds, and what a search ranks by.
SCORE_NAMES = {"classify": "accuracy", "segment": "miou_fg", "boundary": "boundary_ods"}


def check_options(cfg, data) -> None:
    """Raise ``TrainError`` for a training option that does not fit ``data``'s task (before anything runs)."""
    _check_weights(cfg.class_weights, data)


def _check_weights(mode: str | None, data) -> None:
    if mode == "auto" and not data.dense:
        raise TrainError(f"class_weights=auto: class weights are for dense data (segment or boundary); "
                         f"{data.name} has one label per image; use class_weights=none")


def loss_weights(mode: str | None, data, device: torch.device) -> tuple[torch.Tensor | None, dict]:
    """The per-class weights of the training loss (on ``device``, None for none) and what ``metrics.json``
    says about them.  ``mode`` None: auto on dense data (``TrainConfig.class_weights``: unweighted, the
    mnist_seg scenes' 90% background taught a net to answer background everywhere)."""
    resolved = mode if mode is not None else ("auto" if data.dense else "none")
    why = f"class_weights={mode}" if mode is not None else f"class_weights=null on {data.task} data: {resolved}"
    if resolved == "none":
        return None, {"class_weights": "none", "reason": why, "weights": None}
    _check_weights(resolved, data)
    counts = class_pixel_counts(data.y_train, data.num_classes)
    if data.task == "boundary":
        total = int(counts.sum())
        w = edge_class_weights(int(counts[1]) / total if total else 0.0)
        why += f" (edge weight (1-f)/f, f = {int(counts[1]) / total:.4f} of the training pixels)"
    else:
        w = median_frequency_weights(counts)
        why += " (median frequency of the training masks)"
    return w.to(device), {"class_weights": "auto", "reason": why, "weights": [round(float(v), 6) for v in w]}


def score_split(model, feeder: Feeder, split: str, batch_size: int,
                prec: Precision) -> tuple[float, float, float, dict]:
    """(loss, accuracy, score, the task's other metrics by name) of ``split``, in eval mode, for any task."""
    if not feeder.data.dense:
        loss, acc = evaluate(model, feeder, split, batch_size, prec)
        return loss, acc, acc, {}
    out = evaluate_dense(model, feeder, split, batch_size, prec)
    return out.pop("loss"), out.pop("accuracy"), out.pop("score"), out


@torch.inference_mode()
def evaluate_dense(model, feeder: Feeder, split: str, batch_size: int, prec: Precision) -> dict:
    """Per-pixel scores of a dense split, counted on the device and read once at the end.

    ``loss`` (unweighted cross-entropy per scored pixel), ``accuracy`` (pixel accuracy over the pixels
    not ignored) and ``score`` (``SCORE_NAMES``), plus for segment ``miou``, ``miou_fg`` and
    ``per_class_iou`` (null for a class absent from both target and prediction), for boundary
    ``boundary_f``/``_precision``/``_recall`` at p > 0.5 and ``boundary_ods`` with its threshold."""
    d = feeder.data
    was_training = model.training
    model.eval()
    dev = feeder.device
    loss = torch.zeros((), device=dev, dtype=torch.float64)
    cm = ConfusionMatrix(d.num_classes)
    edges = BoundaryF() if d.task == "boundary" else None
    try:
        for x, y in feeder.split(split, batch_size):
            out = forward(model, x, dev, prec).float()
            loss += F.cross_entropy(out, y, ignore_index=IGNORE, reduction="sum")
            cm.update(out, y)
            if edges is not None:
                edges.update(out, y)
    finally:
        model.train(was_training)
    c = cm.compute()
    pixels = c["pixels"]
    res = {"loss": float(loss) / pixels if pixels else math.nan, "accuracy": c["pixel_accuracy"]}
    if edges is None:
        res.update(score=c["miou_fg"], miou=c["miou"], miou_fg=c["miou_fg"],
                   per_class_iou=[v if math.isfinite(v) else None for v in c["per_class_iou"]])
        return res
    b = edges.compute()
    res.update(score=b["ods"], boundary_f=b["f"], boundary_precision=b["precision"], boundary_recall=b["recall"],
               boundary_ods=b["ods"], boundary_ods_threshold=b["ods_threshold"])
    return res


def chance_record(data, val_score, test_score=None) -> dict:
    """``stats.chance_record`` for any task: per scored split its chance level, size (images, or scored
    pixels for dense data), score and whether that score is at chance; ``metric`` names the score."""
    if not data.dense:
        return stats.chance_record(data, val_score, test_score)
    metric = SCORE_NAMES[data.task]
    out = {}
    for split, score in (("val", val_score), ("test", test_score)):
        counts = class_pixel_counts(data.split(split)[1], data.num_classes)
        n = int(counts.sum())
        if data.task == "boundary":
            f = int(counts[1]) / n if n else 0.0
            level, at = boundary_chance(f), boundary_at_chance(score, f)
        else:
            level, at = seg_chance(counts), seg_at_chance(score, counts)
        out[split] = {"chance": level, "n": n, "at_chance": at, "metric": metric, "score": score}
    return out
