"""Passes over the IR, each a plain function doing one thing: validate, shapes, fingerprint."""
from __future__ import annotations

import hashlib
import json
import re

import networkx as nx

from dlasearch.errors import IRError, did_you_mean
from dlasearch.ir import resolution
from dlasearch.ir.graph import COMMON_ATTRS, IR, module_paths, roles
from dlasearch.ir.kinds import KINDS

__all__ = ["validate", "symbolic_shapes", "infer_shapes", "fingerprint"]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def _check_attrs(ir: IR, n) -> None:
    d = ir.nodes[n]
    kind = d.get("kind")
    if kind not in KINDS:
        raise IRError(f"node {n!r}: unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    spec = KINDS[kind]
    for k in d:
        if k not in spec.attrs and k not in COMMON_ATTRS:
            raise IRError(f"node {n!r} ({kind}): unknown attribute {k!r}; allowed: "
                          f"{', '.join(list(spec.attrs) + ['modules'])}")
    for k, a in spec.attrs.items():
        if k not in d:
            if a.required:
                raise IRError(f"node {n!r} ({kind}): missing attribute {k!r} ({a.allowed})")
            d[k] = a.default
            continue
        v = d[k]
        types = a.type if isinstance(a.type, tuple) else (a.type,)
        if (isinstance(v, bool) and bool not in types) or not isinstance(v, types) or \
                (a.check is not None and not a.check(v)):
            hint = did_you_mean(v, a.choices) if a.choices and isinstance(v, str) else ""
            raise IRError(f"node {n!r} ({kind}): attribute {k}={v!r} is invalid{hint}; expected {a.allowed}")
    mods = d.get("modules")
    if mods is not None:
        rs = roles(ir, n)
        if not isinstance(mods, dict) or not set(mods) <= set(rs):
            raise IRError(f"node {n!r}: attribute modules={mods!r} must map roles {list(rs)} to names")
        for r, p in mods.items():
            if not isinstance(p, str) or not _NAME_RE.match(p):
                raise IRError(f"node {n!r}: modules[{r!r}]={p!r} is not a dotted Python name")


def _check_arity(ir: IR, n) -> None:
    d = ir.nodes[n]
    lo, hi = KINDS[d["kind"]].arity
    poss = sorted(p for _, _, p in ir.in_edges(n, data="pos"))
    if any(not isinstance(p, int) for p in poss) or poss != list(range(len(poss))):
        raise IRError(f"node {n!r}: input positions {poss} must be 0..{len(poss) - 1} with no gaps")
    k = len(poss)
    if k < lo or (hi is not None and k > hi):
        want = f"exactly {lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
        raise IRError(f"node {n!r} ({d['kind']}): has {k} inputs, expected {want}")


def symbolic_shapes(ir: IR) -> dict:
    """(channels, symbolic resolution) of every node, by each kind's shape rule; raises IRError."""
    info: dict = {}
    for n in ir.order():
        names = ir.inputs(n)
        d = ir.nodes[n]
        info[n] = KINDS[d["kind"]].shape(n, d, [info[u] for u in names], names)
    return info


def _check_structure(ir: IR) -> None:
    inputs, outputs = ir.of_kind("input"), ir.of_kind("output")
    if len(inputs) != 1:
        raise IRError(f"the graph needs exactly one input node, found {len(inputs)}: {inputs}")
    if not outputs:
        raise IRError("the graph has no output node; add one with kind='output'")
    idx = [ir.nodes[o]["index"] for o in outputs]
    if sorted(idx) != list(range(len(outputs))):
        raise IRError(f"output indices {sorted(idx)} must be 0..{len(outputs) - 1}")
    for o in outputs:
        if ir.out_degree(o):
            raise IRError(f"node {o!r} (output): outputs cannot feed other nodes")
    live = set(outputs)
    for o in outputs:
        live |= nx.ancestors(ir, o)
    dead = [n for n in ir.order() if n not in live]
    if dead:
        raise IRError(f"node {dead[0]!r}: does not reach any output (dead nodes: {dead})")
    reached = nx.descendants(ir, inputs[0])
    unreached = [n for n in ir.order() if n != inputs[0] and n not in reached]
    if unreached:
        raise IRError(f"node {unreached[0]!r}: is not reachable from the input {inputs[0]!r}")


def _check_module_names(ir: IR) -> None:
    seen: dict[str, str] = {}
    for n in ir.order():
        for p in module_paths(ir, n).values():
            if p in seen:
                raise IRError(f"node {n!r}: module name {p!r} is already used by node {seen[p]!r}")
            seen[p] = n
    for p, n in seen.items():
        parts = p.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[:i]) in seen:
                raise IRError(f"node {n!r}: module name {p!r} nests inside module "
                              f"{'.'.join(parts[:i])!r} of node {seen['.'.join(parts[:i])]!r}")


def validate(ir: IR) -> IR:
    """Check ``ir`` is a well-formed network; return it (as an ``IR``), or raise ``IRError``."""
    if not isinstance(ir, nx.DiGraph):
        raise IRError(f"expected an IR (networkx.DiGraph), got {type(ir).__name__}")
    if not isinstance(ir, IR):
        ir = IR(ir)
    if ir.number_of_nodes() == 0:
        raise IRError("the graph is empty; it needs an input node and an output node")
    if not nx.is_directed_acyclic_graph(ir):
        cyc = nx.find_cycle(ir)
        raise IRError(f"the graph has a cycle: {' -> '.join(str(u) for u, _ in cyc)} -> {cyc[0][0]}")
    for n in ir.nodes:
        _check_attrs(ir, n)
        _check_arity(ir, n)
    _check_structure(ir)
    _check_module_names(ir)
    symbolic_shapes(ir)
    return ir


def infer_shapes(ir: IR, size) -> dict:
    """Shape ``(C, H, W)`` (or ``(C,)`` after a pooled head) of every node for an input of ``size``.

    ``size`` is an int or ``(H, W)``; raises ``IRError`` for an invalid IR or size.
    """
    if isinstance(size, int):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in size) or min(size) < 1):
        raise IRError(f"input size {size!r} is not supported; expected a positive int or (H, W) of "
                      f"positive ints")
    out = {}
    for n, (c, r) in symbolic_shapes(validate(ir)).items():
        out[n] = (c,) if r == resolution.POOLED else (c, resolution.size(r, size[0]), resolution.size(r, size[1]))
    return out


def _label(ir: IR, n) -> str:
    d = ir.nodes[n]
    return json.dumps(KINDS[d["kind"]].label(d), sort_keys=True)


def fingerprint(ir: IR) -> str:
    """A 16-hex-digit hash of the architecture, independent of node names and insertion order.

    Each node gets a Merkle hash of its kind, attributes and ordered inputs; the
    fingerprint hashes the multiset of node hashes and of (source, target,
    position) edge triples, so sharing (one node used twice vs two copies)
    changes it too.  Module names are not part of the architecture.
    """
    validate(ir)
    h: dict = {}
    for n in ir.order():
        ins = [h[u] for u in ir.inputs(n)]
        h[n] = hashlib.sha256((_label(ir, n) + "|" + ",".join(ins)).encode()).hexdigest()
    edges = sorted(f"{h[u]}>{h[v]}@{p}" for u, v, p in ir.edges(data="pos"))
    payload = "\n".join(sorted(h.values())) + "\n#\n" + "\n".join(edges)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
