"""``dlasearch <command> key=value ...``: parse, check against the command's option table, dispatch.

Bad input prints one line naming the problem and exits 2; ``--help``, ``--cfg`` and ``--version``
are the only flags.
"""
from __future__ import annotations

import os
import shlex
import sys
from importlib import metadata

from dlasearch import __version__
from dlasearch.cli import options as optmod
from dlasearch.cli.commands import COMMAND_LINE, COMMANDS
from dlasearch.errors import DLASearchError, did_you_mean
from dlasearch.search import guard
from dlasearch.search.space import SHORTCUTS as RUN_SHORTCUTS


def parse_overrides(items: list[str], aliases: dict | None = None) -> dict:
    """``["a.b=1", "c=x"]`` -> nested dict with YAML-typed values (via OmegaConf).

    ``aliases`` rewrites short keys first (``trials=5`` -> ``study.trials=5``), so a
    short key and its section's dotted keys can be given together.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    given = [(it, x) for it in items for x in _data_items(it)]  # (as typed, as expanded)
    items = [x for _, x in given]
    for i, it in enumerate(items):
        if "=" not in it or it.startswith("="):
            raise DLASearchError(f"argument {it!r}: expected key=value")
        key, _, value = it.partition("=")
        if aliases and key in aliases:
            items[i] = f"{aliases[key]}={value}"
    keys = [it.partition("=")[0] for it in items]
    first: dict = {}
    for k, (typed, _) in zip(keys, given):  # OmegaConf would silently keep the last one
        if k in first:
            raise DLASearchError(f"option {k} is given twice ({first[k]} and {typed}); give it once")
        first[k] = typed
    for k in keys:
        nested = [o for o in keys if o.startswith(k + ".")]
        if nested:
            raise DLASearchError(f"options {k}=... and {nested[0]}=... conflict: {k} cannot be both a value "
                                 f"and a section; write {k}.<field>=... for each field instead")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(items), resolve=True)
    except OmegaConfBaseException as e:
        raise DLASearchError(f"bad key=value arguments {items}: {e}") from None


def _data_items(item: str) -> list[str]:
    """``data=NAME`` -> ``data.name=NAME``; ``data=FILE.npz`` -> ``data.name=npz data.path=FILE.npz``:
    one spelling of the data for every command, which ``data.<key>=...`` options can join."""
    key, eq, value = item.partition("=")
    if key != "data" or not eq:
        return [item]
    if value.endswith(".npz"):
        return ["data.name=npz", f"data.path={value}"]
    return [f"data.name={value}"]


SHORTCUTS = {"run": RUN_SHORTCUTS}


POSITIONAL = {"bench": "action", "render": "arch", "train": "arch", "run": "space", "export": "from", "predict": "from",
              "rank": "space", "storage": "action"}


USAGE = {"zoo": "dlasearch zoo [format=markdown|csv]",
         "train": "dlasearch train arch=NAME|FILE [data=NAME|FILE.npz] [key=value ...]",
         "run": "dlasearch run [space=NAME|FILE.yaml] [study=NAME] [key=value ...]",
         "worker": "dlasearch worker study=NAME [storage=URL] [key=value ...]",
         "compare": "dlasearch compare budget.params=N [patterns=a,b,...] [task=segment decoders=a,b,...] "
                    "[key=value ...]",
         "report": "dlasearch report study=NAME [key=value ...]",
         "render": "dlasearch render arch=NAME|FILE|figure1 [key=value ...]",
         "export": "dlasearch export from=RUN|CHECKPOINT|ZOO_NAME | study=NAME trial=N [format=py,pt2,onnx] [out=DIR]",
         "predict": "dlasearch predict from=RUN|CHECKPOINT | study=NAME trial=N images=FILE.npz|FOLDER|FILE.png "
                    "[out=DIR]",
         "bench": "dlasearch bench build|lookup|report name=NAME [space=bench] [key=value ...]",
         "rank": "dlasearch rank space=NAME [n=20] [proxies=a,b,...] [key=value ...]",
         "storage": "dlasearch storage serve storage=postgresql://...|sqlite:///FILE [host=localhost] [port=13000]"}


def version() -> str:
    try:
        v = metadata.version("dlasearch")
    except metadata.PackageNotFoundError:
        v = __version__
    return f"dlasearch {v}"


def overview() -> str:
    return ("usage: dlasearch <command> [key=value ...]\n\n"
            "Explore how networks aggregate their layers (Deep Layer Aggregation).\n\ncommands:\n"
            + "\n".join(f"  {k:<10} {v[1]}" for k, v in COMMANDS.items())
            + "\n\n`dlasearch <command> --help` (or `dlasearch help <command>`) lists a command's options;"
              "\n--version prints the version; --cfg (print_config=true) prints a command's resolved config.")


def command_help(name: str) -> str:
    text = optmod.help_text(name, COMMANDS[name][0].__doc__.strip().splitlines()[0], USAGE[name])
    if name == "run":
        text += ("\n\nDefaults shown are the fallbacks; a space file sets its own (`dlasearch run space=NAME --cfg`"
                 " prints them). Without space=, study=NAME resumes a stored study: only trials, timeout, "
                 "workers, max_duplicates and confirm may change.")
    return text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with guard.sigterm_raises():
            return _main(argv)
    except BrokenPipeError:  # `dlasearch zoo | head`: the reader has gone; stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv == ["help"]:
        print(overview())
        return 0
    if argv[0] in ("--version", "-V", "version"):
        print(version())
        return 0
    if argv[0] == "help":
        argv = [argv[1], "--help"]
    command, options = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"dlasearch: error: unknown command {command!r}{did_you_mean(command, COMMANDS)}; "
              f"commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if "-h" in options or "--help" in options:
        print(command_help(command))
        return 0
    options = ["print_config=true" if o == "--cfg" else o for o in options]
    try:
        flags = [o for o in options if o.startswith("-")]
        if flags:
            raise DLASearchError(f"unknown flag {flags[0]!r}; options are key=value (--help, --cfg and "
                                 f"--version are the only flags)")
        if command in POSITIONAL and options and "=" not in options[0]:
            options[0] = f"{POSITIONAL[command]}={options[0]}"  # `render figure1`
        args = parse_overrides(list(options), SHORTCUTS.get(command))
        optmod.check(command, args)
        COMMAND_LINE.set(" ".join(["dlasearch"] + [shlex.quote(a) for a in argv]))
        return COMMANDS[command][0](args) or 0
    except DLASearchError as e:
        print(f"dlasearch {command}: error: {e}", file=sys.stderr)
        return 2
    except guard.Terminated:
        print(f"dlasearch {command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"dlasearch {command}: interrupted", file=sys.stderr)
        return 130
