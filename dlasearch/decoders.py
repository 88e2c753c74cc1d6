"""Dense-prediction decoders as IR patterns: how a segmentation head aggregates the encoder's stages.

The decoder is where dense prediction aggregates across resolutions, so it is built from the same IR
nodes as the encoder (``upsample``, ``project``, ``aggregate`` with a fusion ``mode``, ``head``):
diagrams, fingerprints, parameter/MAC/memory counts, export and search see it like any other
part of the network.  Every decoder reads the encoder's stages from ``first_level`` on and ends in
per-pixel logits cropped to the input size (so odd sizes work):

- ``none``: FCN-32s, a 1x1 classifier on the deepest stage, fixed bilinear upsampling.
- ``fcn``: FCN-8s, 1x1 class scores at the three deepest strides, each upsampled (learnable,
  bilinear-initialised, as the FCN paper) to the next finer one and summed without parameters.
- ``fpn``: FPN's top-down pathway: 1x1 laterals to ``decoder_channels``, nearest upsampling and
  parameter-free sums, a 3x3 smoothing conv on the finest level, then the classifier.
- ``unet``: U-Net's decoder: upsample, concatenate with the stage of that resolution, 3x3 conv.
- ``ida_up``: the DLA paper's IDA-up (Section 3), exactly as the published DLA-Up models.

and the necks, which repeat (``neck_repeats``) a multi-scale fusion unit over the whole pyramid
(docs/necks.md draws each and compares their cost):

- ``bifpn``: EfficientDet's BiFPN layers: top-down then bottom-up passes whose nodes fuse their
  inputs with learned non-negative weights (``wsum``), then ReLU, separable 3x3 conv, BN.
- ``nasfpn``: NAS-FPN's merging cells (``cells``): two pyramid features resampled to a level, summed
  or merged by global-pooling attention (``gpa``), then ReLU, 3x3 conv, BN, appended to the pyramid.
- ``hrnet_fuse``: HRNet's exchange units: every branch receives every other (1x1 conv + nearest
  upsampling from coarser, strided 3x3 convs from finer), summed, ReLU; HRNetV2's head concatenates
  all branches at the finest resolution.

``decoder_mode`` replaces how a decoder's aggregation nodes merge (``DECODER_MODES``: each decoder's
own mode first, then the others its structure allows); nasfpn's cells carry their own op, and
``none`` aggregates nothing.

The functions take a ``patterns.Builder`` (duck-typed: this module sits beside ``patterns``, which
imports it, so it cannot import ``patterns`` back).
"""
from __future__ import annotations

from dlasearch.errors import did_you_mean
from dlasearch.ir import IRError
from dlasearch.ir.fusion import FUSIONS

__all__ = ["DECODERS", "NECKS", "NECK_REPEATS", "CELL_OPS", "NASFPN_PAPER", "DEFAULT_CHANNELS", "FCN_LEVELS",
           "MODES", "DECODER_MODES", "check_mode", "check", "check_cells", "nasfpn_cells", "decode", "ida_up", "logits"]

NECKS = ("bifpn", "nasfpn", "hrnet_fuse")
DECODERS = ("none", "fcn", "fpn", "unet", "ida_up") + NECKS
# fpn, unet, bifpn and nasfpn when decoder_channels is null: the width IDA-up ends at in every DLA-Up, so that
# decoders compared on one backbone differ in how they aggregate, not in width (EfficientDet-D0's BiFPN has 64,
# NAS-FPN 256, for detection on 512-1280 px images behind far wider backbones)
DEFAULT_CHANNELS = 32
FCN_LEVELS = 3  # FCN-8s: scores at strides 8, 16 and 32 (fewer when first_level leaves fewer stages)
_WIDTHLESS = ("none", "fcn")  # decoders whose maps are class scores
# neck_repeats when null.  bifpn: 2, the fewest that keeps a whole bidirectional layer (the last layer's
# bottom-up pass feeds only coarse outputs a segmentation head does not read, so it is not built);
# nasfpn: one stack of the paper's cells; hrnet_fuse: one exchange unit before HRNetV2's head
NECK_REPEATS = {"bifpn": 2, "nasfpn": 1, "hrnet_fuse": 1}
CELL_OPS = ("sum", "gpa")
MODES = tuple(FUSIONS)  # concat, sum, wsum, gpa: an aggregation node's merge (``ir.fusion``)
# decoder_mode: the modes each decoder's aggregation nodes can take, its own first.  fcn's and fpn's
# parameter-free merges keep their width (no concat); bifpn's 3-input nodes and hrnet_fuse's n-input sums
# rule out gpa (two inputs); unet projects both inputs of a node to decoder_channels for a mode other than
# concat; none aggregates nothing, and nasfpn's cells give their op themselves (``cells``).
DECODER_MODES = {"none": (), "fcn": ("sum", "wsum", "gpa"), "fpn": ("sum", "wsum", "gpa"),
                 "unet": ("concat", "sum", "wsum", "gpa"), "ida_up": ("concat", "sum", "wsum", "gpa"),
                 "bifpn": ("wsum", "sum", "concat"), "nasfpn": (), "hrnet_fuse": ("sum", "wsum")}
# The NAS-FPN paper's 7 merging cells (Ghiasi et al. 2019, the reference code's NASFPN_BLOCK_SPECS) over
# P3..P7: (inputs, level, op), levels 0..4 = P3..P7; inputs 0..4 are P3..P7, 5.. the cells before.
NASFPN_PAPER = (((1, 3), 1, "gpa"), ((1, 5), 1, "sum"), ((0, 6), 0, "sum"), ((6, 7), 1, "sum"),
                ((7, 8), 2, "gpa"), ((6, 9), 4, "gpa"), ((9, 10), 3, "gpa"))


def nasfpn_cells(n: int) -> tuple:
    """The paper's cells on ``n`` levels: paper level p becomes round(p*(n-1)/4), halves up, so the finest
    and coarsest stay anchored (n=5 is the paper's P3..P7 exactly)."""
    def lvl(p):
        return (2 * p * (n - 1) + 4) // 8
    return tuple((*(lvl(i) if i < 5 else n + i - 5 for i in ins), lvl(level), op) for ins, level, op in NASFPN_PAPER)


def check_cells(cells, n: int) -> tuple:
    """``cells`` (a list of ``[input, input, ..., level, op]``) checked against ``n`` levels, as tuples."""
    if not isinstance(cells, (list, tuple)) or not cells:
        raise IRError(f"spec.cells={cells!r}: expected null (the NAS-FPN paper's cells) or a non-empty list of "
                      f"[input, input, level, op]")
    out = []
    for c, cell in enumerate(cells):
        where = f"spec.cells[{c}]={list(cell) if isinstance(cell, tuple) else cell!r}"
        if not isinstance(cell, (list, tuple)) or len(cell) < 4:
            raise IRError(f"{where}: expected [input, input, level, op] (inputs index the pyramid: 0..{n - 1} the "
                          f"levels, {n}.. the cells before)")
        *ins, level, op = cell
        if op not in CELL_OPS:
            raise IRError(f"{where}: op {op!r} unknown{did_you_mean(op, CELL_OPS)}; allowed: {', '.join(CELL_OPS)}")
        if op == "gpa" and len(ins) != 2:
            raise IRError(f"{where}: op gpa merges exactly 2 inputs (the coarser gates the finer), got {len(ins)}")
        for i in ins:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n + c:
                raise IRError(f"{where}: input {i!r} out of range; cell {c} reads 0..{n + c - 1} (0..{n - 1} the "
                              f"levels, finest first{f', {n}..{n + c - 1} the cells before it' if c else ''})")
        if len(set(ins)) < len(ins):
            raise IRError(f"{where}: an input is given twice; a cell merges distinct features")
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < n:
            raise IRError(f"{where}: level {level!r} out of range 0..{n - 1} (0 the finest level the decoder reads)")
        out.append((*ins, level, op))
    return tuple(out)


def check_mode(mode, field: str) -> str:
    """An aggregation ``mode`` (one of ``MODES``), or ``IRError`` naming ``field``."""
    if not isinstance(mode, str) or mode not in MODES:
        raise IRError(f"spec.{field}={mode!r}: unknown fusion mode{did_you_mean(mode, MODES)}; "
                      f"allowed: {', '.join(MODES)}")
    return mode


def _check_decoder_mode(dec: str, mode) -> None:
    if mode is None:
        return
    check_mode(mode, "decoder_mode")
    allowed = DECODER_MODES[dec]
    if not allowed:
        why = "its cells give each merge's op, spec.cells" if dec == "nasfpn" else "it aggregates nothing"
        raise IRError(f"spec.decoder_mode={mode!r}: decoder {dec!r} has no mode to choose ({why}); leave it null")
    if mode not in allowed:
        raise IRError(f"spec.decoder_mode={mode!r}: decoder {dec!r} cannot merge by {mode}; allowed: "
                      f"{', '.join(allowed)} (null: its own, {allowed[0]})")


def check(s: dict, n: int) -> dict:
    """Check the decoder fields of a spec dict (``task`` already checked) whose decoder would read ``n``
    levels; raise ``IRError`` naming the field.  Returns the fields to store (``cells`` as tuples)."""
    dec, width = s["decoder"], s["decoder_channels"]
    if not isinstance(dec, str) or dec not in DECODERS:
        raise IRError(f"spec.decoder={dec!r}: unknown decoder{did_you_mean(dec, DECODERS)}; "
                      f"allowed: {', '.join(DECODERS)}")
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise IRError(f"spec.decoder_channels={width!r}: expected null (the decoder's default) or an int >= 1")
    if s["task"] != "segment" and (dec != "ida_up" or width is not None or s["decoder_mode"] is not None):
        key = "decoder" if dec != "ida_up" else "decoder_channels" if width is not None else "decoder_mode"
        raise IRError(f"spec.{key}={s[key]!r}: a decoder needs task=segment (task={s['task']!r})")
    _check_decoder_mode(dec, s["decoder_mode"])
    if width is not None and dec in _WIDTHLESS:
        raise IRError(f"spec.decoder_channels={width}: decoder {dec!r} has no width of its own (its maps are "
                      f"class scores); leave it null or use another decoder")
    reps, cells = s["neck_repeats"], s["cells"]
    if dec in NECKS:
        steps = [(f"{g}[{i}]", st.stride) for g in ("conv_stages", "stages") for i, st in enumerate(s[g])]
        for field, stride in steps[s["first_level"] + 1:]:
            if stride & (stride - 1):
                raise IRError(f"spec.{field}.stride={stride}: decoder {dec!r} resamples between the levels it reads "
                              f"by powers of two; use a stride of 1, 2, 4, ...")
    if reps is not None:
        if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
            raise IRError(f"spec.neck_repeats={reps!r}: expected null (the decoder's default) or an int >= 1")
        if dec not in NECKS:
            raise IRError(f"spec.neck_repeats={reps}: decoder {dec!r} does not repeat; leave it null or use decoder "
                          f"{', '.join(NECKS)}")
    if cells is not None:
        if dec != "nasfpn":
            raise IRError(f"spec.cells: only decoder nasfpn has merging cells (decoder={dec!r}); leave it null")
        cells = check_cells(cells, n)
    return {"neck_repeats": reps, "cells": cells}


def decode(b, decoder: str, levels: list, strides: list, first_level: int, classes: int,
           width: int | None = None, repeats: int | None = None, cells=None, mode: str | None = None) -> str:
    """Add ``decoder`` over ``levels`` (stage outputs shallow -> deep from ``first_level``, at absolute
    ``strides``) and per-pixel logits at input size; return the output node.  ``mode``: the merge of
    the decoder's aggregation nodes (null: the decoder's own, ``DECODER_MODES``)."""
    if decoder in NECKS:
        reps = repeats or NECK_REPEATS[decoder]
        if decoder == "hrnet_fuse":
            y = _hrnet(b, levels, strides, first_level, width, reps, mode or "sum")
        elif decoder == "bifpn":
            y = _bifpn(b, levels, strides, first_level, width or DEFAULT_CHANNELS, reps, mode or "wsum")
        else:
            y = _nasfpn(b, levels, strides, first_level, width or DEFAULT_CHANNELS, reps, cells)
        return logits(b, y, classes, strides[0])
    if decoder == "ida_up":
        y = ida_up(b, levels, [s // strides[0] for s in strides], width=width, mode=mode)
        return logits(b, y, classes, strides[0])
    if decoder == "none":
        return logits(b, levels[-1], classes, strides[-1])
    if decoder == "fcn":
        return _fcn(b, levels, strides, first_level, classes, mode or "sum")
    if decoder == "fpn":
        return logits(b, _fpn(b, levels, strides, first_level, width or DEFAULT_CHANNELS, mode or "sum"), classes,
                      strides[0])
    if decoder == "unet":
        return logits(b, _unet(b, levels, strides, first_level, width or DEFAULT_CHANNELS, mode), classes,
                      strides[0])
    raise IRError(f"spec.decoder={decoder!r}: allowed: {', '.join(DECODERS)}")


def _up(b, x, ref, factor: int, path: str, **attrs) -> str:
    """``x`` upsampled by ``factor`` and cropped to ``ref`` (``x`` itself when the strides are equal)."""
    return x if factor == 1 else b.node(path, "upsample", [x, ref], factor=factor, **attrs)


def _head(b, x, classes: int, path: str, **attrs) -> str:
    y = b.node(path, "head", [x], classes=classes, pool=False, **attrs)
    b.ch[y] = classes
    return y


def logits(b, y, classes: int, factor: int, path: str = "fc") -> str:
    """Per-pixel 1x1 classifier, then the original DLA-Up's frozen bilinear upsampling to input size."""
    y = _head(b, y, classes, path, modules={"fc": f"{b.prefix}{path}.0"})
    return _to_input(b, y, factor)


def _to_input(b, y, factor: int) -> str:
    if factor > 1:
        y = b.node("up", "upsample", [y, b.x], factor=factor, learnable=False)
    return b.node("output", "output", [y])


def _fcn(b, levels, strides, first_level, classes, mode="sum") -> str:
    """FCN-8s: score maps summed coarse to fine (score maps are what is aggregated, not features)."""
    k0 = max(0, len(levels) - FCN_LEVELS)
    idx = range(k0, len(levels))
    scores = {k: _head(b, levels[k], classes, f"decoder.score{first_level + k}") for k in idx}
    y = scores[len(levels) - 1]
    for k in reversed(idx[:-1]):
        i = first_level + k
        y = _up(b, y, scores[k], strides[k + 1] // strides[k], f"decoder.up{i}")
        y = b.node(f"decoder.sum{i}", "aggregate", [y, scores[k]], classes, mode=mode, conv=False)
    return _to_input(b, y, strides[k0])


def _fpn(b, levels, strides, first_level, width, mode="sum") -> str:
    """FPN: the top-down path (input 0 of each sum) meets 1x1 laterals (input 1); smooth the finest."""
    lat = [b.node(f"decoder.lateral{first_level + k}", "project", [x], width) for k, x in enumerate(levels)]
    y = lat[-1]
    for k in reversed(range(len(levels) - 1)):
        i = first_level + k
        y = _up(b, y, lat[k], strides[k + 1] // strides[k], f"decoder.up{i}", mode="nearest", learnable=False)
        y = b.node(f"decoder.sum{i}", "aggregate", [y, lat[k]], width, mode=mode, conv=False)
    return b.node("decoder.smooth", "conv", [y], width, kernel=3)


def _unet(b, levels, strides, first_level, width, mode=None) -> str:
    """U-Net: upsample (learnable), concatenate with the stage of that resolution, 3x3 conv unit.  Another
    ``mode`` merges equal widths: the deepest stage and each lateral are first projected to ``width``."""
    y, merge = levels[-1], {} if mode in (None, "concat") else {"mode": mode}
    if merge:
        y = b.project(y, width, f"decoder.lateral{first_level + len(levels) - 1}")
    for k in reversed(range(len(levels) - 1)):
        i = first_level + k
        lat = b.project(levels[k], width, f"decoder.lateral{i}") if merge else levels[k]
        u = _up(b, y, lat, strides[k + 1] // strides[k], f"decoder.up{i}")
        y = b.node(f"decoder.node{i}", "aggregate", [u, lat], width, kernel=3, **merge)
    return y


def ida_up(b, layers: list, scales: list, path: str = "dla_up", width: int | None = None,
           mode: str | None = None) -> str:
    """The original DLAUp: IDA over stages back to the resolution of ``layers[0]``.

    ``layers`` shallow -> deep, ``scales`` their strides relative to ``layers[0]``.
    Each IDA step projects to a common width (conv+BN+ReLU), upsamples with a
    learnable bilinear-initialised depthwise transposed conv, and aggregates
    pairwise with a 3x3 node, iteratively from the deepest pair outwards.  The width of
    a step is that of its shallowest stage (the original), or ``width`` for every step.  ``mode``
    (null: concat, the original) merges each node's two equal-width inputs another way.
    """
    merge = {} if mode in (None, "concat") else {"mode": mode}
    layers = list(layers)
    chans = [b.ch[x] for x in layers]
    scales = list(scales)
    y = layers[-1]
    for i in range(len(layers) - 1):
        j = len(layers) - i - 2
        out = width or chans[j]
        ida = f"{path}.ida_{i}"
        ups = []
        for k, x in enumerate(layers[j:]):
            if b.ch[x] != out:
                x = b.node(f"{ida}.proj_{k}", "conv", [x], out, kernel=1,
                           modules={"conv": f"{b.prefix}{ida}.proj_{k}.0", "bn": f"{b.prefix}{ida}.proj_{k}.1"})
            f = scales[j + k] // scales[j]
            if f > 1:
                x = b.node(f"{ida}.up_{k}", "upsample", [x, layers[j]], factor=f)
            ups.append(x)
        y, ys = ups[0], []
        for k in range(1, len(ups)):
            y = b.node(f"{ida}.node_{k}", "aggregate", [y, ups[k]], out, kernel=3, **merge,
                       modules={"conv": f"{b.prefix}{ida}.node_{k}.0", "bn": f"{b.prefix}{ida}.node_{k}.1"})
            ys.append(y)
        layers[j + 1:] = ys
        scales[j + 1:] = [scales[j]] * len(ys)
        chans[j + 1:] = [out] * len(ys)
    return y


# ------------------------------------------------------------ necks
# Neck nodes are named ``decoder.level<N>.*`` after the level whose map they produce or feed, so a diagram
# draws one row (cluster) per level, as the papers draw their necks; the head's own nodes are ``decoder.head*``.

def _at(fl: int, k: int, name: str) -> str:
    return f"decoder.level{fl + k}.{name}"


def _resample(b, x, src: int, dst: int, strides, refs, path: str) -> str:
    """``x`` at level ``src`` brought to level ``dst``: max-pool down, nearest up cropped to ``refs[dst]``."""
    if strides[src] < strides[dst]:
        return b.down(x, strides[dst] // strides[src], f"{path}_down")
    return _up(b, x, refs[dst], strides[src] // strides[dst], f"{path}_up", mode="nearest", learnable=False)


def _bifpn(b, levels, strides, fl, width, repeats, mode="wsum") -> str:
    """BiFPN (Tan et al. 2020, Fig. 2d): per layer a top-down pass, nodes [input, up(coarser)], then a
    bottom-up pass, nodes [input, top-down, down(finer output)] ([input, down] at the top), each a
    weighted sum then ReLU, separable 3x3 conv, BN.  The head reads the finest output (EfficientDet's
    segmentation reads P2 alone), so the last layer's bottom-up pass, which only feeds coarser outputs,
    is not built."""
    n = len(levels)
    unit = dict(kernel=3, mode=mode, order="act_conv_bn", separable=True)
    p = [b.node(_at(fl, k, "proj"), "project", [x], width) for k, x in enumerate(levels)]
    for r in range(repeats):
        td = list(p)
        for k in reversed(range(n - 1)):
            up = _up(b, td[k + 1], p[k], strides[k + 1] // strides[k], _at(fl, k, f"up{r}"), mode="nearest",
                     learnable=False)
            td[k] = b.node(_at(fl, k, f"td{r}"), "aggregate", [p[k], up], width, **unit)
        if r == repeats - 1:
            return td[0]
        out = [td[0]]
        for k in range(1, n):
            down = b.down(out[-1], strides[k] // strides[k - 1], _at(fl, k, f"down{r}"))
            ins = [p[k], td[k], down] if k < n - 1 else [p[k], down]
            out.append(b.node(_at(fl, k, f"out{r}"), "aggregate", ins, width, **unit))
        p = out


def _nasfpn(b, levels, strides, fl, width, repeats, cells) -> str:
    """NAS-FPN (Ghiasi et al. 2019) as its reference code: each cell resamples its inputs to its level,
    merges them (sum, or gpa with the coarser gating the finer), then ReLU, 3x3 conv, BN.  The last cell
    at a level is an output cell: it also sums every earlier feature at its level that nothing has read.
    A stack's final pyramid (the last feature at each level) feeds the next stack.  The head reads the
    final finest feature; a feature nothing reads is added to it after nearest upsampling (the paper's
    rule for features that reach no output, with the head's single resolution as the output), so any
    cell list in range is a network without dead nodes."""
    n = len(levels)
    cells = cells or nasfpn_cells(n)
    last = {cell[-2]: c for c, cell in enumerate(cells)}
    unit = dict(kernel=3, order="act_conv_bn")
    feats = [x if b.ch[x] == width else b.node(_at(fl, k, "proj"), "project", [x], width)
             for k, x in enumerate(levels)]
    refs = list(feats)
    for r in range(repeats):
        lv, reads = list(range(n)), [0] * n
        for c, (*ins, level, op) in enumerate(cells):
            name = _at(fl, level, f"stack{r}.cell{c}")
            if op == "gpa" and lv[ins[0]] < lv[ins[1]]:
                ins = ins[::-1]  # input 0 is the coarser: its global max gates the finer
            srcs = []
            for k, i in enumerate(ins):
                reads[i] += 1
                srcs.append(_resample(b, feats[i], lv[i], level, strides, refs, f"{name}_in{k}"))
            extra = []
            if last[level] == c:  # an output cell
                extra = [j for j in range(len(feats)) if not reads[j] and lv[j] == level]
                for j in extra:
                    reads[j] += 1
            if op == "gpa" and extra:
                srcs, op = [b.node(f"{name}_gpa", "aggregate", srcs, width, mode="gpa", conv=False)], "sum"
            feats.append(b.node(name, "aggregate", srcs + [feats[j] for j in extra], width, mode=op, **unit))
            lv.append(level)
            reads.append(0)
        final = {lvl: f for f, lvl in zip(feats, lv)}
        unread = [(f, lvl) for f, lvl, k in zip(feats, lv, reads) if not k and f != final[0]]
        feats = [final[k] for k in range(n)]
    if not unread:
        return feats[0]
    ups = [_resample(b, f, lvl, 0, strides, refs, f"decoder.head{i}") for i, (f, lvl) in enumerate(unread)]
    return b.node("decoder.head_sum", "aggregate", [feats[0], *ups], width, mode="sum", conv=False)


def _hrnet(b, levels, strides, fl, width, repeats, mode="sum") -> str:
    """HRNet's exchange unit (Sun et al. 2019): branch j = ReLU(sum_i T_ij(x_i)), T the identity (i = j),
    1x1 conv+BN then nearest upsampling (i coarser), or stride-2 3x3 conv+BN+ReLU steps whose last has
    no ReLU (i finer).  Branch k is ``width * 2**k`` wide (HRNet-W<width>; entered through a 3x3 conv
    unit as HRNet's transitions), or its stage's width when ``width`` is null.  HRNetV2's head:
    every branch upsampled to the finest, concatenated, 1x1 conv unit."""
    n = len(levels)
    widths = [b.ch[x] if width is None else width << k for k, x in enumerate(levels)]
    xs = [x if b.ch[x] == w else b.node(_at(fl, k, "transition"), "conv", [x], w, kernel=3)
          for k, (x, w) in enumerate(zip(levels, widths))]
    for r in range(repeats):
        ys = []
        for j in range(n):
            terms = []
            for i, x in enumerate(xs):
                t = _at(fl, j, f"fuse{r}_from{fl + i}")  # what branch j receives from branch i
                if i > j:
                    y = b.node(t, "project", [x], widths[j])
                    x = _up(b, y, xs[j], strides[i] // strides[j], f"{t}_up", mode="nearest", learnable=False)
                elif i < j:
                    steps = (strides[j] // strides[i]).bit_length() - 1
                    if not steps:
                        x = b.node(t, "project", [x], widths[j])
                    for s in range(steps):
                        x = b.node(f"{t}_{s}", "conv", [x], widths[j] if s == steps - 1 else widths[i], stride=2,
                                   relu=s < steps - 1)
                terms.append(x)
            ys.append(b.node(_at(fl, j, f"fuse{r}"), "aggregate", terms, widths[j], mode=mode, conv=False,
                             relu=True))
        xs = ys
    ups = [xs[0]] + [_up(b, x, xs[0], strides[k] // strides[0], f"decoder.head_up{fl + k}", learnable=False)
                     for k, x in enumerate(xs) if k]
    return b.node("decoder.head", "aggregate", ups, sum(widths), kernel=1)
