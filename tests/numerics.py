"""The recorded outputs of the original DLA (tests/reference/numerics) and the weights they were made with."""
import math
import zlib
from pathlib import Path

import torch

NUMERICS = Path(__file__).resolve().parent / "reference" / "numerics"
CASES = sorted(p.stem for p in NUMERICS.glob("*.pt"))


def fixture_value(name: str, shape) -> torch.Tensor:
    """The weight formula of reference/numerics/README.md: every value follows from name and shape."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    leaf = name.rsplit(".", 1)[-1]
    shape = tuple(shape)
    if leaf == "num_batches_tracked":
        return torch.zeros((), dtype=torch.long)
    if leaf == "running_mean":
        return 0.1 * torch.randn(shape, generator=g)
    if leaf == "running_var":
        return 0.5 + torch.rand(shape, generator=g)
    if len(shape) == 4:
        return torch.randn(shape, generator=g) * math.sqrt(1.0 / (shape[0] * shape[2] * shape[3]))
    if leaf == "weight" and len(shape) == 1:
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    return 0.1 * torch.randn(shape, generator=g)


def load_case(case: str) -> dict:
    return torch.load(NUMERICS / f"{case}.pt", weights_only=False)


def original_weights(case: dict) -> dict:
    return {k: fixture_value(k, shape) for k, shape in case["original_state_dict"].items()}
