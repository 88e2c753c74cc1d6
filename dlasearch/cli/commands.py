"""The commands: each parses nothing itself (``options`` checked its options) and calls the layer it
drives, so a command is a few lines; ``COMMANDS`` names them with their one-line summaries.
"""
from __future__ import annotations

import sys
from contextvars import ContextVar

from tabulate import tabulate

from dlasearch import files, search, stats, train
from dlasearch.analysis import benchmark, compare, render, report
from dlasearch.configfile import print_config
from dlasearch.deploy import export, predict
from dlasearch.errors import DLASearchError, did_you_mean
from dlasearch.search import bench, rank, resume, space as spacemod, storage_proxy
from dlasearch.search.study import with_pinned
from dlasearch.zoo import table as zoo_table

__all__ = ['cmd_zoo', 'cmd_train', 'cmd_render', 'cmd_run', 'cmd_worker', 'cmd_compare', 'cmd_export', 'cmd_predict',
           'cmd_report', 'cmd_rank', 'cmd_bench', 'cmd_storage', 'print_config']


# The command line being run (``dlasearch bench build ...``) as the user typed it, set by ``cli.main`` for
# the commands that record how their results were made; ``main(argv)`` from Python sets it too.
COMMAND_LINE: ContextVar[str] = ContextVar("command_line", default="")


def _ints_at_least(command: str, args: dict, **lows: int) -> None:
    """Refuse any of ``lows`` given as something other than an int at least its bound."""
    for k, lo in lows.items():
        v = args.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            raise DLASearchError(f"{command}: {k}={v!r}: expected an int >= {lo}")


def cmd_zoo(args: dict) -> int:
    """Print the zoo: params, MACs at 224 and 32, blocks and aggregation nodes."""
    fmt = args.get("format", "markdown")
    df = zoo_table()
    print(df.to_markdown(index=False) if fmt == "markdown" else df.to_csv(index=False), end="\n")
    return 0


_TRAIN_RUN_OPTIONS = ("arch", "data", "image_size", "resize", "test", "latency", "out", "name", "weights",
                      "overwrite")


def cmd_train(args: dict) -> int:
    """Train one architecture on one dataset, print its metrics, write metrics.json + ir.json."""
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
    rows += [(k, f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else v if isinstance(v, str)
              else " ".join("-" if x is None else f"{x:.3f}" for x in v) if isinstance(v, list) else "n/a")
             for k, v in m.items()]
    rows.append(("run folder", str(folder)))
    print(tabulate(rows, headers=["metric", "value"], tablefmt="github"))
    val = record["chance"]["val"]
    if val["at_chance"]:
        print(stats.chance_warning("validation", val), file=sys.stderr)
    return 0


def cmd_render(args: dict) -> int:
    """Draw an architecture, or the paper's Figure 1 (arch=figure1), with graphviz."""
    return render.command(args)


def cmd_run(args: dict) -> int:
    """Run (or resume) a search: ``space=NAME`` plus overrides merged into the space file."""
    show = args.pop("print_config", False)
    sp = resume.resolve(args)
    if show:  # as results/<study>/config.yaml holds it, with what the study fixes at creation
        return print_config({k: v for k, v in with_pinned(sp).items() if k != "name"} | {"space": sp["name"]})
    search.run(sp)
    return 0


def cmd_worker(args: dict) -> int:
    """Attach this process to an existing study (``study=NAME storage=URL``)."""
    if "study" not in args:  # unknown options and wrong types were refused by options.check
        raise DLASearchError("worker: needs study=NAME, e.g. `dlasearch worker study=hda`")
    _ints_at_least("worker", args, threads=1, trials=1, index=0)
    name = files.check_study_name(args["study"], "study")
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
    return compare.command(args)


def cmd_export(args: dict) -> int:
    """Write a trained model as model.py (+ weights), model.pt2 and/or model.onnx with a README."""
    return export.command(args)


def cmd_predict(args: dict) -> int:
    """Run a trained model on images: palette PNG masks and overlays (dense), or a CSV of labels (classifier)."""
    return predict.command(args)


def cmd_report(args: dict) -> int:
    """Summarise a study: trials table, Pareto/history, importance, plots, top-k diagrams, report.md."""
    return report.command(args)


def cmd_rank(args: dict) -> int:
    """Score architectures sampled from a space with zero-cost proxies (no training); write a CSV."""
    return rank.command(args)


def cmd_bench(args: dict) -> int:
    """Build a benchmark of a space (resumable), look architectures up in it, or rewrite its report."""
    action, name = args.pop("action", None), args.pop("name", None)
    if action not in BENCH_ACTIONS or not name:
        raise DLASearchError(f"bench: needs an action ({', '.join(BENCH_ACTIONS)}) and name=NAME, e.g. "
                             f"`dlasearch bench build name=cifar5k space=bench`")
    _ints_at_least("bench", args, n=1, repeat=0, reps=0, trials=1, k=2, top=1)
    sim = {"simulate_reps": args.pop("reps", 30), "trials": args.pop("trials", 50), "k": args.pop("k", 10),
           "proxy": args.pop("proxy", None), "against": _folders(args.pop("against", None))}
    if action == "lookup":
        return _bench_lookup(bench.Bench.load(name), args)
    if action == "report":
        benchmark.report(bench.Bench.load(name).folder, **sim)
        return 0
    n, repeat = args.pop("n", None), args.pop("repeat", 30)
    sp = spacemod.load(str(args.pop("space", "bench")), args)
    folder = bench.build(name, sp, n=n, repeat=repeat)
    benchmark.report(folder, **sim, command=COMMAND_LINE.get())
    return 0


BENCH_ACTIONS = ("build", "lookup", "report")


def _folders(value) -> list[str] | None:
    """``against=a,b`` (or a YAML list) as a list of folders; ``against=none`` as []; absent: None (keep)."""
    if value is None:
        return None
    items = value if isinstance(value, list) else str(value).split(",")
    items = [str(i).strip() for i in items if str(i).strip()]
    return [] if items in ([], ["none"]) else items


def cmd_storage(args: dict) -> int:
    """Serve a study database to many workers through Optuna's gRPC storage proxy (docs/scale.md)."""
    action = args.pop("action", None)
    if action not in STORAGE_ACTIONS or "storage" not in args:
        raise DLASearchError(f"storage: needs an action ({', '.join(STORAGE_ACTIONS)}) and storage=DATABASE_URL, "
                             f"e.g. `dlasearch storage serve storage=postgresql://user@db/optuna host=0.0.0.0 "
                             f"port=13000`")
    storage_proxy.serve(str(args["storage"]), str(args.get("host", "localhost")),
                        args.get("port", storage_proxy.DEFAULT_PORT))
    return 0


STORAGE_ACTIONS = ("serve",)


def _bench_lookup(b, args: dict) -> int:
    df = b.df
    if "fingerprint" in args:
        df = df[df.fingerprint.astype(str).str.startswith(str(args["fingerprint"]))]
    if "pattern" in args:
        have = sorted(set(b.df.pattern))
        if args["pattern"] not in have:
            raise DLASearchError(f"bench lookup: pattern={args['pattern']!r}{did_you_mean(str(args['pattern']), have)}; "
                                 f"the benchmark has: {', '.join(have)}")
        df = df[df.pattern == args["pattern"]]
    sort = args.get("sort", "val_accuracy")
    if sort not in df.columns:
        raise DLASearchError(f"bench lookup: sort={sort!r}{did_you_mean(str(sort), list(df.columns))}; "
                             f"allowed: {', '.join(df.columns)}")
    df = df.sort_values(sort, ascending=sort in ("params", "macs", "train_memory", "train_seconds"))
    cols = ["fingerprint", "pattern", "arch", "params", "macs", "val_accuracy", "val_accuracy_seed1"]
    print(df.head(args.get("top", 20))[cols].to_markdown(index=False, floatfmt=".4g"))
    print(f"{len(df)} of {len(b.df)} architectures match; table: {b.folder / 'bench.csv'}")
    return 0


COMMANDS = {
    "zoo": (cmd_zoo, "table of the DLA model zoo (params, MACs, blocks, aggregation nodes)"),
    "run": (cmd_run, "search a space with Optuna: space=hda [trials=N epochs=E storage=URL workers=K ...]"),
    "worker": (cmd_worker, "attach a worker process to a study: study=NAME storage=URL"),
    "train": (cmd_train, "train one architecture on a dataset; print and save its metrics"),
    "render": (cmd_render, "draw an architecture (or arch=figure1) as svg/png/pdf with graphviz"),
    "compare": (cmd_compare, "train every pattern at one params budget over seeds: "
                             "patterns=chain,ida,dla budget.params=P seeds=3 epochs=E (task=segment: x decoders=...)"),
    "export": (cmd_export, "export a trained model for use without dlasearch: from=RUN_FOLDER|ZOO_NAME "
                           "or study=NAME trial=N, format=py,pt2,onnx out=DIR"),
    "predict": (cmd_predict, "run a trained model on images: from=RUN_FOLDER|CHECKPOINT or study=NAME trial=N, "
                             "images=FILE.npz|FOLDER|FILE.png out=DIR (masks + overlays, or a CSV of labels)"),
    "report": (cmd_report, "report on a study: study=NAME [storage=URL out=DIR top=3]"),
    "bench": (cmd_bench, "a benchmark of a space: build name=N space=bench (train every architecture, "
                         "resumable) | lookup name=N [pattern= top=] | report name=N"),
    "rank": (cmd_rank, "score sampled architectures of a space with zero-cost proxies, no training: "
                       "space=hda n=20"),
    "storage": (cmd_storage, "serve a database to many workers (Optuna's gRPC proxy): serve "
                             "storage=postgresql://... host=0.0.0.0 port=13000; workers take storage=grpc://HOST:PORT"),
}

