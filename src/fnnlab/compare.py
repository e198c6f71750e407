"""Statistics over a sweep's seeds: configuration comparisons and stability boundaries.

Pure functions on numpy arrays and pandas frames (no store, no torch; a run's outcome and
regime are fnnlab.outcome's), so the report can be recomputed from any table of runs and
every rule here is testable on simulated data.

Comparison. The leader is the configuration with the best mean outcome among those with at least
two finite outcomes, among those that lost the smallest share of their runs to divergence
(as a rule none). Every other such
configuration is compared with it by a paired t-test over seeds when both have exactly the same
seeds, Welch's t-test otherwise, or a permutation test when a group has no spread, with
Holm's adjustment over every pair of configurations (the leader is chosen from the data, so
its own comparisons are not the whole family). A configuration is "tied" with the leader when the
adjusted p-value is at least alpha or the difference is below a practical margin (1% of the
leader's mean unless given); for a tie that is not explained by the margin, `seeds_needed`
estimates the seeds per configuration a test would need to resolve the observed difference with
the requested power.

Stability boundary. Scanning the swept learning rates upward for one width (and one value of
every other configuration column), the bracket [last good, first bad] around the first learning
rate at which any seed diverged (or, for the oscillation boundary, oscillated or diverged).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fnnlab.outcome import REGIMES

# --- comparisons over seeds -----------------------------------------------------------

# Spreads or differences below this fraction of the data's magnitude are rounding, taken as 0:
# identical runs (and scipy warns of catastrophic cancellation at about 1e-15).
_ROUNDING = 1e-12
MAX_SEEDS = 10_000
_COLUMNS = (
    "n",
    "mean",
    "ci_low",
    "ci_high",
    "diff_vs_leader",
    "diff_ci_low",
    "diff_ci_high",
    "p_adj",
    "leader",
    "tied",
    "seeds_needed",
    "test",
    "p",
    "note",
)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment: controls the family-wise error rate at any dependence.

    Sorted ascending, p_(i) becomes max over j <= i of min(1, (m - j + 1) * p_(j)); the
    result is in the input order.
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, stepped)
    return adjusted


@dataclass
class _Group:
    key: tuple[Any, ...]
    seeds: np.ndarray  # of the finite outcomes
    values: np.ndarray  # finite outcomes
    lost: float  # the share of its runs that diverged

    @property
    def n(self) -> int:
        return int(self.values.size)

    @property
    def unit(self) -> float:
        return _unit(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values / self.unit)) * self.unit if self.n else math.nan


@dataclass
class _Test:
    kind: str  # "paired", "welch" or "permutation"
    diff: float
    p: float
    ci: tuple[float, float]
    identical: bool  # every difference is rounding: the same runs
    sd_diff: float = math.nan  # paired: SD of the per-seed differences
    sds: tuple[float, float] = (math.nan, math.nan)  # welch, permutation: SDs of (other, leader)
    # diff, ci, sd_diff and sds are in units of this (see _unit); p does not depend on it.
    unit: float = 1.0
    drawn: bool = False  # permutation: p from MAX_SPLITS splits drawn, so >= SMALLEST_DRAWN_P


# The unit of no values or only zeros: the smallest, so that a pair's is the other group's.
_NO_UNIT = math.ldexp(1.0, -1074)


def _unit(x: np.ndarray) -> float:
    """A power of two near the largest |x|. The statistics here do not depend on the outcome's
    scale, but squares of values beyond about 1e154 overflow and below 1e-154 vanish: they
    are taken of x / unit (exact, a power of two), and what is in the outcome's units
    multiplied back. Each group and each pair at its own unit (a pair's is the larger of its
    two): one at 1e300 leaves the others' as they were."""
    largest = float(np.max(np.abs(x))) if x.size else 0.0
    if largest == 0:
        return _NO_UNIT
    return math.ldexp(1.0, math.frexp(largest)[1] - 1)


def _constant(x: np.ndarray, scale: float) -> bool:
    """All values equal up to rounding relative to `scale`."""
    return bool(np.ptp(x) <= _ROUNDING * scale)


def _spreadless(x: np.ndarray) -> bool:
    """All values equal up to rounding relative to their largest."""
    return _constant(x, float(np.max(np.abs(x))))


def _mean_ci(x: np.ndarray, confidence: float) -> tuple[float, float]:
    """t-interval of the mean; NaN below 2 and for a constant sample, a coarse outcome (three
    accuracies of 0.99 do not make the mean 0.99 exactly) whose spread says nothing."""
    n = x.size
    if n < 2 or _spreadless(x):
        return math.nan, math.nan
    unit = _unit(x)
    x = x / unit
    mean = float(np.mean(x))
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=np.std(x, ddof=1) / n**0.5)
    return float(low) * unit, float(high) * unit


def _paired_seeds(a: _Group, b: _Group) -> bool:
    """Same set of seeds in both, each once: the runs can be matched seed by seed."""
    return (
        a.n >= 2
        and a.n == b.n
        and np.unique(a.seeds).size == a.n
        and np.unique(b.seeds).size == b.n
        and set(a.seeds.tolist()) == set(b.seeds.tolist())
    )


def _identical(kind: str, diff: float, scale: float) -> _Test | None:
    """The same runs (no spread and no difference beyond rounding): p = 1, CI [0, 0]."""
    if abs(diff) > _ROUNDING * scale:
        return None
    return _Test(kind, diff, 1.0, (0.0, 0.0), True, sd_diff=0.0, sds=(0.0, 0.0))


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


# Exact permutation tests enumerate at most this many splits (7 seeds against 7: 3,432).
MAX_SPLITS = 10_000


def _no_spread(x: np.ndarray, y: np.ndarray, const_x: bool, const_y: bool, diff: float) -> _Test:
    """A group without spread: a t-test takes its spread of 0 as known, so two accuracies of
    0.5 against two of 0.99 would be "certain". Two constant groups get the exact permutation
    test of the difference in means, whose p is 2 / C(n1 + n2, n1) (the observed split and
    its mirror): 1/3 for 2 against 2. One constant group gets the larger p of Welch's limit
    (the other group's one-sample t-test against the constant) and the permutation test, a
    test that rejects only when both do, of any outcome at any number of seeds: Welch's
    limit alone takes 2 or 3 equal seeds' value for the configuration's true one, and equal
    seeds are not only an accuracy's: the losses of dead networks sit at exactly ln 2 (in
    float32) in up to 92% of seeds at large learning rates (helper-71); the permutation test alone
    also rejects for unequal spreads. The permutation test is exact on values on a grid (an
    accuracy's) up to MAX_GRID_CELLS, and on others when the constant lies beyond the other
    group's values (a dead network's ln 2 against losses that fell) or up to MAX_SPLITS
    splits; beyond, that many splits are drawn, whose p is at least 2 / (MAX_SPLITS + 1).
    Kind "permutation": no interval."""
    nan = (math.nan, math.nan)
    # In one order: sums of outcomes equal up to rounding are ties that rounding decides, and
    # then by the order of the seeds (_pair_p_values tests each distinct pair of sets once).
    x, y = np.sort(x), np.sort(y)
    splits = math.comb(x.size + y.size, x.size)
    if const_x and const_y:
        return _Test("permutation", diff, min(1.0, 2 / splits), nan, False, sds=(0.0, 0.0))
    varying, fixed = (y, x) if const_x else (x, y)
    # The varying group at its own unit: at the pair's, its squares may vanish.
    own = _unit(varying)
    constant = float(np.mean(fixed)) / own
    spread = float(np.std(varying / own, ddof=1)) * own
    sds = (0.0, spread) if const_x else (spread, 0.0)
    # A constant beyond 1e308 of the varying group's values: its spread is none at all.
    p_t = 0.0 if math.isinf(constant) else float(stats.ttest_1samp(varying / own, constant).pvalue)
    p_perm = _grid_permutation_p(x, y)
    if p_perm is None:
        p_perm = _extreme_permutation_p(fixed, varying)
    if p_perm is None and splits <= MAX_SPLITS:
        p_perm = stats.permutation_test((x, y), _mean_diff, vectorized=True).pvalue
    drawn = p_perm is None
    if drawn:  # that many splits drawn, the same each time
        p_perm = stats.permutation_test(
            (x, y), _mean_diff, vectorized=True, n_resamples=MAX_SPLITS, rng=_SPLITS_DRAWN
        ).pvalue
    return _Test("permutation", diff, max(p_t, float(p_perm)), nan, False, sds=sds, drawn=drawn)


def _extreme_permutation_p(fixed: np.ndarray, varying: np.ndarray) -> float | None:
    """The exact two-sided permutation p of the difference in means when the constant
    group's value lies at or beyond every value of the other group (as scipy's
    permutation_test defines it: twice the smaller tail, at most 1), else None. Its split
    is then the most extreme: as extreme are only the splits that give the constant group's
    n seeds values equal to it, C(k, n) of the C(N, n) splits for the k equal ones (its own
    and the other group's equal to it up to rounding)."""
    constant = float(fixed[0])
    tie = _ROUNDING * max(abs(constant), float(np.max(np.abs(varying))))
    above, below = varying > constant + tie, varying < constant - tie
    if above.any() and below.any():
        return None
    n, equal = fixed.size, fixed.size + int(np.count_nonzero(~(above | below)))
    return min(1.0, 2 * math.comb(equal, n) / math.comb(fixed.size + varying.size, n))


# The smallest p of MAX_SPLITS splits drawn (scipy counts the observed split among them).
SMALLEST_DRAWN_P = 2 / (MAX_SPLITS + 1)
# The seed of the splits drawn when there are too many to count: fixed, so an answer made
# again is the same.
_SPLITS_DRAWN = 0
# The most cells (seeds taken x sums) of _grid_permutation_p's table: 16 MB.
MAX_GRID_CELLS = 2_000_000


def _grid_permutation_p(x: np.ndarray, y: np.ndarray) -> float | None:
    """The exact two-sided permutation p of the difference in means, as scipy's
    permutation_test defines it (twice the smaller tail, at most 1), when the values lie on
    a grid (an accuracy's steps of 1/100): a split's sum is then a whole number of steps, its
    distribution is built one value at a time (how many of a value's copies the smaller
    group takes is hypergeometric, scipy), and sums equal but for rounding (0.98 + 1.0 and
    0.99 + 0.99) are the same sum. None off a grid or beyond MAX_GRID_CELLS (about 140
    seeds in the smaller group, of accuracies spread from 0 to 1)."""
    small, other = (x, y) if x.size <= y.size else (y, x)
    values, counts = np.unique(np.concatenate([small, other]), return_counts=True)
    with np.errstate(over="ignore"):  # values 1e300 apart in steps of 1e-10: no grid
        steps = (values - values[0]) / np.min(np.diff(values))
    if not steps[-1] * small.size < MAX_GRID_CELLS:
        return None
    scale = next(
        (k for k in range(1, 101) if np.all(np.abs(steps * k - np.round(steps * k)) < 1e-6)),
        None,
    )
    if scale is None:
        return None
    step = np.round(steps * scale).astype(int)
    n, width = small.size, small.size * int(step[-1]) + 1
    if (n + 1) * width > MAX_GRID_CELLS:
        return None
    # dist[j, s]: the chance that the values so far put j seeds, summing to s steps, into
    # the smaller group.
    dist = np.zeros((n + 1, width))
    dist[0, 0] = 1.0
    left = int(counts.sum())
    for at, count in zip(step.tolist(), counts.tolist(), strict=True):
        new = np.zeros_like(dist)
        for j in np.flatnonzero(dist.any(axis=1)):
            takes = np.arange(min(count, n - j) + 1)
            for k, p in zip(takes, stats.hypergeom.pmf(takes, left, count, n - j), strict=True):
                new[j + k, k * at :] += p * dist[j, : width - k * at]
        dist, left = new, left - count
    observed = int(step[np.searchsorted(values, small)].sum())
    sums = dist[n]
    less, greater = sums[: observed + 1].sum(), sums[observed:].sum()
    return float(min(1.0, 2 * min(less, greater)))


def _welch(x: np.ndarray, y: np.ndarray, confidence: float) -> _Test:
    res = stats.ttest_ind(x, y, equal_var=False)
    low, high = res.confidence_interval(confidence)
    sds = (float(np.std(x, ddof=1)), float(np.std(y, ddof=1)))
    diff = float(np.mean(x) - np.mean(y))
    return _Test("welch", diff, float(res.pvalue), (float(low), float(high)), False, sds=sds)


def _test(other: _Group, leader: _Group, confidence: float, coarse: bool = False) -> _Test:
    """other minus leader: paired by seed when possible, Welch otherwise; a permutation test
    when a group has no spread. At the pair's unit (see _unit); whether a group has spread at
    its own (at the pair's, a group 1e-200 of the other's would have none)."""
    unit = max(other.unit, leader.unit)
    test = _test_at_unit(
        replace(other, values=other.values / unit),
        replace(leader, values=leader.values / unit),
        confidence,
        *(_spreadless(g.values / g.unit) for g in (other, leader)),
        coarse,
    )
    test.unit = unit
    return test


def _test_at_unit(
    other: _Group, leader: _Group, confidence: float, const_x: bool, const_y: bool, coarse: bool
) -> _Test:
    scale = max(float(np.max(np.abs(other.values))), float(np.max(np.abs(leader.values))))
    x, y = other.values, leader.values
    diff = float(np.mean(x) - np.mean(y))
    paired = _paired_seeds(other, leader)
    if paired:
        x = x[np.argsort(other.seeds, kind="stable")]
        y = y[np.argsort(leader.seeds, kind="stable")]
    # Equal constants are a coarse outcome's (every seed 0.99), not the same runs: the exact
    # test of two such groups, p = 1, no interval.
    if const_x and const_y and abs(diff) <= _ROUNDING * scale:
        return _Test("permutation", diff, 1.0, (math.nan, math.nan), False, sds=(0.0, 0.0))
    # Only groups that both have spread can be the same runs: a test with one constant group
    # depends on the values alone, not on which seed gave which. A coarse outcome's equal
    # values seed by seed (two accuracies of 0.98, 0.99, 0.97) are not the same runs either.
    if not (const_x or const_y or coarse) and paired and _constant(x - y, scale):
        same = _identical("paired", diff, scale)
        if same:
            return same
    if const_x or const_y:
        return _no_spread(x, y, const_x, const_y, diff)
    if paired and not _constant(x - y, scale):
        res = stats.ttest_rel(x, y)
        low, high = res.confidence_interval(confidence)
        sd = float(np.std(x - y, ddof=1))
        return _Test("paired", diff, float(res.pvalue), (float(low), float(high)), False, sd)
    # Constant per-seed differences leave the paired test no spread; the groups have some.
    return _welch(x, y, confidence)


def _pair_p_values(
    groups: list[_Group], pairs: list[tuple[int, int]], coarse: bool = False
) -> np.ndarray:
    """The p-value _test gives each pair (i, j), the common cases vectorised: paired t-tests
    of configurations with the same seeds, one scipy call per set of seeds, and Welch's tests
    of the others from their means and spreads; pairs with a constant group one by one. A
    sweep of k configurations has k(k - 1)/2 pairs."""
    p = np.full(len(pairs), np.nan)
    keys, values, spread = [], [], []
    # Each group's values at its own unit; a pair's tests at the larger of its two (_unit).
    unit = np.array([g.unit for g in groups])
    for g in groups:
        order = np.argsort(g.seeds, kind="stable")
        unique = g.n >= 2 and np.unique(g.seeds).size == g.n
        keys.append(tuple(g.seeds[order].tolist()) if unique else None)
        values.append(g.values[order] / g.unit)
        spread.append(g.n >= 2 and not _spreadless(values[-1]))
    batch: dict[tuple[Any, ...], list[int]] = {}
    welch = []
    for k, (i, j) in enumerate(pairs):
        if not (spread[i] and spread[j]):
            continue
        if keys[i] is not None and keys[i] == keys[j]:
            batch.setdefault(keys[i], []).append(k)
        else:
            welch.append(k)
    for ks in batch.values():
        i, j = (np.array([pairs[k][side] for k in ks]) for side in (0, 1))
        at = np.maximum(unit[i], unit[j])[:, None]
        a = np.stack([values[k] for k in i]) * (unit[i][:, None] / at)
        b = np.stack([values[k] for k in j]) * (unit[j][:, None] / at)
        scale = np.maximum(np.abs(a).max(axis=1), np.abs(b).max(axis=1))
        varies = np.ptp(a - b, axis=1) > _ROUNDING * scale
        if varies.any():
            p[np.asarray(ks)[varies]] = stats.ttest_rel(a[varies], b[varies], axis=1).pvalue
    if welch:
        i, j = (np.array([pairs[k][side] for k in welch]) for side in (0, 1))
        mean = np.array([float(np.mean(v)) if v.size > 1 else math.nan for v in values])
        sd = np.array([float(np.std(v, ddof=1)) if v.size > 1 else math.nan for v in values])
        n = np.array([v.size for v in values])
        at = np.maximum(unit[i], unit[j])
        fi, fj = unit[i] / at, unit[j] / at
        res = stats.ttest_ind_from_stats(
            mean[i] * fi, sd[i] * fi, n[i], mean[j] * fj, sd[j] * fj, n[j], equal_var=False
        )
        p[np.asarray(welch)] = res.pvalue
    # The rest one by one. With a constant group the test depends only on the two groups'
    # values (not their order or seeds), and coarse outcomes repeat them: computed once each.
    known: dict[tuple[bytes, bytes], float] = {}
    for k in np.flatnonzero(np.isnan(p)):
        i, j = pairs[k]
        if spread[i] and spread[j]:  # constant per-seed differences
            p[k] = _test(groups[i], groups[j], 0.95, coarse).p
            continue
        key = (np.sort(groups[i].values).tobytes(), np.sort(groups[j].values).tobytes())
        if key not in known:
            # As a comparison with the leader is: a coarse outcome's test (helper-70).
            known[key] = _test(groups[i], groups[j], 0.95, coarse).p
        p[k] = known[key]
    return p


def smallest_permutation_p(n: int) -> float:
    """The two-sided p of the exact permutation test for two constant groups of n seeds each:
    2 of the C(2n, n) splits (the observed one and its mirror), its smallest p at that n."""
    return 2.0 / math.comb(2 * n, n)


def _power(n: int, test: _Test, alpha: float) -> float:
    """Power of the two-sided level-alpha t-test with n seeds per configuration, if the true
    difference and spread were the observed ones."""
    if test.kind == "paired":
        df = n - 1.0
        nc = abs(test.diff) / test.sd_diff * math.sqrt(n)
    else:  # Welch's, also taken for a permutation test with one constant group
        # Variances relative to the larger: squares of tiny spreads would underflow to 0.
        larger = max(test.sds)
        v1, v2 = (test.sds[0] / larger) ** 2, (test.sds[1] / larger) ** 2
        df = (n - 1.0) * (v1 + v2) ** 2 / (v1**2 + v2**2)  # Welch-Satterthwaite, n per group
        nc = abs(test.diff) / larger / math.sqrt((v1 + v2) / n)
    if not math.isfinite(nc):  # a difference beyond any spread the floats can hold
        return 1.0
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    upper = float(stats.nct.sf(crit, df, nc))
    # The wrong-sign tail P(T < -crit), as P(T' > crit) with T' of -nc: scipy's nct.cdf
    # returns NaN for it from nc of about 4 (and a NaN power never reaches the target).
    lower = float(stats.nct.sf(crit, df, -nc))
    return upper + lower


def seeds_needed(test: _Test, alpha: float, power: float) -> int | None:
    """Smallest n in 2..MAX_SEEDS whose power reaches `power`, or None.

    Two constant groups separate as soon as the exact permutation test can (2 / C(2n, n) below
    alpha). With one constant group, the larger n of that and the t-test's, the constant
    group's spread taken as 0."""
    if test.kind != "permutation":
        return _t_seeds(test, alpha, power)
    floor = next((n for n in range(2, MAX_SEEDS + 1) if _log_smallest_p(n) < math.log(alpha)), None)
    if not any(sd > 0 for sd in test.sds):
        return floor
    needed = _t_seeds(test, alpha, power)
    return None if needed is None or floor is None else max(floor, needed)


def _log_smallest_p(n: int) -> float:
    """log of smallest_permutation_p(n), without overflow at large n."""
    return math.log(2) - math.log(math.comb(2 * n, n))


def _t_seeds(test: _Test, alpha: float, power: float) -> int | None:
    """Smallest n in 2..MAX_SEEDS at which the t-test's power reaches `power` (power rises
    with n: doubling, then bisection)."""
    if _power(2, test, alpha) >= power:
        return 2
    low, high = 2, 4
    while _power(high, test, alpha) < power:
        if high >= MAX_SEEDS:
            return None
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:  # power(low) < target <= power(high)
        mid = (low + high) // 2
        if _power(mid, test, alpha) >= power:
            high = mid
        else:
            low = mid
    return high


def _groups(
    runs: pd.DataFrame, config_cols: list[str], seed_col: str, value_col: str
) -> list[_Group]:
    missing = [c for c in [*config_cols, seed_col, value_col, "diverged"] if c not in runs]
    if missing:
        raise KeyError(f"runs has no column(s) {missing}")
    values = pd.to_numeric(runs[value_col], errors="coerce").to_numpy(dtype=float)
    diverged = runs["diverged"].fillna(False).astype(bool).to_numpy()
    seeds = runs[seed_col].to_numpy()
    if config_cols:
        keyed = runs.groupby(config_cols, dropna=False, sort=True).indices
        items = [(k if isinstance(k, tuple) else (k,), idx) for k, idx in keyed.items()]
    else:
        items = [((), np.arange(len(runs)))]
    out = []
    for key, idx in items:
        finite = np.isfinite(values[idx])
        out.append(
            _Group(key, seeds[idx][finite], values[idx][finite], float(diverged[idx].mean()))
        )
    return out


def compare(
    runs: pd.DataFrame,
    config_cols: list[str],
    *,
    seed_col: str = "seed",
    value_col: str = "outcome",
    higher_is_better: bool = False,
    alpha: float = 0.05,
    min_effect: float | None = None,
    power: float = 0.8,
    coarse: bool = False,
) -> pd.DataFrame:
    """One row per configuration: its mean outcome over seeds and how it compares with the
    leader's.

    `runs` has one row per run: the config columns, the seed, the outcome (NaN for a run
    without one: diverged or failed) and a boolean `diverged`. `ci_low`/`ci_high` is the
    t-interval of the mean at confidence 1 - alpha / k for the k configurations with 2 or
    more finite outcomes (Bonferroni: together they cover every mean at 1 - alpha, so the
    leader's too, which the data chose; at 1 - alpha each, the best of several equal
    configurations' interval missed its mean more often than alpha). `diff_ci_*`, for this
    mean minus the leader's, comes from the same test that gives `p`, at confidence
    1 - alpha / m for the m pairs of configurations with 2 or more finite outcomes
    (Bonferroni: together they cover every pair's difference at 1 - alpha, so the leader's
    too, which the data chose); it excludes 0 exactly when p < alpha / m. `p_adj` is
    Holm-adjusted over the p-values of those m pairs (each pair tested as a comparison with
    the leader is).

    tied = p_adj >= alpha or |diff_vs_leader| < margin, with margin = min_effect, or 1% of
    the leader's |mean| when None (min_effect=0: no margin). `tied` is False for the leader
    and NA where nothing can be claimed (fewer than 2 finite outcomes, or no leader). A
    leader needs a configuration it is compared with: when only one has 2 or more finite
    outcomes there is none (its note: ONLY_ONE).
    `seeds_needed` (per configuration) is given only for ties not explained by the margin:
    the seeds at which a level-alpha test would detect the observed difference, with the
    observed spread, with probability `power`, at level alpha / m for m pairs (NA beyond
    MAX_SEEDS; the note says so): what the observed difference would need if it were the
    true one. Under no true difference a tie still gets one, and that many seeds separate
    it about alpha of the time. An interval that excludes 0 is a difference Holm's
    adjusted p also finds (Holm rejects whatever Bonferroni does); Holm may find one whose
    interval still holds 0.

    Runs are paired by seed only when both configurations have exactly the same seeds with
    finite outcomes, each once; a configuration that lost one seed is compared by Welch's
    test, which ignores the shared seeds and is then conservative. Spreads below rounding
    (1e-12 of the values) count as none: runs identical seed by seed give p = 1 and CI
    [0, 0]; not with `coarse` (an outcome of few values, such as an accuracy: different runs
    often give equal ones), where they get Welch's test, p = 1 with its interval. A group
    without spread (a coarse outcome such as accuracy: 1.0 for every seed) has
    no interval of its mean and gets a permutation test, exact but for many seeds of values
    on no grid (`test` "permutation", no interval; p = 1 against an equal constant; see
    _no_spread): two constant
    groups of n seeds cannot go below 2 / C(2n, n) (1/3 for 2 against 2;
    `smallest_permutation_p`). Constant per-seed differences between groups with spread leave
    the paired test none: Welch's test is used.
    """
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError("alpha and power must be in (0, 1)")
    # A NaN or negative margin would silently act as none (|diff| < -1 is never true), and
    # True as a margin of 1.
    if min_effect is not None and (
        isinstance(min_effect, bool)
        or not isinstance(min_effect, numbers.Real)
        or not (math.isfinite(min_effect) and min_effect >= 0)
    ):
        raise ValueError(f"min_effect must be a finite number 0 or more, or None: {min_effect}")
    groups = _groups(runs, list(config_cols), seed_col, value_col)
    sign = -1.0 if higher_is_better else 1.0

    eligible = [i for i, g in enumerate(groups) if g.n >= 2]
    confidence = 1 - alpha / max(1, len(eligible))
    # Among those that lost the fewest seeds to divergence (none, as a rule): with every
    # configuration losing some, one whose 2 survivors of 5 did best led, and one that lost 1
    # of 5 was "worse beyond seed noise" (helper-68).
    least = min((groups[i].lost for i in eligible), default=0.0)
    pool = [i for i in eligible if groups[i].lost == least]
    lead = min(pool, key=lambda i: sign * groups[i].mean) if pool else None

    rows: list[dict[str, Any]] = []
    for g in groups:
        low, high = _mean_ci(g.values, confidence)
        rows.append(
            {
                **dict(zip(config_cols, g.key, strict=True)),
                "n": g.n,
                "mean": g.mean,
                "ci_low": low,
                "ci_high": high,
                "diff_vs_leader": math.nan,
                "diff_ci_low": math.nan,
                "diff_ci_high": math.nan,
                "p_adj": math.nan,
                "leader": False,
                "tied": pd.NA,
                "seeds_needed": pd.NA,
                "test": "",
                "p": math.nan,
                "note": "fewer than 2 seeds with an outcome: no claim",
            }
        )
    if lead is None:
        for row in rows:
            row["note"] = "no configuration has 2 seeds with an outcome: no leader, no claim"
        return _frame(rows, config_cols)
    if len(eligible) == 1:
        # Nothing was compared with it: the "best" of one is no leader.
        rows[lead]["note"] = ONLY_ONE
        return _frame(rows, config_cols)

    leader = groups[lead]
    rows[lead].update(diff_vs_leader=0.0, leader=True, tied=False, note="leader")
    margin = abs(leader.mean) * 0.01 if min_effect is None else float(min_effect)
    for i, g in enumerate(groups):
        if i != lead and g.n == 1:
            rows[i]["diff_vs_leader"] = g.mean - leader.mean

    compared = [i for i in eligible if i != lead]
    # The intervals against the leader at 1 - alpha over every pair (Bonferroni): they
    # cover all pairs' differences at once at 1 - alpha, and so the leader's, whichever the
    # data picked. At 1 - alpha each, measured against a leader that is the best of k equal
    # configurations, they held 0 about 0.87 of the time at k = 10.
    joint = 1 - alpha / math.comb(len(eligible), 2)
    tests = {i: _test(groups[i], leader, joint, coarse) for i in compared}
    # The leader is the best of several means, chosen by the data: adjusted over its own
    # comparisons only, equal configurations are called worse than it more often than alpha.
    # Holm over every pair bounds the chance of any false difference at alpha, whichever wins.
    pairs = _pair_p_values(groups, list(combinations(compared, 2)), coarse)
    family = [*(tests[i].p for i in compared), *pairs]
    adjusted = holm(family)[: len(compared)]
    for i, p_adj in zip(compared, adjusted, strict=True):
        t = tests[i]
        diff = t.diff * t.unit
        row = rows[i]
        row.update(
            diff_vs_leader=diff,
            diff_ci_low=t.ci[0] * t.unit,
            diff_ci_high=t.ci[1] * t.unit,
            p_adj=float(p_adj),
            test=t.kind,
            p=t.p,
        )
        below_margin = abs(diff) < margin
        tied = bool(p_adj >= alpha or below_margin)
        row["tied"] = tied
        if t.identical:
            row["note"] = IDENTICAL
        elif not tied:
            # Only a configuration that lost more runs (left out of the leader's pool) can be
            # significantly better than the leader.
            worse = sign * t.diff > 0
            row["note"] = "worse than the leader" if worse else "better, but some runs diverged"
        elif below_margin:
            # Below the margin is no evidence of equality: a wide interval says nothing either
            # way. Either way the seeds to resolve a difference too small to matter are moot.
            significant = p_adj < alpha
            row["note"] = (
                "" if significant else "not significant; "
            ) + "difference below the margin"
        else:
            # At alpha / m: with m pairs Holm's first step tests at that level, so the estimate
            # never promises separation with fewer seeds than the adjusted test needs.
            level = alpha / len(family)
            if t.diff == 0:
                row["note"] = "not significant; no difference observed"
            elif t.drawn and level <= SMALLEST_DRAWN_P:
                # No number of seeds would do while its p is drawn (helper-73).
                row["note"] = (
                    f"not significant; its p, from {MAX_SPLITS} splits drawn, cannot go below "
                    f"{SMALLEST_DRAWN_P:.2g}, nor its adjusted p below alpha"
                )
            elif (needed := seeds_needed(t, level, power)) is None:
                row["note"] = (
                    f"not significant; more than {MAX_SEEDS} seeds for {power:.0%} power "
                    "if the difference is real"
                )
            else:
                row["seeds_needed"] = needed
                row["note"] = (
                    f"not significant; {needed} seeds for {power:.0%} power if the difference "
                    "is real"
                )
    return _frame(rows, config_cols)


def same_mean(a: float, b: float) -> bool:
    """Two means equal to rounding: the same outcomes in another order sum to means 1e-16
    apart."""
    return abs(a - b) <= _ROUNDING * max(abs(a), abs(b))


# The note of a configuration whose outcomes equal the leader's seed by seed (to rounding): the
# same runs, or runs that share an outcome (a best loss that never fell below epoch 0's).
IDENTICAL = "identical to the leader"
ONLY_ONE = "the only configuration with 2 seeds with an outcome: nothing to compare it with"


def _frame(rows: list[dict[str, Any]], config_cols: list[str]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=[*config_cols, *_COLUMNS])
    out["n"] = out["n"].astype(int)
    out["leader"] = out["leader"].astype(bool)
    out["tied"] = out["tied"].astype("boolean")
    out["seeds_needed"] = out["seeds_needed"].astype("Int64")
    for col in ("test", "note"):
        out[col] = out[col].astype(str)
    return out


def leader_label(row: pd.Series | dict[str, Any], config_cols: list[str]) -> str:
    """A configuration as "key=value" pairs separated by spaces, floats as :g (lr=0.001) but
    whole ones in full (hidden_dim=1234567, not 1.23457e+06)."""
    parts = []
    for col in config_cols:
        value = row[col]
        if isinstance(value, float | np.floating):
            parts.append(f"{col}={int(value)}" if is_whole(value) else f"{col}={float(value):g}")
        else:
            parts.append(f"{col}={value}")
    return " ".join(parts)


def is_whole(value: float) -> bool:
    """An integer that a float holds exactly: a width is float in a column that jobs without
    params made NaN."""
    return float(value).is_integer() and abs(value) < 2**53


# --- regimes over a sweep -------------------------------------------------------------


def stability_boundary(
    runs: pd.DataFrame,
    group_cols: Sequence[str] = ("hidden_dim",),
    lr_col: str = "lr",
    regime_col: str = "regime",
) -> pd.DataFrame:
    """Per width (and per value of any other `group_cols`: a backprop mode's boundary is its
    own), where training stops being stable as the learning rate grows.

    Scanning the swept learning rates upward, the first bad one is the smallest at which any
    seed was bad, and the last good one is the largest swept below it: the boundary lies in
    [last good, first bad]. For divergence, bad means "diverged" (columns `stable_lr_max`,
    `diverges_at_lr`); for oscillation, "oscillating" or "diverged" (`no_oscillation_lr_max`,
    `oscillates_at_lr`). A side is NaN when there is none: no bad rate gives NaN as the first
    bad and the largest swept rate as the last good; a bad smallest rate gives NaN as the last
    good. Rates above the first bad one are not looked at, even if they are good again.
    Runs without a regime (failed) are ignored. One row per group, sorted.
    """
    known = runs[runs[regime_col].notna()]
    group_cols = list(group_cols)
    rows = []
    for key, sub in known.groupby(group_cols, sort=True, dropna=False):
        lrs = np.sort(pd.unique(sub[lr_col].astype(float)))
        lr = sub[lr_col].astype(float)
        regime = sub[regime_col]
        row: dict[str, Any] = dict(zip(group_cols, key, strict=True))
        for good_col, bad_col, bad in (
            ("stable_lr_max", "diverges_at_lr", {"diverged"}),
            ("no_oscillation_lr_max", "oscillates_at_lr", {"oscillating", "diverged"}),
        ):
            bad_lrs = lr[regime.isin(bad)]
            first_bad = float(bad_lrs.min()) if len(bad_lrs) else math.nan
            below = lrs[lrs < first_bad] if math.isfinite(first_bad) else lrs
            row[good_col] = float(below.max()) if below.size else math.nan
            row[bad_col] = first_bad
        rows.append(row)
    return pd.DataFrame(rows, columns=[*group_cols, *BOUNDARY_COLUMNS])


# A stability boundary's columns after the group's.
BOUNDARY_COLUMNS = ("stable_lr_max", "diverges_at_lr", "no_oscillation_lr_max", "oscillates_at_lr")


def regime_fractions(
    runs: pd.DataFrame, rows: str, cols: str, regime_col: str = "regime"
) -> pd.DataFrame:
    """Per (rows value, cols value), e.g. (hidden_dim, lr): the fraction of runs in each regime
    and n, the runs with a regime (a heatmap's cells). Regimes are REGIMES, then any other
    value found, in order of appearance."""
    known = runs[runs[regime_col].notna()]
    regimes = [*REGIMES, *(r for r in pd.unique(known[regime_col]) if r not in REGIMES)]
    counts = pd.crosstab([known[rows], known[cols]], known[regime_col])
    counts = counts.reindex(columns=regimes, fill_value=0)
    n = counts.sum(axis=1)
    out = counts.div(n, axis=0)
    out.insert(0, "n", n)
    out.columns.name = None
    return out.reset_index()
