"""The fnnlab launcher trains jobs of one shape together (fnnlab.population): every job is
still its own Hydra job and run, with exactly the numbers it gets trained alone; a failing
member fails only its run; an interrupt mid-group leaves complete runs FINISHED, the one in
flight KILLED, and a rerun completes the sweep."""

from __future__ import annotations

import re

import pytest
from conftest import (
    OTHER_APP_CONFIG,
    compose_train,
    run_command,
    run_in_process,
    run_other_app,
    run_script,
)
from omegaconf import OmegaConf

from fnnlab import cli, config, job, population
from hydra_plugins.fnnlab import _core

# 60 jobs: both modes and dtypes, learning rates that converge, oscillate and diverge.
SWEEP = [
    "model.backprop=tutorial,exact",
    "model.dtype=float32,float64",
    "optim.lr=0.1,1,1000",
    "seed=range(5)",
    "train.epochs=40",
    "tracking.plots=false",
]
TOGETHER = re.compile(r"Training jobs ((?:#\d+(?:, )?)+) together")


def test_groups_are_jobs_of_one_shape_in_order():
    configs = [
        compose_train(overrides)
        for overrides in (
            ["seed=0"],
            ["seed=1", "optim.lr=0.5"],
            ["model.hidden_dim=8"],
            ["seed=2", "model.backprop=exact"],
            ["seed=3"],
            ["model.hidden_dim=8", "seed=4"],
            ["optim.lr=-1"],  # fails its checks: alone
        )
    ]
    configs.append(OmegaConf.create({"db": {"driver": "mysql"}}))  # another Hydra app's
    # Another app's, with fnnlab's training sections but not its tracking section.
    configs.append(OmegaConf.create(OTHER_APP_CONFIG))
    # One that reads only in its job (HydraConfig), and one whose store address is not a URL.
    configs.append(compose_train(["seed=${hydra:job.num}"]))
    configs.append(compose_train(["tracking.uri='http://[::1'"]))
    assert population.groups(configs) == [[0, 1, 4], [2, 5], [3], [6], [7], [8], [9], [10]]


def test_a_group_is_as_many_members_as_fit_in_the_memory_limit():
    """limits.memory_gb is checked per run; a group holds each member's history, so it is
    at most as many members as fit within it."""
    long = ["train.epochs=1000000", "limits.memory_gb=1"]
    configs = [compose_train([f"seed={s}", *long]) for s in range(5)]
    assert config.members_within_memory(configs[0]) == 2
    assert population.groups(configs) == [[0, 1], [2, 3], [4]]
    configs = [compose_train([f"seed={s}", "limits.memory_gb=1"]) for s in range(5)]
    assert population.groups(configs) == [[0, 1, 2, 3, 4]]
    endless = ["train.epochs=1000000", "limits.memory_gb=inf"]  # inf: no limit
    configs = [compose_train([f"seed={s}", *endless]) for s in range(5)]
    assert population.groups(configs) == [[0, 1, 2, 3, 4]]
    # One that passes the check but has no room for a second member trains alone.
    alone = ["train.epochs=2000000", "limits.memory_gb=1"]
    configs = [compose_train([f"seed={s}", *alone]) for s in range(2)]
    assert population.groups(configs) == [[0], [1]]


@pytest.mark.slow
def test_jobs_the_launcher_cannot_group_run_as_with_hydras_launcher(store, monkeypatch, tmp_path):
    """Jobs run alone, as with Hydra's basic launcher: another app's, and fnnlab-train's
    with a seed that reads the job's number (${hydra:job.num} resolves only in the job)."""
    proc = run_other_app(tmp_path, "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-2:] == ["job 0 0.1", "job 1 0.1"]

    args = ["-m", "seed=${hydra:job.num}", "optim.lr=0.1,0.2", "train.epochs=20"]
    args += ["~hydra.callbacks.sweep", "tracking.plots=false", *store.overrides()]
    assert run_in_process(monkeypatch, cli.train, *args) == 0
    runs = store.runs("tags.role = 'job'")
    assert sorted((r.data.params["seed"], r.info.status) for r in runs) == [
        ("0", "FINISHED"),
        ("1", "FINISHED"),
    ]


def test_a_member_trained_together_has_the_history_it_has_alone():
    configs = [compose_train([f"seed={s}", f"optim.lr={lr}"]) for s, lr in [(0, 0.1), (1, 5)]]
    together = population.fit_configs(configs)
    for cfg, history in zip(configs, together, strict=True):
        alone = job.train_model(cfg)
        assert history.metrics.keys() == alone.metrics.keys()
        for key in alone.metrics:
            assert history.metrics[key].tobytes() == alone.metrics[key].tobytes(), key
        assert history.w1.numpy().tobytes() == alone.w1.numpy().tobytes()
    with population.trained_together(configs):
        assert population.take(configs[1]) is not None
        assert population.take(configs[1]) is None  # taken once: a second job trains anew
    assert population.take(configs[0]) is None  # outside the group


def test_batches_split_jobs_of_the_same_other_overrides_evenly():
    jobs = [
        (i, [f"model.hidden_dim={w}", f"seed={s}", f"optim.lr={lr}"])
        for i, (w, s, lr) in enumerate(
            (w, s, lr) for w in (8, 16) for s in range(5) for lr in (1, 2)
        )
    ]
    jobs.append((20, ["model.hidden_dim=8", "+seed=9"]))  # seed added, still a member key
    sizes = [[len(b) for b in _core.batches(jobs, size)] for size in (64, 10, 4, 1)]
    assert sizes == [[11, 10], [6, 5, 10], [4, 4, 3, 4, 3, 3], [1] * 21]
    for size in (64, 4):
        batched = _core.batches(jobs, size)
        assert sorted(j for b in batched for j in b) == jobs
        for batch in batched:  # in the order of the launch within a batch
            assert [i for i, _ in batch] == sorted(i for i, _ in batch)
            assert len({o[0] for _, o in batch}) == 1  # one width


@pytest.mark.parametrize(
    "max_members, jobs, n, size",
    [(64, 60, 1, 64), (64, 60, 2, 15), (64, 1000, 2, 64), (8, 60, 2, 8), (64, 3, 2, 1)],
)
def test_batch_size_gives_each_worker_about_two_batches(max_members, jobs, n, size):
    assert _core.batch_size(max_members, jobs, n) == size


def together(out: str) -> list[list[int]]:
    return [[int(n) for n in re.findall(r"\d+", m[1])] for m in TOGETHER.finditer(out)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher", [[], ["hydra.launcher.n_jobs=2"]], ids=["in-process", "workers"]
)
def test_a_sweep_trained_in_groups_replays_identical_alone(launcher, store):
    out = run_script("fnnlab-train", "-m", *SWEEP, *launcher, *store.overrides())
    assert out.returncode == 0, out.stderr[-3000:]
    # One group per mode and dtype, of 15 members each (3 learning rates x 5 seeds).
    groups = together(out.stdout + out.stderr)
    assert sorted(len(g) for g in groups) == [15] * 4
    assert sorted(n for g in groups for n in g) == list(range(60))
    runs = store.runs("tags.role = 'job'")
    assert len(runs) == 60 and {r.info.status for r in runs} == {"FINISHED"}
    regimes = {r.data.tags["regime"] for r in runs}
    assert {"diverged", "oscillating"} <= regimes, regimes
    # Every per-epoch value, the stop epoch and the weights of every run, bit for bit the
    # same retrained alone (fnnlab-replay trains one configuration, a population of one).
    replay = run_command(cli.replay, "replay.sweep=latest", *store.overrides())
    assert replay.returncode == 0, replay.stdout[-3000:] + replay.stderr[-3000:]
    count, counts, answer = replay.stdout.strip().splitlines()[-3:]
    assert count.startswith("replayed 60 runs: 60 identical, 0 differ")
    assert counts.startswith("the sweep's counts (parent run ") and counts.endswith(": identical")
    assert answer.startswith("the sweep's answer (parent run ") and answer.endswith(": identical")


@pytest.mark.slow
def test_a_member_whose_tracking_fails_fails_only_its_run(store, monkeypatch):
    real = job.write_files

    def fail_one(history, cfg, *args, **kwargs):
        if cfg.seed == 1:
            raise RuntimeError("injected fault")
        return real(history, cfg, *args, **kwargs)

    monkeypatch.setattr(job, "write_files", fail_one)
    args = ["-m", "seed=0,1,2", "train.epochs=20", "tracking.plots=false", *store.overrides()]
    assert run_in_process(monkeypatch, cli.train, *args) == 1
    by_seed = {r.data.params["seed"]: r for r in store.runs("tags.role = 'job'")}
    assert {s: r.info.status for s, r in by_seed.items()} == {
        "0": "FINISHED",
        "1": "FAILED",
        "2": "FINISHED",
    }
    assert by_seed["1"].data.tags["error"] == "RuntimeError: injected fault"


@pytest.mark.slow
def test_an_interrupt_mid_group_then_a_rerun(store, monkeypatch):
    real = job.write_files

    def interrupt_second(history, cfg, *args, **kwargs):
        if cfg.seed == 1:
            raise KeyboardInterrupt
        return real(history, cfg, *args, **kwargs)

    monkeypatch.setattr(job, "write_files", interrupt_second)
    args = ["-m", "seed=0,1,2", "train.epochs=20", "tracking.plots=false", *store.overrides()]
    assert run_in_process(monkeypatch, cli.train, *args) == 130
    statuses = {r.data.params["seed"]: r.info.status for r in store.runs("tags.role = 'job'")}
    assert statuses == {"0": "FINISHED", "1": "KILLED"}  # seed 2's job never started
    # (The parent ends KILLED at the process's exit: tests/test_sweep.py, by SIGTERM.)

    monkeypatch.setattr(job, "write_files", real)
    assert run_in_process(monkeypatch, cli.train, *args) == 0
    finished = store.runs("tags.role = 'job' and attributes.status = 'FINISHED'")
    assert sorted(r.data.params["seed"] for r in finished) == ["0", "1", "2"]
