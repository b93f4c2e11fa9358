"""The operator extra link from an fgpo task to its stage's MLflow run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

RUN_URL_KEY = "mlflow_run_url"  # key in the task's returned dict (set by FgpoStepOperator)


class MlflowRunLink(BaseOperatorLink):
    """'MLflow run' button on each fgpo task instance.

    Evaluated on the worker when the task finishes (Airflow 3 stores the link in XCom): it reads
    the URL the task returned, so the API server never needs to reach MLflow."""

    name = "MLflow run"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom  # the configured XCom backend

        result = XCom.get_value(ti_key=ti_key, key="return_value")
        return result.get(RUN_URL_KEY, "") if isinstance(result, dict) else ""
