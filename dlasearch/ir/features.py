"""An IR pass that cuts the head off a network and returns its stage outputs (timm's ``features_only``).

Detection and segmentation users want the feature maps of each resolution, not
logits.  The backbone is the deepest feature map and everything upstream of it, without
heads and without a segmentation model's decoder (what follows an upsampling, the
projections that only feed it, and every node named ``decoder.*``).  At each resolution coarser
than the input, the stage output is the node with the most nodes of that
resolution upstream of it: the last block of a chain, the root aggregation of a
tree.  Module names are kept, so the full model's weights load into the cut one.
"""
from __future__ import annotations

import networkx as nx

from dlasearch import ir as irmod

__all__ = ['stage_outputs', 'features']

PROBE = 1024  # a power of two: ceil-mode pooling divides it exactly, so sides give exact strides


def stage_outputs(graph: irmod.IR) -> list[tuple[str, int, int]]:
    """``[(node, channels, reduction), ...]`` from the finest to the coarsest stage."""
    graph = irmod.validate(graph)
    decoder = set()
    for n in graph.of_kind("upsample"):
        decoder |= {n} | nx.descendants(graph, n)
    decoder |= {n for n in graph if graph.nodes[n]["kind"] in ("project", "conv") and n not in decoder
                and set(graph.successors(n)) and set(graph.successors(n)) <= decoder}  # its projections
    # a neck also carries maps to coarser levels (HRNet's strided convs, NAS-FPN cells fed by max-pools), which
    # no upsampling precedes: the decoders' namespace marks them (as render clusters them)
    decoder |= {n for n in graph if str(n).startswith("decoder.")}
    cut = {n for n in graph if graph.nodes[n]["kind"] in ("head", "output", "input")} | decoder
    shapes = irmod.infer_shapes(graph, PROBE)
    spatial = [n for n in graph.order() if n not in cut and len(shapes[n]) == 3]
    if not spatial:
        return []
    deepest = max(spatial, key=lambda n: (PROBE // shapes[n][1], len(nx.ancestors(graph, n))))
    body = nx.ancestors(graph, deepest) | {deepest}
    by_stride: dict[int, list] = {}
    for n in spatial:
        if n in body:
            by_stride.setdefault(PROBE // shapes[n][1], []).append(n)
    out = []
    for stride in sorted(s for s in by_stride if s > 1):
        nodes = by_stride[stride]
        same = set(nodes)
        rank = {n: i for i, n in enumerate(nodes)}
        best = max(nodes, key=lambda n: (len(nx.ancestors(graph, n) & same), rank[n]))
        out.append((best, shapes[best][0], stride))
    return out


def features(graph: irmod.IR) -> irmod.IR:
    """A copy of ``graph`` whose outputs are its stage outputs (index 0 = finest), without heads."""
    stages = stage_outputs(graph)
    if not stages:
        raise irmod.IRError("features_only: the network never downsamples, so it has no stages to return")
    keep = set()
    for n, _, _ in stages:
        keep |= {n} | nx.ancestors(graph, n)
    cut = irmod.IR(graph.subgraph([n for n in graph.nodes if n in keep]).copy())
    cut.graph.update(graph.graph, name=f"{graph.graph.get('name') or 'net'}_features")
    cut.graph["feature_info"] = [{"node": n, "num_chs": c, "reduction": r} for n, c, r in stages]
    for i, (n, _, _) in enumerate(stages):
        name = f"features{i}"
        while name in cut:
            name = "_" + name
        cut.add(name, "output", [n], index=i)
    return irmod.validate(cut)
