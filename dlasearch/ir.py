"""The graph IR: a networkx DAG of typed operations, and the passes over it.

An ``IR`` *is* a ``networkx.DiGraph``.  Each node carries ``kind`` plus the
attributes that kind declares (see ``KINDS``); each edge carries ``pos``, the
position of the source among the target's inputs.  Position matters: an
aggregation concatenates its inputs in that order, which fixes the layout of
its convolution weights and so whether a checkpoint loads.

Passes are plain functions, each doing one thing: ``validate``,
``infer_shapes``, ``to_json`` / ``from_json`` and ``fingerprint``.

Parameters of a node live in torch modules whose qualified names default to
``<node>.<role>`` (``<node>`` for single-module kinds); a node's optional
``modules`` attribute maps roles to other names so that a graph can reproduce
an existing checkpoint layout (the zoo uses this to match the original DLA).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import networkx as nx

from dlasearch.errors import DLASearchError


class IRError(DLASearchError):
    """An invalid IR or spec. The message names the node/field and what is allowed."""


@dataclass(frozen=True)
class Attr:
    type: type | tuple
    default: Any = None
    required: bool = False
    check: Callable[[Any], bool] | None = None
    allowed: str = ""


def _pos(v):
    return v >= 1


def _odd(v):
    return v >= 1 and v % 2 == 1


BLOCK_TYPES = ("basic", "bottleneck", "bottleneckx")


@dataclass(frozen=True)
class Kind:
    doc: str
    arity: tuple[int, int | None]
    attrs: dict[str, Attr] = field(default_factory=dict)
    roles: tuple[str, ...] = ()


KINDS: dict[str, Kind] = {
    "input": Kind("the image batch (N, channels, H, W)", (0, 0),
                  {"channels": Attr(int, 3, check=_pos, allowed="an int >= 1")}),
    "conv": Kind("k x k conv (no bias) + BatchNorm + ReLU, with stride", (1, 1),
                 {"out": Attr(int, required=True, check=_pos, allowed="an int >= 1"),
                  "kernel": Attr(int, 3, check=_odd, allowed="an odd int >= 1"),
                  "stride": Attr(int, 1, check=_pos, allowed="an int >= 1"),
                  "relu": Attr(bool, True, allowed="true or false")},
                 ("conv", "bn")),
    "block": Kind("residual block; input 0 is x, optional input 1 the residual (default x)", (1, 2),
                  {"type": Attr(str, "basic", check=lambda v: v in BLOCK_TYPES,
                                allowed=" | ".join(BLOCK_TYPES)),
                   "out": Attr(int, required=True, check=_pos, allowed="an int >= 1"),
                   "stride": Attr(int, 1, check=_pos, allowed="an int >= 1"),
                   "cardinality": Attr(int, 32, check=_pos, allowed="an int >= 1")},
                  ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")),
    "aggregate": Kind("concat inputs, k x k conv, BN, optional residual add of input `residual`, ReLU",
                      (2, None),
                      {"out": Attr(int, required=True, check=_pos, allowed="an int >= 1"),
                       "kernel": Attr(int, 1, check=_odd, allowed="an odd int >= 1"),
                       "residual": Attr((int, type(None)), None,
                                        allowed="null or an input position")},
                      ("conv", "bn")),
    "downsample": Kind("max-pool, kernel = stride = factor (ceil mode: any size works)", (1, 1),
                       {"factor": Attr(int, 2, check=lambda v: v >= 2, allowed="an int >= 2")}),
    "project": Kind("1x1 conv (no bias) + BatchNorm, no ReLU", (1, 1),
                    {"out": Attr(int, required=True, check=_pos, allowed="an int >= 1")},
                    ("conv", "bn")),
    "upsample": Kind("depthwise transposed conv initialised to bilinear, x factor; "
                     "optional input 1 is a size reference the result is cropped to", (1, 2),
                     {"factor": Attr(int, 2, check=lambda v: v >= 2 and v % 2 == 0,
                                     allowed="an even int >= 2"),
                      "learnable": Attr(bool, True, allowed="true or false")},
                     ("up",)),
    "head": Kind("classifier as a 1x1 conv with bias; pool=true adds global average pooling "
                 "and returns (N, classes), pool=false returns per-pixel logits", (1, 1),
                 {"classes": Attr(int, required=True, check=_pos, allowed="an int >= 1"),
                  "pool": Attr(bool, True, allowed="true or false")},
                 ("fc",)),
    "output": Kind("a graph output; `index` orders several outputs", (1, 1),
                   {"index": Attr(int, 0, check=lambda v: v >= 0, allowed="an int >= 0")}),
}

_COMMON = {"kind", "modules"}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def roles(ir: "IR", node) -> tuple[str, ...]:
    """The parameter-holding roles of ``node`` (block roles depend on its type)."""
    d = ir.nodes[node]
    if d["kind"] == "block":
        return KINDS["block"].roles[:4] if d["type"] == "basic" else KINDS["block"].roles
    return KINDS[d["kind"]].roles


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
        """Add node ``name`` of ``kind`` fed by ``inputs`` (in position order)."""
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
        return [n for n, k in self.nodes(data="kind") if k == kind]

    def __str__(self):
        lines = []
        for n in self.order():
            d = self.nodes[n]
            attrs = ", ".join(f"{k}={v!r}" for k, v in d.items() if k not in _COMMON)
            ins = ", ".join(map(str, self.inputs(n)))
            lines.append(f"{n} = {d['kind']}({ins}{'; ' if ins and attrs else ''}{attrs})")
        return "\n".join(lines)


# ---------------------------------------------------------------- validation

def _check_attrs(ir: IR, n) -> None:
    d = ir.nodes[n]
    kind = d.get("kind")
    if kind not in KINDS:
        raise IRError(f"node {n!r}: unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    spec = KINDS[kind]
    for k in d:
        if k not in spec.attrs and k not in _COMMON:
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
            raise IRError(f"node {n!r} ({kind}): attribute {k}={v!r} is invalid; expected {a.allowed}")
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


def _norm_res(ops: tuple) -> tuple:
    """Canonical form of a resolution written as ops on the input size.

    ('d', s) is ceil(size / s) (strided conv, ceil-mode pool); ('u', f) is size * f.
    ceil(ceil(n/a)/b) = ceil(n/ab), and an upsample followed by a downsample of
    a multiple/divisor of its factor reduces exactly.
    """
    out: list = []
    for op in ops:
        out.append(op)
        while len(out) >= 2:
            (a, x), (b, y) = out[-2], out[-1]
            if a == b == "d":
                out[-2:] = [("d", x * y)]
            elif a == b == "u":
                out[-2:] = [("u", x * y)]
            elif a == "u" and b == "d" and y % x == 0:
                out[-2:] = [("d", y // x)] if y != x else []
            elif a == "u" and b == "d" and x % y == 0:
                out[-2:] = [("u", x // y)]
            else:
                break
        out = [o for o in out if o[1] != 1]
    return tuple(out)


def _res_text(r: tuple) -> str:
    s = "H"
    for op, v in r:
        s = f"ceil({s}/{v})" if op == "d" else f"{s}*{v}"
    return s


def _symbolic(ir: IR) -> dict:
    """Channels and symbolic resolution per node; raises IRError on mismatches."""
    info: dict = {}
    for n in ir.order():
        d = ir.nodes[n]
        kind = d["kind"]
        ins = [info[u] for u in ir.inputs(n)]
        names = ir.inputs(n)
        if kind == "input":
            info[n] = (d["channels"], ())
            continue
        c0, r0 = ins[0]
        if kind in ("conv", "block"):
            out = d["out"]
            if kind == "block" and d["type"] == "bottleneckx":
                inner = out * d["cardinality"] // 32
                if (out * d["cardinality"]) % 32 or inner < d["cardinality"] or inner % d["cardinality"]:
                    raise IRError(f"node {n!r} (block bottleneckx): cardinality={d['cardinality']} does not "
                                  f"divide the inner width out*cardinality/32 for out={out}; choose out a "
                                  f"multiple of 32 (or a cardinality that divides it)")
            if kind == "block" and d["type"] == "bottleneck" and out < 2:
                raise IRError(f"node {n!r} (block bottleneck): out={out} too small; expected >= 2")
            res = _norm_res(r0 + (("d", d["stride"]),))
            if kind == "block":
                rc, rr = ins[1] if len(ins) == 2 else ins[0]
                rname = names[1] if len(ins) == 2 else names[0]
                if rc != out or rr != res:
                    raise IRError(
                        f"node {n!r} (block): residual {rname!r} has {rc} channels at {_res_text(rr)}, "
                        f"expected {out} channels at {_res_text(res)} (add a downsample/project node "
                        f"and pass it as input 1)")
            info[n] = (out, res)
        elif kind == "aggregate":
            for (c, r), u in zip(ins, names):
                if r != r0:
                    raise IRError(f"node {n!r} (aggregate): input {u!r} is at resolution {_res_text(r)} but "
                                  f"input {names[0]!r} is at {_res_text(r0)}; inputs must match "
                                  f"(downsample or upsample first)")
            res_i = d["residual"]
            if res_i is not None:
                if not 0 <= res_i < len(ins):
                    raise IRError(f"node {n!r} (aggregate): residual={res_i} is not an input position "
                                  f"(0..{len(ins) - 1})")
                if ins[res_i][0] != d["out"]:
                    raise IRError(f"node {n!r} (aggregate): residual input {names[res_i]!r} has "
                                  f"{ins[res_i][0]} channels, expected out={d['out']}")
            info[n] = (d["out"], r0)
        elif kind == "downsample":
            info[n] = (c0, _norm_res(r0 + (("d", d["factor"]),)))
        elif kind == "project":
            info[n] = (d["out"], r0)
        elif kind == "upsample":
            res = _norm_res(r0 + (("u", d["factor"]),))
            if len(ins) == 2:
                ref = ins[1][1]
                # cropping is valid when the upsampled map is never smaller than the reference
                probe = [(s, s) for s in (1, 2, 3, 5, 7, 31, 32, 33, 63, 100, 224, 225)]
                if any(_size(res, s) < _size(ref, s) for s, _ in probe):
                    raise IRError(f"node {n!r} (upsample): upsampled size {_res_text(res)} can be smaller "
                                  f"than the size reference {names[1]!r} at {_res_text(ref)}")
                res = ref
            info[n] = (c0, res)
        elif kind == "head":
            info[n] = (d["classes"], ("pooled",) if d["pool"] else r0)
        elif kind == "output":
            info[n] = ins[0]
    return info


def _size(res: tuple, s: int) -> int:
    for op, v in res:
        s = -(-s // v) if op == "d" else s * v
    return s


def validate(ir: IR) -> IR:
    """Check ``ir`` is a well-formed network; return it, or raise ``IRError``."""
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
    inputs, outputs = ir.of_kind("input"), ir.of_kind("output")
    if len(inputs) != 1:
        raise IRError(f"the graph needs exactly one input node, found {len(inputs)}: {inputs}")
    if not outputs:
        raise IRError("the graph has no output node; add one with kind='output'")
    idx = [ir.nodes[o]["index"] for o in outputs]
    if sorted(idx) != list(range(len(outputs))):
        raise IRError(f"output indices {sorted(idx)} must be 0..{len(outputs) - 1}")
    for n in ir.nodes:
        if ir.nodes[n]["kind"] == "output" and ir.out_degree(n):
            raise IRError(f"node {n!r} (output): outputs cannot feed other nodes")
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
    _symbolic(ir)
    return ir


def infer_shapes(ir: IR, size) -> dict:
    """Shape ``(C, H, W)`` (or ``(C,)`` after a pooled head) of every node for an input of ``size``."""
    if isinstance(size, int):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in size) or min(size) < 1):
        raise IRError(f"input size {size!r} is not supported; expected a positive int or (H, W) of "
                      f"positive ints")
    info = _symbolic(validate(ir))
    out = {}
    for n, (c, r) in info.items():
        if r == ("pooled",):
            out[n] = (c,)
        else:
            out[n] = (c, _size(r, size[0]), _size(r, size[1]))
    return out


# ------------------------------------------------------------ serialisation

FORMAT = "dlasearch-ir/1"


def to_json(ir: IR, indent: int | None = None) -> str:
    """Lossless JSON: nodes in insertion order with attributes, edges with positions."""
    nodes = [{"name": n, **{k: v for k, v in d.items()}} for n, d in ir.nodes(data=True)]
    edges = [[u, v, d["pos"]] for u, v, d in ir.edges(data=True)]
    return json.dumps({"format": FORMAT, "graph": dict(ir.graph), "nodes": nodes, "edges": edges},
                      indent=indent)


def from_json(text: str) -> IR:
    """Inverse of ``to_json``; validates the result."""
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


# -------------------------------------------------------------- fingerprint

def _label(ir: IR, n) -> str:
    d = ir.nodes[n]
    return json.dumps({k: v for k, v in d.items() if k != "modules"}, sort_keys=True)


def fingerprint(ir: IR) -> str:
    """A hash of the architecture, independent of node names and insertion order.

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
