"""The fnnlab launcher's shortcuts give what Hydra's own code gives: its run_job (no config
copies, YAML through libyaml) and the sweep's check of a job without the hydra node."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.core.utils import run_job as hydra_run_job
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf

from fnnlab import internals
from fnnlab.config import project_root
from fnnlab.internals import CachingConfigLoader, to_yaml, without_hydra
from hydra_plugins.fnnlab import _core

JOB = ["model.hidden_dim=8", "optim.lr=0.1", "seed=3", "train.epochs=5"]


@pytest.fixture
def loader():
    with initialize_config_dir(str(project_root() / "conf"), version_base="1.3"):
        inner = GlobalHydra.instance().config_loader()
        yield CachingConfigLoader(inner)


def master(loader, tmp_path: Path, *overrides: str) -> DictConfig:
    cfg = loader.load_configuration(
        "train",
        [f"hydra.sweep.dir={tmp_path}", "tracking.uri=sqlite:///unused.db", *overrides],
        RunMode.MULTIRUN,
    )
    HydraConfig.instance().set_config(cfg)
    return cfg


def job_config(loader, master_cfg: DictConfig, sweep_dir: Path) -> DictConfig:
    cfg = loader.load_sweep_config(master_cfg, JOB)
    OmegaConf.set_readonly(cfg.hydra, False)
    cfg.hydra.sweep.dir = str(sweep_dir)
    cfg.hydra.job.id = cfg.hydra.job.num = 5
    return cfg


def test_run_job_does_what_hydras_run_job_does(loader, tmp_path):
    seen: dict[str, dict] = {}

    def task(cfg: DictConfig) -> str:
        seen[HydraConfig.get().runtime.output_dir] = {
            "task": OmegaConf.to_container(cfg),
            "hydra": OmegaConf.to_container(HydraConfig.get()),
            "cwd": os.getcwd(),
        }
        return "done"

    m = master(loader, tmp_path)
    context = HydraContext(config_loader=loader, callbacks=_callbacks(m))
    theirs = hydra_run_job(
        task,
        job_config(loader, m, tmp_path / "hydra"),
        "hydra.sweep.dir",
        "hydra.sweep.subdir",
        context,
    )
    ours = _core.run_job(context, task, job_config(loader, m, tmp_path / "fnnlab"))

    for ret in (theirs, ours):
        assert ret.status == JobStatus.COMPLETED and ret.return_value == "done"
    # Hydra's launcher contract: the job's task config and Hydra config come back.
    assert OmegaConf.to_container(ours.cfg) == OmegaConf.to_container(theirs.cfg)
    assert ours.hydra_cfg.hydra.job.num == theirs.hydra_cfg.hydra.job.num == 5
    assert ours.overrides == theirs.overrides == JOB
    assert ours.working_dir == theirs.working_dir == os.getcwd()
    assert ours.task_name == theirs.task_name
    mine, hydras = (seen[str(tmp_path / d / "5")] for d in ("fnnlab", "hydra"))
    assert mine["task"] == hydras["task"]
    assert mine["cwd"] == hydras["cwd"]
    # The same Hydra config, but for the output folder each was given.
    for h in (mine["hydra"], hydras["hydra"]):
        h["runtime"]["output_dir"] = h["sweep"]["dir"] = None
    assert mine["hydra"] == hydras["hydra"]
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        a, b = (
            yaml.safe_load((tmp_path / d / "5" / ".hydra" / name).read_text())
            for d in ("fnnlab", "hydra")
        )
        if name == "hydra.yaml":
            for h in (a, b):
                h["hydra"]["runtime"]["output_dir"] = h["hydra"]["sweep"]["dir"] = None
        assert a == b, name
    # The job's log file, where Hydra's job logging puts it.
    assert (tmp_path / "fnnlab" / "5" / "cli.log").exists() == (
        tmp_path / "hydra" / "5" / "cli.log"
    ).exists()


def test_run_job_chdir_and_failure(loader, tmp_path):
    def task(cfg: DictConfig) -> None:
        raise RuntimeError(f"failed in {os.getcwd()}")

    m = master(loader, tmp_path, "hydra.job.chdir=true")
    context = HydraContext(config_loader=loader, callbacks=_callbacks(m))
    before = os.getcwd()
    ret = _core.run_job(context, task, job_config(loader, m, tmp_path))
    assert os.getcwd() == before
    assert ret.status == JobStatus.FAILED
    assert str(internals.job_error(ret)) == f"failed in {tmp_path / '5'}"
    assert ret.working_dir == str(tmp_path / "5")


def test_libyaml_dump_reads_back_as_omegaconf_dump(loader, tmp_path):
    cfg = job_config(loader, master(loader, tmp_path), tmp_path)
    cfg.hydra.job.name = "true"  # strings that look like other types stay strings
    for node in (cfg, cfg.hydra, cfg.hydra.overrides.task):
        assert yaml.safe_load(to_yaml(node)) == yaml.safe_load(OmegaConf.to_yaml(node))
    task = without_hydra(cfg)
    resolved = yaml.safe_load(to_yaml(task, resolve=True))
    assert resolved == yaml.safe_load(OmegaConf.to_yaml(task, resolve=True))


@pytest.mark.parametrize(
    "overrides",
    [
        JOB,
        ["model=fnn", "optim.lr=1.0", "+extra_note=hi"],  # composes; check_values refuses
        ["~reference", "seed=7"],
        ["hydra.job.name=other", "seed=2"],  # a hydra key: the full composition is used
    ],
)
def test_checking_config_equals_the_launched_config(loader, tmp_path, overrides):
    m = master(loader, tmp_path)
    full = without_hydra(loader.load_sweep_config(m, overrides))
    quick = loader.load_task_config(m, overrides)
    assert OmegaConf.to_container(quick) == OmegaConf.to_container(full)
    assert OmegaConf.is_struct(quick) == OmegaConf.is_struct(full)
    assert OmegaConf.get_type(quick) == OmegaConf.get_type(full)
    # The train config does not refer to the hydra node, so the check can leave it out.
    assert set(internals._REFERS_TO_HYDRA.values()) == {False}


def _callbacks(cfg: DictConfig):
    from hydra._internal.callbacks import Callbacks

    return Callbacks(cfg)


@pytest.mark.parametrize(
    ("n_jobs", "jobs", "expected"),
    [(1, 100, 1), (4, 3, 3), (None, 1, 1), (None, _core.JOBS_PER_WORKER - 1, 1)],
)
def test_workers(n_jobs, jobs, expected):
    assert _core.workers(n_jobs, jobs) == expected


def test_workers_from_the_cores():
    cores = len(os.sched_getaffinity(0))
    assert _core.workers(None, 1000 * _core.JOBS_PER_WORKER) == cores


def test_basic_grammar_expands_as_hydras_basic_sweeper():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from fnnlab.sweep import expand

    for args in (
        ["a=1,2", "b=x", "c=range(3)"],
        ["+d=choice(4,5)", "e='q,r'", "f=1"],
        [],
        ["hydra.launcher.n_jobs=2", "g=1,2"],
    ):
        parsed = OverridesParser.create().parse_overrides(args)
        hydras = BasicSweeper.split_arguments(parsed, None)[0] if args else [[]]
        if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):
            assert expand(args) is None
        else:
            assert expand(args) == hydras, args
    assert expand(["lr=interval(0.1,1)"]) is None


def test_a_launcher_subclass_that_overrides_only_launch_is_launched_by_it():
    """The sweeper launches through launch_numbered when the launcher has it: a subclass of
    the fnnlab launcher that overrides launch() alone was passed by (helper-63)."""
    from hydra_plugins.fnnlab.launcher import FnnlabLauncher
    from hydra_plugins.fnnlab.sweeper import numbered_launch

    class OwnLaunch(FnnlabLauncher):
        def launch(self, job_overrides, initial_job_idx):
            raise NotImplementedError

    class OwnBoth(OwnLaunch):
        def launch_numbered(self, jobs):
            raise NotImplementedError

    fnnlab, own, both = FnnlabLauncher(), OwnLaunch(), OwnBoth()
    assert numbered_launch(fnnlab) == fnnlab.launch_numbered
    assert numbered_launch(own) is None
    assert numbered_launch(both) == both.launch_numbered
    assert numbered_launch(object()) is None

    class Delegating:  # its launch_numbered from __getattr__: a StopIteration (helper-65)
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

    assert numbered_launch(Delegating(fnnlab)) is None
