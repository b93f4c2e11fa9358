"""Task callbacks: say which pipeline stage failed and where its MLflow run is."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

# Tag fgpo_tasks.pipeline puts on every MLflow run of a pipeline run (value: the DAG run id).
# A failed task returns nothing, so the callback finds the failing stage's run by this tag: it is
# one of the runs of this run key that did not finish.
RUN_KEY_TAG = "fgpo.run_key"


def unfinished_runs(tracking_uri: str | None, run_key: str) -> list[tuple[str, str, str]]:
    """(run_id, run_name, status) of this run key's MLflow runs not FINISHED, newest first."""
    # A callback must not hang on an unreachable server: one quick try, short timeout.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    runs = client.search_runs(experiments, filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
                              order_by=["attributes.start_time DESC"], max_results=50)
    return [(r.info.run_id, r.info.run_name, r.info.status) for r in runs if r.info.status != "FINISHED"]


def _report(context: Any, retrying: bool) -> None:
    ti = context["ti"]
    run_key = context["run_id"]
    map_index = getattr(ti, "map_index", -1)
    stage = ti.task_id + (f"[{map_index}]" if map_index is not None and map_index >= 0 else "")
    log.error("fgpo stage %s failed (dag run %s, try %s, %s): %s", stage, run_key, ti.try_number,
              "will retry" if retrying else "no retries left", context.get("exception"))
    try:
        from fgpo_airflow import settings

        tracking = settings.tracking_uri()
        runs = unfinished_runs(tracking, run_key)
        ui = settings.mlflow_ui_base(tracking)
        for run_id, name, status in runs:
            log.error("unfinished MLflow run of %s: %s %s (%s)", run_key, name, settings.mlflow_run_url(ui, run_id),
                      status)
        if not runs:
            log.error("no unfinished MLflow run tagged %s=%s in %s: stage %s failed before it logged one",
                      RUN_KEY_TAG, run_key, tracking or "the default tracking store", stage)
    except Exception as exc:  # the callback reports; failing here would bury the task's own error
        log.warning("could not look up the MLflow runs of %s: %s", run_key, exc)


def on_stage_failure(context: Any) -> None:
    """on_failure_callback: the stage failed for good."""
    _report(context, retrying=False)


def on_stage_retry(context: Any) -> None:
    """on_retry_callback: the stage failed and Airflow will retry it."""
    _report(context, retrying=True)
