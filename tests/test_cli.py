"""The command line: tables on success, one clear line and a non-zero exit on bad input."""
import subprocess
import sys

import pytest

from dlasearch.cli import main


def test_zoo_table(capsys):
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert "| dla34 " in out and "15742104" in out and "aggregation nodes" in out
    assert "dla169up" in out


def test_zoo_csv(capsys):
    assert main(["zoo", "format=csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("name,params") and len(lines) == 15


@pytest.mark.parametrize("args,msg", [
    (["zoo", "format=pdf"], "format='pdf': allowed: markdown, csv"),
    (["zoo", "colour=red"], "unknown option"),
    (["zoo", "format"], "expected key=value"),
])
def test_bad_options_one_line(args, msg, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "dlasearch.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "zoo" in out.stdout
