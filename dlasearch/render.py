"""Draw an IR with graphviz: one picture per architecture, and the paper's Figure 1.

Aggregation patterns are about which layers meet where, which a layered DAG
layout (graphviz ``dot``) shows directly.  DOT is plain text, so a drawing
survives a missing renderer: we then write the ``.dot`` source and say how to
install graphviz.

What is drawn

* Each IR node is one graph node (a residual block is a single IR node), shaped
  and coloured by ``kind`` (``KIND_STYLE``).  ``collapse_blocks=True`` (the
  default) draws every IR node.  ``collapse_blocks=False`` hides ``downsample``
  and ``project`` nodes and writes them on the edge they feed ("pool /2, proj
  128"), which leaves only blocks, aggregations and the path between them.
* Nodes whose name has a ``levelN`` component form one cluster per stage (the
  IDA-up decoder ``dla_up.*`` forms one more).  A cluster's label gives the
  resolution and width of its last node, from ``infer_shapes`` at a nominal input
  of 224, or 32 when the widest layer has fewer than 128 channels (a CIFAR-sized
  spec).
* Aggregation nodes show "<arity> -> <output width>".

Edge roles come from graph structure alone, not from the pattern name.  The
*origin* of a node is found by walking back through transport nodes (downsample,
project, upsample input 0, and 1x1 stride-1 convs outside any stage, which are
the IDA-up projections).  The first matching rule gives the role:

1. residual: input 1 of a block (its shortcut).
2. size: input 1 of an upsample.  This is a size reference, not data.
3. An edge into a transport node takes the strongest role among the edges the
   node feeds (iterative > skip > hierarchical > re-entrant > residual, else
   backbone).  So a pooled and projected shortcut is residual along its whole
   length.
4. re-entrant: input 0 of a block whose origin is an aggregate of the same stage
   (an aggregation fed back into the backbone: Figure 1 e, f and DLA).
5. hierarchical: an input of an aggregate inside a stage whose origin is in the
   same stage (the tree's blocks and sub-roots: Figure 1 d-f).
6. iterative: an input of an aggregate inside a stage whose origin is in another
   stage (DLA's stage input joining the root, Figure 2), or any input of an
   aggregate outside the stages that is chained to another such aggregate (IDA,
   Figure 1 c, and the IDA-up decoder).
7. skip: the other inputs of an unchained aggregate outside the stages (Figure 1
   b).  Its input 0 is the backbone arriving.
8. Every other edge is backbone.

A two-stage IDA and a two-stage skip are the same graph, so they are drawn
alike.
"""
from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import graphviz

from dlasearch.errors import DLASearchError
from dlasearch.files import RESULTS
from dlasearch.ir import IR, infer_shapes
from dlasearch.patterns import PATTERNS, build

FORMATS = ("svg", "png", "pdf")
DIRECTIONS = ("LR", "TB")
FOLDED = ("downsample", "project")
ROLES = ("backbone", "residual", "hierarchical", "re-entrant", "iterative", "skip", "size")
_STRONGEST = ("iterative", "skip", "hierarchical", "re-entrant", "residual")

ROLE_STYLE = {
    "backbone": {"color": "#252525", "penwidth": "1.4"},
    "residual": {"color": "#969696", "style": "dashed"},
    "hierarchical": {"color": "#31a354", "penwidth": "1.8"},
    "re-entrant": {"color": "#3182bd", "penwidth": "1.8"},
    "iterative": {"color": "#e6550d", "penwidth": "2.2"},
    "skip": {"color": "#756bb1", "penwidth": "1.8"},
    "size": {"color": "#bdbdbd", "style": "dotted", "constraint": "false"},
}
KIND_STYLE = {
    "input": {"shape": "oval", "fillcolor": "#f0f0f0"},
    "conv": {"shape": "box", "fillcolor": "#deebf7"},
    "block": {"shape": "box", "style": "rounded,filled", "fillcolor": "#9ecae1"},
    "aggregate": {"shape": "ellipse", "fillcolor": "#a1d99b"},
    "downsample": {"shape": "invtriangle", "fillcolor": "#fdd0a2", "fontsize": "9", "margin": "0"},
    "project": {"shape": "parallelogram", "fillcolor": "#dadaeb", "fontsize": "9", "margin": "0"},
    "upsample": {"shape": "triangle", "fillcolor": "#fdae6b", "fontsize": "9", "margin": "0"},
    "head": {"shape": "house", "fillcolor": "#fc9272"},
    "output": {"shape": "oval", "fillcolor": "#f0f0f0", "peripheries": "2"},
}

# Figure 1 (a)-(f) and Figure 2 on one small backbone: 3 stages of 2, 4, 2 blocks.
FIGURE1_SPEC = {
    "num_classes": 10, "stem": {"channels": 8, "kernel": 3}, "conv_stages": [],
    "stages": [{"blocks": 2, "channels": 16}, {"blocks": 4, "channels": 32}, {"blocks": 2, "channels": 64}],
}

_LEVEL = re.compile(r"level\d+$")


# ------------------------------------------------------------- structure

def stage(name) -> str | None:
    """The stage prefix of a node name (``base.level3.tree1`` -> ``base.level3``), or None."""
    parts = str(name).split(".")
    for i, p in enumerate(parts):
        if _LEVEL.match(p):
            return ".".join(parts[:i + 1])
    return None


def _group(name) -> str | None:
    """The cluster a node is drawn in: its stage, or the IDA-up decoder."""
    s = stage(name)
    if s is None and str(name).split(".")[0] == "dla_up":
        return "dla_up"
    return s


def _transport(ir: IR, n) -> bool:
    d = ir.nodes[n]
    return d["kind"] in ("downsample", "project", "upsample") or (
        d["kind"] == "conv" and d["kernel"] == 1 and d["stride"] == 1 and stage(n) is None)


def _origin(ir: IR, n):
    while _transport(ir, n):
        n = ir.inputs(n)[0]
    return n


def _fed(ir: IR, n) -> set:
    """The non-transport nodes that ``n`` feeds, directly or through transport nodes (as data)."""
    out, todo, seen = set(), [n], set()
    while todo:
        for _, m, p in ir.out_edges(todo.pop(), data="pos"):
            if m in seen:
                continue
            seen.add(m)
            if not _transport(ir, m):
                out.add(m)
            elif p == 0:
                todo.append(m)
    return out


def _outer_agg(ir: IR, n) -> bool:
    return ir.nodes[n]["kind"] == "aggregate" and stage(n) is None


def _chained(ir: IR, v) -> bool:
    """An aggregate outside the stages that feeds or is fed by another one (IDA)."""
    return (any(_outer_agg(ir, _origin(ir, u)) for u in ir.inputs(v))
            or any(_outer_agg(ir, m) for m in _fed(ir, v)))


def _role(ir: IR, u, v, pos: int, known: dict) -> str:
    kind = ir.nodes[v]["kind"]
    if kind == "block" and pos == 1:
        return "residual"
    if kind == "upsample" and pos == 1:
        return "size"
    if _transport(ir, v):
        fed = {known[v, w] for w in ir.successors(v)}
        return next((r for r in _STRONGEST if r in fed), "backbone")
    o = _origin(ir, u)
    if kind == "block":
        return "re-entrant" if ir.nodes[o]["kind"] == "aggregate" and stage(o) == stage(v) else "backbone"
    if kind == "aggregate":
        if stage(v) is not None:
            return "hierarchical" if stage(o) == stage(v) else "iterative"
        if _chained(ir, v):
            return "iterative"
        return "backbone" if pos == 0 else "skip"
    return "backbone"


def edge_roles(ir: IR) -> dict:
    """``{(u, v): role}`` for every edge; see the module docstring for the rules."""
    roles: dict = {}
    for v in reversed(ir.order()):
        for pos, u in enumerate(ir.inputs(v)):
            roles[u, v] = _role(ir, u, v, pos, roles)
    return roles


def nominal_size(ir: IR) -> int:
    """The input size resolutions are labelled at: 224, or 32 for a CIFAR-sized network."""
    widths = [d.get("out", 0) for _, d in ir.nodes(data=True)
              if d["kind"] in ("conv", "block", "aggregate", "project")]
    return 32 if max(widths, default=0) < 128 else 224


# --------------------------------------------------------------- drawing

def _short(name, group: str | None) -> str:
    """The name inside its cluster; a bare index (``level0.0``) keeps the stage for context."""
    s = str(name)
    if group and s.startswith(group + ".") and not s[len(group) + 1:].isdigit():
        return s[len(group) + 1:]
    return s.split(".", 1)[1] if s.startswith("base.") else s


def _op_text(ir: IR, n) -> str:
    d = ir.nodes[n]
    k = d["kind"]
    stride = f" /{d['stride']}" if d.get("stride", 1) > 1 else ""
    if k == "input":
        return f"input\n{d['channels']} ch"
    if k == "conv":
        return f"conv {d['kernel']}x{d['kernel']} {d['out']}{stride}"
    if k == "block":
        return f"{d['type']} {d['out']}{stride}"
    if k == "aggregate":
        kern = f" {d['kernel']}x{d['kernel']}" if d["kernel"] != 1 else ""
        res = " +res" if d["residual"] is not None else ""
        return f"{ir.in_degree(n)} -> {d['out']}{kern}{res}"
    if k == "downsample":
        return f"pool /{d['factor']}"
    if k == "project":
        return f"proj {d['out']}"
    if k == "upsample":
        return f"up x{d['factor']}" + ("" if d["learnable"] else " fixed")
    if k == "head":
        return f"fc {d['classes']}" + (" pooled" if d["pool"] else " per-pixel")
    return "output" if d["index"] == 0 else f"output {d['index']}"


def _label(ir: IR, n) -> str:
    text = _op_text(ir, n)
    if ir.nodes[n]["kind"] in ("conv", "block", "aggregate"):
        return f"{_short(n, _group(n))}\n{text}"
    return text


def _shape_text(shape: tuple) -> str:
    return f"{shape[1]}x{shape[2]}, {shape[0]} ch" if len(shape) == 3 else f"{shape[0]} (pooled)"


def _cluster_label(ir: IR, group: str, shapes: dict) -> str:
    last = [n for n in ir.order() if _group(n) == group][-1]
    name = "dla_up (IDA-up)" if group == "dla_up" else group.split(".")[-1]
    return f"{name}: {_shape_text(shapes[last])}"


def _draw(g: graphviz.Digraph, ir: IR, collapse_blocks: bool, size: int, prefix: str = "") -> set:
    """Add ``ir`` to ``g`` (node ids prefixed by ``prefix``); return the edge roles used."""
    shapes = infer_shapes(ir, size)
    roles = edge_roles(ir)
    shown = [n for n in ir.order() if collapse_blocks or ir.nodes[n]["kind"] not in FOLDED]
    groups: dict = {}
    for n in shown:
        groups.setdefault(_group(n), []).append(n)

    def node(sub, n):
        sub.node(prefix + str(n), _label(ir, n), tooltip=f"{n}: {ir.nodes[n]['kind']} -> {shapes[n]}",
                 **KIND_STYLE[ir.nodes[n]["kind"]])

    for group, nodes in groups.items():
        if group is None:
            for n in nodes:
                node(g, n)
            continue
        with g.subgraph(name=f"cluster_{prefix}{group}") as c:
            c.attr(label=_cluster_label(ir, group, shapes), style="rounded,filled", fillcolor="#fafafa",
                   color="#bdbdbd", fontsize="11", labeljust="l")
            for n in nodes:
                node(c, n)
    used = set()
    for v in shown:
        for u in ir.inputs(v):
            role, via = roles[u, v], []
            while not collapse_blocks and ir.nodes[u]["kind"] in FOLDED:
                via.append(_op_text(ir, u))
                u = ir.inputs(u)[0]
            extra = {"label": ", ".join(reversed(via))} if via else {}
            g.edge(prefix + str(u), prefix + str(v), **ROLE_STYLE[role], **extra)
            used.add(role)
    return used


def _legend(title: str, used: set) -> str:
    """An HTML-like graph label: the title and the colour of each edge role present."""
    cells = "".join(f'<td><font color="{ROLE_STYLE[r]["color"]}"><b>{r}</b></font></td>'
                    for r in ROLES if r in used)
    n = max(1, sum(r in used for r in ROLES))
    return (f'<<table border="0" cellspacing="4"><tr><td colspan="{n}"><b>{html.escape(title)}</b></td></tr>'
            f"<tr>{cells}</tr></table>>")


def _graph(direction: str) -> graphviz.Digraph:
    return graphviz.Digraph(
        graph_attr={"rankdir": direction, "newrank": "true", "fontname": "Helvetica", "labelloc": "t",
                    "nodesep": "0.25", "ranksep": "0.35"},
        node_attr={"fontname": "Helvetica", "fontsize": "11", "style": "filled"},
        edge_attr={"arrowsize": "0.6", "fontname": "Helvetica", "fontsize": "9"})


def _check(collapse_blocks, direction, size) -> None:
    if not isinstance(collapse_blocks, bool):
        raise DLASearchError(f"collapse_blocks={collapse_blocks!r}: allowed: true, false")
    if direction not in DIRECTIONS:
        raise DLASearchError(f"direction={direction!r}: allowed: {', '.join(DIRECTIONS)}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DLASearchError(f"size={size!r}: expected a positive int (the nominal input size)")


def to_dot(ir: IR, collapse_blocks: bool = True, direction: str = "LR", title: str | None = None,
           size: int | None = None) -> graphviz.Digraph:
    """The drawing of ``ir`` as a graphviz graph (not rendered yet)."""
    _check(collapse_blocks, direction, size)
    size = size or nominal_size(ir)
    g = _graph(direction)
    used = _draw(g, ir, collapse_blocks, size)
    g.attr(label=_legend(f"{title or ir.graph.get('name') or 'network'}  (shapes at {size}x{size} input)", used))
    return g


def figure1_irs() -> dict:
    """pattern -> IR for Figure 1 (a)-(f) and Figure 2, all on ``FIGURE1_SPEC``."""
    return {p: build({**FIGURE1_SPEC, "pattern": p}, name=p) for p in PATTERNS}


def figure1_dot(collapse_blocks: bool = True, direction: str = "TB") -> graphviz.Digraph:
    """Figure 1's six patterns and Figure 2's DLA, one cluster each, in one graph."""
    _check(collapse_blocks, direction, None)
    g = _graph(direction)
    used: set = set()
    for pattern, ir in figure1_irs().items():
        letter = PATTERNS[pattern]
        title = "Figure 2: dla" if letter == "fig2" else f"({letter}) {pattern}"
        with g.subgraph(name=f"cluster_panel_{letter}") as c:
            c.attr(label=title, fontsize="16", style="rounded", color="#737373")
            used |= _draw(c, ir, collapse_blocks, 32, prefix=f"{letter}/")
    blocks = ", ".join(str(s["blocks"]) for s in FIGURE1_SPEC["stages"])
    g.attr(label=_legend(f"Aggregation patterns on one backbone (stages of {blocks} blocks; shapes at "
                         f"32x32 input)", used))
    return g


# --------------------------------------------------------------- writing

def _format(path: Path, fmt: str | None) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if fmt is not None and fmt not in FORMATS:
        raise DLASearchError(f"format={fmt!r}: allowed: {', '.join(FORMATS)}")
    if suffix and suffix not in FORMATS:
        raise DLASearchError(f"out={str(path)!r}: suffix .{suffix} is not a format we render; allowed: "
                             f"{', '.join('.' + f for f in FORMATS)}")
    if fmt and suffix and fmt != suffix:
        raise DLASearchError(f"out={str(path)!r} ends in .{suffix} but format={fmt!r}; make them agree "
                             f"or drop format=")
    return fmt or suffix or "svg"


def _write(path: Path, data) -> None:
    from dlasearch import files

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DLASearchError(f"cannot write {path}: {files.explain(e)}") from None
    files.write_text(path, data)


def _no_dot(dot: graphviz.Digraph, path: Path, fmt: str):
    src = path.with_suffix(".dot")
    _write(src, dot.source)
    raise DLASearchError(
        f"graphviz's `dot` program is not on PATH, so {path} was not drawn; wrote the DOT source to {src}. "
        f"Install graphviz (apt-get install graphviz, or brew install graphviz) and rerun, or run "
        f"`dot -T{fmt} {src} -o {path}`")


def write(dot: graphviz.Digraph, path, format: str | None = None) -> Path:
    """Render ``dot`` to ``path``; ``format`` defaults to the path's suffix, else svg.

    Overwrites an existing file.  Without ``dot`` on PATH, writes ``<path>.dot``
    and raises ``DLASearchError`` saying how to install graphviz.
    """
    path = Path(path)
    fmt = _format(path, format)
    if not path.suffix:
        path = path.with_suffix(f".{fmt}")
    if shutil.which("dot") is None:
        _no_dot(dot, path, fmt)
    try:
        data = dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        _no_dot(dot, path, fmt)
    except graphviz.CalledProcessError as e:
        err = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        raise DLASearchError(f"graphviz dot failed drawing {path}: {err[0] if err else e}") from None
    _write(path, data)
    return path


def render(ir: IR, path, format: str | None = None, collapse_blocks: bool = True, direction: str = "LR",
           title: str | None = None, size: int | None = None) -> Path:
    """Draw ``ir`` to ``path`` (svg, png or pdf); returns the path written."""
    return write(to_dot(ir, collapse_blocks, direction, title, size), path, format)


def figure1(path, format: str | None = None, collapse_blocks: bool = True, direction: str = "TB") -> Path:
    """Draw Figure 1 (a)-(f) plus Figure 2 to ``path``; returns the path written."""
    return write(figure1_dot(collapse_blocks, direction), path, format)


# ------------------------------------------------------------------- CLI

OPTIONS = ("arch", "format", "out", "collapse_blocks", "direction", "size", "study", "trial", "storage")


def load_arch(value: str) -> tuple[IR, str]:
    """``arch=`` -> (IR, name): a zoo model (dense ones included) or a spec/IR file, read the way
    ``dlasearch train`` reads it (``train.read_arch``), so both commands accept the same files."""
    from dlasearch import zoo
    from dlasearch.train import read_arch

    if value in zoo.UP_MODELS:
        return zoo.ir(value), value
    kind, obj = read_arch(value)
    if kind == "zoo":
        return zoo.ir(obj), obj
    if kind == "ir":
        return obj, str(obj.graph.get("name") or Path(value).stem)
    spec = dict(obj)
    name = spec.pop("name")
    return build(spec, name=name), name


def _trial(args: dict) -> tuple[IR, str]:
    """A search trial's IR; the search module owns studies, this only draws them."""
    try:
        from dlasearch.search import trial_ir
    except ImportError as e:
        raise DLASearchError(f"study rendering needs the search module (dlasearch.search.trial_ir), which "
                             f"is not available ({e}); use arch=<zoo name | spec.json | ir.json>") from None
    if "arch" in args or "study" not in args or "trial" not in args:
        raise DLASearchError("render: give both study=NAME and trial=N, and no arch=")
    study, trial = str(args["study"]), args["trial"]
    return trial_ir(study, trial, storage=args.get("storage")), f"{study}-trial{trial}"


def command(args: dict) -> int:
    """``dlasearch render``: see docs/render.md."""
    unknown = sorted(set(args) - set(OPTIONS))
    if unknown:
        raise DLASearchError(f"render: unknown option(s) {unknown}; allowed: {', '.join(OPTIONS)}")
    fmt = args.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise DLASearchError(f"format={fmt!r}: allowed: {', '.join(FORMATS)}")
    collapse = args.get("collapse_blocks", True)
    direction = args.get("direction")
    size = args.get("size")
    arch = None if args.get("arch") is None else str(args["arch"])
    out = None if args.get("out") is None else str(args["out"])
    if arch == "figure1":
        if size is not None:
            raise DLASearchError(f"size={size!r}: figure1 is always labelled at 32x32; drop size=")
        _check(collapse, direction or "TB", None)
        path = figure1(out or f"{RESULTS}/render/figure1.{fmt or 'svg'}", fmt, collapse,
                       direction or "TB")
    else:
        if {"study", "trial", "storage"} & set(args):
            ir, name = _trial(args)
        elif arch is None:
            raise DLASearchError("render: missing arch=; give arch=<zoo name | spec.json | ir.json>, "
                                 "arch=figure1, or study=NAME trial=N")
        else:
            _check(collapse, direction or "LR", size)
            ir, name = load_arch(arch)
        path = render(ir, out or f"{RESULTS}/render/{name}.{fmt or 'svg'}", fmt, collapse,
                      direction or "LR", size=size)
    print(f"wrote {path}")
    return 0
