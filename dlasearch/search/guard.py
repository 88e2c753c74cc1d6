"""What keeps several workers and signals from wasting or losing trials.

- SIGTERM is handled like Ctrl-C (``Terminated`` is a ``KeyboardInterrupt``): the running trial is
  failed with "terminated" and the command exits 143.
- Workers started by ``run workers=K`` stop when their parent dies: the kernel sends them SIGTERM
  (Linux), and elsewhere the heartbeat notices the new parent pid.
- ``claim``: a worker holds an exclusive lock on a fingerprint while it trains it, so two workers
  never train the same architecture at the same time; the second waits and reuses the result.
- ``surplus``: a trial created when the study already has ``trials`` trials is not run, so
  ``workers=K`` never overshoots.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

__all__ = ['Terminated', 'sigterm_raises', 'interrupt_reason', 'die_with_parent', 'parent_gone', 'stop_if_orphaned',
           'counted_before', 'surplus', 'claim']

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

NOT_COUNTED = ("stale", "surplus", "candidate")  # retried, redundant, or a screening candidate


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
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{fp[:40]}.lock", os.O_RDWR | os.O_CREAT, 0o666)
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
            _wait(trial, fp, reap, poll / 5, lambda t: t.user_attrs.get("claimed"))
        trial.set_user_attr("claimed", True)
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
            if t.number != trial.number and t.user_attrs.get("fingerprint") == fp
            and not t.user_attrs.get("stale") and which(t)]


def _wait(trial, fp: str, reap, poll: float, which) -> None:
    """Sleep while another RUNNING trial (picked by ``which``) has fingerprint ``fp``."""
    while _busy(trial, fp, which):
        time.sleep(poll)
        if reap is not None:
            reap()
