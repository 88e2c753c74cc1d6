"""What keeps several workers and signals from wasting or losing trials.

- SIGTERM is handled like Ctrl-C (``Terminated`` is a ``KeyboardInterrupt``): the running trial is
  failed with "terminated" and the command exits 143.
- Workers started by ``run workers=K`` stop when their parent dies: the kernel sends them SIGTERM
  (Linux), and elsewhere the heartbeat notices the new parent pid.
- ``claim``: a worker holds an exclusive lock on a fingerprint while it trains it, so two workers
  never train the same architecture at the same time; the second waits and reuses the result.
- ``hold``: the same lock held by a whole command (``compare`` on its folder); a second one fails at once.
- ``surplus``: a trial created when the study already has ``trials`` trials is not run, so
  ``workers=K`` never overshoots.
- ``environmental``: a trial stopped by a signal, a full disk or a lost database is marked
  ``interrupted``; it does not count, and ``study.requeue_interrupted`` queues its parameters again.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sys
import time
from pathlib import Path

from dlasearch.files import explain
from dlasearch.search import attrs

__all__ = ['Terminated', 'sigterm_raises', 'interrupt_reason', 'die_with_parent', 'parent_gone', 'stop_if_orphaned',
           'INTERRUPTED', 'environmental', 'counts', 'counted_before', 'surplus', 'claim', 'hold']

PARENT_ENV = "DLASEARCH_PARENT"


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; handled everywhere Ctrl-C is, but reported as "terminated" and exit 143."""


def _on_sigterm(signum, frame):
    raise Terminated("terminated (SIGTERM)")


@contextlib.contextmanager
def sigterm_raises():
    """Within the block, SIGTERM raises ``Terminated`` in the main thread (a no-op elsewhere); the
    previous handler comes back after it, so calling the CLI in-process leaves no handler behind."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_reason(e: BaseException) -> str:
    return "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"


def die_with_parent() -> None:
    """``preexec_fn`` for worker processes: ask Linux to SIGTERM the child when its parent dies."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # the heartbeat's parent check covers it


def parent_gone() -> bool:
    """True in a worker whose ``run`` parent has died (it was re-parented)."""
    parent = os.environ.get(PARENT_ENV)
    return bool(parent) and parent.isdigit() and os.getppid() != int(parent)


def stop_if_orphaned() -> None:
    if parent_gone():
        os.kill(os.getpid(), signal.SIGTERM)


# ------------------------------------------------------------ concurrency

INTERRUPTED = attrs.INTERRUPTED  # failed by its environment, not by itself: not counted, queued again
# retried, redundant, a screening candidate, or a sampler's proposal of an architecture already evaluated
# (answered from it at no cost; a queued trial that repeats one still counts: it was asked for by name)
NOT_COUNTED = (attrs.STALE, attrs.SURPLUS, attrs.CANDIDATE, INTERRUPTED, attrs.REPEATED)
# a write that failed for want of room or a writable disk: the machine's fault, not the trial's
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


def environmental(e: BaseException) -> bool:
    """Whether a trial failed by its environment (a signal, a full disk, a lost database): such a
    trial says nothing about its architecture, so it must not count against ``trials``."""
    if isinstance(e, KeyboardInterrupt):
        return True
    if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
        return True
    kind = type(e)  # sqlalchemy's connection errors, without importing sqlalchemy
    return kind.__module__.startswith("sqlalchemy") and kind.__name__ in ("OperationalError", "InterfaceError",
                                                                        "DisconnectionError")


def counts(t) -> bool:
    """Whether a finished or running trial counts against ``study.trials``."""
    return not any(t.user_attrs.get(k) for k in NOT_COUNTED)


def counted_before(study, number: int) -> int:
    """Trials numbered below ``number`` that count against ``study.trials``."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states) if t.number < number and counts(t))


def surplus(trial, total: int) -> bool:
    """True when ``total`` counted trials were created before this one (another worker got there first)."""
    return counted_before(trial.study, trial.number) >= total


@contextlib.contextmanager
def claim(folder: Path | None, fp: str, trial, log, reap=None, poll: float = 1.0):
    """Hold fingerprint ``fp`` while the block trains it; wait while another worker holds it.

    With a journal (``folder`` next to it) this is an ``flock`` on ``folder/<fp>.lock``, released by
    the kernel even if the holder is SIGKILLed.  With a database (``folder`` None) the worker waits
    while a lower-numbered RUNNING trial has the same fingerprint (``reap`` fails those of dead workers)."""
    if folder is None or sys.platform == "win32":
        _wait_for_lower(trial, fp, log, reap, poll)
        yield
        return
    import fcntl

    try:
        fd = _open_lock(folder / f"{fp[:40]}.lock")
    except OSError:
        _wait_for_lower(trial, fp, log, reap, poll)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"  trial #{trial.number}: another worker is training the same architecture; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
            # the holder released the lock as its objective returned; its result is stored a moment later
            _wait(trial, fp, reap, poll / 5, lambda t: t.user_attrs.get(attrs.CLAIMED))
        trial.set_user_attr(attrs.CLAIMED, True)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_lock(path: Path) -> int:
    """An open descriptor of lock file ``path`` (made with its folder when missing); ``flock`` it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


@contextlib.contextmanager
def hold(path: Path, what: str, hint: str, error):
    """Hold lock file ``path`` for the whole block, as ``claim`` holds a fingerprint, but never wait: a
    second holder fails at once with ``error`` naming ``what`` and the first holder, which the lock
    file records (``host:pid`` and since when).  The kernel releases it when its holder dies."""
    if sys.platform == "win32":
        yield
        return
    import fcntl

    path = Path(path)
    try:
        fd = _open_lock(path)
    except OSError as e:
        raise error(f"{what}: cannot create the lock file {path}: {explain(e)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise error(f"{what} is in use by {holder}; {hint}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()}:{os.getpid()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n"
                  .encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _wait_for_lower(trial, fp: str, log, reap, poll: float) -> None:
    if _busy(trial, fp, lambda t: t.number < trial.number):
        log(f"  trial #{trial.number}: an earlier trial is training the same architecture; waiting for it")
    _wait(trial, fp, reap, poll, lambda t: t.number < trial.number)


def _busy(trial, fp: str, which) -> list:
    from optuna.trial import TrialState

    return [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number != trial.number and t.user_attrs.get(attrs.FINGERPRINT) == fp
            and not t.user_attrs.get(attrs.STALE) and which(t)]


def _wait(trial, fp: str, reap, poll: float, which) -> None:
    """Sleep while another RUNNING trial (picked by ``which``) has fingerprint ``fp``."""
    while _busy(trial, fp, which):
        time.sleep(poll)
        if reap is not None:
            reap()
