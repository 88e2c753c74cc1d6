"""Chance levels and n-aware formatting: what every table uses to say a number means nothing."""
from __future__ import annotations

import math

import pytest
import torch

from dlasearch import stats


def test_chance_is_the_majority_share():
    assert stats.chance(torch.arange(10).repeat(5)) == pytest.approx(0.1)
    assert stats.chance([0, 0, 0, 1]) == pytest.approx(0.75)  # unbalanced: a constant guess scores 75%
    assert math.isnan(stats.chance([]))


def test_at_chance_uses_two_standard_errors():
    # 10 classes on 400 images: SE = sqrt(0.09/400) = 0.015, so the limit is 13%
    assert stats.chance_limit(0.1, 400) == pytest.approx(0.13)
    assert stats.at_chance(0.1007, 0.1, 400) and stats.at_chance(0.129, 0.1, 400)
    assert not stats.at_chance(0.131, 0.1, 400)
    assert not stats.at_chance(None, 0.1, 400) and not stats.at_chance(float("nan"), 0.1, 400)
    line = stats.chance_line("validation accuracy", 0.097, 0.1, 144)
    assert line.startswith("warning: validation accuracy 9.7% is at chance") and "\n" not in line


def test_fmt_shows_a_dash_below_the_needed_n():
    assert stats.fmt(0.5, ".2f") == "0.50"
    assert stats.fmt(0.5, ".2f", n=1, need=stats.MIN_SPREAD) == stats.DASH
    assert stats.fmt(float("nan"), ".2f") == stats.DASH
    assert stats.fmt(-1.0, ".2f", n=3, need=stats.MIN_CORRELATION) == stats.DASH
