"""Deployment settings resolved at the Airflow edge and handed to fgpo_tasks as plain values.

Where each setting comes from (first match wins; call these inside tasks only, never at parse
time: a lookup may reach the metadata database or the API server):

- MLflow tracking URI: connection ``fgpo_mlflow`` (``extra.tracking_uri`` verbatim, else
  ``http(s)://host:port/schema``), else ``$MLFLOW_TRACKING_URI``, else fgpo_tasks' default
  (SQLite under the work folder).
- MLflow UI address for links: Variable ``fgpo_mlflow_ui_url``, else the tracking URI when it is
  http(s), else http://127.0.0.1:5000 (where ``mlflow ui`` listens by default).
- Storage root of run artifacts: Variable ``fgpo_storage_root``, else fgpo_tasks' default.
- Annotation landing folder and its ingest format: Variables ``fgpo_landing_dir`` and
  ``fgpo_landing_format``.
- Profile of scheduled (asset-triggered) fgpo_retrain runs: Variable ``fgpo_retrain_profile``,
  else ``demo``. A run triggered by hand uses the profile of its trigger form.
- GPU pool: ``fgpo_gpu``; ``scripts/airflow.sh`` (``make airflow``) and the compose init job create
  it (``airflow pools set``). Tasks in a pool that does not exist never start.

Variables and connections can also come from the environment
(``AIRFLOW_VAR_FGPO_STORAGE_ROOT``, ``AIRFLOW_CONN_FGPO_MLFLOW``), as docker-compose.yaml does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

GPU_POOL = "fgpo_gpu"  # created by scripts/airflow.sh and the compose init job (`airflow pools set`)
GPU_QUEUE = "gpu"  # the Celery worker that reserves a GPU listens on this queue
MLFLOW_CONN_ID = "fgpo_mlflow"
MLFLOW_UI_VAR = "fgpo_mlflow_ui_url"
STORAGE_ROOT_VAR = "fgpo_storage_root"
LANDING_DIR_VAR = "fgpo_landing_dir"
LANDING_FORMAT_VAR = "fgpo_landing_format"
RETRAIN_PROFILE_VAR = "fgpo_retrain_profile"
DEFAULT_RETRAIN_PROFILE = "demo"
# SQLite connect arguments of the metadata database, named by scripts/airflow.sh in
# AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS(_ASYNC). `airflow standalone` runs the API server,
# scheduler, DAG processor, triggerer and task processes on one SQLite file; a writer waits for
# the lock up to `timeout` seconds (sqlite3's default is 5) before the API answers 500
# "Database error", which a loaded 2-core machine reached at the first trigger.
SQLITE_CONNECT_ARGS = {"timeout": 60}
# Trigger keys a run accepts besides the DAG's params (deployment settings a conf may pin).
DEPLOYMENT_KEYS = ("tracking_uri", "storage_root")
DEFAULT_LANDING_FORMAT = "rated-responses"
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"


def _variable(key: str) -> str | None:
    from airflow.sdk import Variable

    value = Variable.get(key, default=None)
    return value or None


def connection_tracking_uri(conn: Any) -> str:
    """The tracking URI a connection describes: ``extra.tracking_uri``, else an http(s) URL."""
    extra = conn.extra_dejson or {}
    if extra.get("tracking_uri"):
        return str(extra["tracking_uri"])
    scheme = conn.conn_type if conn.conn_type in ("http", "https") else "http"
    if not conn.host:
        raise ValueError(f"connection {conn.conn_id!r} has no host and no extra.tracking_uri")
    port = f":{conn.port}" if conn.port else ""
    path = f"/{conn.schema.strip('/')}" if conn.schema else ""
    return f"{scheme}://{conn.host}{port}{path}"


def tracking_uri() -> str | None:
    """The MLflow tracking URI, or None to let fgpo_tasks pick its local default."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return connection_tracking_uri(Connection.get(MLFLOW_CONN_ID))
    except AirflowNotFoundException:
        return os.environ.get("MLFLOW_TRACKING_URI") or None


def storage_root() -> str | None:
    return _variable(STORAGE_ROOT_VAR)


def landing() -> tuple[str, str]:
    """(landing folder, its ingest format); a clear error when the folder is not configured."""
    folder = _variable(LANDING_DIR_VAR)
    if not folder:
        raise ValueError(f"Variable {LANDING_DIR_VAR!r} is not set: set it to the folder where "
                         "annotation batch files land (e.g. AIRFLOW_VAR_FGPO_LANDING_DIR)")
    return folder, _variable(LANDING_FORMAT_VAR) or DEFAULT_LANDING_FORMAT


def mlflow_ui_base(tracking: str | None) -> str:
    ui = _variable(MLFLOW_UI_VAR)
    if ui:
        return ui.rstrip("/")
    for uri in (tracking, os.environ.get("MLFLOW_TRACKING_URI")):
        if uri and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    return DEFAULT_MLFLOW_UI


def mlflow_run_url(ui_base: str, run_id: str) -> str:
    # The MLflow UI resolves /#/runs/<id> to the run's page without the experiment id.
    return f"{ui_base.rstrip('/')}/#/runs/{run_id}"


@dataclass(frozen=True)
class StepRun:
    """What every fgpo step receives besides its input URIs."""

    params: dict
    run_key: str
    created_at: str


EXPERIMENTS_DIR_ENV = "FGPO_EXPERIMENTS_DIR"


def experiment_config_path(value: str) -> str:
    """The experiment config a fgpo_experiment run names, as an absolute path inside the configs
    root: ``$FGPO_EXPERIMENTS_DIR``, else ``configs/experiments`` of this checkout. ``value`` is
    a file name in the root (``synthetic.yaml``) or ``configs/experiments/<file>``; anything
    resolving outside the root (an absolute path elsewhere, ``..``) or not a YAML file is a
    ConfigError: a trigger form must not make a worker read any file it can reach."""
    from pathlib import Path

    import fgpo_tasks
    from fgpo_tasks.errors import ConfigError

    repo = Path(fgpo_tasks.__file__).resolve().parent.parent
    root = Path(os.environ.get(EXPERIMENTS_DIR_ENV) or repo / "configs" / "experiments").resolve()
    given = Path(value)
    if given.is_absolute():
        candidate = given
    elif given.parts[:2] == ("configs", "experiments"):
        candidate = repo / given
    else:
        candidate = root / given
    candidate = candidate.resolve()
    available = sorted(p.name for p in root.glob("*.y*ml")) if root.is_dir() else []
    if root not in candidate.parents or candidate.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"experiment config {value!r} is not a YAML file in {root} "
                          f"(${EXPERIMENTS_DIR_ENV} sets that folder); available: {available}")
    if not candidate.is_file():
        raise ConfigError(f"no experiment config {value!r} in {root}; available: {available}")
    return str(candidate)


def check_trigger_keys(conf: dict | None, known: list[str]) -> None:
    """A trigger conf key that is neither a DAG param nor a deployment setting is a ConfigError
    naming it (with the closest known key) and listing the known ones."""
    import difflib

    from fgpo_tasks.errors import ConfigError

    allowed = sorted(set(known) | set(DEPLOYMENT_KEYS))
    unknown = sorted(set(conf or {}) - set(allowed))
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, allowed, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(f"unknown trigger key(s) {', '.join(hints)} in the run's conf; known keys: {allowed}")


def step_run(context: Any = None) -> StepRun:
    """The running task's params (with deployment settings and any triggering annotation batches
    applied), run key (the DAG run id) and timestamp (the run's logical date, else run_after).

    A run triggered by annotation batches uses the profile in Variable ``fgpo_retrain_profile``
    (default ``demo``) unless its conf names one. A conf key the DAG does not know fails the task
    with a ConfigError naming it."""
    if context is None:
        from airflow.sdk import get_current_context

        context = get_current_context()
    dag_run = context["dag_run"]
    conf = dict(getattr(dag_run, "conf", None) or {})
    dag = context.get("dag")
    if dag is not None and getattr(dag, "params", None) is not None:
        check_trigger_keys(conf, list(dag.params))
    params = dict(context["params"])
    batches = latest_annotation_event(context)
    if batches:
        # A run triggered by new annotations trains on every landed batch (the union);
        # fgpo_tasks' scoring cache makes only the new pairs cost scoring time.
        params["source"] = list(batches["batches"])
        params["format"] = [batches["format"]]
        if "profile" not in conf:
            params["profile"] = _variable(RETRAIN_PROFILE_VAR) or DEFAULT_RETRAIN_PROFILE
        log.info("triggered by annotation batches: %d landed, %d new; profile %r (Variable %s)",
                 len(batches["batches"]), len(batches.get("new", [])), params.get("profile"),
                 RETRAIN_PROFILE_VAR)
    for key, value in (("tracking_uri", tracking_uri()), ("storage_root", storage_root())):
        if value and not params.get(key):
            params[key] = value
    when = dag_run.logical_date or dag_run.run_after
    return StepRun(params=params, run_key=context["run_id"], created_at=when.isoformat())


def latest_annotation_event(context: Any) -> dict | None:
    """The extra of the newest ANNOTATION_BATCHES event that triggered this run, if any.

    Each event lists every landed batch, so the newest one covers the events queued before it."""
    from fgpo_airflow.assets import ANNOTATION_BATCHES

    events = context.get("triggering_asset_events") or {}
    try:
        matching = list(events[ANNOTATION_BATCHES])
    except KeyError:
        return None
    matching = [e for e in matching if (e.extra or {}).get("batches")]
    if not matching:
        return None
    return dict(max(matching, key=lambda e: e.timestamp).extra)
