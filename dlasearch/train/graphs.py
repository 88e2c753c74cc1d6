"""The two steps around every CUDA graph capture of the engine (the training step, the BatchNorm
recalibration): the eager warm-up before it, on a side stream, and the capture, which may fail."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

__all__ = ['side_stream', 'capture']


@contextlib.contextmanager
def side_stream(device: torch.device):
    """Run the block on a fresh side stream, ordered after and before the current one: what an eager
    warm-up needs (cuDNN, cuBLAS and the optimizer state initialise outside the capture, off the
    stream a capture records)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream(device).wait_stream(side)


def capture(record: Callable[[], object], device: torch.device):
    """``record()`` captured in a new CUDA graph: ``(graph, None)``, or ``(None, why)`` where an op cannot
    be captured, after a sync, so that the caller can go on eagerly and say why in ``metrics.json``."""
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            record()
    except Exception as e:  # an op that cannot be captured
        torch.cuda.synchronize(device)
        first = (str(e).splitlines() or [""])[0]
        return None, f"capture failed ({type(e).__name__}: {first[:200]})"
    return graph, None
