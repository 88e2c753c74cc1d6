"""``freeze=backbone``: fine-tune only the classifier, the backbone's weights and BatchNorm statistics fixed.

A training concern (the trainer applies it around ``fit``), so it lives with training; it finds the
classifier through the checkpoint format's ``head_keys``, the keys a different class count re-initialises.
"""
from __future__ import annotations

import contextlib

import torch

from dlasearch.errors import CheckpointError
from dlasearch.weights import head_keys

__all__ = ['frozen', 'describe']


class _FrozenBatchNorm(torch.nn.BatchNorm2d):
    """A BatchNorm that stays in eval mode: a frozen backbone keeps its running statistics."""

    def train(self, mode: bool = True):
        return super().train(False)


def _split(model: torch.nn.Module) -> tuple[list, set]:
    """(the trainable backbone parameters as (name, p), the classifier's module names)."""
    graph = getattr(model, "ir", None)
    if graph is None or not graph.of_kind("head"):
        raise CheckpointError("freeze=backbone needs a dlasearch model with a classifier head")
    heads = {k.rsplit(".", 1)[0] for k in head_keys(graph)}
    return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[0] not in heads and p.requires_grad], heads


def describe(model: torch.nn.Module, freeze: str) -> dict | None:
    """What ``freeze`` fixes, for the user to see before training: parameter counts and the trained modules."""
    if freeze == "none":
        return None
    params, heads = _split(model)
    fixed = sum(p.numel() for _, p in params)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"frozen_params": fixed, "trainable_params": total - fixed, "trained": sorted(heads),
            "batchnorm_layers_fixed": sum(1 for m in model.modules() if type(m) is torch.nn.BatchNorm2d)}


@contextlib.contextmanager
def frozen(model: torch.nn.Module, freeze: str):
    """``freeze="backbone"``: train only the classifier (backbone weights fixed, BatchNorm in eval mode)."""
    if freeze == "none":
        yield
        return
    params, _ = _split(model)
    norms = [m for m in model.modules() if type(m) is torch.nn.BatchNorm2d]
    for _, p in params:
        p.requires_grad_(False)
    for m in norms:
        m.__class__ = _FrozenBatchNorm
    try:
        yield
    finally:
        for _, p in params:
            p.requires_grad_(True)
        for m in norms:
            m.__class__ = torch.nn.BatchNorm2d
