"""What users read: --help, the sweep progress lines, the end-of-run line, the epoch bar,
and the URLs fnnlab-ui builds (a sweep's runs in MLflow's compare and metric pages)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from urllib.parse import parse_qsl

import numpy as np
import pytest
import torch
from conftest import BIN, TmpStore, run_command, run_script
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from fnnlab import cli, links, progress, ui
from fnnlab.config import TrainAppConfig, fingerprint
from fnnlab.data import load_iris2
from fnnlab.job import JobResult, run_name
from fnnlab.model import ScratchFNN
from fnnlab.tracking import end_run, find_sweep_parent, open_store, start_run
from fnnlab.train import History, fit

CONTRACT_KEYS = (
    "model.hidden_dim",
    "model.backprop",
    "optim.lr",
    "seed",
    "train.epochs",
    "tracking.uri",
    "tracking.experiment",
)
RUN_LINE = re.compile(
    r"^(?P<name>h\S+): loss (?P<loss>\d+\.\d{6}) accuracy (?P<acc>\d\.\d{3})"
    r"(?: \(the last before it diverged at epoch (?P<at>\d+)\))? "
    r"(?P<url>http://127\.0\.0\.1:5000/#/experiments/(?P<exp>\w+)/runs/(?P<run>\w+)"
    r"\?workflowType=machine_learning)$"
)
PROGRESS_LINE = re.compile(
    r"^\[sweep\] job (\d+) of (\d+): (\d+) finished, (\d+) failed, (\d+) diverged; "
    r"\d+\.\d (s|min|h) elapsed, about \d+\.\d (s|min|h) left$"
)


def test_help_explains_the_app() -> None:
    out = run_script("fnnlab-train", "--help")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("fnnlab-train: train the from-scratch")
    for example in (
        "fnnlab-train model.hidden_dim=8 optim.lr=0.1",
        "fnnlab-train -m model.hidden_dim=8,32,128 optim.lr=0.001,0.01,0.1",
        "fnnlab-train experiment=reference",
    ):
        assert example in text
    contract = re.search(r"== Contract keys[^\n]*\n(.*?)\n\n", text, re.S)[1]
    assert [line.split()[0] for line in contract.splitlines()] == list(CONTRACT_KEYS)
    # Hydra's listings stay: the config groups and the composed config.
    assert "model: fnn" in text and "tracking: server, sqlite" in text
    assert "experiment: reference" in text
    assert "  hidden_dim: 32" in text and "  lr: 0.001" in text


def unread_stdout(*args: str) -> subprocess.CompletedProcess:
    """fnnlab-train with stdout a pipe whose reader is gone before the command starts (as
    `| head -1` once head has its line), so that every write to it fails."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [str(BIN / "fnnlab-train"), *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
    finally:
        os.close(write)


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    # `fnnlab-train --help | head -1`, `fnnlab-train --info | true`: what is left is dropped.
    for flag in ("--help", "--info"):
        proc = unread_stdout(flag)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""


@pytest.mark.parametrize("n_jobs", [1, 2], ids=["in-process", "workers"])
def test_a_sweep_whose_reader_goes_away_runs_to_its_end(store: TmpStore, n_jobs) -> None:
    # `fnnlab-train -m ... | head -1`: the sweep does not stop or fail for it.
    proc = unread_stdout(
        "-m",
        "seed=range(4)",
        "train.epochs=5",
        f"hydra.launcher.n_jobs={n_jobs}",
        *store.overrides(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "rror" not in proc.stderr, proc.stderr
    runs = store.runs()
    assert len(runs) == 5
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_stdout_drops_what_is_written_once_its_reader_is_gone(tmp_path, monkeypatch) -> None:
    # As in a job of any launcher's worker (fnnlab.cli.train_app), whose stdout is the
    # sweep's pipe: its last line must not fail the job once the reader has gone.
    read, write = os.pipe()
    with open(write, "w") as pipe:
        monkeypatch.setattr("sys.stdout", pipe)
        cli.drop_output_when_unread()
        stdout = sys.stdout
        assert isinstance(stdout, cli.DropWhenUnread)
        print("read", flush=True)  # a live reader gets it as ever
        assert os.read(read, 100) == b"read\n"
        os.close(read)
        print("dropped", flush=True)
        stdout.writelines(["and this\n"] * 10_000)
        stdout.flush()
        # The pipe's place now holds /dev/null (the process's flush at exit goes there).
        assert os.path.samefile(f"/proc/self/fd/{pipe.fileno()}", os.devnull)
    with open(tmp_path / "out.txt", "w") as file:  # a file: left as it is
        monkeypatch.setattr("sys.stdout", file)
        cli.drop_output_when_unread()
        assert sys.stdout is file


def test_only_a_pipe_nobody_reads_is_a_reader_gone(tmp_path, monkeypatch) -> None:
    # A broken pipe elsewhere (a socket in a job) is an error like any other.
    read, write = os.pipe()
    with open(write, "w") as pipe, open(tmp_path / "out.txt", "w") as file:
        monkeypatch.setattr("sys.stdout", file)
        assert not cli.stdout_reader_gone()
        monkeypatch.setattr("sys.stdout", pipe)
        assert not cli.stdout_reader_gone()
        os.close(read)
        assert cli.stdout_reader_gone()


def test_single_run_ends_with_one_line(store: TmpStore) -> None:
    out = run_script("fnnlab-train", "train.epochs=7", "tracking.plots=false", *store.overrides())
    assert out.returncode == 0, out.stderr
    m = RUN_LINE.match(out.stdout.strip().splitlines()[-1])
    assert m, out.stdout
    (run,) = store.runs()
    assert (m["name"], m["run"], m["exp"]) == (
        "h32-lr0.001-s0-epochs7",
        run.info.run_id,
        run.info.experiment_id,
    )
    assert float(m["loss"]) == pytest.approx(run.data.metrics["final/loss"], abs=5e-7)
    assert float(m["acc"]) == pytest.approx(run.data.metrics["final/accuracy"], abs=5e-4)
    assert "[sweep]" not in out.stdout


@pytest.mark.slow
def test_sweep_prints_a_progress_line_per_job(store: TmpStore) -> None:
    # lr=1000 diverges at once; job order is the override order with the basic launcher.
    out = run_script(
        "fnnlab-train",
        "-m",
        "model.hidden_dim=4",
        "optim.lr=0.05,1000",
        "train.epochs=6",
        "tracking.plots=false",
        *store.overrides(),
    )
    assert out.returncode == 0, out.stderr
    lines = [
        line
        for line in out.stdout.splitlines()
        if RUN_LINE.match(line) or line.startswith("[sweep] job")
    ]
    assert len(lines) == 4, out.stdout
    runs = {r.info.run_id: r for r in store.runs("tags.role = 'job'")}
    expected_counts = [(1, 2, 1, 0, 0), (2, 2, 2, 0, 1)]
    for i, counts in enumerate(expected_counts):
        run_line = RUN_LINE.match(lines[2 * i])
        progress_line = PROGRESS_LINE.match(lines[2 * i + 1])
        assert run_line and progress_line, lines
        assert tuple(int(progress_line[k]) for k in range(1, 6)) == counts
        run = runs[run_line["run"]]
        assert run_line["name"] == run.info.run_name
        # A diverged run has no final/loss: the line shows its last finite loss.
        assert float(run_line["loss"]) == pytest.approx(run.data.metrics["loss"], abs=5e-7)
        assert run_line["at"] == run.data.tags.get("diverged_at")
    assert run_line["name"] == "h4-lr1000-s0-epochs6" and run_line["at"] is not None


def test_progress_counts_failed_and_diverged_once() -> None:
    out = io.StringIO()
    p = progress.SweepProgress(total=4, out=out)
    for completed, diverged in [(True, False), (True, False), (True, True), (False, False)]:
        p.job_ended(completed, diverged)
    assert (p.done, p.finished, p.failed, p.diverged) == (4, 3, 1, 1)
    lines = out.getvalue().splitlines()
    assert [PROGRESS_LINE.match(line)[1] for line in lines] == ["1", "2", "3", "4"]
    assert lines[-1].startswith("[sweep] job 4 of 4: 3 finished, 1 failed, 1 diverged;")


def test_epoch_bar_counts_epochs_and_leaves_training_alone() -> None:
    X, y = load_iris2([0, 1], True, torch.float32)
    plain = fit(ScratchFNN(2, 8, seed=0), X, y, lr=0.05, epochs=40)
    out = io.StringIO()
    bar = progress.EpochBar(40, delay=0, file=out)
    with_bar = fit(ScratchFNN(2, 8, seed=0), X, y, lr=0.05, epochs=40, on_epoch=bar)
    assert bar.bar is not None and bar.bar.n == 40
    bar.close()
    assert "epochs:" in out.getvalue()
    for name, values in plain.metrics.items():
        assert np.array_equal(with_bar.metrics[name], values), name


def test_run_line_points_at_a_tracking_server() -> None:
    history = History(metrics={"loss": [0.5, 0.25], "accuracy": [0.5, 0.75]})
    result = JobResult(
        run_id="r1", run_name="h8-lr0.1-s0", experiment_id="3", history=history, summary={}
    )
    base = links.base_url("http://127.0.0.1:5555/", port=5123)  # a server is its own UI
    assert progress.run_line(result, base) == (
        "h8-lr0.1-s0: loss 0.250000 accuracy 0.750 "
        "http://127.0.0.1:5555/#/experiments/3/runs/r1?workflowType=machine_learning"
    )


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(url.split("?", 1)[1]))


def test_compare_and_curves_urls() -> None:
    base = links.base_url("sqlite:////tmp/x/mlflow.db", port=5123)
    assert base == "http://127.0.0.1:5123"
    assert links.base_url("https://mlflow.example.org/") == "https://mlflow.example.org"
    url = links.compare_url(base, "7", ["a1", "b2"])
    assert url.startswith("http://127.0.0.1:5123/#/compare-runs?")
    q = _query(url)
    assert json.loads(q["runs"]) == ["a1", "b2"] and json.loads(q["experiments"]) == ["7"]
    q = _query(links.curves_url(base, "7", ["a1"], ["grad_norm/w1", "grad_norm/w2"]))
    assert json.loads(q["plot_metric_keys"]) == ["grad_norm/w1", "grad_norm/w2"]
    assert json.loads(q["metric"]) == "grad_norm/w1" and q["x_axis"] == "step"


def test_sweep_views_per_width_without_diverged_runs() -> None:
    base = "http://127.0.0.1:5123"
    runs = [
        links.RunRef(f"r{w}{k}", f"h{w}-s{k}", str(w), diverged=(w == 64 and k == 0))
        for w in (4, 16, 64)
        for k in range(5)
    ]
    views = dict(links.sweep_views(base, "7", "p1", runs))
    assert views["parent run"].startswith(f"{base}/#/experiments/7/runs/p1?")
    assert views["report"].startswith(f"{base}/#/experiments/7/runs/p1/artifacts/aggregate/")
    assert json.loads(_query(views["side by side"])["runs"]) == [r.run_id for r in runs]
    # 14 runs left after the diverged one: more than a dozen, so one link per width.
    assert "loss curves" not in views
    for w in (4, 16, 64):
        q = _query(views[f"loss curves, hidden_dim={w}"])
        want = [r.run_id for r in runs if r.width == str(w) and not r.diverged]
        assert json.loads(q["runs"]) == want and q["y_axis_scale"] == "linear"
        q = _query(views[f"gradient norms, hidden_dim={w}"])
        assert json.loads(q["runs"]) == want and q["y_axis_scale"] == "log"
    few = dict(links.sweep_views(base, "7", "p1", runs[:6]))
    assert json.loads(_query(few["loss curves"])["runs"]) == [r.run_id for r in runs[:6]]
    # Every run diverged: no links to empty charts.
    gone = [r._replace(diverged=True) for r in runs[:6]]
    assert [label for label, _ in links.sweep_views(base, "7", "p1", gone)] == [
        "parent run",
        "report",
        "side by side",
    ]


def test_the_group_hint_names_what_the_configurations_differ_in() -> None:
    run = {"model.hidden_dim": "8", "optim.lr": "0.1", "seed": "0", "tracking.uri": "a"}
    dtypes = [
        run | {"model.dtype": d, "seed": s, "tracking.uri": s} for d in ("f32", "f64") for s in "01"
    ]
    hint = links.group_hint([*dtypes, {}])  # {}: a run killed before its params
    assert hint.endswith("Group by -> Parameters -> model.dtype (and the Chart view)")
    widths = [run | {"model.hidden_dim": w, "optim.lr": lr} for w in "48" for lr in ("0.1", "1")]
    assert "Parameters -> model.hidden_dim, optim.lr (" in links.group_hint(widths)
    seeds = [run | {"seed": s} for s in "012"]
    assert "Parameters -> model.hidden_dim (" in links.group_hint(seeds)


@pytest.mark.slow
def test_a_sweep_id_hydra_reads_as_a_number_is_taken_as_typed(store: TmpStore) -> None:
    """Hydra reads the hex prefix 12e456 as a float (inf) and 123456 as an int: the commands
    looked for str() of those, "inf", and could not name such a sweep. A value that is no
    id is named as typed (it was "True")."""
    sweep = ["-m", "seed=0,1", "train.epochs=5", "tracking.plots=false"]
    out = run_command(cli.train, *sweep, "hydra.sweeper.summarize=false", *store.overrides())
    assert out.returncode == 0, out.stderr[-3000:]
    for run in store.runs():  # as if the sweep's random id had been this one
        store.client.set_tag(run.info.run_id, "sweep_id", "12e456abcdef")
    where = store.overrides()[:2]
    out = run_command(cli.replay, "replay.sweep=12e456", *where)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "replayed 2 runs: 2 identical" in out.stdout
    answer = f"aggregate.out_dir={store.root / 'answer'}"
    options = ["aggregate.sweep=12e456", "aggregate.plots=false", answer]
    out = run_command(cli.aggregate, *options, *where)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sweep 12e456abcdef" in out.stdout, out.stdout
    for entry in (cli.replay, cli.aggregate, cli.ui):
        key = f"{entry.__name__}.sweep"
        out = run_command(entry, f"{key}=true", *where)
        assert out.returncode == 2
        name = f"fnnlab-{entry.__name__}"
        assert out.stderr.strip().splitlines()[-1] == (
            f"{name}: error: {key}=true: not a sweep id (up to 12 hex digits, or latest)"
        )
    out = run_command(cli.replay, "replay.sweep=1_0", *where)
    assert out.stderr.strip().splitlines()[-1] == (
        "fnnlab-replay: error: replay.sweep=1_0: not a sweep id (up to 12 hex digits, or latest)"
    )


def test_find_sweep_by_latest_and_prefix(store: TmpStore) -> None:
    s = open_store(store.uri, store.experiment)
    parents = {}
    for sid, start in (("abc111000000", 1000), ("abc222000000", 2000)):
        run = s.client.create_run(
            s.experiment_id,
            start_time=start,
            run_name=f"sweep-{sid[:6]}",
            tags={"role": "sweep", "sweep_id": sid},
        )
        parents[sid] = run.info.run_id
    kids = {}
    for num, status in enumerate(("FINISHED", "FAILED", "FINISHED")):
        rid = start_run(
            s, f"job{num}", {"role": "job", "job_num": str(num)}, parents["abc222000000"]
        )
        end_run(s, rid, status)
        kids[num] = rid

    latest = ui.find_sweep(s, "latest")
    assert latest.sweep_id == "abc222000000"
    # The FAILED attempt is left out of the comparison; jobs in sweep order.
    assert [r.info.run_id for r in latest.children] == [kids[0], kids[2]]
    assert ui.find_sweep(s, "abc1").parent.info.run_id == parents["abc111000000"]
    assert ui.find_sweep(s, "abc1").children == []
    # An id copied in capitals is the same id (it was "not a sweep id"; helper-45).
    assert ui.find_sweep(s, "ABC2").parent.info.run_id == parents["abc222000000"]
    with pytest.raises(ValueError, match="ui.sweep=abc: matches 2: abc111000000, abc222000000"):
        ui.find_sweep(s, "abc")
    with pytest.raises(ValueError, match="ui.sweep=fff: matches none"):
        ui.find_sweep(s, "fff")
    # A LIKE pattern is not a sweep id: ui.sweep=% must not match every sweep.
    for pattern in ("%", "_", "abc%", "x' or '1"):
        with pytest.raises(ValueError, match="not a sweep id"):
            ui.find_sweep(s, pattern)
    # The parent run's id, which a sweep's last lines print, is pointed to its sweep's id
    # (helper-49); a run of no sweep is only refused.
    pid = parents["abc111000000"]
    hint = ": the id of the parent run of sweep abc111000000; give ui.sweep=abc111000000"
    with pytest.raises(ValueError) as refused:
        ui.find_sweep(s, pid)
    assert (
        str(refused.value)
        == f"ui.sweep={pid}: not a sweep id (up to 12 hex digits, or latest){hint}"
    )
    refused = "not a sweep id (up to 12 hex digits, or latest)"

    def said(which: str, key: str = "ui.sweep") -> str:
        with pytest.raises(ValueError) as error:
            find_sweep_parent(s, which, key)
        return str(error.value).split(refused, 1)[1]

    assert said(pid.upper()) == hint  # copied in capitals
    assert said(kids[0]) == ""  # a run of no sweep
    # A job's id: its sweep, and for replay the run itself (helper-50: only the sweep).
    s.client.set_tag(kids[0], "sweep_id", "abc222000000")
    assert said(kids[0], "replay.sweep") == (
        f": the id of a run of sweep abc222000000; give replay.run={kids[0]} to replay this "
        "run, or replay.sweep=abc222000000 for the sweep"
    )
    # Not for a run of another experiment, or a deleted one: that sweep would then be
    # "matches none" (helper-50).
    other = open_store(store.uri, "other")
    assert said(pid) == hint
    with pytest.raises(ValueError) as error:
        find_sweep_parent(other, pid, "ui.sweep")
    assert str(error.value).endswith(refused)
    s.client.delete_run(pid)
    assert said(pid) == ""


def test_ui_rejects_an_unknown_sweep_in_one_line(store: TmpStore) -> None:
    open_store(store.uri, store.experiment)  # the experiment, with no sweep in it
    out = run_script(
        "fnnlab-ui",
        f"tracking.uri={store.uri}",
        f"tracking.experiment={store.experiment}",
        "ui.sweep=0123abc",
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "fnnlab-ui: error: ui.sweep=0123abc: matches none of this experiment's sweeps"
    )
    assert "Uvicorn" not in out.stderr  # no server was started


def train_cfg(values: dict[str, object]) -> DictConfig:
    """fnnlab-train's schema with these dotted keys set: what run_name reads."""
    cfg = OmegaConf.structured(TrainAppConfig)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_run_names_spell_every_training_key_off_its_default() -> None:
    assert run_name(train_cfg({})) == "h32-lr0.001-s0"
    assert run_name(train_cfg({"model.backprop": "exact"})) == "h32-lr0.001-s0-exact"
    long_run = {"model.dtype": "float64", "train.epochs": 2000, "optim.lr": 0.1}
    assert run_name(train_cfg(long_run)) == "h32-lr0.1-s0-float64-epochs2000"
    odd = {
        "model.init_discard_draws": 1,
        "data.features": [0, 2],
        "data.normalize": False,
        "train.diverge_factor": 50.0,
    }
    assert run_name(train_cfg(odd)) == (
        "h32-lr0.001-s0-init_discard_draws1-features0+2-normalizeFalse-diverge_factor50"
    )
    # Floats as short as they read exactly: not the default's name for a value next to it.
    near = {"optim.lr": 0.0010000001, "train.diverge_factor": 100.0000001}
    assert run_name(train_cfg(near)) == "h32-lr0.0010000001-s0-diverge_factor100.0000001"
    # Keys that do not decide the numbers stay out of the name.
    assert run_name(train_cfg({"tracking.plots": False, "reference": True})) == "h32-lr0.001-s0"


CHOICES = {
    "model.backprop": ["tutorial", "exact"],
    "model.dtype": ["float32", "float64"],
    "train.epochs": [1, 101, 2000],
    "data.features": [[0, 1], [2, 3]],
    "optim.lr": [0.001, 0.0010000001, 0.1, 1000.0],
    "train.diverge_factor": [100.0, 100.0000001, 50.0],
    "seed": [0, 1, 2],
}


@given(
    config=st.fixed_dictionaries({k: st.sampled_from(v) for k, v in CHOICES.items()}),
    change=st.sampled_from([(k, v) for k, values in CHOICES.items() for v in values]),
)
@settings(max_examples=60, deadline=None)
def test_runs_that_compute_differently_are_named_apart(config, change) -> None:
    """A config and the same with one value set (maybe to what it was): the names differ
    exactly when the numbers may (the fingerprints)."""
    first, second = train_cfg(config), train_cfg(config | dict([change]))
    same_numbers = fingerprint(first) == fingerprint(second)
    assert (run_name(first) == run_name(second)) == same_numbers
