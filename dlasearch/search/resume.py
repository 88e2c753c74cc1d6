"""What ``dlasearch run`` runs: a space file plus overrides, or an existing study resumed by name.

``run study=NAME [trials=N]`` (no ``space=``) reopens the study with the space,
data, training settings and storage it was created with; only ``trials``,
``timeout`` and ``workers`` may change, since anything else would mix trials
that are not comparable, and what happens around the trials: ``max_duplicates``
and ``confirm`` (``confirm=K seeds=S``: the confirmation after the search).
"""
from __future__ import annotations

from pathlib import Path

from dlasearch import files
from dlasearch.configfile import differences, flatten
from dlasearch.errors import DLASearchError
from dlasearch.search import bench, space as spacemod
from dlasearch.search.study import find_study, stored_space
from dlasearch.train import tracking

__all__ = ['resolve', 'stored', 'differences']

CHANGEABLE = ("trials", "timeout", "workers", "max_duplicates", "confirm")
IDENTITY = ("name", "storage")


def resolve(args: dict) -> dict:
    """The validated space ``dlasearch run`` should run (``args`` are the parsed overrides)."""
    log = args.pop("log", None)
    tracking.parse(log)
    study = args.get("study") if isinstance(args.get("study"), dict) else {}
    data = args.get("data") if isinstance(args.get("data"), dict) else {}
    bench_name = str(data.get("name", "")).removeprefix(bench.PREFIX) if bench.is_bench({"data": data}) else None
    if "space" not in args and bench_name:  # a search over the benchmark's own space
        sp = spacemod.load(str(bench.Bench.load(bench_name, study.get("results")).space_path), args)
        sp["name"] = f"table-{bench_name}"
    elif "space" not in args and study.get("name") is not None:
        sp = stored(str(study["name"]), study.get("storage"), args)
    else:
        sp = spacemod.load(str(args.pop("space", "hda")), args)
    sp["log"] = log
    return sp


def stored(name: str, storage, args: dict) -> dict:
    """The space study ``name`` was created with, plus the changeable overrides in ``args``."""
    files.check_study_name(name, "study", DLASearchError)
    url = str(storage) if storage else str(files.default_journal(name))
    if "://" not in url and not Path(url).is_file():
        raise DLASearchError(f"study {name!r}: nothing to resume at {url}; start it with space=NAME "
                             f"(e.g. `dlasearch run space=hda study={name}`), or pass storage=URL")
    study, url = find_study(name, url)
    sp = stored_space(study)
    extra = {k: v for k, v in flatten(args).items()
             if not (k.startswith("study.") and k[len("study."):].split(".")[0] in CHANGEABLE + IDENTITY)}
    if extra:
        key, value = next(iter(extra.items()))
        raise DLASearchError(f"study {name!r} exists: resuming keeps the space, data, training and storage it "
                             f"was created with; only {', '.join(CHANGEABLE)} can change (got {key}={value!r}). "
                             f"Start a new study with space=... study=NEW_NAME")
    for k in CHANGEABLE:
        if k in args["study"]:
            v = args["study"][k]  # confirm: the keys given, the others as stored
            sp["study"][k] = {**sp["study"][k], **v} if isinstance(v, dict) and isinstance(sp["study"].get(k), dict) else v
    sp["study"]["name"] = name
    sp["study"]["storage"] = storage if storage else sp["study"]["storage"]
    sp.pop("log", None)
    out = spacemod.validate({k: v for k, v in sp.items() if k != "name"})  # type-checks the new values
    out["name"] = sp["name"]
    return out
