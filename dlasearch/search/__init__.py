"""Search: Optuna studies over a space of architectures (``dlasearch run`` / ``worker``).

``space`` reads search-space files; ``study`` opens storages and studies (the one Optuna adapter);
``objective`` is one trial; ``workers`` runs trials; ``results`` exports ``trials.csv`` and ``best/``.
The public API is re-exported here: ``from dlasearch import search; search.run(space)``.
"""
from dlasearch.errors import SearchError
from dlasearch.search.study import (
    FINISHED, CONTRACT, worker_id, trial_id, set_trial_attr, fail_trial, quiet_optuna, results_dir, study_name,
    storage_url, open_storage, make_sampler, make_pruner, pruner_epochs,
    open_study, find_study, attach, fail_stale, Heartbeat, counted,
)
from dlasearch.search.objective import describe, Objective, TrialFailed
from dlasearch.search.workers import load_data, work, run
from dlasearch.search.results import export, trials_frame, trial_ir

__all__ = ['SearchError', 'FINISHED', 'CONTRACT', 'worker_id', 'trial_id', 'set_trial_attr', 'fail_trial',
           'quiet_optuna', 'results_dir', 'study_name', 'storage_url', 'open_storage', 'make_sampler', 'make_pruner', 'pruner_epochs',
           'open_study', 'find_study', 'attach', 'fail_stale', 'Heartbeat', 'counted', 'describe', 'Objective',
           'TrialFailed', 'load_data', 'work', 'run', 'export', 'trials_frame', 'trial_ir']
