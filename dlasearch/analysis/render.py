"""Draw an IR with graphviz: one picture per architecture, and the paper's Figure 1.

Aggregation patterns are about which layers meet where, which a layered DAG
layout (graphviz ``dot``) shows directly.  DOT is plain text, so a drawing
survives a missing renderer: we then write the ``.dot`` source and say how to
install graphviz.

What is drawn

* Each IR node is one graph node (a residual block is a single IR node), shaped
  and coloured by ``kind`` (each kind's ``style``).  ``details=True`` (the default for
  one architecture) draws every IR node.  ``details=False`` (the default for
  Figure 1) draws the aggregation structure the way the paper does: blocks,
  aggregations and upsamplings only, with short labels; the input, stem and other
  convs, pools, projections, head and output are hidden, an edge through hidden
  pools/projections joins its ends, and residual shortcuts are left out.
  ``collapse_blocks`` is the old name of ``details`` (it never collapsed blocks).
* ``direction="auto"`` lays the graph out both ways and keeps the one whose
  aspect ratio is closer to square (top-to-bottom on a tie), so a deep network
  such as dla34 is drawn top to bottom instead of as a 4537x288 strip.
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

from dlasearch import files, zoo
from dlasearch.analysis import layout
from dlasearch.arch import read_arch
from dlasearch.errors import DLASearchError
from dlasearch.files import RESULTS
from dlasearch.ir import IR, KINDS, infer_shapes
from dlasearch.patterns import PATTERNS, build
from dlasearch.search import trial_ir

__all__ = ['stage', 'edge_roles', 'nominal_size', 'to_dot', 'figure1_irs', 'figure1_dot', 'write', 'render', 'figure1',
           'load_arch', 'command']

FORMATS = ("svg", "png", "pdf")
DIRECTIONS = ("auto", "LR", "TB")
SHOWN_COMPACT = ("block", "aggregate", "upsample")  # what details=False draws
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
    """The cluster a node is drawn in: its stage, or the decoder (IDA-up's ``dla_up``, the others' ``decoder``)."""
    s = stage(name)
    if s is None and str(name).split(".")[0] in ("dla_up", "decoder"):
        return str(name).split(".")[0]
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
    return KINDS[d["kind"]].text(ir, n, d)


def _label(ir: IR, n, details: bool = True) -> str:
    if not details:  # short: what the block or aggregation does, not where it sits
        d = ir.nodes[n]
        return KINDS[d["kind"]].short_text(ir, n, d)
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


def _source(ir: IR, u, shown: set):
    """The drawn node an edge from ``u`` starts at: ``u`` or the first drawn node up its input-0 chain."""
    while u not in shown:
        ins = ir.inputs(u)
        if not ins:
            return None
        u = ins[0]
    return u


def _draw(g: graphviz.Digraph, ir: IR, details: bool, size: int, prefix: str = "") -> set:
    """Add ``ir`` to ``g`` (node ids prefixed by ``prefix``); return the edge roles used."""
    shapes = infer_shapes(ir, size)
    roles = edge_roles(ir)
    shown = [n for n in ir.order() if details or ir.nodes[n]["kind"] in SHOWN_COMPACT]
    groups: dict = {}
    for n in shown:
        groups.setdefault(_group(n), []).append(n)

    def node(sub, n):
        small = {} if details else {"fontsize": "9", "margin": "0.04,0.02", "height": "0.3"}
        sub.node(prefix + str(n), _label(ir, n, details), tooltip=f"{n}: {ir.nodes[n]['kind']} -> {shapes[n]}",
                 **{**KINDS[ir.nodes[n]["kind"]].node_style(ir.nodes[n]), **small})

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
    used, drawn, visible = set(), set(), set(shown)
    for v in shown:
        for u in ir.inputs(v):
            role, src = roles[u, v], _source(ir, u, visible)
            if not details and (role == "residual" or src is None or (src, v) in drawn):
                continue
            drawn.add((src, v))
            g.edge(prefix + str(src), prefix + str(v), **ROLE_STYLE[role])
            used.add(role)
    return used


def _legend(title: str, used: set) -> str:
    """An HTML-like graph label: the title and the colour of each edge role present."""
    cells = "".join(f'<td><font color="{ROLE_STYLE[r]["color"]}"><b>{r}</b></font></td>'
                    for r in ROLES if r in used)
    n = max(1, sum(r in used for r in ROLES))
    return (f'<<table border="0" cellspacing="4"><tr><td colspan="{n}"><b>{html.escape(title)}</b></td></tr>'
            f"<tr>{cells}</tr></table>>")


def _graph(direction: str, details: bool = True) -> graphviz.Digraph:
    return graphviz.Digraph(
        graph_attr={"rankdir": direction, "newrank": "true", "fontname": "Helvetica", "labelloc": "t",
                    "nodesep": "0.25" if details else "0.15", "ranksep": "0.35" if details else "0.2"},
        node_attr={"fontname": "Helvetica", "fontsize": "11", "style": "filled"},
        edge_attr={"arrowsize": "0.6", "fontname": "Helvetica", "fontsize": "9"})


def _details(details, collapse_blocks, default: bool) -> bool:
    """``details``, or its old name ``collapse_blocks`` (same meaning), or ``default``; checked."""
    for name, v in (("details", details), ("collapse_blocks", collapse_blocks)):
        if v is not None and not isinstance(v, bool):
            raise DLASearchError(f"{name}={v!r}: allowed: true, false")
    if details is not None and collapse_blocks is not None and details != collapse_blocks:
        raise DLASearchError(f"details={details} and collapse_blocks={collapse_blocks} (its old name) disagree; "
                             f"give details= only")
    return default if details is None and collapse_blocks is None else \
        (details if details is not None else collapse_blocks)


def _check(details, direction, size) -> None:
    _details(details, None, True)
    if direction not in DIRECTIONS:
        raise DLASearchError(f"direction={direction!r}: allowed: {', '.join(DIRECTIONS)}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DLASearchError(f"size={size!r}: expected a positive int (the nominal input size)")


def to_dot(ir: IR, details: bool | None = None, direction: str = "auto", title: str | None = None,
           size: int | None = None, *, collapse_blocks: bool | None = None) -> graphviz.Digraph:
    """The drawing of ``ir`` as a graphviz graph (not rendered yet); ``collapse_blocks`` is ``details``' old name."""
    details = _details(details, collapse_blocks, True)
    _check(details, direction, size)
    size = size or nominal_size(ir)

    def make(d):
        g = _graph(d, details)
        used = _draw(g, ir, details, size)
        g.attr(label=_legend(f"{title or ir.graph.get('name') or 'network'}  (shapes at {size}x{size} input)",
                             used))
        return g
    return layout.pick_direction(make, ir) if direction == "auto" else make(direction)


def figure1_irs() -> dict:
    """pattern -> IR for Figure 1 (a)-(f) and Figure 2, all on ``FIGURE1_SPEC``."""
    return {p: build({**FIGURE1_SPEC, "pattern": p}, name=p) for p in PATTERNS}


def figure1_dot(details: bool | None = None, direction: str = "TB", *,
                collapse_blocks: bool | None = None) -> graphviz.Digraph:
    """Figure 1's six patterns and Figure 2's DLA, one cluster each, in one graph (compact unless ``details``)."""
    details = _details(details, collapse_blocks, False)
    _check(details, direction, None)
    if direction == "auto":
        direction = "TB"
    g = _graph(direction, details)
    used: set = set()
    for pattern, ir in figure1_irs().items():
        letter = PATTERNS[pattern]
        title = "Figure 2: dla" if letter == "fig2" else f"({letter}) {pattern}"
        with g.subgraph(name=f"cluster_panel_{letter}") as c:
            c.attr(label=title, fontsize="16", style="rounded", color="#737373")
            used |= _draw(c, ir, details, 32, prefix=f"{letter}/")
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


def render(ir: IR, path, format: str | None = None, details: bool | None = None, direction: str = "auto",
           title: str | None = None, size: int | None = None, *, collapse_blocks: bool | None = None) -> Path:
    """Draw ``ir`` to ``path`` (svg, png or pdf); returns the path written."""
    return write(to_dot(ir, details, direction, title, size, collapse_blocks=collapse_blocks), path, format)


def figure1(path, format: str | None = None, details: bool | None = None, direction: str = "TB", *,
            collapse_blocks: bool | None = None) -> Path:
    """Draw Figure 1 (a)-(f) plus Figure 2 to ``path``; returns the path written."""
    return write(figure1_dot(details, direction, collapse_blocks=collapse_blocks), path, format)


# ------------------------------------------------------------------- CLI

OPTIONS = ("arch", "format", "out", "details", "collapse_blocks", "direction", "size", "study", "trial", "storage")


def load_arch(value: str) -> tuple[IR, str]:
    """``arch=`` -> (IR, name): a zoo model (dense ones included) or a spec/IR file, read the way
    ``dlasearch train`` reads it (``arch.read_arch``), so both commands accept the same files."""
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
    if "arch" in args or "study" not in args or "trial" not in args:
        raise DLASearchError("render: give both study=NAME and trial=N, and no arch=")
    study, trial = str(args["study"]), args["trial"]
    return trial_ir(study, trial, storage=args.get("storage")), f"{study}-trial{trial}"


def command(args: dict) -> int:
    """``dlasearch render``: see docs/render.md (unknown options were refused by ``cli.options.check``)."""
    fmt = args.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise DLASearchError(f"format={fmt!r}: allowed: {', '.join(FORMATS)}")
    details, old = args.get("details"), args.get("collapse_blocks")
    direction = args.get("direction")
    size = args.get("size")
    arch = None if args.get("arch") is None else str(args["arch"])
    out = None if args.get("out") is None else str(args["out"])
    if arch == "figure1":
        if size is not None:
            raise DLASearchError(f"size={size!r}: figure1 is always labelled at 32x32; drop size=")
        details = _details(details, old, False)
        _check(details, direction or "TB", None)
        path = figure1(out or f"{RESULTS}/render/figure1.{fmt or 'svg'}", fmt, details, direction or "TB")
    else:
        if {"study", "trial", "storage"} & set(args):
            ir, name = _trial(args)
        elif arch is None:
            raise DLASearchError("render: missing arch=; give arch=<zoo name | spec.json | ir.json>, "
                                 "arch=figure1, or study=NAME trial=N")
        else:
            _check(_details(details, old, True), direction or "auto", size)
            ir, name = load_arch(arch)
        path = render(ir, out or f"{RESULTS}/render/{name}.{fmt or 'svg'}", fmt, _details(details, old, True),
                      direction or "auto", size=size)
    print(f"wrote {path}")
    return 0
