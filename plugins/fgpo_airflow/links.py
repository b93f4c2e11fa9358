"""The operator extra link from an fgpo task to its stage's MLflow run."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

RUN_URL_KEY = "mlflow_run_url"  # key in the task's returned dict (set by FgpoStepOperator)


def _in_task_runner() -> bool:
    """True inside a worker's task process, where XCom goes through the supervisor."""
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:
        return False
    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


def _url_from(value: Any) -> str:
    """The run URL in an XCom value as stored: a URL string, or the step's returned dict (JSON);
    read as plain JSON only, never deserialized into objects."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError:
            return value if isinstance(value, str) and value.startswith(("http://", "https://")) else ""
    if isinstance(value, str):
        return value if value.startswith(("http://", "https://")) else ""
    if isinstance(value, dict):
        url = value.get(RUN_URL_KEY, "")
        return url if isinstance(url, str) else ""
    return ""


def link_from_metadata_db(ti_key: TaskInstanceKey, link_key: str) -> str:
    """The link as the API server can read it: the XCom rows of the task instance in the
    metadata database (the link the worker stored when the task finished, else the URL in the
    task's return value). '' when the task has not finished."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        for key in (link_key, "return_value"):
            row = session.execute(XComModel.get_many(
                key=key, run_id=ti_key.run_id, dag_ids=ti_key.dag_id, task_ids=ti_key.task_id,
                map_indexes=ti_key.map_index).with_only_columns(XComModel.value)).first()
            if row is not None and (url := _url_from(row.value)):
                return url
    return ""


class MlflowRunLink(BaseOperatorLink):
    """'MLflow run' button on each fgpo task instance.

    Evaluated in two places. On the worker when the task finishes, Airflow 3 stores the link in
    XCom (``_link_MlflowRunLink``): there it reads the URL the task returned, through the task
    runner's XCom API. In the API server, where the plugin registration makes this class answer
    the UI and no task-runner API exists, it reads the same XCom rows from the metadata
    database. Neither needs to reach MLflow."""

    name = "MLflow run"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        if not _in_task_runner():
            return link_from_metadata_db(ti_key, self.xcom_key)
        from airflow.sdk.execution_time.xcom import XCom  # the configured XCom backend

        result = XCom.get_value(ti_key=ti_key, key="return_value")
        return result.get(RUN_URL_KEY, "") if isinstance(result, dict) else ""
