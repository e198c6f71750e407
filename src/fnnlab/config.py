"""The configuration contract: structured-config dataclasses, value checks, and the
resolvers the YAML files use.

Hydra merges conf/ onto these dataclasses, which rejects unknown keys and wrong
types; check_values() rejects values of the right type that make no sense.
Both happen before any MLflow run exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import struct
import sys
import tempfile
import uuid
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fnnlab.names import BACKPROP_MODES


@dataclass
class ModelConfig:
    hidden_dim: int = 32
    backprop: str = "tutorial"  # tutorial | exact: see fnnlab.model.ScratchFNN
    init_discard_draws: int = 0  # randn(input_dim, hidden_dim) draws thrown away before w1
    dtype: str = "float32"  # float32 | float64


@dataclass
class OptimConfig:
    lr: float = 0.001


@dataclass
class DataConfig:
    name: str = "iris2"
    features: list[int] = field(default_factory=lambda: [0, 1])
    normalize: bool = True


@dataclass
class TrainConfig:
    epochs: int = 101
    # Stop as diverged once the loss passes this many times max(its epoch-0 value, ln 2).
    diverge_factor: float = 100.0


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlruns/mlflow.db"
    experiment: str = "fnnlab"
    plots: bool = True
    # Log every n-th epoch's values (and always the first and last); summaries use all.
    log_every: int = 1


@dataclass
class RegimeConfig:
    """When a run's loss curve counts as oscillating (fnnlab.compare.classify_regime): over
    the last tail_fraction of its epochs (at least min_tail_epochs), the smaller of its summed
    rises and falls is at least `swing` times the mean loss there; steps under `noise` times
    that mean are rounding. Runs under min_epochs epochs are stable."""

    tail_fraction: float = 0.2
    min_tail_epochs: int = 5
    min_epochs: int = 4
    swing: float = 0.01
    noise: float = 1e-4


@dataclass
class LimitsConfig:
    # Refuse a run whose estimated memory need is above this many GB before it starts;
    # null: half of this machine's physical memory.
    memory_gb: float | None = None


@dataclass
class UiAddress:
    """Where fnnlab-ui serves an embedded store: every command's printed links point there
    (a tracking server is its own UI)."""

    host: str = "127.0.0.1"
    port: int = 5000


@dataclass
class TrainAppConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    # Overlay the published tutorial losses and log the largest deviation from them.
    reference: bool = False
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    ui: UiAddress = field(default_factory=UiAddress)


@dataclass
class UiConfig(UiAddress):
    # port 0: any free port
    sweep: str | None = "latest"  # latest | a sweep id (or prefix) | null: whose runs to compare
    open: bool = False  # open the URL in a browser


@dataclass
class UiAppConfig:
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ui: UiConfig = field(default_factory=UiConfig)


@dataclass
class AggregateConfig:
    # latest: the experiment's sweep started or run again last; a sweep id; or all: every
    # job run.
    sweep: str = "latest"
    # A parent run id: selects the sweep instead (with aggregate.sweep other than latest:
    # refused, as it cannot be told which was meant).
    parent_run_id: str | None = None
    # An MLflow filter string ANDed to the selection, e.g. "params.`model.backprop` = 'exact'".
    filter: str | None = None
    # Where CSVs, report and plots go; relative paths are from the project root.
    # Empty: the Hydra output folder of this invocation.
    out_dir: str | None = None
    # Log the outputs and the comparison onto the sweep's parent run.
    log_to_parent: bool = True
    plots: bool = True
    # One number per run: tail_loss (mean loss over the last 10% of the epochs run),
    # final_loss, best_loss or final_accuracy (higher is better).
    outcome: str = "tail_loss"
    # A configuration is tied with the leader when the Holm-adjusted p-value of their
    # difference is at least alpha ...
    alpha: float = 0.05
    # ... or the difference is smaller than this; null: 1% of the leader's mean.
    min_effect: float | None = None


@dataclass
class ReplayConfig:
    run: str | None = None  # a run id
    sweep: str | None = None  # a sweep id (or prefix), or latest: its FINISHED runs
    sample: int | None = None  # replay this many of the sweep's runs, chosen at random ...
    seed: int = 0  # ... with this seed
    log: bool = False  # also log each replay as a new run tagged replay.of=<run id>


@dataclass
class ReplayAppConfig:
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)


@dataclass
class AggregateAppConfig:
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    ui: UiAddress = field(default_factory=UiAddress)


# Sections that decide what a run computes; the fingerprint covers exactly these.
TRAINING_KEYS = ("model", "optim", "data", "train", "seed")


def trains(param: str) -> bool:
    """A run's param (a dotted key) is one of what it computes (TRAINING_KEYS): a
    configuration is told by these, and a run reused by its fingerprint may differ in others."""
    return param.split(".", 1)[0] in TRAINING_KEYS


# torch's CPU generator keeps 32 bits of a seed: seeds outside this range repeat ones inside.
SEED_RANGE = 2**32
# Draws thrown away one at a time before each member's weights (the published curve needs
# 1): a bound, so that a typo cannot keep a run drawing numbers for hours.
MAX_DISCARD_DRAWS = 10_000
# Measured peak of a fit: about 5 arrays of rows x hidden_dim values at once (6 with margin),
# and under 200 bytes per epoch for the history; the process itself needs about half a GB.
_BYTES_PER_CELL = 6
_BYTES_PER_EPOCH = 200
_PROCESS_BYTES = 2**29
IRIS2_ROWS = 100


def memory_need(cfg: DictConfig) -> dict[str, float]:
    """Estimated bytes a run needs, by the key that drives each part."""
    itemsize = 8 if cfg.model.dtype == "float64" else 4
    return {
        "model.hidden_dim": _BYTES_PER_CELL * IRIS2_ROWS * cfg.model.hidden_dim * itemsize,
        "train.epochs": _BYTES_PER_EPOCH * cfg.train.epochs,
    }


def memory_limit(cfg: DictConfig) -> tuple[float, str]:
    """The limit in bytes, and where it comes from."""
    if cfg.limits.memory_gb is not None:
        return cfg.limits.memory_gb * 1e9, f"limits.memory_gb={cfg.limits.memory_gb:g}"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total / 2, f"half this machine's {total / 1e9:.0f} GB; limits.memory_gb sets it"


def _check_memory(cfg: DictConfig) -> None:
    need = memory_need(cfg)
    limit, why = memory_limit(cfg)
    if _PROCESS_BYTES + sum(need.values()) > limit:
        key = max(need, key=need.__getitem__)
        total = (_PROCESS_BYTES + sum(need.values())) / 1e9
        raise ConfigValueError(
            key,
            OmegaConf.select(cfg, key),
            f"a run needs about {total:.3g} GB of memory, over the limit of "
            f"{limit / 1e9:.3g} GB ({why})",
        )


def members_within_memory(cfg: DictConfig) -> int:
    """How many jobs of cfg's shape may train as one population (fnnlab.population) within
    the memory limit, which _check_memory applies to one run: a group holds every member's
    history until it has trained, and its hidden activations a chunk of members at a time,
    about one wide member's. At least one: a run that passes _check_memory."""
    need = memory_need(cfg)
    room = memory_limit(cfg)[0] - _PROCESS_BYTES - need["model.hidden_dim"]
    # min: limits.memory_gb=inf is no limit.
    return max(1, int(min(room / need["train.epochs"], sys.maxsize)))


def as_typed(value: Any) -> str:
    """A value as it is typed on Hydra's command line: null, true and false, not Python's
    None, True and False."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


class ConfigValueError(ValueError):
    """A value of the right type that cannot be used; names the key and the value."""

    def __init__(self, key: str, value: Any, why: str) -> None:
        super().__init__(f"{key}={as_typed(value)}: {why}")
        self.key = key
        self.value = value
        self.why = why

    def __reduce__(self) -> tuple:
        # Picklable, so that a job in a worker process can fail with it.
        return (type(self), (self.key, self.value, self.why))


def _unknown_key(cfg: DictConfig, schema: DictConfig, prefix: str = "") -> str | None:
    """The first key of cfg that the schema does not have (a `+key=...` adds one)."""
    for key, value in cfg.items_ex(resolve=False):
        if key == "hydra" and not prefix:
            continue
        if key not in schema:
            return f"{prefix}{key}"
        if OmegaConf.is_dict(value) and OmegaConf.is_dict(schema[key]):
            found = _unknown_key(value, schema[key], f"{prefix}{key}.")
            if found:
                return found
    return None


@cache
def _schema(app: type) -> DictConfig:
    return OmegaConf.structured(app)


def check_known_keys(cfg: DictConfig, app: type) -> None:
    """Raise ConfigValueError for the first key of cfg that the app's schema does not have:
    nothing reads it, so a command must not run as if it did."""
    schema = _schema(app)
    unknown = _unknown_key(cfg, schema)
    if unknown is not None:
        section = unknown.rpartition(".")[0]
        known = OmegaConf.select(schema, section) if section else schema
        raise ConfigValueError(
            unknown,
            OmegaConf.select(cfg, unknown),
            f"not a key of the config ({section or 'the top level'} has "
            f"{', '.join(str(k) for k in known)})",
        )


def masked_uri(uri: str) -> str:
    """The URI with its password, if any, replaced by ***."""
    password = urlsplit(uri).password
    # Its first occurrence is in the user part, before any path or query.
    return uri.replace(f":{password}@", ":***@", 1) if password else uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (or sqlite+<driver>:///), else None."""
    if not re.match(r"sqlite(\+\w+)?:", uri):
        return None
    # As SQLAlchemy reads it: sqlite:////abs/file.db is absolute, sqlite:///rel.db relative,
    # up to a query; a # is part of the path (urlparse took it for a fragment's start).
    path = re.match(r"sqlite(\+\w+)?:///([^?]*)", uri)
    return Path(path[2]) if path else Path(urlparse(uri).path[1:])


def check_uri(uri: str, moves: bool = False) -> None:
    """Refuse a tracking URI that would not name the store the user meant: with a password
    that password_to_env() did not take out (it came from a config file or an
    interpolation), it would be stored in every run (params, config files) and printed in
    logs (the error masks it); an empty one, for which MLflow takes its own default store;
    and, when hydra.job.chdir=true moves the job into another folder (`moves`), a relative
    SQLite file, which each job would read inside its own output folder: a new store per
    run, and a sweep's runs apart from its parent."""
    if not uri.strip():
        raise ConfigValueError(
            "tracking.uri",
            uri,
            "empty: give a store (sqlite:///<file>, a tracking server's http://... URL, "
            "or tracking=server)",
        )
    if masked_uri(uri) != uri:
        raise ConfigValueError(
            "tracking.uri",
            masked_uri(uri),
            "a password from a config file would be stored with every run; give the URI on "
            "the command line (tracking.uri=..., its password then goes into PGPASSWORD or "
            "MLFLOW_TRACKING_PASSWORD), or set those variables yourself",
        )
    db = sqlite_path(uri)
    if db is not None and str(db) in (".", ":memory:"):
        raise ConfigValueError(
            "tracking.uri", uri, "an SQLite store in memory keeps nothing: give a file"
        )
    if db is not None and re.search(r"[?&]uri=(true|1|yes|on)(&|$)", uri, re.IGNORECASE):
        # SQLAlchemy's URI filename (sqlite:///file:/abs/m.db?uri=true): MLflow made a folder
        # file:/abs in the working directory, and SQLite could not open the file, after about
        # 100 s of retries. (Without uri=true, file:m.db is a file of that name.)
        raise ConfigValueError(
            "tracking.uri",
            uri,
            "an SQLite URI filename (uri=true) is not taken: give the file's path "
            "(sqlite:////<absolute path> or sqlite:///<relative path>)",
        )
    if db is not None and unquote(str(db)) != str(db):  # a lone % is no escape: it stays
        raise ConfigValueError(
            "tracking.uri",
            uri,
            "a %-escape in the database's path: SQLAlchemy opens the file with it decoded "
            "(%41 as A), MLflow makes its folder with it as written: write the path as it is "
            "(a space needs no escape; a % not before two hex digits is kept)",
        )
    if moves and db is not None and not db.is_absolute():
        raise ConfigValueError(
            "tracking.uri",
            uri,
            "a relative file, and hydra.job.chdir=true runs each job in its output folder, "
            "where it would be another store: give an absolute path (sqlite:////<path>)",
        )


class CheckTrackingUri(Callback):
    """hydra.callbacks.tracking_uri in conf/*.yaml: check_uri() before Hydra writes the
    config into the output folder (.hydra/, multirun.yaml), which the commands' own checks
    come after."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, sweep=False)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, sweep=True)

    @staticmethod
    def _check(config: DictConfig, sweep: bool) -> None:
        try:
            check_uri(str(config.tracking.uri), _chdir_moves(config, sweep))
        except ConfigValueError as exc:
            from fnnlab.sweep import SweepRefused

            # Hydra turns an Exception from a callback into a warning; run_cli reports this
            # one's cause in one line.
            raise SweepRefused(str(exc)) from exc


def check_output_subdir(subdir: str | None, output_dir: str | None = None) -> None:
    """Refuse a hydra.output_subdir inside the job's artifacts/ folder: fnnlab writes its own
    config.yaml there and copies Hydra's files into artifacts/hydra (with
    output_subdir=artifacts/hydra a traceback, SameFileError, and a FAILED run; with
    artifacts, Hydra's config.yaml written over). With the job's `output_dir`, as Hydra
    joins them; without (before a sweep starts, when the job's folder is not known yet),
    only a relative value without an interpolation, which every job shares."""
    if subdir is None:
        return
    if output_dir is not None:
        out = Path(output_dir)
        inside = (out / subdir).resolve().is_relative_to((out / "artifacts").resolve())
    else:
        relative = "${" not in subdir and not Path(subdir).is_absolute()
        inside = relative and Path(os.path.normpath(subdir)).parts[:1] == ("artifacts",)
    if inside:
        raise ConfigValueError(
            "hydra.output_subdir",
            subdir,
            "inside the run's artifacts/ folder, where fnnlab writes the run's own files: "
            "give another (Hydra's default is .hydra)",
        )


def sweep_subdir(config: DictConfig) -> tuple[str, Path | None]:
    """hydra.sweep.subdir as given (unresolved: ${hydra.job.num} resolves only in a job the
    launcher numbered), and the one output folder every job of the sweep shares when it has
    no interpolation (such as `.`), else None."""
    subdir = str(OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"])
    shared = None if "${" in subdir else Path(str(config.hydra.sweep.dir)) / subdir
    return subdir, shared


def _chdir_moves(config: DictConfig, sweep: bool) -> bool:
    """Whether hydra.job.chdir=true runs the job in a folder other than this one: a single
    run's hydra.run.dir, or a sweep's job folder (one per job unless hydra.sweep.subdir has
    no interpolation). (A job checks it again where it runs: a swept config group may set
    hydra.job.chdir.)"""
    if not config.hydra.job.chdir:
        return False
    try:
        if sweep:
            _, shared = sweep_subdir(config)
            if shared is None:  # a folder per job
                return True
            folder = shared
        else:
            with as_in_its_job(config):
                folder = Path(str(config.hydra.run.dir))
    except Exception:  # a folder that does not resolve: CheckOutputFolder names it
        return False
    return folder.resolve() != Path.cwd().resolve()


class CheckOutputFolder(Callback):
    """hydra.callbacks.output_folder in conf/*.yaml: an output folder Hydra cannot make
    refuses the command in one line (its key and value) before any file or run is written.
    Hydra itself would raise a traceback from inside its job, after a sweep's parent run was
    opened. The folder is not made here, so that a run refused later for a value leaves
    none behind."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra's run_job reads the folder with HydraConfig set to this config.
        with as_in_its_job(config):
            path = self._check("hydra.run.dir", config)
        _NEW_RUN_FOLDER.clear()
        # Not with "..": the system reads x/../y through x (perhaps a link), abspath does
        # not, and a folder that existed could be taken for the new one (helper-53).
        if path is not None and ".." not in path.parts:
            path = Path(os.path.abspath(path))  # as Hydra's runtime.output_dir
            if not os.path.lexists(path):
                _NEW_RUN_FOLDER[path] = next(p for p in path.parents if os.path.lexists(p))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _NEW_RUN_FOLDER.clear()
        self._check("hydra.sweep.dir", config)

    @staticmethod
    def _check(key: str, config: DictConfig) -> Path | None:
        try:
            # The config Hydra's job gets: ${now:} is cached in it, so this is its value.
            value = str(OmegaConf.select(config, key, throw_on_resolution_failure=True))
        except Exception:
            return None  # a value that does not resolve: Hydra's own error says why
        path = Path(value)
        # Hydra takes an empty one for the current folder; more likely an unset variable.
        why = "empty: give a folder (. is the current one)" if not value.strip() else None
        why = why or folder_problem(path) or _in_default_store_artifacts(config, path)
        if why is not None:
            from fnnlab.sweep import SweepRefused

            refused = ConfigValueError(key, path if value.strip() else value, why)
            raise SweepRefused(str(refused)) from refused
        return path


def _in_default_store_artifacts(config: DictConfig, folder: Path) -> str | None:
    """Why an output folder cannot be used, or None: it lies in the artifact folder a store
    of tracking.uri has by default (beside an SQLite file), known before the store is
    opened; Hydra would write its files there before the command runs. (The command checks
    its experiment's own location once the store is open.)"""
    from fnnlab.tracking import artifact_location, inside_store_artifacts

    try:
        return inside_store_artifacts(artifact_location(str(config.tracking.uri)), folder)
    except Exception:  # another app's config, or a URI its own check names
        return None


# The single run's output folder, when it did not exist before the command (Hydra makes it),
# and its nearest folder that did: set by CheckOutputFolder, read by discard_run_folder.
_NEW_RUN_FOLDER: dict[Path, Path] = {}

# What Hydra writes into a run's hydra.output_subdir before the command's own code runs.
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def discard_run_folder(output_dir: str, output_subdir: str | None) -> None:
    """Remove the output folder Hydra made for a single run that the command then refused,
    so that the refusal leaves nothing behind. Only a folder that did not exist before the
    command, and only while it holds nothing but Hydra's own files (its config files in
    `output_subdir`, an empty log); the folders above it that the command made go too."""
    folder = Path(os.path.abspath(output_dir))
    if folder not in _NEW_RUN_FOLDER:
        return
    logs: dict[Path, list[tuple[Any, Any]]] = {}
    for logger, handler in _file_handlers():
        logs.setdefault(Path(handler.baseFilename), []).append((logger, handler))
    # As the files' paths read (output_subdir=../run/artifacts is run/artifacts).
    hydra_dir = Path(os.path.normpath(folder / output_subdir)) if output_subdir else None
    files = [p for p in folder.rglob("*") if not p.is_dir() or p.is_symlink()]
    ours = [
        p
        for p in files
        if (p.parent == hydra_dir and p.name in HYDRA_FILES)
        or (p in logs and p.stat().st_size == 0)
    ]
    if len(ours) != len(files):
        return
    for path in files:
        for logger, handler in logs.get(path, []):
            logger.removeHandler(handler)
            handler.close()
        path.unlink()
    with contextlib.suppress(OSError):  # a folder someone else wrote into since: kept
        # The folders in it (output_subdir, its parents: a/b), deepest first ...
        inside = [p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()]
        for path in sorted(inside, key=lambda p: len(p.parts), reverse=True):
            path.rmdir()
        # ... and the folders above it that did not exist before the command either.
        existed = _NEW_RUN_FOLDER[folder]
        for path in (folder, *folder.parents):
            if path == existed:
                break
            path.rmdir()
    _NEW_RUN_FOLDER.clear()


def _file_handlers() -> list[tuple[Any, Any]]:
    """(logger, handler) for each file handler of every logger (Hydra's job logging puts one
    on the root logger, writing the command's log in its output folder)."""
    import logging

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [
        (logger, handler)
        for logger in loggers
        if isinstance(logger, logging.Logger)
        for handler in logger.handlers
        if isinstance(handler, logging.FileHandler)
    ]


@contextlib.contextmanager
def as_in_its_job(config: DictConfig) -> Iterator[None]:
    """HydraConfig set to a single run's config, as Hydra's run_job sets it (and sets it
    again itself) before its job reads a value: ${hydra:job.name} resolves then, and a check
    before the job sees what the job would. The one before is put back."""
    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    try:
        hydra_config.set_config(config)
        yield
    finally:
        hydra_config.cfg = before


def folder_problem(path: Path) -> str | None:
    """Why `path` cannot be made and written into, or None. It is not left made: the check
    makes and removes a folder in its nearest existing ancestor."""
    path = path.absolute()
    try:
        # lexists: a link to nowhere is in the way too.
        existing = next(p for p in (path, *path.parents) if os.path.lexists(p))
        if not existing.is_dir():
            what = "a link to no folder" if existing.is_symlink() else "a file"
            return f"{existing} is {what}" if existing != path else f"it is {what}"
    except OSError as exc:  # a parent that cannot be read
        return f"cannot look into {exc.filename}: {exc.strerror or exc}"
    try:
        Path(tempfile.mkdtemp(prefix=".fnnlab-probe-", dir=existing)).rmdir()
    except OSError as exc:
        return f"cannot make a folder in {existing}: {exc.strerror or exc}"
    return None


# A tracking.uri override, as Hydra takes it: plain, + or ++, the value quoted or not.
_URI_OVERRIDE = re.compile(r"""(\+{0,2}tracking\.uri=)(['"]?)(.*)\2""", re.DOTALL)


def password_to_env(args: list[str], environ: MutableMapping[str, str]) -> list[str]:
    """The command line with the password of each tracking.uri= override moved into the
    environment variables the client libraries read publicly: PGPASSWORD (libpq) for
    PostgreSQL, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (MLflow's basic auth)
    for a tracking server. Done before Hydra parses the command line, so no config, Hydra
    file, param, tag or printed line ever holds the password; the jobs, in this process or
    in workers it starts, still connect with it."""
    out = []
    for arg in args:
        m = _URI_OVERRIDE.fullmatch(arg)
        if m is not None:
            arg = f"{m[1]}{m[2]}{_move_password(m[3], environ)}{m[2]}"
        out.append(arg)
    return out


def _move_password(uri: str, environ: MutableMapping[str, str]) -> str:
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    scheme = parts.scheme.split("+")[0].lower()
    # The URI holds them percent-encoded; the drivers would decode them.
    if scheme in ("postgresql", "postgres"):
        moved = {"PGPASSWORD": unquote(parts.password)}
        netloc = f"{user}@{hostport}"  # libpq takes the user name from the URI
    elif scheme in ("http", "https"):
        moved = {
            "MLFLOW_TRACKING_USERNAME": unquote(user),
            "MLFLOW_TRACKING_PASSWORD": unquote(parts.password),
        }
        netloc = hostport  # MLflow sends both from the environment, none from the URI
    else:
        raise ConfigValueError(
            "tracking.uri",
            masked_uri(uri),
            "a password in the URI would be stored with every run, and only a PostgreSQL or "
            "http(s) URI has it moved into the environment; give it the way your driver reads it",
        )
    for name, value in moved.items():
        # Two passwords for one store: which one the jobs would use is not obvious.
        if environ.get(name, value) != value:
            raise ConfigValueError(
                "tracking.uri",
                masked_uri(uri),
                f"{name} is set to another value; give the password in one place only",
            )
    environ.update(moved)
    return urlunsplit(parts._replace(netloc=netloc))


def override_value(text: str) -> Any:
    """`text` as Hydra reads a value typed on the command line: 'false' is False, '60' 60,
    '1e3' 1000.0, 'null' None, "'abc'" 'abc'. ValueError if Hydra cannot read it alone."""
    try:
        return OverridesParser.create().parse_override(f"v={text}").value()
    except Exception as exc:  # Hydra's OverrideParseException, among others
        raise ValueError(f"{text}: {exc}") from None


def check_port(port: int, any_free: bool = False) -> None:
    """Refuse ui.port outside what a socket can have: every printed link would hold it. 0
    (any free port) only where the UI is started (any_free), which then links to the port
    it got; elsewhere the links would point at port 0."""
    if any_free and not 0 <= port <= 65535:
        raise ConfigValueError("ui.port", port, "must be a TCP port, 1 to 65535 (0: any free one)")
    if not any_free and not 1 <= port <= 65535:
        raise ConfigValueError(
            "ui.port", port, "must be a TCP port, 1 to 65535: where fnnlab-ui serves, for links"
        )


def check_values(cfg: DictConfig) -> None:
    """Raise ConfigValueError for the first unusable value or unknown key."""
    check_uri(str(cfg.tracking.uri))
    check_port(cfg.ui.port)
    check_known_keys(cfg, TrainAppConfig)
    checks = [
        ("model.hidden_dim", cfg.model.hidden_dim >= 1, "must be at least 1"),
        (
            "model.backprop",
            cfg.model.backprop in BACKPROP_MODES,
            f"must be one of {', '.join(BACKPROP_MODES)}",
        ),
        (
            "model.init_discard_draws",
            0 <= cfg.model.init_discard_draws <= MAX_DISCARD_DRAWS,
            f"must be from 0 to {MAX_DISCARD_DRAWS}",
        ),
        ("model.dtype", cfg.model.dtype in ("float32", "float64"), "must be float32 or float64"),
        (
            "optim.lr",
            math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0,
            "must be a finite number > 0",
        ),
        (
            "seed",
            0 <= cfg.seed < SEED_RANGE,
            f"must be from 0 to {SEED_RANGE - 1}: torch's generator keeps 32 bits of a seed, "
            "so other seeds would repeat these",
        ),
        ("train.epochs", cfg.train.epochs >= 1, "must be at least 1"),
        (
            "train.diverge_factor",
            math.isfinite(cfg.train.diverge_factor) and cfg.train.diverge_factor > 1,
            "must be a finite number > 1",
        ),
        ("tracking.log_every", cfg.tracking.log_every >= 1, "must be at least 1"),
        (
            "regime.tail_fraction",
            0 < cfg.regime.tail_fraction <= 1,
            "must be a fraction in (0, 1]",
        ),
        ("regime.min_tail_epochs", cfg.regime.min_tail_epochs >= 2, "must be at least 2"),
        ("regime.min_epochs", cfg.regime.min_epochs >= 2, "must be at least 2"),
        (
            "regime.swing",
            math.isfinite(cfg.regime.swing) and cfg.regime.swing > 0,
            "must be a finite number > 0",
        ),
        (
            "regime.noise",
            math.isfinite(cfg.regime.noise) and cfg.regime.noise >= 0,
            "must be a finite number 0 or more",
        ),
        (
            "limits.memory_gb",
            cfg.limits.memory_gb is None or cfg.limits.memory_gb > 0,
            "must be a number > 0, or null for half of this machine's memory",
        ),
        # The one data set there is: another name would be stored as a param it is not.
        ("data.name", cfg.data.name == "iris2", "must be iris2, the only data set"),
        (
            "data.features",
            len(cfg.data.features) >= 1 and all(0 <= f < 4 for f in cfg.data.features),
            "must list iris feature columns 0..3",
        ),
        # Each row scaled to length 1: over one column (or one listed twice) every row is
        # the same. Without scaling such a run trains.
        (
            "data.features",
            not cfg.data.normalize or len(set(cfg.data.features)) >= 2,
            "one column, or one listed twice, with data.normalize=true (rows scaled to length "
            "1) makes every row the same: give two different ones, or data.normalize=false",
        ),
        ("tracking.experiment", bool(str(cfg.tracking.experiment).strip()), "must not be empty"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise ConfigValueError(key, OmegaConf.select(cfg, key), why)
    _check_lr_in_dtype(cfg.optim.lr, cfg.model.dtype)
    _check_memory(cfg)


def _check_lr_in_dtype(lr: float, dtype: str) -> None:
    """A rate that float32 holds as 0 or inf would train with that, not with the rate the run
    records (1e-50 trained nothing; 1e39 stepped by inf)."""
    if dtype != "float32":
        return
    try:
        held = struct.unpack("f", struct.pack("f", lr))[0]
    except OverflowError:
        held = math.inf
    if held == 0 or math.isinf(held):
        raise ConfigValueError(
            "optim.lr", lr, f"is {held:g} in float32 (model.dtype): training would step by that"
        )


def flatten(cfg: DictConfig, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Resolved config as {dotted.key: value} (lists stay one value), without hydra."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}", v)
        else:
            out[prefix] = node

    for k in cfg:
        if k == "hydra" or (keys is not None and k not in keys):
            continue
        node = cfg[k]
        # Resolve section by section: the hydra node cannot resolve outside a job.
        walk(k, OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node)
    return out


def fingerprint(cfg: DictConfig) -> str:
    """A short hash of everything that decides what a run computes."""
    text = json.dumps(flatten(cfg, TRAINING_KEYS), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@cache
def project_root() -> Path:
    """The checkout root: where pyproject.toml and conf/ are."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "conf").is_dir():
            return parent
    return Path.cwd().resolve()


def register() -> None:
    """Resolvers used by conf/, and the schema nodes; safe to call more than once."""
    # ${fnnlab.root:} makes every default path absolute from the project root.
    OmegaConf.register_new_resolver("fnnlab.root", lambda: str(project_root()), replace=True)
    # ${fnnlab.token:} tells apart runs and sweeps started in the same second.
    # Cached, and Hydra copies the cache to every job, so a sweep sees one value.
    OmegaConf.register_new_resolver(
        "fnnlab.token", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True
    )
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainAppConfig)
    cs.store(name="ui_schema", node=UiAppConfig)
    cs.store(name="aggregate_schema", node=AggregateAppConfig)
    cs.store(name="replay_schema", node=ReplayAppConfig)


register()
