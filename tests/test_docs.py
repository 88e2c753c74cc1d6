"""The imports the README and docs/ show work as written, in a fresh interpreter as a reader runs them
(``from dlasearch import render`` in docs/render.md failed: render lives in ``dlasearch.analysis``)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
IMPORT = re.compile(r"^(?:from dlasearch[\w.]* import .+|import dlasearch[\w.]*)$")


def _imports() -> dict:
    found = {}
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in BLOCK.findall(md.read_text()):
            for line in block.splitlines():
                line = line.split("#")[0].strip()
                if IMPORT.match(line):
                    found.setdefault(line, md.relative_to(ROOT))
    return found


def test_every_documented_import_works_in_a_fresh_process():
    found = _imports()
    assert any("analysis import render" in line for line in found)  # the collection reads the docs
    code = "\n".join(f"try:\n    {line}\nexcept Exception as e:\n    print({str(where)!r}, {line!r}, repr(e))"
                     for line, where in found.items())
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
