"""The figures as drawn: pixel sizes, legends, axis scales and heatmap marks, from real
matplotlib output on small synthetic inputs (no store, no training)."""

from __future__ import annotations

from itertools import product
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.colors import LogNorm
from PIL import Image
from test_report_text import finished_selection

from fnnlab import plots, report
from fnnlab.aggregate import Aggregate
from fnnlab.compare import compare, regime_fractions

COLS = ["hidden_dim", "lr"]
WIDTHS = (4, 8)
LRS = (0.01, 0.1, 1.0)
SEEDS = range(5)


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def history(loss: np.ndarray, diverged_at: int | None = None) -> SimpleNamespace:
    """What plots.Curves.of reads from a fnnlab.train.History."""
    n = len(loss)
    grads = {"grad_norm/w1": np.geomspace(2.0, 0.01, n), "grad_norm/w2": np.geomspace(1, 1e-3, n)}
    return SimpleNamespace(metrics={"loss": loss, **grads}, diverged_at=diverged_at)


def test_run_figures_are_large_with_named_curves(tmp_path: Path) -> None:
    epochs = np.arange(101)
    published = {0: 0.92, 20: 0.7, 40: 0.67}
    smooth = history(0.7 * np.exp(-epochs / 30) + 0.05)  # spans 15x: linear
    loss_fig, grad_fig = plots.draw_run(plots.Curves.of(smooth), tmp_path, "h8-lr0.1-s0", published)

    for name in ("loss.png", "grad_norm.png"):
        width, height = png_size(tmp_path / name)
        assert width >= 800 and height >= 560
    (loss_ax,) = loss_fig.axes
    assert legend_texts(loss_ax.get_legend()) == ["loss (cross-entropy)", "published (tutorial)"]
    assert loss_ax.get_yscale() == "linear"
    assert loss_ax.get_title() == "h8-lr0.1-s0"
    (grad_ax,) = grad_fig.axes
    assert legend_texts(grad_ax.get_legend()) == ["‖∇w1‖", "‖∇w2‖"]
    assert grad_ax.get_yscale() == "log"

    # The same reused figure for the next run: its own scale and legend entries.
    exploding = history(0.7 * np.exp(epochs / 8), diverged_at=100)
    loss_fig, _ = plots.draw_run(plots.Curves.of(exploding), tmp_path, "h8-lr10-s0", None)
    (loss_ax,) = loss_fig.axes
    assert loss_ax.get_yscale() == "log"
    assert legend_texts(loss_ax.get_legend()) == ["loss (cross-entropy)", "diverged at epoch 100"]

    loss_fig, _ = plots.draw_run(plots.Curves.of(smooth), tmp_path, "h8-lr0.1-s1", None)
    (loss_ax,) = loss_fig.axes
    assert loss_ax.get_yscale() == "linear"
    assert legend_texts(loss_ax.get_legend()) == ["loss (cross-entropy)"]
    assert not any("fnnlab" in t for t in legend_texts(loss_ax.get_legend()))


def test_spans_decades_ignores_non_finite_and_non_positive() -> None:
    assert plots.spans_decades(np.array([0.01, 0.5, np.inf, np.nan, 0.0, -3.0]))
    assert not plots.spans_decades(np.array([0.02, 0.5, np.inf, np.nan, 0.0, -3.0]))
    assert not plots.spans_decades(np.array([np.nan]))


def mean_curves(peak_of_lr1: float | None = None, epochs: int = 40) -> pd.DataFrame:
    """A frame like fnnlab.aggregate.mean_curves: loss and grad norms per width, lr and epoch;
    with peak_of_lr1, the loss at lr=1 climbs to that peak instead of falling."""
    rows = []
    steps = np.arange(epochs)
    for width in WIDTHS:
        for lr in LRS:
            loss = 0.7 - 0.2 * lr * (1 - np.exp(-steps / 10)) + 0.01 * width / 8
            if lr == 1.0 and peak_of_lr1 is not None:
                loss = 0.7 + (peak_of_lr1 - 0.7) * np.sin(np.pi * steps / (epochs - 1)) ** 2
            for key, values in (
                ("loss", loss),
                ("grad_norm/w1", np.geomspace(1, 1e-3 * lr, epochs)),
                ("grad_norm/w2", np.geomspace(0.5, 1e-3 * lr, epochs)),
            ):
                rows += [
                    {"hidden_dim": width, "lr": lr, "key": key, "step": s, "mean": v}
                    for s, v in zip(steps, values, strict=True)
                ]
    return pd.DataFrame(rows).assign(std=lambda f: 0.05 * f["mean"], n=5)


def visible_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


@pytest.mark.parametrize(
    ("peak", "scale"),
    [
        (None, "linear"),  # every lr falls a little: spans < 30x, no outlier
        (60.0, "log"),  # lr=1 explodes: spans > 30x
        (5.0, "log"),  # lr=1 climbs to 7x the others' peak: spans < 30x, but an outlier
    ],
)
def test_sweep_loss_curves_scale(tmp_path: Path, peak: float | None, scale: str) -> None:
    curves = mean_curves(peak)
    path = tmp_path / "curves_loss.png"
    fig = plots.sweep_curves_plot(curves, path, COLS, {"loss": "-"}, "mean cross-entropy", "t")

    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["hidden_dim=4", "hidden_dim=8"]
    assert {ax.get_yscale() for ax in axes} == {scale}
    if scale == "log":
        assert all("log scale" in ax.get_ylabel() for ax in axes)
        # The falling curves keep most of the height: the axis is bounded by the means.
        low, high = axes[0].get_ylim()
        assert low > 0.3 and high < 1.3 * peak
    (legend,) = fig.legends
    assert legend_texts(legend) == ["lr=0.01", "lr=0.1", "lr=1"]
    colours = {tuple(line.get_color()) for line in axes[0].get_lines()}
    assert len(colours) == len(LRS)
    width, height = png_size(path)
    assert width >= 800 and height >= 560


def test_grad_norm_curves_stay_log(tmp_path: Path) -> None:
    metrics = {"grad_norm/w1": "-", "grad_norm/w2": "--"}
    fig = plots.sweep_curves_plot(
        mean_curves(), tmp_path / "g.png", COLS, metrics, "gradient L2 norm", "t", logy=True
    )
    assert {ax.get_yscale() for ax in visible_axes(fig)} == {"log"}
    assert legend_texts(fig.legends[0])[-2:] == list(metrics)


def sweep_runs() -> pd.DataFrame:
    """One row per run over width x lr x seed, like aggregate's runs frame (outcome, diverged,
    regime): (8, 0.1) leads, (8, 1) is noisy and may tie, (4, 1) always diverges, two of
    (8, 1)'s seeds diverge and three of (4, 0.1)'s oscillate."""
    rng = np.random.default_rng(0)
    base = {
        (4, 0.01): 0.9,
        (4, 0.1): 0.6,
        (4, 1.0): np.nan,
        (8, 0.01): 0.85,
        (8, 0.1): 0.05,
        (8, 1.0): 0.06,
    }
    rows = []
    for (width, lr), mean in base.items():
        for seed in SEEDS:
            diverged = (width, lr) == (4, 1.0) or ((width, lr) == (8, 1.0) and seed < 2)
            oscillating = (width, lr) == (4, 0.1) and seed < 3
            spread = 0.03 if (width, lr) == (8, 1.0) else 0.005
            rows.append(
                {
                    "hidden_dim": width,
                    "lr": lr,
                    "seed": seed,
                    "outcome": np.nan if diverged else mean + spread * rng.standard_normal(),
                    "diverged": diverged,
                    "regime": "diverged"
                    if diverged
                    else ("oscillating" if oscillating else "stable"),
                }
            )
    return pd.DataFrame(rows)


def counts(runs: pd.DataFrame) -> pd.DataFrame:
    """The summary's per-configuration counts the heatmap marks cells with."""
    return (
        runs.assign(oscillating=runs["regime"] == "oscillating")
        .groupby(COLS)
        .agg(
            runs=("seed", "size"), diverged=("diverged", "sum"), oscillating=("oscillating", "sum")
        )
        .reset_index()
    )


def test_heatmap_marks_leader_ties_and_bad_runs(tmp_path: Path) -> None:
    runs = sweep_runs()
    comparison = compare(runs, COLS)
    lead = comparison[comparison["leader"]].iloc[0]
    assert (lead["hidden_dim"], lead["lr"]) == (8, 0.1)
    path = tmp_path / "heatmap_final_loss.png"
    fig = plots.sweep_heatmap(
        comparison, path, COLS, "t: mean tail_loss", counts=counts(runs), outcome="tail_loss"
    )

    ax, bar = fig.axes
    (im,) = ax.get_images()
    assert isinstance(im.norm, LogNorm)
    assert im.norm.vmin == pytest.approx(comparison["mean"].min())
    assert "tail_loss" in bar.get_ylabel() and ax.get_title() == "t: mean tail_loss"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.01", "0.1", "1"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["4", "8"]
    texts = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }
    half = (lead["ci_high"] - lead["ci_low"]) / 2
    assert texts[1, 1] == f"{lead['mean']:.3g}\n±{half:.2g}\nn=5\nleader"
    assert texts[0, 2] == "no outcome\nn=0\n5 div."
    assert texts[0, 1].endswith("n=5\n3 osc.")
    assert "n=3" in texts[1, 2] and texts[1, 2].endswith("2 div.")
    assert texts[0, 0].count("\n") == 2  # mean, ± half-width, n: nothing to mark
    tied = comparison["tied"].fillna(False).astype(bool)
    assert sum("tied" in t for t in texts.values()) == tied.sum()
    # Cell borders and hatches: one solid leader border, a dashed one per tie.
    borders = [p for p in ax.patches if p.get_linewidth() > 0 and not p.get_hatch()]
    assert sum(p.get_linestyle() == "solid" for p in borders) == 1
    assert sum(p.get_linestyle() == "--" for p in borders) == tied.sum()
    assert sum(bool(p.get_hatch()) for p in ax.patches) == 2  # (4, 1) and (8, 1)
    # The no-outcome cell is masked: drawn grey.
    assert np.ma.is_masked(im.get_array()[0, 2])
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert legend == {"leader", "tied", "runs diverged", "no outcome"}
    width, height = png_size(path)
    assert width >= 800 and height >= 560


def test_the_heatmap_legend_names_only_what_its_cells_show(tmp_path: Path) -> None:
    """Its legend named "leader" and "tied" when no cell was either: no leader, or one
    configuration compared with nothing (helper-44)."""
    runs = sweep_runs()
    cells = list(zip(runs["hidden_dim"], runs["lr"], strict=True))
    only = runs[[cell in {(8, 0.1), (4, 1.0)} for cell in cells]]  # the other diverged
    comparison = compare(only, COLS)
    assert not comparison["leader"].any()
    fig = plots.sweep_heatmap(comparison, tmp_path / "h.png", COLS, "t", counts=counts(only))
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert legend == {"runs diverged", "no outcome"}, legend


def test_heatmap_panels_per_other_swept_param(tmp_path: Path) -> None:
    runs = pd.concat([sweep_runs().assign(backprop=b) for b in ("exact", "tutorial")])
    cols = [*COLS, "backprop"]
    comparison = compare(runs, cols)
    fig = plots.sweep_heatmap(comparison, tmp_path / "h.png", cols, "t")
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == ["backprop=exact", "backprop=tutorial"]
    # Without counts nothing is marked as diverged, but no-outcome cells stay grey.
    texts = [t.get_text() for ax in panels for t in ax.texts]
    assert not any("div." in t for t in texts)
    assert sum(t.startswith("no outcome") for t in texts) == 2
    assert sum(t.endswith("leader") for t in texts) == 1


def test_near_ties_get_near_colours(tmp_path: Path) -> None:
    """Means 0.1% apart are not drawn at the two ends of the colour scale: a span under a
    factor of MIN_COLOUR_SPAN is widened about its middle; a wider one is kept."""
    rng = np.random.default_rng(1)
    rows = [
        {"hidden_dim": w, "lr": lr, "seed": s, "outcome": level + 1e-4 * rng.standard_normal()}
        for (w, lr, level) in ((4, 0.1, 0.3), (8, 0.1, 0.3003), (4, 1.0, 0.3001), (8, 1.0, 0.3002))
        for s in SEEDS
    ]
    runs = pd.DataFrame(rows).assign(diverged=False, regime="stable")
    comparison = compare(runs, COLS)
    fig = plots.sweep_heatmap(comparison, tmp_path / "h.png", COLS, "t", counts=counts(runs))
    (im,) = fig.axes[0].get_images()
    low, high = comparison["mean"].min(), comparison["mean"].max()
    assert im.norm.vmax / im.norm.vmin == pytest.approx(plots.MIN_COLOUR_SPAN)
    assert np.sqrt(im.norm.vmin * im.norm.vmax) == pytest.approx(np.sqrt(low * high))
    colours = im.cmap(im.norm(im.get_array()))[..., :3].reshape(-1, 3)
    assert np.abs(colours - colours[0]).max() < 0.02

    # Accuracies near 1: the scale ends at 1, not above what an accuracy can be.
    accurate = runs.assign(outcome=runs["outcome"] + 0.69)
    comparison = compare(accurate, COLS, higher_is_better=True)
    fig = plots.sweep_heatmap(comparison, tmp_path / "a.png", COLS, "t", outcome="final_accuracy")
    (im,) = fig.axes[0].get_images()
    assert (im.norm.vmin, im.norm.vmax) == (0.25, 1.0)

    wide = runs.assign(outcome=runs["outcome"] * np.where(runs["hidden_dim"] == 4, 1, 10))
    comparison = compare(wide, COLS)
    fig = plots.sweep_heatmap(comparison, tmp_path / "w.png", COLS, "t", counts=counts(wide))
    (im,) = fig.axes[0].get_images()
    assert im.norm.vmin == pytest.approx(comparison["mean"].min())
    assert im.norm.vmax == pytest.approx(comparison["mean"].max())


def test_regime_heatmap_has_colour_bars(tmp_path: Path) -> None:
    fractions = regime_fractions(sweep_runs(), "hidden_dim", "lr")
    path = tmp_path / "heatmap_regimes.png"
    fig = plots.regime_heatmap(fractions, path, "t regimes")
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == [
        "fraction stable",
        "fraction oscillating",
        "fraction diverged",
    ]
    bars = [ax for ax in fig.axes if ax.get_visible() and not ax.get_images()]
    assert [ax.get_ylabel() for ax in bars] == [
        "fraction of seeds stable",
        "fraction of seeds oscillating",
        "fraction of seeds diverged",
    ]
    assert "60%\nn=5" in {t.get_text() for t in panels[1].texts}
    width, height = png_size(path)
    assert width >= 800 and height >= 560


def test_write_plots_draws_the_comparison(tmp_path: Path) -> None:
    runs = sweep_runs()
    comparison = compare(runs, COLS)
    agg = Aggregate(
        selection=finished_selection(experiment="exp", sweep_id="s1"),
        runs=runs,
        summary=counts(runs),
        curves=mean_curves(peak_of_lr1=60.0),
        config_cols=COLS,
        outcome="tail_loss",
        comparison=comparison,
        regimes=regime_fractions(runs, "hidden_dim", "lr"),
    )
    written = report.write_plots(agg, tmp_path)
    assert written == [
        "curves_loss.png",
        "heatmap_final_loss.png",
        "heatmap_regimes.png",
        "curves_grad_norm.png",
    ]
    for name in written:
        width, height = png_size(tmp_path / name)
        assert width >= 800 and height >= 560


# --- the sweep figures' layout, over the shapes a sweep gives them ------------------------


def boxes(fig) -> dict[str, object]:
    """What must not overlap, by name, in display pixels: every visible axes with its tick
    labels, axis labels and title (a colour bar is an axes), each figure legend and the
    figure's title."""
    renderer = fig.canvas.get_renderer()
    out = {}
    for i, ax in enumerate(fig.axes):
        if ax.get_visible():
            out[f"axes {i} ({ax.get_title() or ax.get_ylabel()})"] = ax.get_tightbbox(renderer)
    for i, legend in enumerate(fig.legends):
        out[f"legend {i}"] = legend.get_window_extent(renderer)
    if fig._suptitle is not None and fig._suptitle.get_text():
        out["title"] = fig._suptitle.get_window_extent(renderer)
    return out


def assert_laid_out(fig) -> None:
    """Every box inside the figure, no two overlapping (1 pixel of slack), and every panel
    at least an inch high whatever the legend's length."""
    height = fig.get_size_inches()[1]
    for ax in fig.axes:
        if ax.get_visible() and ax.get_label() != "<colorbar>":
            assert ax.get_position().height * height >= 1.0, ax.get_title()
    found = boxes(fig)
    whole = fig.bbox
    for name, box in found.items():
        inside = (
            box.x0 >= whole.x0 - 1
            and box.y0 >= whole.y0 - 1
            and box.x1 <= whole.x1 + 1
            and box.y1 <= whole.y1 + 1
        )
        assert inside, f"{name} {box.extents} leaves the figure {whole.extents}"
    names = list(found)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            p, q = found[a], found[b]
            overlap_x = min(p.x1, q.x1) - max(p.x0, q.x0)
            overlap_y = min(p.y1, q.y1) - max(p.y0, q.y0)
            assert overlap_x <= 1 or overlap_y <= 1, f"{a} {p.extents} overlaps {b} {q.extents}"


TITLE = "an-experiment-name: 9f2aebfa145a"
# Experiment names as long as people make them, with spaces and without.
TITLES = [
    TITLE,
    "phase diagram of width and learning rate on the two first iris classes, float64, exact "
    "backprop, second try: 9f2aebfa145a",
    "iris_phase_diagram_of_width_and_learning_rate_on_two_classes_float64_exact_backprop_"
    "second_try: 9f2aebfa145a",
]


@given(
    widths=st.integers(1, 7),
    lrs=st.integers(1, 12),
    modes=st.sampled_from([(), ("exact",), ("exact", "tutorial")]),
    scale=st.sampled_from([1e-6, 1.0, 1e6]),
    spread=st.sampled_from([1.01, 100.0]),
    published=st.booleans(),
    grad=st.booleans(),
    title=st.sampled_from(TITLES),
)
@settings(max_examples=20)
def test_sweep_curves_are_laid_out(
    tmp_path_factory, widths, lrs, modes, scale, spread, published, grad, title
) -> None:
    cols = [*COLS, "backprop"] if modes else COLS
    swept = {"hidden_dim": [2**i for i in range(widths)], "lr": np.geomspace(1e-3, 1.0, lrs)}
    if modes:
        swept["backprop"] = modes
    keys = ["grad_norm/w1", "grad_norm/w2"] if grad else ["loss"]
    curves = curves_frame(
        keys, cols, lambda lr, s: scale * (1 + (spread - 1) * lr * np.exp(-s / 10)), **swept
    )
    metrics = {"grad_norm/w1": "-", "grad_norm/w2": "--"} if grad else {"loss": "-"}
    points = {0: 0.69, 20: 0.6} if published and not grad else None
    path = tmp_path_factory.mktemp("curves") / "c.png"
    fig = plots.sweep_curves_plot(
        curves, path, cols, metrics, "mean cross-entropy", f"{title} loss", published=points
    )
    assert_laid_out(fig)


@given(
    widths=st.integers(1, 6),
    lrs=st.integers(1, 8),
    facets=st.integers(1, 4),
    modes=st.sampled_from([("tutorial",), ("exact", "tutorial")]),
    scale=st.sampled_from([1e-5, 1.0, 1e5]),
    title=st.sampled_from(TITLES),
)
@settings(max_examples=20)
def test_sweep_heatmap_is_laid_out(
    tmp_path_factory, widths, lrs, facets, modes, scale, title
) -> None:
    # Facets of up to two params (epochs, backprop): a facet title of several params.
    facet_cols = [c for c, n in (("epochs", facets), ("backprop", len(modes))) if n > 1]
    cols = [*COLS, *facet_cols]
    rng = np.random.default_rng(widths * 100 + lrs)
    rows = [
        {
            "hidden_dim": int(w),
            "lr": lr,
            "epochs": 100 * (f + 1),
            "backprop": mode,
            "seed": seed,
            "outcome": scale * rng.uniform(0.5, 2.0),
            "diverged": False,
            "regime": "stable",
        }
        for w, lr, f, mode, seed in product(
            2 ** np.arange(widths), np.geomspace(1e-3, 1.0, lrs), range(facets), modes, range(3)
        )
    ]
    runs = pd.DataFrame(rows)[[*cols, "seed", "outcome", "diverged", "regime"]]
    comparison = compare(runs, cols)
    path = tmp_path_factory.mktemp("heatmap") / "h.png"
    fig = plots.sweep_heatmap(comparison, path, cols, f"{title} mean tail_loss (± CI)")
    assert_laid_out(fig)


@given(
    widths=st.integers(1, 6),
    lrs=st.integers(1, 8),
    regimes=st.integers(1, 3),
    title=st.sampled_from(TITLES),
)
@settings(max_examples=10)
def test_regime_heatmap_is_laid_out(tmp_path_factory, widths, lrs, regimes, title) -> None:
    names = ["stable", "oscillating", "diverged"][:regimes]
    rows = [
        {"hidden_dim": int(w), "lr": lr, "seed": seed, "regime": names[seed % regimes]}
        for w, lr, seed in product(2 ** np.arange(widths), np.geomspace(1e-3, 1.0, lrs), range(3))
    ]
    runs = pd.DataFrame(rows).assign(diverged=lambda f: f["regime"] == "diverged")
    fractions = regime_fractions(runs, "hidden_dim", "lr")
    path = tmp_path_factory.mktemp("regimes") / "r.png"
    fig = plots.regime_heatmap(fractions, path, f"{title} regimes (pooled over epochs)")
    assert_laid_out(fig)


def curves_frame(keys: list[str], cols: list[str], values, **swept) -> pd.DataFrame:
    """Mean curves over 50 epochs for every combination of the swept values (name -> list),
    values(lr) giving each configuration's curve."""
    steps = np.arange(50)
    frames = []
    for combo in product(*swept.values()):
        config = dict(zip(swept, combo, strict=True))
        mean = values(config["lr"], steps)
        for key in keys:
            frame = pd.DataFrame({"key": key, "step": steps, "mean": mean, "std": 0.1 * mean})
            frames.append(frame.assign(**config))
    return pd.concat(frames, ignore_index=True)[[*cols, "key", "step", "mean", "std"]]


def test_a_legend_of_42_configurations_keeps_the_panels(tmp_path: Path) -> None:
    # One width, 7 rates x 3 epochs x 2 modes: a legend taller than the panels were.
    cols = ["hidden_dim", "lr", "epochs", "backprop"]
    swept = {
        "hidden_dim": [32],
        "lr": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
        "epochs": [100, 200, 400],
        "backprop": ["exact", "tutorial"],
    }
    curves = curves_frame(["loss"], cols, lambda lr, s: 1 + lr * np.exp(-s / 10), **swept)
    fig = plots.sweep_curves_plot(
        curves, tmp_path / "c.png", cols, {"loss": "-"}, "mean cross-entropy", TITLE
    )
    assert len(fig.legends[0].get_texts()) == 42
    assert_laid_out(fig)


def test_six_digit_tick_labels_fit_beside_the_panels(tmp_path: Path) -> None:
    # Gradient norms up to about 2e5 on a log axis: a tick labelled 100000.
    swept = {"hidden_dim": [8, 32, 128], "lr": [0.001, 0.1, 1.0]}
    keys = ["grad_norm/w1", "grad_norm/w2"]
    curves = curves_frame(
        keys, COLS, lambda lr, s: 0.01 * (1 + 2e7 * lr * np.exp(-s / 10)), **swept
    )
    metrics = {"grad_norm/w1": "-", "grad_norm/w2": "--"}
    fig = plots.sweep_curves_plot(
        curves, tmp_path / "g.png", COLS, metrics, "gradient L2 norm", TITLE, logy=True, band=False
    )
    labels = {t.get_text() for ax in fig.axes for t in ax.get_yticklabels()}
    assert "100000" in labels
    assert_laid_out(fig)


FACET_COLS = ["hidden_dim", "lr", "epochs", "backprop", "dtype"]


def facet_runs(lrs: list, epochs: list, modes: list, dtypes: list) -> pd.DataFrame:
    """Three seeds of width 32 for every rate, epochs, mode and dtype given: a heatmap's
    facets of up to three params."""
    grid = product(lrs, epochs, modes, dtypes, range(3))
    return pd.DataFrame(
        [
            {
                "hidden_dim": 32,
                "lr": lr,
                "epochs": e,
                "backprop": b,
                "dtype": d,
                "seed": seed,
                "outcome": np.random.default_rng(seed).uniform(0.5, 2),
                "diverged": False,
                "regime": "stable",
            }
            for lr, e, b, d, seed in grid
        ]
    )


def test_a_heatmap_of_18_panels_in_six_rows(tmp_path: Path) -> None:
    cols = FACET_COLS
    runs = facet_runs(
        [0.001, 0.01, 0.1, 1.0],
        [100, 200, 400],
        ["exact", "tutorial"],
        ["float16", "float32", "float64"],
    )
    fig = plots.sweep_heatmap(compare(runs, cols), tmp_path / "h.png", cols, TITLE)
    assert len([ax for ax in fig.axes if ax.get_images()]) == 18
    assert_laid_out(fig)


def test_long_titles_are_broken_into_lines(tmp_path: Path) -> None:
    # One rate: narrow panels under facet titles of three params, and a long figure title.
    cols = FACET_COLS
    runs = facet_runs([0.1], [100, 200], ["exact", "tutorial"], ["float32", "float64"])
    title = f"{TITLES[1]} mean tail_loss (± CI half-width)"
    fig = plots.sweep_heatmap(compare(runs, cols), tmp_path / "h.png", cols, title)
    panels = [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]
    assert len(panels) == 8
    assert all("\n" in ax.get_title() for ax in panels)
    assert "\n" in fig._suptitle.get_text()
    # Broken at spaces: every word is whole on some line.
    assert fig._suptitle.get_text().split() == title.split()
    assert_laid_out(fig)


AWKWARD_TITLES = {
    "ideographic spaces": "\u3000".join(["phase", "diagram", "of", "width", "and"] * 6),
    "no-break spaces": "\u00a0".join(["phase", "diagram", "of", "width", "and"] * 8),
    "newlines": "my experiment: 9f2aebfa145a\nloss (mean ± std)\nover seeds",
    "dollars": "x $5 $^$ y",
    "spaces only": " " * 300,
    "narrow and wide words": "fil" + "l" * 120 + " " + "M" * 31,
}


@pytest.mark.parametrize("name", list(AWKWARD_TITLES))
def test_awkward_titles_are_laid_out(tmp_path: Path, name: str) -> None:
    # From a review: words found where textwrap breaks no line, lines already in a title,
    # "$" read as a formula once a word was measured alone, a title with no word, and a
    # word that fits whole but was broken.
    title = AWKWARD_TITLES[name]
    swept = {"hidden_dim": [8, 32], "lr": [0.01, 0.1]}
    curves = curves_frame(["loss"], COLS, lambda lr, s: 1 + lr * np.exp(-s / 10), **swept)
    fig = plots.sweep_curves_plot(curves, tmp_path / "c.png", COLS, {"loss": "-"}, "loss", title)
    assert_laid_out(fig)
    lines = fig._suptitle.get_text().split("\n")
    # At 8 points a line of this 840-pixel figure held 111 to 135 of these characters.
    assert len(lines) <= -(-len(title) // 100) + 1, lines
    assert fig.get_size_inches()[1] < 7
    if name == "dollars":
        assert lines == ["x $5 $^$ y"]
    if name == "narrow and wide words":
        assert lines == ["fil" + "l" * 120, "M" * 31]


def assert_texts_apart(ax) -> None:
    """Within one panel: no two of its x tick labels and cell notes overlap."""
    renderer = ax.figure.canvas.get_renderer()
    texts = [t for t in [*ax.get_xticklabels(), *ax.texts] if t.get_visible() and t.get_text()]
    found = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    for i, (a, p) in enumerate(found):
        for b, q in found[i + 1 :]:
            apart = min(p.x1, q.x1) - max(p.x0, q.x0) <= 1 or min(p.y1, q.y1) - max(p.y0, q.y0) <= 1
            assert apart, f"{a!r} {p.extents} overlaps {b!r} {q.extents} in {ax.get_title()}"


@pytest.mark.parametrize("lrs", [4, 6, 9])
def test_a_regime_heatmap_is_wide_enough_for_its_rates(tmp_path: Path, lrs: int) -> None:
    # Rates as a sweep types them; the panels widen with their number.
    rates = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5][:lrs]
    names = ["stable", "oscillating", "diverged"]
    runs = pd.DataFrame(
        [
            {"hidden_dim": w, "lr": lr, "seed": seed, "regime": names[seed % 3]}
            for w, lr, seed in product([8, 32, 128], rates, range(3))
        ]
    ).assign(diverged=lambda f: f["regime"] == "diverged")
    fractions = regime_fractions(runs, "hidden_dim", "lr")
    fig = plots.regime_heatmap(fractions, tmp_path / "r.png", f"{TITLE} regimes")
    assert_laid_out(fig)
    for ax in fig.axes:
        if ax.get_images() and ax.get_label() != "<colorbar>":
            assert_texts_apart(ax)
