"""The caching config loader (fnnlab.internals) composes exactly what Hydra composes."""

from __future__ import annotations

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from fnnlab import internals as compose
from fnnlab.config import project_root

# One job's overrides of every kind a user can type: values, config-group choices, presets,
# additions, deletions, Hydra settings (one with an interpolation Hydra resolves per job).
JOBS = [
    [],
    ["model.hidden_dim=8", "optim.lr=0.1", "seed=3"],
    ["model.hidden_dim=8", "optim.lr=0.1", "seed=3", "hydra.sweep.subdir=j${hydra.job.num}"],
    ["experiment=reference"],
    ["experiment=reference", "seed=5", "optim.lr=0.01"],
    ["seed=4", "experiment=reference"],
    ["model=fnn", "model.backprop=exact", "model.dtype=float64"],
    ["data.features=[2,3]", "data.normalize=false", "train.epochs=7"],
    ["+extra_note=hello", "tracking.plots=false"],
    ["~reference"],
    ["hydra.job.chdir=true", "hydra/launcher=basic", "seed=1"],
    ["+hydra.job.env_set.FOO=bar", "seed=2"],
    ["tracking=server", "seed=2"],
]

MASTER = ["hydra.sweep.dir=/tmp/fnnlab-test-compose", "tracking.experiment=t"]


@pytest.fixture(scope="module")
def loaders():
    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("train", MASTER, RunMode.MULTIRUN)
        yield loader, compose.CachingConfigLoader(loader), master


def plain(cfg) -> dict:
    """Everything but the interpolations Hydra resolves at job time, as plain data."""
    return OmegaConf.to_container(cfg, resolve=False)


@pytest.mark.parametrize("overrides", JOBS, ids=lambda o: " ".join(o) or "(none)")
def test_same_config_as_hydra(loaders, overrides):
    hydra_loader, caching, master = loaders
    compose._BASES.clear()
    expected = hydra_loader.load_sweep_config(master, list(overrides))
    first = caching.load_sweep_config(master, list(overrides))
    again = caching.load_sweep_config(master, list(overrides))  # from the cache
    assert plain(first) == plain(expected)
    assert plain(again) == plain(expected)
    assert OmegaConf.is_struct(again) == OmegaConf.is_struct(expected)
    # Resolved task config (the run's params) is the same too.
    for cfg in (first, again):
        task = {k: cfg[k] for k in cfg if k != "hydra"}
        assert OmegaConf.to_container(
            OmegaConf.create(task), resolve=True
        ) == OmegaConf.to_container(
            OmegaConf.create({k: expected[k] for k in expected if k != "hydra"}), resolve=True
        )


def test_jobs_do_not_share_state(loaders):
    _, caching, master = loaders
    a = caching.load_sweep_config(master, ["seed=1"])
    b = caching.load_sweep_config(master, ["seed=2"])
    a.model.hidden_dim = 999
    assert (a.seed, b.seed) == (1, 2)
    assert caching.load_sweep_config(master, ["seed=3"]).model.hidden_dim == 32


@pytest.mark.parametrize(
    "overrides", [["model.hidden_dim=abc"], ["model.nope=1"], ["experiment=nope"], ["seed=1,2"]]
)
def test_bad_overrides_fail_like_hydra(loaders, overrides):
    hydra_loader, caching, master = loaders
    with pytest.raises(Exception) as hydra_error:
        hydra_loader.load_sweep_config(master, overrides)
    with pytest.raises(Exception) as ours:
        caching.load_sweep_config(master, overrides)
    assert type(ours.value) is type(hydra_error.value)
    assert isinstance(ours.value, ConfigCompositionException | hydra_error.type)
