"""The Python API of the two long commands: ``run`` returns the Optuna study, ``compare`` the comparison
table as a pandas DataFrame.  They take the command line's options, as keywords, and go through the same
parser and option tables, so a key or value the command refuses is refused here too (``DLASearchError``,
the same one line the command prints) and both write what the command writes.

    from dlasearch.api import run, compare

    study = run("hda", trials=5, epochs=2, data={"limit": 300})          # dlasearch run space=hda trials=5 ...
    table = compare(patterns="chain,ida,dla", data="digits", seeds=2,     # dlasearch compare ...
                    budget={"params": 1e5}, epochs=2)
    table.attrs["dir"], table.attrs["runs"]                                # its folder, the per-run DataFrame

Dotted keys can be given as nested dicts (``data={"limit": 300}``) or spelled out
(``**{"data.limit": 300}``).  It sits on the command line's floor: it is the command line, called.
"""
from __future__ import annotations

import json

import optuna

from dlasearch.analysis import compare as comparemod
from dlasearch.cli import SHORTCUTS, parse_overrides
from dlasearch.cli import options as optmod
from dlasearch.search import open_study, resume, run as run_study

__all__ = ['run', 'compare']


def run(space: str = "hda", *, log=print, **options) -> optuna.Study:
    """``dlasearch run space=SPACE key=value ...``; returns the study (resumed when it exists).

    ``space`` is a shipped space's name or a YAML file; with ``study=NAME`` and no ``space`` given
    (``space=None``) a stored study resumes with the space it was made with."""
    args = _args("run", {**({"space": space} if space is not None else {}), **options})
    sp = resume.resolve(args)
    run_study(sp, log=log)
    return open_study(sp, create=False, log=log)


def compare(*, log=print, **options):
    """``dlasearch compare key=value ...``; returns the table (``comparison.csv``) as a DataFrame, with
    ``attrs["dir"]`` (its folder) and ``attrs["runs"]`` (one row per pattern and seed, ``runs.csv``)."""
    result = comparemod.from_options(_args("compare", options), log=log)
    table = result["summary"]
    table.attrs.update(dir=result["dir"], runs=result["runs"])
    return table


def _args(command: str, options: dict) -> dict:
    args = parse_overrides([f"{k}={_text(v)}" for k, v in _flat(options)], SHORTCUTS.get(command))
    optmod.check(command, args)
    return args


def _flat(options: dict, prefix: str = ""):
    for k, v in options.items():
        if isinstance(v, dict) and v:
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _text(v) -> str:
    """A value as the command line would be typed (YAML-typed there): lists and None as JSON."""
    if isinstance(v, bool) or v is None or isinstance(v, (list, tuple)):
        return json.dumps(list(v) if isinstance(v, tuple) else v)
    return str(v)
