"""Training: datasets (``data``), the trainer and its engine, metrics (``measure``), and one
measured run as ``dlasearch train`` makes it (``runs``).

The training API is re-exported here: ``from dlasearch import train; train.train(model, data, cfg)``.
"""
from dlasearch.errors import TrainError
from dlasearch.train.config import (
    PRECISIONS, StopTraining, TrainConfig, TrainResult, resolve_device, autocast_dtype,
)
from dlasearch.train.trainer import evaluate, train, measure_arch
from dlasearch.train.runs import (
    MAX_AUTO_GROWTH, save_run, save_or_fallback, run_folder, DATA_OPTIONS, data_options, resolved_config,
    run,
)

__all__ = ['TrainError', 'PRECISIONS', 'StopTraining', 'TrainConfig', 'TrainResult', 'resolve_device',
           'autocast_dtype', 'evaluate', 'train', 'measure_arch', 'MAX_AUTO_GROWTH', 'save_run', 'save_or_fallback',
           'run_folder', 'DATA_OPTIONS', 'data_options', 'resolved_config', 'run']
