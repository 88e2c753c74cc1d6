"""The package's floors, kept: imports run one way (README, Architecture), and every module imports alone.

The suite once stayed green over an import circle because the tests happened to import ``train``
before ``arch``, while a fresh ``dlasearch render`` imported them the other way round and crashed.
So the import graph is read from the source (function-local imports included), and each module is
imported into an interpreter that holds no other dlasearch module.
"""
import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dlasearch"

# Lowest first; a module may import from its own floor or below, never above.  A module's floor is
# that of the longest prefix listed.  The README's Architecture section states the same order.
FLOORS = [
    ("errors", "files", "stats", "configfile"),
    ("ir",),
    ("patterns", "decoders"),
    ("measure", "weights"),
    ("zoo", "arch"),
    ("train",),
    ("search",),
    ("analysis", "deploy", ""),  # "": the package itself, whose __init__ re-exports dlasearch.load
    ("cli", "api"),  # api: the command line, called from Python
]


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def floor(module: str) -> int:
    rest = module.split(".", 1)[1] if "." in module else ""
    best, level = -1, None
    for i, names in enumerate(FLOORS):
        for n in names:
            if (rest == n or rest.startswith(n + ".") or n == "") and len(n) > best:
                best, level = len(n), i
    return level


def import_graph(mods: dict[str, Path]) -> nx.DiGraph:
    """module -> module it imports (at any depth of the file: function-local imports count)."""
    g = nx.DiGraph()
    g.add_nodes_from(mods)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; write dlasearch.<module>")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dlasearch":
                targets = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "dlasearch"]
            else:
                continue
            for t in targets:
                r = resolve(t)
                if r and r != m:
                    g.add_edge(m, r, line=node.lineno, local=node.col_offset > 0)
    return g


@pytest.fixture(scope="module")
def graph():
    return import_graph(modules())


def test_every_module_has_a_floor():
    assert not [m for m in modules() if floor(m) is None]


def test_no_module_imports_from_a_higher_floor(graph):
    up = [f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)}) at line {d['line']}"
          for a, b, d in graph.edges(data=True) if floor(b) > floor(a)]
    assert not up, "upward imports:\n" + "\n".join(up)


def test_the_import_graph_has_no_cycle(graph):
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c + [c[0]]) for c in cycles[:10])


def test_dlasearch_imports_sit_at_module_top(graph):
    """A function-local dlasearch import only ever hid a cycle; heavy third-party imports may stay local."""
    local = [f"{a} imports {b} inside a function (line {d['line']})" for a, b, d in graph.edges(data=True)
             if d["local"]]
    assert not local, "\n".join(local)


def test_the_checks_catch_an_upward_import(tmp_path):
    """The rules can fail: today's main had `train.runs` call `cli.options` from inside a function."""
    mods = {"dlasearch.train.runs": tmp_path / "runs.py", "dlasearch.cli.options": tmp_path / "options.py"}
    mods["dlasearch.train.runs"].write_text("def f():\n    from dlasearch.cli.options import write_config\n")
    mods["dlasearch.cli.options"].write_text("from dlasearch.train.runs import f\n")
    g = import_graph(mods)
    assert g.edges["dlasearch.train.runs", "dlasearch.cli.options"]["local"]
    assert floor("dlasearch.cli.options") > floor("dlasearch.train.runs")
    assert list(nx.simple_cycles(g))


def test_every_module_imports_alone():
    """Each module imported into an interpreter holding no other dlasearch module (torch stays loaded:
    it is not ours, and reloading it is what made one process per module slow)."""
    names = sorted((m for m in modules() if not m.endswith("__main__")), reverse=True)  # __main__ runs the CLI
    code = ("import importlib, sys, traceback\n"
            "bad = []\n"
            f"for name in {names!r}:\n"
            "    for k in [k for k in sys.modules if k == 'dlasearch' or k.startswith('dlasearch.')]:\n"
            "        del sys.modules[k]\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except BaseException as e:  # SystemExit too: importing must never run anything\n"
            "        bad.append(f'{name}: {type(e).__name__}: {e}')\n"
            "print('\\n'.join(bad))\n"
            "sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       cwd=PACKAGE.parent)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
