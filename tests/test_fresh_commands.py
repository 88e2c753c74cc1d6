"""Every documented command, run as a user runs it: a fresh process, on tiny inputs.

In-process tests share one interpreter, so the order in which they import modules can hide an
import circle that a fresh `dlasearch render` then hits (it did).  Where the README's own example
line is cheap it is taken from the README, so a README that drifts from the code fails here.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
TINY = ["data.limit=200", "epochs=1"]  # keys no README line below sets, so none is given twice


def readme_line(prefix: str) -> list[str]:
    """The README's first command line starting with ``prefix``, without its comment and ``[...]`` parts."""
    for line in README.splitlines():
        line = line.strip()
        if line.startswith(prefix):
            line = re.sub(r"\[[^\]]*\]", "", line.split(" #")[0])
            return line.split()[1:]  # without the word `dlasearch`
    raise AssertionError(f"the README has no command line starting with {prefix!r}")


def dlasearch(args, cwd, timeout=600, ok=True):
    """Run ``python -m dlasearch.cli ARGS`` in a fresh interpreter (what the console script runs)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    r = subprocess.run([sys.executable, "-m", "dlasearch.cli", *map(str, args)], cwd=cwd, capture_output=True,
                       text=True, timeout=timeout, env=env)
    if ok:
        assert r.returncode == 0, f"dlasearch {' '.join(map(str, args))} -> {r.returncode}\n{r.stdout[-2000:]}\n" \
                                  f"{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder holding a tiny trained run and a tiny finished study named ``hda`` (the README's name)."""
    tmp = tmp_path_factory.mktemp("fresh")
    spec = tmp / "tiny.json"
    spec.write_text(json.dumps({
        "pattern": "dla", "num_classes": 10, "stem": {"channels": 8, "kernel": 3},
        "conv_stages": [{"convs": 1, "channels": 8, "stride": 1}, {"convs": 1, "channels": 8, "stride": 2}],
        "stages": [{"blocks": 2, "channels": 16}, {"blocks": 2, "channels": 16}]}))
    dlasearch(["train", f"arch={spec}", "data=digits", "batch_size=32", "image_size=16", "latency=false",
               "out=results/train/tiny", *TINY], tmp)
    dlasearch(readme_line("dlasearch run space=hda [trials") + ["trials=2", "data.image_size=16", "batch_size=32", *TINY],
              tmp)
    return tmp


def test_help_and_version_from_a_fresh_process(tmp_path):
    assert "commands:" in dlasearch(readme_line("dlasearch --help"), tmp_path).stdout
    assert "options" in dlasearch(readme_line("dlasearch train --help"), tmp_path).stdout
    assert dlasearch(["--version"], tmp_path).stdout.startswith("dlasearch ")
    assert "study:" in dlasearch(readme_line("dlasearch run space=hda --cfg"), tmp_path).stdout


def test_zoo_table(tmp_path):
    out = dlasearch(readme_line("dlasearch zoo") + ["format=csv"], tmp_path).stdout
    assert out.splitlines()[0].startswith("name,params") and "dla34up" in out


def test_render_a_zoo_model_and_figure1(tmp_path):
    svg = tmp_path / "dla34.svg"
    dlasearch(readme_line("dlasearch render arch=dla34") + [f"out={svg}"], tmp_path)
    assert "<svg" in svg.read_text()
    dlasearch(readme_line("dlasearch render figure1") + [f"out={tmp_path / 'figure1.svg'}"], tmp_path)


def test_train_then_export_and_load(work):
    run = work / "results" / "train" / "tiny"
    assert json.loads((run / "metrics.json").read_text())["status"] == "ok"
    given = {"from": run, "out": work / "exported", "format": "py"}  # for <run>, DIR and the slow formats
    line = [f"{a.split('=')[0]}={given[a.split('=')[0]]}" if a.split("=")[0] in given else a
            for a in readme_line("dlasearch export from=")]
    dlasearch(line, work)
    assert (work / "exported" / "model.py").is_file()
    code = (f"import dlasearch, torch; m = dlasearch.load({str(run)!r}); "
            f"print(tuple(m(m.preprocess(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))).shape))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=work)
    assert r.returncode == 0 and r.stdout.strip() == "(2, 10)", r.stderr[-2000:]


def test_search_worker_report_and_render_a_trial(work):
    assert (work / "results" / "hda" / "trials.csv").is_file()
    r = dlasearch(["worker", "study=hda"], work)
    assert "finished" in r.stdout
    dlasearch(readme_line("dlasearch report study=hda"), work)
    assert (work / "results" / "hda" / "report" / "report.md").is_file()
    dlasearch(["render", "study=hda", "trial=0", f"out={work / 'trial0.svg'}"], work)


def test_compare_rank_and_bench_lookup(work):
    dlasearch(["compare", "patterns=chain,ida", "budget.params=2e4", "seeds=1", "data=digits", "image_size=16",
               "batch_size=32", "name=smoke", *TINY], work)
    assert (work / "results" / "compare" / "smoke" / "comparison.csv").is_file()
    line = [a if a != "n=20" else "n=2" for a in readme_line("dlasearch rank space=hda n=20")]
    assert "rank" in dlasearch(line + [f"out={work / 'rank.csv'}"], work).stdout
    line = [a if a != "name=N" else "name=cifar5k" for a in readme_line("dlasearch bench lookup name=N")]
    assert "architectures match" in dlasearch(line, ROOT).stdout  # the committed benchmark, read only
