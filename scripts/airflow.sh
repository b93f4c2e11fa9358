#!/usr/bin/env bash
# `make airflow`: a live Airflow (standalone: api-server, scheduler, dag-processor, triggerer,
# LocalExecutor, SQLite) with this repo's dags/ and plugins/, and an MLflow server (SQLite) for
# its runs and registry, both on 127.0.0.1. Everything lives under the work folder.
#
#   scripts/airflow.sh          start both, print URLs and login, run until Ctrl-C (stops both)
#   scripts/airflow.sh start    start both in the background and return once they answer
#   scripts/airflow.sh stop     stop what `start` started (signal to each process group)
#
# Settings (environment): FGPO_WORK_DIR (./work), AIRFLOW_HOME ($FGPO_WORK_DIR/airflow),
# AIRFLOW_PORT (8080), MLFLOW_PORT (5000), FGPO_PARALLELISM (3: task processes at once, each
# loads torch), FGPO_GPU_SLOTS (1: slots of pool fgpo_gpu), FGPO_LANDING_DIR
# ($FGPO_WORK_DIR/landing), FGPO_RETRAIN_PROFILE (unset: Variable fgpo_retrain_profile, else
# demo). The landing folder and MLflow UI address are given to Airflow as AIRFLOW_VAR_*
# environment variables, which win over Variables set in the UI: export your own to change them.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
MODE=${1:-run}

export FGPO_WORK_DIR=${FGPO_WORK_DIR:-$REPO/work}
export AIRFLOW_HOME=${AIRFLOW_HOME:-$FGPO_WORK_DIR/airflow}
AIRFLOW_PORT=${AIRFLOW_PORT:-8080}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
PIDS=$AIRFLOW_HOME/fgpo-processes   # one "name pgid" line per process group we started
mkdir -p "$AIRFLOW_HOME" "$FGPO_WORK_DIR"

stop() {
  [[ -f $PIDS ]] || { echo "airflow.sh: nothing to stop ($PIDS absent)"; return 0; }
  while read -r name pgid; do
    if kill -0 -- "-$pgid" 2>/dev/null; then
      echo "== stopping $name (process group $pgid)"
      kill -TERM -- "-$pgid" 2>/dev/null || true
    fi
  done < "$PIDS"
  for _ in $(seq 1 60); do  # up to 15 s for a clean exit, then KILL what is left
    alive=0
    while read -r name pgid; do kill -0 -- "-$pgid" 2>/dev/null && alive=1; done < "$PIDS"
    [[ $alive == 0 ]] && break
    sleep 0.25
  done
  while read -r name pgid; do kill -KILL -- "-$pgid" 2>/dev/null || true; done < "$PIDS"
  for _ in $(seq 1 40); do  # KILLed processes are gone once reaped
    alive=0
    while read -r name pgid; do kill -0 -- "-$pgid" 2>/dev/null && alive=1; done < "$PIDS"
    [[ $alive == 0 ]] && break
    sleep 0.25
  done
  rm -f "$PIDS"
}

if [[ $MODE == stop ]]; then
  stop
  exit 0
fi
if [[ -f $PIDS ]]; then
  echo "airflow.sh: already started ($PIDS); run 'make airflow-stop' first" >&2
  exit 1
fi

export PATH=$REPO/.venv/bin:$PATH
# This checkout's fgpo_tasks and fgpo_airflow, in every Airflow process (the metadata database's
# connect arguments are imported before Airflow puts plugins/ on sys.path).
export PYTHONPATH=$REPO:$REPO/plugins${PYTHONPATH:+:$PYTHONPATH}
export AIRFLOW__CORE__DAGS_FOLDER=$REPO/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$REPO/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM=${FGPO_PARALLELISM:-3}
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:///$AIRFLOW_HOME/airflow.db
# Every Airflow process shares that one file: wait up to 60 s for its lock (see fgpo_airflow/settings.py).
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS=fgpo_airflow.settings.SQLITE_CONNECT_ARGS
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC=fgpo_airflow.settings.SQLITE_CONNECT_ARGS
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT=$AIRFLOW_PORT
export AIRFLOW__API__BASE_URL=http://127.0.0.1:$AIRFLOW_PORT
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$AIRFLOW_PORT/execution/
if [[ ! -f $AIRFLOW_HOME/jwt_secret ]]; then
  python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$AIRFLOW_HOME/jwt_secret"
  chmod 600 "$AIRFLOW_HOME/jwt_secret"
fi
export AIRFLOW__API_AUTH__JWT_SECRET=$(cat "$AIRFLOW_HOME/jwt_secret")
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export AIRFLOW_VAR_FGPO_MLFLOW_UI_URL=${AIRFLOW_VAR_FGPO_MLFLOW_UI_URL:-$MLFLOW_TRACKING_URI}
export AIRFLOW_VAR_FGPO_LANDING_DIR=${AIRFLOW_VAR_FGPO_LANDING_DIR:-${FGPO_LANDING_DIR:-$FGPO_WORK_DIR/landing}}
[[ -n ${FGPO_RETRAIN_PROFILE:-} ]] && export AIRFLOW_VAR_FGPO_RETRAIN_PROFILE=$FGPO_RETRAIN_PROFILE
mkdir -p "$AIRFLOW_VAR_FGPO_LANDING_DIR"

echo "== preparing Airflow in $AIRFLOW_HOME (log: $AIRFLOW_HOME/setup.log)"
{
  airflow db migrate
  # Heavy tasks run in pool fgpo_gpu; a task in a pool that does not exist never starts.
  airflow pools set fgpo_gpu "${FGPO_GPU_SLOTS:-1}" "fgpo GPU-heavy tasks (one slot per GPU)"
} > "$AIRFLOW_HOME/setup.log" 2>&1 || { tail -40 "$AIRFLOW_HOME/setup.log"; exit 1; }

: > "$PIDS"
setsid airflow standalone > "$AIRFLOW_HOME/standalone.log" 2>&1 < /dev/null &
echo "airflow $!" >> "$PIDS"
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid mlflow server --workers 1 --host 127.0.0.1 \
  --port "$MLFLOW_PORT" --backend-store-uri "sqlite:///$FGPO_WORK_DIR/mlflow.db" \
  --artifacts-destination "$FGPO_WORK_DIR/mlartifacts" > "$FGPO_WORK_DIR/mlflow-server.log" 2>&1 < /dev/null &
echo "mlflow $!" >> "$PIDS"

if [[ $MODE == run ]]; then
  trap 'echo; stop; exit 0' INT TERM
fi

wait_for() {  # URL, what, log
  for _ in $(seq 1 240); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    while read -r name pgid; do
      kill -0 -- "-$pgid" 2>/dev/null || { echo "airflow.sh: $name exited; see $3" >&2; tail -30 "$3" >&2; stop; exit 1; }
    done < "$PIDS"
    sleep 0.5
  done
  echo "airflow.sh: $2 did not answer at $1 in 120 s; see $3" >&2
  stop
  exit 1
}
wait_for "http://127.0.0.1:$MLFLOW_PORT/health" "MLflow" "$FGPO_WORK_DIR/mlflow-server.log"
wait_for "http://127.0.0.1:$AIRFLOW_PORT/api/v2/monitor/health" "Airflow" "$AIRFLOW_HOME/standalone.log"
PASSWORDS=$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated
for _ in $(seq 1 20); do [[ -s $PASSWORDS ]] && break; sleep 0.5; done

cat <<EOF
== fgpo is live (both on 127.0.0.1 only)
   Airflow UI   http://127.0.0.1:$AIRFLOW_PORT   login: $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(', '.join(f'{u} / {p}' for u, p in d.items()))" "$PASSWORDS" 2>/dev/null || echo "see $PASSWORDS")
   MLflow UI    http://127.0.0.1:$MLFLOW_PORT   (runs, compare view, model registry)
   landing      $AIRFLOW_VAR_FGPO_LANDING_DIR   (drop annotation batches here; fgpo_ingest looks every 10 min)
   scheduled    profile ${AIRFLOW_VAR_FGPO_RETRAIN_PROFILE:-from Variable fgpo_retrain_profile, else demo}
   logs         $AIRFLOW_HOME/standalone.log, $FGPO_WORK_DIR/mlflow-server.log
EOF

if [[ $MODE == run ]]; then
  echo "== Ctrl-C stops both"
  while true; do
    while read -r name pgid; do
      kill -0 -- "-$pgid" 2>/dev/null || { echo "airflow.sh: $name exited"; stop; exit 1; }
    done < "$PIDS"
    sleep 2
  done
fi
