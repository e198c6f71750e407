"""The configuration contract: structured-config dataclasses, value checks, and the
resolvers the YAML files use.

Hydra merges conf/ onto these dataclasses, which rejects unknown keys and wrong
types; check_values() rejects values of the right type that make no sense.
Both happen before any MLflow run exists.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf._utils import OmegaConfDumper, get_omega_conf_dumper

# The modes of fnnlab.model.ScratchFNN, not imported from there: importing torch takes
# seconds, and a rejected command should not wait for it.
BACKPROP_MODES = ("tutorial", "exact")


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


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlruns/mlflow.db"
    experiment: str = "fnnlab"
    plots: bool = True


@dataclass
class SweepConfig:
    """Filled in by the fnnlab sweeper for each job of a multirun; empty for single runs."""

    id: str | None = None
    parent_run_id: str | None = None
    job_num: int | None = None


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
    sweep: SweepConfig = field(default_factory=SweepConfig)


@dataclass
class UiConfig:
    host: str = "127.0.0.1"
    port: int = 5000  # 0: any free port
    sweep: str | None = "latest"  # latest | a sweep id (or prefix) | null: whose runs to compare
    open: bool = False  # open the URL in a browser


@dataclass
class UiAppConfig:
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ui: UiConfig = field(default_factory=UiConfig)


@dataclass
class AggregateConfig:
    # latest: the experiment's most recent sweep; a sweep id; or all: every job run.
    sweep: str = "latest"
    # A parent run id; takes precedence over sweep.
    parent_run_id: str | None = None
    # An MLflow filter string ANDed to the selection, e.g. "params.`model.backprop` = 'exact'".
    filter: str | None = None
    # Where CSVs, report and plots go; relative paths are from the project root.
    # Empty: the Hydra output folder of this invocation.
    out_dir: str | None = None
    # Log the outputs and the best configuration onto the sweep's parent run.
    log_to_parent: bool = True
    plots: bool = True


@dataclass
class AggregateAppConfig:
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)


# Sections that decide what a run computes; the fingerprint covers exactly these.
TRAINING_KEYS = ("model", "optim", "data", "train", "seed")


class ConfigValueError(ValueError):
    """A value of the right type that cannot be used; names the key and the value."""

    def __init__(self, key: str, value: Any, why: str) -> None:
        super().__init__(f"{key}={value}: {why}")
        self.key = key
        self.value = value


def check_values(cfg: DictConfig) -> None:
    """Raise ConfigValueError for the first unusable value."""
    checks = [
        ("model.hidden_dim", cfg.model.hidden_dim >= 1, "must be at least 1"),
        (
            "model.backprop",
            cfg.model.backprop in BACKPROP_MODES,
            f"must be one of {', '.join(BACKPROP_MODES)}",
        ),
        ("model.init_discard_draws", cfg.model.init_discard_draws >= 0, "must be 0 or more"),
        ("model.dtype", cfg.model.dtype in ("float32", "float64"), "must be float32 or float64"),
        (
            "optim.lr",
            math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0,
            "must be a finite number > 0",
        ),
        ("train.epochs", cfg.train.epochs >= 1, "must be at least 1"),
        (
            "data.features",
            len(cfg.data.features) >= 1 and all(0 <= f < 4 for f in cfg.data.features),
            "must list iris feature columns 0..3",
        ),
        ("tracking.experiment", bool(str(cfg.tracking.experiment).strip()), "must not be empty"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise ConfigValueError(key, OmegaConf.select(cfg, key), why)


def flatten(cfg: DictConfig, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Resolved config as {dotted.key: value} (lists stay one value), without hydra and sweep."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}", v)
        else:
            out[prefix] = node

    for k in cfg:
        if k in ("hydra", "sweep") or (keys is not None and k not in keys):
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


register()


class _CDumper(yaml.CDumper):
    """OmegaConf's YAML dumper (strings that would read back as a bool, int or float are
    quoted) on libyaml's emitter: the YAML of OmegaConf.to_yaml, 4x faster (measured:
    0.8 ms instead of 3.9 ms for a job's whole config); only long strings wrap differently."""


get_omega_conf_dumper()  # OmegaConf registers its string representer lazily
_CDumper.add_representer(str, OmegaConfDumper.str_representer)


def to_yaml(cfg: Any, resolve: bool = False) -> str:
    """OmegaConf.to_yaml(cfg, resolve=resolve), through libyaml."""
    container = OmegaConf.to_container(cfg, resolve=resolve, enum_to_str=True)
    return yaml.dump(
        container, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=_CDumper
    )
