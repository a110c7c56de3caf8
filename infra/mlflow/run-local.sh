#!/usr/bin/env bash
# Local MLflow team server without Docker or systemd: PostgreSQL (initdb + pg_ctl) + MLflow basic auth.
#   MLFLOW_AUTH_ADMIN_PASSWORD=... infra/mlflow/run-local.sh        # start (MLflow in the foreground)
#   infra/mlflow/run-local.sh stop                                  # stop PostgreSQL
# Environment (defaults in brackets):
#   MLFLOW_SERVER_HOME  state: pgdata, socket, artifacts, secret key
#                       [/var/lib/mlflow-server as root, else ~/.local/share/mlflow-server]
#   PGPORT [5433]  PG_SOCKET_DIR [$MLFLOW_SERVER_HOME/pg-socket]  PG_BIN [newest /usr/lib/postgresql/*/bin]
#   MLFLOW_HOST [0.0.0.0]  MLFLOW_PORT [5000]  MLFLOW_WORKERS [1]
#   MLFLOW_ARTIFACTS_DESTINATION [$MLFLOW_SERVER_HOME/artifacts]
#   MLFLOW_AUTH_ADMIN_USERNAME [admin]  MLFLOW_AUTH_ADMIN_PASSWORD (required to start)
#   MLFLOW_FLASK_SERVER_SECRET_KEY [generated once, kept in $MLFLOW_SERVER_HOME/secret_key]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
[ -x "$repo/.venv/bin/mlflow" ] && export PATH="$repo/.venv/bin:$PATH"

if [ "$(id -u)" = 0 ]; then
  home="${MLFLOW_SERVER_HOME:-/var/lib/mlflow-server}"
  pg_user=postgres
  as_pg() { runuser -u postgres -- "$@"; }
else
  home="${MLFLOW_SERVER_HOME:-$HOME/.local/share/mlflow-server}"
  pg_user="$(id -un)"
  as_pg() { "$@"; }
fi
PG_BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
[ -x "$PG_BIN/pg_ctl" ] || { echo "PostgreSQL not found: apt-get install postgresql, or set PG_BIN" >&2; exit 1; }
port="${PGPORT:-5433}"
sock="${PG_SOCKET_DIR:-$home/pg-socket}"
pgdata="$home/pgdata"

case "${1:-start}" in
  stop) as_pg "$PG_BIN/pg_ctl" -D "$pgdata" -m fast stop; exit 0 ;;
  start) [ $# -gt 0 ] && shift ;;
esac
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD}"

mkdir -p "$home" "$sock"
chmod 755 "$home"
chmod 700 "$sock"   # local connections are trusted, so only the owner (and root) may reach the socket
[ "$pg_user" = postgres ] && chown postgres: "$sock"
as_pg test -w "$sock" || { echo "user $pg_user cannot reach $home; set MLFLOW_SERVER_HOME elsewhere" >&2; exit 1; }

if [ ! -s "$pgdata/PG_VERSION" ]; then
  mkdir -p "$pgdata" && [ "$pg_user" = postgres ] && chown postgres: "$pgdata"
  as_pg "$PG_BIN/initdb" -D "$pgdata" -U "$pg_user" --auth-local=trust --auth-host=reject -E UTF8 >/dev/null
fi
if ! as_pg "$PG_BIN/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
  # Unix socket only; no TCP listener.
  as_pg "$PG_BIN/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w \
    -o "-p $port -k $sock -c listen_addresses=''" start
fi
for db in mlflow mlflow_auth; do
  as_pg "$PG_BIN/psql" -h "$sock" -p "$port" -U "$pg_user" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
    || as_pg "$PG_BIN/createdb" -h "$sock" -p "$port" -U "$pg_user" "$db"
done

if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
  [ -s "$home/secret_key" ] || (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$home/secret_key")
  MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$home/secret_key")"
fi
db_uri() { echo "postgresql+psycopg://$pg_user@/$1?host=$sock&port=$port"; }
export MLFLOW_FLASK_SERVER_SECRET_KEY
export MLFLOW_BACKEND_STORE_URI="$(db_uri mlflow)"
export MLFLOW_AUTH_DATABASE_URI="$(db_uri mlflow_auth)"
export MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-$home/artifacts}"
export MLFLOW_AUTH_CONFIG_PATH="$home/basic_auth.ini"
export MLFLOW_WORKERS="${MLFLOW_WORKERS:-1}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
mkdir -p "$MLFLOW_ARTIFACTS_DESTINATION" 2>/dev/null || true
echo "MLflow on http://${MLFLOW_HOST:-0.0.0.0}:${MLFLOW_PORT:-5000} (PostgreSQL socket $sock, port $port)"
exec "$here/start-server.sh" "$@"
