"""Aggregation modes: how an ``aggregate`` node merges its inputs before its conv unit.

DLA concatenates; FPN and FCN sum; BiFPN sums with learned non-negative weights; NAS-FPN gates one
input by the global max of the other.  Each mode is one class owning its shape rule (``channels``),
lowering, parameter count and diagram look, so a new mode is one subclass added to ``FUSIONS``;
``kinds.Aggregate`` adds the conv unit every mode shares.
"""
from __future__ import annotations

import operator

import torch

from dlasearch.errors import IRError

__all__ = ["Fusion", "FUSIONS", "WSUM_EPS"]

WSUM_EPS = 1e-4  # BiFPN's fast normalised fusion: keeps the division finite when every weight is 0


class Fusion:
    """One aggregation ``mode`` (``name``); ``style`` is drawn over the aggregate node's."""
    name = ""
    style: dict = {}
    roles: tuple[str, ...] = ()  # parameters of the merge itself (lowered as parameters, not modules)

    def channels(self, n, chs: list[int], names: list) -> int:
        """Channels of the merged map; raises IRError when the inputs cannot be merged this way."""
        raise NotImplementedError(self.name)

    def lower(self, lo, paths: dict, ins: list, final: bool):
        raise NotImplementedError(self.name)

    def params(self, chs: list[int]) -> int:
        return 0


class Concat(Fusion):
    """DLA's aggregation: channel concatenation (input order fixes the conv's weight layout)."""
    name = "concat"

    def channels(self, n, chs, names):
        return sum(chs)

    def lower(self, lo, paths, ins, final):
        return lo.fn(torch.cat, (ins, 1), final=final)


class Sum(Fusion):
    """Element-wise sum (FPN's top-down merge, FCN's score sums): inputs need equal channels."""
    name = "sum"
    style = {"fillcolor": "#c7e9c0"}

    def channels(self, n, chs, names):
        if len(set(chs)) > 1:
            got = ", ".join(f"{u!r}: {c}" for u, c in zip(names, chs))
            raise IRError(f"node {n!r} (aggregate): mode={self.name} needs inputs of equal channels, got {got} "
                          f"(project them first, or use mode=concat)")
        return chs[0]

    def lower(self, lo, paths, ins, final):
        y = ins[0]
        for i, x in enumerate(ins[1:], 2):
            y = lo.fn(torch.add, (y, x), final=final and i == len(ins))
        return y


class WSum(Sum):
    """BiFPN's fast normalised fusion: sum of w_i * x_i / (eps + sum_j w_j), w = ReLU(w'), w' initially 1."""
    name = "wsum"
    style = {"fillcolor": "#74c476"}
    roles = ("fuse",)

    def lower(self, lo, paths, ins, final):
        w = lo.fn(torch.relu, (lo.param(paths["fuse"], torch.ones(len(ins))),))
        w = lo.fn(torch.div, (w, lo.fn(operator.add, (lo.fn(torch.sum, (w,)), WSUM_EPS))))
        terms = [lo.fn(torch.mul, (x, lo.fn(operator.getitem, (w, i)))) for i, x in enumerate(ins)]
        return super().lower(lo, paths, terms, final)

    def params(self, chs):
        return len(chs)


class GlobalPoolAttention(Sum):
    """NAS-FPN's global-pooling merge of exactly two inputs: ``a + b * sigmoid(max_HW a)``.

    As the NAS-FPN reference code (``global_attention(feat0, feat1)``): input 0 ``a`` is the
    semantically stronger map (the one that came from the coarser level) whose global max gates
    input 1 ``b`` (the finer one) channel by channel, and is added back unchanged.
    """
    name = "gpa"
    style = {"fillcolor": "#41ab5d"}

    def channels(self, n, chs, names):
        if len(chs) != 2:
            raise IRError(f"node {n!r} (aggregate): mode=gpa merges exactly 2 inputs (0 gates 1), got {len(chs)}")
        return super().channels(n, chs, names)

    def lower(self, lo, paths, ins, final):
        a, b = ins
        gate = lo.fn(torch.sigmoid, (lo.fn(torch.amax, (a, (2, 3)), {"keepdim": True}),))
        return lo.fn(torch.add, (a, lo.fn(torch.mul, (b, gate))), final=final)


FUSIONS: dict[str, Fusion] = {f.name: f for f in (Concat(), Sum(), WSum(), GlobalPoolAttention())}
