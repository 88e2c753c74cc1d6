"""A results folder's ``config.yaml`` (the fully resolved config as YAML, written atomically), and
nested configs flattened to dotted keys and compared key by key (a data file by its content hash,
so results made on one machine resume on another that keeps the file elsewhere).

Why a floor of its own: training runs, studies and comparisons all write a config, the command line
prints it (``--cfg``) and checks its keys, and a resume names each key it refuses, so these rules sit
beside ``files`` below all of them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from dlasearch.files import absolute, content_hash, write_text

__all__ = ['to_yaml', 'write_config', 'print_config', 'flatten', 'differences', 'data_identity', 'same_data']


def to_yaml(config: dict) -> str:
    """The resolved config as YAML (what ``config.yaml`` holds and ``print_config=true`` prints)."""
    return OmegaConf.to_yaml(OmegaConf.create(_plain(config)))


def _plain(v):
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def write_config(folder, config: dict) -> None:
    """Write ``config.yaml`` (atomically) into a results folder."""
    write_text(Path(folder) / "config.yaml", to_yaml(config))  # a failure: one line naming the file


def print_config(config: dict) -> int:
    sys.stdout.write(to_yaml(config))
    return 0


def flatten(args: dict, prefix: str = "", mappings=()) -> dict:
    """``{"data": {"limit": 5}}`` -> ``{"data.limit": 5}``; values of mapping options stay whole."""
    out = {}
    for k, v in args.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in mappings:
            out.update(flatten(v, key + ".", mappings))
        else:
            out[key] = v
    return out


def differences(old, new, path: str = "") -> list[str]:
    """``key: stored X, given Y`` for every leaf that differs (so a refusal names the key and both values)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            out += differences(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        return out
    if old != new:
        return [f"{path}: stored {json.dumps(old)}, given {json.dumps(new)}"]
    return []


def data_identity(data: dict) -> dict:
    """``data`` (a data section of a space or comparison) with ``sha256``, the content hash of the file
    its ``path`` names, when that file is here: what a stored contract records besides the path."""
    path = data.get("path") if isinstance(data, dict) else None
    digest = content_hash(path) if isinstance(path, str) else None
    return {**data, "sha256": digest} if digest else data


def same_data(stored, given) -> tuple:
    """Two data sections as a resume compares them: a dataset by name, a file by content, not by where
    a machine keeps it.  ``root`` is left out; ``path`` is the file's SHA-256 when both sides know it
    (stored, or hashed from a file that is here), else the absolute path."""
    if not (isinstance(stored, dict) and isinstance(given, dict)):
        return stored, given
    old, new = ({k: v for k, v in d.items() if k not in ("root", "sha256")} for d in (stored, given))
    paths = [d.get("path") for d in (stored, given)]
    if all(isinstance(p, str) for p in paths):
        digests = [d.get("sha256") or content_hash(d["path"]) for d in (stored, given)]
        if all(digests):
            old["path"], new["path"] = (f"sha256:{h}" for h in digests)
        else:
            old["path"], new["path"] = (absolute(p) for p in paths)
    return old, new
