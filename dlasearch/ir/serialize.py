"""Lossless JSON for the IR (run folders, studies and exports store architectures this way)."""
from __future__ import annotations

import json

from dlasearch.errors import IRError
from dlasearch.ir.graph import IR
from dlasearch.ir.kinds import KINDS
from dlasearch.ir.passes import validate

__all__ = ["FORMAT", "to_json", "from_json"]

FORMAT = "dlasearch-ir/1"


def to_json(ir: IR, indent: int | None = None) -> str:
    """The IR as JSON text: nodes in insertion order with attributes, edges with positions."""
    # attributes added later are written only where they differ from their default, so the JSON of a
    # network that does not use them is what it always was
    nodes = [{"name": n, **(KINDS[d["kind"]].explicit(d) if d.get("kind") in KINDS else d)}
             for n, d in ir.nodes(data=True)]
    edges = [[u, v, d["pos"]] for u, v, d in ir.edges(data=True)]
    return json.dumps({"format": FORMAT, "graph": dict(ir.graph), "nodes": nodes, "edges": edges},
                      indent=indent)


def from_json(text: str) -> IR:
    """Inverse of ``to_json``; returns the validated IR or raises ``IRError``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise IRError(f"IR JSON is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IRError(f"IR JSON must be an object with format={FORMAT!r}")
    ir = IR()
    ir.graph.update(data.get("graph", {}))
    for nd in data.get("nodes", []):
        nd = dict(nd)
        if "name" not in nd or "kind" not in nd:
            raise IRError(f"IR JSON node {nd!r} needs 'name' and 'kind'")
        ir.add_node(nd.pop("name"), **nd)
    for e in data.get("edges", []):
        if not (isinstance(e, list) and len(e) == 3):
            raise IRError(f"IR JSON edge {e!r} must be [source, target, position]")
        u, v, p = e
        for x in (u, v):
            if x not in ir:
                raise IRError(f"IR JSON edge {e!r} names node {x!r}, which does not exist")
        ir.add_edge(u, v, pos=p)
    return validate(ir)
