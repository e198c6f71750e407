"""Every use of a private part of Hydra, OmegaConf or MLflow, in one place.

fnnlab reaches below its dependencies' public APIs in four spots, each worth a large share
of a sweep's time (measured, README "Speed"):

- compose cache: Hydra composes every job of a sweep from scratch (about 57 ms); the
  CachingConfigLoader composes once per set of config-group choices and applies each job's
  value overrides with Hydra's own override code (ConfigLoaderImpl._apply_overrides_to_config,
  get_overrides_dirname from hydra._internal);
- task config: a job's config without its hydra node, copied without copying that node
  (OmegaConf's node content, config.__dict__["_content"]; 2 ms instead of 12 ms a job);
- YAML: OmegaConf's string quoting on libyaml's emitter (omegaconf._utils' dumper; 0.8 ms
  instead of 3.9 ms for a job's config);
- bulk SQL: a run's values, in MLflow's batches of at most 1,000, into MLflow's SQL store as
  bulk INSERTs, all in one transaction, through MLflow's own session, models, validation and
  latest-value update (SqlAlchemyStore's private methods, the client's store; README
  "Speed" has what it saves). Validated before the transaction, and on SQLite inserted
  through the driver, so that SQLite's one write lock is held for the inserts alone.

It also holds the four other private names fnnlab needs: the SQLAlchemy engine of the
store a client opened (to make the embedded store durable, see durable_sqlite), the
exception of a failed Hydra job (JobReturn.return_value raises it, after printing a line),
how Hydra's joblib launcher converts its settings for joblib (to check them up front), and
MLflow's check of an experiment name (so that a new store is not made for a name it refuses).

Each was written for the versions in constraints.txt and is checked here, at import: with
other versions installed, or FNNLAB_FAST_PATHS=0, every function below takes the public
path instead (Hydra's own loader and config copy, OmegaConf.to_yaml, MlflowClient.log_batch,
MLflow's default SQLite settings), after one warning line. tests/test_internals.py runs a
sweep both ways and compares the stores; it also fails on a private import anywhere else.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from typing import TYPE_CHECKING, Any

import yaml
from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

if TYPE_CHECKING:
    from mlflow.entities import Metric, Param, RunTag

    Batch = tuple[list[Metric], list[Param], list[RunTag]]

log = logging.getLogger(__name__)

# The versions the private paths below were written and tested for.
WRITTEN_FOR = {"hydra-core": "1.3.2", "omegaconf": "2.3.", "mlflow": "3.17."}


def _versions_match() -> list[str]:
    """The installed versions that differ from WRITTEN_FOR, as 'name version' lines."""
    differ = []
    for name, prefix in WRITTEN_FOR.items():
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "not installed"
        if not (version == prefix or (prefix.endswith(".") and version.startswith(prefix))):
            differ.append(f"{name} {version}")
    return differ


def _fast_paths() -> bool:
    if os.environ.get("FNNLAB_FAST_PATHS", "1") == "0":
        return False
    differ = _versions_match()
    if differ:
        log.warning(
            "fnnlab: public (slower) paths for %s: its private shortcuts were written for %s",
            ", ".join(differ),
            ", ".join(f"{k} {v}" for k, v in WRITTEN_FOR.items()),
        )
        return False
    return True


FAST = _fast_paths()


# --- Hydra: the compose cache -----------------------------------------------------------------

if FAST:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname  # noqa: E402

# (config search path, config name, choice overrides) -> the composed config, copied per job.
_BASES: dict[tuple, DictConfig] = {}
_MAX_BASES = 64
# Base key -> whether the app's part of that config mentions hydra (interpolations).
_REFERS_TO_HYDRA: dict[tuple, bool] = {}
# Value overrides of these keys change how Hydra composes, not just a value.
_COMPOSITION_KEYS = ("hydra.searchpath", "hydra.job.env_copy", "hydra.job.env_set")


def config_loader(inner: ConfigLoader) -> ConfigLoader:
    """The loader a sweep composes its jobs with: the caching one, or Hydra's own."""
    if not FAST or isinstance(inner, CachingConfigLoader):
        return inner
    return CachingConfigLoader(inner)


def load_task_config(loader: ConfigLoader, master: DictConfig, overrides: list[str]) -> DictConfig:
    """A job's config without its hydra node, for checking the jobs of a sweep."""
    if isinstance(loader, CachingConfigLoader):
        return loader.load_task_config(master, overrides)
    return without_hydra(loader.load_sweep_config(master, overrides))


class CachingConfigLoader(ConfigLoader):
    """Hydra's ConfigLoaderImpl, composing a sweep's jobs once per set of config choices.

    Hydra composes every job from scratch: it reads the defaults list, loads and merges
    every YAML file and the schema, then applies the job's overrides. In a sweep the jobs
    usually differ only in values (model.hidden_dim=8 vs 32), so that work repeats to the
    same result. Overrides that choose configs (model=..., hydra/launcher=..., +group=...,
    ~group) decide the composition, done by Hydra once per distinct set of choices and
    copied per job; all others are applied to the copy with Hydra's own override code.
    What Hydra records per job (hydra.overrides.*, hydra.job.override_dirname, the master's
    resolver cache) is redone as Hydra does it. tests/test_compose.py checks the result
    equals Hydra's composition for every kind of override.
    """

    def __init__(self, inner: ConfigLoader) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        # Anything else Hydra or a plugin reaches for is the wrapped loader's.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def load_configuration(
        self,
        config_name: str | None,
        overrides: list[str],
        run_mode: RunMode,
        from_shell: bool = True,
        validate_sweep_overrides: bool = True,
    ) -> DictConfig:
        return self.inner.load_configuration(
            config_name,
            overrides,
            run_mode,
            from_shell=from_shell,
            validate_sweep_overrides=validate_sweep_overrides,
        )

    def get_search_path(self) -> Any:
        return self.inner.get_search_path()

    def get_sources(self) -> list:
        return self.inner.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        return self.inner.list_groups(parent_name)

    def get_group_options(
        self,
        group_name: str,
        results_filter: Any = None,
        config_name: str | None = None,
        overrides: list[str] | None = None,
    ) -> list[str]:
        return self.inner.get_group_options(group_name, results_filter, config_name, overrides)

    def compute_defaults_list(
        self, config_name: str | None, overrides: list[str], run_mode: RunMode
    ) -> Any:
        return self.inner.compute_defaults_list(config_name, overrides, run_mode)

    def _chooses_configs(self, override: Override) -> bool:
        """True for overrides that Hydra's defaults list consumes (config group choices)."""
        key = override.key_or_group
        if key.startswith(_COMPOSITION_KEYS):
            return True
        return self.inner.repository.group_exists(key) and not isinstance(override.value(), dict)

    def _base(self, master_config: DictConfig, parsed: list[Override]) -> tuple:
        """(key, composed config) for the overrides' config choices, composed once."""
        choices = [o for o in parsed if self._chooses_configs(o)]
        config_name = master_config.hydra.job.config_name
        # The search path too: two apps in one process may both have a config "train".
        where = tuple(str(e) for e in self.inner.get_search_path().get_path())
        key = (where, config_name, tuple(o.input_line for o in choices))
        base = _BASES.get(key)
        if base is None:
            base = self.inner.load_configuration(
                config_name=config_name,
                overrides=[o.input_line for o in choices],
                run_mode=RunMode.RUN,
            )
            if len(_BASES) >= _MAX_BASES:
                _BASES.clear()
                _REFERS_TO_HYDRA.clear()
            _BASES[key] = base
        return key, base

    def load_sweep_config(
        self, master_config: DictConfig, sweep_overrides: list[str]
    ) -> DictConfig:
        master_hydra = OmegaConf.to_container(master_config.hydra.overrides.hydra)
        parsed = _parse([*master_hydra, *sweep_overrides])
        if any(o.is_sweep_override() for o in parsed):
            # Hydra's own message for this misuse.
            return self.inner.load_sweep_config(master_config, sweep_overrides)
        _, base = self._base(master_config, parsed)
        cfg = copy.deepcopy(base)
        _apply_values([o for o in parsed if not self._chooses_configs(o)], cfg)
        # What Hydra records about the overrides, in its order and format.
        app_overrides = [o for o in parsed if not o.is_hydra_override()]
        cfg.hydra.overrides.hydra = [o.input_line for o in parsed if o.is_hydra_override()]
        cfg.hydra.overrides.task = [o.input_line for o in app_overrides]
        with open_dict(cfg.hydra):
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=app_overrides,
                kv_sep=cfg.hydra.job.config.override_dirname.kv_sep,
                item_sep=cfg.hydra.job.config.override_dirname.item_sep,
                exclude_keys=cfg.hydra.job.config.override_dirname.exclude_keys,
            )
        # As Hydra does: the sweep shares the master's resolved values (timestamps, tokens).
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        return cfg

    def load_task_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        """load_sweep_config's result without its hydra node: 2 ms instead of 6 ms a job
        (measured) when it can leave that node out of the copy, which it can unless the
        job's own overrides set hydra keys or the app's config refers to the hydra node."""
        parsed = _parse(sweep_overrides)
        if any(o.is_sweep_override() or o.is_hydra_override() for o in parsed):
            return without_hydra(self.load_sweep_config(master_config, sweep_overrides))
        master_hydra = OmegaConf.to_container(master_config.hydra.overrides.hydra)
        every = _parse(master_hydra) + parsed
        key, base = self._base(master_config, every)
        if key not in _REFERS_TO_HYDRA:
            _REFERS_TO_HYDRA[key] = "hydra" in str(
                OmegaConf.to_container(without_hydra(base), resolve=False)
            )
        if _REFERS_TO_HYDRA[key]:
            return without_hydra(self.load_sweep_config(master_config, sweep_overrides))
        cfg = without_hydra(base)
        _apply_values([o for o in parsed if not self._chooses_configs(o)], cfg)
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        return cfg


# Override line -> Hydra's parse of it: a sweep's jobs repeat most of their lines.
_PARSED: dict[str, Override] = {}
_MAX_PARSED = 100_000


def _parse(lines: list[str]) -> list[Override]:
    """OverridesParser.parse_overrides(lines), parsing each distinct line once."""
    if len(_PARSED) >= _MAX_PARSED:
        _PARSED.clear()
    missing = list(dict.fromkeys(line for line in lines if line not in _PARSED))
    if missing:
        parsed = OverridesParser.create().parse_overrides(overrides=missing)
        _PARSED.update(zip(missing, parsed, strict=True))
    return [_PARSED[line] for line in lines]


def _apply_values(values: list[Override], cfg: DictConfig) -> None:
    try:
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    except OmegaConfBaseException as e:
        raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from e


# --- OmegaConf: the task config, YAML ---------------------------------------------------------


def without_hydra(config: DictConfig) -> DictConfig:
    """A copy of config without its hydra node (what Hydra hands a task function).

    Hydra copies the whole config and deletes the copy's hydra node; that node is most of
    the config, so the fast path sets it aside while the rest is copied. config keeps it.
    """
    if not FAST:
        task = copy.deepcopy(config)
        with read_write(task), open_dict(task):
            del task["hydra"]
        return task
    content = config.__dict__["_content"]
    whole = dict(content)
    del content["hydra"]
    try:
        return copy.deepcopy(config)
    finally:
        content.clear()
        content.update(whole)


if FAST:
    from omegaconf._utils import OmegaConfDumper, get_omega_conf_dumper  # noqa: E402

    class _CDumper(yaml.CDumper):
        """OmegaConf's dumper (strings that would read back as a bool, int or float are
        quoted) on libyaml's emitter: OmegaConf.to_yaml's text, 4x faster."""

    get_omega_conf_dumper()  # OmegaConf registers its string representer lazily
    _CDumper.add_representer(str, OmegaConfDumper.str_representer)


def to_yaml(cfg: Any, resolve: bool = False) -> str:
    """OmegaConf.to_yaml(cfg, resolve=resolve); only long strings wrap differently."""
    if not FAST:
        return OmegaConf.to_yaml(cfg, resolve=resolve)
    container = OmegaConf.to_container(cfg, resolve=resolve, enum_to_str=True)
    return yaml.dump(
        container, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=_CDumper
    )


def job_error(job_return: Any) -> BaseException | None:
    """The exception a failed Hydra job raised (its JobReturn.return_value would raise it
    and print a line first); None for a completed job."""
    from hydra.core.utils import JobStatus

    if job_return.status == JobStatus.COMPLETED:
        return None
    return job_return._return_value


# --- Hydra's joblib launcher: what it hands joblib ----------------------------------------------


def joblib_settings(launcher: DictConfig) -> dict[str, Any] | None:
    """The keyword arguments Hydra's joblib launcher gives joblib.Parallel for these
    settings: the loky backend, and strings of numbers made numbers by its private
    process_joblib_cfg. None on the public path, or when the plugin has no such function."""
    if not FAST:
        return None
    try:
        from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    except ImportError:
        return None
    settings = OmegaConf.to_container(launcher, resolve=True)
    settings.pop("_target_", None)
    settings["backend"] = "loky"
    process_joblib_cfg(settings)
    return settings


# --- MLflow: the SQL store ------------------------------------------------------------------

# MLflow is imported where it is used, not with this module: the fnnlab launcher imports this
# module for any Hydra app, and MLflow takes seconds to import.


def sql_store(client: Any) -> Any:
    """The MLflow SQL store behind a client (SQLite file or database URI), for bulk
    writes; None for a tracking server, or on the public path."""
    if not FAST:
        return None
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = client._tracking_client.store
    return store if isinstance(store, SqlAlchemyStore) else None


def experiment_name_problem(name: str) -> str | None:
    """Why MLflow's stores refuse this name for a new experiment (MLflow's own check, which
    they run when they create one), or None. Asked before a new store is made, so that a
    refused name leaves no database behind; on both paths, as it is no speed trick. None
    when this MLflow has no such check: the store refuses the name then."""
    from mlflow.exceptions import MlflowException

    try:
        from mlflow.utils.validation import _validate_experiment_name
    except ImportError:
        return None

    try:
        _validate_experiment_name(name)
    except MlflowException as exc:
        return exc.message
    return None


def durable_sqlite(store: Any) -> None:
    """Settings under which an OS crash or power loss cannot corrupt the embedded store,
    on that store's engine only (never on other databases in the process): write-ahead
    logging with synchronous=NORMAL. A commit is then a write to the log, with an fsync
    only when the log is copied back (MLflow's default, a rollback journal with
    synchronous=FULL, took two fsyncs a commit; synchronous=OFF, fast, could corrupt the
    whole file on an OS crash). Measured in README "Speed"."""
    if store is None or store.engine.dialect.name != "sqlite":
        return
    import sqlalchemy

    def normal_sync(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA synchronous = NORMAL")

    sqlalchemy.event.listen(store.engine, "connect", normal_sync)
    store.engine.dispose()  # connections made before the listener get it too
    with store.engine.connect() as conn:
        # Persistent: the file stays in WAL mode for every later connection.
        conn.exec_driver_sql("PRAGMA journal_mode = WAL")


def log_batches(
    client: Any, store: Any, run_id: str, batches: Callable[[], Iterable[Batch]]
) -> None:
    """client.log_batch(run_id, metrics, params, tags) for each batch that batches() yields,
    in order; into MLflow's SQL store (store, from sql_store) with bulk inserts, all batches
    in one transaction. batches is called again to redo the writes another way (below), so
    it must give the same batches each time.

    MLflow's SqlAlchemyStore.log_batch builds one ORM object per metric value, flushes them
    through SQLAlchemy's unit of work and commits three transactions per batch of at most
    1,000 values. This writes the same rows into the same tables through MLflow's own
    session, models and checks:
    - every batch goes through MLflow's validation and batch limits, as it would alone,
      and is made into rows before the transaction begins (the first AHEAD_BATCHES);
    - values are sanitised as MLflow does (NaN as 0 with is_nan, +-inf as the largest float);
    - a param may be logged again only with the same value (MLflow's error otherwise);
    - the latest-value rows are updated by MLflow's own code, once, with each key's latest;
    - a tag is inserted or overwritten as MLflow's _set_tags does (a later value of a key
      wins); a run-name tag also renames the run, through _set_tags itself, after the commit;
    - an error rolls back every batch: nothing of the call is stored; it is the first error
      MLflow's log_batch, called once per batch, would raise;
    - a metric row already stored (the same value logged twice) fails the transaction,
      which is rolled back, and every batch goes through MLflow's own log_batch, which
      skips such rows.
    Only run metrics: metrics of a logged model (model_id) are not taken.
    tests/test_internals.py compares every table, row by row, with MLflow's own log_batch
    called once per batch, on SQLite and on PostgreSQL.
    """
    if store is None:
        for metrics, params, tags in batches():
            client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        return
    import sqlalchemy
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.dbmodels.models import SqlMetric, SqlParam, SqlTag
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
    from mlflow.utils.validation import _validate_run_id

    _validate_run_id(run_id)
    latest: dict[str, dict[str, Any]] = {}
    driver = _driver_insert(store.engine.dialect)
    checked = _checked_batches(store, run_id, batches(), latest, driver)
    # Checked and made into rows before the transaction: SQLite lets one writer in at a time,
    # from its first insert to its commit, so work done in there keeps other workers' writes
    # waiting (two workers writing long runs took as long as one writing both).
    ahead: list[Any] = []
    try:
        ahead.extend(itertools.islice(checked, AHEAD_BATCHES))
    except Exception as exc:
        if not ahead:  # the first batch's: raised before the run is read, as by log_batch
            raise
        # A later batch's: raised where MLflow's log_batch would be, after the batches before
        # it (their errors, a param changed, come first).
        ahead.append(exc)
    rename = None
    try:
        with store.ManagedSessionMaker(read_only=False) as session:
            run = store._get_run(run_uuid=run_id, session=session)
            store._check_run_is_active(run)
            stored = {p.key: p.value for p in run.params}
            for batch in itertools.chain(ahead, checked):
                if isinstance(batch, Exception):
                    raise batch
                rows, params, tags = batch
                param_rows = _new_params(stored, run_id, params)
                if param_rows:
                    session.execute(sqlalchemy.insert(SqlParam.__table__), param_rows)
                if isinstance(rows, Exception):  # as log_batch: after the batch's params
                    raise rows
                if rows and driver:
                    session.connection().exec_driver_sql(driver[0], rows)
                elif rows:
                    session.execute(sqlalchemy.insert(SqlMetric.__table__), rows)
                for tag in tags:
                    # What MLflow's _set_tags does: insert the tag or overwrite its value.
                    session.merge(SqlTag(run_uuid=run_id, key=tag.key, value=tag.value))
                    if tag.key == MLFLOW_RUN_NAME:
                        rename = tag
            if latest:
                latest_rows = [SqlMetric(**row) for row in latest.values()]
                store._update_latest_metrics_if_necessary(latest_rows, session)
    except MlflowException as exc:
        # MLflow's session turns the database's errors into MlflowException. A key already
        # stored (the same metric value logged twice, a param written by another process
        # meanwhile) rolled back the whole transaction: MLflow's own path logs every batch
        # and skips or reports those rows.
        if not isinstance(exc.__cause__, sqlalchemy.exc.IntegrityError):
            raise
        ahead.clear()
        checked.close()
        for metrics, params, tags in batches():
            store.log_batch(run_id, metrics, params, tags)
        return
    if rename is not None:
        # Setting the run name also renames the run: MLflow's own _set_tags, with the last one.
        store._set_tags(run_id, [rename])


METRIC_COLUMNS = ("run_uuid", "key", "value", "timestamp", "step", "is_nan")
# Batches (of at most 1,000 values) checked ahead of the write transaction: their rows take
# about 210 bytes a value as SQLite's parameters, 390 as dicts (tracemalloc); a longer run's
# later batches are checked within the transaction.
AHEAD_BATCHES = 100


DriverInsert = tuple[str, Callable[[dict[str, list[Any]]], list[tuple]]]


def _driver_insert(dialect: Any) -> DriverInsert | None:
    """On SQLite, the metrics table's INSERT as the driver takes it, and what makes rows into
    its parameters (with the columns' own bind conversions, as SQLAlchemy applies them: a
    numpy float32 value would otherwise be stored as bytes). SQLAlchemy's per-row parameter
    handling took as long as SQLite's inserts, all of it within the write lock; this does
    the conversions column by column, before the transaction. None elsewhere: psycopg2's
    executemany runs one statement a row (its documentation says so), where SQLAlchemy
    batches them."""
    if dialect.name != "sqlite":
        return None
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.models import SqlMetric

    table = SqlMetric.__table__
    compiled = sqlalchemy.insert(table).compile(dialect=dialect, column_keys=list(METRIC_COLUMNS))
    columns = [
        (name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
        for name in compiled.positiontup
    ]

    def parameters(rows: dict[str, list[Any]]) -> list[tuple]:
        values = [
            list(map(convert, rows[name])) if convert else rows[name] for name, convert in columns
        ]
        return list(zip(*values, strict=True))

    return str(compiled), parameters


def _checked_batches(
    store: Any,
    run_id: str,
    batches: Iterable[Batch],
    latest: dict[str, dict[str, Any]],
    driver: DriverInsert | None,
) -> Iterator[tuple[list[Any] | Exception, list[Param], list[RunTag]]]:
    """Each batch through MLflow's validation and batch limits, as log_batch does before it
    writes, its metrics made into the metrics table's rows (the driver's parameters with a
    driver insert): (rows, params, tags). A batch whose values cannot be made into rows
    (log_batch's error within its transaction) comes with the exception for rows, and is
    the last."""
    from mlflow.utils.validation import _validate_batch_log_limits, _validate_param_keys_unique

    for metrics, params, tags in batches:
        metrics, params, tags = _validate_batch(metrics, params, tags)
        _validate_batch_log_limits(metrics, params, tags)
        _validate_param_keys_unique(params)
        if any(m.model_id is not None for m in metrics):
            raise ValueError("log_batches takes run metrics only, not a model's")
        try:
            columns = _metric_columns(store, run_id, metrics, latest)
            rows = driver[1](columns) if driver else _dict_rows(columns)
        except Exception as exc:
            yield exc, params, tags
            return
        yield rows, params, tags


def _validate_batch(
    metrics: list[Metric], params: list[Param], tags: list[RunTag]
) -> tuple[list[Metric], list[Param], list[RunTag]]:
    """MLflow's _validate_batch_log_data: the same checks, the same first error. MLflow checks
    every metric's key, value, timestamp and step; for a metric whose value is a float,
    timestamp a nonnegative int and step an int, only its key's checks can fail, and they
    depend on the key alone. So such a metric whose key passed them earlier in the batch is
    not checked again (a run's 1,000 values a batch have a few keys); every other metric is
    checked by MLflow's own code, in order, which raises its own error at its own path."""
    from mlflow.utils.validation import _validate_batch_log_data, _validate_metric

    passed: set[str] = set()
    for index, m in enumerate(metrics):
        if (
            type(m.key) is str
            and m.key in passed
            and type(m.value) is float
            and type(m.timestamp) is int
            and m.timestamp >= 0
            and type(m.step) is int
        ):
            continue
        _validate_metric(m.key, m.value, m.timestamp, m.step, path=f"metrics[{index}]")
        if type(m.key) is str:
            passed.add(m.key)
    _, params, tags = _validate_batch_log_data([], params, tags)
    return metrics, params, tags


def _metric_columns(
    store: Any, run_id: str, metrics: list[Metric], latest: dict[str, dict[str, Any]]
) -> dict[str, list[Any]]:
    """The metrics table's rows, as its columns (METRIC_COLUMNS); latest keeps, per key, the
    row with the largest (step, timestamp, value) so far, the first of equal ones.

    MLflow's latest-value update keeps, per key, the value with the largest (step,
    timestamp, value); given only each key's largest, it ends with the same row. A value
    repeated within the call is not dropped here: its second row fails the insert, and
    MLflow's own path, which skips it, takes over.
    """
    n = len(metrics)
    keys = [m.key for m in metrics]
    timestamps = [m.timestamp for m in metrics]
    steps = [m.step for m in metrics]
    sanitized = list(map(store.sanitize_metric_value, [m.value for m in metrics]))
    is_nan = [s[0] for s in sanitized]
    values = [s[1] for s in sanitized]
    columns = {
        "run_uuid": [run_id] * n,
        "key": keys,
        "value": values,
        "timestamp": timestamps,
        "step": steps,
        "is_nan": is_nan,
    }
    # In order, as MLflow's latest-value update compares them: a value that is not a Python
    # float (numpy's float32) can compare equal to two floats that differ (helper-74), so
    # no other order of comparisons is sure to keep the same row.
    best = {key: (row["step"], row["timestamp"], row["value"]) for key, row in latest.items()}
    newer: dict[str, int] = {}
    rows = zip(steps, timestamps, values, strict=True)
    for i, (key, row) in enumerate(zip(keys, rows, strict=True)):
        top = best.get(key)
        if top is None or row > top:
            best[key], newer[key] = row, i
    for key, i in newer.items():
        latest[key] = {
            "run_uuid": run_id,
            "key": key,
            "value": values[i],
            "timestamp": timestamps[i],
            "step": steps[i],
            "is_nan": is_nan[i],
        }
    return columns


def _dict_rows(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _new_params(stored: dict[str, str], run_id: str, params: list[Param]) -> list[dict[str, str]]:
    """The params not yet stored, added to stored; MLflow's error for one stored with another
    value."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    changed = [
        {"key": p.key, "old_value": stored[p.key], "new_value": p.value}
        for p in params
        if p.key in stored and stored[p.key] != p.value
    ]
    if changed:
        raise MlflowException(
            "Changing param values is not allowed. Params were already"
            f" logged='{changed}' for run ID='{run_id}'.",
            INVALID_PARAMETER_VALUE,
        )
    new = [
        {"run_uuid": run_id, "key": p.key, "value": p.value} for p in params if p.key not in stored
    ]
    stored.update((row["key"], row["value"]) for row in new)
    return new
