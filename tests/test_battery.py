"""The fault battery (issue 31 §3): each case damages something for real (a journal line, a stale temp
file, a read-only or replaced path, a corrupt folder, an impossible size) and checks that the command
prints one line naming the path or value and what to do, exits 2, and changes nothing it was given."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dlasearch import search
from dlasearch.cli import main
from dlasearch.search import space

SMALL = {"pattern": {"value": "hda"}, "width": {"value": 8}, "growth": {"value": 2.0}, "levels": {"value": 1},
         "block": {"value": "basic"}, "root_kernel": {"value": 1}}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One finished tiny study (``hda``, 1 trial) that each case copies before damaging it."""
    root, cwd = tmp_path_factory.mktemp("study"), os.getcwd()
    os.chdir(root)  # results/ relative, as a user's: a copy in another folder resumes there
    try:
        search.run(space.load("hda", {"study": {"trials": 1, "seed": 0, "pruner": "none"},
                                      "train": {"epochs": 1, "batch_size": 32}, "data": {"limit": 200},
                                      "params": SMALL, "seed_published": False}), log=lambda *a: None)
    finally:
        os.chdir(cwd)
    return root / "results"


def _copy(study, tmp_path) -> Path:
    shutil.copytree(study, tmp_path / "results")
    return tmp_path / "results"


def _bad_journal_line(line: bytes, command: str):
    def make(tmp_path, study):
        results = _copy(study, tmp_path)
        log = results / "hda" / "journal.log"
        lines = log.read_bytes().splitlines(keepends=True)
        log.write_bytes(b"".join(lines[:2] + [line + b"\n"] + lines[2:]))
        argv = (["run", "study=hda", f"storage={log}", "trials=2"] if command == "run"
                else ["report", "study=hda", f"storage={log}", f"out={tmp_path / 'report'}"])
        return {"argv": argv, "needles": [str(log), "line 3"], "kept": [log]}
    return make


def _stale_weights_temp(tmp_path, study):
    results = _copy(study, tmp_path)
    stale = results / "hda" / "best" / ".trial0.safetensors.tmp"
    stale.write_bytes(b"half a checkpoint")  # a run killed (or a disk filled) while copying the best weights

    def after():
        assert not stale.exists() and (results / "hda" / "best" / "trial0.safetensors").stat().st_size > 1000
    return {"argv": ["run", "study=hda", "trials=1"], "rc": 0,
            "kept": [results / "hda" / "journal.log"], "after": after}


def _readonly(path: Path, request):
    """Make ``path`` read-only for real: ``chattr +i`` as root (chmod does not stop root), else chmod."""
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("running as root without a working chattr +i: cannot make a path read-only")
        request.addfinalizer(lambda: subprocess.run(["chattr", "-i", str(path)]))
    else:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        request.addfinalizer(lambda: path.chmod(mode))


def _stale_lock(tmp_path, study, request):
    """A lock file left by a killed process that cannot be removed (immutable; a read-only folder when not root)."""
    results = _copy(study, tmp_path)
    log = results / "hda" / "journal.log"
    lock = Path(f"{log}.lock")
    lock.touch()
    old = lock.stat().st_mtime - 3600
    os.utime(lock, (old, old))
    _readonly(lock if os.geteuid() == 0 else lock.parent, request)
    return {"argv": ["run", "study=hda", f"storage={log}", "trials=2"], "needles": [str(lock), "remove it by hand"],
            "kept": [log]}


def _mlflow_unreachable(tmp_path, study, request):
    """An MLflow server that does not answer: MLflow's client retried for minutes, then a traceback."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"  # discard: nothing listens there
    request.addfinalizer(lambda: os.environ.pop("MLFLOW_TRACKING_URI") if before is None
                         else os.environ.__setitem__("MLFLOW_TRACKING_URI", before))
    pytest.importorskip("mlflow")
    return {"argv": ["train", "arch=dla34", "data=digits", "data.limit=50", "epochs=1", "latency=false",
                     "log=mlflow", "out=t4"], "needles": ["MLFLOW_TRACKING_URI=http://127.0.0.1:9", "log=mlflow"],
            "after": lambda: not (tmp_path / "t4").exists() or pytest.fail("a refused train left out= behind")}


def _rank_out(kind):
    def make(tmp_path, study, request):
        folder = tmp_path / "ro"
        folder.mkdir()
        if kind == "read-only":
            _readonly(folder, request)
            return {"argv": ["rank", "space=hda", "n=1", f"out={folder / 'r.csv'}"], "needles": [str(folder)]}
        return {"argv": ["rank", "space=hda", "n=1", f"out={folder}"], "needles": [str(folder), "is a folder"]}
    return make


def _config_yaml(kind):
    def make(tmp_path, study, request):
        results = _copy(study, tmp_path)
        config = results / "hda" / "config.yaml"
        if kind == "folder":
            config.unlink()
            config.mkdir()
        else:
            # immutable config.yaml as root; as a user, chmod cannot stop a rename, so its folder
            _readonly(config if os.geteuid() == 0 else results / "hda", request)
        return {"argv": ["run", "study=hda", "trials=1"], "needles": ["results/hda"],
                "kept": [results / "hda" / "journal.log"]}
    return make


BENCH = Path(__file__).resolve().parents[1] / "results" / "bench" / "cifar5k"


def _bench(damage, command):
    def make(tmp_path, study):
        if not (BENCH / "bench.csv").is_file():
            pytest.skip(f"no benchmark at {BENCH} to copy")
        folder = tmp_path / "results" / "bench" / "b"
        folder.mkdir(parents=True)
        for name in ("bench.csv", "grid.csv", "meta.json", "space.yaml"):
            shutil.copy(BENCH / name, folder / name)
        name = damage(folder)
        argv = (["bench", "lookup", "name=b"] if command == "lookup"
                else ["run", "data=bench:b", "study=t", "trials=1"])
        return {"argv": argv, "needles": [str(Path("results/bench/b") / name)],
                "kept": [folder / n for n in ("bench.csv", "grid.csv", "meta.json")]}
    return make


def _empty(name):
    return lambda folder: ((folder / name).write_text(""), name)[1]


def _text(name, text):
    return lambda folder: ((folder / name).write_text(text), name)[1]


def _missing(name):
    return lambda folder: (folder / name).unlink() or name


def _no_trial(tmp_path, study):
    def after():
        assert (tmp_path / "results" / "z" / "trials.csv").is_file()
    return {"argv": ["run", "space=hda", "study=z", "params.width.choices=[8]", "params.growth.choices=[2.0]",
                     "params.levels.low=1", "params.levels.high=1", "data.limit=200", "epochs=1",
                     "seed_published=false", "pruner=none", "timeout=1e-9", "trials=1"], "rc": 0, "after": after}


COMPARE = ["compare", "patterns=chain", "budget.params=2e4", "seeds=1", "data=digits", "data.limit=200", "epochs=1",
           "batch_size=32", "out=cmp"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """One finished tiny comparison that the compare cases copy before damaging it."""
    root = tmp_path_factory.mktemp("compare")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(COMPARE) == 0
    finally:
        os.chdir(cwd)
    return root / "cmp"


def _compare(name):
    def make(tmp_path, study, request):
        shutil.copytree(request.getfixturevalue("comparison"), tmp_path / "cmp")
        damaged = tmp_path / "cmp" / name
        damaged.write_text("[1, 2]\n")
        return {"argv": COMPARE, "needles": [str(Path("cmp") / name), "move that file away"],
                "kept": [damaged, tmp_path / "cmp" / "settings.json", tmp_path / "cmp" / "runs.csv"]}
    return make


CASES = {
    **{f"1-journal-{name}-{cmd}": _bad_journal_line(line, cmd)
       for name, line in {"empty-object": b"{}", "list": b"[]", "null": b"null",
                          "unknown-op": b'{"op_code":99,"worker_id":"w"}',
                          "no-trial-id": b'{"op_code":6,"worker_id":"w","state":1,"values":[0.5]}'}.items()
       for cmd in ("run", "report")},
    "2-stale-weights-temp": _stale_weights_temp,
    "2-journal-lock-cannot-be-removed": _stale_lock,
    **{f"3-{' '.join(argv[1:])}": (lambda argv, needle: lambda tmp_path, study: {"argv": argv, "needles": [needle]})(
        argv, needle) for argv, needle in [
        (["export", "study=base", "trial=abc"], "trial='abc': expected an int"),
        (["export", "study=base", "trial=[0]"], "trial=[0]: expected an int"),
        (["export", "study=base", "trial=null"], "needs trial=N"),
        (["export", "from=dla34", "num_classes=abc"], "num_classes='abc': expected an int"),
        (["rank", "space=hda", "n=abc"], "n='abc': expected an int"),
        (["rank", "space=hda", "batch=[1]"], "batch=[1]: expected an int")]},
    "4-rank-out-read-only": _rank_out("read-only"),
    "4-rank-out-a-folder": _rank_out("folder"),
    "4-config-yaml-a-folder": _config_yaml("folder"),
    "4-config-yaml-read-only": _config_yaml("read-only"),
    **{f"5-bench-{what}-{cmd}": _bench(damage, cmd)
       for what, damage in {"empty-bench-csv": _empty("bench.csv"), "broken-meta": _text("meta.json", '{"name": '),
                            "meta-a-list": _text("meta.json", "[1, 2]"), "missing-grid": _missing("grid.csv"),
                            "csv-without-columns": _text("bench.csv", "a,b\n1,2\n")}.items()
       for cmd in ("lookup", "run")},
    "6-no-finished-trial": _no_trial,
    "7-compare-settings-a-list": _compare("settings.json"),
    "7-compare-run-a-list": _compare("runs/chain-seed0.json"),
    "8-train-batch-size-1": lambda tmp_path, study: {
        "argv": ["train", "arch=dla34", "batch_size=1", "data=digits", "data.limit=50", "epochs=1", "latency=false",
                 "out=t1"], "needles": ["batch_size=1", "BatchNorm", "batch_size=2"]},
    "8-run-batch-size-1": lambda tmp_path, study: {
        "argv": ["run", "space=hda", "study=b1", "batch_size=1", "data.limit=50", "epochs=1", "trials=1"],
        "needles": ["batch_size=1", "BatchNorm"]},
    "9-screen-100000": lambda tmp_path, study: {
        "argv": ["run", "space=hda", "study=s", "screen=100000", "data.limit=50", "epochs=1", "trials=1"],
        "needles": ["study.screen", "100000", "[2, 1000]"]},
    "9-rank-n-100000": lambda tmp_path, study: {
        "argv": ["rank", "space=hda", "n=100000"], "needles": ["n=100000", "[1, 5000]"]},
    "10-train-huge-batch": lambda tmp_path, study: {
        "argv": ["train", "arch=dla34", "batch_size=10000000", "data=digits", "data.limit=50", "epochs=1",
                 "latency=false", "out=t2"], "needles": ["batch_size=10000000", "TB, this machine has"],
        "after": lambda: not (tmp_path / "t2").exists() or pytest.fail("a refused train left out= behind")},
    "10-train-huge-image": lambda tmp_path, study: {
        "argv": ["train", "arch=dla34", "data=digits", "data.image_size=100000", "data.limit=300", "epochs=1",
                 "latency=false", "out=t3"], "needles": ["image_size=100000", "TB, this machine has"]},
    "11-train-mlflow-unreachable": _mlflow_unreachable,
    "10-run-huge-image": lambda tmp_path, study: {
        "argv": ["run", "space=hda", "study=big", "data.image_size=100000", "data.limit=300", "epochs=1", "trials=1"],
        "needles": ["image_size=100000", "TB, this machine has"]},
}


@pytest.mark.parametrize("case", list(CASES))
def test_battery(case, study, tmp_path, capsys, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    make = CASES[case]
    c = make(tmp_path, study, request) if make.__code__.co_argcount == 3 else make(tmp_path, study)
    before = {p: (p.read_bytes() if p.is_file() else None) for p in c.get("kept", [])}
    capsys.readouterr()  # a fixture's own output
    rc = main(c["argv"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == c.get("rc", 2), (c["argv"], rc, err)
    if rc:
        assert len(err) == 1 and "Traceback" not in err[0], (c["argv"], err)
        for needle in c.get("needles", []):
            assert needle in err[0], (needle, err)
    assert not any("Traceback" in line for line in err), err
    for p, content in before.items():
        assert (p.read_bytes() if p.is_file() else None) == content, p
    if c.get("after"):
        c["after"]()


def test_export_on_a_full_disk_is_one_line_and_leaves_out_as_it_was(tmp_path):
    """torch's zip writer aborted the process (exit 134, C++ frames) when a write failed."""
    out = tmp_path / "dla34"
    assert main(["export", "from=dla34", f"out={out}", "format=py"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    limit = 3_000_000  # model.py fits, model.pt (63 MB) does not
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "from dlasearch.cli import main\n"
            f"sys.exit(main(['export', 'from=dla34', 'out={out}', 'format=py', 'overwrite=true']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "ulimit -f" in err[0] and str(out) in err[0], proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["dla34"]  # no temporary folder left beside it
