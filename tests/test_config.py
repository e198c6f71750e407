"""Bad input: one line naming the key and the value, non-zero exit, the store untouched."""

from __future__ import annotations

import contextlib
import gc
import os
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import (
    BIN,
    TmpStore,
    as_a_command,
    compose_train,
    default_run_dir,
    run_command,
    run_in_process,
    run_script,
)
from omegaconf import OmegaConf
from server_fixtures import stop_group

from fnnlab import cli, model, tracking
from fnnlab.config import (
    BACKPROP_MODES,
    ConfigValueError,
    check_values,
    fingerprint,
    flatten,
    project_root,
)

BAD = [
    (["model.hidden_dim=abc"], "model.hidden_dim=abc"),
    (["model.hidden_dim=0"], "model.hidden_dim=0"),
    (["model.foo=1"], "model.foo=1"),
    # Added keys too: nothing reads them, so a run must not claim them.
    (["+model.nope=1"], "model.nope=1"),
    (["++model.nope=1"], "model.nope=1"),
    (["+extra=2"], "extra=2"),
    (["-m", "+model.nope=1", "seed=0,1"], "model.nope=1"),
    (["optim.lr=0"], "optim.lr=0"),
    (["optim.lr=-1"], "optim.lr=-1"),
    (["optim.lr=nan"], "optim.lr=nan"),
    (["optim.lr=inf"], "optim.lr=inf"),
    # Too large for a float: OmegaConf passes on Python's own error, named here all the same.
    (["optim.lr=" + "9" * 400], "optim.lr=" + "9" * 400),
    (["-m", "optim.lr=0.1," + "9" * 400], "optim.lr=0.1," + "9" * 400),
    # Read by YAML as inf: named as typed.
    (["optim.lr=" + "9" * 400 + ".5"], "optim.lr=" + "9" * 400 + ".5"),
    (["-m", "optim.lr=0.1," + "9" * 400 + ".5"], "optim.lr=0.1," + "9" * 400 + ".5"),
    (["regime.swing=inf"], "regime.swing=inf"),
    # 0 and inf in float32, the model's dtype: the run trained with that and recorded 1e-50
    # (helper-52). Named as Python writes the float.
    (["optim.lr=1e-50"], "optim.lr=1e-50"),
    (["optim.lr=1e39"], "optim.lr=1e+39"),
    (["-m", "optim.lr=0.1,1e-50"], "optim.lr=1e-50"),
    # Drawn one at a time before the weights: a typo kept a run drawing for hours (helper-52).
    (["model.init_discard_draws=100000000000"], "model.init_discard_draws=100000000000"),
    # Given twice: Hydra takes the last, and so does the line.
    (["optim.lr=0.1", "optim.lr=1e400"], "optim.lr=1e400 (read as inf)"),
    (["regime.noise=" + "9" * 400 + ".5"], "regime.noise=" + "9" * 400 + ".5"),
    (["train.epochs=0"], "train.epochs=0"),
    (["model.backprop=adam"], "model.backprop=adam"),
    # Seeds the generator cannot tell apart from others, memory a run cannot get.
    (["seed=-1"], "seed=-1"),
    (["seed=4294967296"], "seed=4294967296"),
    (["seed=18446744073709551616"], "seed=18446744073709551616"),
    (["model.hidden_dim=100000000"], "model.hidden_dim=100000000"),
    (["train.epochs=50000000", "limits.memory_gb=4"], "train.epochs=50000000"),
    (["tracking.log_every=0"], "tracking.log_every=0"),
    # A port no socket can have: every printed link would hold it.
    (["ui.port=65536"], "ui.port=65536"),
    (["-m", "ui.port=-1", "seed=0,1"], "ui.port=-1"),
    (["-m", "hydra.launcher.n_jobs=0", "model.hidden_dim=4,8"], "hydra.launcher.n_jobs=0"),
    # Settings Hydra's own plugins fail on only after the sweep has begun.
    (
        ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0", "seed=0,1"],
        "hydra.launcher.n_jobs=0",
    ),
    # joblib's own checks, run on no jobs before the sweep begins.
    (
        ["-m", "hydra/launcher=joblib", "hydra.launcher.batch_size=0", "seed=0,1"],
        "hydra.launcher.batch_size=0",
    ),
    (
        ["-m", "hydra/launcher=joblib", "hydra.launcher.pre_dispatch=bogus", "seed=0,1"],
        "hydra.launcher.pre_dispatch=bogus",
    ),
    # What joblib accepts on no jobs but fails on once they run.
    (
        ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1"]
        + ["hydra.launcher.pre_dispatch=n_jobs-2"],
        "hydra.launcher.pre_dispatch=n_jobs-2",
    ),
    (
        ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.launcher.timeout=-1"]
        + ["seed=0,1"],
        "hydra.launcher.timeout=-1",
    ),
    (
        ["-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=0", "seed=0,1"],
        "hydra.launcher.tasks_per_node=0",
    ),
    (
        ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=0", "seed=0,1"],
        "hydra.launcher.timeout_min=0",
    ),
    (["-m", "hydra.sweeper.max_batch_size=-3", "seed=0,1"], "hydra.sweeper.max_batch_size=-3"),
    (["-m", "hydra.sweeper.max_batch_size=0", "seed=0,1"], "hydra.sweeper.max_batch_size=0"),
    (
        ["-m", "hydra/sweeper=basic", "hydra.sweeper.max_batch_size=0", "seed=0,1"],
        "hydra.sweeper.max_batch_size=0",
    ),
    # Two jobs that would share one run: an answer with half the sweep missing.
    (["-m", "seed=0,0,1"], "seed=0,0,1"),
    (["-m", "hydra/sweeper=basic", "seed=1,0,1"], "seed=1,0,1"),
    (["-m", "regime.swing=0.01,0.9", "seed=0,1"], "regime.swing=0.9"),
    (["-m", "optim.lr=0.1,1e-1"], "optim.lr=0.1,1e-1"),
    (["-m", "optim.lr=0.1,0.3", "train.epochs=20,020"], "train.epochs=020"),
    (["-m", "hydra/sweeper=basic", "tracking.log_every=1,2"], "tracking.log_every=2"),
    # No job number in a single run: refused as the job would.
    (["model.hidden_dim=${hydra:job.num}"], "model.hidden_dim=${hydra:job.num}"),
    # Links to port 0: only fnnlab-ui takes it, for any free port.
    (["ui.port=0"], "ui.port=0"),
    # Nothing reads it: the run trained on iris2 and stored data.name=mnist (helper-45).
    (["data.name=mnist"], "data.name=mnist"),
    # Rows scaled to length 1 over one column, or one twice, are all the same (helper-52).
    (["data.features=[0,0]"], "data.features=[0, 0]"),
    (["data.features=[2,2,2]"], "data.features=[2, 2, 2]"),
    (["data.features=[2]"], "data.features=[2]"),
    # fnnlab writes the run's files into artifacts/: a traceback, SameFileError (helper-57).
    (["hydra.output_subdir=artifacts/hydra"], "hydra.output_subdir=artifacts/hydra"),
    (["-m", "hydra.output_subdir=artifacts", "seed=0,1"], "hydra.output_subdir=artifacts"),
    # A sweep of no jobs ended "FINISHED" with 0 runs, exit 0 (helper-45).
    (["-m", "seed=range(0)"], "seed=range(0)"),
    (["-m", "hydra/sweeper=basic", "seed=range(0,3,-1)"], "seed=range(0,3,-1)"),
    # Another sweeper's grammar: refused once the parent run existed (helper-45).
    (["-m", "seed=interval(0,1)"], "seed=interval(0,1)"),
    (["-m", "hydra/sweeper=basic", "seed=interval(0,1)"], "seed=interval(0,1)"),
    # A setting a plugin or the sweep callback does not have, named as a key: it was the
    # constructor's "unexpected keyword argument" (helper-45).
    (["-m", "+hydra.launcher.bogus=1", "seed=0,1"], "hydra.launcher.bogus=1"),
    (["-m", "+hydra.sweeper.bogus=1", "seed=0,1"], "hydra.sweeper.bogus=1"),
    (["-m", "+hydra.callbacks.sweep.bogus=1", "seed=0,1"], "hydra.callbacks.sweep.bogus=1"),
    (["+hydra.callbacks.sweep.bogus=1"], "hydra.callbacks.sweep.bogus=1"),
    # The callback's settings have no schema: "abc" was taken as true, or as seconds.
    (["-m", "hydra.callbacks.sweep.summarize=abc", "seed=0,1"], "sweep.summarize=abc"),
    (["-m", "hydra.callbacks.sweep.remote_dead_after_s=abc", "seed=0,1"], "after_s=abc"),
    (["-m", "hydra.callbacks.sweep.remote_dead_after_s=-5", "seed=0,1"], "after_s=-5"),
    (["-m", "hydra.callbacks.sweep.store_failures=1.5", "seed=0,1"], "store_failures=1.5"),
    # A traceback once the parent run existed.
    (
        ["-m", "hydra/launcher=submitit_local", "hydra.launcher.submitit_folder=/proc/no/%j"]
        + ["seed=0,1"],
        "hydra.launcher.submitit_folder=/proc/no/%j",
    ),
    # In a sweep, one bad value stops the whole sweep before any run, parent included.
    (["-m", "model.hidden_dim=8,0"], "model.hidden_dim=0"),
    (["-m", "optim.lr=0.1,-0.5"], "optim.lr=-0.5"),
]


@pytest.fixture(scope="module")
def store_with_a_run(tmp_path_factory):
    """A store that already holds a run: a rejected command must leave it byte for byte."""
    root = tmp_path_factory.mktemp("store")
    store = TmpStore(root=root, uri=f"sqlite:///{root}/mlruns/mlflow.db")
    ok = run_command(cli.train, "train.epochs=2", "tracking.plots=false", *store.overrides())
    assert ok.returncode == 0, ok.stderr
    return store


def check_refused(store: TmpStore, before: bytes | None, status: int, stderr: str, named: str):
    """One line naming the key and the value, a non-zero exit, the store byte for byte, and
    no output folder beyond the first run's (Hydra makes a run's before the run starts)."""
    assert status != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fnnlab-train: error: ")
    key, value = named.split("=")
    assert key in lines[0] and value in lines[0], lines[0]
    assert store.db_bytes() == before
    assert len(store.runs()) == 1
    assert len(list((store.root / "outputs").iterdir())) == 1
    assert not (store.root / "multirun").exists()


@pytest.mark.parametrize(("args", "named"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_fails_with_one_line_and_writes_nothing(
    store_with_a_run, args, named, monkeypatch, capsys
):
    # In this process: the same entry point as the console script, without a process start
    # per case (seconds each); a few cases go through the console script below.
    store = store_with_a_run
    before = store.db_bytes()
    status = run_in_process(monkeypatch, cli.train, *args, *store.overrides())
    check_refused(store, before, status, capsys.readouterr().err, named)


PROC = "cannot make a folder in /proc: No such file or directory"
FOLDERS = [
    ("hydra.run.dir=/proc/fnnlab-none", f"hydra.run.dir=/proc/fnnlab-none: {PROC}"),
    ("hydra.run.dir=<file>/run", "hydra.run.dir=<file>/run: <file> is a file"),
    ("hydra.run.dir=<file>", "hydra.run.dir=<file>: it is a file"),
    # Resolved as Hydra's job resolves it.
    (
        "hydra.run.dir=<file>/${hydra:job.config_name}",
        "hydra.run.dir=<file>/train: <file> is a file",
    ),
    ("hydra.run.dir=<link>", "hydra.run.dir=<link>: it is a link to no folder"),
    ("hydra.run.dir=<link>/run", "hydra.run.dir=<link>/run: <link> is a link to no folder"),
    ("hydra.sweep.dir=<file>/sweep", "hydra.sweep.dir=<file>/sweep: <file> is a file"),
    ("hydra.sweep.dir=/proc/fnnlab-none/a", f"hydra.sweep.dir=/proc/fnnlab-none/a: {PROC}"),
]


@pytest.mark.parametrize(("folder", "line"), FOLDERS)
def test_an_output_folder_that_cannot_be_made_is_refused(
    store_with_a_run, folder, line, tmp_path, monkeypatch, capsys
):
    """Before any file or run is written, a sweep's parent included (Hydra raised from
    inside its job, with the parent already open)."""
    store = store_with_a_run
    before = store.db_bytes()
    (tmp_path / "file").touch()
    (tmp_path / "link").symlink_to(tmp_path / "nowhere" / "deeper")
    for name in ("file", "link"):
        folder, line = (text.replace(f"<{name}>", str(tmp_path / name)) for text in (folder, line))
    sweep = ["-m", "seed=0,1"] if folder.startswith("hydra.sweep") else []
    status = run_in_process(monkeypatch, cli.train, *sweep, *store.overrides(), folder)
    err = capsys.readouterr().err
    check_refused(store, before, status, err, line.split(":")[0])
    assert err.strip() == f"fnnlab-train: error: {line}"
    assert status == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["file", "link"]


@pytest.mark.parametrize(
    ("lr", "dtype", "held"),
    [
        ("1e-50", "float32", "0"),
        ("1e39", "float32", "inf"),
        ("1e-46", "float32", "0"),  # below float32's smallest subnormal, 1.4e-45: rounds to 0
        ("1e-45", "float32", None),  # rounds to that subnormal
        ("3.4028235e38", "float32", None),  # float32's largest
        ("1e-50", "float64", None),
        ("1e39", "float64", None),
        ("1e300", "float64", None),
    ],
)
def test_a_rate_is_refused_only_where_the_dtype_cannot_hold_it(lr, dtype, held):
    cfg = compose_train([f"optim.lr={lr}", f"model.dtype={dtype}"])
    if held is None:
        check_values(cfg)
        return
    with pytest.raises(ConfigValueError, match=rf"is {held} in float32 \(model.dtype\)"):
        check_values(cfg)


@pytest.mark.parametrize("folder", ["hydra.run.dir=", "hydra.sweep.dir="])
def test_an_empty_output_folder_is_refused(
    store_with_a_run, folder, tmp_path_factory, monkeypatch, capsys
):
    """Hydra takes it for the current folder: an unset shell variable (hydra.run.dir=$OUT)
    put the run's files where the command ran."""
    store = store_with_a_run
    before = store.db_bytes()
    where = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(where)
    sweep = ["-m", "seed=0,1"] if folder.startswith("hydra.sweep") else []
    status = run_in_process(monkeypatch, cli.train, *sweep, *store.overrides(), folder)
    err = capsys.readouterr().err
    check_refused(store, before, status, err, folder)
    assert (
        err.strip() == f"fnnlab-train: error: {folder}: empty: give a folder (. is the current one)"
    )
    assert list(where.iterdir()) == []


def test_a_run_folder_that_holds_the_stores_artifacts_is_refused(
    store_with_a_run, tmp_path, monkeypatch, capsys
):
    """A run stages its files in <output folder>/artifacts: beside mlflow.db
    (hydra.run.dir=.) that is the store's artifact folder, and MLflow copied it into itself
    until the path was too long: a traceback and a FAILED run. Uploaded file by file now,
    they would still lie among the store's artifacts."""
    store = store_with_a_run
    before = store.db_bytes()
    folder = store.root / "mlruns"  # the store's: mlruns/mlflow.db, mlruns/artifacts
    status = run_in_process(monkeypatch, cli.train, *store.overrides(), f"hydra.run.dir={folder}")
    err = capsys.readouterr().err
    check_refused(store, before, status, err, f"hydra.run.dir={folder}")
    assert f"would go to {folder}/artifacts, among the store's artifacts ({folder}/" in err
    # A run's or a sweep's folder inside the store's artifact folder: their files among the
    # runs' (helper-60).
    artifacts = folder / "artifacts"
    listing = sorted(artifacts.rglob("*"))
    for args in (
        [f"hydra.run.dir={artifacts}/x"],
        ["-m", "seed=0,1", f"hydra.sweep.dir={artifacts}/sw"],
        # Each job's number in it, and an absolute path: resolved for each job before the
        # sweep starts (helper-62: a job failed, its folder left among them).
        ["-m", "seed=0,1", f"hydra.sweep.subdir={artifacts}/j${{hydra.job.num}}"],
    ):
        # The folder last: store.overrides() has one of each.
        status = run_in_process(monkeypatch, cli.train, *args[:-1], *store.overrides(), args[-1])
        err = capsys.readouterr().err
        check_refused(store, before, status, err, args[-1])
        assert f": inside the store's artifacts ({artifacts}), where MLflow keeps" in err
        assert sorted(artifacts.rglob("*")) == listing
    # fnnlab-replay's folder, where replay.log=true stages the runs it logs (helper-62), new
    # or not: refused before Hydra writes its log there (helper-63: a cli.log was left).
    (run,) = store.runs()
    for where in (artifacts / "rp", artifacts):
        args = (f"replay.run={run.info.run_id}", *store.overrides(), f"hydra.run.dir={where}")
        status = run_in_process(monkeypatch, cli.replay, *args)
        err = capsys.readouterr().err
        assert status == 2 and err.startswith(
            f"fnnlab-replay: error: hydra.run.dir={where}: inside the store's artifacts"
        ), err
        assert sorted(artifacts.rglob("*")) == listing
    # (Its bytes may differ: opening the store moves its write-ahead log into the file.)
    assert [r.data.tags for r in store.runs()] == [run.data.tags]
    # A store not made yet is refused before it is, and leaves no folder.
    new = tmp_path / "new"
    args = (f"tracking.uri=sqlite:///{new}/mlflow.db", f"hydra.run.dir={new}")
    status = run_in_process(monkeypatch, cli.train, *args)
    assert status == 2 and "among the store's artifacts" in capsys.readouterr().err
    assert not new.exists()


def test_a_jobs_own_check_of_its_folder_names_the_key_it_came_from(tmp_path):
    """The check in each job (cli.check_run_folder), for a folder a sweep could not work out
    before it started (submitit's ${hydra.job.id} is its own job id): no sweep reaches it
    now that a job's number is put into its folder beforehand, so it is called here."""
    job = tmp_path / "sweep" / "4711_0"
    location = (job / "artifacts").as_uri()
    hydra_cfg = OmegaConf.create(
        {"runtime": {"output_dir": str(job)}, "sweep": {"subdir": "id"}, "run": {"dir": "r"}}
    )
    for in_sweep, key in ((True, "hydra.sweep.subdir=id"), (False, "hydra.run.dir=r")):
        with pytest.raises(ConfigValueError) as refused:
            cli.check_run_folder(location, hydra_cfg, in_sweep)
        assert str(refused.value) == (
            f"{key}: the run's files would go to {job}/artifacts, among the store's artifacts "
            f"({job}/artifacts); give another folder"
        )
    cli.check_run_folder((tmp_path / "elsewhere").as_uri(), hydra_cfg, True)


def test_a_sweep_whose_jobs_share_a_folder_is_refused(store_with_a_run, monkeypatch, capsys):
    """A sweep's jobs with one output folder (hydra.sweep.subdir without ${...}): under a
    parallel launcher a run uploaded another job's weights.pt; one beside mlflow.db put the
    jobs' files among the store's artifacts, where MLflow copied them into themselves."""
    store = store_with_a_run
    before = store.db_bytes()
    folder = store.root / "mlruns"  # the store's: mlruns/mlflow.db, mlruns/artifacts
    elsewhere = store.root / "multirun"
    cases = [
        (f"hydra.sweep.dir={folder}", "seed=0,1", "among the store's artifacts"),
        (f"hydra.sweep.dir={folder}", "seed=0", "among the store's artifacts"),
        (
            f"hydra.sweep.dir={elsewhere}",
            "seed=0,1",
            f"every job would write its files into {elsewhere}, over",
        ),
    ]
    for sweep_dir, seeds, why in cases:
        args = ("-m", *store.overrides(), sweep_dir, "hydra.sweep.subdir=.", seeds)
        status = run_in_process(monkeypatch, cli.train, *args)
        err = capsys.readouterr().err
        check_refused(store, before, status, err, "hydra.sweep.subdir=.")
        assert why in err
    # The same for every job through an interpolation (helper-56): resolved as each job's
    # launcher resolves it.
    # And a job's number that a .. leaves again, or one escaped, which is text (helper-63).
    for subdir, folder in (
        ("${hydra.job.name}", elsewhere / "cli"),
        ("${hydra.job.num}/..", elsewhere),
        ("j\\${hydra.job.num}", elsewhere / "j${hydra.job.num}"),
    ):
        given = f"hydra.sweep.subdir={subdir}"
        args = ("-m", *store.overrides(), f"hydra.sweep.dir={elsewhere}", given, "seed=0,1")
        status = run_in_process(monkeypatch, cli.train, *args)
        err = capsys.readouterr().err
        check_refused(store, before, status, err, given)
        assert f"jobs 0 and 1 would both write their files into {folder}: give one" in err


def test_an_output_subdir_in_the_runs_artifacts_is_refused_as_hydra_joins_them(
    tmp_path, monkeypatch, capsys
):
    """Only a value starting with artifacts was refused: an absolute one, one through .., or
    one from ${hydra:runtime.output_dir} still ended in SameFileError's traceback and a FAILED
    run; and the sweep's check read a value of the job's number before any job had one
    (helper-58)."""
    uri = f"tracking.uri=sqlite:///{tmp_path}/m.db"
    run = tmp_path / "run"
    for subdir in (
        f"{run}/artifacts/hydra",
        "../run/artifacts",
        "${hydra:runtime.output_dir}/artifacts",
    ):
        args = (uri, f"hydra.run.dir={run}", f"hydra.output_subdir={subdir}", "train.epochs=3")
        status = run_in_process(monkeypatch, cli.train, *args)
        err = capsys.readouterr().err.strip()
        assert status == 2 and len(err.splitlines()) == 1, err
        assert "hydra.output_subdir=" in err and "inside the run's artifacts/ folder" in err
        assert not run.exists() and not (tmp_path / "m.db").exists()
    sweep = tmp_path / "sweep"
    subdir = "hydra.output_subdir=hy_${hydra.job.num}"
    args = ("-m", uri, f"hydra.sweep.dir={sweep}", subdir, "seed=0,1", "train.epochs=3")
    assert run_in_process(monkeypatch, cli.train, *args) == 0
    assert (sweep / "1" / "hy_1" / "config.yaml").is_file()


def test_a_sweep_job_whose_folder_holds_the_stores_artifacts_is_refused_before_it_starts(
    tmp_path, monkeypatch, capsys
):
    """hydra.sweep.subdir=${hydra.job.num} varies per job: job 0's folder is the one of the
    store. Each job's number is put in before the sweep starts (helper-63: values of the
    job's number alone were not, and artifacts/${hydra.job.num} left the jobs' files among
    the store's); before, job 0 failed once it ran, and the other trained."""
    sweep_dir = tmp_path / "sweep"
    for uri, subdir, why in (
        (
            f"sqlite:///{sweep_dir}/0/mlflow.db",
            "${hydra.job.num}",
            f"the run's files would go to {sweep_dir}/0/artifacts, among the store's",
        ),
        (
            f"sqlite:///{sweep_dir}/mlflow.db",
            "artifacts/${hydra.job.num}",
            f"inside the store's artifacts ({sweep_dir}/artifacts)",
        ),
    ):
        args = ("-m", f"tracking.uri={uri}", f"hydra.sweep.dir={sweep_dir}", "train.epochs=3")
        status = run_in_process(monkeypatch, cli.train, *args, f"hydra.sweep.subdir={subdir}")
        err = capsys.readouterr().err.strip()
        assert status == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"fnnlab-train: error: hydra.sweep.subdir={subdir}: {why}"), err
        assert not sweep_dir.exists()


@pytest.mark.parametrize(
    ("entry", "args"),
    [
        (cli.train, ()),
        (cli.train, ("-m", "seed=0,1")),
        (cli.aggregate, ()),
        (cli.replay, ("replay.sweep=latest",)),
        (cli.ui, ("ui.port=0",)),
    ],
    ids=["train", "train -m", "aggregate", "replay", "ui"],
)
def test_a_relative_store_under_hydra_job_chdir_is_refused(
    entry, args, tmp_path, monkeypatch, capsys
):
    """hydra.job.chdir=true runs a job in its output folder: there, sqlite:///mlflow.db was
    another store, a new one for each run, and a sweep's runs were apart from its parent."""
    monkeypatch.chdir(tmp_path)
    uri = "tracking.uri=sqlite:///mlflow.db"
    folders = (f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep")
    status = run_in_process(monkeypatch, entry, *args, uri, "hydra.job.chdir=true", *folders)
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert f"error: {uri}: a relative file, and hydra.job.chdir=true runs each job" in err
    assert list(tmp_path.iterdir()) == []


def test_hydra_job_chdir_is_checked_where_the_job_runs(tmp_path, monkeypatch, capsys):
    """helper-56: a job run in the current folder (hydra.run.dir=.) reads a relative store
    where it was meant, and was refused; hydra.job.chdir=true from a swept config group was
    not seen by the sweep's check, and its jobs failed naming hydra.sweep.subdir."""
    monkeypatch.chdir(tmp_path)
    uri = "tracking.uri=sqlite:///store/mlflow.db"
    args = (uri, "hydra.job.chdir=true", "hydra.run.dir=.", "train.epochs=3")
    assert run_in_process(monkeypatch, cli.train, *args) == 0
    assert (tmp_path / "store" / "mlflow.db").is_file()
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    for name, epochs in (("moves", 5), ("stays", 6)):  # not the run above: it would be reused
        chdir = str(name == "moves").lower()
        text = (
            f"# @package _global_\nhydra:\n  job:\n    chdir: {chdir}\ntrain:\n  epochs: {epochs}\n"
        )
        (conf / f"{name}.yaml").write_text(text)
    args = (
        "-m",
        "experiment=moves,stays",
        f"hydra.searchpath=[file://{tmp_path}/conf]",
        uri,
        f"hydra.sweep.dir={tmp_path}/sweep",
    )
    capsys.readouterr()
    assert run_in_process(monkeypatch, cli.train, *args) == 1
    err = capsys.readouterr().err
    assert f"First error: ConfigValueError: {uri}: a relative file, and hydra.job.chdir" in err
    assert [p.name for p in tmp_path.glob("**/mlflow.db")] == ["mlflow.db"]  # store/ only


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.server)])
def upload_store(request, tmp_path):
    """(tracking overrides, client, runs) of the embedded store, or of the tracking server
    (its artifacts go up over HTTP, file by file or in one call)."""
    if request.param == "sqlite":
        store = request.getfixturevalue("store")
        return store.overrides(), store.client, store.runs
    server = request.getfixturevalue("tracking_server")
    experiment = f"uploads-{uuid.uuid4().hex[:8]}"
    return server.overrides(experiment, tmp_path), server.client, lambda: server.runs(experiment)


def test_a_run_uploads_only_its_own_files(upload_store, tmp_path, monkeypatch, capsys):
    """The second of two runs in one output folder, without plots, had the first's PNGs among
    its artifacts (every file of <output folder>/artifacts was uploaded)."""
    overrides, client, runs = upload_store
    folder = f"hydra.run.dir={tmp_path}/again"
    for plots in ("true", "false"):
        args = (*overrides, folder, "train.epochs=3", f"tracking.plots={plots}")
        assert run_in_process(monkeypatch, cli.train, *args) == 0
    capsys.readouterr()
    with_plots, without = sorted(runs(), key=lambda r: r.info.start_time)

    def files(run) -> set[str]:
        top = client.list_artifacts(run.info.run_id)
        return {f.path for f in top} | {
            f.path for f in client.list_artifacts(run.info.run_id, "hydra")
        }

    assert {"loss.png", "grad_norm.png"} <= files(with_plots)
    assert files(without) == files(with_plots) - {"loss.png", "grad_norm.png"}
    assert {"config.yaml", "weights.pt", "hydra/config.yaml"} <= files(without)
    # Hydra writes its files elsewhere, or none: the earlier runs' .hydra files were the
    # ones uploaded (helper-53).
    written = {"hydra", *(f"hydra/{n}.yaml" for n in ("config", "hydra", "overrides"))}
    # "." is the output folder itself: its whole tree, artifacts/ included, was copied into
    # artifacts/hydra until Python's recursion limit.
    for subdir, hydra in (("meta", written), (".", written), ("null", set())):
        args = (*overrides, folder, "train.epochs=2", f"hydra.output_subdir={subdir}")
        assert run_in_process(monkeypatch, cli.train, *args) == 0
        last = max(runs(), key=lambda r: r.info.start_time)
        assert {f for f in files(last) if f.startswith("hydra")} == hydra
        art = client.download_artifacts(last.info.run_id, "config.yaml", str(tmp_path))
        assert "epochs: 2" in Path(art).read_text()
        if hydra:
            art = client.download_artifacts(last.info.run_id, "hydra/config.yaml", str(tmp_path))
            assert "epochs: 2" in Path(art).read_text()


@pytest.mark.parametrize("script", ["fnnlab-aggregate", "fnnlab-replay", "fnnlab-ui"])
def test_the_other_commands_refuse_an_output_folder_that_cannot_be_made(
    store_with_a_run, script, tmp_path
):
    store = store_with_a_run
    (tmp_path / "file").touch()
    folder = f"hydra.run.dir={tmp_path / 'file'}"
    proc = run_script(script, *store.overrides(), folder)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{script}: error: {folder}: it is a file", proc.stderr


def test_a_folder_for_the_answer_that_cannot_be_made_is_refused(
    store_with_a_run, store, tmp_path, monkeypatch, capsys
):
    """A sweep whose <sweep dir>/aggregate is a file trained every run and ended with "no
    summary", exit 0; aggregate.out_dir under a file gave a traceback (helper-43)."""
    before = store_with_a_run.db_bytes()
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "aggregate").touch()
    sweep = ["-m", "seed=0,1", "train.epochs=5", "tracking.plots=false"]
    at = f"hydra.sweep.dir={folder}"
    status = run_in_process(monkeypatch, cli.train, *sweep, *store_with_a_run.overrides(), at)
    err = capsys.readouterr().err
    check_refused(store_with_a_run, before, status, err, at)
    assert err.strip() == f"fnnlab-train: error: {at}: cannot make {folder}/aggregate: it is a file"
    out = f"aggregate.out_dir={folder / 'aggregate' / 'answer'}"
    # Its own hydra.run.dir: Hydra makes that before the command starts.
    agg_run = f"hydra.run.dir={tmp_path / 'aggregate'}"
    proc = run_script("fnnlab-aggregate", *store_with_a_run.overrides(), agg_run, out)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"fnnlab-aggregate: error: {out}: {folder}/aggregate is a file"
    assert store_with_a_run.db_bytes() == before
    # Without an answer, nothing needs the folder (in a store of its own: the other tests
    # count store_with_a_run's runs).
    summarize = "hydra.sweeper.summarize=false"
    assert run_in_process(monkeypatch, cli.train, *sweep, *store.overrides(), summarize, at) == 0


def test_the_checks_before_a_runs_folder_leave_the_store_to_the_run(store, monkeypatch):
    """The values of a single run are checked before Hydra makes its folder, on a copy of
    the config, where ${now:...} is another time: the store is opened by the run alone, so
    an experiment named by the time is made once."""
    named = ["tracking.experiment=t-${now:%H-%M-%S-%f}", "train.epochs=2", "tracking.plots=false"]
    assert run_in_process(monkeypatch, cli.train, *store.overrides(), *named) == 0
    experiments = [e.name for e in store.client.search_experiments()]
    assert len(experiments) == 2 and "Default" in experiments, experiments


def test_a_value_only_the_running_job_sets_is_checked_in_the_job(store, monkeypatch):
    """${hydra:runtime.output_dir} is set by Hydra's run_job, after the checks before the
    folder: the run is checked by train_app instead, and trains."""
    named = ["tracking.experiment=${hydra:runtime.output_dir}", "train.epochs=2"]
    args = [*store.overrides(), *named, "tracking.plots=false"]
    assert run_in_process(monkeypatch, cli.train, *args) == 0
    (folder,) = (store.root / "outputs").iterdir()
    experiments = [e.name for e in store.client.search_experiments()]
    assert str(folder) in experiments, experiments


@pytest.mark.parametrize(
    "args",
    [
        ["optim.lr=0.1", "~optim.lr"],
        # Hydra refuses the deletion, not the value set after it.
        ["optim.lr=0", "~optim.lr", "optim.lr=0.1"],
        ["-m", "~optim.lr", "optim.lr=0.1,0.2"],
    ],
)
def test_a_deletion_is_named_as_typed(store_with_a_run, monkeypatch, capsys, args):
    store = store_with_a_run
    before = store.db_bytes()
    status = run_in_process(monkeypatch, cli.train, *args, *store.overrides())
    line = capsys.readouterr().err.strip()
    assert status == 2 and line.startswith("fnnlab-train: error: ~optim.lr: "), line
    assert "\n" not in line and store.db_bytes() == before


def test_two_bad_joblib_settings_name_one_with_its_own_reason(
    store_with_a_run, monkeypatch, capsys
):
    store = store_with_a_run
    before = store.db_bytes()
    bad = ["hydra.launcher.batch_size=0", "hydra.launcher.pre_dispatch=bogus"]
    args = ["-m", "hydra/launcher=joblib", *bad, "seed=0,1", *store.overrides()]
    status = run_in_process(monkeypatch, cli.train, *args)
    line = capsys.readouterr().err.strip()
    check_refused(store, before, status, line, "hydra.launcher.pre_dispatch=bogus")
    assert line.endswith("'bogus' is not a valid or supported arithmetic expression."), line


@pytest.mark.parametrize("setting", [{"pre_dispatch": "0"}, {"timeout": 0.0}])
def test_joblib_settings_unused_with_one_job_at_a_time_are_not_refused(setting):
    # With n_jobs=1 joblib runs the jobs in the sweep's process and uses neither setting.
    from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
    from omegaconf import OmegaConf

    from fnnlab.config import ConfigValueError
    from fnnlab.sweep import check_joblib

    launcher = OmegaConf.structured(JobLibLauncherConf)
    launcher.merge_with(setting)
    launcher.n_jobs = 1
    check_joblib(launcher)
    launcher.n_jobs = 2
    with pytest.raises(ConfigValueError, match=next(iter(setting))):
        check_joblib(launcher)


def test_a_ray_cluster_that_ray_may_join_is_not_checked(tmp_path, monkeypatch):
    # `ray start` leaves the address in Ray's temporary folder, and ray.init() without an
    # address joins that cluster, whose CPUs are not known here.
    from omegaconf import OmegaConf

    from fnnlab.config import ConfigValueError
    from fnnlab.sweep import check_ray

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6379")

    def ray(**init):
        return OmegaConf.create({"init": init, "remote": {"num_cpus": 1000}})

    check_ray(ray(address=None))
    check_ray(ray(address="auto"))
    with pytest.raises(ConfigValueError, match="no job would ever start"):
        check_ray(ray(address="local"))  # always a new instance
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    check_ray(ray(address="local"))


# A local Ray instance with fewer CPUs than a job asks for: Ray would wait forever. In a
# process each (in this one, Hydra finds Ray's launcher config only the first time).
RAY = [
    (["+hydra.launcher.ray.init.num_cpus=0"], "hydra.launcher.ray.init.num_cpus=0"),
    (["+hydra.launcher.ray.remote.num_cpus=1000"], "hydra.launcher.ray.remote.num_cpus=1000"),
]


@pytest.mark.parametrize(("args", "named"), RAY, ids=[" ".join(a) for a, _ in RAY])
def test_a_ray_instance_too_small_for_a_job_is_refused(store_with_a_run, args, named):
    store = store_with_a_run
    before = store.db_bytes()
    proc = run_script(
        "fnnlab-train", "-m", "hydra/launcher=ray", "seed=0,1", *store.overrides(), *args
    )
    check_refused(store, before, proc.returncode, proc.stderr, named)
    assert "no job would ever start" in proc.stderr


@pytest.mark.parametrize(
    ("setting", "why"),
    [
        ("bogus=1", "RuntimeError: Unknown keyword argument(s): bogus"),
        # Refused once Ray has begun to start (and logged): still one line.
        ("num_cpus=abc", "AssertionError: CPU (<class 'str'>): abc"),
    ],
)
def test_ray_init_settings_ray_refuses_are_refused_before_any_run(store_with_a_run, setting, why):
    # The sweep starts Ray itself, before its parent run (fnnlab.sweep.start_ray).
    store = store_with_a_run
    before = store.db_bytes()
    proc = run_script(
        "fnnlab-train",
        "-m",
        "hydra/launcher=ray",
        "seed=0,1",
        *store.overrides(),
        f"+hydra.launcher.ray.init.{setting}",
    )
    key, value = setting.split("=")
    named = f"hydra.launcher.ray.init={{'{key}': {value if value.isdigit() else repr(value)}}}"
    check_refused(store, before, proc.returncode, proc.stderr, "hydra.launcher.ray.init=" + key)
    assert proc.stderr.strip() == f"fnnlab-train: error: {named}: Ray did not start with it: {why}"


JOB_ONLY = [
    (["seed=${hydra:job.num}", "optim.lr=0.1,0.2"], "seed=${hydra:job.num}"),
    (["seed=${hydra:job.num},5"], "seed=${hydra:job.num},5"),
    (["data.features=[0,${hydra:job.num}]", "seed=0,1"], "data.features=[0,${hydra:job.num}]"),
    # A key the checks do not read, and one read before them (the basic sweeper went on
    # without a parent run, its jobs in experiments "0" and "1").
    (["data.normalize=${hydra:job.num}", "seed=0,1"], "data.normalize=${hydra:job.num}"),
    (
        ["hydra/sweeper=basic", "tracking.experiment=${hydra:job.num}", "seed=0,1"],
        "tracking.experiment=${hydra:job.num}",
    ),
    # Through another key: the one that reads the job is named.
    (
        ["seed=${model.hidden_dim}", "model.hidden_dim=${hydra:job.num}", "optim.lr=0.1,0.2"],
        "model.hidden_dim=${hydra:job.num}",
    ),
]


@pytest.mark.parametrize(("args", "named"), JOB_ONLY, ids=[" ".join(a) for a, _ in JOB_ONLY])
def test_a_value_only_a_job_resolves_is_named_as_such(store_with_a_run, args, named):
    # A process of its own: in this one, HydraConfig still holds an earlier job's config.
    store = store_with_a_run
    before = store.db_bytes()
    proc = run_script("fnnlab-train", "-m", *store.overrides(), *args)  # args win
    status, err = proc.returncode, proc.stderr.strip()
    assert status == 2 and err.startswith(f"fnnlab-train: error: {named}: "), err
    assert "resolves only inside a running job" in err and "\n" not in err
    assert store.db_bytes() == before and len(store.runs()) == 1


SCRIPT_CASES = [BAD[0], BAD[3], BAD[-1]]


@pytest.mark.parametrize(
    ("args", "named"), SCRIPT_CASES, ids=[" ".join(a) for a, _ in SCRIPT_CASES]
)
def test_bad_input_to_the_console_script(store_with_a_run, args, named):
    store = store_with_a_run
    before = store.db_bytes()
    proc = run_script("fnnlab-train", *args, *store.overrides())
    check_refused(store, before, proc.returncode, proc.stderr, named)


def test_a_value_that_resolves_as_in_the_job_leaves_the_checks_on(store_with_a_run):
    """${hydra:job.name} in a value turned off the checks before a single run's folder: a
    bad value was refused after Hydra made it, and it was left behind. A console script: in
    this process an earlier command's HydraConfig is still set."""
    store = store_with_a_run
    before = store.db_bytes()
    # After the store's overrides, which name the experiment too.
    job_name = "tracking.experiment=${hydra:job.name}"
    proc = run_script("fnnlab-train", "optim.lr=-1", *store.overrides(), job_name)
    check_refused(store, before, proc.returncode, proc.stderr, "optim.lr=-1")


def test_defaults_follow_the_contract():
    cfg = compose_train([])
    assert cfg.model.hidden_dim == 32 and cfg.model.backprop == "tutorial"
    assert cfg.optim.lr == 0.001 and cfg.seed == 0 and cfg.train.epochs == 101
    assert cfg.tracking.uri == f"sqlite:///{project_root()}/mlruns/mlflow.db"
    assert cfg.tracking.experiment == "fnnlab"


def test_params_are_flat_dotted_keys():
    params = flatten(compose_train(["model.hidden_dim=8"]))
    assert params["model.hidden_dim"] == 8 and params["optim.lr"] == 0.001 and params["seed"] == 0
    assert params["data.features"] == [0, 1]
    assert not any(isinstance(v, dict) for v in params.values())
    assert not any(k.startswith(("hydra", "sweep")) for k in params)


def test_fingerprint_covers_training_not_tracking():
    base = fingerprint(compose_train([]))
    assert fingerprint(compose_train(["tracking.experiment=other"])) == base
    assert fingerprint(compose_train(["seed=1"])) != base
    assert fingerprint(compose_train(["model.backprop=exact"])) != base


def test_two_sweeps_started_in_the_same_second_get_their_own_folders(tmp_path):
    """A per-invocation token keeps two sweeps' folders apart when the rest of their names
    is the same (second-resolution names of sweeps started in the same second). The rest is
    the same here whenever the two start (helper-77: with ${now:...}, two processes that
    started in different seconds passed without the token)."""
    args = [
        f"tracking.uri=sqlite:///{tmp_path}/mlruns/mlflow.db",
        "train.epochs=2",
        "tracking.plots=false",
        f"hydra.sweep.dir={tmp_path}/multirun/same-${{fnnlab.token:}}",
    ]
    # Create the schema first so the two processes do not race on the first migration.
    subprocess.run(
        [str(BIN / "fnnlab-train"), "train.epochs=1", f"hydra.run.dir={tmp_path}/o", *args[:1]],
        check=True,
        capture_output=True,
    )
    procs = [
        subprocess.Popen(
            [str(BIN / "fnnlab-train"), "-m", f"seed={i}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    folders = sorted((tmp_path / "multirun").iterdir())
    assert len(folders) == 2
    assert all((f / "0" / ".hydra" / "config.yaml").exists() for f in folders)


def test_config_knows_the_models_backprop_modes():
    assert BACKPROP_MODES == model.BACKPROP_MODES


@pytest.mark.parametrize("preset, expected", [(None, "true"), ("false", "false")])
def test_mlflow_telemetry_is_off_unless_the_user_chose(preset, expected, monkeypatch) -> None:
    """MLflow's telemetry, started at its import, raced a job's first request to a server
    (fnnlab.cli.run_cli); the entry points turn it off before MLflow is imported, and the
    processes they start inherit that. A user's own setting stays."""
    if preset is None:
        monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", preset)
    seen = []
    with as_a_command(monkeypatch):
        cli.run_cli("fnnlab-test", lambda: seen.append(os.environ["MLFLOW_DISABLE_TELEMETRY"]))
    assert seen == [expected]


def test_a_command_ends_with_its_heap_hidden_from_the_collector(monkeypatch) -> None:
    """The interpreter's clean-up would otherwise collect over every object the command
    made (fnnlab.heap.freeze_for_exit): also after an error."""
    gc.unfreeze()

    def app() -> None:
        raise KeyboardInterrupt

    with as_a_command(monkeypatch), pytest.raises(SystemExit):
        try:
            cli.run_cli("fnnlab-test", app)
        finally:
            frozen = gc.get_freeze_count()
    assert frozen > 0


@pytest.mark.parametrize("script", ["fnnlab-ui", "fnnlab-aggregate"])
def test_a_port_no_socket_can_have_is_refused(store_with_a_run, script):
    store = store_with_a_run
    before = store.db_bytes()
    proc = run_script(script, "ui.port=" + "9" * 400, *store.overrides()[:2])
    assert proc.returncode == 2 and proc.stdout == ""
    # Port 0 (any free one) only where the UI starts; elsewhere links would point at it.
    why = " (0: any free one)" if script == "fnnlab-ui" else ": where fnnlab-ui serves, for links"
    assert proc.stderr.strip().splitlines() == [
        f"{script}: error: ui.port={'9' * 400}: must be a TCP port, 1 to 65535{why}"
    ]
    assert store.db_bytes() == before


OTHER_COMMANDS = [
    (
        "aggregate",
        ["+aggregate.bogus=1"],
        "aggregate.bogus=1: not a key of the config (aggregate has sweep, parent_run_id, "
        "filter, out_dir, log_to_parent, plots, outcome, alpha, min_effect)",
    ),
    (
        "aggregate",
        ["++bogus=1"],
        "bogus=1: not a key of the config (the top level has tracking, aggregate, ui)",
    ),
    (
        "replay",
        ["replay.sweep=latest", "+replay.bogus=1"],
        "replay.bogus=1: not a key of the config (replay has run, sweep, sample, seed, log)",
    ),
    # Each selects a sweep: the parent run won without a word (helper-43).
    (
        "aggregate",
        ["aggregate.sweep=all", f"aggregate.parent_run_id={'0' * 32}"],
        f"aggregate.sweep=all: aggregate.parent_run_id={'0' * 32} selects a sweep too; "
        "give one of them",
    ),
]


@pytest.mark.parametrize(
    ("command", "args", "line"), OTHER_COMMANDS, ids=[" ".join(a) for _, a, _ in OTHER_COMMANDS]
)
def test_the_other_commands_refuse_what_nothing_reads(
    store_with_a_run, command, args, line, monkeypatch, capsys, tmp_path
):
    """Before: they ran as if an unknown key were not there (`+aggregate.bogus=1`: exit 0)."""
    store = store_with_a_run
    before = store.db_bytes()
    # Its own output folder: Hydra makes it (with an empty cli.log) before the command runs,
    # and the other tests count the store's.
    args = [*args, *store.overrides()[:2], f"hydra.run.dir={tmp_path}/out"]
    status = run_in_process(monkeypatch, getattr(cli, command), *args)
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err.strip().splitlines() == [f"fnnlab-{command}: error: {line}"]
    assert store.db_bytes() == before


def test_a_command_refused_after_hydra_made_its_folder_removes_it(tmp_path, monkeypatch, capsys):
    """Hydra makes a single run's output folder (`.hydra/`, an empty cli.log) before the
    command's code runs: a command refused for its store left it, and the folders above."""
    import logging

    bad = tmp_path / "bad.db"
    bad.write_text("not a database")
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    commands = (
        ("train", [], tmp_path / "new" / "train" / "x"),
        ("train", ["hydra.output_subdir=meta/deep"], tmp_path / "new" / "deep"),
        ("aggregate", [], tmp_path / "new" / "aggregate"),
        ("replay", ["replay.sweep=latest"], tmp_path / "new" / "replay" / "x" / "y"),
        ("ui", ["ui.port=0"], tmp_path / "new" / "ui"),
        ("train", [], kept),  # existed: what Hydra wrote stays with the user's file
        # It existed too: x/../empty was taken for a new folder and removed (helper-53).
        # With "..", nothing is removed (the x Hydra made stays).
        ("aggregate", [], tmp_path / "x" / ".." / "empty"),
    )
    for command, args, folder in commands:
        status = run_in_process(
            monkeypatch,
            getattr(cli, command),
            *args,
            f"tracking.uri=sqlite:///{bad}",
            f"hydra.run.dir={folder}",
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1 and "not a usable SQLite database" in err[0], err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["bad.db", "bad.db.lock", "empty", "kept", "x"]
    assert (kept / "mine.txt").read_text() == "mine"
    assert (kept / ".hydra" / "config.yaml").exists() and (kept / "cli.log").exists()
    # The removed log's handler is closed too: a later line goes nowhere near the folder.
    logs = [
        h.baseFilename
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler)
        and Path(h.baseFilename).is_relative_to(tmp_path / "new")
    ]
    assert logs == []


def refused_by_the_ui(*args: str, cwd: Path | None = None) -> str:
    """fnnlab-ui's error line for a command it must refuse (exit 2, nothing on stdout). In a
    process group of its own: had the command been let through, the UI would serve on, and
    stop_group stops it and its server."""
    argv = [str(BIN / "fnnlab-ui"), "ui.port=0", *args, *default_run_dir("fnnlab-ui", args)]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=cwd,
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop_group(proc)
    assert proc.returncode == 2 and out == "", err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_the_ui_refuses_a_key_nothing_reads_before_it_serves(store_with_a_run):
    line = refused_by_the_ui("+ui.bogus=x", *store_with_a_run.overrides())
    assert line == (
        "fnnlab-ui: error: ui.bogus=x: not a key of the config (ui has host, port, sweep, open)"
    )


def test_an_empty_tracking_uri_is_refused_by_every_command(tmp_path, monkeypatch, capsys):
    """MLflow takes an empty URI for its default store: fnnlab-train trained into
    ./mlflow.db, the others made it before refusing (helper-45)."""
    monkeypatch.chdir(tmp_path)
    why = "tracking.uri=: empty: give a store (sqlite:///<file>, a tracking server's "
    for command, args in (("train", []), ("aggregate", []), ("replay", ["replay.sweep=latest"])):
        run_dir = f"hydra.run.dir={tmp_path}/{command}"
        status = run_in_process(monkeypatch, getattr(cli, command), *args, "tracking.uri=", run_dir)
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            status == 2 and len(err) == 1 and err[0].startswith(f"fnnlab-{command}: error: {why}")
        )
    line = refused_by_the_ui("tracking.uri=", cwd=tmp_path)
    assert line.startswith(f"fnnlab-ui: error: {why}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_percent_escape_in_an_sqlite_path_is_refused_by_every_command(
    tmp_path, monkeypatch, capsys
):
    """SQLAlchemy opens sqlite:///a%41b/m.db as aAb/m.db, and MLflow made the folder a%41b:
    SQLite could not open the file, and the command retried for about 100 s before a
    traceback."""
    uri = f"tracking.uri=sqlite:///{tmp_path}/a%41b/m.db"
    why = f"{uri}: a %-escape in the database's path: SQLAlchemy opens the file with it decoded"
    # After a #, which urlparse took for a fragment's start, cutting the path (helper-62).
    hashed = f"tracking.uri='sqlite:///{tmp_path}/h#%41/m.db'"
    status = run_in_process(monkeypatch, cli.train, hashed, f"hydra.run.dir={tmp_path}/train")
    assert status == 2 and "a %-escape in the database's path" in capsys.readouterr().err
    for command, args in (("train", []), ("aggregate", []), ("replay", ["replay.sweep=latest"])):
        run_dir = f"hydra.run.dir={tmp_path}/{command}"
        status = run_in_process(monkeypatch, getattr(cli, command), *args, uri, run_dir)
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1, err
        assert err[0].startswith(f"fnnlab-{command}: error: {why}"), err
    sweep = ("-m", uri, f"hydra.sweep.dir={tmp_path}/sweep", "seed=0,1")
    assert run_in_process(monkeypatch, cli.train, *sweep) == 2
    assert capsys.readouterr().err.startswith(f"fnnlab-train: error: {why}")
    assert refused_by_the_ui(uri, cwd=tmp_path).startswith(f"fnnlab-ui: error: {why}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # A % that is no escape is read as written by both: a folder may have one (helper-60).
    uri = f"tracking.uri=sqlite:///{tmp_path}/100%/m.db"
    args = (uri, f"hydra.run.dir={tmp_path}/run", "train.epochs=2", "tracking.plots=false")
    assert run_in_process(monkeypatch, cli.train, *args) == 0
    assert (tmp_path / "100%" / "m.db").is_file()


def test_an_sqlite_store_in_memory_or_by_uri_filename_is_refused(tmp_path, monkeypatch, capsys):
    """SQLAlchemy reads sqlite:// and sqlite:///:memory: as a store in memory: a traceback
    (the lock file of a path '.'), or a lock file :memory:.lock and "no such table"
    (helper-63). sqlite:///file:/abs/m.db?uri=true: MLflow made a folder file:/abs in the
    working directory, then SQLite could not open the file, after about 100 s of retries
    (helper-63)."""
    monkeypatch.chdir(tmp_path)
    in_memory = "an SQLite store in memory keeps nothing: give a file"
    by_uri = (
        "an SQLite URI filename (uri=true) is not taken: give the file's path "
        "(sqlite:////<absolute path> or sqlite:///<relative path>)"
    )
    file_uri = f"sqlite:///file:{tmp_path}/m.db?uri=true"
    for typed, uri, why in (
        ("sqlite://", "sqlite://", in_memory),
        ("sqlite:///:memory:", "sqlite:///:memory:", in_memory),
        (f"'{file_uri}'", file_uri, by_uri),
    ):
        args = (f"tracking.uri={typed}", f"hydra.run.dir={tmp_path}/run", "train.epochs=2")
        assert run_in_process(monkeypatch, cli.train, *args) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"fnnlab-train: error: tracking.uri={uri}: {why}", err
    assert list(tmp_path.iterdir()) == []


def test_a_deleted_experiment_is_refused_by_every_command(store, monkeypatch, capsys):
    """MLflow refused each run in it with a traceback, exit 1 (helper-45)."""
    assert run_in_process(monkeypatch, cli.train, "train.epochs=2", *store.overrides()) == 0
    exp = store.client.get_experiment_by_name(store.experiment)
    store.client.delete_experiment(exp.experiment_id)
    tracking.open_store_once.cache_clear()  # as a new process would: open it again
    before = store_dump(store)
    line = (
        f"tracking.experiment={store.experiment}: is deleted in this store (experiment "
        f"{exp.experiment_id}): restore it (`mlflow experiments restore -x {exp.experiment_id}` "
        "with MLFLOW_TRACKING_URI set to the store) or choose another name"
    )
    for command, args in (
        ("train", []),
        ("train", ["-m", "seed=0,1"]),
        ("aggregate", []),
        ("replay", ["replay.sweep=latest"]),
    ):
        status = run_in_process(monkeypatch, getattr(cli, command), *args, *store.overrides())
        assert status == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"fnnlab-{command}: error: {line}"]
    assert refused_by_the_ui(*store.overrides()) == f"fnnlab-ui: error: {line}"
    # What it holds, not its bytes: the UI's process may move the log into the database.
    assert store_dump(store) == before


def store_dump(store: TmpStore) -> list[str]:
    with contextlib.closing(sqlite3.connect(store.root / "mlruns" / "mlflow.db")) as db:
        return list(db.iterdump())


@pytest.mark.parametrize("sweep", [[], ["-m", "seed=0,1"]], ids=["run", "sweep"])
def test_an_experiment_name_mlflow_refuses_is_named_in_one_line(
    store, tmp_path, sweep, monkeypatch, capsys
):
    """Before: Hydra's job-failure banner, then MLflow's reason as the tracking store's,
    exit 1 (helper-45); then one line, but after the new store's database was made."""
    name = "x" * 600
    args = [*store.overrides(), f"tracking.experiment={name}"]
    assert run_in_process(monkeypatch, cli.train, *sweep, "train.epochs=2", *args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"fnnlab-train: error: tracking.experiment={name}: ")
    assert "maximum length" in line
    assert store.runs() == []
    new = tmp_path / "new-store"
    uri = f"sqlite:///{new}/mlflow.db"
    args = [f"tracking.uri={uri}", f"tracking.experiment={name}", f"hydra.run.dir={tmp_path}/o"]
    args.append(f"hydra.sweep.dir={tmp_path}/m")
    assert run_in_process(monkeypatch, cli.train, *sweep, "train.epochs=2", *args) == 2
    assert "maximum length" in capsys.readouterr().err
    assert not new.exists()
    # An empty file is no store yet either (helper-49: it got MLflow's tables, and a lock).
    empty = tmp_path / "empty.db"
    empty.touch()
    args[0] = f"tracking.uri=sqlite:///{empty}"
    assert run_in_process(monkeypatch, cli.train, *sweep, "train.epochs=2", *args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "maximum length" in line
    assert empty.stat().st_size == 0 and sorted(tmp_path.glob("empty.db*")) == [empty]
    # A driver named in the URI: the same file (helper-50: SQLAlchemy made it).
    args[0] = f"tracking.uri=sqlite+pysqlite:///{tmp_path}/driver.db"
    assert run_in_process(monkeypatch, cli.train, *sweep, "train.epochs=2", *args) == 2
    assert "maximum length" in capsys.readouterr().err
    assert not (tmp_path / "driver.db").exists()


@pytest.mark.parametrize("name", ["fnnlab", "x" * 600])
def test_a_database_driver_not_installed_is_one_line(tmp_path, name, monkeypatch, capsys):
    """helper-49: a traceback, for any database but PostgreSQL (whose lock asks the driver
    first), and with a refused experiment name for PostgreSQL too."""
    uri = "mssql+pymssql://u@127.0.0.1:1/db"  # a dialect MLflow takes; its driver is not here
    args = [f"tracking.uri={uri}", f"tracking.experiment={name}", f"hydra.run.dir={tmp_path}/o"]
    assert run_in_process(monkeypatch, cli.train, "train.epochs=2", *args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"fnnlab-train: error: tracking.uri={uri}: ")


def test_a_ui_sweep_in_no_store_creates_none(tmp_path):
    """fnnlab-ui made the database (and an experiment for a typo) before refusing ui.sweep
    (helper-45); with no sweep named it still makes the store, as `mlflow ui` would."""
    db = tmp_path / "new.db"
    line = refused_by_the_ui(f"tracking.uri=sqlite:///{db}", "ui.sweep=abc123", cwd=tmp_path)
    assert line == f"fnnlab-ui: error: tracking.uri=sqlite:///{db}: no database file at {db}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def refused_in_a_fresh_store(store: TmpStore, monkeypatch, capsys, *args: str) -> str:
    """fnnlab-train's one error line for args, with nothing made: no run, no output folder.
    (A test late in this module cannot count store_with_a_run's output folders: one test
    leaves one by design.)"""
    status = run_in_process(monkeypatch, cli.train, *args, *store.overrides())
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert store.runs() == [] and not (store.root / "outputs").exists()
    assert not (store.root / "multirun").exists()
    return err.strip()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["seed=abc", "seed=1"], "seed=abc: Value 'abc' of type 'str' could not be converted"),
        (["train.epochs=1e3", "train.epochs=5"], "train.epochs=1e3: Value '1000.0' of type"),
        # Parsed as Hydra parses them, of the same type (helper-46).
        (["seed=true", "seed=1"], "seed=true: Value 'True' of type 'bool'"),
        (["seed=1", "seed=true"], "seed=true: Value 'True' of type 'bool'"),
        (["seed=null", "seed=1"], "seed=null: field 'seed' is not Optional"),
        (["seed='abc'", "seed=1"], "seed='abc': Value 'abc' of type 'str'"),
    ],
)
def test_a_key_given_twice_is_named_with_the_value_refused(store, args, line, monkeypatch, capsys):
    """Hydra stops at the first value it cannot take; the line named the last one given
    ("seed=1: Value 'abc' ...", helper-45)."""
    refused = refused_in_a_fresh_store(store, monkeypatch, capsys, *args)
    assert refused.startswith(f"fnnlab-train: error: {line}"), refused


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        (["+hydra.launcher.bogus=1"], "hydra.launcher.bogus=1: not a setting of hydra/launcher="),
        (["hydra/sweeper=basic", "+hydra.sweeper.bogus=1"], "hydra.sweeper.bogus=1: not a"),
        # Hydra's joblib and submitit launchers pass every key on, to joblib.Parallel (a
        # backend's setting) and submitit's executor: refused by this check once (helper-46).
        (["hydra/launcher=joblib", "+hydra.launcher.idle_worker_timeout=60"], None),
        (["hydra/launcher=submitit_local", '+hydra.launcher.setup=["export X=1"]'], None),
    ],
)
def test_plugin_settings_are_checked_where_the_plugin_names_them(overrides, refused):
    from hydra import compose, initialize_config_dir

    from fnnlab import sweep

    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    errors = [sweep.unknown_plugin_setting(cfg.hydra, p) for p in ("launcher", "sweeper")]
    lines = [str(e) for e in errors if e is not None]
    assert lines == [] if refused is None else lines[0].startswith(refused), lines


def test_the_sweep_callback_reads_strings_as_hydra_reads_overrides():
    """A setting from ${oc.env:...} is a string: 'false' was refused as not true or false
    (helper-46), and before that "abc" was taken as true."""
    from fnnlab.sweep import SweepCallback

    callback = SweepCallback(summarize="false", remote_dead_after_s="60", store_failures="2")
    assert (callback.summarize, callback.remote_dead_after_s, callback.store_failures) == (
        False,
        60,
        2,
    )
    for setting, value in (("summarize", "abc"), ("remote_dead_after_s", "soon")):
        with pytest.raises(ValueError, match=f"hydra.callbacks.sweep.{setting}={value}: must"):
            SweepCallback(**{setting: value})


def test_a_submitit_folder_in_the_home_folder_is_checked_there(
    store, tmp_path, monkeypatch, capsys
):
    """submitit reads ~ as the home folder; the check read it as a folder named ~ and let a
    file there through, to a traceback after the parent run (helper-46)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "afile").touch()
    quoted = "hydra.launcher.submitit_folder='~/afile/%j'"
    args = ["-m", "hydra/launcher=submitit_local", quoted, "seed=0,1"]
    line = refused_in_a_fresh_store(store, monkeypatch, capsys, *args)
    assert line == "fnnlab-train: error: hydra.launcher.submitit_folder=~/afile/%j: it is a file"


@pytest.mark.parametrize(
    ("params", "line"),
    [
        ("seed: range(0)", "seed=range(0): sweeps no values: the sweep has no jobs"),
        ("seed: interval(0,1)", "seed=interval(0,1): not in Hydra's basic sweep grammar"),
    ],
)
def test_the_basic_sweepers_params_are_checked_as_its_overrides(
    store, params, line, tmp_path, monkeypatch, capsys
):
    """hydra.sweeper.params in a config file (the command line cannot set them: Hydra
    refuses a dict over their null): the checks read only the command line, and a FAILED
    or KILLED parent run was left (helper-46)."""
    (tmp_path / "experiment").mkdir()
    yaml = f"# @package _global_\nhydra:\n  sweeper:\n    params:\n      {params}\n"
    (tmp_path / "experiment" / "swept.yaml").write_text(yaml)
    args = ["-m", "--config-dir", str(tmp_path), "experiment=swept", "hydra/sweeper=basic"]
    refused = refused_in_a_fresh_store(store, monkeypatch, capsys, *args)
    assert refused.startswith(f"fnnlab-train: error: {line}"), refused


def test_a_refused_value_is_named_as_typed() -> None:
    """helper-49: `replay.run=null replay.sweep=null` was refused as `replay.run=None`."""
    for value, typed in ((None, "null"), (True, "true"), (False, "false"), (0, "0"), ("x", "x")):
        assert str(ConfigValueError("k", value, "why")) == f"k={typed}: why"


def test_a_command_in_this_process_gives_the_root_logger_back(tmp_path, monkeypatch, caplog):
    """Hydra's logging set-up replaces the root logger's handlers; after a command run in
    the test's process, they are the test's again, and the command's log file is closed."""
    import logging

    root = logging.getLogger()
    before, level = root.handlers[:], root.level
    status = run_in_process(
        monkeypatch,
        cli.train,
        "train.epochs=2",
        "tracking.plots=false",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"hydra.run.dir={tmp_path}/out",
    )
    assert status == 0 and (tmp_path / "out" / "cli.log").exists()
    assert root.handlers == before and root.level == level
    logging.getLogger("fnnlab.test").warning("after the command")
    assert "after the command" in caplog.text
