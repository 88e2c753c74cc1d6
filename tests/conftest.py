import json
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
REFERENCE = Path(__file__).resolve().parent / "reference"
SIGNALS = (signal.SIGTERM, signal.SIGINT)

# A suite started in the background by a non-interactive shell (`nohup ./run.sh test &`, a CI runner
# without job control) inherits SIGINT ignored, and an ignored signal stays ignored across exec: every
# `dlasearch` child a test interrupts with SIGINT would then run on. Python's handler instead is reset to
# the default in a child, which then turns SIGINT into KeyboardInterrupt as for a user's Ctrl-C.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def signal_handlers_unchanged(request):
    """Every test leaves SIGTERM and SIGINT as it found them: a handler left behind once made the
    pytest process ignore SIGTERM, so `timeout 600 pytest` could not stop the suite."""
    before = {s: signal.getsignal(s) for s in SIGNALS}
    yield
    left = [s.name for s in SIGNALS if signal.getsignal(s) != before[s]]
    for s in SIGNALS:
        signal.signal(s, before[s])
    assert not left, f"{request.node.nodeid} left its own handler for {', '.join(left)} installed"


@pytest.fixture(scope="session")
def reference():
    """Published facts of the original DLA models (kept in tests/reference, so no clone skips them)."""
    return json.loads((REFERENCE / "dla_models.json").read_text())["models"]


def tiny_spec(pattern="dla", **kw):
    """A small backbone every pattern can run on at 32x32 in milliseconds."""
    spec = {
        "pattern": pattern, "num_classes": 10,
        "stem": {"channels": 8, "kernel": 3},
        "conv_stages": [{"convs": 1, "channels": 8, "stride": 1}, {"convs": 1, "channels": 16, "stride": 2}],
        "stages": [{"blocks": 2, "channels": 16}, {"blocks": 4, "channels": 32}, {"blocks": 2, "channels": 32}],
    }
    spec.update(kw)
    return spec


def with_sections(base: dict, over: dict) -> dict:
    """``base`` space overrides with ``over`` merged in, one section deep (a dict updates, anything else replaces)."""
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return base
