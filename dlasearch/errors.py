"""User-facing errors: each names the offending field/value and what is allowed.

The CLI prints any ``DLASearchError`` as one line and exits non-zero; anything
else is a bug and keeps its traceback.
"""


class DLASearchError(ValueError):
    """Bad input from the user (spec, IR, data, command line)."""


class IRError(DLASearchError):
    """An invalid IR or spec. The message names the node/field and what is allowed."""


def did_you_mean(value, allowed) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed name, or ``""``: every error with a typo hint uses it."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
