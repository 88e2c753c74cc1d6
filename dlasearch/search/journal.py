"""The study journal (Optuna's ``JournalFileBackend``: one JSON record per line) kept readable.

A kill, a power cut or a full disk can leave half a record at the end of the file.  Optuna skips
such a line when reading, but the next append lands straight after it and makes a garbage line in
the middle, which neither Optuna nor dlasearch can read past: every finished trial would be lost.
So, under the journal's own lock:

- ``repair`` moves a torn last line aside to ``journal.log.torn-<time>`` (the journal then ends at
  its last complete record) and returns the trial ids the torn record touched, so that the caller
  fails them as stale and re-queues them;
- a garbage line in the middle is never rewritten: ``JournalError`` names the file and the line;
- a file that is not a journal at all (``storage=`` someone's file: its first line is no record) is
  refused and never touched, so its content is not taken for a torn record;
- ``SafeJournalBackend`` cuts a failed append (no space, file-size limit) back to the last
  complete record, so a full disk leaves a journal the next run can open;
- ``JournalLock`` is Optuna's open-lock, except that a stale lock file it cannot remove (an immutable
  file, a read-only folder) is an error naming the file, where Optuna's retries it in a busy loop.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from dlasearch import files
from dlasearch.errors import JournalError, behind

__all__ = ['JournalWriteError', 'write_error', 'JournalLock', 'make_lock', 'repair', 'SafeJournalBackend']

LOCK_GRACE = 10  # lock holders keep the lock for milliseconds; an older lock was left by a killed process


class StaleLockError(OSError):
    """A stale journal lock that cannot be removed; ``strerror`` says which file and what to do."""


class JournalWriteError(OSError):
    """Appending to the journal failed (disk full, read-only); the journal was left at its last record."""


def write_error(e: BaseException) -> JournalWriteError | None:
    """The ``JournalWriteError`` behind ``e`` (Optuna may wrap it while failing the trial), or None."""
    return behind(e, JournalWriteError)


class JournalLock(JournalFileOpenLock):
    """Optuna's lock (an ``O_EXCL`` lock file, so it works on NFS), with two changes: a lock file is
    stale once its mtime is ``LOCK_GRACE`` seconds old (Optuna waits that long from when it first
    looks), and a stale lock that cannot be removed raises ``OSError`` naming it.  Optuna's loop
    retries that removal without sleeping: 413,744 warnings in 65 s, and the run never ends."""

    def acquire(self) -> bool:
        sleep, seen, since = 0.001, None, time.monotonic()
        while True:
            try:
                os.close(os.open(self._lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return True
            except FileExistsError:
                pass
            try:
                mtime = os.stat(self._lock_file).st_mtime
            except FileNotFoundError:
                continue  # released between our open and our stat
            if mtime != seen:
                seen, since = mtime, time.monotonic()
            if time.time() - mtime > self.grace_period or time.monotonic() - since > self.grace_period:
                self._remove_stale()
                sleep = 0.001
                continue
            time.sleep(sleep)
            sleep = min(sleep * 2, 0.1)

    def _remove_stale(self) -> None:
        aside = f"{self._lock_file}.{os.getpid()}-{time.monotonic_ns()}.stale"
        try:
            os.rename(self._lock_file, aside)  # a rename is atomic: one of several waiters wins it
        except FileNotFoundError:
            return  # another waiter removed it first
        except OSError as e:
            raise StaleLockError(e.errno, f"its lock file {self._lock_file} is older than {self.grace_period} s "
                                          f"(left by a killed process) and cannot be removed: {files.explain(e)}; "
                                          f"remove it by hand (chattr -i, rm) when no run is using the journal") from None
        try:
            os.unlink(aside)
        except OSError:
            pass  # renamed away already: the lock is free either way


def make_lock(path: Path) -> JournalLock:
    return JournalLock(str(path), grace_period=LOCK_GRACE)


def repair(path: Path, log=print, write: bool = True) -> list[int]:
    """Check ``path``; move a torn last record aside; return the trial ids that record touched.

    ``write=False`` (reports, renders) only checks: a torn tail is left alone (Optuna skips it, and a
    live writer may be finishing it), so a read-only journal stays readable."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return []
    if not write:
        _repair_locked(path, log, move=False)
        return []
    lock = make_lock(path)
    try:
        lock.acquire()
    except StaleLockError as e:
        raise JournalError(f"cannot lock the journal {path}: {e.strerror}") from None
    except OSError as e:
        raise JournalError(f"cannot lock the journal {path}: {files.explain(e)}") from None
    try:
        return _repair_locked(path, log)
    finally:
        lock.release()


# a journal record, as Optuna's and our backend write it; a torn first record still starts so
RECORD_START = re.compile(rb'\{"op_code":\s*\d')


# the keys Optuna reads from each record, by op_code (every record also names its worker_id)
_KEYS = {0: ("study_name", "directions"), 1: ("study_id",), 2: ("study_id", "user_attr"),
         3: ("study_id", "system_attr"), 4: ("study_id", "datetime_start"),
         5: ("trial_id", "param_name", "param_value_internal", "distribution"),
         6: ("trial_id", "state", "values"), 7: ("trial_id", "step", "intermediate_value"),
         8: ("trial_id", "user_attr"), 9: ("trial_id", "system_attr"), 10: ()}


def _problem(line: bytes) -> str | None:
    """Why ``line`` is not one journal record Optuna can apply (None when it is one): not JSON, not an
    object, no or an unknown ``op_code``, or a key that record needs missing."""
    try:
        obj = json.loads(line)
    except ValueError:
        return "not JSON"
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__ if obj is not None else 'null'}, not a record"
    op = obj.get("op_code")
    if type(op) is not int or op not in _KEYS:
        return "no op_code" if op is None else f"unknown op_code {op!r}"
    missing = [k for k in ("worker_id",) + _KEYS[op] if k not in obj]
    return f"op_code {op} record without {', '.join(missing)}" if missing else None


def _record(line: bytes) -> bool:
    """Whether ``line`` is one journal record (a JSON object with an ``op_code``), not just any JSON."""
    return _problem(line) is None


def _repair_locked(path: Path, log, move: bool = True) -> list[int]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise JournalError(f"cannot read the journal {path}: {files.explain(e)}") from None
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    if not (_record(lines[0]) if lines else RECORD_START.match(torn)):
        # someone else's file given as storage=: never moved aside nor appended to
        hint = " (an SQLite database? pass storage=sqlite:///PATH)" if data.startswith(b"SQLite format 3") else ""
        raise JournalError(f"{path} is not an Optuna journal{hint}; it was not changed: pass "
                           f"storage= a journal file, a new file name or a database URL")
    for number, line in enumerate(lines, start=1):
        problem = _problem(line)
        if problem:
            raise JournalError(f"{path}: line {number} is not a journal record ({problem}; the file is damaged in the "
                               f"middle; it was not changed): restore it from a backup, or pass study=NEW_NAME "
                               f"to start a new study")
    if not torn or not move:
        return []
    side = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        files.write_atomic(side, torn)
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(torn))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise JournalError(f"{path} ends with an incomplete record, which cannot be moved aside: "
                           f"{files.explain(e)}") from None
    ids = sorted({int(m) for m in re.findall(rb'"trial_id":\s*(\d+)', torn)})
    log(f"{path}: the last record was incomplete (a killed run or a full disk); moved its "
        f"{len(torn)} bytes to {side.name}; all {len(lines)} complete records kept")
    return ids


class SafeJournalBackend(JournalFileBackend):
    """``JournalFileBackend`` whose failed append never leaves a partial record behind."""

    def __init__(self, path: str):
        super().__init__(path, lock_obj=make_lock(Path(path)))

    def append_logs(self, logs: list[dict]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        try:
            self._lock.acquire()
        except StaleLockError as e:
            raise JournalWriteError(e.errno, f"{self._file_path}: {e.strerror}") from None
        except OSError as e:
            raise JournalWriteError(e.errno, f"{self._file_path}: {files.explain(e)}") from None
        try:
            try:
                f = open(self._file_path, "ab", buffering=0)
            except OSError as e:
                raise JournalWriteError(e.errno, f"{self._file_path}: {files.explain(e)}") from None
            with f:
                start = os.fstat(f.fileno()).st_size
                try:
                    view = memoryview(text)
                    while view:
                        view = view[f.write(view):]
                    os.fsync(f.fileno())
                except OSError as e:
                    os.ftruncate(f.fileno(), start)  # shrinking needs no space, and any file-size limit allows it
                    raise JournalWriteError(e.errno, f"{self._file_path}: {files.explain(e)}") from None
        finally:
            self._lock.release()
