"""Every file dlasearch writes goes through here, so that a crash, a full disk or a read-only folder
never leaves half a file and always ends in one line that names the path.

- ``write_atomic``: temporary file in the same folder, fsync, rename, fsync of the folder: a reader
  (or the next run after a power cut) sees the old file or the new one, never a mix.
- ``write_text``: the same, with an ``OSError`` turned into a ``DLASearchError`` naming the path
  and the problem (permission, no space, file too large).
- ``check_writable``: the check every command makes *before* it trains anything.
- ``replace_dir``: a finished folder (built as a temporary sibling) takes the place of an old one whole.
- ``results_root`` / ``study_dir``: where results go when no out= is given.
- ``check_name``: study and run names are plain names, never paths.
"""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

from dlasearch.errors import FilesError

__all__ = ['results_root', 'study_dir', 'default_journal', 'absolute', 'portable', 'content_hash', 'check_name',
           'check_study_name', 'explain', 'write_atomic', 'sibling_dir', 'replace_dir', 'fsync_dir', 'write_text',
           'check_writable']

RESULTS = "results"


def results_root() -> Path:
    """The folder that holds every default output (``results/`` under the working directory)."""
    return Path(RESULTS)


def study_dir(name: str, storage: str | None = None, root: Path | None = None) -> Path:
    """Exports of study ``name``: ``results/<name>`` for its own journal, else keyed by the storage.

    A study of the same name in another journal or database gets ``results/<name>@<hash>`` so its
    ``trials.csv`` and ``best/`` never overwrite those of the local study."""
    root = results_root() if root is None else Path(root)
    if not storage or _same_file(storage, default_journal(name, root)):
        return root / name
    return root / f"{name}@{hashlib.sha1(str(storage).encode()).hexdigest()[:8]}"


def default_journal(name: str, root: Path | None = None) -> Path:
    """The journal of study ``name`` when no storage= is given."""
    return (results_root() if root is None else Path(root)) / name / "journal.log"


def _same_file(url: str, path: Path) -> bool:
    url = str(url)
    url = url[len("journal://"):] if url.startswith("journal://") else url
    return "://" not in url and Path(url).expanduser().absolute() == path.absolute()


def absolute(path) -> str:
    """``path`` resolved: the same file named from another folder is equal."""
    return str(Path(str(path)).expanduser().resolve())


def portable(path, base=None) -> str:
    """``path`` as results store it: relative to ``base`` (the working folder: the project root when
    run as documented) when it lies under it or beside it (``../shared/...``), so that a clone at
    another absolute path reads the same text; absolute when farther away."""
    p = Path(absolute(path))
    rel = os.path.relpath(p, absolute(base if base is not None else Path.cwd()))
    return rel if not rel.startswith(os.pardir + os.sep + os.pardir) and rel != os.pardir else str(p)


_HASHES: dict = {}


def content_hash(path) -> str | None:
    """SHA-256 (hex) of the file at ``path``, None when it is no readable file: what identifies a data
    file wherever a machine keeps it.  Cached per size and modification time (a resume asks often)."""
    try:
        p = Path(absolute(path))
        st = p.stat()
        if not p.is_file():
            return None
        key = (str(p), st.st_size, st.st_mtime_ns)
        if key not in _HASHES:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            _HASHES[key] = h.hexdigest()
        return _HASHES[key]
    except OSError:
        return None


def check_name(value, option: str, error=FilesError) -> str:
    """A name used as one folder name: no separators, not ``.``/``..``, not empty."""
    s = str(value)
    if not s or s in (".", "..") or "/" in s or "\\" in s or "\0" in s or s != s.strip():
        raise error(f"{option}={value!r}: expected a plain folder name, not a path "
                    f"(use out= or storage= to choose a location)")
    return s


def check_study_name(value, option: str = "study", error=FilesError) -> str:
    """A study name: a plain name without ``@``, which ``study_dir`` reserves for another storage's
    exports (a study named ``base@<hash>`` would write into that folder)."""
    s = check_name(value, option, error)
    if "@" in s:
        raise error(f"{option}={value!r}: study names may not contain '@' (reserved for the export folders "
                    f"of studies in another storage); choose a name without it")
    return s


def explain(e: OSError) -> str:
    """The user-facing reason for a failed write."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device (free some space, or write elsewhere)"
    if e.errno == errno.EFBIG:
        return "file too large for this file system or the process's file-size limit (ulimit -f)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (the file or its folder is read-only or immutable)"
    if e.errno == errno.EROFS:
        return "the file system is read-only"
    if e.errno in (errno.EISDIR, errno.ENOTEMPTY):
        return "a folder is in the way (move it aside or remove it, or write elsewhere)"
    if e.errno == errno.ENOTDIR:
        return "a file is in the way of a folder on its path (move it aside, or write elsewhere)"
    return e.strerror or str(e)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename; readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def sibling_dir(target: Path, tag: str = "new") -> Path:
    """A new empty folder beside ``target`` (same file system, so ``replace_dir`` can swap them), with
    the permissions a plain ``mkdir`` gives (``mkdtemp`` makes 0700)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{tag}-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def replace_dir(new: Path, target: Path) -> None:
    """Put folder ``new`` in place of folder ``target`` whole; afterwards ``new`` holds the old content
    (the caller removes it).  On Linux the two are exchanged in one step (``renameat2``), so a crash
    leaves the old folder or the new one, never a mix of their files; elsewhere the old folder is
    renamed aside first.  Both must be on one file system (make ``new`` a sibling of ``target``)."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
    elif not _exchange(new, target):
        aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.rename(target, aside / "old")
        os.rename(new, target)
        os.rename(aside / "old", new)
        os.rmdir(aside)
    fsync_dir(target.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # a file system without exchange: the caller renames in two steps
    raise OSError(err, os.strerror(err), str(b))


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def write_text(path: Path, data: str | bytes, error=FilesError) -> Path:
    """``write_atomic``, with a failure as one ``error`` line naming the path and the problem."""
    try:
        write_atomic(Path(path), data)
    except OSError as e:
        raise error(f"cannot write {path}: {explain(e)}") from None
    return Path(path)


def check_writable(folder: Path, option: str = "out", error=FilesError) -> None:
    """Raise unless ``folder`` is a writable directory or can be created (nothing is created)."""
    p = Path(folder).expanduser().absolute()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if p.exists() and not p.is_dir():
        raise error(f"{option}={str(folder)!r} is a file, not a folder; choose a folder path")
    if not probe.is_dir():
        raise error(f"{option}={str(folder)!r}: cannot create it, {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise error(f"{option}={str(folder)!r}: {probe} is not writable (permission denied)")
    try:  # root passes os.access; an immutable folder or a read-only mount only shows on a real write
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".dlasearch-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise error(f"{option}={str(folder)!r}: cannot write in {probe}: {explain(e)}") from None
