"""The names of what a trial (and a study) carries as Optuna user attributes: one place, so the search
that writes them and the exports, reports, benchmarks and comparisons that read them cannot drift.

Why constants and not an enum: Optuna stores plain string keys, journals written by earlier versions
hold these exact strings, and ``trials.csv`` columns are named by them.
"""
from __future__ import annotations

# what the trial is
PATTERN = "pattern"
ARCH = "arch"  # one-line description
FINGERPRINT = "fingerprint"
SPEC = "spec"  # JSON of the sampled spec
IR = "ir"  # JSON of the IR

# what it measured
PARAMS = "params"
MACS = "macs"
TRAIN_MEMORY = "train_memory"
PRECISION = "precision"  # what the memory count and the training ran in
VAL_ACCURACY = "val_accuracy"
VAL_SCORE = "val_score"  # the task's primary metric (val_accuracy, miou_fg or ODS)
MIOU_FG = "miou_fg"  # dense: foreground mean IoU
MIOU = "miou"
BOUNDARY_ODS = "boundary_ods"
TRAIN_SECONDS = "train_seconds"
EPOCHS_TRAINED = "epochs_trained"
STATUS = "status"
AT_CHANCE = "at_chance"
VAL_N = "val_n"  # validation images the accuracy was measured on (classification): its standard error

# how it ended, and where it came from
FAIL_REASON = "fail_reason"
REJECTED = "rejected"  # over budget, with the reason
DUPLICATE_OF = "duplicate_of"
REPEATED = "repeated"  # a sampler's proposal of an architecture the study holds: answered, not counted
SEEDED_FROM = "seeded_from"  # a published configuration
SCREENED = "screened"  # the best of K proposals by a proxy
RETRY_OF = "retry_of"
REPEAT_OF = "repeat_of"  # a benchmark's second-seed run
FIXED_PARAMS = "fixed_params"

# not counted against ``trials`` (guard.NOT_COUNTED)
STALE = "stale"
SURPLUS = "surplus"
CANDIDATE = "candidate"  # a screening candidate
INTERRUPTED = "interrupted"  # failed by its environment: queued again
# (and ``REPEATED``: a duplicate the sampler proposed; the study ends after ``study.max_duplicates`` of them)

# the running trial's bookkeeping
WORKER = "worker"
HEARTBEAT = "heartbeat"
CLAIMED = "claimed"

# its weights (search.keep)
WEIGHTS_ARTIFACT = "weights_artifact"
WEIGHTS_MISSING = "weights_missing"
WEIGHTS_PENDING = "weights_pending"

# study-level attributes
SPACE = "space"
CONTRACT = "contract"
TRACKING_LOG = "tracking_log"  # ``log=`` the study was last run with: a resume without log= keeps it
CONFIRM = "confirm"  # the last confirm= run: {"top", "seeds", "fingerprints"} (search.confirm)
CONFIRM_RUN = "confirm:"  # + "<fingerprint>:<seed>": one confirming training run's result, as JSON

MEASURED = (PARAMS, MACS, TRAIN_MEMORY, PRECISION)  # known before training
CARRIED = (SEEDED_FROM, SCREENED, REPEAT_OF)  # what a queued trial's retry keeps of it
