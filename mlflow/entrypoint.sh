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

# Airflow tasks reach the server as http://mlflow:5000 and browsers as localhost: both Host
# headers must be allowed (MLflow answers 403 to unknown hosts).
exec mlflow server \
  --host "${MLFLOW_SERVER_HOST:-0.0.0.0}" \
  --port "${MLFLOW_SERVER_PORT:-5000}" \
  --workers "${MLFLOW_SERVER_WORKERS:-2}" \
  --serve-artifacts \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*}" \
  "$@"
