"""Live progress of long commands (``run``, ``compare``): epochs done of the planned total, elapsed, ETA.

On a terminal a tqdm bar; otherwise (a log file, CI, a pipe) one line per epoch,
so a job log shows that something is happening and when it should end.  Work
that turns out not to be needed (a pruned trial, a reused run) is taken off
the total, so the ETA stays honest.
"""
from __future__ import annotations

import sys
import time

__all__ = ['duration', 'Progress']


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Counts epochs done out of ``total``; ``update(label)`` after each epoch, ``drop(n)`` for skipped work."""

    def __init__(self, total: int, what: str, stream=None, tty: bool | None = None, show: bool = True):
        """``show=False`` counts silently (library callers that pass their own ``log``)."""
        self.stream = stream if stream is not None else sys.stderr
        self.show = show
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.total, self.done, self.what = max(0, total), 0, what
        self.start = time.monotonic()
        self.bar = None
        if self.tty and show:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=what, unit="epoch", file=self.stream, dynamic_ncols=True)

    def eta(self) -> float | None:
        if not self.done:
            return None
        return (time.monotonic() - self.start) / self.done * max(0, self.total - self.done)

    def line(self, label: str) -> str:
        eta = self.eta()
        return (f"{label} | {self.done}/{self.total} epochs | elapsed {duration(time.monotonic() - self.start)}"
                f" | ETA {duration(eta) if eta is not None else '?'}")

    def update(self, label: str, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.set_description(f"{self.what} {label}", refresh=False)
            self.bar.update(n)
        elif self.show:
            print(self.line(label), file=self.stream, flush=True)

    def drop(self, n: int) -> None:
        """``n`` planned epochs will not run (pruned, rejected, reused)."""
        if n > 0:
            self.total = max(self.done, self.total - n)
            if self.bar is not None:
                self.bar.total = self.total
                self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
