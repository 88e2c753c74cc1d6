"""Fault injection: real journals, truncations, file-size limits, read-only folders and signals.

Each test breaks something for real and then checks that no COMPLETE trial (or finished training) is
lost and that the next command succeeds.  Studies are tiny: 300 digits images, 1 epoch."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dlasearch import search, train
from dlasearch.train import runs
from dlasearch.search import space
from dlasearch.cli import main

REPO = Path(__file__).resolve().parents[1]
FIXED = {"pattern": {"value": "hda"}, "width": {"value": 8}, "growth": {"value": 2.0}, "levels": {"value": 1},
         "block": {"value": "basic"}, "root_kernel": {"value": 1}, "residual_root": {"value": False}}
SMALL = {"pattern": {"value": "hda"}, "width": {"choices": [8, 16]}, "growth": {"value": 2.0},
         "levels": {"low": 1, "high": 2}, "block": {"choices": ["basic", "bottleneck"]}, "root_kernel": {"value": 1}}
ARGS = ["params.width.choices=[8,16]", "params.growth.choices=[2.0]", "data.limit=300", "epochs=1", "seed_published=false", "pruner=none"]
QUIET = {"log": lambda *a: None}


def tiny(results, trials=2, params=SMALL, **study):
    return space.load("hda", {"study": {"results": str(results), "trials": trials, "seed": 0, "pruner": "none",
                                        **study},
                              "train": {"epochs": 1}, "data": {"limit": 300}, "params": params,
                              "seed_published": False})


def all_trials(results, name="hda"):
    st = search.open_storage(str(Path(results) / name / "journal.log"), log=lambda *a: None)
    return optuna.load_study(study_name=name, storage=st).get_trials()


def cli(results, *args, preexec_fn=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    keys = {a.partition("=")[0] for a in args}  # a key may be given once: args replace ARGS's
    return subprocess.Popen([sys.executable, "-m", "dlasearch.cli", "run", "space=hda",
                             *[a for a in ARGS if a.partition("=")[0] not in keys],
                             f"study.results={results}", *args], cwd=REPO, env=env, preexec_fn=preexec_fn,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_running(journal_path: Path, attr="arch", timeout=240) -> bool:
    """Poll the journal until a RUNNING trial has ``attr`` (it is past sampling, i.e. training)."""
    end = time.time() + timeout
    while time.time() < end:
        if journal_path.exists():
            try:
                st = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal_path)))
                for s in st.get_all_studies():
                    for t in st.get_all_trials(s._study_id, states=(TrialState.RUNNING,)):
                        if attr in t.user_attrs:
                            return True
            except Exception:
                pass
        time.sleep(0.5)
    return False


def completed(trials) -> dict:
    return {t.number: t.values for t in trials if t.state == TrialState.COMPLETE}


@pytest.fixture
def readonly():
    """Make a path read-only for real: ``chattr +i`` as root (chmod does not stop root), else chmod."""
    undo = []

    def make(path: Path):
        if os.geteuid() == 0:
            if not shutil.which("chattr"):
                pytest.skip("running as root and chattr is missing: chmod cannot make a folder read-only for root")
            r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
            if r.returncode:
                pytest.skip(f"running as root and this file system refuses chattr +i ({r.stderr.strip()})")
            undo.append(["chattr", "-i", str(path)])
        else:
            mode = path.stat().st_mode
            path.chmod(0o555 if path.is_dir() else 0o444)
            undo.append(lambda: path.chmod(mode))
    yield make
    for u in reversed(undo):
        subprocess.run(u) if isinstance(u, list) else u()


# ------------------------------------------------------------ journals

def test_torn_journal_tail_is_moved_aside_and_resume_keeps_complete_trials(tmp_path):
    search.run(tiny(tmp_path, 2), **QUIET)
    log_path = tmp_path / "hda" / "journal.log"
    before = completed(all_trials(tmp_path))
    assert before
    with open(log_path, "r+b") as f:  # a kill in the middle of the last record
        f.truncate(log_path.stat().st_size - 5)
    lines = []
    search.run(tiny(tmp_path, 3), log=lines.append)
    assert any("incomplete" in str(x) and "torn" in str(x) for x in lines), lines
    torn = list(tmp_path.glob("hda/journal.log.torn-*"))
    assert len(torn) == 1 and not torn[0].read_bytes().endswith(b"\n")
    t = all_trials(tmp_path)
    for number, values in before.items():  # the torn record's trial is failed and retried; all others kept
        assert t[number].values == values or (t[number].user_attrs.get("stale")
                                              and any(x.user_attrs.get("retry_of") == number for x in t))
    assert search.counted(optuna.load_study(study_name="hda", storage=search.open_storage(str(log_path)))) == 3
    assert not [x for x in t if x.state == TrialState.RUNNING]
    for line in log_path.read_bytes().splitlines():
        json.loads(line)  # every record readable: nothing was appended after half a line


def test_garbage_in_the_middle_of_a_journal_is_refused_and_never_rewritten(tmp_path, capsys):
    search.run(tiny(tmp_path, 1), **QUIET)
    log_path = tmp_path / "hda" / "journal.log"
    lines = log_path.read_bytes().splitlines(keepends=True)
    damaged = b"".join(lines[:2] + [b"{not json\n"] + lines[2:])
    log_path.write_bytes(damaged)
    assert main(["run", "space=hda", f"study.results={tmp_path}", *ARGS, "trials=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(log_path) in err[0] and "line 3" in err[0], err
    assert log_path.read_bytes() == damaged


def _fsize_limit(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_full_disk_during_a_run_gives_one_line_and_the_next_run_succeeds(tmp_path):
    first = cli(tmp_path, "trials=1")
    assert first.wait(timeout=600) == 0, first.stdout.read()
    log_path = tmp_path / "hda" / "journal.log"
    before = completed(all_trials(tmp_path))
    size = log_path.stat().st_size
    proc = cli(tmp_path, "trials=3", preexec_fn=_fsize_limit(size + 1500))  # room for a few records only
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2, out
    assert "cannot write the journal" in out and "Traceback" not in out, out
    assert log_path.read_bytes().endswith(b"\n")
    again = cli(tmp_path, "trials=3")
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    t = all_trials(tmp_path)
    assert {n: t[n].values for n in before} == before
    assert not [x for x in t if x.state == TrialState.RUNNING]


def test_read_only_journal_is_one_line_naming_the_path(tmp_path, readonly, capsys):
    first = cli(tmp_path, "trials=1")
    assert first.wait(timeout=600) == 0, first.stdout.read()
    readonly(tmp_path / "hda" / "journal.log")
    assert main(["run", "space=hda", f"study.results={tmp_path}", *ARGS, "trials=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "journal.log" in err[0] and ("permission" in err[0] or "read-only" in err[0]), err
    study, _ = search.find_study("hda", str(tmp_path / "hda" / "journal.log"))  # still readable, for reports
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]


# ------------------------------------------------------------ train out=

@pytest.fixture
def spec_file(tmp_path):
    from conftest import tiny_spec

    p = tmp_path / "tiny.json"
    p.write_text(json.dumps(tiny_spec("chain", stages=[{"blocks": 1, "channels": 8}])))
    return p


def test_train_checks_out_before_training(tmp_path, spec_file, readonly, monkeypatch, capsys):
    target = tmp_path / "ro"
    target.mkdir()
    readonly(target)
    monkeypatch.setattr(runs, "train", lambda *a, **k: pytest.fail("trained before checking out="))
    assert main(["train", f"arch={spec_file}", "data.name=digits", "data.limit=100", "epochs=1",
                 f"out={target}/run", "latency=false"]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and ("permission" in err or "read-only" in err), err


def test_train_result_survives_an_output_folder_that_breaks_during_training(tmp_path, spec_file, readonly,
                                                                          monkeypatch, capsys):
    target = tmp_path / "out"
    target.mkdir()
    real = runs.train

    def train_then_break(*a, **k):
        result = real(*a, **k)
        readonly(target / "run")  # the run folder (config.yaml is already in it) turns read-only while training
        return result
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runs, "train", train_then_break)
    assert main(["train", f"arch={spec_file}", "data.name=digits", "data.limit=100", "epochs=1",
                 f"out={target}/run", "latency=false"]) == 2
    err = capsys.readouterr().err
    assert "saved to" in err, err
    saved = Path(err.split("saved to ")[1].split(" instead")[0])
    record = json.loads((saved / "metrics.json").read_text())
    assert record["status"] == "ok" and 0 <= record["metrics"]["val_accuracy"] <= 1


# ------------------------------------------------------------ names, storages, failed starts

def test_study_names_are_names_not_paths(tmp_path, capsys):
    for argv in (["run", "space=hda", f"study.results={tmp_path}", "study=../../x"],
                 ["run", "space=hda", f"study.results={tmp_path}", "study=/abs/x"],
                 ["worker", "study=../x"], ["report", "study=../x"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "plain folder name" in err[0], err
    assert not (tmp_path.parent / "x").exists() and not Path("/abs").exists()


def test_another_storage_never_overwrites_the_local_exports(tmp_path):
    local = search.run(tiny(tmp_path, 1), **QUIET)
    csv = (Path(local["dir"]) / "trials.csv").read_bytes()
    other = search.run(tiny(tmp_path, 1, storage=str(tmp_path / "elsewhere.log"), seed=1), **QUIET)
    assert Path(other["dir"]) != Path(local["dir"])
    assert (Path(local["dir"]) / "trials.csv").read_bytes() == csv
    assert (Path(other["dir"]) / "storage.txt").read_text().strip() == str(tmp_path / "elsewhere.log")


def test_a_failed_start_leaves_the_study_name_usable(tmp_path):
    bad = space.load("hda", {"study": {"results": str(tmp_path), "trials": 1}, "train": {"lr": -1},
                             "data": {"limit": 300}, "params": FIXED, "seed_published": False})
    with pytest.raises(train.TrainError, match="lr"):
        search.run(bad, **QUIET)
    assert not (tmp_path / "hda" / "journal.log").exists()
    search.run(tiny(tmp_path, 1, params=FIXED), **QUIET)
    assert len(all_trials(tmp_path)) == 1


# ------------------------------------------------------------ signals and workers

def test_sigterm_fails_the_running_trial_as_terminated_and_exits_143(tmp_path):
    proc = cli(tmp_path, "trials=2", "epochs=30")
    assert wait_running(tmp_path / "hda" / "journal.log")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    t = all_trials(tmp_path)
    assert [x.state for x in t] == [TrialState.FAIL] and t[0].user_attrs["fail_reason"] == "terminated (SIGTERM)"


def _children_of(pid: int) -> list[int]:
    """The worker processes ``run`` started (they carry its pid in DLASEARCH_PARENT)."""
    kids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if f"DLASEARCH_PARENT={pid}".encode() in (p / "environ").read_bytes().split(b"\0"):
                    kids.append(int(p.name))
            except OSError:
                pass
    return kids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the workers")
def test_workers_stop_when_their_parent_is_killed(tmp_path):
    proc = cli(tmp_path, "trials=4", "epochs=30", "workers=2")
    assert wait_running(tmp_path / "hda" / "journal.log")
    kids = _children_of(proc.pid)
    assert len(kids) == 2
    proc.kill()
    proc.wait()
    end = time.time() + 120
    while time.time() < end and [k for k in kids if Path(f"/proc/{k}").exists()
                                 and "Z" not in (Path(f"/proc/{k}/stat").read_text().split()[2:3] or ["Z"])]:
        time.sleep(0.5)
    assert not [k for k in kids if Path(f"/proc/{k}").exists()
                and (Path(f"/proc/{k}/stat").read_text().split()[2] != "Z")], "orphaned workers still running"
    t = all_trials(tmp_path)
    assert not [x for x in t if x.state == TrialState.RUNNING]
    assert all(x.user_attrs.get("fail_reason") == "terminated (SIGTERM)" for x in t if x.state == TrialState.FAIL)


def test_workers_never_overshoot_and_never_train_one_architecture_twice(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dlasearch.cli", "run", "space=hda", f"study.results={tmp_path}",
                           "params.width.choices=[8]", "params.growth.choices=[2.0]", "params.residual_root.choices=[false]",
                           "params.levels.low=1", "params.levels.high=1", "params.block.choices=[basic]",
                           "params.root_kernel.choices=[1]", "data.limit=300", "epochs=1", "seed_published=false",
                           "pruner=none", "trials=2", "workers=3", "study.max_duplicates=2"],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    t = all_trials(tmp_path)
    kept = [x for x in t if not x.user_attrs.get("surplus") and not x.user_attrs.get("stale")]
    trained = [x for x in kept if x.state == TrialState.COMPLETE and "duplicate_of" not in x.user_attrs]
    assert len(trained) == 1 and all(x.user_attrs.get("duplicate_of") == trained[0].number
                                     for x in kept if x is not trained[0]), \
        [(x.number, x.state, x.user_attrs.get("fail_reason")) for x in t]
    # one architecture: its repeats count nothing against trials=2, and the cap ends the study (a worker
    # already past its check may answer one more)
    repeats = [x for x in kept if x.user_attrs.get("repeated")]
    assert search.counted(optuna.load_study(study_name="hda", storage=search.open_storage(
        str(tmp_path / "hda" / "journal.log")))) == 1
    assert 2 <= len(repeats) <= 2 + 3 - 1 and len(kept) == 1 + len(repeats)
    assert "study.max_duplicates=2" in proc.stdout


# ------------------------------------------------------------ checked before training, no tracebacks

@pytest.mark.parametrize("name", ["dla34", "dla46x_c", "dla60x", "dla34up"])
def test_params_counted_from_the_ir_match_the_built_module(name):
    from dlasearch import measure
    from dlasearch.search import precheck
    from dlasearch import zoo
    from dlasearch.ir import to_module

    if name not in zoo.names():
        pytest.skip(f"{name} not in the zoo")
    ir = zoo.ir(name)
    assert precheck.count_params(ir) == measure.params(to_module(ir))


def test_impossible_budget_and_too_deep_spaces_are_refused_before_any_trial(tmp_path, capsys):
    for argv in (["budget.params=1"], ["params.levels.low=16", "params.levels.high=16", "budget.params=1"]):
        assert main(["run", "space=hda", f"study.results={tmp_path}", "data.limit=300", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("budget.params" in err[0] or "levels" in err[0]), err
    assert not list(tmp_path.rglob("journal.log"))


def _bad_inputs(tmp_path):
    import numpy as np

    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "binary.json").write_bytes(bytes(range(256)))
    x, y = np.zeros((20, 8, 8), np.uint8), np.arange(20) % 2
    np.savez(tmp_path / "ok.npz", x_train=x, y_train=y)
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:300])
    np.savez(tmp_path / "huge.npz", x_train=x, y_train=np.where(y == 1, 2 ** 63 - 1, 0))
    np.savez(tmp_path / "one.npz", x_train=x, y_train=y * 0)
    from conftest import tiny_spec  # 7 stride-2 stages: total stride 256, i.e. 8 px digits grown 32x
    (tmp_path / "deep.json").write_text(json.dumps(tiny_spec("chain", stages=[{"blocks": 1, "channels": 8}] * 7)))
    return [["run", "space=hda", "timeout=-5"], ["worker", "study=x", "threads=abc"],
            ["worker", "study=x", "trials=abc"], ["worker", "study=x", "index=abc"],
            ["worker", "study=x", "threads=-1"], ["run", f"space={tmp_path / 'list.yaml'}"],
            ["train", f"arch={tmp_path / 'binary.json'}"], ["train", "arch=dla34", f"data={tmp_path / 'trunc.npz'}"],
            ["train", "arch=dla34", f"data={tmp_path / 'huge.npz'}"],
            ["train", "arch=dla34", f"data={tmp_path / 'one.npz'}"],
            ["train", f"arch={tmp_path / 'deep.json'}", "data=digits"]]


def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in _bad_inputs(tmp_path):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"dlasearch {argv[0]}: error:"), (argv, err)
