#!/usr/bin/env bash
# A throwaway PostgreSQL (Debian's package, no system service) with the databases `airflow` and
# `mlflow`, created by the same docker/postgres/init-databases.sh as docker-compose.yaml's postgres
# service. Used by tests/test_deployment.py.
#
#   scripts/pg.sh start [BASE]   initdb + start in BASE (default: a new /tmp/pg-XXXXXX); prints
#                                base=, port=, airflow_url= (SQLAlchemy), mlflow_url=
#   scripts/pg.sh stop BASE [--clean]   fast shutdown (and delete BASE)
#   scripts/pg.sh log BASE       the server log
#
# Needs `apt-get install postgresql` (scripts/ci-services.sh). As root the server runs as the
# `postgres` user (root may not run it); every parent of BASE must be enterable by that user,
# hence /tmp rather than a mode-700 pytest folder. The server runs in its own session: always stop
# it (trap / finally), it does not die with the caller.
set -euo pipefail

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [[ -z "$dir" || ! -x "$dir/initdb" ]]; then
    echo "pg.sh: no /usr/lib/postgresql/*/bin/initdb; run scripts/ci-services.sh (apt-get install postgresql)" >&2
    exit 3
  fi
  echo "$dir"
}

as_pg() {  # run a server binary as `postgres` when we are root, else as ourselves
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local bin base port
  bin=$(pg_bin)
  base=${1:-$(mktemp -d /tmp/pg-XXXXXX)}
  mkdir -p "$base/sock"
  chmod 755 "$base"
  [[ $(id -u) -eq 0 ]] && chown -R postgres "$base"
  port=$(free_port)
  as_pg "$bin/initdb" -D "$base/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 --no-sync >"$base/initdb.log" 2>&1 \
    || { cat "$base/initdb.log" >&2; exit 1; }
  # Unix socket in BASE (short path, < 107 bytes), TCP on 127.0.0.1 only, no fsync: test data.
  as_pg "$bin/pg_ctl" -D "$base/data" -l "$base/postgres.log" -w -t 60 \
    -o "-k $base/sock -p $port -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
    || { cat "$base/postgres.log" >&2; exit 1; }
  echo "$port" >"$base/port"
  # Trust authentication: the passwords are set (as in compose) but not checked.
  local airflow_pw=${AIRFLOW_DB_PASSWORD:-airflow} mlflow_pw=${MLFLOW_DB_PASSWORD:-mlflow}
  PATH="$bin:$PATH" PGHOST=127.0.0.1 PGPORT=$port POSTGRES_USER=postgres \
    AIRFLOW_DB_PASSWORD=$airflow_pw MLFLOW_DB_PASSWORD=$mlflow_pw \
    bash "$(dirname "$0")/../docker/postgres/init-databases.sh" >"$base/init.log" 2>&1 \
    || { cat "$base/init.log" >&2; exit 1; }
  echo "base=$base"
  echo "port=$port"
  echo "airflow_url=postgresql+psycopg2://airflow:$airflow_pw@127.0.0.1:$port/airflow"
  echo "mlflow_url=postgresql://mlflow:$mlflow_pw@127.0.0.1:$port/mlflow"
}

stop() {
  local base=${1:?usage: pg.sh stop BASE [--clean]}
  if [[ -f "$base/data/postmaster.pid" ]]; then
    as_pg "$(pg_bin)/pg_ctl" -D "$base/data" -m fast -w -t 60 stop >/dev/null
  fi
  if [[ "${2:-}" == "--clean" ]]; then rm -rf "$base"; fi
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  log) cat "${2:?usage: pg.sh log BASE}/postgres.log" ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
