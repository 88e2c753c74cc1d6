"""Rendering: the drawn graph matches the IR, edge roles follow the structure, errors are one line."""
import json
import os
import shutil
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("graphviz")

from conftest import tiny_spec  # noqa: E402
from dlasearch.analysis import render  # noqa: E402
from dlasearch.cli import main  # noqa: E402
from dlasearch.errors import DLASearchError  # noqa: E402
from dlasearch.ir import to_json  # noqa: E402
from dlasearch.patterns import PATTERNS, build  # noqa: E402

# CI installs graphviz (.ci/run), so there a missing `dot` fails instead of skipping
needs_dot = pytest.mark.skipif(shutil.which("dot") is None and not os.environ.get("CI"),
                               reason="graphviz `dot` is not installed")
SVG = "{http://www.w3.org/2000/svg}"


def svg_groups(path, cls):
    """The <g class=cls> elements of an SVG written by graphviz."""
    return [g for g in ET.parse(path).getroot().iter(f"{SVG}g") if g.get("class") == cls]


def title(g):
    return g.find(f"{SVG}title").text


def texts(path):
    """Every piece of visible text in the SVG, entities decoded."""
    return {t.text for t in ET.parse(path).getroot().iter(f"{SVG}text")}


def compact_counts(ir):
    """(nodes, edges) drawn with details=False: blocks, aggregations and upsamplings, joined through what is
    hidden, without residual shortcuts."""
    shown = {n for n, k in ir.nodes(data="kind") if k in ("block", "aggregate", "upsample")}
    roles = render.edge_roles(ir)
    edges = set()
    for u, v in ir.edges:
        if v in shown and roles[u, v] != "residual":
            while u not in shown and ir.inputs(u):
                u = ir.inputs(u)[0]
            if u in shown:
                edges.add((u, v))
    return len(shown), len(edges)


@pytest.fixture(scope="module")
def dla34():
    from dlasearch import zoo

    return zoo.ir("dla34")


@needs_dot
def test_zoo_model_draws_every_node_and_edge(dla34, tmp_path):
    path = render.render(dla34, tmp_path / "dla34.svg")
    assert len(svg_groups(path, "node")) == dla34.number_of_nodes()
    assert len(svg_groups(path, "edge")) == dla34.number_of_edges()
    clusters = {title(g) for g in svg_groups(path, "cluster")}
    assert clusters == {f"cluster_level{i}" for i in range(6)}
    assert {"level3: 28x28, 128 ch", "4 -> 128"} <= texts(path)  # stage resolution, root arity


@needs_dot
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_each_pattern_counts_match_ir(pattern, tmp_path):
    ir = build(tiny_spec(pattern))
    path = render.render(ir, tmp_path / "full.svg")
    assert (len(svg_groups(path, "node")), len(svg_groups(path, "edge"))) == \
        (ir.number_of_nodes(), ir.number_of_edges())
    path = render.render(ir, tmp_path / "compact.svg", details=False)
    assert (len(svg_groups(path, "node")), len(svg_groups(path, "edge"))) == compact_counts(ir)
    old = render.render(ir, tmp_path / "old.svg", collapse_blocks=False)  # the old name of details
    assert (len(svg_groups(old, "node")), len(svg_groups(old, "edge"))) == compact_counts(ir)


def test_edge_roles_follow_structure():
    roles = {p: render.edge_roles(build(tiny_spec(p))) for p in PATTERNS}
    used = {p: set(r.values()) for p, r in roles.items()}
    assert used["chain"] == {"backbone", "residual"}
    assert "skip" in used["skip"] and "iterative" not in used["skip"]
    assert "iterative" in used["ida"] and "skip" not in used["ida"]
    assert "hierarchical" in used["tree"] and "re-entrant" not in used["tree"]
    assert roles["tree"]["level3.tree1.tree2", "level3.tree2.tree1"] == "backbone"
    assert roles["reentrant"]["level3.tree1.root", "level3.tree2.tree1"] == "re-entrant"
    assert roles["hda"]["level3.tree1.root", "level3.tree2.root"] == "hierarchical"
    assert "iterative" not in used["hda"]
    assert roles["dla"]["level3.downsample", "level3.tree2.root"] == "iterative"
    assert roles["chain"]["level2.downsample", "level2.block0"] == "residual"
    assert roles["chain"]["level1.0", "level2.downsample"] == "residual"
    assert roles["skip"]["level4.block1", "skip.root"] == "backbone"


def test_decoder_roles():
    ir = build(tiny_spec("dla", task="segment"))
    roles = render.edge_roles(ir)
    for v in ir.of_kind("aggregate"):
        if v.startswith("dla_up."):
            assert {roles[u, v] for u in ir.inputs(v)} == {"iterative"}, v
    assert all(roles[ir.inputs(v)[1], v] == "size" for v in ir.of_kind("upsample"))


@needs_dot
def test_figure1_has_seven_panels(tmp_path):
    path = render.figure1(tmp_path / "fig.svg")
    panels = [title(g) for g in svg_groups(path, "cluster") if title(g).startswith("cluster_panel_")]
    assert sorted(panels) == sorted(f"cluster_panel_{v}" for v in PATTERNS.values())
    assert {"(a) chain", "(b) skip", "(c) ida", "(d) tree", "(e) reentrant", "(f) hda",
            "Figure 2: dla"} <= texts(path)
    irs = render.figure1_irs().values()
    assert len(svg_groups(path, "node")) == sum(compact_counts(g)[0] for g in irs)  # like the paper: no stem...
    assert not {"fc 10 pooled", "input", "output", "pool /2"} & texts(path)  # ...head, pools or projections
    full = render.figure1(tmp_path / "full.svg", details=True)
    assert len(svg_groups(full, "node")) == sum(g.number_of_nodes() for g in irs)


@needs_dot
def test_direction_auto_draws_deep_nets_top_to_bottom(dla34, tmp_path):
    def size(path):
        root = ET.parse(path).getroot()
        return float(root.get("width").rstrip("pt")), float(root.get("height").rstrip("pt"))

    w, h = size(render.render(dla34, tmp_path / "auto.svg"))
    assert h > 2 * w  # dla34 left to right was a 4537x288 strip
    w, h = size(render.render(dla34, tmp_path / "lr.svg", direction="LR"))
    assert w > 10 * h  # asked for, it is still drawn


@needs_dot
@pytest.mark.parametrize("fmt,magic", [("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_binary_formats(fmt, magic, tmp_path):
    path = render.render(build(tiny_spec("chain")), tmp_path / "x", format=fmt)
    assert path.suffix == f".{fmt}" and path.read_bytes().startswith(magic)


def test_missing_dot_writes_source(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DLASearchError, match="apt-get install graphviz") as e:
        render.render(build(tiny_spec("chain")), tmp_path / "out" / "x.svg")
    assert (tmp_path / "out" / "x.dot").read_text().startswith("digraph")
    assert not (tmp_path / "out" / "x.svg").exists()
    assert "x.dot" in str(e.value) and "\n" not in str(e.value)


@needs_dot
def test_cli_renders_zoo_model(tmp_path, capsys):
    out = tmp_path / "x.svg"
    assert main(["render", "arch=dla34", f"out={out}"]) == 0
    assert out.exists() and str(out) in capsys.readouterr().out
    assert main(["render", "arch=dla34", f"out={out}", "direction=TB"]) == 0  # overwriting is fine


@needs_dot
def test_cli_default_path_and_figure1(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["render", "arch=figure1", "format=png"]) == 0
    assert (tmp_path / "results" / "render" / "figure1.png").exists()


@needs_dot
def test_cli_spec_and_ir_json(tmp_path):
    spec = tmp_path / "net.json"
    spec.write_text(json.dumps(tiny_spec("ida")))
    irj = tmp_path / "graph.json"
    irj.write_text(to_json(build(tiny_spec("reentrant"))))
    for src in (spec, irj):
        out = tmp_path / f"{src.stem}.svg"
        assert main(["render", f"arch={src}", f"out={out}"]) == 0 and out.exists()


@pytest.mark.parametrize("args,msg", [
    (["arch=dla35"], "did you mean 'dla34'"),
    (["arch=dla34", "format=jpg"], "format='jpg': allowed: svg, png, pdf"),
    (["arch=dla34", "out=x.png", "format=svg"], "ends in .png but format='svg'"),
    (["arch=dla34", "direction=up"], "direction='up': allowed: auto, LR, TB"),
    (["arch=dla34", "collapse_blocks=maybe"], "collapse_blocks='maybe': allowed: true, false"),
    (["arch=dla34", "details=1"], "details=1: allowed: true, false"),
    (["arch=dla34", "details=true", "collapse_blocks=false"], "disagree; give details= only"),
    (["arch=dla34", "colour=red"], "unknown option"),
    ([], "missing arch="),
])
def test_cli_bad_options_one_line(args, msg, capsys):
    assert main(["render", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


def test_cli_bad_json_arch(tmp_path, capsys):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert main(["render", f"arch={bad}"]) == 2
    assert "neither a spec" in capsys.readouterr().err


@needs_dot
def test_cli_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["render", "arch=dla34", f"out={blocker}/x.svg"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write" in err and len(err.splitlines()) == 1


@needs_dot
def test_study_trial_is_drawn(monkeypatch, tmp_path):
    monkeypatch.setattr(render, "trial_ir", lambda study, trial, storage=None: build(tiny_spec("hda")))
    out = tmp_path / "t.svg"
    assert main(["render", "study=s", "trial=3", f"out={out}"]) == 0 and out.exists()
