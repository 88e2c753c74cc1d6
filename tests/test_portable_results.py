"""Committed results rerun anywhere: their documented commands, run in a clone at another absolute path
with a copy of the data, reuse every run and train nothing; a data file is known by its content hash."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import dlasearch.train
from dlasearch import files, search
from dlasearch.search.study import find_study
from dlasearch.analysis.compare import CompareError, check_settings
from dlasearch.cli import main
from dlasearch.configfile import same_data
from tests.test_data import SHARED

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
CIFAR = Path("cifar-10-subset") / "cifar10_subset.npz"


def documented(prefix: str) -> list[list[str]]:
    """The commands of results/README.md's ``sh`` blocks that start with ``prefix``, as argument lists."""
    text = (RESULTS / "README.md").read_text()
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            if cmd.startswith(prefix):
                out.append(shlex.split(cmd)[1:])
    return out


def no_training(*a, **k):
    raise AssertionError("a finished run was trained again")


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """An empty project at another absolute path (``<tmp>/elsewhere/project``), the working folder, with
    ``../shared/data`` beside it; training forbidden.  Returns (project, shared data folder)."""
    project = tmp_path / "elsewhere" / "project"
    (project / "results").mkdir(parents=True)
    monkeypatch.chdir(project)
    monkeypatch.setattr(dlasearch.train, "train", no_training)
    return project, tmp_path / "elsewhere" / "shared" / "data"


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


COMPARISONS = {"fashion_mnist-100k": (Path("FashionMNIST"), 24), "cifar10_subset-1m": (CIFAR, 40),
               "cifar10_subset-1m-90ep": (CIFAR, 30), "mnist_seg-boundary-500k": (Path("MNIST"), 12),
               "mnist_seg-500k": (Path("MNIST"), 55), "mnist_seg-fusion": (Path("MNIST"), 40),
               "mnist_seg-500k-60ep": (Path("MNIST"), 18),
               "cifar10_subset-1m-5ep": (CIFAR, 35), "mnist_seg-500k-120ep": (Path("MNIST"), 30),
               "mnist_seg-500k-120ep-chain": (Path("MNIST"), 10)}
# What a documented command reads besides its folder and data: the fusion comparison's searched NAS-FPN
# cell is a decoders=nasfpn@<spec file> row, the committed study's best trial.
READS = {"mnist_seg-fusion": [Path("search") / "nasfpn-mnist_seg" / "best" / "trial35.spec.json"]}


@pytest.mark.skipif(not (REPO / ".git").exists() or not shutil.which("git"), reason="not a git checkout")
@pytest.mark.parametrize("name", sorted(COMPARISONS))
def test_each_documented_comparison_folder_is_committed_not_ignored(name):
    """.gitignore leaves results/compare/*/ out unless it names the folder: a new comparison that is
    not named there passes here but is missing from every clean checkout (CI's included)."""
    folder = RESULTS / "compare" / name
    paths = [folder / "settings.json", *sorted((folder / "runs").glob("*.json"))]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *map(str, paths)], cwd=REPO, capture_output=True, text=True)
    assert ignored.stdout == "", f"ignored by .gitignore (add !/results/compare/{name}/): {ignored.stdout}"


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared data folder at {SHARED}")
@pytest.mark.parametrize("name", sorted(COMPARISONS))
def test_each_committed_comparison_reruns_from_a_clone_at_another_path(name, clone, capsys):
    project, shared = clone
    data, runs = COMPARISONS[name]
    _copy(RESULTS / "compare" / name, project / "results" / "compare" / name)
    _copy(SHARED / data, shared / data)
    for extra in READS.get(name, []):
        _copy(RESULTS / extra, project / "results" / extra)
    [command] = [c for c in documented("dlasearch compare") if f"name={name}" in c
                 or (name == "fashion_mnist-100k" and "data=fashion_mnist" in c)]
    assert main([c for c in command if not c.startswith("threads=")] + ["threads=1"]) == 0
    out = capsys.readouterr().out
    assert f"0 run(s) trained, {runs} reused" in out


BENCHMARKS = [b.name for b in sorted((RESULTS / "bench").iterdir()) if (b / "meta.json").is_file()]


@pytest.mark.skipif(not (SHARED / CIFAR).is_file(), reason=f"no CIFAR-10 subset at {SHARED / CIFAR}")
@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_committed_benchmark_rebuilds_and_reports_from_a_clone_at_another_path(name, clone, capsys):
    """`bench build` (both studies resumed, nothing trained: workers find them finished) and `bench report`
    rewrite exactly the committed table, analysis and README (NOTES.md first; the regret replay cached; the
    comparisons its pattern ranking is checked against copied beside it, as a clone has them)."""
    project, shared = clone
    committed = RESULTS / "bench" / name
    studies = (f"bench-{name}", f"bench-{name}-seed1")
    against = json.loads((committed / "meta.json").read_text()).get("against", [])
    for part in (*studies, f"bench/{name}", *(str(Path(a).relative_to("results")) for a in against)):
        _copy(RESULTS / part, project / "results" / part)
    _copy(SHARED / CIFAR, shared / CIFAR)
    [build] = [c for c in documented("dlasearch bench build") if f"name={name}" in c]
    [report] = [c for c in documented("dlasearch bench report") if f"name={name}" in c]
    trials = {s: len(_study(project, s).trials) for s in studies if (project / "results" / s).is_dir()}
    assert main(build) == 0
    assert main(report) == 0
    out = capsys.readouterr().out
    assert "created" not in out and "trial #" not in out and "replayed" not in out
    assert {s: len(_study(project, s).trials) for s in trials} == trials
    folder = project / "results" / "bench" / name
    for f in ("bench.csv", "meta.json", "analysis.json", "regret.csv", "README.md"):
        if (committed / f).is_file():
            assert (folder / f).read_text() == (committed / f).read_text(), f
    if (committed / "NOTES.md").is_file():
        assert (folder / "README.md").read_text().startswith(f"# Benchmark `{name}`\n\n" + (
            committed / "NOTES.md").read_text().strip())


@pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason=f"no MNIST under {SHARED}")
def test_the_committed_nasfpn_search_resumes_from_a_clone_and_trains_nothing(clone, capsys):
    """The 50-trial `space=nasfpn` study and its confirmation: the documented command, rerun at another
    path, finds every trial and every confirming run done, and reprints the same confirmed table."""
    project, shared = clone
    _copy(RESULTS / "search" / "nasfpn-mnist_seg", project / "results" / "search" / "nasfpn-mnist_seg")
    _copy(SHARED / "MNIST", shared / "MNIST")
    [command] = documented("dlasearch run space=nasfpn")
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "50 trials in 'nasfpn-mnist_seg'" in out and "trial #" not in out and "confirm 1/" not in out
    assert (project / "results" / "search" / "nasfpn-mnist_seg" / "confirmed.csv").read_text() == \
        (RESULTS / "search" / "nasfpn-mnist_seg" / "confirmed.csv").read_text()


def _study(project: Path, name: str) -> optuna.Study:
    return find_study(name, str(project / "results" / name / "journal.log"))[0]


ABSOLUTE = re.compile(r"""(?:^|[\s"'=:(\[])(/(?:[\w.-]+/)+[\w.-]*)""", re.M)  # /a/b... after a delimiter


def test_committed_results_name_no_folder_of_this_machine_and_need_no_migration():
    """No absolute path (this machine's project or data, or any other) and no kernel/host string in any
    committed text result; bench/migrate_results.py finds nothing left to rewrite."""
    listed = subprocess.run(["git", "ls-files", "results"], cwd=REPO, capture_output=True, text=True).stdout.split()
    for rel in listed or [str(p.relative_to(REPO)) for p in RESULTS.rglob("*")]:
        path = REPO / rel
        if path.suffix in (".png", ".safetensors") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        assert str(REPO.parent) + "/" not in text and not ABSOLUTE.search(text), \
            f"{rel} names an absolute path: {(ABSOLUTE.search(text) or [None, REPO.parent])[1]}"
        assert not re.search(r"Linux-\d|glibc", text), f"{rel} names a kernel or C library"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "migrate_results.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "nothing to rewrite" in done.stdout, done.stdout + done.stderr


def test_a_data_file_is_compared_by_content_wherever_it_lies(tmp_path, monkeypatch):
    a, b, other = tmp_path / "a" / "x.npz", tmp_path / "b" / "y.npz", tmp_path / "z.npz"
    for p, text in ((a, "same"), (b, "same"), (other, "different")):
        p.parent.mkdir(exist_ok=True)
        p.write_text(text)
    old, new = same_data({"name": "npz", "path": str(a), "root": "/x"}, {"name": "npz", "path": str(b)})
    assert old == new and old["path"].startswith("sha256:")
    assert same_data({"path": str(a)}, {"path": str(other)})[0] != same_data({"path": str(a)}, {"path": str(other)})[1]
    gone = str(tmp_path / "gone.npz")  # a stored path that is not here and no hash: compared by path
    assert same_data({"path": gone}, {"path": str(b)}) == ({"path": gone}, {"path": str(b.resolve())})
    stored = {"path": "../elsewhere/x.npz", "sha256": files.content_hash(a)}  # a migrated record
    assert same_data(stored, {"path": str(b)})[0] == same_data(stored, {"path": str(b)})[1]
    monkeypatch.chdir(tmp_path / "a")
    assert files.portable(a) == "x.npz" and files.portable(b) == "../b/y.npz"
    assert files.portable("/") == "/"  # farther than one folder up: absolute


def test_a_study_and_a_comparison_resume_with_a_copy_of_their_data_at_another_path(tmp_path):
    from tests.test_search import tiny

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.npz").write_bytes(b"data")
    sp = tiny(tmp_path, seed_published=False, data={"path": str(tmp_path / "d" / "x.npz")})
    study = search.open_study(sp)
    assert json.loads(study.user_attrs["contract"])["data"]["sha256"] == files.content_hash(tmp_path / "d" / "x.npz")
    shutil.move(tmp_path / "d", tmp_path / "moved")
    search.open_study({**sp, "data": {**sp["data"], "path": str(tmp_path / "moved" / "x.npz")}})
    (tmp_path / "moved" / "x.npz").write_bytes(b"other data")
    with pytest.raises(search.SearchError, match="data.path"):
        search.open_study({**sp, "data": {**sp["data"], "path": str(tmp_path / "moved" / "x.npz")}})

    folder = tmp_path / "cmp"
    folder.mkdir()
    (tmp_path / "copy.npz").write_bytes(b"other data")
    stored = {"version": 1, "data": {"name": "npz", "path": "/nowhere/x.npz",
                                     "sha256": files.content_hash(tmp_path / "copy.npz")}}
    (folder / "settings.json").write_text(json.dumps(stored))
    check_settings(folder, {"version": 1, "data": {"name": "npz", "path": str(tmp_path / "copy.npz")}})
    (tmp_path / "third.npz").write_bytes(b"third data")
    with pytest.raises(CompareError, match="data.path"):
        check_settings(folder, {"version": 1, "data": {"name": "npz", "path": str(tmp_path / "third.npz")}})
