"""``@fgpo_step``: a TaskFlow decorator for pipeline steps, with the MLflow run link attached."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.sdk.bases.decorator import task_decorator_factory

from fgpo_airflow.links import RUN_URL_KEY, MlflowRunLink


class FgpoStepOperator(_PythonDecoratedOperator):
    """A TaskFlow python task whose returned dict gains ``mlflow_run_url`` (for MlflowRunLink)
    when it carries the stage's ``mlflow_run_id``."""

    custom_operator_name = "@fgpo_step"
    operator_extra_links = (MlflowRunLink(),)

    def execute(self, context: Any) -> Any:
        # Airflow labels whatever a task writes to stderr as ERROR: progress bars (tqdm) and the
        # INFO lines MLflow and transformers print there would make every successful task look
        # failed. Progress bars are off in tasks; the rest goes to stdout (logged as INFO).
        # Exceptions are still logged as errors by the task runner.
        os.environ.setdefault("TQDM_DISABLE", "1")
        with contextlib.redirect_stderr(sys.stdout):
            result = super().execute(context)
        if isinstance(result, dict) and result.get("mlflow_run_id"):
            from fgpo_airflow import settings

            ui = settings.mlflow_ui_base(settings.tracking_uri())
            result = {**result, RUN_URL_KEY: settings.mlflow_run_url(ui, result["mlflow_run_id"])}
        return result


def fgpo_step(python_callable=None, multiple_outputs: bool | None = None, **kwargs):
    """Like ``@task``, building an FgpoStepOperator."""
    return task_decorator_factory(python_callable=python_callable, multiple_outputs=multiple_outputs,
                                  decorated_operator_class=FgpoStepOperator, **kwargs)
