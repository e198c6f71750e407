"""A sweep ends with its answer: on the terminal, on the parent run (description, files,
tags), with links on the UI's port; and fnnlab-ui refuses a port something else holds."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest
from conftest import TmpStore, run_command, run_script
from test_sweep import artifact_paths

from fnnlab import cli

pytestmark = pytest.mark.slow

SWEEP = [
    "-m",
    "model.hidden_dim=4,8",
    "optim.lr=0.05,0.5",
    "seed=0,1,2",
    "train.epochs=30",
    "tracking.plots=false",
]


def parent_of(store: TmpStore):
    (parent,) = store.runs("tags.role = 'sweep'")
    return parent


def test_sweep_ends_with_its_answer_and_links_on_the_ui_port(store: TmpStore) -> None:
    out = run_command(cli.train, *SWEEP, "ui.port=5123", *store.overrides())
    assert out.returncode == 0, out.stderr[-3000:]
    parent = parent_of(store)
    pid, exp = parent.info.run_id, parent.info.experiment_id
    lines = out.stdout.strip().splitlines()
    # Every run line points at the UI's port.
    run_links = [line for line in lines if re.match(r"h\d+-lr[\d.]+-s\d-epochs30: loss ", line)]
    assert len(run_links) == 12
    assert all(" http://127.0.0.1:5123/#/experiments/" in line for line in run_links)
    # After the closing line: the table, the leader and its ties, the boundary, the links.
    done = next(i for i, line in enumerate(lines) if " done in " in line)
    answer = lines[done + 1 :]
    text = "\n".join(answer)
    assert re.search(r"^ hidden_dim +lr +n +mean tail_loss \[95% CI, Bonferroni\]", text, re.M), (
        text
    )
    leader = parent.data.tags["aggregate.leader"]
    assert leader and f"leader: {leader}:" in text
    assert "stability boundary" in text and "tied with the leader:" in text
    urls = dict(
        re.match(r"^(.+?): +(http\S+)$", line).groups() for line in answer if "http" in line
    )
    assert urls["parent run"] == (
        f"http://127.0.0.1:5123/#/experiments/{exp}/runs/{pid}?workflowType=machine_learning"
    )
    assert urls["report"].endswith(
        f"/runs/{pid}/artifacts/aggregate/report.html?workflowType=machine_learning"
    )
    assert "y_axis_scale=log" in urls["gradient norms"]
    assert {"side by side", "loss curves"} <= set(urls)
    assert answer[-1].startswith("to see mean and range per configuration")
    # The parent run: the answer as its description, the files, rounded metrics.
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"### leader: {leader}:")
    assert "| hidden_dim | lr=0.05 | lr=0.5 |" in note and "n=3" in note
    assert f"[report]({urls['report']})" in note
    files = artifact_paths(store.client, pid, "aggregate")
    assert {"aggregate/report.html", "aggregate/comparison.csv", "aggregate/report.md"} <= files
    html = store.client.download_artifacts(pid, "aggregate/report.html")
    assert "data:image/png;base64," in open(html).read()
    mean = parent.data.metrics["aggregate/leader_mean"]
    assert mean == float(f"{mean:.4g}")

    # Run again: nothing left to run, and the answer is about all 12 runs.
    # The later command in a process of its own: what it reuses must be the same across
    # processes, not only within one (helper-51).
    again = run_script("fnnlab-train", *SWEEP, "ui.port=5123", *store.overrides())
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"leader: {leader}:" in again.stdout
    assert parent_of(store).data.metrics["aggregate/runs"] == 12


def test_summarize_false_logs_no_answer(store: TmpStore) -> None:
    fnnlab = run_command(cli.train, *SWEEP, "hydra.sweeper.summarize=false", *store.overrides())
    assert fnnlab.returncode == 0, fnnlab.stderr[-3000:]
    basic = run_command(
        cli.train,
        "-m",
        "hydra/sweeper=basic",
        "model.hidden_dim=4",
        "seed=0,1",
        "train.epochs=5",
        "hydra.callbacks.sweep.summarize=false",
        *store.overrides(),
    )
    assert basic.returncode == 0, basic.stderr[-3000:]
    for out in (fnnlab, basic):
        assert "leader" not in out.stdout and " done in " in out.stdout
    parents = store.runs("tags.role = 'sweep'")
    assert len(parents) == 2
    for parent in parents:
        assert not artifact_paths(store.client, parent.info.run_id)
        assert not any(k.startswith("aggregate") for k in parent.data.tags)


# Forks at once: a child that inherited an import lock held by the prefetch thread would hang
# importing the modules (the alarm ends it); one that forked after the thread's end has them.
FORK_WHILE_PREFETCHING = """
import os, signal, sys
from fnnlab import sweep
sweep.prefetch_answer()
pid = os.fork()
if pid == 0:
    signal.alarm(60)
    complete = hasattr(sys.modules.get("fnnlab.report"), "publish")
    from fnnlab import aggregate, report
    os._exit(0 if complete else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_fork_while_the_answer_imports_waits_for_the_import() -> None:
    """The answer's modules are imported in a thread while the jobs run; a launcher that
    forks its workers then (say joblib's multiprocessing backend) gets children that have
    them whole, not children that wait for an import lock no thread of theirs holds."""
    out = subprocess.run(
        [sys.executable, "-c", FORK_WHILE_PREFETCHING], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_ui_refuses_a_port_something_else_listens_on(store: TmpStore) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        out = run_script("fnnlab-ui", f"ui.port={port}", *store.overrides())
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"fnnlab-ui: error: ui.port={port}: something already listens on 127.0.0.1:{port}; "
        "stop it, or choose another port (ui.port=0: any free one)"
    ]
    assert out.stdout == ""
