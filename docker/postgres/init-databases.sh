#!/usr/bin/env bash
# Creates the two databases of the fgpo deployment on a fresh PostgreSQL cluster: `airflow`
# (Airflow's metadata) and `mlflow` (MLflow's backend store), each owned by its own user.
# Run by the postgres image from /docker-entrypoint-initdb.d on first start, and by
# scripts/pg.sh for the native test topology. Connection: the usual PG* variables
# (local socket by default); user $POSTGRES_USER.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
  -v airflow_password="${AIRFLOW_DB_PASSWORD:?set AIRFLOW_DB_PASSWORD}" \
  -v mlflow_password="${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}" <<'SQL'
CREATE USER airflow WITH PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow ENCODING 'UTF8';
CREATE USER mlflow WITH PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow ENCODING 'UTF8';
SQL
