"""Addresses in the MLflow UI: its base URL for a store, and the pages of an experiment, a
run, the run-comparison view and overlaid metric curves.

URL formats are those of the MLflow 3.17 web app (hash routes, read from its bundled
JavaScript): `#/compare-runs?runs=[...]&experiments=[...]` and `#/metric?runs=[...]&metric=...`
with URL-encoded JSON lists as values.
"""

from __future__ import annotations

import json
from urllib.parse import quote

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


def curves_url(base: str, experiment_id: str, run_ids: list[str], metrics: list[str]) -> str:
    """MLflow's metric page: these metrics of these runs overlaid, x-axis = step = epoch."""
    return (
        f"{base}/#/metric?runs={_json(run_ids)}"
        f"&metric={_json(metrics[0])}&experiments={_json([experiment_id])}"
        f"&plot_metric_keys={_json(metrics)}&x_axis=step&y_axis_scale=linear"
        f"&line_smoothness=1&show_point=false&{ML_VIEW}"
    )
