"""Zero-cost screening: ask the sampler for K candidates, train only the one a proxy scores best.

Each candidate is a real trial of the study, asked from the study's own sampler (so TPE's model
proposes them), scored without training, and closed as FAIL with ``candidate=True``: samplers
ignore failed trials, ``counted`` does not count them, and ``trials.csv`` leaves them out. The
winner's parameters are queued, so the next trial trains exactly that architecture.
"""
from __future__ import annotations

import math
from typing import Callable

import optuna
from optuna.trial import TrialState

from dlasearch.search import attrs

__all__ = ["screen"]


def screen(study: optuna.Study, k: int, score: Callable[[optuna.Trial], float | None], proxy: str) -> int | None:
    """Queue the best of ``k`` candidates by ``score`` (None: an invalid candidate); returns its number."""
    best, best_score = None, -math.inf
    for _ in range(k):
        t = study.ask()
        try:
            s = score(t)
        except Exception as e:  # an invalid candidate is skipped, as a search would fail it
            t.set_user_attr(attrs.FAIL_REASON, f"screening candidate: {type(e).__name__}: {e}")
            s = None
        t.set_user_attr(attrs.CANDIDATE, True)
        if s is not None and math.isfinite(s):
            t.set_user_attr(proxy, s)
            if s > best_score:
                best, best_score = t, s
        study.tell(t, state=TrialState.FAIL)
    if best is None:
        return None
    study.enqueue_trial(best.params, user_attrs={attrs.SCREENED: f"best of {k} by {proxy} ({best_score:.4g}), "
                                                             f"candidate #{best.number}"})
    return best.number
