"""What the engine runs in place of the model as built: ``torch.compile`` where it pays
(``resolve_compile``, ``compile_model``), and on CPU the small-map convolutions as dense GEMMs
(``cpu_small_maps``)."""
from __future__ import annotations

import torch
from torch import fx

from dlasearch.train.small_maps import MAX_POSITIONS, lower_small_maps

__all__ = ['COMPILE_MODES', 'resolve_compile', 'compile_model', 'cpu_small_maps']

COMPILE_MODES = ("auto", "none", "default", "reduce-overhead")

# From bench/trial_speed.py on an H100 (docs/engine.md): at 32 px the compiled step is slower than the
# graphed one; at 224 px it is ~1.2x faster but costs ~30 s, earned back after ~700k training images.
COMPILE_MIN_SIDE = 128
COMPILE_MIN_IMAGES = 700_000


def resolve_compile(mode: str, device: torch.device, side: int, images: int) -> tuple[str, str]:
    """``compile=auto`` -> the mode that pays off for this trial, with the reason."""
    if mode != "auto":
        return mode, f"compile={mode} as set"
    if device.type != "cuda":
        return "none", "compile=auto on CPU: none (compile time is not earned back by short trials)"
    if side >= COMPILE_MIN_SIDE and images >= COMPILE_MIN_IMAGES:
        return "default", f"compile=auto: default ({images:,} images at {side} px earn back the compile time)"
    return "none", (f"compile=auto: none ({images:,} images at {side} px: the CUDA-graphed eager step is "
                    f"faster than compiling)")


def compile_model(model, mode: str):
    """``torch.compile`` with static shapes (sizes traced as constants: no symbolic ceil-mode arithmetic,
    no recompiles for the batch size), or the model itself for ``none``/``auto``."""
    if mode in ("auto", "none"):
        return model
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)


def cpu_small_maps(model, input_shape: tuple[int, ...], device: torch.device, on: bool = True):
    """What the engine trains and evaluates on ``device``: on CPU a copy of an fx model whose convolutions on
    maps of <= 4 positions (at ``input_shape``) run as dense GEMMs, sharing the model's parameters and
    buffers (``small_maps.lower_small_maps``); elsewhere the model.  Returns it and a note for metrics.json."""
    if not on:
        return model, "off: small_maps=false"
    if device.type != "cpu":
        return model, "off: CPU only"
    if not isinstance(model, fx.GraphModule):
        return model, "off: not an fx module"
    fast, names = lower_small_maps(model, input_shape)
    if not names:
        return model, f"off: no convolution on a map of <= {MAX_POSITIONS} positions"
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return fast, f"{len(names)} of {convs} convolutions (on maps of <= {MAX_POSITIONS} positions) as dense GEMMs"
