"""User-facing errors: each names the offending field/value and what is allowed.

The CLI prints any ``DLASearchError`` as one line and exits non-zero; anything
else is a bug and keeps its traceback.
"""


class DLASearchError(ValueError):
    """Bad input from the user (spec, IR, data, command line)."""
