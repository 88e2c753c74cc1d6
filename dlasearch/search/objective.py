"""One trial of a search: sample a spec, build, fingerprint, measure, check budgets, train, record."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
from optuna.trial import TrialState

from dlasearch import stats, train as trainmod
from dlasearch.errors import SpaceError
from dlasearch.ir import IRError, fingerprint, from_json, to_json, to_module
from dlasearch.patterns import build
from dlasearch.search import guard, journal, keep, precheck, space as spacemod
from dlasearch.search.proxies import proxy_batch, scores
from dlasearch.search.study import (Heartbeat, fail_stale, fixed_params, pruner_epochs, storage_url, trial_id,
                                    worker_id)
from dlasearch.train import dense
from dlasearch.search import attrs

__all__ = ['describe', 'Objective', 'TrialFailed']


def describe(spec: dict) -> str:
    """One line a reader can tell trials apart by (trials.csv's ``arch``); dense specs name their decoder."""
    st = spec["stages"]
    return (f"{spec['pattern']}, {len(st)} stages, blocks {'-'.join(str(s['blocks']) for s in st)}, "
            f"widths {'-'.join(str(s['channels']) for s in st)}, {spec['block']}"
            + (f" x{spec['cardinality']}" if spec["block"] == "bottleneckx" else "")
            + (f", root k{spec['root_kernel']}" if spec["root_kernel"] != 1 else "")
            + (", residual root" if spec["residual_root"] else "")
            + (f", modes {'-'.join(s.get('mode', 'concat') for s in st)}" if any("mode" in s for s in st) else "")
            + _decoder(spec))


def hparams(spec: dict) -> dict:
    """What TensorBoard groups trials by: the pattern, depth (stages, blocks), width and block."""
    st = spec["stages"]
    hp = {"pattern": spec["pattern"], "stages": len(st), "blocks": sum(s["blocks"] for s in st),
          "width": st[0]["channels"], "last_width": st[-1]["channels"], "block": spec["block"]}
    if spec.get("task", "classify") != "classify":
        hp["decoder"] = str(spec.get("decoder"))
    return hp


def _decoder(spec: dict) -> str:
    if spec.get("task", "classify") == "classify":
        return ""
    width = spec.get("decoder_channels")
    return (f", decoder {spec.get('decoder', 'ida_up')}" + (f" {width}ch" if width else "")
            + (f" {spec['decoder_mode']}" if spec.get("decoder_mode") else "")
            + (f" {len(spec['cells'])} cells" if spec.get("cells") else "")
            + (f" from level {spec['first_level']}" if spec.get("first_level", 1) != 1 else ""))


# per-trial user attributes a duplicate copies from the trial it repeats (and trials.csv shows)
RESULT_ATTRS = (*attrs.MEASURED, attrs.VAL_ACCURACY, attrs.VAL_SCORE, attrs.MIOU_FG, attrs.MIOU, attrs.BOUNDARY_ODS,
                attrs.TRAIN_SECONDS, attrs.STATUS, attrs.REJECTED, attrs.AT_CHANCE, attrs.VAL_N)


class Objective:
    """One trial: build, measure, check budgets, train; answers duplicates from the study."""

    def __init__(self, space: dict, data, log=print, train_fn=None):
        self.space, self.data, self.log = space, data, log
        self.train_fn = train_fn or trainmod.train
        self.trainmod = trainmod
        self.multi = len(space["objectives"]) > 1
        self.score = spacemod.score_objective(space)
        if spacemod.SCORES[self.score] != data.task:
            want = next(o for o, t in spacemod.SCORES.items() if t == data.task)
            raise SpaceError(f"objectives: {self.score} scores {spacemod.SCORES[self.score]} data, but {data.name} is "
                             f"{data.task} data; use objectives=[{want}]")
        self.chance = None if data.dense else (stats.chance(data.y_val), len(data.y_val))
        self.progress = self.tracker = None
        self.epochs_run, self.position = 0, "?"
        self.fatal = self._batch = None
        self.was_duplicate = False  # the last trial was answered from an identical earlier one
        self.grace = space["study"]["grace"]
        url = storage_url(space)
        self.claims = None if "://" in url and not url.startswith("journal://") else \
            Path(url.removeprefix("journal://")).parent / "claims"
        # on the training device once per worker, not once per trial
        self.data = data.to(trainmod.resolve_device(self._config().device))

    def values(self, metrics: dict):
        vals = [metrics[o] for o in self.space["objectives"]]
        return vals[0] if len(vals) == 1 else vals

    def __call__(self, trial: optuna.Trial):
        self.was_duplicate = False
        try:
            trial.set_user_attr(attrs.WORKER, worker_id())
            if guard.surplus(trial, self.space["study"]["trials"]):
                return self._surplus(trial)
            with Heartbeat(trial.study, trial_id(trial), self.space["study"]["heartbeat"]):
                return self._run(trial)
        except (optuna.TrialPruned, TrialFailed):
            raise
        except journal.JournalWriteError as e:
            self.fatal = e  # Optuna catches it to fail the trial; ``work`` then stops the study with it
            _note_failure(trial, f"cannot write the journal: {e.strerror}", True)  # if the disk lets it
            raise
        except KeyboardInterrupt as e:
            _note_failure(trial, guard.interrupt_reason(e), True)
            raise
        except Exception as e:  # recorded on the trial; the study goes on (out of memory included)
            _note_failure(trial, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                          guard.environmental(e))
            raise

    def _run(self, trial):
        try:
            spec = spacemod.sample(self.space, trial)
            spec.update(in_channels=self.data.channels, num_classes=self.data.num_classes)
            trial.set_user_attr(attrs.PATTERN, spec["pattern"])
            trial.set_user_attr(attrs.SPEC, json.dumps(spec))
            trial.set_user_attr(attrs.ARCH, describe(spec))
            ir = build(spec, name=f"trial{trial.number}")
        except IRError as e:
            return self._fail(trial, f"invalid architecture: {e}")
        fp = fingerprint(ir)
        trial.set_user_attr(attrs.FINGERPRINT, fp)
        trial.set_user_attr(attrs.IR, to_json(ir))
        with guard.claim(self.claims, fp, trial, self.log, reap=lambda: fail_stale(trial.study, self.grace)):
            dup = self._duplicate(trial, fp)
            if dup is not None:
                return dup
            return self._train(trial, spec, ir)

    def _surplus(self, trial):
        """A trial another worker's made redundant: not run, not counted; fixed parameters go back in the queue."""
        trial.set_user_attr(attrs.SURPLUS, True)
        fixed = fixed_params(trial)
        if fixed:
            trial.study.enqueue_trial(fixed, user_attrs={k: v for k, v in trial.user_attrs.items()
                                                         if k in ("retry_of", "seeded_from", "screened", "repeat_of")})
        return self._fail(trial, f"surplus: the study already has {self.space['study']['trials']} trials")

    def _train(self, trial, spec: dict, ir):
        budget = self.space["budget"].get("params")
        if budget is not None and precheck.count_params(ir) > budget:  # before building it: no OOM
            over = f"params={precheck.count_params(ir):.4g} > budget {budget:.4g}"
            trial.set_user_attr(attrs.PARAMS, precheck.count_params(ir))
            trial.set_user_attr(attrs.REJECTED, over)
            raise optuna.TrialPruned(f"over budget: {over}")
        config = self._config()
        model = to_module(ir, init=config.init, seed=config.seed)  # a trial can be trained again exactly
        m = self.trainmod.measure_arch(model, self.data, config, latency=False, cuda_peak=False)
        metrics = {"params": m["params"], "macs": m["macs"], "train_memory": m["train_memory_bytes"]}
        for k, v in metrics.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr(attrs.PRECISION, m["precision"])  # what the memory count and the training ran in
        self.log(f"  trial #{trial.number}: {describe(spec)} | {metrics['params'] / 1e3:.1f}k params, "
                 f"{metrics['macs'] / 1e6:.1f}M MACs, {metrics['train_memory'] / 2**20:.1f} MiB train memory")
        over = [f"{k}={metrics[k]:.4g} > budget {b:.4g}" for k, b in self.space["budget"].items()
                if b is not None and metrics[k] > b]
        if over:
            trial.set_user_attr(attrs.REJECTED, "; ".join(over))
            raise optuna.TrialPruned(f"over budget: {'; '.join(over)}")
        result = self.train_fn(model, self.data, config, callback=self._reporter(trial, hparams(spec)),
                               eval_epochs=self._eval_epochs())
        trial.set_user_attr(attrs.STATUS, result.status)
        trial.set_user_attr(attrs.TRAIN_SECONDS, result.train_seconds)
        trial.set_user_attr(attrs.EPOCHS_TRAINED, result.epochs)
        if result.status == "nan":
            return self._fail(trial, f"training diverged (NaN/inf loss) {result.reason}".strip())
        score = result.val_score if result.val_score is not None else result.val_accuracy
        trial.set_user_attr(attrs.VAL_ACCURACY, result.val_accuracy)
        trial.set_user_attr(attrs.VAL_SCORE, score)
        if self.chance is not None and result.val_accuracy is not None:  # its binomial SE (none for dense scores)
            trial.set_user_attr(attrs.VAL_N, self.chance[1])
        for k in ("miou_fg", "miou", "boundary_ods"):  # the dense task's metrics, for trials.csv
            if result.val_metrics.get(f"val_{k}") is not None:
                trial.set_user_attr(k, result.val_metrics[f"val_{k}"])
        trial.set_user_attr(attrs.AT_CHANCE, self._at_chance(score))
        if result.status == "stopped":
            raise optuna.TrialPruned(f"pruned after epoch {result.epochs}: {self.score}={score}")
        metrics.update({"val_accuracy": result.val_accuracy, "train_seconds": result.train_seconds, self.score: score})
        keep.upload(trial, model, ir, self.data, config, self.space, self.log)
        return self.values(metrics)

    def _at_chance(self, score) -> bool:
        """Whether a validation score says nothing: classification within chance + 2 SE, dense data at or
        below the guesser that knows only the class (or edge) frequencies (``dense.chance_record``)."""
        if self.chance is not None:
            return stats.at_chance(score, *self.chance)
        return bool(dense.chance_record(self.data, score)["val"]["at_chance"])

    def screen_score(self, trial) -> float | None:
        """The study's proxy for the architecture ``trial`` samples, untrained (None: invalid or over budget)."""
        spec = spacemod.sample(self.space, trial)
        spec.update(in_channels=self.data.channels, num_classes=self.data.num_classes)
        ir = build(spec, name=f"candidate{trial.number}")
        budget = self.space["budget"].get("params")
        if budget is not None and precheck.count_params(ir) > budget:
            return None
        if self._batch is None:
            self._batch = tuple(t.cpu() for t in proxy_batch(self.data))
        name = self.space["study"]["proxy"]
        return scores(ir, *self._batch, [name])[name]

    def _fail(self, trial, reason: str):
        trial.set_user_attr(attrs.FAIL_REASON, reason)
        raise TrialFailed(reason)

    def _duplicate(self, trial, fp: str):
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if t.user_attrs.get(attrs.FINGERPRINT) == fp and t.number != trial.number:
                trial.set_user_attr(attrs.DUPLICATE_OF, t.number)
                repeated = fixed_params(trial) is None  # the sampler's proposal, not a queued trial
                if repeated:
                    trial.set_user_attr(attrs.REPEATED, True)  # not counted against trials (guard.NOT_COUNTED)
                self.was_duplicate = True
                for k in RESULT_ATTRS:
                    if k in t.user_attrs:
                        trial.set_user_attr(k, t.user_attrs[k])
                if t.state == TrialState.PRUNED:
                    raise optuna.TrialPruned(f"same architecture as trial #{t.number}, which was pruned")
                self.log(f"  trial #{trial.number}: same architecture as #{t.number}; reusing its result"
                         + (" (not counted against trials)" if repeated else ""))
                return t.values[0] if len(t.values) == 1 else list(t.values)
        return None

    def retrain(self, t) -> tuple:
        """Train finished trial ``t``'s architecture again as it was trained (same config and seed, so
        the same initial weights): ``(model, ir, data, config)`` for ``keep.recover``."""
        ir = from_json(t.user_attrs[attrs.IR])
        config = self._config()
        model = to_module(ir, init=config.init, seed=config.seed)
        self.train_fn(model, self.data, config, eval_epochs=set())
        return model, ir, self.data, config

    def train_seed(self, ir, seed: int):
        """Train ``ir`` once more with training seed ``seed`` (initial weights, batch order), the study's
        other settings unchanged, validating after the last epoch only: ``train``'s result."""
        config = dataclasses.replace(self._config(), seed=seed)
        model = to_module(ir, init=config.init, seed=config.seed)
        return self.train_fn(model, self.data, config, eval_epochs=set())

    def base_seed(self) -> int:
        """The training seed the search trained every trial with (``train.seed``, else ``study.seed``)."""
        return self._config().seed

    def _config(self):
        """The training config; TrainConfig checks every value (so a bad space fails before any trial)."""
        values = {k: v for k, v in self.space["train"].items() if v is not None}
        values.setdefault("seed", self.space["study"]["seed"])  # train.seed: another seed on the same split
        values["progress"] = False  # the search prints one line per trial instead
        if self.space["study"].get("threads"):
            values["threads"] = self.space["study"]["threads"]
        return self.trainmod.TrainConfig(**values)

    def _eval_epochs(self) -> set[int] | None:
        """Validate where the result is read: the pruner's epochs and the last, or every epoch when tracked."""
        return None if self.tracker is not None else pruner_epochs(self.space)

    def _reporter(self, trial, hp: dict | None = None):
        """Per validation: progress, tracking, and (single objective) Optuna's pruning."""
        self.epochs_run = 0

        def report(epoch: int, metrics: dict):
            done, self.epochs_run = epoch - self.epochs_run, epoch  # epochs since the last validation
            score = metrics.get("val_score", metrics["val_accuracy"])  # the task's score (accuracy: classify)
            if self.progress is not None:
                self.progress.update(f"trial {self.position} (#{trial.number}) epoch {epoch}/"
                                     f"{self.space['train']['epochs']} val {score:.3f}", n=done)
            if self.tracker is not None:
                self.tracker.epoch(trial.number, epoch, metrics, hp)
            if self.multi:
                return
            trial.report(score, epoch)
            if trial.should_prune():
                raise self.trainmod.StopTraining(f"pruned at epoch {epoch}")
        return report


def _note_failure(trial, reason: str, environmental: bool) -> None:
    """Record why ``trial`` failed; one failed by its environment is marked so it does not count.
    Never raises: the storage may be what failed (the trial is then failed as stale later)."""
    try:
        trial.set_user_attr(attrs.FAIL_REASON, reason)
        if environmental:
            trial.set_user_attr(guard.INTERRUPTED, True)
    except Exception:
        pass


class TrialFailed(Exception):
    """A trial that cannot produce a result (its reason is in the ``fail_reason`` user attribute)."""
