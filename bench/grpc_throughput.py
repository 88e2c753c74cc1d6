"""Storage throughput: trials per second with 1, 2 and 4 workers, straight to the database and through
Optuna's gRPC storage proxy (what ``dlasearch storage serve`` runs), side by side (docs/scale.md).

Each worker is a process running trivial trials (``x**2`` with the random sampler) with Optuna
alone, so the table measures the storage and nothing else: what a study's workers pay per trial
for asking, reporting and finishing it, the ceiling of trials/s a study can reach.  SQLite in a
temporary folder always; PostgreSQL too when ``--postgres URL`` (or DLASEARCH_TEST_POSTGRES) is set.

    OMP_NUM_THREADS=1 .venv/bin/python bench/grpc_throughput.py [--seconds 3] [--repeat 3] [--workers 1 2 4]
        [--postgres postgresql://postgres@127.0.0.1:5432/dlasearch]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import socket
import statistics
import tempfile
import time
import warnings

import optuna

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # as dlasearch.search.storage_proxy: children exec anew
warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.ERROR)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(url: str, port: int) -> None:
    """The proxy as ``dlasearch storage serve`` runs it: Optuna's cache in front of an RDBStorage."""
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rdb = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    optuna.storages.run_grpc_proxy_server(optuna.storages.get_storage(rdb), host="127.0.0.1", port=port)


def _open(target: str):
    """A worker's storage as dlasearch opens it: an RDBStorage, or the proxy's client."""
    if target.startswith("grpc://"):
        host, _, port = target[len("grpc://"):].rpartition(":")
        storage = optuna.storages.GrpcStorageProxy(host=host, port=int(port))
        storage.wait_server_ready(timeout=30)
        return storage
    return optuna.storages.RDBStorage(target, engine_kwargs={"pool_pre_ping": True})


def _worker(target: str, study: str, go, seconds: float, out) -> None:
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    s = optuna.load_study(study_name=study, storage=_open(target), sampler=optuna.samplers.RandomSampler())
    done = errors = 0
    out.put("ready")
    go.wait()
    end = time.time() + seconds
    while time.time() < end:
        try:
            s.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=1)
            done += 1
        except Exception:  # noqa: BLE001 - SQLite's "database is locked" under several writers
            errors += 1
    out.put((done, errors))


def measure(target: str, workers: int, seconds: float) -> tuple[float, int]:
    """Trials/s of ``workers`` processes on a fresh study in ``target``, and the trials that failed."""
    name = f"bench{os.getpid()}_{time.time_ns()}"
    optuna.create_study(study_name=name, storage=_open(target))
    ctx = mp.get_context("spawn")
    out, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(target, name, go, seconds, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    assert [out.get(timeout=120) for _ in procs] == ["ready"] * workers  # all connected: the clock starts
    go.set()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    return sum(d for d, _ in results) / seconds, sum(e for _, e in results)


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeat", type=int, default=3, help="runs of each row, alternating direct and proxy "
                                                           "(the table shows the median and the range)")
    ap.add_argument("--postgres", default=os.environ.get("DLASEARCH_TEST_POSTGRES"),
                    help="a PostgreSQL URL (default: DLASEARCH_TEST_POSTGRES; none: SQLite only)")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        databases = [("sqlite", f"sqlite:///{tmp}/bench.db")]
        if args.postgres:
            databases.append(("postgresql", args.postgres))
        rows = []
        for label, url in databases:
            port = _free_port()
            server = ctx.Process(target=_serve, args=(url, port), daemon=True)
            server.start()
            try:
                for w in args.workers:
                    direct, proxied = [], []
                    for _ in range(args.repeat):  # alternating, so a busy moment of the machine hits both
                        direct.append(measure(url, w, args.seconds))
                        proxied.append(measure(f"grpc://127.0.0.1:{port}", w, args.seconds))
                        print(f"  {label} workers={w}: direct {direct[-1][0]:.1f}/s, proxy {proxied[-1][0]:.1f}/s",
                              flush=True)
                    rows.append((label, w, direct, proxied))
            finally:
                server.terminate()
                server.join()
    print(f"\n{_cpu()}, {os.cpu_count()} cores, {args.seconds:g} s per run, {args.repeat} runs per row "
          f"(median [min-max]), optuna {optuna.__version__}, random sampler, trivial objective\n")
    print("| database | workers | direct trials/s | through the proxy trials/s | failed trials (direct / proxy) |")
    print("|---|---:|---:|---:|---|")
    for label, w, direct, proxied in rows:
        print(f"| {label} | {w} | {_cell(direct)} | {_cell(proxied)} | {sum(e for _, e in direct)} / "
              f"{sum(e for _, e in proxied)} |")


def _cell(runs) -> str:
    rates = sorted(r for r, _ in runs)
    return f"{statistics.median(rates):.1f} [{rates[0]:.0f}-{rates[-1]:.0f}]" if len(rates) > 1 else f"{rates[0]:.1f}"


if __name__ == "__main__":
    main()
