"""Command line: ``dlasearch <command> [key=value ...]``.

Each command is a function registered in ``COMMANDS``; user errors
(``DLASearchError``) become one line on stderr and exit status 2.
"""
from __future__ import annotations

import os
import sys

from dlasearch import files, guard
from dlasearch.errors import DLASearchError, did_you_mean
from dlasearch.space import SHORTCUTS as RUN_SHORTCUTS


def parse_overrides(items: list[str], aliases: dict | None = None) -> dict:
    """``["a.b=1", "c=x"]`` -> nested dict with YAML-typed values (via OmegaConf).

    ``aliases`` rewrites short keys first (``trials=5`` -> ``study.trials=5``), so a
    short key and its section's dotted keys can be given together.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    items = [x for it in items for x in _data_items(it)]
    for i, it in enumerate(items):
        if "=" not in it or it.startswith("="):
            raise DLASearchError(f"argument {it!r}: expected key=value")
        key, _, value = it.partition("=")
        if aliases and key in aliases:
            items[i] = f"{aliases[key]}={value}"
    keys = [it.partition("=")[0] for it in items]
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


def cmd_zoo(args: dict) -> int:
    """Print the zoo: params, MACs at 224 and 32, blocks and aggregation nodes."""
    from dlasearch.zoo import table as zoo_table

    fmt = args.get("format", "markdown")
    df = zoo_table()
    print(df.to_markdown(index=False) if fmt == "markdown" else df.to_csv(index=False), end="\n")
    return 0


_TRAIN_RUN_OPTIONS = ("arch", "data", "image_size", "resize", "test", "latency", "out", "name", "weights")


def cmd_train(args: dict) -> int:
    """Train one architecture on one dataset, print its metrics, write metrics.json + ir.json."""
    from tabulate import tabulate

    from dlasearch import stats, train

    if "arch" not in args:
        raise DLASearchError("arch=<zoo name | spec.json | ir.json> is required, e.g. "
                             "`dlasearch train arch=dla34 data=fashion_mnist epochs=3`")
    show, log = args.pop("print_config", False), args.pop("log", None)
    if isinstance(args.get("data"), dict) and "image_size" in args["data"]:
        args["image_size"] = args["data"].pop("image_size")  # data.image_size is the new spelling
    run_opts = {k: args[k] for k in _TRAIN_RUN_OPTIONS if k in args}
    config = train.TrainConfig(**{k: v for k, v in args.items() if k not in _TRAIN_RUN_OPTIONS})
    if show:
        return print_config(train.resolved_config(run_opts.get("arch"), run_opts.get("data"), config, **{
            k: v for k, v in run_opts.items() if k not in ("arch", "data")}, log=log))
    record, folder = train.run(run_opts.pop("arch"), run_opts.pop("data", None), config, log=log, **run_opts)
    m = record["metrics"]
    rows = [("arch", record["name"]), ("data", f"{record['data']['name']} {record['data']['image_size']}"),
            ("status", record["status"] + (f" ({record['reason']})" if record["reason"] else ""))]
    rows += [(k, f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else "n/a")
             for k, v in m.items()]
    rows.append(("run folder", str(folder)))
    print(tabulate(rows, headers=["metric", "value"], tablefmt="github"))
    val = record["chance"]["val"]
    if val["at_chance"]:
        print(stats.chance_line("validation accuracy", m["val_accuracy"], val["chance"], val["n"]), file=sys.stderr)
    return 0


def cmd_render(args: dict) -> int:
    """Draw an architecture, or the paper's Figure 1 (arch=figure1), with graphviz."""
    try:
        from dlasearch import render
    except ModuleNotFoundError as e:
        if e.name != "graphviz":
            raise
        raise DLASearchError("render needs the graphviz Python package: pip install graphviz") from None
    return render.command(args)


def cmd_run(args: dict) -> int:
    """Run (or resume) a search: ``space=NAME`` plus overrides merged into the space file."""
    from dlasearch import resume, search

    show = args.pop("print_config", False)
    sp = resume.resolve(args)
    if show:  # as results/<study>/config.yaml holds it
        return print_config({k: v for k, v in sp.items() if k != "name"} | {"space": sp["name"]})
    search.run(sp)
    return 0


def cmd_worker(args: dict) -> int:
    """Attach this process to an existing study (``study=NAME storage=URL``)."""
    from dlasearch import search

    if "study" not in args:  # unknown options and wrong types were refused by options.check
        raise DLASearchError("worker: needs study=NAME, e.g. `dlasearch worker study=hda`")
    for k, lo in (("threads", 1), ("trials", 1), ("index", 0)):
        v = args.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            raise DLASearchError(f"worker: {k}={v!r}: expected an int >= {lo}")
    name = files.check_name(args["study"], "study")
    storage = str(args.get("storage") or files.default_journal(name))
    study, sp = search.attach(name, storage, args.get("index"))
    if "threads" in args:
        sp["study"]["threads"] = args["threads"]
    if "trials" in args:
        sp["study"]["trials"] = args["trials"]
    if args.get("log") is not None:
        sp["log"] = args["log"]
    done = search.counted(study)
    if done >= sp["study"]["trials"]:
        print(f"study {name!r} is finished: {done}/{sp['study']['trials']} trials; nothing to do "
              f"(`dlasearch run study={name} trials=N` raises the total)")
        return 0
    try:
        search.work(study, sp)
    finally:
        if args.get("index") is None:  # workers started by `run` leave the export to it
            search.export(study, sp)
    return 0


def cmd_compare(args: dict) -> int:
    """Train every aggregation pattern at one parameter budget over seeds; table, CSVs and plots."""
    from dlasearch import compare

    return compare.command(args)


def cmd_export(args: dict) -> int:
    """Write a trained model as model.py (+ weights), model.pt2 and/or model.onnx with a README."""
    from dlasearch import export

    return export.command(args)


def cmd_report(args: dict) -> int:
    """Summarise a study: trials table, Pareto/history, importance, plots, top-k diagrams, report.md."""
    from dlasearch import report

    return report.command(args)


def cmd_rank(args: dict) -> int:
    """Score architectures sampled from a space with zero-cost proxies (no training); write a CSV."""
    from dlasearch import rank

    return rank.command(args)


COMMANDS = {
    "zoo": (cmd_zoo, "table of the DLA model zoo (params, MACs, blocks, aggregation nodes)"),
    "run": (cmd_run, "search a space with Optuna: space=hda [trials=N epochs=E storage=URL workers=K ...]"),
    "worker": (cmd_worker, "attach a worker process to a study: study=NAME storage=URL"),
    "train": (cmd_train, "train one architecture on a dataset; print and save its metrics"),
    "render": (cmd_render, "draw an architecture (or arch=figure1) as svg/png/pdf with graphviz"),
    "compare": (cmd_compare, "train every pattern at one params budget over seeds: "
                             "patterns=chain,ida,dla budget.params=P seeds=3 epochs=E"),
    "export": (cmd_export, "export a trained model for use without dlasearch: from=RUN_FOLDER|ZOO_NAME "
                           "or study=NAME trial=N, format=py,pt2,onnx out=DIR"),
    "report": (cmd_report, "report on a study: study=NAME [storage=URL out=DIR top=3]"),
    "rank": (cmd_rank, "score sampled architectures of a space with zero-cost proxies, no training: "
                       "space=hda n=20"),
}


SHORTCUTS = {"run": RUN_SHORTCUTS}
POSITIONAL = {"render": "arch", "train": "arch", "run": "space", "export": "from", "rank": "space"}
USAGE = {"zoo": "dlasearch zoo [format=markdown|csv]",
         "train": "dlasearch train arch=NAME|FILE [data=NAME|FILE.npz] [key=value ...]",
         "run": "dlasearch run [space=NAME|FILE.yaml] [study=NAME] [key=value ...]",
         "worker": "dlasearch worker study=NAME [storage=URL] [key=value ...]",
         "compare": "dlasearch compare budget.params=N [patterns=a,b,...] [key=value ...]",
         "report": "dlasearch report study=NAME [key=value ...]",
         "render": "dlasearch render arch=NAME|FILE|figure1 [key=value ...]",
         "export": "dlasearch export from=RUN|CHECKPOINT|ZOO_NAME | study=NAME trial=N [format=py,pt2,onnx] [out=DIR]",
         "rank": "dlasearch rank space=NAME [n=20] [proxies=a,b,...] [key=value ...]"}


def version() -> str:
    from importlib import metadata

    try:
        v = metadata.version("dlasearch")
    except metadata.PackageNotFoundError:
        from dlasearch import __version__ as v
    return f"dlasearch {v}"


def overview() -> str:
    return ("usage: dlasearch <command> [key=value ...]\n\n"
            "Explore how networks aggregate their layers (Deep Layer Aggregation).\n\ncommands:\n"
            + "\n".join(f"  {k:<10} {v[1]}" for k, v in COMMANDS.items())
            + "\n\n`dlasearch <command> --help` (or `dlasearch help <command>`) lists a command's options;"
              "\n--version prints the version; --cfg (print_config=true) prints a command's resolved config.")


def command_help(name: str) -> str:
    from dlasearch import options

    text = options.help_text(name, COMMANDS[name][0].__doc__.strip().splitlines()[0], USAGE[name])
    if name == "run":
        text += ("\n\nDefaults shown are the fallbacks; a space file sets its own (`dlasearch run space=NAME --cfg`"
                 " prints them). Without space=, study=NAME resumes a stored study: only trials, timeout and "
                 "workers may change.")
    return text


def print_config(config: dict) -> int:
    from dlasearch import options

    return options.print_config(config)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    guard.install_sigterm()
    try:
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
        from dlasearch import options as optmod

        optmod.check(command, args)
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


if __name__ == "__main__":
    sys.exit(main())
