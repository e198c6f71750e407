"""Training alone, three ways: today's fit one run at a time, the population fit one run at a
time (a population of one), and the population fit with every member at once.

A sweep of 20 members (5 seeds x 4 learning rates 0.001, 0.003, 0.01, 0.03, tutorial update,
float32) per width, 101 epochs at widths 8, 32 and 128 and 2000 epochs at widths 8 and 32.
"Legacy" is fit and ScratchFNN as of commit baa099b (before populations), loaded from git.
Each way is timed --repeat times (3) and the best is shown: the machine is shared, and other
work only makes a way slower. One intra-op thread, as the launcher runs jobs. The one-by-one
ways time the first members only (all 20 at 101 epochs, 2 at 2000) to stay short;
every member costs the same, as none of these diverges. ms per member-run = time / runs.

The population's members are checked against the same members trained alone: equal bit for
bit, every metric and the final weights.

--groups instead times fit_population on one population of 32 members (10 epochs) trained
in groups of 1 to 32 members, at widths 128, 512 and 1024: the measurements behind
fnnlab.train._GROUP_BYTES.

Usage: python benchmarks/population_fit.py [--repeat 3] [--groups]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from fnnlab import train
from fnnlab.data import load_iris2
from fnnlab.model import ScratchFNN
from fnnlab.train import fit, fit_population

LEGACY_COMMIT = "baa099b"
SEEDS = range(5)
LRS = (0.001, 0.003, 0.01, 0.03)
CASES = [(8, 101, 20), (32, 101, 20), (128, 101, 20), (8, 2000, 2), (32, 2000, 2)]


def legacy_modules() -> tuple[type, object]:
    """(ScratchFNN, fit) as they were at LEGACY_COMMIT, from git, as modules of their own."""
    root = Path(__file__).resolve().parent.parent

    def source(path: str) -> str:
        cmd = ["git", "-C", str(root), "show", f"{LEGACY_COMMIT}:{path}"]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    def load(name: str, text: str) -> types.ModuleType:
        module = sys.modules[name] = types.ModuleType(name)  # dataclasses look it up there
        exec(compile(text, f"{name}.py", "exec"), module.__dict__)
        return module

    model = load("legacy_model", source("src/fnnlab/model.py"))
    text = source("src/fnnlab/train.py").replace("from fnnlab.model ", "from legacy_model ")
    return model.ScratchFNN, load("legacy_train", text).fit


def best_of(repeat: int, run) -> tuple[float, object]:
    """The shortest of `repeat` runs' seconds, and what the last run returned."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def groups(repeat: int) -> None:
    """us per member-epoch of 32 members trained in groups of each size."""
    X, y = load_iris2()
    members, epochs, sizes = 32, 10, (1, 2, 4, 8, 16, 32)
    print(f"us per member-epoch, {members} members, {epochs} epochs, best of {repeat}, by group")
    print(f"{'width':>5} " + " ".join(f"{size:>9}" for size in sizes))
    for width in (128, 512, 1024):
        cells = []
        for size in sizes:
            train._GROUP_BYTES = size * 100 * width * 4  # float32: `size` members a group

            def run(width=width):
                model = ScratchFNN(2, width, seed=range(members))
                fit_population(model, X, y, [0.01] * members, epochs)

            cells.append(best_of(repeat, run)[0] * 1e6 / (members * epochs))
        print(f"{width:>5} " + " ".join(f"{cell:>9.0f}" for cell in cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--groups", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.groups:
        groups(args.repeat)
        return
    LegacyFNN, legacy_fit = legacy_modules()
    X, y = load_iris2()
    members = [(seed, lr) for seed in SEEDS for lr in LRS]
    seeds, lrs = [s for s, _ in members], [lr for _, lr in members]
    # First-call costs (allocator, dispatch) out of the way.
    legacy_fit(LegacyFNN(2, 8, seed=0), X, y, 0.01, 10)
    fit_population(ScratchFNN(2, 8, seed=seeds), X, y, lrs, 10)

    print(f"ms per member-run, best of {args.repeat}, 1 thread, {len(members)} members")
    header = f"{'width':>5} {'epochs':>6} {'legacy':>9} {'alone':>9} {'together':>9}"
    print(f"{header} {'legacy/together':>16} {'alone/together':>15}  same numbers")
    for width, epochs, alone_n in CASES:
        some = members[:alone_n]

        def legacy(width=width, epochs=epochs, some=some):
            for seed, lr in some:
                legacy_fit(LegacyFNN(2, width, seed=seed), X, y, lr, epochs)

        def alone(width=width, epochs=epochs, some=some):
            return [fit(ScratchFNN(2, width, seed=s), X, y, lr, epochs) for s, lr in some]

        def together(width=width, epochs=epochs):
            return fit_population(ScratchFNN(2, width, seed=seeds), X, y, lrs, epochs)

        t_legacy = best_of(args.repeat, legacy)[0] * 1000 / alone_n
        t_alone, by_one = best_of(args.repeat, alone)
        t_together, all_at_once = best_of(args.repeat, together)
        t_alone, t_together = t_alone * 1000 / alone_n, t_together * 1000 / len(members)
        same = all(
            all(np.array_equal(a.metrics[k], b.metrics[k]) for k in a.metrics)
            and torch.equal(a.w1, b.w1)
            and torch.equal(a.w2, b.w2)
            for a, b in zip(by_one, all_at_once, strict=False)  # the first alone_n members
        )
        print(
            f"{width:>5} {epochs:>6} {t_legacy:>9.2f} {t_alone:>9.2f} {t_together:>9.2f}"
            f" {t_legacy / t_together:>15.1f}x {t_alone / t_together:>14.1f}x  {same}",
            flush=True,
        )


if __name__ == "__main__":
    main()
