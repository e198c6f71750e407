#!/usr/bin/env bash
# A real MLflow tracking server on a real PostgreSQL, both on this machine.
#
#   scripts/server.sh start    # (make server)       initdb once, start PostgreSQL, then MLflow
#   scripts/server.sh stop     # (make server-stop)  stop MLflow, then PostgreSQL
#   scripts/server.sh status
#
# Everything lives in one git-ignored folder (FNNLAB_SERVER_DIR, default <project>/.server):
# pgdata/ (the cluster), artifacts/ (served by MLflow), pg_password, logs and pid files.
# PostgreSQL listens on 127.0.0.1 only (no Unix socket), always. MLflow listens on
# 127.0.0.1 unless FNNLAB_SERVER_HOST says otherwise, which is refused unless
# FNNLAB_SERVER_EXPOSE=1 and MLFLOW_AUTH_ADMIN_PASSWORD are set (MLflow basic auth on).
#
# Settings (environment): FNNLAB_PG_PASSWORD (else generated once into the folder),
# FNNLAB_PG_PORT (5433), FNNLAB_SERVER_PORT (5000), FNNLAB_SERVER_WORKERS (2),
# FNNLAB_SERVER_START_TIMEOUT (300: seconds to wait for PostgreSQL, then for MLflow),
# PG_BIN (folder of initdb/pg_ctl), MLFLOW (the mlflow executable, default the venv's).
# MLflow's job execution (its GenAI jobs; fnnlab has none) is off unless
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true: it starts a pool of extra processes.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${FNNLAB_SERVER_DIR:-$ROOT/.server}"
PG_PORT="${FNNLAB_PG_PORT:-5433}"
HOST="${FNNLAB_SERVER_HOST:-127.0.0.1}"
PORT="${FNNLAB_SERVER_PORT:-5000}"
WORKERS="${FNNLAB_SERVER_WORKERS:-2}"
START_TIMEOUT="${FNNLAB_SERVER_START_TIMEOUT:-300}"
MLFLOW="${MLFLOW:-$ROOT/.venv/bin/mlflow}"
PG_USER=fnnlab
PG_DB=mlflow

die() { echo "server.sh: error: $*" >&2; exit 1; }

find_pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then echo "$PG_BIN"; return; fi
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [[ -x "$d/initdb" ]] && { echo "$d"; return; }
    done
    command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return; }
    die "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install -y postgresql, or set PG_BIN"
}

# PostgreSQL refuses to run as root: as root, run its programs as the postgres user.
as_pg() {
    if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

password() {
    if [[ -n "${FNNLAB_PG_PASSWORD:-}" ]]; then echo "$FNNLAB_PG_PASSWORD"; return; fi
    if [[ ! -s "$DIR/pg_password" ]]; then
        (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$DIR/pg_password")
    fi
    cat "$DIR/pg_password"
}

pg_running() { [[ -f "$DIR/pgdata/postmaster.pid" ]] && as_pg "$PG_BIN/pg_ctl" -D "$DIR/pgdata" status >/dev/null 2>&1; }

mlflow_pid() {
    local pid
    pid="$(cat "$DIR/mlflow.pid" 2>/dev/null || true)"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
    return 0
}

start_pg() {
    local pw="$1"
    mkdir -p "$DIR/pgdata"
    if [[ ! -f "$DIR/pgdata/PG_VERSION" ]]; then
        [[ $EUID -eq 0 ]] && chown postgres: "$DIR/pgdata"
        chmod 700 "$DIR/pgdata"
        as_pg test -w "$DIR/pgdata" ||
            die "$DIR/pgdata is not reachable by the postgres user (set FNNLAB_SERVER_DIR to a folder it can reach)"
        local pwfile
        pwfile="$(mktemp)"
        printf '%s\n' "$pw" > "$pwfile"
        [[ $EUID -eq 0 ]] && chown postgres: "$pwfile"
        as_pg "$PG_BIN/initdb" -D "$DIR/pgdata" -U "$PG_USER" --pwfile="$pwfile" \
            --auth=scram-sha-256 -E UTF8 >"$DIR/initdb.log" 2>&1 ||
            { rm -f "$pwfile"; die "initdb failed, see $DIR/initdb.log"; }
        rm -f "$pwfile"
    fi
    if ! pg_running; then
        touch "$DIR/postgres.log"
        [[ $EUID -eq 0 ]] && chown postgres: "$DIR/postgres.log"
        as_pg "$PG_BIN/pg_ctl" -D "$DIR/pgdata" -l "$DIR/postgres.log" -w -t "$START_TIMEOUT" \
            -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=''" start >/dev/null ||
            die "PostgreSQL did not start, see $DIR/postgres.log"
    fi
    # The database MLflow uses; created once, over TCP like every other client.
    if ! PGPASSWORD="$pw" "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname='$PG_DB'" | grep -q 1; then
        PGPASSWORD="$pw" "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$PG_DB"
    fi
}

start_mlflow() {
    local pw="$1" auth=()
    [[ -n "$(mlflow_pid)" ]] && return 0
    [[ -x "$MLFLOW" ]] || MLFLOW="$(command -v mlflow)" || die "mlflow not found (make setup, or set MLFLOW)"
    if [[ "$HOST" != "127.0.0.1" ]]; then
        auth=(--app-name basic-auth --allowed-hosts "${FNNLAB_SERVER_ALLOWED_HOSTS:-*}")
    fi
    mkdir -p "$DIR/artifacts"
    # Own session, so stop can end the server and all its workers as one process group.
    # The password goes by environment (libpq reads PGPASSWORD), not on the command line.
    PGPASSWORD="$pw" MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
        setsid "$MLFLOW" server \
        --backend-store-uri "postgresql+psycopg2://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB" \
        --artifacts-destination "$DIR/artifacts" --serve-artifacts \
        --host "$HOST" --port "$PORT" --workers "$WORKERS" "${auth[@]}" \
        >"$DIR/mlflow.log" 2>&1 < /dev/null &
    echo $! > "$DIR/mlflow.pid"
    # The first start migrates the schema, and a busy machine slows the workers' imports:
    # wait while the server lives, up to the bound.
    local deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
            echo "MLflow tracking server at http://$HOST:$PORT (PostgreSQL on 127.0.0.1:$PG_PORT, data in $DIR)"
            return 0
        fi
        [[ -n "$(mlflow_pid)" ]] || die "mlflow server exited, see $DIR/mlflow.log$(log_tail)"
        sleep 0.25
    done
    stop_mlflow
    die "mlflow server did not answer within $START_TIMEOUT s, see $DIR/mlflow.log$(log_tail)"
}

# The end of MLflow's log, for an error message that is read where the log is not (CI).
log_tail() { printf '; its last lines:\n'; tail -n 15 "$DIR/mlflow.log" 2>/dev/null || true; }

stop_mlflow() {
    local pid i
    pid="$(mlflow_pid)"
    if [[ -n "$pid" ]]; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/mlflow.pid"
}

stop_pg() {
    if pg_running; then as_pg "$PG_BIN/pg_ctl" -D "$DIR/pgdata" -m fast -w stop >/dev/null; fi
}

PG_BIN="$(find_pg_bin)"
case "${1:-}" in
    start)
        # Checked before anything starts: beyond loopback only on request and with auth on.
        if [[ "$HOST" != "127.0.0.1" ]]; then
            [[ "${FNNLAB_SERVER_EXPOSE:-}" == 1 ]] ||
                die "FNNLAB_SERVER_HOST=$HOST: binding beyond 127.0.0.1 needs FNNLAB_SERVER_EXPOSE=1 and MLflow auth"
            [[ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]] ||
                die "FNNLAB_SERVER_HOST=$HOST: set MLFLOW_AUTH_ADMIN_PASSWORD to enable MLflow's basic auth"
        fi
        mkdir -p "$DIR"
        [[ $EUID -eq 0 ]] && chmod 755 "$DIR"
        pw="$(password)"
        start_pg "$pw"
        start_mlflow "$pw"
        ;;
    stop)
        stop_mlflow
        stop_pg
        echo "stopped (data kept in $DIR)"
        ;;
    status)
        pg_running && echo "PostgreSQL: running on 127.0.0.1:$PG_PORT" || echo "PostgreSQL: stopped"
        [[ -n "$(mlflow_pid)" ]] && echo "MLflow: running, pid $(mlflow_pid), port $PORT" || echo "MLflow: stopped"
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
