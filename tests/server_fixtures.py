"""A real PostgreSQL + MLflow tracking server for the tests, started by scripts/server.sh.

One server per test session, on free ports of 127.0.0.1, with its data in a temporary
folder; both processes are always stopped and the folder removed, also when a test or
the start itself fails.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "server.sh"


def stop_group(proc: subprocess.Popen, term_wait: float = 20) -> None:
    """Stop a process started with start_new_session=True and everything in its group (a
    server and its workers): SIGTERM, then SIGKILL if it is not gone; returns when no
    process of the group is left."""
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # The group may outlive its leader for a moment.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)


def free_port() -> int:
    """A free port of 127.0.0.1 below the kernel's ephemeral range: a server that is stopped
    and started again mid-test must find its port still free, and outgoing connections
    (Ray's, the store clients') take their ports from that range."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(10000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port of 127.0.0.1 between 10000 and {low}")


@dataclass
class TrackingServer:
    dir: Path
    pg_port: int
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.url)

    def _script(self, action: str) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "FNNLAB_SERVER_DIR": str(self.dir),
            "FNNLAB_PG_PORT": str(self.pg_port),
            "FNNLAB_SERVER_PORT": str(self.port),
            "FNNLAB_SERVER_WORKERS": "2",
            "MLFLOW": str(Path(sys.executable).parent / "mlflow"),
        }
        env.pop("FNNLAB_SERVER_HOST", None)
        # The script bounds each wait (FNNLAB_SERVER_START_TIMEOUT); this one only guards a hang.
        out = subprocess.run(
            ["bash", str(SCRIPT), action], env=env, capture_output=True, text=True, timeout=1200
        )
        if out.returncode != 0:
            raise RuntimeError(f"server.sh {action} failed: {out.stderr.strip()}")
        return out

    def start(self) -> None:
        self._script("start")

    def stop(self) -> None:
        self._script("stop")

    def overrides(self, experiment: str, root: Path) -> list[str]:
        """Overrides that send a command's runs to this server, outputs under root."""
        return [
            "tracking=server",
            f"tracking.uri={self.url}",
            f"tracking.experiment={experiment}",
            f"hydra.run.dir={root}/outputs/${{now:%H-%M-%S-%f}}",
            f"hydra.sweep.dir={root}/multirun/${{now:%H-%M-%S-%f}}",
        ]

    def database_uri(self, name: str) -> str:
        """A database of this server's PostgreSQL (created if missing), for a test that
        opens MLflow's SQL store on PostgreSQL directly rather than through the server."""
        import psycopg2

        password = (self.dir / "pg_password").read_text().strip()
        conn = psycopg2.connect(
            host="127.0.0.1", port=self.pg_port, user="fnnlab", password=password, dbname="postgres"
        )
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        # libpq reads the password from the environment (so do the commands the tests
        # start); fnnlab refuses a tracking URI that holds one.
        os.environ["PGPASSWORD"] = password
        return f"postgresql+psycopg2://fnnlab@127.0.0.1:{self.pg_port}/{name}"

    def runs(self, experiment: str, filter_string: str = "") -> list:
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        return self.client.search_runs([exp.experiment_id], filter_string, max_results=5000)


@pytest.fixture(scope="session")
def tracking_server() -> Iterator[TrackingServer]:
    # Not under pytest's tmp folder: that one is private to root, and PostgreSQL runs as
    # the postgres user, who must reach its data folder.
    folder = Path(tempfile.mkdtemp(prefix="fnnlab-server-"))
    server = TrackingServer(dir=folder, pg_port=free_port(), port=free_port())
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
