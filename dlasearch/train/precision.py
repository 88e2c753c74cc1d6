"""What a run computes in: bf16 autocast where the hardware has native bf16, fp32 elsewhere, and the
memory format that goes with it (``choose_precision``, recorded in ``metrics.json``)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

__all__ = ['cpu_bf16', 'Precision', 'choose_precision', 'autocast', 'forward']


@lru_cache(maxsize=1)
def cpu_bf16() -> str | None:
    """The CPU feature that runs bf16 convolutions natively (``amx_bf16``, ``avx512_bf16``), or None."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    for feature in ("amx_bf16", "avx512_bf16"):
        if feature in flags:
            return feature
    cap = torch.backends.cpu.get_cpu_capability()
    return cap.lower() if "AMX" in cap.upper() else None


@dataclass(frozen=True)
class Precision:
    """What a run computes in, and why (recorded in ``metrics.json``)."""

    amp: torch.dtype | None  # autocast dtype; None: plain fp32
    channels_last: bool
    reason: str

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def to_dict(self) -> dict:
        return {"precision": "bf16" if self.amp is not None else "fp32",
                "memory_format": "channels_last" if self.channels_last else "contiguous", "reason": self.reason}


def choose_precision(precision: str, channels_last: bool | None, device: torch.device) -> Precision:
    """Resolve ``precision`` (auto/fp32/bf16) and ``channels_last`` (null: with bf16) for ``device``."""
    if precision == "auto":
        if device.type == "cuda":
            amp, why = torch.bfloat16, "precision=auto on CUDA: bf16 autocast"
        else:
            feature = cpu_bf16()
            cap = torch.backends.cpu.get_cpu_capability()
            amp = torch.bfloat16 if feature else None
            why = (f"precision=auto on a CPU with native bf16 ({feature}): bf16 autocast" if feature else
                   f"precision=auto on a CPU without native bf16 (capability {cap}; bf16 would be emulated, "
                   f"slower): fp32")
    else:
        amp = torch.bfloat16 if precision == "bf16" else None
        why = f"precision={precision}"
    if channels_last is None:  # NHWC: what bf16 kernels want, and on CPU faster in fp32 too (docs/engine.md)
        channels_last = amp is not None or device.type == "cpu"
        why += ("; channels_last=on, following the precision" if amp is not None else
                "; channels_last=on (on CPU, faster in fp32 too)" if channels_last else
                "; channels_last=off, following the precision")
    else:
        why += f"; channels_last={str(channels_last).lower()} as set"
    return Precision(amp, channels_last, why)


def autocast(device: torch.device, amp: torch.dtype | None, cache: bool = True):
    """Autocast to ``amp`` (disabled for None); ``cache=False`` is what CUDA graph capture needs."""
    return torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None, cache_enabled=cache)


def forward(model, x: torch.Tensor, device: torch.device, prec: Precision, cache: bool = True):
    """``model(x)`` in ``prec``: its autocast and memory format, as every pass of the engine runs it."""
    with autocast(device, prec.amp, cache):
        return model(x.contiguous(memory_format=prec.memory_format))
