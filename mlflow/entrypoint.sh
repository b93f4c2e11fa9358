#!/usr/bin/env bash
# Starts the fgpo deployment's MLflow tracking server (docker-compose service `mlflow`; also run
# natively by tests/test_deployment.py). Backend store: PostgreSQL database `mlflow`; artifacts
# are served by the server itself (--serve-artifacts) from $MLFLOW_ARTIFACTS_DESTINATION.
#
# MLFLOW_BACKEND_STORE_URI wins; else it is built from MLFLOW_DB_USER / _PASSWORD / _HOST /
# _PORT / _NAME. Listens on MLFLOW_SERVER_HOST:MLFLOW_SERVER_PORT (0.0.0.0:5000) with
# MLFLOW_SERVER_WORKERS (2) workers. The store URI goes through the environment, not argv, so
# `ps` does not show the password.
set -euo pipefail

if [[ -z "${MLFLOW_BACKEND_STORE_URI:-}" ]]; then
  MLFLOW_BACKEND_STORE_URI="postgresql://${MLFLOW_DB_USER:-mlflow}:${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}@${MLFLOW_DB_HOST:-postgres}:${MLFLOW_DB_PORT:-5432}/${MLFLOW_DB_NAME:-mlflow}"
fi
export MLFLOW_BACKEND_STORE_URI
export MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-/mlartifacts}"
# The job-execution workers (for MLflow's GenAI features) are not used here and cost ~1 GB.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

# MLFLOW_AUTH=basic-auth: MLflow's basic-auth app (users, passwords, per-experiment permissions;
# needs mlflow[auth]). Its user store is the backend database unless MLFLOW_AUTH_DATABASE_URI says
# otherwise; the admin user is created on first start with MLFLOW_AUTH_ADMIN_PASSWORD. Clients log
# in with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
APP=()
if [[ "${MLFLOW_AUTH:-none}" == basic-auth ]]; then
  : "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD for MLFLOW_AUTH=basic-auth}"
  export MLFLOW_AUTH_CONFIG_PATH="${MLFLOW_AUTH_CONFIG_PATH:-${TMPDIR:-/tmp}/mlflow-basic-auth.ini}"
  umask 077
  printf '%s\n' "[mlflow]" "default_permission = READ" \
    "database_uri = ${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}" \
    "admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}" \
    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" > "$MLFLOW_AUTH_CONFIG_PATH"
  APP=(--app-name basic-auth)
elif [[ "${MLFLOW_AUTH:-none}" != none ]]; then
  echo "mlflow-entrypoint: MLFLOW_AUTH must be basic-auth or none, got '${MLFLOW_AUTH}'" >&2
  exit 2
fi

# Airflow tasks reach the server as http://mlflow:5000 and browsers as localhost: both Host
# headers must be allowed (MLflow answers 403 to unknown hosts).
exec mlflow server "${APP[@]}" \
  --host "${MLFLOW_SERVER_HOST:-0.0.0.0}" \
  --port "${MLFLOW_SERVER_PORT:-5000}" \
  --workers "${MLFLOW_SERVER_WORKERS:-2}" \
  --serve-artifacts \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*}" \
  "$@"
