"""User-facing errors: each names the offending field/value and what is allowed.

The CLI prints any ``DLASearchError`` as one line and exits non-zero; anything
else is a bug and keeps its traceback.  Every error class lives here (as
``optuna.exceptions`` does), so a helper can move without dragging its module.
"""

__all__ = ['behind', 'DLASearchError', 'IRError', 'ExportError', 'CheckpointError', 'SearchError', 'ProxyError', 'PrecheckError', 'SpaceError',
           'JournalError', 'FilesError', 'TrainError', 'DataError', 'ReportError', 'CompareError', 'PredictError',
           'did_you_mean', 'pick']


class DLASearchError(ValueError):
    """Bad input from the user (spec, IR, data, command line)."""


class IRError(DLASearchError):
    """An invalid IR or spec. The message names the node/field and what is allowed."""


class ExportError(DLASearchError):
    """An export that cannot be done as asked (format, target folder, missing extra)."""


class CheckpointError(DLASearchError):
    """A checkpoint that is missing, unreadable, or does not fit the architecture."""


class SearchError(DLASearchError):
    """A study that cannot be opened, resumed or attached to as asked."""


class ProxyError(SearchError):
    """Optuna's gRPC storage proxy lost (or failing) in the middle of a study: the study resumes."""


class PrecheckError(DLASearchError):
    """A space that cannot produce one architecture to train."""


class SpaceError(DLASearchError):
    """A search space file or override is invalid."""


class JournalError(DLASearchError):
    """A journal file that cannot be read or written as it is."""


class FilesError(DLASearchError):
    """A file or folder that cannot be written, or a name that is a path."""


class TrainError(DLASearchError):
    """A training setting, or an architecture that does not fit the data."""


class DataError(DLASearchError):
    """A dataset that cannot be loaded: unknown name, missing or corrupt file, bad arrays."""


class ReportError(DLASearchError):
    """A study that cannot be reported on as asked."""


class CompareError(DLASearchError):
    """A comparison that cannot run as asked: pattern, budget, seeds, output folder."""


class PredictError(DLASearchError):
    """Images that cannot be predicted as asked: missing or unreadable, wrong format or channels, a bad out=."""


def behind(e: BaseException | None, match):
    """The first exception in ``e``'s chain (itself, then its causes and contexts) that is a ``match``
    (a type, or a predicate), or None.  Optuna re-raises while failing a trial and masks the error
    that matters (an ``UnboundLocalError`` with the storage's error two contexts down)."""
    test = match if not isinstance(match, type) else (lambda x: isinstance(x, match))
    while e is not None:
        if test(e):
            return e
        e = e.__cause__ or e.__context__
    return None


def did_you_mean(value, allowed) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed name, or ``""``: every error with a typo hint uses it."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def pick(value, allowed, field: str, error=None, aliases=None, example: str = "", note: str = "") -> list[str]:
    """``"a,b"`` or a list -> the named choices in order, without repeats, each one of ``allowed`` (after
    ``aliases``); an unknown or empty one raises ``error`` naming ``field``, the closest name and the
    choices.  One rule for every comma list a command takes (patterns, decoders, export formats)."""
    error = error or DLASearchError
    aliases = aliases or {}
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    out = []
    for raw in (str(i).strip() for i in items):
        name = aliases.get(raw, raw)
        if name not in allowed:
            close = did_you_mean(raw, [*allowed, *aliases])
            for alias, target in aliases.items():
                close = close.replace(repr(alias), repr(target))
            raise error(f"{field}={raw!r}{close}; allowed: {', '.join(allowed)}{note}")
        if name not in out:
            out.append(name)
    if not out:
        raise error(f"{field}={value!r}: expected a comma-separated list" + (f" such as {example}" if example else ""))
    return out
