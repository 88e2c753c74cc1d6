"""Command line: ``dlasearch <command> [key=value ...]``.

Each command is a function registered in ``COMMANDS``; user errors
(``DLASearchError``) become one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys

from dlasearch.errors import DLASearchError


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> nested dict with YAML-typed values (via OmegaConf)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for it in items:
        if "=" not in it or it.startswith("="):
            raise DLASearchError(f"argument {it!r}: expected key=value")
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


COMMANDS = {
    "zoo": (cmd_zoo, "table of the DLA model zoo (params, MACs, blocks, aggregation nodes)"),
}


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
    try:
        return COMMANDS[ns.command][0](parse_overrides(ns.options)) or 0
    except DLASearchError as e:
        print(f"dlasearch {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dlasearch {ns.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
