"""Make committed results portable: no machine's folder names, a data file known by its content hash.

Why: the results made before 2026-12-04 named their data by absolute path (/work/shared/data/...) in
compare's ``settings.json``, the benchmark studies' ``journal.log`` (the study's contract and space)
and ``config.yaml``, and the benchmark's ``meta.json``, so a clone at another path that ran the
documented command was refused (``data.path: '<one path>' -> '<another>'``). This rewrites every such
path relative to the project root (``../shared/data/...``, as the READMEs write the commands), records
the data file's SHA-256 beside it (resumes compare that, not the path), and replaces ``meta.json``'s
platform string (kernel and host) by the CPU model and core count. Nothing else in a file changes; a
second run rewrites nothing. Needs the data files where the paths name them, to hash them.

    python bench/migrate_results.py            # rewrite results/ in place, print each file rewritten
    python bench/migrate_results.py --check    # only say what would change; exit 1 if anything would
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlasearch import files  # noqa: E402
from dlasearch.configfile import data_identity, to_yaml  # noqa: E402

# The machine each committed benchmark was built on, as results/README.md records it ("the same
# 2-core AMD EPYC VM"); its meta.json had only the architecture (x86_64) and the platform string.
MACHINES = {"cifar5k": {"cpu": "AMD EPYC", "cores": 2}}


def portable(path):
    """An absolute path as results store it (relative to the project root); anything else unchanged."""
    return files.portable(path, ROOT) if isinstance(path, str) and os.path.isabs(path) else path


def with_hash(data: dict, where: Path) -> dict:
    """``data`` with a portable ``path`` and the file's ``sha256`` (the file must be here)."""
    if not isinstance(data.get("path"), str):
        return data
    out = data_identity({**data, "path": portable(data["path"])})
    if "sha256" not in out:
        raise SystemExit(f"{where}: cannot read {data['path']} to hash it; put the data file there "
                         f"(paths are relative to {ROOT}) and rerun")
    return out


def settings_json(path: Path) -> str:
    """compare's settings.json: data.path and data_summary.source portable, data.sha256 added."""
    d = json.loads(path.read_text())
    d["data"] = with_hash(d["data"], path)
    if isinstance(d.get("data_summary"), dict):
        d["data_summary"]["source"] = portable(d["data_summary"].get("source"))
    return json.dumps(d, indent=1, default=str) + "\n"  # as the runner writes it


def journal_log(path: Path) -> str:
    """A study journal: the study's ``contract`` and ``space`` attributes with a portable data path (and
    the contract with the file's hash); every other record byte for byte as it was."""
    out = []
    for line in path.read_text().splitlines(keepends=True):
        rec = json.loads(line)
        attrs = rec.get("user_attr") if rec.get("op_code") == 2 else None  # SET_STUDY_USER_ATTR
        if not attrs or not set(attrs) & {"contract", "space"}:
            out.append(line)
            continue
        for key in set(attrs) & {"contract", "space"}:
            value = json.loads(attrs[key])
            if key == "contract":
                value["data"] = with_hash(value["data"], path)
                attrs[key] = json.dumps(value, sort_keys=True)  # as study._contract writes it
            else:
                value["data"] = {**value["data"], "path": portable(value["data"].get("path"))}
                attrs[key] = json.dumps(value)
        new = json.dumps(rec, separators=(",", ":")) + "\n"  # as Optuna's journal writes a record
        out.append(line if json.loads(new) == json.loads(line) else new)
    return "".join(out)


def config_yaml(path: Path) -> str:
    """A study's config.yaml with a portable data path, written as dlasearch writes config.yaml."""
    text = path.read_text()
    d = yaml.safe_load(text)
    if not isinstance(d.get("data", {}).get("path"), str) or not os.path.isabs(d["data"]["path"]):
        return text
    d["data"]["path"] = portable(d["data"]["path"])
    return to_yaml(d)


def meta_json(path: Path) -> str:
    """A benchmark's meta.json: the command's data path portable; the machine as CPU model and cores."""
    meta = json.loads(path.read_text())
    if "command" in meta:
        meta["command"] = re.sub(r"(data(?:\.path)?=)(/\S+)", lambda m: m[1] + portable(m[2]), meta["command"])
    machine = meta.get("machine", {})
    if "platform" in machine or "processor" in machine:
        known = MACHINES.get(meta.get("name"), {"cpu": machine.get("processor"), "cores": None})
        meta["machine"] = {**known, "python": machine.get("python"), "torch": machine.get("torch")}
    return json.dumps(meta, indent=1)  # as bench.export writes it


def targets(results: Path):
    yield from ((p, settings_json) for p in sorted(results.glob("compare/*/settings.json")))
    for study in sorted(p for p in results.glob("bench-*") if p.is_dir()):
        yield from ((p, f) for p, f in ((study / "journal.log", journal_log), (study / "config.yaml", config_yaml))
                    if p.exists())
    yield from ((p, meta_json) for p in sorted(results.glob("bench/*/meta.json")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "results"), help="the results folder (default: the project's)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    args = ap.parse_args(argv)
    os.chdir(ROOT)  # stored relative paths are relative to the project root
    changed = []
    for path, rewrite in targets(Path(args.results)):
        old, new = path.read_text(), rewrite(path)
        if new == old:
            continue
        lines = sum(ln[:1] in "+-" for ln in difflib.ndiff(old.splitlines(), new.splitlines()) if ln[:2] != "  ")
        changed.append(path)
        print(f"{'would rewrite' if args.check else 'rewrote'} {path} ({lines} line(s) out or in)")
        if not args.check:
            files.write_atomic(path, new)
    if not changed:
        print("nothing to rewrite")
    if args.check:
        return 1 if changed else 0
    left = [p for p, _ in targets(Path(args.results)) if str(ROOT.parent) + os.sep in p.read_text()]
    for p in left:
        print(f"still names a folder of this machine: {p}")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
