#!/usr/bin/env bash
# `make demo`: run the whole fgpo_retrain DAG through Airflow (`airflow dags test`) on the embedded
# default: SQLite for Airflow and MLflow under ./work, synthetic data, small models, CPU.
# PROFILE=helpsteer2 runs the same DAG on the real HelpSteer2 files with the offline models.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PROFILE=${PROFILE:-demo}
export FGPO_WORK_DIR=${FGPO_WORK_DIR:-$REPO/work}
export AIRFLOW_HOME=$FGPO_WORK_DIR/airflow
export AIRFLOW__CORE__DAGS_FOLDER=$REPO/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$REPO/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:///$AIRFLOW_HOME/airflow.db
export AIRFLOW__LOGGING__LOGGING_LEVEL=${AIRFLOW_LOG_LEVEL:-WARNING}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$FGPO_WORK_DIR/mlflow.db}
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PATH=$REPO/.venv/bin:$PATH
mkdir -p "$AIRFLOW_HOME"

echo "== fgpo demo: profile '$PROFILE', work folder $FGPO_WORK_DIR"
airflow db migrate > "$AIRFLOW_HOME/migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/migrate.log"; exit 1; }
RUN_DATE=$(date -u +%Y-%m-%dT%H:%M:%S+00:00)
start=$(date +%s)
airflow dags test fgpo_retrain "$RUN_DATE" -c "{\"profile\": \"$PROFILE\"}" > "$FGPO_WORK_DIR/demo-dag.log" 2>&1 || {
  tail -60 "$FGPO_WORK_DIR/demo-dag.log"; echo "== the DAG run failed; full log: $FGPO_WORK_DIR/demo-dag.log"; exit 1; }
echo "== fgpo_retrain finished in $(( $(date +%s) - start )) s (log: $FGPO_WORK_DIR/demo-dag.log)"
python scripts/demo_summary.py --profile "$PROFILE"
