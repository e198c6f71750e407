"""fnnlab-ui's part below the command line: which sweep to show, and a free port."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from mlflow.entities import Run

from fnnlab.links import DEFAULT_HOST, RunRef
from fnnlab.names import FINISHED, Tag
from fnnlab.tracking import Store, find_sweep_parent, search_all


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port (binding it would succeed)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


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
        return self.parent.data.tags[Tag.SWEEP_ID]

    def refs(self) -> list[RunRef]:
        return [
            RunRef(
                r.info.run_id,
                r.info.run_name,
                r.data.params.get("model.hidden_dim", ""),
                r.data.tags.get(Tag.DIVERGED) == "true",
            )
            for r in self.children
        ]

    def diverged(self) -> list[str]:
        return [ref.name for ref in self.refs() if ref.diverged]


def find_sweep(store: Store, which: str) -> Sweep | None:
    """The sweep `which` names ('latest', a sweep id or a unique prefix of one) with its
    finished jobs in job order; None if there is no sweep yet for 'latest'."""
    parent = find_sweep_parent(store, which, "ui.sweep")
    if parent is None:
        return None
    children = search_all(store, f"tags.`{Tag.PARENT}` = '{parent.info.run_id}'")
    # A resumed sweep keeps its FAILED attempts as children; compare the runs that finished.
    finished = [r for r in children if r.info.status == FINISHED]
    children = sorted(finished or children, key=lambda r: int(r.data.tags.get(Tag.JOB_NUM, 0)))
    return Sweep(parent=parent, children=children)
