"""Command line: ``dlasearch <command> [key=value ...]``.

Each command is a function registered in ``COMMANDS``; user errors
(``DLASearchError``) become one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
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


def cmd_zoo(args: dict) -> int:
    """Print the zoo: params, MACs at 224 and 32, blocks and aggregation nodes."""
    from dlasearch.zoo import table as zoo_table

    unknown = set(args) - {"format"}
    if unknown:
        raise DLASearchError(f"zoo: unknown option(s) {sorted(unknown)}; allowed: format=markdown|csv")
    fmt = args.get("format", "markdown")
    if fmt not in ("markdown", "csv"):
        raise DLASearchError(f"zoo: format={fmt!r}; allowed: markdown, csv")
    df = zoo_table()
    print(df.to_markdown(index=False) if fmt == "markdown" else df.to_csv(index=False), end="\n")
    return 0


_TRAIN_RUN_OPTIONS = ("arch", "data", "image_size", "resize", "test", "latency", "out", "name")


def cmd_train(args: dict) -> int:
    """Train one architecture on one dataset, print its metrics, write metrics.json + ir.json."""
    from tabulate import tabulate

    from dlasearch import train

    if "arch" not in args:
        raise DLASearchError("arch=<zoo name | spec.json | ir.json> is required, e.g. "
                             "`dlasearch train arch=dla34 data=fashion_mnist epochs=3`")
    allowed = (*_TRAIN_RUN_OPTIONS, *train.TrainConfig.option_names())
    unknown = [k for k in args if k not in allowed]
    if unknown:
        hint = did_you_mean(unknown[0], allowed)
        raise DLASearchError(f"unknown option {unknown[0]!r}{hint}; allowed: {', '.join(allowed)}")
    run_opts = {k: args[k] for k in _TRAIN_RUN_OPTIONS if k in args}
    config = train.TrainConfig(**{k: v for k, v in args.items() if k not in _TRAIN_RUN_OPTIONS})
    for k in ("test", "latency"):
        if not isinstance(run_opts.get(k, False), bool):
            raise DLASearchError(f"{k}={run_opts[k]!r}; expected true or false")
    record, folder = train.run(run_opts.pop("arch"), run_opts.pop("data", None), config, **run_opts)
    m = record["metrics"]
    rows = [("arch", record["name"]), ("data", f"{record['data']['name']} {record['data']['image_size']}"),
            ("status", record["status"] + (f" ({record['reason']})" if record["reason"] else ""))]
    rows += [(k, f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else "n/a")
             for k, v in m.items()]
    rows.append(("run folder", str(folder)))
    print(tabulate(rows, headers=["metric", "value"], tablefmt="github"))
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
    from dlasearch import search, space

    sp = space.load(str(args.pop("space", "hda")), args)
    search.run(sp)
    return 0


def cmd_worker(args: dict) -> int:
    """Attach this process to an existing study (``study=NAME storage=URL``)."""
    from dlasearch import search

    unknown = set(args) - {"study", "storage", "threads", "trials", "index"}
    if unknown or "study" not in args:
        raise DLASearchError(f"worker: needs study=NAME [storage=URL] [threads=N] [trials=N]; "
                             f"unknown: {sorted(unknown)}" if unknown else "worker: needs study=NAME")
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
    search.work(study, sp)
    return 0


def cmd_compare(args: dict) -> int:
    """Train every aggregation pattern at one parameter budget over seeds; table, CSVs and plots."""
    from dlasearch import compare

    return compare.command(args)


def cmd_report(args: dict) -> int:
    """Summarise a study: trials table, Pareto/history, importance, plots, top-k diagrams, report.md."""
    from dlasearch import report

    return report.command(args)


COMMANDS = {
    "zoo": (cmd_zoo, "table of the DLA model zoo (params, MACs, blocks, aggregation nodes)"),
    "run": (cmd_run, "search a space with Optuna: space=hda [trials=N epochs=E storage=URL workers=K ...]"),
    "worker": (cmd_worker, "attach a worker process to a study: study=NAME storage=URL"),
    "train": (cmd_train, "train one architecture on a dataset; print and save its metrics"),
    "render": (cmd_render, "draw an architecture (or arch=figure1) as svg/png/pdf with graphviz"),
    "compare": (cmd_compare, "train every pattern at one params budget over seeds: "
                             "patterns=chain,ida,dla budget.params=P seeds=3 epochs=E"),
    "report": (cmd_report, "report on a study: study=NAME [storage=URL out=DIR top=3]"),
}


SHORTCUTS = {"run": RUN_SHORTCUTS}
POSITIONAL = {"render": "arch", "train": "arch", "run": "space"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dlasearch",
        description="Explore how networks aggregate their layers (Deep Layer Aggregation).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {k:<10} {v[1]}" for k, v in COMMANDS.items())
        + "\n\noptions are key=value pairs, e.g. `dlasearch zoo format=csv`",
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="command")
    parser.add_argument("options", nargs="*", help="key=value options")
    ns = parser.parse_args(argv)
    guard.install_sigterm()
    try:
        if ns.command in POSITIONAL and ns.options and "=" not in ns.options[0]:
            ns.options[0] = f"{POSITIONAL[ns.command]}={ns.options[0]}"  # `render figure1`
        aliases = SHORTCUTS.get(ns.command)
        return COMMANDS[ns.command][0](parse_overrides(list(ns.options), aliases)) or 0
    except DLASearchError as e:
        print(f"dlasearch {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except guard.Terminated:
        print(f"dlasearch {ns.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"dlasearch {ns.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
