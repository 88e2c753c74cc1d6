"""Which way to lay out a diagram: the direction whose drawing is closer to square.

Why a layout, not a rule of thumb: whether a network is "deep" or "wide" on paper
depends on how dot stacks its branches, so the honest measure is dot's own layout
(``-Tplain`` gives its size), tried both ways.  dla34 left to right is a 4537x288
strip, top to bottom 601x2896.
"""
from __future__ import annotations

import shutil

import graphviz

from dlasearch.ir import IR

__all__ = ['aspect', 'pick_direction']


def aspect(g: graphviz.Digraph) -> float | None:
    """Width over height of ``g`` as dot lays it out (None without a working ``dot``)."""
    if shutil.which("dot") is None:
        return None
    try:
        head = g.pipe(format="plain").split(b"\n", 1)[0].split()  # graph <scale> <width> <height>
        return float(head[2]) / float(head[3])
    except (graphviz.ExecutableNotFound, graphviz.CalledProcessError, IndexError, ValueError, ZeroDivisionError):
        return None


def pick_direction(make, ir: IR) -> graphviz.Digraph:
    """``make(direction)`` in the direction whose layout is closer to square; TB on a tie or without dot."""
    import math

    import networkx as nx

    graphs = {d: make(d) for d in ("TB", "LR")}
    ratios = {d: aspect(g) for d, g in graphs.items()}
    if None in ratios.values():
        return graphs["TB" if nx.dag_longest_path_length(ir) > 12 else "LR"]
    return graphs["LR" if abs(math.log(ratios["LR"])) < abs(math.log(ratios["TB"])) else "TB"]
