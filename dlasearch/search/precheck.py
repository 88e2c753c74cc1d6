"""Checks a search makes before its first trial, from the IR alone (no torch module is built).

``count_params`` follows the compiler's layer shapes, so an architecture far over
``budget.params`` is rejected without allocating it (``levels=16 budget.params=1`` must not run out
of memory); ``check_space`` rejects a space whose fixed backbone is invalid or whose smallest
architecture is already over the parameter budget.
"""
from __future__ import annotations

import itertools

from dlasearch.errors import DLASearchError, PrecheckError
from dlasearch.ir import IR, KINDS, IRError
from dlasearch.patterns import build
from dlasearch.search import space as spacemod

__all__ = ['count_params', 'check_space']

MAX_COMBOS = 256  # categorical choices tried when looking for the smallest architecture


def count_params(ir: IR) -> int:
    """Trainable parameters of ``compile(ir)``, computed from the IR's channel counts by each kind's own
    rule (``Kind.params``), so a new kind or fusion mode is counted where it is defined."""
    ch, total = {}, 0
    for n in ir.order():
        d = ir.nodes[n]
        cin = [ch[u] for u in ir.inputs(n)]
        total += KINDS[d["kind"]].params(d, cin)
        ch[n] = (d["channels"] if d["kind"] == "input" else d["classes"] if d["kind"] == "head" else
                 d.get("out", cin[0] if cin else 0))
    return total


class _Smallest:
    """A stand-in for an Optuna trial: the low end of every range, fixed picks for other choices."""

    def __init__(self, picks: dict):
        self.picks = picks

    def suggest_categorical(self, name, choices):
        if name in self.picks:
            return self.picks[name]
        return min(choices)

    def suggest_int(self, name, low, high, step=1, log=False):
        return low

    def suggest_float(self, name, low, high, step=None, log=False):
        return low


def _symbolic_choices(space: dict) -> dict:
    """Categorical parameters whose choices are not ordered sizes (pattern, block type, flags); not the per-stage
    ``mode``: every mode builds, and a trial asks for it per stage (``stage0.mode``), not by its own name."""
    return {n: p["choices"] for n, p in space["params"].items()
            if "choices" in p and n not in spacemod.PER_STAGE and not all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                          for c in p["choices"])}


def check_space(space: dict, channels: int, num_classes: int) -> None:
    """Raise ``PrecheckError`` when no architecture of the space can be built or fit ``budget.params``."""
    symbolic = _symbolic_choices(space)
    combos = list(itertools.islice(itertools.product(*symbolic.values()), MAX_COMBOS + 1))
    if len(combos) > MAX_COMBOS:
        return  # too many to try cheaply; trials report their own problems
    budget = space["budget"].get("params")
    smallest, errors = None, []
    for combo in combos:
        spec = spacemod.sample(space, _Smallest(dict(zip(symbolic, combo))))
        spec.update(in_channels=channels, num_classes=num_classes)
        try:
            n = count_params(build(spec, name="precheck"))
        except (IRError, DLASearchError) as e:
            errors.append(str(e))
            continue
        smallest = n if smallest is None else min(smallest, n)
    if smallest is None:
        raise PrecheckError(f"no architecture of this space can be built (backbone or params): {errors[0]}")
    if budget is not None and smallest > budget:
        raise PrecheckError(f"budget.params={budget:g}: the smallest architecture of this space has "
                            f"{smallest:,} parameters; raise budget.params or narrow the space "
                            f"(smaller width, fewer levels or stages)")
