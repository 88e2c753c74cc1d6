"""The command line a researcher meets: help from the option schema, --version, --cfg and config.yaml,
one spelling of the data, resume by name, progress, worker exports, zoo in a pipe, tracking."""
import io
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import tiny_spec
from dlasearch.cli import options
from dlasearch import search
from dlasearch.search import space
from dlasearch.cli import COMMANDS, main
from dlasearch.train.progress import Progress

REPO = Path(__file__).resolve().parents[1]
SMALL = {"pattern": {"value": "hda"}, "width": {"choices": [8]}, "growth": {"value": 2.0},
         "levels": {"value": 1}, "block": {"value": "basic"}, "root_kernel": {"value": 1}}


def tiny_space(tmp_path, trials=1, **over):
    base = {"study": {"results": str(tmp_path), "trials": trials, "seed": 0}, "train": {"epochs": 1},
            "data": {"limit": 200}, "params": SMALL, "seed_published": False}
    base.update(over)
    return space.load("hda", base)


# ------------------------------------------------------------------ help, version, command list

@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_lists_every_option_of_the_schema(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert main(["help", command]) == 0
    assert capsys.readouterr().out == out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    for o in options.table(command):
        assert o.name in rows, o.name
        assert o.help and (o.help.split()[0] in rows[o.name])


def test_train_help_shows_type_default_and_meaning(capsys):
    main(["train", "--help"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.split()[:1] == ["epochs"])
    assert line.split()[1:3] == ["int", "10"] and "epochs to train" in line


def test_schema_and_parser_agree():
    """Every listed option is accepted with its default; an unlisted one is refused naming --help."""
    for command in COMMANDS:
        for o in options.table(command):
            if o.default is not options.REQUIRED and o.type not in ("any",):
                value = o.default
                args = {}
                *parents, leaf = o.name.split(".")
                d = args
                for p in parents:
                    d = d.setdefault(p, {})
                d[leaf] = value
                options.check(command, args)
        with pytest.raises(Exception, match=r"--help"):
            options.check(command, {"no_such_option": 1})


def test_version_and_bare_command(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("dlasearch 0.")
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS) and "--help" in out
    assert main(["trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err


def test_wrong_type_and_typo_are_one_line(capsys):
    assert main(["train", "dla34", "epochs=x"]) == 2
    assert capsys.readouterr().err.strip() == "dlasearch train: error: epochs='x': expected an int"
    assert main(["run", "trails=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown option 'trails' (did you mean 'trials'?)" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------ --cfg, config.yaml, data spellings

def _cfg(capsys, *argv):
    assert main(list(argv)) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_print_config_resolves_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(capsys, "train", "dla34", "data=digits", "data.limit=100", "epochs=2", "--cfg")
    assert cfg["data"] == {"name": "digits", "limit": 100, "image_size": "auto"} and cfg["train"]["epochs"] == 2
    assert cfg == _cfg(capsys, "train", "arch=dla34", "data.name=digits", "data.limit=100", "epochs=2",
                       "print_config=true")
    run = _cfg(capsys, "run", "hda", "trials=3", "data=my.npz", "data.limit=50", "--cfg")
    assert run["study"]["trials"] == 3 and run["data"]["name"] == "npz" and run["data"]["path"] == "my.npz"
    assert run["data"]["limit"] == 50
    assert run["train"]["init"] == "zero-last" and run["train"]["bn_batches"] == 8  # what a new study fixes
    cmp = _cfg(capsys, "compare", "budget.params=20k", "data=digits", "data.limit=300", "data.image_size=32",
               "patterns=hda", "--cfg")
    assert cmp["patterns"] == ["chain", "hda"] and cmp["data"]["limit"] == 300 and cmp["budget"]["params"] == 2e4
    assert cmp["data"] == _cfg(capsys, "compare", "budget=20k", "limit=300", "patterns=hda", "--cfg")["data"]
    assert not list(tmp_path.iterdir())  # nothing written


def test_print_config_shows_what_an_existing_study_fixed(tmp_path, capsys):
    """`run --cfg` shows the training options the study fixed when it was created, not today's defaults."""
    search.open_study(space.load("hda", {"study": {"results": str(tmp_path)}, "train": {"bn_batches": 3}}))
    cfg = _cfg(capsys, "run", "hda", f"study.results={tmp_path}", "--cfg")
    assert cfg["train"]["bn_batches"] == 3 and cfg["train"]["nesterov"] is True


def test_train_writes_config_yaml_and_one_line_per_epoch(tmp_path, capsys):
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(tiny_spec("hda")))
    out = tmp_path / "run"
    assert main(["train", str(spec), "data=digits", "data.limit=120", "data.image_size=16", "epochs=2",
                 "batch_size=32", "latency=false", f"out={out}"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["limit"] == 120 and cfg["data"]["image_size"] == [16, 16] and cfg["train"]["epochs"] == 2
    err = capsys.readouterr().err  # not a terminal: one line per epoch, no bar
    lines = [x for x in err.splitlines() if x.startswith("epoch ")]
    assert [x.split(":")[0] for x in lines] == ["epoch 1/2", "epoch 2/2"] and "val_accuracy" in lines[0]


# ------------------------------------------------------------------ resume by name, worker, Ctrl-C

def test_resume_by_name_uses_the_stored_settings(tmp_path, monkeypatch, capsys):
    sp = tiny_space(tmp_path)
    search.run(sp, log=lambda *a: None)
    journal = tmp_path / "hda" / "journal.log"
    monkeypatch.chdir(tmp_path)  # nothing in the current folder says which space the study used
    assert main(["run", "study=hda", f"storage={journal}", "trials=2", "study.max_duplicates=1"]) == 0
    t = search.open_study(sp, create=False).get_trials()
    assert len(t) == 2  # one architecture: trained, then proposed again, which ends it (max_duplicates=1)
    assert yaml.safe_load((tmp_path / "hda" / "config.yaml").read_text())["data"]["limit"] == 200
    capsys.readouterr()
    assert main(["run", "study=hda", f"storage={journal}", "epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "only trials, timeout, workers, max_duplicates, confirm can change" in err and "epochs" in err
    assert main(["run", "study=nosuch"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_changed_contract_names_key_and_both_values(tmp_path):
    search.run(tiny_space(tmp_path), log=lambda *a: None)
    with pytest.raises(search.SearchError, match=r"train\.epochs: stored 1, given 2"):
        search.open_study(tiny_space(tmp_path, train={"epochs": 2}))


def test_worker_exports_and_says_when_finished(tmp_path, capsys):
    # one architecture: its second trial repeats the first, which ends the study (max_duplicates=1)
    sp = tiny_space(tmp_path, study={"results": str(tmp_path), "trials": 1, "seed": 0, "max_duplicates": 1})
    search.run(sp, log=lambda *a: None)
    journal = tmp_path / "hda" / "journal.log"
    csv = tmp_path / "hda" / "trials.csv"
    csv.unlink()
    assert main(["worker", "study=hda", f"storage={journal}"]) == 0
    assert "is finished: 1/1 trials" in capsys.readouterr().out and not csv.exists()
    assert main(["worker", "study=hda", f"storage={journal}", "trials=2"]) == 0
    assert len(csv.read_text().strip().splitlines()) == 3  # header + 2 trials, as `run` writes


def test_ctrl_c_still_writes_trials_csv_and_progress_is_shown(tmp_path, monkeypatch, capsys):
    from dlasearch import train as trainmod

    real = trainmod.train
    calls = []

    def train_then_interrupt(*a, **kw):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(trainmod, "train", train_then_interrupt)
    sp = tiny_space(tmp_path, trials=3, params={**SMALL, "width": {"choices": [8, 16, 24]}},
                    study={"results": str(tmp_path), "trials": 3, "seed": 0, "sampler": "grid"})
    with pytest.raises(KeyboardInterrupt):
        search.run(sp)  # printing, as the command does, so progress is shown
    rows = (tmp_path / "hda" / "trials.csv").read_text().splitlines()
    assert len(rows) == 3 and "COMPLETE" in rows[1] and "FAIL" in rows[2]
    err = capsys.readouterr().err  # not a terminal: one progress line per epoch, with count, elapsed, ETA
    line = next(x for x in err.splitlines() if x.startswith("trial 1/3 (#0) epoch 1/1"))
    assert "1/3 epochs | elapsed" in line and "| ETA " in line


# ------------------------------------------------------------------ progress

def test_progress_lines_without_a_terminal():
    buf = io.StringIO()
    p = Progress(6, "search", stream=buf)
    p.update("trial #0 epoch 1/3")
    p.drop(2)
    p.update("trial #1 epoch 1/3")
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("trial #0 epoch 1/3 | 1/6 epochs | elapsed ") and "ETA" in lines[0]
    assert "2/4 epochs" in lines[1]


# ------------------------------------------------------------------ zoo

def test_zoo_in_a_pipe_and_cached_counts_match(tmp_path, monkeypatch):
    env = {"PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    p = subprocess.run(f"{sys.executable} -m dlasearch.cli zoo | head -3", shell=True, capture_output=True,
                       text=True, env=env, cwd=tmp_path)
    assert len(p.stdout.splitlines()) == 3 and "Traceback" not in p.stderr and "Error" not in p.stderr
    from dlasearch import zoo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = zoo.table(["dla34", "dla46_c"])
    assert cached.equals(zoo.table(["dla34", "dla46_c"], cache=False))
    assert cached.params.tolist() == [15742104, 1301400]


# ------------------------------------------------------------------ tracking and optuna-dashboard

def test_tensorboard_gets_per_epoch_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(tiny_spec("chain")))
    out = tmp_path / "run"
    assert main(["train", str(spec), "data.limit=100", "data.image_size=16", "epochs=2", "latency=false",
                 f"out={out}", "log=tensorboard"]) == 0
    (events,) = {p.parent for p in (out / "tensorboard").rglob("events.*")}
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val_accuracy")] == [1, 2]


def test_tensorboard_study_names_runs_by_pattern_logs_hparams_and_is_kept_on_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sp = tiny_space(tmp_path)
    sp["log"] = "tensorboard"
    search.run(sp, log=lambda *a: None)
    (run,) = (tmp_path / "hda" / "tensorboard").iterdir()
    assert run.name == "trial0-hda"
    acc = EventAccumulator(str(run))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val_accuracy")] == [1]
    assert "hparam/val_accuracy" in acc.Tags()["scalars"]  # add_hparams' metric, in the trial's own run
    plugin = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin and b"pattern" in plugin["_hparams_/session_start_info"]
    lines = []
    search.run({**sp, "log": None, "study": {**sp["study"], "trials": 2}}, log=lines.append)  # resumed without log=
    assert any("log=tensorboard: as this study was last run" in str(x) for x in lines)
    assert sorted(p.name for p in (tmp_path / "hda" / "tensorboard").iterdir()) == ["trial0-hda", "trial1-hda"]


def test_mlflow_study_logs_each_trial(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("optuna_integration")
    import mlflow

    sp = tiny_space(tmp_path)
    sp["log"] = "mlflow"
    search.run(sp, log=lambda *a: None)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'hda' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["hda"])
    assert len(runs) == 1 and "metrics.val_accuracy" in runs.columns
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(runs.run_id[0], "train_loss")] == [1]


def test_journal_opens_as_optuna_dashboard_opens_it(tmp_path):
    """optuna-dashboard opens a journal file through JournalStorage(JournalFileBackend(path))."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    search.run(tiny_space(tmp_path), log=lambda *a: None)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "hda" / "journal.log")))
    (summary,) = optuna.get_all_study_summaries(storage)
    assert summary.study_name == "hda" and summary.n_trials == 1
    assert optuna.load_study(study_name="hda", storage=storage).trials[0].state == TrialState.COMPLETE
