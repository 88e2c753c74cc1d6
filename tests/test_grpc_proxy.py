"""Optuna's gRPC storage proxy (`dlasearch storage serve`, storage=grpc://HOST:PORT) on loopback.

In front of an SQLite file everywhere; in front of PostgreSQL (DLASEARCH_TEST_POSTGRES, which
.ci/run starts) with two workers, and with the proxy killed and restarted in the middle of a study.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import with_sections
from dlasearch import search
from dlasearch.cli import main
from dlasearch.search import guard, space, storage_proxy as proxy

REPO = Path(__file__).resolve().parents[1]
SMALL = {"pattern": {"value": "hda"}, "width": {"choices": [8]}, "growth": {"value": 2.0},
         "levels": {"low": 1, "high": 2}, "block": {"choices": ["basic", "bottleneck"]},
         "root_kernel": {"choices": [1, 3]}}
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def tiny(tmp_path, **over):
    """A 300-image slice of digits, 1-epoch training and hda at width 8: a few seconds per trial."""
    base = {"study": {"results": str(tmp_path), "trials": 2, "seed": 0, "threads": 1}, "train": {"epochs": 1},
            "data": {"limit": 300}, "params": SMALL, "seed_published": False}
    return space.load("hda", with_sections(base, over))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(storage: str, port: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "dlasearch.cli", "storage", "serve", f"storage={storage}",
                          "host=127.0.0.1", f"port={port}"], cwd=REPO, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        if p.poll() is not None:
            raise AssertionError(f"the proxy stopped: {p.stdout.read()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return p
        time.sleep(0.1)
    p.kill()
    raise AssertionError("the proxy did not start listening in 30 s")


def _stop(p: subprocess.Popen, sig=signal.SIGTERM) -> str:
    if p.poll() is None:
        p.send_signal(sig)
    out, _ = p.communicate(timeout=30)
    return out


@contextmanager
def served_at(storage: str, port: int):
    """A proxy in front of ``storage`` on loopback ``port`` for the block."""
    p = _start(storage, port)
    try:
        yield
    finally:
        _stop(p)


@contextmanager
def served(storage: str):
    """A proxy in front of ``storage`` on a free loopback port; yields ``(url, port)``."""
    port = _free_port()
    with served_at(storage, port):
        yield f"grpc://127.0.0.1:{port}", port


def _pg_url():
    """The PostgreSQL of DLASEARCH_TEST_POSTGRES, as tests/test_search.py finds it (CI must have one)."""
    url = os.environ.get("DLASEARCH_TEST_POSTGRES")
    if url:
        try:
            import sqlalchemy
            sqlalchemy.create_engine(url).connect().close()
            return url
        except Exception as e:  # noqa: BLE001 - any connection failure means no server
            if os.environ.get("CI"):
                pytest.fail(f"PostgreSQL at {url} is not reachable in CI: {e}")
    if os.environ.get("CI"):
        pytest.fail("CI must provide DLASEARCH_TEST_POSTGRES (.ci/run starts a server)")
    pytest.skip("no PostgreSQL server: set DLASEARCH_TEST_POSTGRES=postgresql://... (.ci/run does)")


def _unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}_{int(time.time() * 1000) % 10**8}"


def _finished_without_loss(trials, total: int) -> None:
    """Exactly ``total`` counted trials, every one finished; the rest (stale, retried) are not counted."""
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    counted = [t for t in trials if guard.counts(t)]
    assert len(counted) == total, [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted), \
        [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in counted]


def _run(tmp_path, name: str, storage: str, *extra: str, env=None, epochs=1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlasearch.cli", "run", "hda", f"study={name}",
                             f"storage={storage}", f"study.results={tmp_path}", "data.limit=300", f"epochs={epochs}",
                             "params.width.choices=[8]", "params.growth.choices=[2.0]", "seed_published=false",
                             "study.threads=1", *extra], cwd=REPO, env=env or ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


# ------------------------------------------------------------------ everywhere: SQLite behind the proxy

def test_a_run_through_the_proxy_in_front_of_sqlite(tmp_path):
    """`run` through grpc:// stores its trials in the database behind the proxy, exports them under a
    folder keyed by the grpc URL (as for a database URL), keeps weights, resumes, and `export` finds them."""
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    with served(db) as (url, _):
        sp = tiny(tmp_path, study={"storage": url, "keep": "all", "name": "viaproxy", "trials": 1})
        summary = search.run(sp, log=lambda *a: None)
        assert Path(summary["dir"]) == search.results_dir(sp) and Path(summary["dir"]).name.startswith("viaproxy@")
        assert (Path(summary["dir"]) / "trials.csv").is_file()
        search.run(tiny(tmp_path, study={"storage": url, "keep": "all", "name": "viaproxy", "trials": 2}),
                   log=lambda *a: None)
        direct = optuna.load_study(study_name="viaproxy", storage=db).get_trials()
        _finished_without_loss(direct, 2)
        done = [t.number for t in direct if t.state == TrialState.COMPLETE]
        assert done and (Path(summary["dir"]) / "artifacts").is_dir()
        out = tmp_path / "exported"
        assert main(["export", "study=viaproxy", f"trial={done[0]}", f"storage={url}", f"out={out}",
                     "format=py"]) == 0
        assert (out / "model.py").is_file()


def test_a_bad_or_silent_proxy_url_is_one_line(capsys):
    for url, words in [("grpc://localhost:notaport", "not a port number"), ("grpc://localhost", "grpc://HOST:PORT")]:
        assert main(["worker", "study=x", f"storage={url}"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and url in err and words in err, err
    silent = f"grpc://127.0.0.1:{_free_port()}"  # nothing listens there
    assert main(["worker", "study=x", f"storage={silent}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and silent in err and "dlasearch storage serve" in err, err


def test_serve_refuses_a_busy_port_and_a_journal_in_one_line(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["storage", "serve", f"storage=sqlite:///{tmp_path / 'x.db'}", "host=127.0.0.1",
                     f"port={port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"port {port}" in err and "in use" in err, err
    assert main(["storage", "serve", f"storage={tmp_path / 'journal.log'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a journal file" in err, err
    assert not (tmp_path / "x.db").exists()  # refused before anything was created


def test_a_second_proxy_on_the_same_port_is_refused(tmp_path):
    """gRPC listens with SO_REUSEPORT: without the check, a second proxy would share the port silently."""
    with served(f"sqlite:///{tmp_path / 'a.db'}") as (_, port):
        p = subprocess.run([sys.executable, "-m", "dlasearch.cli", "storage", "serve",
                            f"storage=sqlite:///{tmp_path / 'b.db'}", "host=127.0.0.1", f"port={port}"],
                           cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "in use" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_a_worker_that_loses_the_proxy_stops_in_one_line_and_the_rerun_finishes(tmp_path):
    """The proxy stays away longer than DLASEARCH_GRPC_PATIENCE: the worker stops with one line naming
    the URL and what to do; with the proxy back, the same command resumes and no trial is lost."""
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    port = _free_port()
    url = f"grpc://127.0.0.1:{port}"
    p = _start(db, port)
    run = _run(tmp_path, "patience", url, "trials=1", env={**ENV, proxy.PATIENCE_ENV: "1"}, epochs=5)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and run.poll() is None:  # kill it once a trial is under way
            try:
                if optuna.load_study(study_name="patience", storage=db).get_trials(deepcopy=False):
                    break
            except KeyError:
                pass
            time.sleep(0.2)
        p.kill()
        p.wait()
        out, _ = run.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert run.returncode == 2, out
    assert "Traceback" not in out and "RpcError" not in out and "StatusCode" not in out, out
    line = [ln for ln in out.splitlines() if "error" in ln]
    assert len(line) == 1 and url in line[0] and "dlasearch storage serve" in line[0] and "rerun" in line[0], out
    with served_at(db, port):
        again = _run(tmp_path, "patience", url, "trials=1", epochs=5)
        out, _ = again.communicate(timeout=300)
        assert again.returncode == 0, out
    _finished_without_loss(optuna.load_study(study_name="patience", storage=db).get_trials(), 1)


# ------------------------------------------------------------------ PostgreSQL behind the proxy (CI)

def test_two_workers_on_one_proxy_in_front_of_postgres(tmp_path):
    """Two worker processes share one proxy: claims, heartbeats and kept weights (a shared
    study.artifacts= folder) go through it; the study finishes with every trial counted once."""
    pg = _pg_url()
    name = _unique("grpc")
    shared = tmp_path / "shared-artifacts"
    try:
        with served(pg) as (url, _):
            sp = tiny(tmp_path, study={"trials": 3, "workers": 2, "storage": url, "name": name, "keep": "all",
                                       "artifacts": str(shared)})
            lines = []
            search.run(sp, log=lines.append)
            assert not [ln for ln in lines if "exit codes" in ln]  # gRPC's fork handlers once aborted one
            t = optuna.load_study(study_name=name, storage=pg).get_trials()
            _finished_without_loss(t, 3)
            assert len({x.user_attrs.get("worker") for x in t}) == 2
            assert all(x.user_attrs.get("heartbeat") for x in t if guard.counts(x))  # a surplus one never ran
            trained = [x.user_attrs.get("fingerprint") for x in t if x.state in (TrialState.COMPLETE, TrialState.PRUNED)
                       and "duplicate_of" not in x.user_attrs and x.user_attrs.get("fingerprint")]
            assert len(trained) == len(set(trained))  # an architecture is trained once, the others reuse it
            kept = {x.user_attrs.get("weights_artifact") for x in t
                    if x.state == TrialState.COMPLETE and "duplicate_of" not in x.user_attrs}  # a repeat reuses
            assert kept and all(k and (shared / k).is_file() for k in kept)
            assert (search.results_dir(sp) / "trials.csv").is_file()
    finally:
        optuna.delete_study(study_name=name, storage=pg)


def test_the_proxy_killed_mid_study_and_restarted(tmp_path):
    """SIGKILL the proxy while two workers train and start it again: the workers wait for it
    (DLASEARCH_GRPC_PATIENCE), finish their trials through the new one (reports, heartbeats, results)
    and the study; no trial is lost or counted twice."""
    pg = _pg_url()
    name = _unique("grpckill")
    port = _free_port()
    url = f"grpc://127.0.0.1:{port}"
    p = _start(pg, port)
    run = _run(tmp_path, name, url, "trials=2", "workers=2", epochs=4)
    try:
        deadline, training = time.time() + 180, []
        while time.time() < deadline and run.poll() is None and not training:  # kill it under a training trial
            try:
                t = optuna.load_study(study_name=name, storage=pg).get_trials(deepcopy=False)
            except KeyError:
                t = []
            training = [x for x in t if x.state == TrialState.RUNNING and x.user_attrs.get("heartbeat")]
            time.sleep(0.2)
        assert training and run.poll() is None, run.stdout.read()
        p.kill()
        p.wait()
        time.sleep(2)
        p = _start(pg, port)
        out, _ = run.communicate(timeout=300)
        assert run.returncode == 0 and "Traceback" not in out and "exit codes" not in out, out  # both survived
        t = optuna.load_study(study_name=name, storage=pg).get_trials()
        _finished_without_loss(t, 2)
        assert training[0].number in [x.number for x in t if x.state.is_finished() and guard.counts(x)]
    finally:
        if run.poll() is None:
            run.kill()
        _stop(p)
        try:
            optuna.delete_study(study_name=name, storage=pg)
        except KeyError:
            pass
