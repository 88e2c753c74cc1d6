"""Checks a search makes before its first trial, from the IR alone (no torch module is built).

``count_params`` follows the compiler's layer shapes, so an architecture far over
``budget.params`` is rejected without allocating it (``levels=16 budget.params=1`` must not run out
of memory); ``check_space`` rejects a space whose fixed backbone is invalid or whose smallest
architecture is already over the parameter budget.
"""
from __future__ import annotations

import itertools

from dlasearch.errors import DLASearchError, PrecheckError
from dlasearch.ir import IR, IRError

__all__ = ['count_params', 'check_space']

MAX_COMBOS = 256  # categorical choices tried when looking for the smallest architecture


def _conv_bn(cin: int, cout: int, k: int, groups: int = 1) -> int:
    return cin // groups * cout * k * k + 2 * cout


def count_params(ir: IR) -> int:
    """Trainable parameters of ``compile(ir)``, computed from the IR's channel counts."""
    ch, total = {}, 0
    for n in ir.order():
        d = ir.nodes[n]
        kind = d["kind"]
        cin = [ch[u] for u in ir.inputs(n)]
        if kind == "input":
            ch[n] = d["channels"]
        elif kind == "conv":
            total += _conv_bn(cin[0], d["out"], d["kernel"])
            ch[n] = d["out"]
        elif kind == "block":
            out = d["out"]
            if d["type"] == "basic":
                total += _conv_bn(cin[0], out, 3) + _conv_bn(out, out, 3)
            else:
                card = d["cardinality"] if d["type"] == "bottleneckx" else 1
                inner = out * d["cardinality"] // 32 if d["type"] == "bottleneckx" else out // 2
                total += _conv_bn(cin[0], inner, 1) + _conv_bn(inner, inner, 3, card) + _conv_bn(inner, out, 1)
            ch[n] = out
        elif kind == "aggregate":
            total += _conv_bn(sum(cin), d["out"], d["kernel"])
            ch[n] = d["out"]
        elif kind == "project":
            total += _conv_bn(cin[0], d["out"], 1)
            ch[n] = d["out"]
        elif kind == "upsample":
            f = d["factor"]
            total += cin[0] * (2 * f) ** 2 if d["learnable"] else 0
            ch[n] = cin[0]
        elif kind == "head":
            total += cin[0] * d["classes"] + d["classes"]
            ch[n] = d["classes"]
        else:  # downsample, output
            ch[n] = cin[0]
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
    """Categorical parameters whose choices are not ordered sizes (pattern, block type, flags)."""
    return {n: p["choices"] for n, p in space["params"].items()
            if "choices" in p and not all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                          for c in p["choices"])}


def check_space(space: dict, channels: int, num_classes: int) -> None:
    """Raise ``PrecheckError`` when no architecture of the space can be built or fit ``budget.params``."""
    from dlasearch.patterns import build
    from dlasearch.search import space as spacemod

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
