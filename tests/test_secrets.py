"""No password of a tracking URI at rest or on screen, while the jobs still connect with it.

A `tracking.uri=` on the command line has its password moved into the environment the
client libraries read (PGPASSWORD, MLFLOW_TRACKING_USERNAME/PASSWORD) before Hydra sees
the command line; a password from a config file is refused with one masked line. The
server tests run real sweeps with a password (PostgreSQL, and an MLflow server with basic
auth) and grep the store, the artifact and output folders and the output for it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import BIN, TmpStore, run_in_process, run_script
from mlflow.tracking import MlflowClient
from server_fixtures import TrackingServer, free_port, stop_group

from fnnlab import cli
from fnnlab.config import ConfigValueError, masked_uri, password_to_env
from fnnlab.provenance import read_digest

SECRET = "s3cr3t-pw"
URIS = [
    f"postgresql+psycopg2://fnnlab:{SECRET}@127.0.0.1:9/mlflow",
    f"http://user:{SECRET}@127.0.0.1:9",
]
COMMANDS = [
    ("fnnlab-train", []),
    ("fnnlab-train", ["-m", "model.hidden_dim=4,8"]),
    ("fnnlab-aggregate", []),
    ("fnnlab-ui", ["ui.port=0"]),
    ("fnnlab-replay", ["replay.sweep=latest"]),
]
CREDENTIAL_VARS = ("PGPASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any password a test or the fixture put there."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS}
    return {**env, **extra}


def test_masked_uri() -> None:
    assert masked_uri(URIS[0]) == "postgresql+psycopg2://fnnlab:***@127.0.0.1:9/mlflow"
    assert masked_uri(URIS[1]) == "http://user:***@127.0.0.1:9"
    for plain in ("sqlite:///mlruns/mlflow.db", "postgresql://fnnlab@127.0.0.1/db"):
        assert masked_uri(plain) == plain


def test_password_to_env_moves_the_password_out_of_the_override() -> None:
    env: dict[str, str] = {}
    args = [
        "-m",
        "tracking.uri=postgresql+psycopg2://fnnlab:p%40ss@127.0.0.1:5433/mlflow",
        "seed=0,1",
    ]
    assert password_to_env(args, env) == [
        "-m",
        "tracking.uri=postgresql+psycopg2://fnnlab@127.0.0.1:5433/mlflow",
        "seed=0,1",
    ]
    assert env == {"PGPASSWORD": "p@ss"}  # decoded, as the driver would have

    env = {}
    assert password_to_env(["++tracking.uri='https://ad%3Amin:pw@host:5000/'"], env) == [
        "++tracking.uri='https://host:5000/'"
    ]
    assert env == {"MLFLOW_TRACKING_USERNAME": "ad:min", "MLFLOW_TRACKING_PASSWORD": "pw"}

    # No password: nothing to move, the argument stays as it is.
    plain = [
        "tracking.uri=http://user@127.0.0.1:5000",
        "+tracking.uri=sqlite:///x.db",
        "tracking.experiment=a:b@c",
    ]
    env = {}
    assert password_to_env(plain, env) == plain
    assert env == {}
    # The same password already in the environment is no conflict.
    env = {"PGPASSWORD": "pw"}
    password_to_env(["tracking.uri=postgresql://u:pw@h/db"], env)
    assert env == {"PGPASSWORD": "pw"}


def test_password_to_env_refuses_two_passwords_and_unknown_schemes() -> None:
    with pytest.raises(ConfigValueError, match=r"PGPASSWORD is set to another value") as exc:
        password_to_env([f"tracking.uri={URIS[0]}"], {"PGPASSWORD": "other"})
    assert SECRET not in str(exc.value)
    with pytest.raises(ConfigValueError, match=r"MLFLOW_TRACKING_USERNAME is set to another"):
        password_to_env([f"tracking.uri={URIS[1]}"], {"MLFLOW_TRACKING_USERNAME": "someone"})
    with pytest.raises(ConfigValueError, match=r"only a PostgreSQL or http\(s\) URI") as exc:
        password_to_env([f"tracking.uri=mysql://u:{SECRET}@h/db"], {})
    assert SECRET not in str(exc.value)


def test_the_composed_config_has_no_password(store: TmpStore) -> None:
    out = run_script("fnnlab-train", "--cfg", "job", f"tracking.uri={URIS[0]}", env=clean_env())
    assert out.returncode == 0, out.stderr
    assert "uri: postgresql+psycopg2://fnnlab@127.0.0.1:9/mlflow" in out.stdout
    assert SECRET not in out.stdout + out.stderr


@pytest.mark.parametrize(
    "uri, variable",
    [(URIS[0], "PGPASSWORD"), (URIS[1], "MLFLOW_TRACKING_PASSWORD")],
)
def test_two_passwords_are_refused(uri, variable, store: TmpStore) -> None:
    out = run_script(
        "fnnlab-train",
        f"tracking.uri={uri}",
        f"hydra.run.dir={store.root}/o",
        env=clean_env(**{variable: "another-one"}),
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        f"fnnlab-train: error: tracking.uri={masked_uri(uri)}: {variable} is set to another "
        "value; give the password in one place only"
    ]
    assert SECRET not in out.stdout + out.stderr
    assert not (store.root / "o").exists()


def tracking_option(folder: Path, uri: str) -> list[str]:
    """Overrides selecting a tracking config file (conf/tracking/ style) that holds uri."""
    (folder / "tracking").mkdir(parents=True, exist_ok=True)
    (folder / "tracking" / "mine.yaml").write_text(f"uri: {uri}\nexperiment: test\n")
    return [f"hydra.searchpath=[file://{folder}]", "tracking=mine"]


WHERE = [("command-line", URIS[1]), ("config-file", URIS[0]), ("config-file", URIS[1])]
ENTRY = {
    "fnnlab-train": cli.train,
    "fnnlab-aggregate": cli.aggregate,
    "fnnlab-ui": cli.ui,
    "fnnlab-replay": cli.replay,
}


def refusal(where: str, uri: str, folder: Path) -> tuple[list[str], str]:
    """The overrides that give uri, and the one line a command then prints: on the command
    line a password is accepted and gone from the URI every later line shows (the
    unreachable server is reported under its password-free address, and the health check
    does not take the user part for a host name); in a config file it is refused."""
    if where == "command-line":
        given, shown = [f"tracking.uri={uri}"], "http://127.0.0.1:9"
        error = (
            "no MLflow tracking server answers ([Errno 111] Connection refused); start one "
            "with `make server`"
        )
    else:
        given, shown = tracking_option(folder / "conf", uri), masked_uri(uri)
        error = (
            "a password from a config file would be stored with every run; give the URI on "
            "the command line (tracking.uri=..., its password then goes into PGPASSWORD or "
            "MLFLOW_TRACKING_PASSWORD), or set those variables yourself"
        )
    return given, f"tracking.uri={shown}: {error}"


@pytest.mark.parametrize("where, uri", WHERE)
@pytest.mark.parametrize("command, args", COMMANDS)
def test_a_password_is_shown_by_no_command(
    command, args, where, uri, store: TmpStore, monkeypatch, capsys
) -> None:
    """In this process, through each console script's entry point (a process start per case
    costs seconds; the next test runs two cases as processes). A password from a config file
    is refused before anything is written."""
    for name in CREDENTIAL_VARS:  # as clean_env(); what the command sets is undone after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    given, line = refusal(where, uri, store.root)
    folders = [f"hydra.run.dir={store.root}/o", f"hydra.sweep.dir={store.root}/m"]
    status = run_in_process(monkeypatch, ENTRY[command], *args, *given, *folders)
    out = capsys.readouterr()
    assert status == 2, out.out + out.err
    assert SECRET not in out.out + out.err
    assert out.err.strip().splitlines() == [f"{command}: error: {line}"]
    if where == "config-file":  # refused before Hydra makes the job's folder
        assert not (store.root / "o").exists() and not (store.root / "m").exists()


@pytest.mark.parametrize(
    "command, args, where, uri",
    [(*COMMANDS[0], *WHERE[0]), (*COMMANDS[4], *WHERE[1])],
    ids=["train-command-line", "replay-config-file"],
)
def test_a_password_is_shown_by_no_console_script(command, args, where, uri, store) -> None:
    given, line = refusal(where, uri, store.root)
    out = run_script(
        command,
        *args,
        *given,
        f"hydra.run.dir={store.root}/o",
        f"hydra.sweep.dir={store.root}/m",
        env=clean_env(),
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert SECRET not in out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [f"{command}: error: {line}"]


# --- against real servers ------------------------------------------------------------------


def new_password() -> str:
    """A password made at run time, not written in this file: a run's git_diff.patch artifact
    holds the uncommitted changes of the checkout, this file among them. The @ must be
    percent-encoded in a URI."""
    return f"Pw-{uuid.uuid4().hex[:12]}@{uuid.uuid4().hex[:6]}"


def secret_forms(password: str) -> list[str]:
    """The password as given, as the URI holds it, and the part before the @ alone."""
    return [password, quote(password, safe=""), password.partition("@")[0]]


def leaks(secrets: list[str], folders: list[Path], texts: dict[str, str]) -> list[str]:
    """Where any of the secrets occurs: files (as bytes) under the folders, and the texts.
    Fails when there is nothing to search, so an empty grep cannot pass."""
    found, searched = [], 0
    for folder in folders:
        for path in [folder] if folder.is_file() else sorted(folder.rglob("*")):
            if path.is_file():
                searched += 1
                data = path.read_bytes()
                found += [f"{path}: {s}" for s in secrets if s.encode() in data]
    for name, text in texts.items():
        found += [f"{name}: {s}" for s in secrets if s in text]
    assert searched, f"no files under {folders}"
    return found


def command_lines(needle: str) -> list[str]:
    """Command lines of this machine's processes that hold needle (what `ps` shows)."""
    hits = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in cmdline:
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace")
            hits.append(f"{proc.name}: {shown}")
    return hits


def run_commands(uri: str, experiment: str, root: Path, *sweep_args: str) -> dict[str, str]:
    """A sweep in two worker processes, then fnnlab-aggregate and fnnlab-replay, all with the
    password in tracking.uri and none in the environment; returns what they printed."""
    common = [f"tracking.uri={uri}", f"tracking.experiment={experiment}"]
    steps = {
        "sweep": (
            "fnnlab-train",
            "-m",
            "model.hidden_dim=4,8",
            "seed=0,1",
            "train.epochs=5",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={root}/multirun",
            *sweep_args,
        ),
        "aggregate": ("fnnlab-aggregate", f"hydra.run.dir={root}/outputs/aggregate"),
        "replay": (
            "fnnlab-replay",
            "replay.sweep=latest",
            "replay.sample=1",
            f"hydra.run.dir={root}/outputs/replay",
        ),
    }
    printed = {}
    for name, (command, *args) in steps.items():
        out = run_script(command, *args, *common, env=clean_env())
        assert out.returncode == 0, f"{name}: {out.stdout}\n{out.stderr}"
        printed[f"{name} stdout"], printed[f"{name} stderr"] = out.stdout, out.stderr
    assert len(list(root.glob("multirun/*/.hydra/overrides.yaml"))) == 4
    # The answer is made again and its files checked against their hashes, through this store.
    last = printed["replay stdout"].strip().splitlines()[-1]
    assert last.startswith("the sweep's answer") and last.endswith("): identical"), last
    return printed


def check_runs(client: MlflowClient, experiment: str, uri_without_password: str) -> None:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.role = 'job'")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4
    assert {r.data.params["tracking.uri"] for r in runs} == {uri_without_password}
    assert "config.yaml" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    (parent,) = client.search_runs([exp.experiment_id], "tags.role = 'sweep'")
    assert f"tracking.uri={uri_without_password}" in parent.data.tags["sweep_overrides"]
    assert "aggregate" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "runs.csv"} <= read_digest(parent.data.tags["aggregate.files"]).keys()


def pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    return str(found[0]) if found else shutil.which(name) or pytest.fail(f"no {name}")


@pytest.mark.server
@pytest.mark.slow
def test_a_postgres_password_connects_and_is_stored_nowhere(
    tracking_server: TrackingServer, tmp_path: Path
) -> None:
    import psycopg2

    # A role of its own with a password holding a character the URI must percent-encode.
    role, db = f"pw_{uuid.uuid4().hex[:8]}", f"secrets_{uuid.uuid4().hex[:8]}"
    password = new_password()
    uri_without = f"postgresql+psycopg2://{role}@127.0.0.1:{tracking_server.pg_port}/{db}"
    uri = uri_without.replace(f"{role}@", f"{role}:{quote(password, safe='')}@")
    admin = (tracking_server.dir / "pg_password").read_text().strip()
    conn = psycopg2.connect(
        host="127.0.0.1",
        port=tracking_server.pg_port,
        user="fnnlab",
        password=admin,
        dbname="postgres",
    )
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password,))
            cur.execute(f"CREATE DATABASE {db} OWNER {role}")
    finally:
        conn.close()
    # The experiment's artifacts in this test's folder (a database URI's default is the
    # project's mlruns/artifacts); this client gets the password the way a user's would.
    experiment = "secrets"
    MlflowClient(tracking_uri=uri).create_experiment(
        experiment, artifact_location=(tmp_path / "artifacts").as_uri()
    )
    printed = run_commands(uri, experiment, tmp_path)
    check_runs(MlflowClient(tracking_uri=uri), experiment, uri_without)

    dump = subprocess.run(
        [pg_bin("pg_dump"), "-h", "127.0.0.1", "-p", str(tracking_server.pg_port), "-U", role, db],
        env=clean_env(PGPASSWORD=password),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "sweep_overrides" in dump  # the whole store is in it
    secrets = secret_forms(password)
    logs = tracking_server.dir / "mlflow.log", tracking_server.dir / "postgres.log"
    assert leaks(secrets, [tmp_path, *logs], {"pg_dump": dump, **printed}) == []


@pytest.fixture
def basic_auth_server(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """An MLflow tracking server with basic auth (MLflow's basic-auth app) on a free port of
    127.0.0.1, SQLite store; yields its URL, the admin password and its folder. Stopped,
    with its workers, when the test ends."""
    folder = tmp_path / "auth-server"
    folder.mkdir()
    password = new_password()
    (folder / "auth.ini").write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{folder}/auth.db\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # MLflow's own cache of a checked login: without it every request hashes the
        # password again (see README "A tracking server on PostgreSQL").
        "auth_cache_ttl_seconds = 600\n"
    )
    env = clean_env(
        MLFLOW_AUTH_CONFIG_PATH=str(folder / "auth.ini"),
        MLFLOW_AUTH_ADMIN_PASSWORD=password,  # creates the admin user on the first start
        MLFLOW_FLASK_SERVER_SECRET_KEY=uuid.uuid4().hex,  # the auth app's CSRF key
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    port = free_port()
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        f"sqlite:///{folder}/mlflow.db",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    url = f"http://127.0.0.1:{port}"
    with (folder / "server.log").open("w") as log:
        # Own session: stopping it ends the server and its uvicorn worker together.
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (folder / "server.log").read_text()[-2000:]
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "basic-auth server did not start"
                time.sleep(0.3)
        yield url, password, folder
    finally:
        stop_group(proc, term_wait=30)


@pytest.mark.server
@pytest.mark.slow
def test_an_http_password_connects_and_is_stored_nowhere(
    basic_auth_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, password, folder = basic_auth_server
    # The server wants a login: without one it answers 401.
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
    uri = url.replace("http://", f"http://admin:{quote(password, safe='')}@")
    # Hydra's basic sweeper, which also writes multirun.yaml (fnnlab's does not).
    printed = run_commands(uri, "secrets", tmp_path / "out", "hydra/sweeper=basic")
    assert (tmp_path / "out" / "multirun" / "multirun.yaml").is_file()

    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    check_runs(MlflowClient(tracking_uri=url), "secrets", url)

    # The whole store (tracking database, users database, artifacts), the server's log and
    # config, the sweep's folders and what the commands printed.
    secrets = secret_forms(password)
    assert leaks(secrets, [folder, tmp_path / "out"], printed) == []


@pytest.mark.server
def test_a_user_name_alone_in_an_http_uri_from_a_config_file_works(
    tracking_server: TrackingServer, store: TmpStore
) -> None:
    uri = tracking_server.url.replace("http://", "http://someone@")
    out = run_script(
        "fnnlab-train",
        "train.epochs=3",
        *tracking_option(store.root / "conf", uri),
        f"hydra.run.dir={store.root}/o",
        env=clean_env(),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = re.search(r"/runs/([0-9a-f]{32})", out.stdout)[1]
    assert tracking_server.client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.server
def test_fnnlab_pg_password_is_on_no_command_line_and_in_no_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """scripts/server.sh hands FNNLAB_PG_PASSWORD to initdb by a file it removes, and to psql,
    createdb and mlflow server by environment: no command line (what `ps` shows), log or
    file of the server's folder holds it, and a job connects through the server."""
    password = f"Fp-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("FNNLAB_PG_PASSWORD", password)
    # Not under pytest's tmp folder: PostgreSQL runs as the postgres user (see the fixture).
    folder = Path(tempfile.mkdtemp(prefix="fnnlab-server-"))
    server = TrackingServer(dir=folder, pg_port=free_port(), port=free_port())
    try:
        server.start()
        assert command_lines(password) == []
        out = run_script(
            "fnnlab-train",
            "train.epochs=3",
            *server.overrides("pg-password", folder / "out"),
            env=clean_env(),
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert command_lines(password) == []
        server.stop()
        assert not (folder / "pg_password").exists()  # the given one is not written down
        assert {p.name for p in folder.glob("*.log")} >= {"mlflow.log", "postgres.log"}
        assert leaks([password], [folder], {"stdout": out.stdout, "stderr": out.stderr}) == []
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
