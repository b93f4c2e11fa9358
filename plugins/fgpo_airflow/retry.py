"""Retry policy of fgpo tasks: retry infrastructure failures, not user errors."""

from __future__ import annotations

from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

# fgpo_tasks raises FgpoError (ConfigError, InputError) for bad params or bad data: a retry would
# fail the same way, so fail at once; but TrackingUnavailable (MLflow did not answer after its
# own retries) is an FgpoError worth retrying later. Anything else (a lost worker, OOM on a
# shared GPU) gets the task's retries with exponential backoff. Dotted paths, not the classes:
# Airflow resolves them (light modules: no torch, mlflow or pandas at import).
DEFAULT_RETRY_POLICY = ExceptionRetryPolicy(rules=[
    # first match wins: an unreachable MLflow is an FgpoError too, but worth the retries
    RetryRule(exception="fgpo_tasks.tracking.TrackingUnavailable", action=RetryAction.RETRY,
              reason="MLflow unreachable or failing: retry with backoff"),
    RetryRule(exception="fgpo_tasks.errors.FgpoError", action=RetryAction.FAIL,
              reason="fgpo user error (bad params or data): fix it and clear the task"),
])


def task_defaults() -> dict:
    """default_args every fgpo DAG shares: retries with exponential backoff, the retry policy
    above, and the failure/retry callbacks that name the stage and its MLflow run."""
    from datetime import timedelta

    from fgpo_airflow.callbacks import on_stage_failure, on_stage_retry

    return {
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        "retry_policy": DEFAULT_RETRY_POLICY,
        "on_failure_callback": on_stage_failure,
        "on_retry_callback": on_stage_retry,
    }
