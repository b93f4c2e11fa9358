"""
### fgpo_ingest: report newly landed annotation batches

Every 10 minutes, lists the batch files in the landing folder (Variable `fgpo_landing_dir`, read
with the ingest format in Variable `fgpo_landing_format`, default `rated-responses`). When files
landed since the asset's previous event, it emits an `fgpo_annotation_batches` event whose extra
lists every landed batch (`batches`) and the new ones (`new`); that event schedules
`fgpo_retrain`. Nothing new: the task is skipped and no event is emitted.

Writers must make a batch appear atomically (write a dot-file or `*.tmp`, then rename). Landed
files are raw data: this DAG never moves or deletes them.

Why not an AssetWatcher: the file triggers in Airflow 3.3.2 (`FileDeleteTrigger`,
`DirectoryFileDeleteTrigger`) watch one fixed file name and delete it, and carry no batch list.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk import dag, task
from fgpo_airflow.assets import ANNOTATION_BATCHES
from fgpo_airflow.callbacks import on_stage_failure

log = logging.getLogger(__name__)


@dag(
    dag_id="fgpo_ingest",
    schedule=timedelta(minutes=10),
    start_date=None,
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": 2.0,
                  "on_failure_callback": on_stage_failure},
    tags=["fgpo"],
    doc_md=__doc__,
)
def fgpo_ingest():
    @task(inlets=[ANNOTATION_BATCHES], outlets=[ANNOTATION_BATCHES])
    def detect_batches(*, inlet_events=None, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException
        from fgpo_airflow import settings
        from fgpo_airflow.landing import batches_event, landed_batches, previous_event, skip_reason

        landing_dir, fmt = settings.landing()
        landed = landed_batches(landing_dir, fmt)
        previous = previous_event(inlet_events, ANNOTATION_BATCHES)
        event = batches_event(landing_dir, fmt, landed, previous)
        if event is None:
            why = skip_reason(landing_dir, fmt, landed, previous)
            log.info("skipped: %s", why)
            raise AirflowSkipException(why)
        outlet_events[ANNOTATION_BATCHES].extra = event
        log.info("%d new batch(es) in %s (%d landed): %s", len(event["new"]), landing_dir,
                 len(event["batches"]), event["new"])
        return {"landing_dir": landing_dir, "landed": len(event["batches"]), "new": event["new"]}

    detect_batches()


fgpo_ingest()
