"""Sizing: one backbone per pattern, widened or narrowed until it lands on the parameter budget."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

from dlasearch.arch import read_arch
from dlasearch.errors import CompareError, DLASearchError, IRError
from dlasearch.ir import to_module
from dlasearch.patterns import build
from dlasearch.measure import params

__all__ = ['widths_at', 'make_spec', 'Sized', 'size', 'decoder_parts', 'decoder_label', 'decoder_fields']

STEM = {"channels": 16, "kernel": 3}


CONV_STAGES = ((16, 1), (32, 2))  # (channels, stride) before the multiplier


STAGE_CHANNELS = (32, 64, 128)


# Three block stages; 2 blocks in every stage would make tree, reentrant and hda one graph
# (a depth-1 tree has nothing to re-enter or merge), so the deeper two stages hold depth-2 trees.
DEFAULT_BLOCKS = (2, 4, 4)


MIN_WIDTH = 8


DIVISORS = (8, 4, 2, 1)  # widths are multiples of 8 when that can reach the budget, else finer


MAX_MULTIPLIER = 64.0


BASE_WIDTHS = (*(c for c, _ in CONV_STAGES), *STAGE_CHANNELS)


def widths_at(multiplier: float, divisor: int) -> tuple[int, ...]:
    """Stage channels at ``multiplier``: the base widths scaled and rounded to multiples of ``divisor``."""
    return tuple(max(MIN_WIDTH, divisor * round(c * multiplier / divisor)) for c in BASE_WIDTHS)


# What a decoder row takes from a spec file (``nasfpn@best.spec.json``): the decoder's structure, not its
# width, which stays the decoder's default as on every other row.
FILE_FIELDS = ("cells", "neck_repeats", "decoder_mode")


def decoder_parts(entry: str) -> tuple[str, str, str]:
    """A ``decoders=`` entry -> (decoder, mode, file): ``ida_up.sum`` -> ("ida_up", "sum", ""),
    ``nasfpn@results/x/best/trial7.spec.json`` -> ("nasfpn", "", that path)."""
    head, _, file = entry.partition("@")
    name, _, mode = head.partition(".")
    return name, mode, file


def decoder_label(entry: str) -> str:
    """The row name of a ``decoders=`` entry: a file entry is named by the file's stem
    (``nasfpn@trial7``), so run folders hold no path."""
    name, _, file = decoder_parts(entry)
    return entry if not file else f"{name}@{Path(file).name.split('.')[0]}"


@functools.lru_cache(maxsize=None)
def decoder_fields(entry: str) -> tuple:
    """The ``FILE_FIELDS`` a ``name@file`` entry takes from its spec file (a study's
    ``best/trial<N>.spec.json``, or any spec .json/.yaml), as sorted (field, value) pairs; () for
    other entries.  Raises ``CompareError`` naming the entry."""
    name, _, file = decoder_parts(entry)
    if not file:
        return ()
    if not Path(file).expanduser().is_file():
        raise CompareError(f"decoders={entry!r}: {file} is not a file; expected a spec .json/.yaml such as a "
                           f"study's best/trial<N>.spec.json")
    try:
        kind, spec = read_arch(file)
    except DLASearchError as e:
        raise CompareError(f"decoders={entry!r}: {e}") from None
    if kind != "spec":
        raise CompareError(f"decoders={entry!r}: {file} is {'a zoo name' if kind == 'zoo' else 'an IR'}; "
                           f"expected a spec file (a study's best/trial<N>.spec.json)")
    if spec.get("decoder", name) != name:
        raise CompareError(f"decoders={entry!r}: {file} has decoder {spec['decoder']!r}, not {name!r}; "
                           f"write {spec['decoder']}@{file}")
    fields = {k: spec[k] for k in FILE_FIELDS if spec.get(k) is not None}
    if not fields:
        raise CompareError(f"decoders={entry!r}: {file} sets none of {', '.join(FILE_FIELDS)}, so the row "
                           f"would be plain {name}; name it {name}")
    return tuple(sorted((k, tuple(map(tuple, v)) if k == "cells" else v) for k, v in fields.items()))


def make_spec(pattern: str, widths, blocks, in_channels: int, num_classes: int, decoder: str | None = None) -> dict:
    """The comparison backbone with ``pattern`` and per-stage ``widths`` (conv stages first); with a
    ``decoder``, a ``task: segment`` network whose decoder keeps its own default width (the multiplier
    scales the encoder, and through it ida_up's stage widths).  ``decoder`` may name a merge mode,
    ``ida_up.sum`` (``decoders.DECODER_MODES``), or a spec file whose structure it takes,
    ``nasfpn@best.spec.json`` (``decoder_fields``)."""
    nconv = len(CONV_STAGES)
    spec = {"pattern": pattern, "in_channels": in_channels, "num_classes": num_classes, "stem": dict(STEM),
            "conv_stages": [{"convs": 1, "channels": w, "stride": s}
                            for w, (_, s) in zip(widths[:nconv], CONV_STAGES)],
            "stages": [{"blocks": b, "channels": w, "stride": 2} for b, w in zip(blocks, widths[nconv:])]}
    if decoder is not None:  # "ida_up.sum": ida_up whose aggregation nodes merge by sum (decoder_mode)
        name, mode, _ = decoder_parts(decoder)
        spec.update(task="segment", decoder=name, **({"decoder_mode": mode} if mode else {}),
                    **{k: [list(c) for c in v] if k == "cells" else v for k, v in decoder_fields(decoder)})
    return spec


@dataclass
class Sized:
    """One pattern at the width that meets the budget."""

    pattern: str
    spec: dict
    widths: tuple
    multiplier: float
    divisor: int
    params: int
    decoder: str | None = None  # dense comparisons: the decoder on top of ``pattern``


class _Counter:
    """Parameter counts per widths tuple, each compiled once on the meta device."""

    def __init__(self, pattern, blocks, in_channels, num_classes, decoder=None):
        self.args = (pattern, blocks, in_channels, num_classes, decoder)
        self.cache: dict = {}

    def spec(self, widths) -> dict:
        pattern, blocks, c, k, decoder = self.args
        return make_spec(pattern, widths, blocks, c, k, decoder)

    def __call__(self, widths) -> int:
        if widths not in self.cache:
            import torch

            with torch.device("meta"):  # shapes only: a huge candidate allocates nothing
                self.cache[widths] = params(to_module(build(self.spec(widths))))
        return self.cache[widths]


def _candidates(divisor: int, top: float) -> list[tuple[float, tuple]]:
    """(multiplier, widths) for every distinct width setting with multiplier in (0, top], in order.

    Widths change only where some ``c * m / divisor`` crosses k + 1/2; one
    multiplier between consecutive crossings stands for its whole interval.
    """
    cuts = sorted({divisor * (k + 0.5) / c for c in BASE_WIDTHS
                   for k in range(int(c * top / divisor) + 1) if divisor * (k + 0.5) / c < top})
    edges = [0.0, *cuts, top]
    out, seen = [], set()
    for lo, hi in zip(edges, edges[1:]):
        m = (lo + hi) / 2 if hi > lo else hi
        w = widths_at(m, divisor)
        if w not in seen:
            seen.add(w)
            out.append((m, w))
    return out


def size(pattern: str, budget: float, tolerance: float = 0.05, blocks=DEFAULT_BLOCKS, in_channels: int = 3,
         num_classes: int = 10, decoder: str | None = None) -> Sized:
    """Find the multiplier that puts ``pattern`` within ``tolerance`` of ``budget`` parameters.

    Parameters grow monotonically with the multiplier, so a bisection over the
    distinct width settings finds the two that bracket the budget; the closer
    one wins.  Widths are multiples of 8 when that lands within tolerance; one
    8-channel step of the widest stage changes params by about 16/width, which
    small budgets cannot absorb, so multiples of 4, 2 and 1 are tried next.
    Raises ``CompareError`` when no width fits.  ``decoder``: size the dense network of ``pattern`` with it.
    """
    count = _Counter(pattern, tuple(blocks), in_channels, num_classes, decoder)
    name = pattern if decoder is None else f"{pattern}+{decoder_label(decoder)}"
    hi_limit = budget * (1 + tolerance)
    try:
        narrowest = count(widths_at(0.0, 1))
    except IRError as e:  # a spec file's cells that this encoder's levels cannot take
        raise CompareError(f"decoders={decoder!r} on {pattern}: {e}") from None
    if narrowest > hi_limit:
        raise CompareError(
            f"budget.params={budget:,.0f} is too small for pattern {name!r}: even its narrowest form "
            f"(every stage {MIN_WIDTH} channels, fixed {STEM['channels']}-channel stem) has {narrowest:,} "
            f"params; use budget.params >= {math.ceil(narrowest / (1 + tolerance)):,}")
    top = 1.0
    while count(widths_at(top, 1)) <= hi_limit:
        if top >= MAX_MULTIPLIER:
            raise CompareError(f"budget.params={budget:,.0f} is too large: pattern {name!r} has only "
                               f"{count(widths_at(top, 1)):,} params at width multiplier {top:g}")
        top *= 2
    nearest: list[int] = []
    for divisor in DIVISORS:
        cands = _candidates(divisor, 1.5 * top)
        lo, hi = -1, len(cands)  # invariant: params(cands[lo]) <= budget < params(cands[hi])
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if count(cands[mid][1]) <= budget:
                lo = mid
            else:
                hi = mid
        err, m, w = min((abs(count(cands[i][1]) - budget) / budget, *cands[i]) for i in (lo, hi)
                        if 0 <= i < len(cands))
        if err <= tolerance:
            return Sized(pattern, count.spec(w), w, m, divisor, count(w), decoder)
        nearest = [count(cands[i][1]) for i in (lo, hi) if 0 <= i < len(cands)]
    near = " and ".join(f"{p:,}" for p in nearest) or "none"
    raise CompareError(f"pattern {name!r} cannot be sized to budget.params={budget:,.0f} ±{tolerance:.0%}: "
                       f"the nearest widths give {near} params; change budget.params or budget.tolerance")
