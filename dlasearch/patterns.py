"""Builders: a small declarative spec -> IR, for every aggregation pattern of the paper.

Figure 1: ``chain`` (a), ``skip`` (b), ``ida`` (c), ``tree`` (d), ``reentrant`` (e),
``hda`` (f); Figure 2: ``dla`` (IDA across stages + HDA within them).  Every
pattern runs on the same backbone (stem, conv stages, block stages), so two
specs differing only in ``pattern`` compare aggregation alone.

Spec (a dict, e.g. from JSON/YAML, checked into the typed ``Spec`` by ``Spec.parse``)::

    pattern: dla                   # one of PATTERNS (or its Figure-1 letter)
    in_channels: 3
    num_classes: 10
    stem: {channels: 16, kernel: 7}               # 'base_layer', stride 1
    conv_stages: [{convs: 1, channels: 16}, {convs: 1, channels: 32, stride: 2}]
    stages:                                       # residual-block stages
      - {blocks: 2, channels: 64, stride: 2}
      - {blocks: 4, channels: 128, stride: 2, mode: sum}   # mode: its aggregation nodes' merge (concat)
    block: basic                   # basic | bottleneck | bottleneckx
    cardinality: 32                # bottleneckx groups
    root_kernel: 1                 # aggregation conv kernel
    residual_root: false           # aggregation adds its first input
    task: classify                 # classify | segment (a decoder, per-pixel logits)
    first_level: 1                 # segment: shallowest conv/block stage the decoder reads
    decoder: ida_up                # segment: none | fcn | fpn | unet | ida_up | bifpn | nasfpn | hrnet_fuse
    decoder_channels: null         # segment: decoder width; null = ida_up's and hrnet_fuse's stage widths, else 32
    decoder_mode: null             # segment: the decoder's aggregation merge (decoders.DECODER_MODES); null = its own
    neck_repeats: null             # bifpn | nasfpn | hrnet_fuse: repeated layers/stacks/units (null: 2 | 1 | 1)
    cells: null                    # nasfpn: [[input, input, level, op], ...]; null = the NAS-FPN paper's cells

Tree patterns (tree, reentrant, hda, dla) need ``blocks`` a power of two >= 2.

A stage's ``mode`` (concat | sum | wsum | gpa, ``ir.fusion``) is how its aggregation nodes merge: the
tree roots inside it, the IDA node that joins it (``ida``), the final merge at its resolution (``skip``,
last stage).  concat is DLA's; the others merge equal widths, so an input of another width (the stage
input a ``dla`` root reads, an earlier stage in ``ida``/``skip``) is first projected (1x1 conv + BN) to
the stage's; gpa merges two inputs (input 0 gates input 1), so a root with more merges its first two
by gpa (no conv) and sums the rest in.  ``chain`` has no aggregation node: the mode changes nothing.
At concat a stage keeps its JSON form and every existing architecture its fingerprint.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

from dlasearch import decoders
from dlasearch.errors import did_you_mean
from dlasearch.ir import BLOCK_TYPES, IR, IRError, validate

__all__ = ['Stem', 'ConvStage', 'Stage', 'Spec', 'normalize', 'Builder', 'build']

PATTERNS = {"chain": "a", "skip": "b", "ida": "c", "tree": "d", "reentrant": "e", "hda": "f", "dla": "fig2"}
LETTERS = {v: k for k, v in PATTERNS.items()}
TREE_PATTERNS = ("tree", "reentrant", "hda", "dla")

@dataclass(frozen=True)
class Stem:
    """The first conv: ``channels`` outputs, ``kernel`` x ``kernel``, stride 1."""
    channels: int
    kernel: int = 7


@dataclass(frozen=True)
class ConvStage:
    """``convs`` plain 3x3 conv+BN+ReLU layers of ``channels``; the first has ``stride``."""
    convs: int
    channels: int
    stride: int = 1


@dataclass(frozen=True)
class Stage:
    """A stage of ``blocks`` residual blocks of ``channels``; its first block has ``stride``; its
    aggregation nodes merge by ``mode``."""
    blocks: int
    channels: int
    stride: int = 2
    mode: str = "concat"


@dataclass(frozen=True)
class Spec:
    """A checked pattern spec; ``Spec.parse(dict)`` validates, ``to_dict()`` gives the JSON form."""
    pattern: str = "dla"
    in_channels: int = 3
    num_classes: int = 10
    stem: Stem = Stem(16, 7)
    conv_stages: tuple[ConvStage, ...] = (ConvStage(1, 16, 1), ConvStage(1, 32, 2))
    stages: tuple[Stage, ...] = (Stage(2, 64), Stage(4, 128), Stage(4, 256), Stage(2, 512))
    block: str = "basic"
    cardinality: int = 32
    root_kernel: int = 1
    residual_root: bool = False
    task: str = "classify"
    first_level: int = 1
    decoder: str = "ida_up"
    decoder_channels: int | None = None
    decoder_mode: str | None = None
    neck_repeats: int | None = None
    cells: tuple | None = None

    @classmethod
    def parse(cls, spec: "dict | Spec") -> "Spec":
        """Fill defaults and check every field; raise ``IRError`` naming the bad one."""
        if isinstance(spec, Spec):
            return spec
        return _parse(spec)

    def to_dict(self) -> dict:
        """Plain dicts and lists, as stored in trial attributes and spec JSON files."""
        d = dataclasses.asdict(self)
        d["conv_stages"], d["stages"] = list(d["conv_stages"]), list(d["stages"])
        for st in d["stages"]:
            if st["mode"] == "concat":  # the default stays out: a spec's JSON form is what it always was
                del st["mode"]
        if d["cells"] is not None:
            d["cells"] = [list(c) for c in d["cells"]]
        return d


FIELDS = tuple(f.name for f in dataclasses.fields(Spec))
_STAGE_TYPES = {"stem": Stem, "conv_stages": ConvStage, "stages": Stage}


def _unknown(key: str, allowed, where: str) -> IRError:
    hint = did_you_mean(key, allowed)
    return IRError(f"spec{where}: unknown key {key!r}{hint}; allowed: {', '.join(sorted(allowed))}")


def _int(v, where: str, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise IRError(f"spec.{where}={v!r}: expected an int >= {lo}")
    return v


def _keys(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}


def _check_top(s: dict) -> None:
    """The scalar fields of a spec (``pattern`` already resolved)."""
    if s["block"] not in BLOCK_TYPES:
        raise IRError(f"spec.block={s['block']!r}: allowed: {', '.join(BLOCK_TYPES)}")
    if s["task"] not in ("classify", "segment"):
        raise IRError(f"spec.task={s['task']!r}: allowed: classify, segment")
    for k in ("in_channels", "num_classes", "cardinality"):
        _int(s[k], k)
    _int(s["root_kernel"], "root_kernel")
    if s["root_kernel"] % 2 == 0:
        raise IRError(f"spec.root_kernel={s['root_kernel']}: expected an odd int")
    if not isinstance(s["residual_root"], bool):
        raise IRError(f"spec.residual_root={s['residual_root']!r}: expected true or false")


def _check_stem(stem) -> Stem:
    if isinstance(stem, Stem):
        return stem
    if not isinstance(stem, dict):
        raise IRError(f"spec.stem={stem!r}: expected a mapping with keys channels, kernel")
    for k in stem:
        if k not in _keys(Stem):
            raise _unknown(k, _keys(Stem), ".stem")
    stem = {"kernel": 7, **stem}
    return Stem(_int(stem.get("channels"), "stem.channels"), _int(stem["kernel"], "stem.kernel"))


def _check_stage(s: dict, group: str, i: int, st):
    """One entry of ``conv_stages`` or ``stages`` as its dataclass."""
    cls = _STAGE_TYPES[group]
    if isinstance(st, cls):
        st = dataclasses.asdict(st)
    count = "convs" if group == "conv_stages" else "blocks"
    if not isinstance(st, dict):
        raise IRError(f"spec.{group}[{i}]={st!r}: expected a mapping")
    for k in st:
        if k not in _keys(cls):
            raise _unknown(k, _keys(cls), f".{group}[{i}]")
    st = {"stride": 2 if group == "stages" else 1, **st}
    _int(st.get(count), f"{group}[{i}].{count}")
    _int(st.get("channels"), f"{group}[{i}].channels")
    _int(st["stride"], f"{group}[{i}].stride")
    if group == "stages":
        decoders.check_mode(st.get("mode", "concat"), f"stages[{i}].mode")
        _check_block_stage(s, i, st)
    return cls(**st)


def _check_block_stage(s: dict, i: int, st: dict) -> None:
    if s["pattern"] in TREE_PATTERNS:
        b = st["blocks"]
        if b < 2 or b & (b - 1):
            raise IRError(f"spec.stages[{i}].blocks={b}: pattern {s['pattern']!r} builds a binary tree of "
                          f"blocks; expected a power of two >= 2 (2, 4, 8, ...)")
    if s["block"] == "bottleneckx":
        c, card = st["channels"], s["cardinality"]
        inner = c * card // 32
        if (c * card) % 32 or inner % card or inner < card:
            raise IRError(f"spec.stages[{i}].channels={c}: with block=bottleneckx and "
                          f"cardinality={card} the grouped width channels*cardinality/32 must be "
                          f"a positive multiple of cardinality (use channels that are multiples of 32)")
    if s["block"] == "bottleneck" and st["channels"] < 2:
        raise IRError(f"spec.stages[{i}].channels={st['channels']}: bottleneck needs >= 2")


def _parse(spec: dict) -> Spec:
    if not isinstance(spec, dict):
        raise IRError(f"spec must be a mapping, got {type(spec).__name__}")
    for k in spec:
        if k not in FIELDS:
            raise _unknown(k, FIELDS, "")
    defaults = Spec()
    s = {**{f: getattr(defaults, f) for f in FIELDS}, **spec}
    pat = LETTERS.get(s["pattern"], s["pattern"])
    if pat not in PATTERNS:
        raise IRError(f"spec.pattern={s['pattern']!r}: unknown pattern; allowed: "
                      f"{', '.join(f'{k} ({v})' for k, v in PATTERNS.items())}")
    s["pattern"] = pat
    _check_top(s)
    s["stem"] = _check_stem(s["stem"])
    for group in ("conv_stages", "stages"):
        lst = s[group]
        if not isinstance(lst, (list, tuple)) or (group == "stages" and not lst):
            raise IRError(f"spec.{group}={lst!r}: expected a {'non-empty ' if group == 'stages' else ''}list "
                          f"of mappings with keys {', '.join(sorted(_keys(_STAGE_TYPES[group])))}")
        s[group] = tuple(_check_stage(s, group, i, st) for i, st in enumerate(lst))
    n_levels = 1 + len(s["conv_stages"]) + len(s["stages"])
    _int(s["first_level"], "first_level", 0)
    if s["task"] == "segment" and not (0 <= s["first_level"] < n_levels - 2):
        raise IRError(f"spec.first_level={s['first_level']}: expected 0..{n_levels - 3} "
                      f"(a stage index with at least two deeper stages)")
    s.update(decoders.check(s, n_levels - 1 - s["first_level"]))  # the stem is not a level the decoder reads
    return Spec(**s)


def normalize(spec: dict) -> dict:
    """Fill defaults and check every field; return the full spec as a dict or raise ``IRError``."""
    return Spec.parse(spec).to_dict()


class Builder:
    """Appends typed nodes to an IR; shares identical max-pools (common subexpressions)."""

    def __init__(self, in_channels: int = 3, name: str = "net", block_kw: dict | None = None):
        self.ir = IR(name=name)
        self.prefix = ""
        self.x = self.ir.add("input", "input", channels=in_channels)
        self.ch = {self.x: in_channels}
        self._pools: dict = {}
        self.block_kw = dict(block_kw or {})

    @contextlib.contextmanager
    def scope(self, prefix: str):
        """Name the nodes added inside the ``with`` block ``prefix + path`` (e.g. a backbone under ``base.``)."""
        outer, self.prefix = self.prefix, prefix
        try:
            yield self
        finally:
            self.prefix = outer

    def node(self, path: str, kind: str, inputs, out=None, **attrs) -> str:
        name = self.prefix + path
        if out is not None:
            attrs["out"] = out
        self.ir.add(name, kind, inputs, **attrs)
        self.ch[name] = out if out is not None else self.ch[inputs[0]]
        return name

    def conv(self, path, x, out, kernel=3, stride=1, seq=0):
        """conv+BN+ReLU stored as an nn.Sequential-style pair ``path.{seq}``, ``path.{seq+1}``."""
        return self.node(f"{path}.{seq}", "conv", [x], out, kernel=kernel, stride=stride,
                         modules={"conv": f"{self.prefix}{path}.{seq}", "bn": f"{self.prefix}{path}.{seq + 1}"})

    def down(self, x, factor, path):
        if factor == 1:
            return x
        key = (x, factor)
        if key not in self._pools:
            self._pools[key] = self.node(path, "downsample", [x], factor=factor)
        return self._pools[key]

    def project(self, x, out, path):
        if self.ch[x] == out:
            return x
        return self.node(path, "project", [x], out,
                         modules={"conv": f"{self.prefix}{path}.0", "bn": f"{self.prefix}{path}.1"})

    def block(self, path, x, out, stride=1, residual=None):
        ins = [x] if residual is None or residual == x else [x, residual]
        return self.node(path, "block", ins, out, stride=stride, **self.block_kw)

    def agg(self, path, inputs, out, kernel=1, residual=False, mode="concat"):
        """An aggregation node merging ``inputs`` by ``mode``; other modes than concat first project the
        inputs of another width to ``out``, and gpa over more than two inputs sums its pair with the rest."""
        if mode == "concat":
            return self.node(path, "aggregate", inputs, out, kernel=kernel, residual=0 if residual else None)
        inputs = [self.project(x, out, f"{path}.project{j}") for j, x in enumerate(inputs)]
        if mode == "gpa" and len(inputs) > 2:
            pair = self.node(f"{path}.gpa", "aggregate", inputs[:2], out, mode="gpa", conv=False)
            inputs, mode = [pair, *inputs[2:]], "sum"
        return self.node(path, "aggregate", inputs, out, kernel=kernel, residual=0 if residual else None, mode=mode)

    # ------------------------------------------------------------ trees

    def tree_hda(self, x, levels, out, stride, path, level_root, kernel, residual_root, children=None,
                 mode="concat"):
        """The original DLA ``Tree``: pattern (f), with the stage input joining the root if level_root."""
        children = [] if children is None else children
        bottom = self.down(x, stride, f"{path}.downsample")
        if level_root:
            children.append(bottom)
        if levels == 1:
            residual = self.project(bottom, out, f"{path}.project")
            x1 = self.block(f"{path}.tree1", x, out, stride, residual)
            x2 = self.block(f"{path}.tree2", x1, out)
            return self.agg(f"{path}.root", [x2, x1, *children], out, kernel, residual_root, mode)
        x1 = self.tree_hda(x, levels - 1, out, stride, f"{path}.tree1", False, kernel, residual_root, mode=mode)
        children.append(x1)
        return self.tree_hda(x1, levels - 1, out, 1, f"{path}.tree2", False, kernel, residual_root, children,
                             mode)

    def tree_plain(self, x, levels, out, stride, path, kernel, residual_root, reenter, mode="concat"):
        """Patterns (d) (``reenter=False``: the next subtree continues from the last block) and
        (e) (``reenter=True``: it continues from the previous aggregation).  Returns (root, last block)."""
        if levels == 1:
            bottom = self.down(x, stride, f"{path}.downsample")
            residual = self.project(bottom, out, f"{path}.project")
            x1 = self.block(f"{path}.tree1", x, out, stride, residual)
            x2 = self.block(f"{path}.tree2", x1, out)
            return self.agg(f"{path}.root", [x2, x1], out, kernel, residual_root, mode), x2
        left, last = self.tree_plain(x, levels - 1, out, stride, f"{path}.tree1", kernel, residual_root, reenter,
                                     mode)
        right, last = self.tree_plain(left if reenter else last, levels - 1, out, 1, f"{path}.tree2", kernel,
                                      residual_root, reenter, mode)
        return self.agg(f"{path}.root", [right, left], out, kernel, residual_root, mode), last

    def chain_stage(self, x, blocks, out, stride, path):
        bottom = self.down(x, stride, f"{path}.downsample")
        residual = self.project(bottom, out, f"{path}.project")
        x = self.block(f"{path}.block0", x, out, stride, residual)
        for i in range(1, blocks):
            x = self.block(f"{path}.block{i}", x, out)
        return x

    # ------------------------------------------------------------ heads

    def ida_up(self, layers: list, scales: list, path: str = "dla_up", width: int | None = None) -> str:
        """The original DLAUp (``decoders.ida_up``)."""
        return decoders.ida_up(self, layers, scales, path, width)

    def classify(self, x, classes, path="fc"):
        y = self.node(path, "head", [x], classes=classes, pool=True)
        self.ch[y] = classes
        return self.node("output", "output", [y])

    def segment(self, x, classes, factor, path="fc"):
        """Per-pixel 1x1 classifier, then the original's frozen bilinear upsampling to input size."""
        return decoders.logits(self, x, classes, factor, path)


def _backbone(b: Builder, s: Spec) -> tuple[str, list, list]:
    """Stem, conv stages and block stages of ``pattern``; returns (output, per-level outputs, strides)."""
    pat = s.pattern
    x = b.conv("base_layer", b.x, s.stem.channels, s.stem.kernel, 1)
    levels, strides = [], [1]
    for i, st in enumerate(s.conv_stages):
        for c in range(st.convs):
            x = b.conv(f"level{i}", x, st.channels, 3, st.stride if c == 0 else 1, seq=3 * c)
        levels.append(x)
        strides.append(strides[-1] * st.stride)
    offset = len(s.conv_stages)
    k, rr = s.root_kernel, s.residual_root
    stage_outs = []
    ida = None
    for i, st in enumerate(s.stages):
        path, out, stride, n = f"level{i + offset}", st.channels, st.stride, st.blocks
        lv = n.bit_length() - 1
        if pat in ("chain", "skip", "ida"):
            x = b.chain_stage(x, n, out, stride, path)
        elif pat in ("tree", "reentrant"):
            x, _ = b.tree_plain(x, lv, out, stride, path, k, rr, reenter=pat == "reentrant", mode=st.mode)
        else:
            x = b.tree_hda(x, lv, out, stride, path, pat == "dla" and i > 0, k, rr, mode=st.mode)
        stage_outs.append(x)
        strides.append(strides[-1] * stride)
        if pat == "ida":
            if ida is None:
                ida = x
            else:
                f = strides[-1] // strides[-2]
                prev = b.down(ida, f, f"ida.{i}.downsample")
                ida = b.agg(f"ida.{i}.root", [x, prev], out, k, rr, st.mode)
    levels += stage_outs
    if pat == "skip" and len(stage_outs) > 1:
        deepest = strides[-1]
        ins = [b.down(o, deepest // strides[offset + 1 + j], f"skip.{j}.downsample")
               for j, o in enumerate(stage_outs[:-1])]
        x = b.agg("skip.root", [stage_outs[-1], *ins], s.stages[-1].channels, k, rr, s.stages[-1].mode)
    elif pat == "ida" and ida is not None:
        x = ida
    return x, levels, strides


def build(spec: "dict | Spec", name: str | None = None) -> IR:
    """Spec (a dict or ``Spec``) -> validated IR; raises ``IRError`` naming a bad field."""
    s = Spec.parse(spec)
    pat = s.pattern
    block_kw = {"type": s.block}
    if s.block == "bottleneckx":
        block_kw["cardinality"] = s.cardinality
    b = Builder(s.in_channels, name or f"{pat}_net", block_kw)
    if s.task != "segment":
        x, _, _ = _backbone(b, s)
        b.classify(x, s.num_classes)
        return validate(b.ir)
    with b.scope("base."):  # the original segmentation model keeps its backbone under `base`
        x, levels, strides = _backbone(b, s)
    fl = s.first_level
    chosen = levels[fl:]
    if pat in ("skip", "ida"):
        chosen[-1] = x
    decoders.decode(b, s.decoder, chosen, strides[1 + fl:], fl, s.num_classes, s.decoder_channels, s.neck_repeats,
                    s.cells, s.decoder_mode)
    return validate(b.ir)
