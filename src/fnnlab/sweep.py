"""A sweep in MLflow: one parent run per sweep command, jobs as its children.

The sweep id is a hash of the command's overrides, so running the same sweep again
finds the same parent run and can skip the jobs that already finished (resume).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter

from mlflow.entities import ViewType

from fnnlab.tracking import Store, end_run, log_values, process_tags

log = logging.getLogger(__name__)


class SweepFailed(RuntimeError):
    """Some jobs failed: their runs are FAILED, and so is the parent run.

    Defined here, not in the sweeper plugin: Hydra's plugin scan imports that module
    outside sys.modules, so a class defined there cannot be caught by identity.
    """


def sweep_id(overrides: list[str], experiment: str) -> str:
    text = "\n".join([experiment, *sorted(overrides)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _search(store: Store, filter_string: str) -> list:
    """Every matching run, all pages."""
    runs, token = [], None
    while True:
        page = store.client.search_runs(
            [store.experiment_id],
            filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=10000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def open_parent(store: Store, sid: str, overrides: list[str], n_jobs: int, sweep_dir: str) -> str:
    """The sweep's parent run, reopened if this sweep ran before, else created."""
    description = (
        f"Sweep of {n_jobs} jobs over: {' '.join(overrides) or '(no overrides)'}\n\n"
        f"Each child run is one job. Rerunning the same command resumes this sweep."
    )
    tags = {
        "role": "sweep",
        "sweep_id": sid,
        "sweep_dir": sweep_dir,
        "sweep_overrides": " ".join(overrides),
        "mlflow.note.content": description,
        **process_tags(),
    }
    found = _search(store, f"tags.role = 'sweep' and tags.sweep_id = '{sid}'")
    if found:
        run_id = found[0].info.run_id
        store.client.update_run(run_id, status="RUNNING")
        log_values(store, run_id, tags=tags)
        return run_id
    name = f"sweep-{sid[:6]} " + " ".join(o for o in overrides if "," in o or "range(" in o)
    run = store.client.create_run(store.experiment_id, run_name=name.strip()[:250], tags=tags)
    return run.info.run_id


def finished_fingerprints(store: Store) -> set[str]:
    """Fingerprints of the experiment's jobs that finished: those need not run again."""
    runs = _search(store, "tags.role = 'job' and attributes.status = 'FINISHED'")
    return {r.data.tags.get("fingerprint") for r in runs}


def close_parent(store: Store, run_id: str, counts: Counter, status: str) -> None:
    """Record what the sweep did and end the parent run with the given status."""
    log_values(store, run_id, summary={f"sweep/{k}": v for k, v in counts.items()})
    end_run(store, run_id, status)
