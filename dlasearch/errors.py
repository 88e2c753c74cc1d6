"""User-facing errors: each names the offending field/value and what is allowed.

The CLI prints any ``DLASearchError`` as one line and exits non-zero; anything
else is a bug and keeps its traceback.  Every error class lives here (as
``optuna.exceptions`` does), so a helper can move without dragging its module.
"""

__all__ = ['DLASearchError', 'IRError', 'ExportError', 'CheckpointError', 'SearchError', 'PrecheckError', 'SpaceError',
           'JournalError', 'FilesError', 'TrainError', 'DataError', 'ReportError', 'CompareError', 'PredictError',
           'did_you_mean']


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


def did_you_mean(value, allowed) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed name, or ``""``: every error with a typo hint uses it."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
