"""The study journal (Optuna's ``JournalFileBackend``: one JSON record per line) kept readable.

A kill, a power cut or a full disk can leave half a record at the end of the file.  Optuna skips
such a line when reading, but the next append lands straight after it and makes a garbage line in
the middle, which neither Optuna nor dlasearch can read past: every finished trial would be lost.
So, under the journal's own lock:

- ``repair`` moves a torn last line aside to ``journal.log.torn-<time>`` (the journal then ends at
  its last complete record) and returns the trial ids the torn record touched, so that the caller
  fails them as stale and re-queues them;
- a garbage line in the middle is never rewritten: ``JournalError`` names the file and the line;
- ``SafeJournalBackend`` cuts a failed append (no space, file-size limit) back to the last
  complete record, so a full disk leaves a journal the next run can open.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from dlasearch import files
from dlasearch.errors import JournalError

__all__ = ['JournalWriteError', 'write_error', 'make_lock', 'repair', 'SafeJournalBackend']

LOCK_GRACE = 10  # lock holders keep the lock for milliseconds; an older lock was left by a killed process


class JournalWriteError(OSError):
    """Appending to the journal failed (disk full, read-only); the journal was left at its last record."""


def write_error(e: BaseException) -> JournalWriteError | None:
    """The ``JournalWriteError`` behind ``e`` (Optuna may wrap it while failing the trial), or None."""
    while e is not None:
        if isinstance(e, JournalWriteError):
            return e
        e = e.__cause__ or e.__context__
    return None


def make_lock(path: Path) -> JournalFileOpenLock:
    return JournalFileOpenLock(str(path), grace_period=LOCK_GRACE)


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
    except OSError as e:
        raise JournalError(f"cannot lock the journal {path}: {files.explain(e)}") from None
    try:
        return _repair_locked(path, log)
    finally:
        lock.release()


def _repair_locked(path: Path, log, move: bool = True) -> list[int]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise JournalError(f"cannot read the journal {path}: {files.explain(e)}") from None
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    for number, line in enumerate(lines, start=1):
        try:
            json.loads(line)
        except ValueError:
            raise JournalError(f"{path}: line {number} is not a journal record (the file is damaged in the "
                               f"middle; it was not changed): restore it from a backup, or pass study=NEW_NAME "
                               f"to start a new study") from None
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
