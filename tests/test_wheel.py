"""The package as a user installs it: a normal wheel in a fresh virtualenv, run from another folder."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# without PYTHONPATH: a checkout on it (and its build's egg-info) would make pip think dlasearch is installed
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(cmd, **kw):
    kw.setdefault("env", ENV)
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{cmd}: {p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p


@pytest.mark.slow
def test_wheel_ships_the_search_spaces_and_runs(tmp_path):
    """About 2-4 minutes: build, venv, torch from the local wheel cache, the other deps from PyPI."""
    src = tmp_path / "src"  # a clean copy: no stale build/ or egg-info of the checkout ends up in the wheel
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "results", "*.egg-info",
                                                             "__pycache__", ".pytest_cache"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)])
    (wheel,) = wheels.glob("dlasearch-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    # --no-compile as run.sh installs: Python compiles what it imports on first use
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]
    _run([*pip, "torch==2.13.0"])  # the CPU build from local disk; never a plain `torch`
    _run([*pip, str(wheel)])
    work = tmp_path / "elsewhere"  # no checkout here: the spaces must come from the wheel
    work.mkdir()
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    exe = str(venv / "bin" / "dlasearch")
    p = _run([exe, "run", "space=hda", "trials=1", "epochs=1"], cwd=work, env=env)
    assert (work / "results" / "hda" / "trials.csv").exists() and (work / "results" / "hda" / "config.yaml").exists()
    assert "1 trials in 'hda'" in p.stdout
    spaces = _run([str(venv / "bin" / "python"), "-c", "from dlasearch.search import space; print(space.available())"],
                  cwd=work, env=env).stdout
    assert "figure1" in spaces and "hda" in spaces
