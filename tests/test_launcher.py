"""The fnnlab launcher's shortcuts give what Hydra's own code gives: its run_job (no config
copies, YAML through libyaml), the sweeper's check of a job without the hydra node, and
plots drawn in the helper process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.core.utils import run_job as hydra_run_job
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf

from fnnlab import plot_helper
from fnnlab.config import project_root, to_yaml
from hydra_plugins.fnnlab_sweeper import _compose, _launcher
from hydra_plugins.fnnlab_sweeper._compose import CachingConfigLoader, without_hydra

JOB = ["model.hidden_dim=8", "optim.lr=0.1", "seed=3", "sweep.job_num=5"]


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
    ours = _launcher.run_job(context, task, job_config(loader, m, tmp_path / "fnnlab"))

    for ret in (theirs, ours):
        assert ret.status == JobStatus.COMPLETED and ret.return_value == "done"
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
    ret = _launcher.run_job(context, task, job_config(loader, m, tmp_path))
    assert os.getcwd() == before
    assert ret.status == JobStatus.FAILED
    assert str(ret._return_value) == f"failed in {tmp_path / '5'}"
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
        ["model=fnn", "optim.lr=1.0", "+extra_note=hi"],
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
    assert set(_compose._REFERS_TO_HYDRA.values()) == {False}


def _callbacks(cfg: DictConfig):
    from hydra._internal.callbacks import Callbacks

    return Callbacks(cfg)


# --- the plot helper ----------------------------------------------------------------------


@pytest.fixture
def helper():
    plot_helper.start()
    try:
        assert plot_helper._helper is not None
        assert plot_helper._helper.is_ready(wait=60)
        yield plot_helper._helper
    finally:
        plot_helper.stop()


CURVES = plot_helper.Curves(
    np.arange(4),
    {
        "loss": np.array([0.9, 0.7, 0.5, 0.45]),
        "grad_norm/w1": np.array([1.0, 0.5, 0.2, 0.1]),
        "grad_norm/w2": np.array([2.0, 1.0, 0.3, 0.2]),
    },
    None,
)


def test_helper_draws_the_same_pngs_as_the_job(helper, tmp_path):
    (tmp_path / "helper").mkdir()
    (tmp_path / "job").mkdir()
    pending = plot_helper.begin(CURVES, tmp_path / "helper", "h8-lr0.1-s3", {0: 0.9, 2: 0.5})
    assert pending.helper is helper  # drawn there, not here
    pending.wait()
    plot_helper.draw(CURVES, tmp_path / "job", "h8-lr0.1-s3", {0: 0.9, 2: 0.5})
    for png in ("loss.png", "grad_norm.png"):
        assert (tmp_path / "helper" / png).read_bytes() == (tmp_path / "job" / png).read_bytes()


def test_helper_drawing_error_reaches_the_job(helper, tmp_path):
    pending = plot_helper.begin(CURVES, tmp_path / "missing", "x", None)
    with pytest.raises(FileNotFoundError):
        pending.wait()
    # The helper carries on with the next run.
    plot_helper.begin(CURVES, tmp_path, "x", None).wait()
    assert (tmp_path / "loss.png").exists()


@pytest.mark.parametrize("when", ["before", "while drawing"])
def test_a_dead_helper_means_the_job_draws(helper, tmp_path, when):
    if when == "before":
        helper.proc.kill()
        helper.proc.wait()
    pending = plot_helper.begin(CURVES, tmp_path, "x", None)
    if when != "before":
        helper.proc.kill()
        helper.proc.wait()
    pending.wait()
    assert (tmp_path / "loss.png").exists() and (tmp_path / "grad_norm.png").exists()
    if when == "before":
        assert plot_helper._helper is None


def test_helper_stops_with_its_sweep(tmp_path):
    plot_helper.start()
    proc = plot_helper._helper.proc
    plot_helper.stop()
    assert proc.poll() is not None


def test_helper_answers_runs_in_order_whatever_order_they_wait_in(helper, tmp_path):
    # Deferred ends (fnnlab.job) leave several runs' plots pending at once.
    dirs = [tmp_path / name for name in ("a", "c")]
    for d in dirs:
        d.mkdir()
    first = plot_helper.begin(CURVES, dirs[0], "a", None)
    broken = plot_helper.begin(CURVES, tmp_path / "missing", "b", None)
    last = plot_helper.begin(CURVES, dirs[1], "c", None)
    assert first.in_helper and broken.in_helper and last.in_helper
    last.wait()  # reads the two earlier replies on the way, and keeps them for their runs
    assert (dirs[1] / "loss.png").exists()
    with pytest.raises(FileNotFoundError):
        broken.wait()
    first.wait()
    assert (dirs[0] / "loss.png").exists() and (dirs[0] / "grad_norm.png").exists()
    assert not helper.waiting


def test_a_dead_helper_means_every_waiting_run_draws(helper, tmp_path):
    dirs = [tmp_path / name for name in ("a", "b")]
    for d in dirs:
        d.mkdir()
    pending = [plot_helper.begin(CURVES, d, d.name, None) for d in dirs]
    helper.proc.kill()
    helper.proc.wait()
    for p in reversed(pending):
        p.wait()
    for d in dirs:
        assert (d / "loss.png").exists() and (d / "grad_norm.png").exists()


def test_job_log_line_leaves_out_the_sweepers_bookkeeping():
    overrides = [*JOB[:3], "sweep.id=abc", "sweep.parent_run_id=0f", "sweep.job_num=5"]
    assert _launcher.shown(overrides) == "model.hidden_dim=8 optim.lr=0.1 seed=3"
