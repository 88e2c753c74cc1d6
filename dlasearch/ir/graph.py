"""The IR: a ``networkx.DiGraph`` of typed operation nodes.

Each node carries ``kind`` plus the attributes that kind declares (``kinds.KINDS``); each edge
carries ``pos``, the position of the source among the target's inputs.  Position matters: an
aggregation concatenates its inputs in that order, which fixes the layout of its convolution
weights and so whether a checkpoint loads.

Parameters of a node live in torch modules whose qualified names default to ``<node>.<role>``
(``<node>`` for single-module kinds); a node's optional ``modules`` attribute maps roles to other
names so that a graph can reproduce an existing checkpoint layout (the zoo uses this).
"""
from __future__ import annotations

import networkx as nx

from dlasearch.errors import IRError
from dlasearch.ir.kinds import KINDS

__all__ = ["IR", "COMMON_ATTRS", "roles", "module_paths"]

COMMON_ATTRS = {"kind", "modules"}  # attributes every node may carry besides its kind's


def roles(ir: "IR", node) -> tuple[str, ...]:
    """The parameter-holding roles of ``node`` (block roles depend on its type)."""
    d = ir.nodes[node]
    return KINDS[d["kind"]].node_roles(d)


def module_paths(ir: "IR", node) -> dict[str, str]:
    """Role -> qualified torch module name for ``node``."""
    rs = roles(ir, node)
    given = ir.nodes[node].get("modules") or {}
    if len(rs) == 1:
        return {rs[0]: given.get(rs[0], str(node))}
    return {r: given.get(r, f"{node}.{r}") for r in rs}


class IR(nx.DiGraph):
    """A DiGraph with a convenience constructor for typed operation nodes."""

    def add(self, name: str, kind: str, inputs=(), **attrs) -> str:
        """Add node ``name`` of ``kind`` fed by ``inputs`` (in position order); return ``name``."""
        if name in self:
            raise IRError(f"node {name!r}: a node of that name already exists")
        if kind not in KINDS:
            raise IRError(f"node {name!r}: unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
        spec = KINDS[kind].attrs
        full = {k: attrs.get(k, a.default) for k, a in spec.items() if k in attrs or not a.required}
        full.update((k, v) for k, v in attrs.items() if k not in spec)
        self.add_node(name, kind=kind, **full)
        for pos, src in enumerate(inputs):
            if src not in self:
                raise IRError(f"node {name!r}: input {pos} is {src!r}, which is not a node")
            self.add_edge(src, name, pos=pos)
        return name

    def inputs(self, node) -> list:
        """Predecessors of ``node`` ordered by edge position."""
        return [u for u, _ in sorted(((u, d["pos"]) for u, _, d in self.in_edges(node, data=True)),
                                     key=lambda t: t[1])]

    def order(self) -> list:
        """A deterministic topological order (ties broken by insertion order)."""
        rank = {n: i for i, n in enumerate(self.nodes)}
        return list(nx.lexicographical_topological_sort(self, key=rank.__getitem__))

    def of_kind(self, kind: str) -> list:
        """The nodes of ``kind``, in insertion order."""
        return [n for n, k in self.nodes(data="kind") if k == kind]

    def __str__(self):
        lines = []
        for n in self.order():
            d = self.nodes[n]
            shown = KINDS[d["kind"]].explicit(d) if d.get("kind") in KINDS else d  # defaults of later attrs hidden
            attrs = ", ".join(f"{k}={v!r}" for k, v in shown.items() if k not in COMMON_ATTRS)
            ins = ", ".join(map(str, self.inputs(n)))
            lines.append(f"{n} = {d['kind']}({ins}{'; ' if ins and attrs else ''}{attrs})")
        return "\n".join(lines)
