"""Addresses in the MLflow UI: its base URL for a store, and the pages of an experiment, a
run, the run-comparison view and overlaid metric curves.

URL formats are those of the MLflow 3.17 web app (hash routes, read from its bundled
JavaScript): `#/compare-runs?runs=[...]&experiments=[...]` and `#/metric?runs=[...]&metric=...`
with URL-encoded JSON lists as values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import NamedTuple
from urllib.parse import quote

from fnnlab.config import trains

# Where fnnlab-ui serves an embedded store unless ui.port says otherwise (conf/ui.yaml).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
# MLflow 3.17 opens on its GenAI pages unless told otherwise; fnnlab runs are model training.
ML_VIEW = "workflowType=machine_learning"


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def base_url(tracking_uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """A tracking server is its own UI; an embedded store is served by fnnlab-ui at host:port."""
    if is_server(tracking_uri):
        return tracking_uri.rstrip("/")
    return f"http://{host}:{port}"


def _json(value: object) -> str:
    return quote(json.dumps(value, separators=(",", ":")), safe="")


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table: each sweep's parent run with its jobs folded under it."""
    return f"{base}/#/experiments/{experiment_id}/runs?{ML_VIEW}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's run-comparison page: params, final metrics and parallel coordinates."""
    return (
        f"{base}/#/compare-runs?runs={_json(run_ids)}&experiments={_json([experiment_id])}"
        f"&{ML_VIEW}"
    )


def curves_url(
    base: str, experiment_id: str, run_ids: list[str], metrics: list[str], log: bool = False
) -> str:
    """MLflow's metric page: these metrics of these runs overlaid, x-axis = step = epoch."""
    return (
        f"{base}/#/metric?runs={_json(run_ids)}"
        f"&metric={_json(metrics[0])}&experiments={_json([experiment_id])}"
        f"&plot_metric_keys={_json(metrics)}&x_axis=step"
        f"&y_axis_scale={'log' if log else 'linear'}"
        f"&line_smoothness=1&show_point=false&{ML_VIEW}"
    )


def artifact_url(base: str, experiment_id: str, run_id: str, path: str) -> str:
    """A run's artifact, opened in MLflow's artifact viewer."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}?{ML_VIEW}"


class RunRef(NamedTuple):
    """What the sweep's views need of one finished run."""

    run_id: str
    name: str
    width: str  # model.hidden_dim, as logged
    diverged: bool


# Above this many runs, one curve link per width: MLflow's legend and colours stop telling
# runs apart.
CURVES_PER_LINK = 12


def group_hint(params: Iterable[Mapping[str, str]]) -> str:
    """MLflow cannot group runs by parameters through a URL: the clicks, in one line. A
    configuration is the training params the runs differ in, but the seed; runs that logged
    no params (killed before) are left out."""
    rows = [p for p in params if p]
    keys = sorted({k for p in rows for k in p})
    varying = [k for k in keys if k != "seed" and trains(k) and len({p.get(k) for p in rows}) > 1]
    return (
        "to see mean and range per configuration: in the experiment's runs table, Group by -> "
        f"Parameters -> {', '.join(varying or ['model.hidden_dim'])} (and the Chart view)"
    )


def sweep_views(
    base: str,
    experiment_id: str,
    parent_run_id: str,
    runs: list[RunRef],
    with_report: bool = True,
) -> list[tuple[str, str]]:
    """(label, URL) of the pages that answer a sweep's question: its parent run and report
    (unless this answer is not logged on it: the parent's would be another's, or none), the
    runs side by side, and loss and gradient-norm curves (log axis) of the runs that did not
    diverge, one link per width when there are many runs."""
    views = [("parent run", run_url(base, experiment_id, parent_run_id))]
    if with_report:
        report = artifact_url(base, experiment_id, parent_run_id, "aggregate/report.html")
        views.append(("report", report))
    if not runs:
        return views
    views.append(("side by side", compare_url(base, experiment_id, [r.run_id for r in runs])))
    kept = [r for r in runs if not r.diverged]
    # No curve links when every run diverged: they would open empty charts.
    groups: dict[str, list[str]] = {"": [r.run_id for r in kept]} if kept else {}
    if len(kept) > CURVES_PER_LINK:
        groups = {}
        for r in kept:
            groups.setdefault(f", hidden_dim={r.width}", []).append(r.run_id)
    grads = ["grad_norm/w1", "grad_norm/w2"]
    for suffix, ids in groups.items():
        views.append((f"loss curves{suffix}", curves_url(base, experiment_id, ids, ["loss"])))
        views.append(
            (f"gradient norms{suffix}", curves_url(base, experiment_id, ids, grads, log=True))
        )
    return views
