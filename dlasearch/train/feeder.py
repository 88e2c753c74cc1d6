"""Batches made on the device: a dataset that already sits there is shuffled, augmented and normalised
without a per-batch transfer or host sync (``Feeder``), and scored the same way (``evaluate``).

Dense data (segment, boundary) take the joint image + mask augmentation of ``Dataset.pairs``: the same
batches, bit for bit, with its random draws made for the whole epoch before the first batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dlasearch.train import scenes
from dlasearch.train.data import Dataset, crop_at
from dlasearch.train.masks import apply_augment, augments, draw_augment
from dlasearch.train.precision import Precision, forward

__all__ = ['Feeder', 'evaluate']


class Feeder:
    """Normalised (and augmented) batches of a dataset that already sits on ``device``, with no host sync."""

    def __init__(self, data: Dataset, device: torch.device):
        self.data, self.device = data, device
        c = data.channels
        self.mean = torch.tensor(data.mean, dtype=torch.float32).view(1, c, 1, 1).to(device)
        self.std = torch.tensor(data.std, dtype=torch.float32).view(1, c, 1, 1).to(device)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float().div_(255.0) - self.mean).div_(self.std)

    def epoch(self, batch_size: int, generator: torch.Generator, augment: bool, max_batches: int | None = None):
        """One shuffled, augmented pass over ``train``; every random draw of the epoch is made (on the CPU
        generator) and moved before the first batch."""
        d = self.data
        if d.dense:
            yield from self._dense_epoch(batch_size, generator, augment, max_batches)
            return
        n = len(d.y_train)
        pad = d.crop_padding if augment else 0
        plan = [torch.randperm(n, generator=generator)]
        if pad > 0:
            plan += [torch.randint(0, 2 * pad + 1, (n,), generator=generator) for _ in range(2)]
        if augment and d.flip:
            plan.append((torch.rand(n, generator=generator) < 0.5).long())
        plan = torch.stack(plan)
        if self.device.type == "cuda":
            plan = plan.pin_memory()
        plan = plan.to(self.device, non_blocking=True)
        for k, i in enumerate(range(0, n, batch_size)):
            if max_batches is not None and k >= max_batches:
                return
            p = plan[:, i:i + batch_size]
            x, y = d.x_train[p[0]], d.y_train[p[0]]
            if pad > 0:
                x = crop_at(x, pad, p[1], p[2])
            if augment and d.flip:
                x = torch.where(p[-1].bool().view(-1, 1, 1, 1), x.flip(3), x)
            yield self.normalize(x), y

    def _dense_epoch(self, batch_size: int, generator: torch.Generator, augment: bool, max_batches: int | None):
        """The batches of ``Dataset.batches("train", batch_size, shuffle=True, augment=augment, generator=...)``
        (``Dataset.pairs`` per batch), with each batch's augmentation draws made up front in the same order."""
        d = self.data
        n = len(d.y_train)
        order = torch.randperm(n, generator=generator)
        augment = augment and augments(d.crop_padding, d.flip, d.scale)
        draws = (torch.cat([draw_augment(min(batch_size, n - i), generator, d.flip, d.scale)
                            for i in range(0, n, batch_size)], dim=1) if augment else None)
        order, draws = (self._move(t) for t in (order, draws))
        boundary = d.task == "boundary" and d.labels is not None
        maps = d.labels["train"] if boundary else d.y_train
        for k, i in enumerate(range(0, n, batch_size)):
            if max_batches is not None and k >= max_batches:
                return
            idx = order[i:i + batch_size]
            if not augment:
                yield self.normalize(d.x_train[idx]), d.y_train[idx]
                continue
            x, lab = apply_augment(d.x_train[idx], maps[idx], draws[:, i:i + batch_size], d.crop_padding)
            yield self.normalize(x), (scenes.boundary(lab) if boundary else lab.long())

    def _move(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """A CPU tensor on the device, without a sync (pinned memory on CUDA)."""
        if t is None:
            return None
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def split(self, name: str, batch_size: int):
        x, y = self.data.split(name)
        for i in range(0, len(y), batch_size):
            yield self.normalize(x[i:i + batch_size]), y[i:i + batch_size]


@torch.inference_mode()
def evaluate(model: torch.nn.Module, feeder: Feeder, split: str, batch_size: int, prec: Precision):
    """(mean cross-entropy, accuracy) on a split, in eval mode; one host read at the end."""
    was_training = model.training
    model.eval()
    dev = feeder.device
    loss = torch.zeros((), device=dev, dtype=torch.float64)
    correct = torch.zeros((), device=dev, dtype=torch.int64)
    n = 0
    try:
        for x, y in feeder.split(split, batch_size):
            out = forward(model, x, dev, prec).float()
            loss += F.cross_entropy(out, y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
            n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        return float("nan"), float("nan")
    return float(loss) / n, int(correct) / n
