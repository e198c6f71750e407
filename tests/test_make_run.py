"""`make run`, the README's first command, as a user runs it: in a copy of the checkout, so
its embedded store (mlruns/ at the project root) and output folders are the copy's."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fnnlab.config import project_root

VENV = Path(sys.executable).parent.parent
# What a checkout holds besides its tracked files: not copied, so the copy starts clean.
NOT_COPIED = shutil.ignore_patterns(
    ".venv",
    ".git",
    ".pytest_cache",
    ".hypothesis",
    "mlruns",
    "outputs",
    "multirun",
    "results",
    "__pycache__",
    "*.egg-info",
)


@pytest.mark.slow
def test_make_run_trains_the_reference_and_a_sweep_and_answers(tmp_path: Path) -> None:
    copy = tmp_path / "checkout"
    shutil.copytree(project_root(), copy, ignore=NOT_COPIED)
    env = {**os.environ, "PYTHONPATH": str(copy / "src")}  # fnnlab from the copy: its root
    env.pop("HYDRA_FULL_ERROR", None)
    # This venv, never reinstalled (-o: its stamp counts as up to date): the test checks
    # what make run does after its set-up, which CI's own `make test` has just done.
    argv = ["make", "--no-print-directory", "-C", str(copy), "run", f"VENV={VENV}"]
    argv += ["-o", str(VENV / ".installed-stamp")]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert any(line.startswith("leader: hidden_dim=") for line in out), proc.stdout[-3000:]
    wrote = [line for line in out if line.startswith("wrote 11 files to ")]
    assert len(wrote) == 1 and wrote[0].endswith(", logged on the parent run"), wrote
    answer = Path(wrote[0].removeprefix("wrote 11 files to ").split(",")[0])
    assert answer.is_relative_to(copy / "outputs" / "aggregate")
    assert (answer / "report.md").read_text().startswith("#")

    with sqlite3.connect(copy / "mlruns" / "mlflow.db") as db:
        runs = db.execute(
            "SELECT e.name, t.value, r.status FROM runs r JOIN experiments e"
            " ON r.experiment_id = e.experiment_id"
            " JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'role'"
        ).fetchall()
        deviation = db.execute(
            "SELECT value FROM latest_metrics WHERE key = 'reference/max_abs_dev'"
        ).fetchall()
        leader = db.execute("SELECT value FROM tags WHERE key = 'aggregate.leader'").fetchall()
        git = db.execute(
            "SELECT DISTINCT key, value FROM tags WHERE key IN ('env.git_commit', 'env.git_dirty')"
        ).fetchall()
    roles = sorted((name, role) for name, role, _ in runs)
    assert roles == [("fnnlab", "job")] * 30 + [("fnnlab", "sweep"), ("reference", "job")]
    assert {status for _, _, status in runs} == {"FINISHED"}
    # The published curve, reproduced to 1e-6.
    assert len(deviation) == 1 and deviation[0][0] <= 1e-6
    assert len(leader) == 1 and leader[0][0].startswith("hidden_dim=")
    # The copy is no git checkout: it said "false", as if a checkout were clean.
    assert sorted(git) == [("env.git_commit", "none"), ("env.git_dirty", "unknown")]
