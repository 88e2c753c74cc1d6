"""Symbolic resolutions: a map's size written as operations on the input size H.

A resolution is a tuple of ops: ``("d", s)`` is ceil(size / s) (a strided conv or a ceil-mode
pool), ``("u", f)`` is size * f.  Validation compares these symbolically, so a check holds for
every input size, not just the one that was tried.
"""
from __future__ import annotations

__all__ = ["normalize", "text", "size", "POOLED"]

POOLED = ("pooled",)  # the resolution of a globally pooled head output


def normalize(ops: tuple) -> tuple:
    """Canonical form of ``ops``.

    ceil(ceil(n/a)/b) = ceil(n/ab), and an upsample followed by a downsample of
    a multiple/divisor of its factor reduces exactly.
    """
    out: list = []
    for op in ops:
        out.append(op)
        while len(out) >= 2:
            (a, x), (b, y) = out[-2], out[-1]
            if a == b == "d":
                out[-2:] = [("d", x * y)]
            elif a == b == "u":
                out[-2:] = [("u", x * y)]
            elif a == "u" and b == "d" and y % x == 0:
                out[-2:] = [("d", y // x)] if y != x else []
            elif a == "u" and b == "d" and x % y == 0:
                out[-2:] = [("u", x // y)]
            else:
                break
        out = [o for o in out if o[1] != 1]
    return tuple(out)


def text(res: tuple) -> str:
    """``ceil(H/4)``-style text of a resolution, for error messages."""
    s = "H"
    for op, v in res:
        s = f"ceil({s}/{v})" if op == "d" else f"{s}*{v}"
    return s


def size(res: tuple, s: int) -> int:
    """The concrete size of ``res`` for an input side of ``s``."""
    for op, v in res:
        s = -(-s // v) if op == "d" else s * v
    return s
