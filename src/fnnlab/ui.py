"""Where to look in the MLflow UI: the UI's base URL, a sweep's runs, and the URLs of the
experiment page, one run's page, the run-comparison view and overlaid metric curves.

URL formats are those of the MLflow 3.17 web app (hash routes, read from its bundled
JavaScript): `#/compare-runs?runs=[...]&experiments=[...]` and `#/metric?runs=[...]&metric=...`
with URL-encoded JSON lists as values.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from urllib.parse import quote

from mlflow.entities import Run

from fnnlab.config import ConfigValueError
from fnnlab.tracking import Store, search_all

# Where fnnlab-ui serves an embedded store unless ui.port says otherwise (conf/ui.yaml).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def base_url(tracking_uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """A tracking server is its own UI; an embedded store is served by fnnlab-ui at host:port."""
    if is_server(tracking_uri):
        return tracking_uri.rstrip("/")
    return f"http://{host}:{port}"


# MLflow 3.17 opens on its GenAI pages unless told otherwise; fnnlab runs are model training.
ML_VIEW = "workflowType=machine_learning"


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


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nothing listens on now, for ui.port=0."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Sweep:
    parent: Run
    children: list[Run]

    @property
    def sweep_id(self) -> str:
        return self.parent.data.tags["sweep_id"]


def _search(store: Store, filter_string: str, order_by: list[str] | None = None) -> list[Run]:
    return search_all(store.client, store.experiment_id, filter_string, order_by)


def find_sweep(store: Store, which: str) -> Sweep | None:
    """The sweep `which` names: 'latest' (the most recently started parent run) or a sweep id
    or a unique prefix of one (run names show 6 characters). None if there is no sweep yet
    for 'latest'; ConfigValueError for an id that matches no sweep or several."""
    order = ["attributes.start_time DESC"]
    if which == "latest":
        parents = _search(store, "tags.role = 'sweep'", order)[:1]
        if not parents:
            return None
    else:
        if "'" in which or not which.strip():
            raise ConfigValueError("ui.sweep", which, "not a sweep id")
        parents = _search(store, f"tags.role = 'sweep' and tags.sweep_id LIKE '{which}%'", order)
        ids = {p.data.tags["sweep_id"] for p in parents}
        if len(ids) != 1:
            found = f"matches {len(ids)}: {', '.join(sorted(ids))}" if ids else "matches none"
            raise ConfigValueError("ui.sweep", which, f"{found} of this experiment's sweeps")
    parent = parents[0]
    children = _search(store, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    # A resumed sweep keeps its FAILED attempts as children; compare the runs that finished.
    finished = [r for r in children if r.info.status == "FINISHED"]
    children = sorted(finished or children, key=lambda r: int(r.data.tags.get("job_num", 0)))
    return Sweep(parent=parent, children=children)
