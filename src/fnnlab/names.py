"""Names the store, the configuration and other tools rely on, each defined once.

No imports: the parts that must not pay for torch or MLflow (config checks, reading a
store) use them too.
"""

# The backward passes of fnnlab.model.ScratchFNN (model.backprop).
BACKPROP_MODES = ("tutorial", "exact")

# Per-epoch metrics, logged with step = epoch.
METRICS = ("loss", "accuracy", "grad_norm/w1", "grad_norm/w2", "weight_norm/w1", "weight_norm/w2")

# MLflow run statuses.
FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
# Ended without finishing.
UNFINISHED = (FAILED, KILLED)


class Tag:
    """Run tag keys."""

    ROLE = "role"  # ROLE_JOB or ROLE_SWEEP
    SWEEP_ID = "sweep_id"  # on a sweep's parent and on its jobs
    JOB_NUM = "job_num"
    FINGERPRINT = "fingerprint"  # hash of what decides a run's numbers (fnnlab.config)
    DIVERGED = "diverged"  # "true" | "false"
    DIVERGED_AT = "diverged_at"
    SATURATED_AT = "saturated_at"
    REGIME = "regime"  # stable | oscillating | diverged (fnnlab.outcome)
    ERROR = "error"
    TRACEBACK = "error.traceback"
    HOST = "fnnlab.host"
    PID = "fnnlab.pid"
    LEASE_UNTIL = "fnnlab.lease_until"  # epoch s: a RUNNING run's holder is alive till then
    INVOCATION = "fnnlab.invocation"  # on a sweep's job: which invocation ran it (fnnlab.sweep)
    CLAIMED = "fnnlab.claimed"  # "true": this run has its configuration (fnnlab.claims)
    USED_BY = "fnnlab.sweep"  # fnnlab.sweep.<sweep id> = parent run id: a run a sweep reused
    CODE = "env.code"  # hash of the code that made a run (fnnlab.provenance)
    FILES = "files"  # a run's artifacts' sha256, as `sha256sum` prints them (fnnlab.job)
    SWEEP_DIR = "sweep_dir"  # the latest invocation's output folder
    SWEEP_OPENED = "fnnlab.sweep_opened"  # epoch ms: when the latest invocation opened it
    SWEEP_OVERRIDES = "sweep_overrides"
    PARENT = "mlflow.parentRunId"
    REPLAY_OF = "replay.of"  # on a run replay.log=true made: the run it replays
    NOTE = "mlflow.note.content"  # the run's description, Markdown
    GIT_COMMIT = "mlflow.source.git.commit"


ROLE_JOB, ROLE_SWEEP = "job", "sweep"
