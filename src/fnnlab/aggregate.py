"""A sweep in the store -> pandas frames -> summary over seeds, report and plots.

Everything is read from the tracking store (never from Hydra's output folders), so a
sweep run on other machines aggregates the same way. Per-epoch curves are read in
bulk: one query on the metrics table for a database store, parallel metric-history
calls for a tracking server. Asking for each run's history one call at a time would
take minutes for a 1,000-run sweep. They are read and reduced a batch of runs at a time,
so that the curves of a sweep take the same memory whatever its number of runs.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from scipy import stats
from tqdm import tqdm

from fnnlab.compare import compare, leader_label, regime_fractions, stability_boundary
from fnnlab.config import ConfigValueError, TrainAppConfig, trains
from fnnlab.errortext import reason
from fnnlab.names import FINISHED, METRICS, ROLE_JOB, ROLE_SWEEP, RUNNING, UNFINISHED, Tag
from fnnlab.outcome import COARSE, HIGHER_IS_BETTER, OUTCOMES, classify_regime, run_outcome
from fnnlab.tracking import (
    MAX_TAG_VALUE,
    SlimRun,
    Store,
    connect,
    find_sweep_parent,
    one_run_per_config,
    search_all,
    slim,
    sweep_runs,
)

# Database stores whose metrics table is read directly (others, e.g. MySQL where `key` is a
# reserved word, go through the client).
SQL_SCHEMES = ("sqlite", "postgresql")
# Contract keys that always describe a configuration, even when not swept.
CONTRACT = ("model.hidden_dim", "optim.lr", "model.backprop")


# The tags of a job run that aggregation reads. The others (env.*, leases, ...) are left in
# the store: they were most of the memory a selection of many runs held.
READ_TAGS = (Tag.FINGERPRINT, Tag.PARENT, Tag.DIVERGED, Tag.DIVERGED_AT, Tag.REGIME, Tag.ERROR)


@dataclass
class Selection:
    """The runs to aggregate, after deduplication, and where they came from."""

    client: MlflowClient
    uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str | None
    sweep_id: str | None
    runs: list[SlimRun]
    superseded: int = 0  # earlier attempts of a configuration replaced by a later run
    reused: int = 0  # runs another sweep made that this sweep counts (fnnlab.claims)
    filter: str | None = None  # aggregate.filter: only the sweep's runs that match it
    # The sweep's jobs without a finished run, of how many: a sweep that ended without them
    # (its parent KILLED or FAILED), or whose runs were deleted since, whose answer is about
    # part of it.
    unfinished: int = 0
    jobs: int = 0
    # Its parent is RUNNING: the sweep is in progress, or its process was killed.
    running: bool = False
    # With unfinished jobs: the configurations the sweep names that have no finished run, so
    # are in no table of its answer (empty when they cannot be told: see not_finished).
    not_finished: list[str] = field(default_factory=list)


@dataclass
class Aggregate:
    """The tables a sweep turns into."""

    selection: Selection
    runs: pd.DataFrame  # one row per run
    summary: pd.DataFrame  # one row per configuration, over seeds
    curves: pd.DataFrame  # mean/std/n per configuration, metric and epoch
    config_cols: list[str]
    outcome: str  # which number per run the comparison is about (fnnlab.outcome.OUTCOMES)
    comparison: pd.DataFrame  # per configuration: mean outcome, CI, against the leader
    stability: pd.DataFrame | None = None  # per width (and mode...): learning-rate brackets
    regimes: pd.DataFrame | None = None  # per width x lr: fraction of runs in each regime
    alpha: float = 0.05  # the comparison's intervals hold together at confidence 1 - alpha
    min_effect: float | None = None  # the margin a difference must reach (None: 1% of the leader)

    @property
    def leader(self) -> pd.Series | None:
        rows = self.comparison[self.comparison["leader"]]
        return None if rows.empty else rows.iloc[0]

    @property
    def tied(self) -> pd.DataFrame:
        return self.comparison[self.comparison["tied"].fillna(False).astype(bool)]


# --- selecting runs -------------------------------------------------------------------


def _check_id(key: str, value: str) -> str:
    # Ids go into a filter string: refuse quotes rather than escape them.
    if not re.fullmatch(r"[\w.-]+", value):
        raise ConfigValueError(key, value, "is not a valid id")
    return value


def select(
    uri: str,
    experiment: str,
    sweep: str = "latest",
    parent_run_id: str | None = None,
    filter_string: str | None = None,
) -> Selection:
    """The job runs of one sweep (latest, by sweep id or parent run), or all with sweep=all."""
    client, exp_id = connect(uri, experiment)
    # Blank is no filter, as MLflow reads it; the answer would name it as one.
    filter_string = (filter_string or "").strip() or None
    sid = None
    if parent_run_id and sweep != "latest":
        # Each selects a sweep: which one was meant cannot be guessed.
        raise ConfigValueError(
            "aggregate.sweep",
            sweep,
            f"aggregate.parent_run_id={parent_run_id} selects a sweep too; give one of them",
        )
    if parent_run_id:
        _check_id("aggregate.parent_run_id", parent_run_id)
        try:
            parent = client.get_run(parent_run_id)
        except MlflowException:
            raise ConfigValueError(
                "aggregate.parent_run_id", parent_run_id, "no such run"
            ) from None
        if parent.info.experiment_id != exp_id:
            raise ConfigValueError(
                "aggregate.parent_run_id", parent_run_id, f"is not a run of experiment {experiment}"
            )
        if parent.info.lifecycle_stage != "active":
            # Else its answer's files were uploaded, then its tags refused: half an answer.
            raise ConfigValueError(
                "aggregate.parent_run_id",
                parent_run_id,
                f"is deleted in this store: restore it (`mlflow runs restore --run-id "
                f"{parent_run_id}` with MLFLOW_TRACKING_URI set to the store) to aggregate it",
            )
        if parent.data.tags.get(Tag.ROLE) != ROLE_SWEEP:
            of = parent.data.tags.get(Tag.PARENT)
            raise ConfigValueError(
                "aggregate.parent_run_id",
                parent_run_id,
                "is not a sweep's parent run" + (f": its sweep's parent run is {of}" if of else ""),
            )
        sid = parent.data.tags.get(Tag.SWEEP_ID)
        where = ("aggregate.parent_run_id", parent_run_id)
    elif sweep == "all":
        parent = None
        where = ("aggregate.sweep", sweep)
    else:
        store = Store(client=client, experiment_id=exp_id, uri=uri)
        parent = find_sweep_parent(store, sweep, "aggregate.sweep")
        if parent is None:
            raise ConfigValueError("aggregate.sweep", sweep, f"no sweep in experiment {experiment}")
        sid = parent.data.tags.get(Tag.SWEEP_ID)
        where = ("aggregate.sweep", sweep)
    flt = f"tags.{Tag.ROLE} = '{ROLE_JOB}'"
    if filter_string and len(filter_string) > MAX_TAG_VALUE:
        # Its tag on the parent would be cut, and the answer could not be made again.
        raise ConfigValueError(
            "aggregate.filter",
            filter_string[:40] + "...",
            f"longer than {MAX_TAG_VALUE} characters, what the tag that records it holds",
        )
    if filter_string:
        flt += f" and {filter_string}"
        where = ("aggregate.filter", filter_string)
    store = Store(client=client, experiment_id=exp_id, uri=uri)
    keep = partial(slim, tags=READ_TAGS)
    try:
        runs = (
            search_all(store, flt, keep=keep)
            if parent is None
            else sweep_runs(store, parent, flt, keep=keep)
        )
    except MlflowException as exc:
        raise ConfigValueError(*where, reason(exc)) from None
    if not runs:
        why = f"selects no runs in experiment {experiment}"
        if filter_string and "params." in filter_string:
            # The answer prints lr=30; MLflow compares the text stored, "30.0".
            why += " (params compare as the text stored: a learning rate of 30 is '30.0')"
        raise ConfigValueError(*where, why)
    kept = one_run_per_config(runs)
    superseded = len(runs) - len(kept)
    reused = unfinished = jobs = 0
    if parent is not None:
        reused = sum(r.data.tags.get(Tag.PARENT) != parent.info.run_id for r in kept)
        if parent.info.status != RUNNING:  # its counts, from when it ended
            unfinished, jobs = unfinished_jobs(parent.data.metrics)
            if jobs and not filter_string:
                # A run deleted since the sweep ended is in none of them.
                unfinished = max(unfinished, jobs - sum(r.info.status == FINISHED for r in kept))
    running = parent is not None and parent.info.status == RUNNING
    missing = (
        not_finished(parent.data.tags.get(Tag.SWEEP_OVERRIDES, ""), kept)
        if parent is not None and (unfinished or running) and not filter_string
        else []
    )
    return Selection(
        client=client,
        uri=uri,
        experiment=experiment,
        experiment_id=exp_id,
        parent_run_id=parent.info.run_id if parent is not None else None,
        sweep_id=sid,
        runs=kept,
        superseded=superseded,
        reused=reused,
        filter=filter_string or None,
        unfinished=unfinished,
        jobs=jobs,
        running=running,
        not_finished=missing,
    )


def not_finished(overrides: str, runs: list[SlimRun], most: int = 10) -> list[str]:
    """The configurations a sweep's overrides (its tag sweep_overrides) name that no FINISHED
    run of `runs` has, as 'lr=1 hidden_dim=8', at most `most` and then 'k more'. Empty when
    that cannot be told: a sweep in another sweeper's grammar, a swept config group or a key
    no run has a param of."""
    # The tag joins the command line's overrides with spaces: a piece without "=" is the
    # rest of a value with a space in it ("data.features=[0, 1]").
    lines: list[str] = []
    for piece in overrides.split():
        if lines and "=" not in piece and not piece.startswith(("~", "+")):
            lines[-1] += " " + piece
        else:
            lines.append(piece)
    parser = OverridesParser.create()
    schema = OmegaConf.structured(TrainAppConfig)

    def as_param(key: str, text: str) -> str:
        # The value a job gets (Hydra parses each job's "key=value" again: 'exact' loses its
        # quotes) after the config's types (1 -> True for a bool), as its param is logged.
        OmegaConf.update(schema, key, parser.parse_override(f"{key}={text}").value())
        value = OmegaConf.select(schema, key)
        return str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)

    swept: dict[str, list[str]] = {}
    try:
        for o in parser.parse_overrides(lines):
            key = o.key_or_group
            if (
                not o.is_sweep_override()
                or key in ("seed", "hydra")
                or key.startswith(("hydra.", "hydra/", "tracking."))
            ):
                continue
            if not o.is_discrete_sweep() or o.package is not None:
                return []
            swept[key] = [as_param(key, text) for text in o.sweep_string_iterator()]
    except (HydraException, OmegaConfBaseException):
        # glob(...) of a config group, which needs Hydra's loader; a key or value the config
        # does not take.
        return []
    if not swept or not all(any(k in r.data.params for r in runs) for k in swept):
        return []

    def canonical(value: str | None) -> str | float | None:
        # 1 and 1.0, [0,1] and [0, 1] are one value.
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            return value.replace(" ", "").lower()

    finished = {
        tuple(canonical(r.data.params.get(k)) for k in swept)
        for r in runs
        if r.info.status == FINISHED
    }
    names = _short_names(list(swept))
    missing = [
        # Named as the answer's tables name configurations (lr=1, not lr=1.0).
        leader_label(
            {names[k]: _number_or_text(v) for k, v in zip(swept, values, strict=True)},
            [names[k] for k in swept],
        )
        for values in itertools.product(*swept.values())
        if tuple(canonical(v) for v in values) not in finished
    ]
    if len(missing) > most:
        missing = [*missing[:most], f"{len(missing) - most} more"]
    return missing


def _number_or_text(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def unfinished_jobs(counts: Mapping[str, float]) -> tuple[int, int]:
    """(jobs without a finished run, jobs) from a sweep's counts (fnnlab.sweep.sweep_counts;
    on the parent run as its metrics sweep/*)."""

    def get(key: str) -> int:
        value = counts.get(key, counts.get(f"sweep/{key}"))
        return int(value) if value is not None and math.isfinite(value) else 0

    unfinished = get("failed") + get("running")
    return unfinished, get("jobs") or get("finished") + unfinished


# --- reading curves -------------------------------------------------------------------


def read_curves(
    uri: str,
    client: MlflowClient,
    run_ids: list[str],
    keys: tuple[str, ...] = METRICS,
    method: str = "auto",
    keep_repeats: bool = False,
) -> pd.DataFrame:
    """Per-epoch values of many runs: columns run_id, key, step, value, rows in that order.
    run_id and key are categorical (a 10,000-run sweep has 6 million values), their
    categories sorted. A step stored twice counts once, with its later value, unless
    keep_repeats (fnnlab.replay checks every stored value)."""
    if method == "auto":
        method = "sql" if uri.split(":", 1)[0].split("+")[0].lower() in SQL_SCHEMES else "client"
    types = {
        "run_id": pd.CategoricalDtype(sorted(set(run_ids))),
        "key": pd.CategoricalDtype(sorted(set(keys))),
    }
    frame = (
        _curves_sql(uri, run_ids, types)
        if method == "sql"
        else _curves_client(client, run_ids, keys)
    )
    if frame.empty:
        types |= {"step": "int64", "value": float}
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in types.items()})
    frame = frame.astype(types)
    # A value logged twice for one step: the later one counts, as in MLflow's UI.
    if not keep_repeats and frame.duplicated(["run_id", "key", "step"]).any():
        frame = frame.sort_values("timestamp", kind="stable")
        frame = frame.drop_duplicates(["run_id", "key", "step"], keep="last")
    # In one order whatever the database's or the server's: the sums of a configuration's
    # mean and std then come out the same to the last bit from any store and path.
    order = ["run_id", "key", "step"]
    return frame[[*order, "value"]].sort_values(order, kind="stable", ignore_index=True)


# Rows fetched at a time: the driver's row tuples take about 320 bytes each (SQLite).
FETCH_ROWS = 100_000
# Curve values aggregated at a time (aggregate): a batch of runs' frames peak at about 200
# bytes a value.
BATCH_VALUES = 300_000


def _curves_sql(
    uri: str,
    run_ids: list[str],
    types: dict[str, pd.CategoricalDtype],
    chunk: int = 500,
) -> pd.DataFrame:
    """One query per 500 runs on MLflow's metrics table, through the store's own URI: the
    runs' values of the keys in types["key"].

    Rows come straight from the DB-API cursor: SQLAlchemy's per-row processing would
    double the time for the 606,000 values of a 1,000-run sweep.
    """
    import sqlalchemy as sa

    engine = sa.create_engine(uri)
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(engine.dialect.paramstyle)
    if mark is None:  # a driver with named parameters: let pandas and SQLAlchemy bind them
        return _curves_sql_named(engine, run_ids, tuple(types["key"].categories), chunk)
    parts = []
    conn = engine.raw_connection()
    try:
        cur = conn.cursor()
        for start in tqdm(range(0, len(run_ids), chunk), desc="curves", unit="chunk", disable=None):
            ids = run_ids[start : start + chunk]
            # All of the runs' metrics, the keys kept below: with "AND key IN (...)" SQLite
            # scanned the whole table's rows of each key (its primary key starts with the
            # key), not the runs' rows (index on run_uuid).
            cur.execute(
                "SELECT run_uuid, key, step, value, is_nan, timestamp FROM metrics "
                f"WHERE run_uuid IN ({','.join([mark] * len(ids))})",
                ids,
            )
            while rows := cur.fetchmany(FETCH_ROWS):
                parts.append(_rows_frame(rows, types))
    finally:
        conn.close()
        engine.dispose()
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def history_keys(uri: str, run_id: str) -> set[str] | None:
    """Every metric key of the run's history (MLflow's metrics table), also one without a
    latest value, which no client call lists; None where the store is not a database this
    process reads (a tracking server)."""
    if uri.split(":", 1)[0].split("+")[0].lower() not in SQL_SCHEMES:
        return None
    import sqlalchemy as sa

    engine = sa.create_engine(uri)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT DISTINCT key FROM metrics WHERE run_uuid = :run")
            return {row[0] for row in conn.execute(query, {"run": run_id})}
    finally:
        engine.dispose()


def _rows_frame(rows: list[tuple], types: dict[str, pd.CategoricalDtype]) -> pd.DataFrame:
    """The cursor's rows (run_id, key, step, value, is_nan, timestamp) of the keys in
    types["key"] as a frame, column by column: pandas' inference over the row tuples took
    twice as long for a long sweep. MLflow stores NaN as 0 with a flag."""
    cells = np.array(rows, dtype=object).reshape(len(rows), 6)
    key = types["key"].categories.get_indexer(cells[:, 1])
    cells, key = cells[key >= 0], key[key >= 0]
    run = types["run_id"].categories.get_indexer(cells[:, 0])
    is_nan = cells[:, 4].astype(bool)
    return pd.DataFrame(
        {
            "run_id": pd.Categorical.from_codes(run, dtype=types["run_id"]),
            "key": pd.Categorical.from_codes(key, dtype=types["key"]),
            "step": cells[:, 2].astype(np.int64),
            "value": np.where(is_nan, math.nan, cells[:, 3].astype(np.float64)),
            "timestamp": cells[:, 5].astype(np.int64),
        }
    )


def _curves_sql_named(
    engine, run_ids: list[str], keys: tuple[str, ...], chunk: int
) -> pd.DataFrame:
    import sqlalchemy as sa

    query = sa.text(
        "SELECT run_uuid AS run_id, key, step, value, is_nan, timestamp FROM metrics "
        "WHERE run_uuid IN :ids AND key IN :keys"
    ).bindparams(sa.bindparam("ids", expanding=True), sa.bindparam("keys", expanding=True))
    parts = []
    try:
        with engine.connect() as conn:
            for start in range(0, len(run_ids), chunk):
                ids = run_ids[start : start + chunk]
                parts.append(pd.read_sql(query, conn, params={"ids": ids, "keys": list(keys)}))
    finally:
        engine.dispose()
    return _nan_flags(pd.concat(parts, ignore_index=True))


def _nan_flags(frame: pd.DataFrame) -> pd.DataFrame:
    # MLflow stores NaN as 0 with a flag.
    frame.loc[frame["is_nan"].astype(bool), "value"] = math.nan
    return frame


def _curves_client(client: MlflowClient, run_ids: list[str], keys: tuple[str, ...]) -> pd.DataFrame:
    """For tracking servers: metric histories fetched in parallel (the server does the work)."""
    rows = []
    pairs = [(r, k) for r in run_ids for k in keys]
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = {pool.submit(client.get_metric_history, r, k): r for r, k in pairs}
        for fut in tqdm(
            as_completed(futures), total=len(futures), desc="curves", unit="series", disable=None
        ):
            run_id = futures[fut]
            rows.extend((run_id, m.key, m.step, m.value, m.timestamp) for m in fut.result())
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value", "timestamp"])


# --- frames -----------------------------------------------------------------------------


def _short_names(keys: list[str]) -> dict[str, str]:
    """model.hidden_dim -> hidden_dim, unless two keys share a last part."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def _numeric(col: pd.Series) -> pd.Series:
    converted = pd.to_numeric(col, errors="coerce")
    # Keep strings (backprop) as they are; convert columns that are all numbers.
    return converted if converted.notna().sum() == col.notna().sum() else col


def runs_frame(sel: Selection) -> tuple[pd.DataFrame, list[str]]:
    """One row per run, and the columns that identify a configuration (swept params but seed).
    What comes from the curves (largest gradient norms; the regime and tail loss of runs
    logged before runs recorded them) is added by from_curves."""
    params = pd.DataFrame([r.data.params for r in sel.runs])
    # Training params that vary across the selection, plus the contract keys. Others (ui.*,
    # regime.*, limits.*) vary only where a sweep reused a run made with other values of
    # them: the same training (config.fingerprint), so the same configuration.
    varying = [c for c in params.columns if params[c].nunique() > 1 and trains(c)]
    keys = [c for c in (*CONTRACT, *varying, "seed") if c in params.columns]
    keys = list(dict.fromkeys(keys))
    names = _short_names(keys)
    rows = []
    for r in sel.runs:
        m, t = r.data.metrics, r.data.tags
        rows.append(
            {
                "run_id": r.info.run_id,
                "run_name": r.info.run_name,
                # A job still running, or killed before its end, has no params yet: unknown.
                **{names[k]: r.data.params.get(k) for k in keys},
                "status": r.info.status,
                "diverged": t.get(Tag.DIVERGED) == "true",
                "diverged_at": pd.to_numeric(t.get(Tag.DIVERGED_AT), errors="coerce"),
                "regime": t.get(Tag.REGIME),
                "tail_loss": m.get("tail/loss", math.nan),
                "final_loss": m.get("final/loss", math.nan),
                "best_loss": m.get("best/loss", math.nan),
                "best_epoch": m.get("best/epoch", math.nan),
                "final_accuracy": m.get("final/accuracy", math.nan),
                "final_grad_norm_w1": m.get("final/grad_norm/w1", math.nan),
                "final_grad_norm_w2": m.get("final/grad_norm/w2", math.nan),
                "epochs_run": m.get("epochs_run", math.nan),
                "duration_s": (r.info.end_time - r.info.start_time) / 1000
                if r.info.end_time
                else math.nan,
                "error": t.get(Tag.ERROR, ""),
            }
        )
    frame = pd.DataFrame(rows)
    for key in keys:
        frame[names[key]] = _numeric(frame[names[key]])
    for col in GRAD_MAX.values():
        frame[col] = math.nan
    # Only finished, non-diverged runs enter the loss statistics.
    frame["used"] = (frame["status"] == FINISHED) & ~frame["diverged"]
    config_cols = [names[k] for k in keys if k != "seed"]
    return frame, config_cols


# Per-epoch metric -> the runs frame's column of its largest value over training.
GRAD_MAX = {"grad_norm/w1": "max_grad_norm_w1", "grad_norm/w2": "max_grad_norm_w2"}


def from_curves(frame: pd.DataFrame, curves: pd.DataFrame) -> None:
    """What the runs of `curves` (all of their values, any subset of the frame's runs)
    tell the runs frame: largest gradient norms over training, and the regime and tail loss
    of finished runs logged before runs recorded them, from their loss curves (as logged:
    every epoch unless tracking.log_every thinned them)."""
    rows = frame["run_id"].isin(curves["run_id"].cat.categories)
    gmax = curves[curves["key"].isin(list(GRAD_MAX))]
    gmax = gmax.pivot_table(
        index="run_id", columns="key", values="value", aggfunc="max", observed=True
    )
    for key, col in GRAD_MAX.items():
        if key in gmax:
            frame.loc[rows, col] = frame.loc[rows, "run_id"].map(gmax[key])
    missing = (
        rows
        & (frame["status"] == FINISHED)
        & (frame["regime"].isna() | (frame["used"] & frame["tail_loss"].isna()))
    )
    if not missing.any():
        return
    loss = curves[(curves["key"] == "loss") & curves["run_id"].isin(frame.loc[missing, "run_id"])]
    by_run = {
        rid: g.sort_values("step")["value"].to_numpy()
        for rid, g in loss.groupby("run_id", observed=True)
    }
    for i in frame.index[missing]:
        values = by_run.get(frame.at[i, "run_id"], np.array([]))
        if pd.isna(frame.at[i, "regime"]):
            frame.at[i, "regime"] = classify_regime(values, bool(frame.at[i, "diverged"]))
        if frame.at[i, "used"] and math.isnan(frame.at[i, "tail_loss"]):
            frame.at[i, "tail_loss"] = run_outcome(values, kind="tail_loss")


def _ci95(std: float, n: int) -> float:
    """Half-width of the 95% t-interval of a mean; empty below two runs."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def summarize(frame: pd.DataFrame, config_cols: list[str]) -> pd.DataFrame:
    """One row per configuration: counts over all runs, statistics over the used ones."""
    by = config_cols or (lambda _: "all")
    counts = (
        frame.assign(
            finished=frame["status"] == FINISHED,
            running=frame["status"] == RUNNING,
            failed=frame["status"].isin(UNFINISHED),
            diverged=frame["diverged"] & (frame["status"] == FINISHED),
            stable=(frame["regime"] == "stable") & (frame["status"] == FINISHED),
            oscillating=(frame["regime"] == "oscillating") & (frame["status"] == FINISHED),
        )
        .groupby(by, dropna=False)
        .agg(
            runs=("run_id", "size"),
            used=("used", "sum"),
            stable=("stable", "sum"),
            oscillating=("oscillating", "sum"),
            diverged=("diverged", "sum"),
            failed=("failed", "sum"),
            running=("running", "sum"),
        )
    )
    used = frame[frame["used"]].groupby(by, dropna=False)
    loss = used["final_loss"].agg(["mean", "std", "min", "max"]).add_prefix("loss_")
    acc = used["final_accuracy"].agg(["mean", "std", "min", "max"]).add_prefix("acc_")
    out = counts.join(loss).join(acc)
    out.insert(
        out.columns.get_loc("loss_max") + 1,
        "loss_ci95",
        [_ci95(s, int(n)) for s, n in zip(out["loss_std"], out["used"], strict=True)],
    )
    return out.reset_index()


def curve_moments(
    frame: pd.DataFrame, curves: pd.DataFrame, config_cols: list[str]
) -> pd.DataFrame:
    """Count, mean and variance per configuration, metric and epoch, over the used runs
    among those of `curves` (NaN values left out, as pandas does)."""
    used = frame.loc[frame["used"], ["run_id", *config_cols]]
    used = used[used["run_id"].isin(curves["run_id"].cat.categories)]
    # Joined on the curves' categories, not on millions of strings.
    used = used.astype({"run_id": curves["run_id"].dtype})
    merged = curves.merge(used, on="run_id")
    by = [*config_cols, "key", "step"]
    grouped = merged.groupby(by, dropna=False, observed=True)["value"]
    return grouped.agg(["count", "mean", "var"]).rename(columns={"count": "n"})


def combine_moments(parts: list[pd.DataFrame]) -> pd.DataFrame | None:
    """The moments of disjoint sets of runs (one frame of count, mean and variance per set)
    as one. Only configurations, metrics and epochs in more than one set are combined: the
    count, the count-weighted mean and the sum of squared deviations (each set's own plus
    its count times its mean's squared distance from the overall mean), so that many
    configurations cost one pass, not one copy of all of them per set. One set stands as it
    is, to the last bit. Empties `parts` (the concatenation holds their rows), so that the
    sets are not held twice."""
    if len(parts) <= 1:
        return parts[0] if parts else None
    every = pd.concat(parts)
    parts.clear()
    shared = every.index.duplicated(keep=False)
    if not shared.any():
        return every
    sets = every[shared]
    levels = list(range(sets.index.nlevels))

    def per_entry(values: pd.Series) -> pd.Series:
        # skipna=False: a NaN term (inf - inf) makes the whole NaN, as it does in one set.
        return values.groupby(level=levels, dropna=False, observed=True).sum(skipna=False)

    n = sets["n"]
    total = per_entry(n)
    has = n > 0  # a set whose values there were all NaN has no mean
    mean = per_entry((sets["mean"] * n).where(has, 0.0)) / total.where(total > 0)
    own = (sets["var"] * (n - 1)).where(n > 1, 0.0)
    spread = (n * (sets["mean"] - mean.reindex(sets.index)) ** 2).where(has, 0.0)
    squares = per_entry(own + spread)
    combined = pd.DataFrame(
        {"n": total, "mean": mean, "var": (squares / (total - 1)).where(total > 1)}
    )
    return pd.concat([every[~shared], combined])


def finish_moments(moments: pd.DataFrame | None, config_cols: list[str]) -> pd.DataFrame:
    """Mean, std and count per configuration, metric and epoch, in that order: the epochs
    every run of the configuration has a value at."""
    if moments is None or moments.empty:
        cols = {c: pd.Series(dtype=object) for c in config_cols}
        cols |= {"key": pd.Series(dtype=str), "step": pd.Series(dtype="int64")}
        cols |= {c: pd.Series(dtype=float) for c in ("mean", "std")}
        return pd.DataFrame(cols | {"n": pd.Series(dtype="int64")})
    out = moments.sort_index().reset_index()
    # Runs of one configuration logged at other epochs (a run reused from one with another
    # tracking.log_every): the mean of another set of seeds at every other epoch drew a saw.
    # A curve keeps the epochs every run of its configuration logged.
    every = out.groupby([*config_cols, "key"], dropna=False, observed=True)["n"].transform("max")
    out = out[out["n"] == every].reset_index(drop=True)
    out["std"] = np.sqrt(out.pop("var"))
    out["n"] = out.pop("n")
    return out.astype({"key": str})


def mean_curves(frame: pd.DataFrame, curves: pd.DataFrame, config_cols: list[str]) -> pd.DataFrame:
    """Mean, std and count per configuration, metric and epoch, over the used runs."""
    return finish_moments(curve_moments(frame, curves, config_cols), config_cols)


def run_batches(runs: list[SlimRun], keys: tuple[str, ...] = METRICS) -> list[list[str]]:
    """The runs' ids in batches of at most about BATCH_VALUES logged values each, a run whole
    in one batch (a run's values: its epochs, from epochs_run or train.epochs, times the
    keys; tracking.log_every makes it fewer)."""
    batches, size = [[]], 0
    for run in runs:
        epochs = run.data.metrics.get("epochs_run") or run.data.params.get("train.epochs")
        try:
            values = len(keys) * max(1, int(float(epochs)))
        except (TypeError, ValueError, OverflowError):  # no params yet (failed, running)
            values = len(keys)
        if batches[-1] and size + values > BATCH_VALUES:
            batches.append([])
            size = 0
        batches[-1].append(run.info.run_id)
        size += values
    return [b for b in batches if b]


def comparisons(
    frame: pd.DataFrame,
    config_cols: list[str],
    outcome: str = "tail_loss",
    alpha: float = 0.05,
    min_effect: float | None = None,
) -> pd.DataFrame:
    """Per configuration, its mean outcome over seeds and how it compares with the leader
    (fnnlab.compare.compare): failed and running runs have no outcome, diverged runs have
    none and count as diverged. All of them count in the share of a configuration's runs
    that diverged, as in the summary's counts (the leader is chosen among those with the
    smallest: over finished runs only, one FAILED run decided it, and the report's counts
    could not say why; helper-70)."""
    done = frame["status"] == FINISHED
    # Not a run whose params were never written (killed, or still running, before its end):
    # it has no configuration.
    frame = frame[done | frame[config_cols].notna().all(axis=1)]
    done = done[frame.index]
    runs = frame.reindex(columns=[*config_cols, "seed"]).assign(
        outcome=frame[outcome].where(done & frame["used"]),
        diverged=frame["diverged"] & done,
    )
    return compare(
        runs,
        config_cols,
        higher_is_better=outcome in HIGHER_IS_BETTER,
        alpha=alpha,
        min_effect=min_effect,
        coarse=outcome in COARSE,
    )


def regime_tables(
    frame: pd.DataFrame, config_cols: list[str]
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Stability boundary per configuration but its learning rate, and the regime fractions of
    width x learning rate, when both were swept (or are constant) and runs finished."""
    done = frame[(frame["status"] == FINISHED) & frame["regime"].notna()]
    if done.empty or not {"hidden_dim", "lr"} <= set(config_cols):
        return None, None
    return stability_boundary(done, boundary_groups(config_cols)), regime_fractions(
        done, "hidden_dim", "lr"
    )


def boundary_groups(config_cols: list[str]) -> list[str]:
    """A stability boundary is per width and per value of every other configuration column
    but the learning rate (the backprop mode, ...)."""
    return ["hidden_dim", *(c for c in config_cols if c not in ("hidden_dim", "lr"))]


def aggregate(
    sel: Selection,
    method: str = "auto",
    outcome: str = "tail_loss",
    alpha: float = 0.05,
    min_effect: float | None = None,
) -> Aggregate:
    if outcome not in OUTCOMES:
        raise ConfigValueError(
            "aggregate.outcome", outcome, f"must be one of {', '.join(OUTCOMES)}"
        )
    # A confidence of 1 - alpha below 50% would call most differences beyond seed noise.
    if not 0 < alpha <= 0.5:
        raise ConfigValueError("aggregate.alpha", alpha, "must be in (0, 0.5]")
    if min_effect is not None and not (math.isfinite(min_effect) and min_effect >= 0):
        raise ConfigValueError(
            "aggregate.min_effect", min_effect, "must be a finite number 0 or more, or null"
        )
    # As floats however given (Hydra makes 0 an int): one spelling in the parent's tags.
    alpha, min_effect = float(alpha), None if min_effect is None else float(min_effect)
    frame, config_cols = runs_frame(sel)
    # A batch of runs' curves at a time, reduced to what the tables keep (per run, and the
    # moments per configuration, metric and epoch): memory grows with the configurations
    # and epochs, not with the seeds.
    moments = []
    for ids in run_batches(sel.runs):
        curves = read_curves(sel.uri, sel.client, ids, method=method)
        from_curves(frame, curves)
        moments.append(curve_moments(frame, curves, config_cols))
        del curves
    frame["outcome"] = frame[outcome].where(frame["used"])
    stability, regimes = regime_tables(frame, config_cols)
    return Aggregate(
        selection=sel,
        runs=frame,
        summary=summarize(frame, config_cols),
        curves=finish_moments(combine_moments(moments), config_cols),
        config_cols=config_cols,
        outcome=outcome,
        comparison=comparisons(frame, config_cols, outcome, alpha, min_effect),
        stability=stability,
        regimes=regimes,
        alpha=alpha,
        min_effect=min_effect,
    )
