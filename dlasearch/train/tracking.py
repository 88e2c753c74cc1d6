"""Experiment tracking: per-epoch metrics to TensorBoard and/or MLflow (``log=tensorboard|mlflow``).

So a user can watch runs in the tools they already use.  Both are optional
extras (``pip install dlasearch[tensorboard]`` / ``[mlflow]``); asking for one
that is not installed, or an MLflow server that does not answer, is a one-line error
before anything trains.  TensorBoard
event files go next to the results (``<folder>/tensorboard``); MLflow uses
``$MLFLOW_TRACKING_URI`` when set, else an SQLite store ``<folder>/mlflow.db``.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

from dlasearch.errors import DLASearchError

__all__ = ['parse', 'require', 'reach', 'mlflow_uri', 'Tracker', 'StudyTracker', 'open_tracker']

BACKENDS = ("tensorboard", "mlflow")
EXTRA = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
PROBE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}  # one quick try


def parse(log) -> list[str]:
    """``None``, ``"tensorboard"``, ``"tensorboard,mlflow"`` or a list -> checked backend names."""
    if log is None or log is False or log == "none":
        return []
    items = log.split(",") if isinstance(log, str) else log if isinstance(log, list) else None
    if items is None:
        raise DLASearchError(f"log={log!r}: expected tensorboard, mlflow or [tensorboard,mlflow]")
    out = []
    for item in items:
        name = str(item).strip()
        if name not in BACKENDS:
            raise DLASearchError(f"log={name!r}: allowed: {', '.join(BACKENDS)}")
        if name not in out:
            out.append(name)
    for name in out:
        require(name)
    if "mlflow" in out and os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")):
        reach(os.environ["MLFLOW_TRACKING_URI"])
    return out


def require(name: str) -> None:
    """Fail in one line when a backend's package is missing."""
    module = "tensorboard" if name == "tensorboard" else "mlflow"
    try:
        __import__(module)
    except ImportError:
        raise DLASearchError(f"log={name} needs the {name} package: pip install 'dlasearch[{EXTRA[name]}]'") \
            from None


@functools.lru_cache(maxsize=None)
def reach(uri: str) -> None:
    """Ask the tracking server for one experiment, once and quickly: MLflow's own client retries an
    unreachable server for minutes and then raises its traceback from inside a trial."""
    import mlflow

    saved = {k: os.environ.get(k) for k in PROBE}
    os.environ.update(PROBE)
    try:
        mlflow.tracking.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DLASearchError(f"log=mlflow: cannot reach the tracking server MLFLOW_TRACKING_URI={uri} ({first}); "
                             f"start it, unset MLFLOW_TRACKING_URI to log to a local mlflow.db, or drop log=mlflow") \
            from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def mlflow_uri(folder: Path) -> str:
    """``$MLFLOW_TRACKING_URI``, else an SQLite store ``<folder>/mlflow.db`` (MLflow refuses plain files)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    Path(folder).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"


class Tracker:
    """Receives ``epoch(epoch, metrics)`` (a ``train`` callback) and forwards numbers to the backends."""

    def __init__(self, backends: list[str], folder: Path, run_name: str, step_offset: int = 0):
        self.writer = self.mlflow = None
        self.offset = step_offset
        if "tensorboard" in backends:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(folder) / "tensorboard" / run_name))
        if "mlflow" in backends:
            import mlflow

            mlflow.set_tracking_uri(mlflow_uri(folder))
            mlflow.set_experiment(Path(folder).name)
            self.mlflow = mlflow
            self.run = mlflow.start_run(run_name=run_name)

    def epoch(self, epoch: int, metrics: dict) -> None:
        numbers = _numbers(metrics)
        if self.writer is not None:
            for k, v in numbers.items():
                self.writer.add_scalar(k, v, self.offset + epoch)
            self.writer.flush()
        if self.mlflow is not None:
            self.mlflow.log_metrics(numbers, step=self.offset + epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


class StudyTracker:
    """Per-epoch metrics of every trial of a study: TensorBoard runs ``<folder>/tensorboard/trial<N>``, and
    MLflow runs made by optuna-integration's ``MLflowCallback`` (one run per trial, params and values)."""

    def __init__(self, backends: list[str], folder: Path, metric_names: list[str]):
        self.folder, self.tensorboard = Path(folder), "tensorboard" in backends
        self.writer, self.trial, self.callback, self.hparams, self.last = None, None, None, {}, {}
        if "mlflow" in backends:
            try:
                from optuna_integration.mlflow import MLflowCallback
            except ImportError:
                raise DLASearchError("log=mlflow for a study needs optuna-integration: "
                                     "pip install 'dlasearch[mlflow]'") from None
            import warnings

            with warnings.catch_warnings():  # deprecated in optuna-integration 4.9, still the maintained bridge
                warnings.simplefilter("ignore", FutureWarning)
                self.callback = MLflowCallback(tracking_uri=mlflow_uri(folder), metric_name=list(metric_names),
                                               create_experiment=True)

    def wrap(self, objective):
        """The objective, run inside the trial's MLflow run (so per-epoch metrics land in it)."""
        return self.callback.track_in_mlflow()(objective) if self.callback is not None else objective

    def callbacks(self) -> list:
        return [self.callback] if self.callback is not None else []

    def epoch(self, trial: int, epoch: int, metrics: dict, params: dict | None = None) -> None:
        """One validation of ``trial``; ``params`` (its sampled pattern, depth, width, block ...) name its
        TensorBoard run and become its hyperparameters, so TensorBoard can group and compare trials."""
        numbers = _numbers(metrics)
        if self.tensorboard:
            if self.trial != trial:
                from torch.utils.tensorboard import SummaryWriter

                self._close_trial()
                pattern = (params or {}).get("pattern")
                self.writer = SummaryWriter(log_dir=str(self.folder / "tensorboard" /
                                                        (f"trial{trial}-{pattern}" if pattern else f"trial{trial}")))
                self.trial, self.hparams = trial, _hparams(params or {})
            for k, v in numbers.items():
                self.writer.add_scalar(k, v, epoch)
            self.writer.flush()
            self.last = numbers
        if self.callback is not None:
            import mlflow

            mlflow.log_metrics(numbers, step=epoch)

    def _close_trial(self) -> None:
        """End the current trial's run: its hyperparameters with its last validation's numbers."""
        if self.writer is None:
            return
        if self.hparams and self.last:
            self.writer.add_hparams(self.hparams, {f"hparam/{k}": v for k, v in self.last.items()},
                                    run_name=".")  # into the trial's own run, not a timestamped sub-run
        self.writer.close()
        self.writer = None

    def close(self) -> None:
        self._close_trial()


def _hparams(params: dict) -> dict:
    """Optuna params as TensorBoard takes them: numbers, strings and bools (anything else as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in sorted(params.items())}


def _numbers(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class _Nothing:
    def epoch(self, epoch: int, metrics: dict) -> None:
        return None


@contextlib.contextmanager
def open_tracker(log, folder, run_name: str):
    """A tracker for ``log=`` (a do-nothing one when no backend is asked for), closed on exit."""
    backends = parse(log)
    if not backends:
        yield _Nothing()
        return
    tracker = Tracker(backends, Path(folder), run_name)
    try:
        yield tracker
    finally:
        tracker.close()
