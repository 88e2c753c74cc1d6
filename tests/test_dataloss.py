"""Data lost or overwritten (issue 31 §2): each test makes the fault for real (trains twice into one
folder, kills a retrain, hands a non-journal file to storage=, runs two processes at once, sends
SIGINT/SIGTERM, fills the disk with RLIMIT_FSIZE) and checks that nothing is lost or mixed."""
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from dlasearch import search
from dlasearch.cli import main
from dlasearch.search import keep, space

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
TRAIN = ["data.name=digits", "data.limit=200", "epochs=1", "image_size=16", "batch_size=32", "latency=false"]
RUN = ["space=hda", "params.width.choices=[8,16]", "params.growth.choices=[2.0]", "params.levels.low=1",
       "params.levels.high=1", "data.limit=300", "seed_published=false", "pruner=none"]


def run_args(*over):
    """``RUN`` with ``over`` in place of its options of the same key (a key may be given once)."""
    keys = {o.partition("=")[0] for o in over}
    return [a for a in RUN if a.partition("=")[0] not in keys] + list(over)


def dlasearch(*args, preexec_fn=None):
    return subprocess.Popen([sys.executable, "-m", "dlasearch.cli", *args], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_for(predicate, timeout=240.0, poll=0.1) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(poll)
    return False


def running(journal: Path) -> bool:
    """A RUNNING trial past sampling (it is training) in ``journal``."""
    try:
        st = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        return any("arch" in t.user_attrs for s in st.get_all_studies()
                   for t in st.get_all_trials(s._study_id, states=(TrialState.RUNNING,)))
    except Exception:
        return False


def trials_of(journal: Path, name: str):
    st = search.open_storage(str(journal), log=lambda *a: None)
    return optuna.load_study(study_name=name, storage=st)


@pytest.fixture
def spec_file(tmp_path):
    from conftest import tiny_spec

    p = tmp_path / "tiny.json"
    p.write_text(json.dumps(tiny_spec("chain", stages=[{"blocks": 1, "channels": 8}])))
    return p


# ------------------------------------------------------------ 1. train out= / name= over a finished run

def test_train_refuses_a_finished_run_and_overwrite_replaces_it_whole(tmp_path, spec_file, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", f"arch={spec_file}", *TRAIN, f"out={out}"]) == 0
    (out / "notes.txt").write_text("from the first run")
    before = snapshot(out)
    capsys.readouterr()
    assert main(["train", f"arch={spec_file}", *TRAIN, f"out={out}", "seed=1"]) == 2
    err = one_line(capsys)
    assert str(out) in err and "finished run" in err and "overwrite=true" in err
    assert snapshot(out) == before
    assert main(["train", f"arch={spec_file}", *TRAIN, f"out={out}", "seed=1", "overwrite=true"]) == 0
    assert not (out / "notes.txt").exists()  # replaced whole, not written into
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == 1
    assert json.loads((out / "metrics.json").read_text())["config"]["seed"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no work folder left
    monkeypatch.chdir(tmp_path)  # name= is refused the same way
    assert main(["train", f"arch={spec_file}", *TRAIN, "name=mine"]) == 0
    capsys.readouterr()
    assert main(["train", f"arch={spec_file}", *TRAIN, "name=mine"]) == 2
    assert "name='mine'" in one_line(capsys).split("error: ")[1]


def test_a_killed_retrain_leaves_the_old_run_as_it_was(tmp_path, spec_file):
    out = tmp_path / "run"
    assert main(["train", f"arch={spec_file}", *TRAIN, f"out={out}"]) == 0
    before = snapshot(out)
    long = ["train", f"arch={spec_file}", "data.name=digits", "epochs=100000", "image_size=16", "batch_size=32",
            "latency=false", f"out={out}", "overwrite=true"]
    for sig in (signal.SIGINT, signal.SIGKILL):
        proc = dlasearch(*long)
        assert wait_for(lambda: list(tmp_path.glob(".run.train-*/config.yaml"))), proc.communicate()[0]
        time.sleep(1.5)  # training
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode in ((130, -signal.SIGINT) if sig == signal.SIGINT else (-signal.SIGKILL,)), output
        assert snapshot(out) == before  # the old run whole: no new config.yaml beside the old model
        if sig == signal.SIGINT:  # interrupted, it cleans up its work folder
            assert not list(tmp_path.glob(".run.*")), output


# ------------------------------------------------------------ 2. storage= a file that is not a journal

@pytest.mark.parametrize("content", [b"my notes, no newline at the end", b"line one\nline two\n",
                                     b'{"a": 1}\n{"b": 2}\n', b'{"a": 1}', b"SQLite format 3\x00" + bytes(100)])
def test_storage_that_is_not_a_journal_is_refused_and_left_untouched(tmp_path, capsys, content):
    f = tmp_path / "mine.log"
    f.write_bytes(content)
    assert main(["run", *RUN, f"study.results={tmp_path / 'r'}", f"storage={f}", "trials=1", "epochs=1"]) == 2
    err = one_line(capsys)
    assert str(f) in err and "not an Optuna journal" in err, err
    assert f.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.log"]  # no .torn-*, no lock, no results


def test_an_empty_or_new_file_is_a_journal(tmp_path):
    empty = tmp_path / "empty.log"
    empty.touch()
    for f in (empty, tmp_path / "new.log"):
        assert main(["run", *RUN, f"study.results={tmp_path / 'r'}", f"storage={f}", "trials=1", "epochs=1"]) == 0
        assert [t.state for t in trials_of(f, "hda").trials] == [TrialState.COMPLETE]


# ------------------------------------------------------------ 3. two compares into one folder

def test_a_second_compare_into_a_busy_folder_is_refused(tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "patterns=chain,hda", "data=digits", "budget.params=20000", "data.limit=300",
            "batch_size=64", "threads=1", "seeds=1", f"out={out}"]
    first = dlasearch(*argv, "epochs=20")
    assert wait_for(lambda: (out / "settings.json").exists()), first.communicate()[0]
    second = dlasearch(*argv, "epochs=20")
    output, _ = second.communicate(timeout=300)
    lines = [x for x in output.strip().splitlines() if "error" in x]
    assert second.returncode == 2 and len(lines) == 1, output
    assert str(out) in lines[0] and f":{first.pid} " in lines[0] and "in use by" in lines[0], output
    first_out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, first_out
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs.pattern) == ["chain", "chain_2x", "hda"] and (runs.epochs == 20).all()
    third = dlasearch(*argv, "epochs=20")  # the lock went with its holder: a rerun reuses the runs
    output, _ = third.communicate(timeout=300)
    assert third.returncode == 0 and "0 run(s) trained" in output, output


# ------------------------------------------------------------ 4. interrupted trials are re-queued

def test_an_interrupted_trial_does_not_count_and_is_trained_on_resume(tmp_path):
    journal = tmp_path / "hda" / "journal.log"
    argv = ["run", *RUN, f"study.results={tmp_path}", "trials=2", "epochs=6"]
    proc = dlasearch(*argv)
    assert wait_for(lambda: running(journal)), proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode in (130, -signal.SIGINT), output
    (stopped,) = [t for t in trials_of(journal, "hda").trials if t.state == TrialState.FAIL]
    assert stopped.user_attrs["interrupted"] and search.counted(trials_of(journal, "hda")) == 0
    again = dlasearch(*argv)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0 and "re-queued" in output and "0/2 trials done" in output, output
    study = trials_of(journal, "hda")
    assert search.counted(study) == 2
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 2
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == stopped.number]
    assert retry.state == TrialState.COMPLETE and retry.params == stopped.params


def _bench_space(tmp_path) -> Path:
    params = {"pattern": {"choices": ["chain", "skip"]}, "levels": {"choices": [1]}, "width": {"choices": [8]},
              "growth": {"value": 2.0}, "block": {"choices": ["basic", "bottleneck"]}}
    sp = space.load("bench", {"data": {"name": "digits", "limit": 300, "flip": None},
                              "train": {"epochs": 6, "batch_size": 64}, "study": {"results": str(tmp_path)},
                              "params": params})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in sp.items() if k != "name"}))
    return path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_bench_build_finishes_on_rerun(tmp_path, sig):
    argv = ["bench", "build", "name=t", f"space={_bench_space(tmp_path)}", "repeat=0", "reps=0"]
    journal = tmp_path / "bench-t" / "journal.log"
    proc = dlasearch(*argv)
    assert wait_for(lambda: running(journal)), proc.communicate()[0]
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode in ((130, -sig) if sig == signal.SIGINT else (143, -sig)), output
    again = dlasearch(*argv)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0 and "/4 trials done" in output, output  # the grid's 4, every run
    study = trials_of(journal, "bench-t")
    assert search.counted(study) == 4  # the grid, not the grid plus the interrupted trial
    df = pd.read_csv(tmp_path / "bench" / "t" / "bench.csv")
    grid = pd.read_csv(tmp_path / "bench" / "t" / "grid.csv")
    assert (df.status == "ok").all(), df.status.tolist()  # no "interrupted"/"terminated" row
    assert len(grid) == 4 and len(df) == len(set(grid.fingerprint))


# ------------------------------------------------------------ 5. a full disk while the weights are uploaded

def _fsize_limit(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


BIG = ["params.width.choices=[32]", "params.block.choices=[basic]", "params.root_kernel.choices=[1]",
       "params.residual_root.choices=[false]", "trials=1", "epochs=1"]  # a ~3 MB checkpoint, a small journal


def test_full_disk_during_the_weights_upload_keeps_the_trial_and_the_rerun_keeps_its_weights(tmp_path):
    argv = ["run", *run_args(f"study.results={tmp_path}", *BIG)]
    first = dlasearch(*argv, preexec_fn=_fsize_limit(1_000_000))
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0 and "weights could not be kept" in output, output
    journal = tmp_path / "hda" / "journal.log"
    (t,) = trials_of(journal, "hda").trials
    assert t.state == TrialState.COMPLETE and "file too large" in t.user_attrs[keep.MISSING]
    assert keep.PENDING not in t.user_attrs  # the checkpoint could not be saved anywhere either
    assert not [p for p in (tmp_path / "hda" / "artifacts").iterdir()]  # no partial weights file
    again = dlasearch(*argv)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0 and "cannot be recovered without retraining" in output, output
    study = trials_of(journal, "hda")
    assert [x.number for x in study.trials] == [0]  # retrained for its weights, not a new trial
    from dlasearch.deploy.checkpoint import build

    model, _ = build(tmp_path / "hda" / "best" / "trial0.safetensors")
    assert model.checkpoint["name"] == "trial0"
    again = dlasearch(*argv)  # kept now: nothing is retrained again
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0 and "retraining" not in output, output


def test_a_read_only_store_is_refused_before_any_training(tmp_path, capsys):
    store = tmp_path / "hda" / "artifacts"
    store.mkdir(parents=True)
    undo = _make_read_only(store)
    try:
        assert main(["run", *run_args(f"study.results={tmp_path}", *BIG)]) == 2
    finally:
        undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study.artifacts" in err[0] and str(store) in err[0], err
    assert not (tmp_path / "hda" / "journal.log").exists()  # refused before the study was made


def test_a_store_that_turns_read_only_keeps_the_checkpoint_aside_and_the_rerun_uploads_it(tmp_path, monkeypatch):
    store = tmp_path / "hda" / "artifacts"
    store.mkdir(parents=True)
    undo = []
    upload = keep.upload

    def read_only_then_upload(*args, **kwargs):  # the store was writable when the run started
        undo.append(_make_read_only(store))
        return upload(*args, **kwargs)

    monkeypatch.setattr(keep, "upload", read_only_then_upload)
    argv = ["run", *run_args(f"study.results={tmp_path}", *BIG)]
    try:
        assert main(argv) == 0
    finally:
        for u in undo:
            u()
    monkeypatch.undo()
    journal = tmp_path / "hda" / "journal.log"
    (t,) = trials_of(journal, "hda").trials
    pending = Path(t.user_attrs[keep.PENDING])
    assert t.state == TrialState.COMPLETE and keep.MISSING in t.user_attrs and pending.is_file()
    proc = dlasearch(*argv)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "retraining" not in output, output
    assert (tmp_path / "hda" / "best" / "trial0.safetensors").is_file() and not pending.exists()


def _make_read_only(path: Path):
    """``chattr +i`` as root (chmod does not stop root), else chmod; returns the undo."""
    if os.geteuid() == 0:
        r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, check=False)
        if r.returncode:
            pytest.skip(f"running as root and chattr +i fails here ({r.stderr.strip()})")
        return lambda: subprocess.run(["chattr", "-i", str(path)], check=False)
    mode = path.stat().st_mode
    path.chmod(0o555)
    return lambda: path.chmod(mode)


# ------------------------------------------------------------ 6-9. names, export, rank, repeated keys

def test_study_names_with_at_are_refused(tmp_path, capsys):
    other = tmp_path / "hda@1234abcd"
    other.mkdir()
    (other / "trials.csv").write_text("another storage's export\n")
    for argv in (["run", *RUN, f"study.results={tmp_path}", "study=hda@1234abcd"], ["worker", "study=a@b"],
                 ["run", f"study.results={tmp_path}", "study=hda@1234abcd"],  # resuming by name
                 ["run", *run_args(f"study.results={tmp_path}", f"space={tmp_path / 'x@y.yaml'}")]):
        (tmp_path / "x@y.yaml").write_text((REPO / "search_spaces" / "hda.yaml").read_text())
        assert main(argv) == 2, argv
        assert "may not contain '@'" in one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hda@1234abcd", "x@y.yaml"]
    assert (other / "trials.csv").read_text() == "another storage's export\n"


def test_export_overwrite_replaces_the_folder_whole(tmp_path, spec_file):
    run = tmp_path / "run"
    assert main(["train", f"arch={spec_file}", *TRAIN, f"out={run}"]) == 0
    out = tmp_path / "exp"
    assert main(["export", f"from={run}", "format=py,pt2", f"out={out}"]) == 0
    assert (out / "model.pt2").is_file()
    assert main(["export", f"from={run}", "format=py", f"out={out}", "overwrite=true"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "export.json", "model.pt", "model.py"]
    assert json.loads((out / "export.json").read_text())["formats"] == ["py"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_rank_of_a_space_file_writes_under_results(tmp_path, monkeypatch):
    elsewhere = tmp_path / "spaces"
    elsewhere.mkdir()
    (elsewhere / "x.yaml").write_text((REPO / "search_spaces" / "hda.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    assert main(["rank", f"space={elsewhere / 'x.yaml'}", "n=2", "proxies=params", "batch=4"]) == 0
    assert (tmp_path / "results" / "rank" / "x-n2-seed0.csv").is_file()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["x.yaml"]


@pytest.mark.parametrize("argv, first, second", [
    (["train", "arch=dla34", "epochs=1", "epochs=2"], "epochs=1", "epochs=2"),
    (["run", "trials=2", "study.trials=3"], "trials=2", "study.trials=3"),
    (["train", "dla34", "arch=dla46_c"], "arch=dla34", "arch=dla46_c"),
    (["train", "arch=dla34", "data=a.npz", "data.path=b.npz"], "data=a.npz", "data.path=b.npz")])
def test_a_key_given_twice_is_refused_naming_both(capsys, argv, first, second):
    assert main(argv) == 2
    err = one_line(capsys)
    assert "given twice" in err and first in err and second in err, err
