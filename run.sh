#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv on first use, then
#   ./run.sh test [pytest args]   runs the test suite
#   ./run.sh <command> [args]     runs `dlasearch <command> [args]`
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
stamp="$venv/.dlasearch-installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
    echo "dlasearch: setting up $venv (first run only)" >&2
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    # torch is pinned to the CPU build that installs from local disk; a looser
    # requirement would pull a multi-GB CUDA build.  --no-compile: Python compiles
    # what it imports on first use; compiling every installed file up front took
    # two thirds of torch's install time (35 s against 12 s).
    "$venv/bin/pip" install -q --no-compile --disable-pip-version-check torch==2.13.0
    "$venv/bin/pip" install -q --no-compile --disable-pip-version-check -e "$here[test]"
    touch "$stamp"
fi
if [ "${1:-}" = "test" ]; then
    shift
    cd "$here"
    exec "$venv/bin/python" -m pytest "$@"
fi
exec "$venv/bin/dlasearch" "$@"
