"""A password in the tracking URI is refused by every command before anything is written or
printed: it would land in every run's params, config files and the sweep's overrides."""

from __future__ import annotations

import pytest
from conftest import TmpStore, run_script

from fnnlab.config import masked_uri

SECRET = "s3cr3t-pw"
URIS = [
    f"postgresql+psycopg2://fnnlab:{SECRET}@127.0.0.1:9/mlflow",
    f"http://user:{SECRET}@127.0.0.1:9",
]
COMMANDS = [
    ("fnnlab-train", []),
    ("fnnlab-train", ["-m", "model.hidden_dim=4,8"]),
    ("fnnlab-aggregate", []),
    ("fnnlab-ui", []),
    ("fnnlab-replay", ["replay.sweep=latest"]),
]


def test_masked_uri() -> None:
    assert masked_uri(URIS[0]) == "postgresql+psycopg2://fnnlab:***@127.0.0.1:9/mlflow"
    assert masked_uri(URIS[1]) == "http://user:***@127.0.0.1:9"
    for plain in ("sqlite:///mlruns/mlflow.db", "postgresql://fnnlab@127.0.0.1/db"):
        assert masked_uri(plain) == plain


@pytest.mark.parametrize("uri", URIS)
@pytest.mark.parametrize("command, args", COMMANDS)
def test_a_password_in_the_uri_is_refused(command, args, uri, store: TmpStore) -> None:
    out = run_script(
        command,
        *args,
        f"tracking.uri={uri}",
        f"hydra.run.dir={store.root}/o",
        f"hydra.sweep.dir={store.root}/m",
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert SECRET not in out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        f"{command}: error: tracking.uri={masked_uri(uri)}: a password in the URI would be "
        "stored with every run; give it by PGPASSWORD or ~/.pgpass (PostgreSQL), or "
        "MLFLOW_TRACKING_PASSWORD (a tracking server)"
    ]
