"""Thin @hydra.main entry points: fnnlab-train and fnnlab-ui.

Each console script wraps its Hydra app so that a bad config value or override
ends with one line naming the key and the value, and exit status 2.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from fnnlab.config import ConfigValueError, check_values, project_root

CONF_DIR = str(project_root() / "conf")
log = logging.getLogger("fnnlab")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train_app(cfg: DictConfig) -> dict:
    from fnnlab import job

    try:
        check_values(cfg)
    except ConfigValueError as exc:
        # Exit here rather than raise: Hydra would print a job-failure banner first.
        print(f"fnnlab-train: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sweep_tags = {}
    if cfg.sweep.id is not None:
        sweep_tags = {"sweep_id": cfg.sweep.id, "job_num": str(cfg.sweep.job_num)}
    result = job.run(
        cfg,
        Path(HydraConfig.get().runtime.output_dir),
        parent_run_id=cfg.sweep.parent_run_id,
        sweep_tags=sweep_tags,
    )
    _freeze_after_first_job()
    final = result.history.final()
    diverged = result.history.diverged_at is not None
    print(
        f"{result.run_name}: loss {final.get('loss', float('nan')):.6f} "
        f"accuracy {final.get('accuracy', float('nan')):.3f}"
        f"{' (diverged at epoch %d)' % result.history.diverged_at if diverged else ''} "
        f"run {result.run_id}",
        flush=True,
    )
    return {"run_id": result.run_id, "diverged": diverged}


_frozen = False


def _freeze_after_first_job() -> None:
    """Hide what the first job left behind (modules, caches) from the garbage collector.

    It lives as long as the process, yet every full collection walked it again: in a
    sweep that was a large share of each job's time, and joblib's workers collect every
    second. Frozen objects are skipped by collections; later garbage is still collected.
    """
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="ui")
def ui_app(cfg: DictConfig) -> None:
    from fnnlab.tracking import open_store

    if cfg.ui.host not in ("127.0.0.1", "localhost"):
        raise ConfigValueError("ui.host", cfg.ui.host, "the UI binds to 127.0.0.1 only")
    store = open_store(cfg.tracking.uri, cfg.tracking.experiment)
    if cfg.tracking.uri.startswith(("http://", "https://")):
        # Already a tracking server: its own UI is the one to open.
        print(f"{cfg.tracking.uri.rstrip('/')}/#/experiments/{store.experiment_id}", flush=True)
        return
    base = f"http://{cfg.ui.host}:{cfg.ui.port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", cfg.tracking.uri,
           "--host", cfg.ui.host, "--port", str(cfg.ui.port), "--workers", "1"]
    server = subprocess.Popen(cmd)
    try:
        wait_until_up(f"{base}/health", server)
        print(f"{base}/#/experiments/{store.experiment_id}", flush=True)
        server.wait()
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"mlflow server did not answer at {url} within {timeout:.0f} s")


def _key_value(exc: BaseException) -> str | None:
    """'key=value' of the override a config error is about, from the command line."""
    key = None
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            key = e.full_key
            break
    if key is None:
        return None
    for arg in sys.argv[1:]:
        name, _, value = arg.lstrip("+~").partition("=")
        if name == key:
            return f"{key}={value}"
    return key


def _one_line(exc: BaseException) -> str:
    """The first line of the innermost message that says what is wrong."""
    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    where = _key_value(exc)
    return f"{where}: {reason}" if where and where not in reason else reason


def run_cli(prog: str, app: Callable[[], object]) -> None:
    """Run a Hydra app, turning config errors into one line and exit status 2."""
    from hydra_plugins.fnnlab_sweeper.fnnlab_sweeper import SweepFailed

    user_wants_trace = "HYDRA_FULL_ERROR" in os.environ
    # Let exceptions reach us instead of Hydra's multi-line report.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # SIGTERM ends runs like Ctrl-C does: the run in flight and the sweep end KILLED.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        app()
    except ConfigValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (HydraException, OmegaConfBaseException) as exc:
        if user_wants_trace:
            raise
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except SweepFailed as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)


def train() -> None:
    run_cli("fnnlab-train", train_app)


def ui() -> None:
    run_cli("fnnlab-ui", ui_app)
