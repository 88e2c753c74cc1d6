"""Optuna's gRPC storage proxy: ``dlasearch storage serve`` and the ``grpc://host:port`` storage URL.

Optuna's guidance: a journal file or a database on one machine, a database for several, and its
gRPC storage proxy in front of the database for very many.  The proxy holds the database
connections (a handful, not one or more per worker: PostgreSQL's connection limit, optuna#1347)
and a cache of the trials, and each worker asks it only for the trials changed since its last read
(not every trial, every time: optuna#6023).

``serve`` runs ``optuna.storages.run_grpc_proxy_server`` in front of an RDB URL; ``connect`` opens
``optuna.storages.GrpcStorageProxy`` for ``grpc://host:port``.  A worker that loses the proxy
retries for ``DLASEARCH_GRPC_PATIENCE`` seconds (default ``PATIENCE``), so a restarted proxy is
picked up where it left off; past that it stops with one line (``ProxyError``) and the same
command resumes the study.  This is the only module that touches Optuna's gRPC internals.
"""
from __future__ import annotations

import errno
import functools
import os
import socket
import time
import warnings

import optuna
from optuna.storages._grpc.client import GrpcClientCache, GrpcStorageProxy  # neither imports grpc yet

from dlasearch.errors import ProxyError, SearchError, behind

__all__ = ['SCHEME', 'PATIENCE', 'PATIENCE_ENV', 'CONNECT', 'DEFAULT_PORT', 'is_grpc', 'address', 'connect',
           'lost', 'serve', 'check_port', 'PatientGrpcStorage']

SCHEME = "grpc://"
PATIENCE = 30.0  # seconds a worker waits for a lost proxy before it stops (keep it below study.grace)
PATIENCE_ENV = "DLASEARCH_GRPC_PATIENCE"
CONNECT = 5.0  # seconds the first connection may take before "no proxy answers"
DEFAULT_PORT = 13000  # Optuna's
# codes Optuna's client turns into KeyError, DuplicatedStudyError, UpdateFinishedTrialError, ValueError
_TRANSLATED = ("NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION", "INVALID_ARGUMENT")


def is_grpc(url) -> bool:
    return str(url).startswith(SCHEME)


def _serve_hint(host: str, port) -> str:
    return f"`dlasearch storage serve storage=DATABASE_URL host={host} port={port}`"


def address(url: str) -> tuple[str, int]:
    """``grpc://host:port`` -> ``(host, port)``; anything else is one ``SearchError``."""
    rest = url[len(SCHEME):].rstrip("/")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")  # grpc://[::1]:13000
    if not sep or not host or "/" in rest:
        raise SearchError(f"storage={url!r}: expected grpc://HOST:PORT, e.g. grpc://localhost:{DEFAULT_PORT} "
                          f"(the address `dlasearch storage serve` listens on)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SearchError(f"storage={url!r}: port {port!r} is not a port number (1-65535); expected "
                          f"grpc://HOST:PORT, e.g. grpc://{host}:{DEFAULT_PORT}")
    return host, int(port)


def _patience() -> float:
    raw = os.environ.get(PATIENCE_ENV)
    if raw is None:
        return PATIENCE
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise SearchError(f"{PATIENCE_ENV}={raw!r}: expected seconds, a number >= 0")
    return value


def connect(url: str):
    """An Optuna storage for ``grpc://host:port``: checks that a proxy answers there (``CONNECT`` s)."""
    host, port = address(url)
    patience = _patience()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = PatientGrpcStorage(host=host, port=port, url=url, patience=patience)
    try:
        storage.wait_server_ready(timeout=CONNECT)
    except ConnectionError:
        storage.close()
        raise SearchError(f"storage={url!r}: no Optuna storage proxy answers at {host}:{port} (waited "
                          f"{CONNECT:.0f}s); start one there with {_serve_hint(host, port)}, or fix the "
                          f"address") from None
    return storage


def _no_fork_handlers() -> None:
    """gRPC's fork handlers off, before grpc is imported: ``run workers=K`` forks its workers (then
    execs them) while this process holds a channel, and with the handlers on about one fork in 40
    aborted the child (SIGABRT, "epoll_wait error: Bad file descriptor").  No child here uses the
    parent's channel: each worker execs and connects anew."""
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


class PatientGrpcStorage(GrpcStorageProxy):
    """Optuna's ``GrpcStorageProxy`` with a short reconnect backoff and calls that wait for a lost proxy
    (``_Patient``).  grpc and protobuf are imported when one is made: a third of a second that runs
    without a proxy never pay (Optuna's client imports them lazily too)."""

    def __init__(self, *, host: str, port: int, url: str, patience: float):
        self._url, self._patience = url, patience
        super().__init__(host=host, port=port)

    def _setup(self) -> None:  # Optuna's, with the channel options and the patient stub
        _no_fork_handlers()
        import grpc
        from optuna.storages._grpc.auto_generated import api_pb2_grpc

        self._channel = grpc.insecure_channel(f"{self._host}:{self._port}", options=[
            ("grpc.max_receive_message_length", -1), ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)])
        self._stub = _Patient(api_pb2_grpc.StorageServiceStub(self._channel), self._url, self._host,
                              self._port, self._patience, grpc)
        self._cache = GrpcClientCache(self._stub)


class _Patient:
    """A gRPC stub whose calls retry while the proxy is unavailable (stopped, restarting) for up to
    ``patience`` seconds, then raise one ``ProxyError``; the codes Optuna's client translates pass.

    A retried call was not delivered in the usual case (no connection); one the proxy was killed in
    the middle of may run twice: a trial created twice is an orphan RUNNING trial that ``fail_stale``
    fails after ``study.grace`` (not counted), a claim made twice is refused the second time."""

    def __init__(self, stub, url: str, host: str, port: int, patience: float, grpc):
        self._stub, self._url, self._host, self._port = stub, url, host, port
        self._patience, self._grpc = patience, grpc

    def __getattr__(self, name: str):
        call = getattr(self._stub, name)
        grpc = self._grpc

        def patient(request, **kwargs):
            deadline, delay = time.monotonic() + self._patience, 0.1
            while True:
                try:
                    return call(request, **kwargs)
                except grpc.RpcError as e:
                    code = e.code()
                    if code is not None and code.name in _TRANSLATED:
                        raise
                    if code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
                        time.sleep(delay)
                        delay = min(2 * delay, 2.0)
                        continue
                    raise ProxyError(self._lost(e)) from None

        return patient

    def _lost(self, e) -> str:
        code = e.code()
        if code == self._grpc.StatusCode.UNAVAILABLE:
            return (f"storage={self._url!r}: lost the Optuna storage proxy at {self._host}:{self._port} (no "
                    f"answer for {self._patience:.0f}s; {PATIENCE_ENV}=SECONDS waits longer); restart it with "
                    f"{_serve_hint(self._host, self._port)} and rerun the same command to resume")
        details = (e.details() or "").strip().splitlines()
        return (f"storage={self._url!r}: the storage proxy answered {code.name if code else 'an error'}"
                f"{': ' + details[-1] if details else ''}; check the database behind it (the proxy's "
                f"output says more) and rerun the same command to resume")


def lost(e: BaseException) -> ProxyError | None:
    """The ``ProxyError`` behind ``e`` (Optuna masks it when failing the trial raises it again), or None."""
    return behind(e, ProxyError)


# ------------------------------------------------------------------ the server


def check_port(host: str, port: int) -> None:
    """Refuse (one ``SearchError``) an address this machine cannot listen on: a port in use, a host
    that is not one of its addresses.  gRPC binds with ``SO_REUSEPORT``, so a second proxy on a
    port would share it silently; a plain bind without it fails on any listener there."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                   flags=socket.AI_PASSIVE)[0]
        with socket.create_server(addr, family=family):
            pass
    except socket.gaierror as e:
        raise SearchError(f"storage serve: host={host!r}: unknown host ({e.strerror}); use an address of this "
                          f"machine, 0.0.0.0 for all of them") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise SearchError(f"storage serve: port {port} on {host} is in use (another proxy or program); "
                              f"stop it or choose another port=") from None
        if e.errno == errno.EACCES:
            raise SearchError(f"storage serve: port {port}: permission denied (ports below 1024 need root); "
                              f"choose port= above 1023") from None
        raise SearchError(f"storage serve: cannot listen on {host}:{port}: {e.strerror or e}; use an address "
                          f"of this machine (0.0.0.0 for all of them)") from None


def _shown(url: str) -> str:
    """``url`` without its password (printed, so it lands in job logs)."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL sqlalchemy cannot parse is reported when it is opened
        return url


def serve(url: str, host: str = "localhost", port: int = DEFAULT_PORT,
          log=functools.partial(print, flush=True)) -> None:
    """``dlasearch storage serve``: Optuna's gRPC proxy in front of database ``url`` until stopped."""
    url = str(url)
    if is_grpc(url):
        raise SearchError(f"storage serve: storage={url!r} is a proxy; a proxy serves a database "
                          f"(postgresql://USER@HOST/DB, sqlite:///FILE)")
    if "://" not in url or url.startswith("journal://"):
        raise SearchError(f"storage serve: storage={url!r}: the proxy serves a database (postgresql://USER@HOST/DB, "
                          f"sqlite:///FILE), not a journal file (Optuna's proxy cannot serve one, optuna#6084)")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise SearchError(f"storage serve: port={port!r}: expected a port number (1-65535)")
    check_port(host, port)
    try:
        rdb = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as e:  # noqa: BLE001 - sqlalchemy's errors name the driver/host problem
        raise SearchError(f"storage serve: storage={_shown(url)!r}: cannot open: {str(e).splitlines()[0]}") from None
    storage = optuna.storages.get_storage(rdb)  # Optuna's cache in front of it, as its docs ask
    _no_fork_handlers()
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    log(f"serving {_shown(url)} at grpc://{shown}:{port} (Ctrl-C stops it); workers take "
        f"storage=grpc://{shown}:{port}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            optuna.storages.run_grpc_proxy_server(storage, host=host, port=port)
        except RuntimeError as e:  # grpc's "Failed to bind to address": taken since check_port
            raise SearchError(f"storage serve: cannot listen on {host}:{port}: {str(e).splitlines()[0]}; "
                              f"choose another port=") from None
