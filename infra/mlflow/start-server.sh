#!/usr/bin/env bash
# Start an MLflow tracking server with basic-auth logins. Configured entirely from the environment:
#   MLFLOW_BACKEND_STORE_URI        postgresql+psycopg://USER:PASS@HOST:5432/mlflow     (required)
#   MLFLOW_AUTH_DATABASE_URI        users/permissions DB, e.g. .../mlflow_auth         (required)
#   MLFLOW_ARTIFACTS_DESTINATION    s3://bucket/path or a directory                     (required)
#   MLFLOW_AUTH_ADMIN_PASSWORD      password of the admin user created on first start   (required)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  random secret for sessions/CSRF                     (required)
#   MLFLOW_AUTH_ADMIN_USERNAME (admin), MLFLOW_AUTH_DEFAULT_PERMISSION (READ),
#   MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000), MLFLOW_WORKERS (2), MLFLOW_AUTH_CONFIG_PATH
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?}" "${MLFLOW_AUTH_DATABASE_URI:?}" "${MLFLOW_ARTIFACTS_DESTINATION:?}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?}" "${MLFLOW_FLASK_SERVER_SECRET_KEY:?}"
export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"
export MLFLOW_AUTH_CONFIG_PATH="${MLFLOW_AUTH_CONFIG_PATH:-${TMPDIR:-/tmp}/mlflow-basic-auth.ini}"

# The admin user name and password are read from the environment by MLflow itself.
umask 077
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI

exec mlflow server \
  --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-2}" \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --app-name basic-auth \
  "$@"
