"""Metrics of a model, each a function of (model, input shape): reused by search and reports."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def params(model: torch.nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def macs(model: torch.nn.Module, input_shape) -> int:
    """Forward multiply-accumulates for one batch of ``input_shape`` (FlopCounterMode FLOPs / 2)."""
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(tuple(input_shape), device=p.device if p is not None else "cpu")
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
