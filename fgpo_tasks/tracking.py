"""MLflow tracking for pipeline runs: one parent run per pipeline run, nested runs per stage.

A pipeline run is identified by its *run key* (e.g. the Airflow run id). The parent run carries
the tag ``fgpo.run_key``; asking for the same key again resumes that run instead of creating
another, so a retried task logs into the run it started. Stage runs (and finer ones, such as each
aspect's reward model) are children found by the tag ``fgpo.child_key`` under that parent.

Names stay stable so MLflow's compare view lines runs up: params ``<stage>.<field>`` (nested
config fields joined with dots), metrics ``<stage>.<name>``. Headline evaluation figures are also
logged on the parent run (``eval.<aspect>.win_rate``...), where runs are compared.

Every MLflow call goes through ``Tracker.call``: transient failures (connection refused, 5xx,
timeouts) are retried a few times with exponential backoff, then raised as ``TrackingUnavailable``
(an ``FgpoError`` naming the tracking URI, which Airflow's retry policy retries: the server may be
back later; an answer that rejects the request is a plain ``FgpoError``); MLflow's own HTTP retries are turned down meanwhile so a dead server fails in
seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from fgpo_tasks import jsonio
from fgpo_tasks.errors import FgpoError

log = logging.getLogger(__name__)

RUN_KEY_TAG = "fgpo.run_key"
CHILD_KEY_TAG = "fgpo.child_key"
KIND_TAG = "fgpo.kind"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
# MLflow 3's UI opens an experiment as a GenAI one (traces, sessions) unless told otherwise; the
# UI reads this tag (values genai_development / custom_model_development).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
MAX_PARAM_CHARS = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                    "DEADLINE_EXCEEDED", "SERVICE_UNDER_MAINTENANCE", "ABORTED"}
_MISSING_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /:]")


@dataclass
class TrackingConfig:
    """Deployment settings for MLflow (kept apart from any stage's hyperparameters)."""

    tracking_uri: str | None = field(default=None, metadata={
        "help": "MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///<work>/mlflow.db"})
    experiment_name: str = field(default="fgpo", metadata={"help": "MLflow experiment of the runs"})
    artifact_location: str | None = field(default=None, metadata={
        "help": "artifact root for a NEW experiment; default: the server's, or <db folder>/mlartifacts "
                "for a local sqlite URI"})
    retries: int = field(default=3, metadata={"help": "retries of a failing MLflow call"})
    backoff_s: float = field(default=1.0, metadata={
        "help": "first retry delay in seconds; doubles on each retry"})
    http_timeout_s: int = field(default=60, metadata={"help": "timeout of one HTTP request"})
    system_metrics: bool = field(default=True, metadata={
        "help": "log CPU / memory / disk (and GPU with nvidia-ml-py) metrics of each stage run"})
    system_metrics_interval_s: float = field(default=10.0, metadata={
        "help": "seconds between system-metric samples"})


class TrackingUnavailable(FgpoError):
    """MLflow did not answer (or answered 5xx) after the retries: worth retrying the task later."""


def default_tracking_uri() -> str:
    from fgpo_tasks.env import work_dir
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work_dir() / 'mlflow.db'}"


def metric_key(*parts: str) -> str:
    """A metric/param name MLflow accepts: parts joined by '.', odd characters as '_'."""
    return ".".join(_UNSAFE.sub("_", str(p)) for p in parts if p not in (None, ""))


def flatten(values: Any, prefix: str = "") -> dict[str, str]:
    """A config (dataclass or dict) as flat ``prefix.field[.sub]`` -> string params."""
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        values = dataclasses.asdict(values)
    out: dict[str, str] = {}
    if isinstance(values, dict) and values:
        for k, v in values.items():
            out.update(flatten(v, metric_key(prefix, k) if prefix else metric_key(k)))
        return out
    if isinstance(values, (list, tuple, dict)):
        text = jsonio.dumps(values, default=str, sort_keys=True)
    else:
        text = str(values)
    if len(text) > MAX_PARAM_CHARS:
        text = text[:MAX_PARAM_CHARS - 3] + "..."
    return {prefix: text}


def _is_transient(e: BaseException) -> bool:
    from mlflow.exceptions import MlflowException
    if isinstance(e, MlflowException):
        return e.error_code in _TRANSIENT_CODES
    return isinstance(e, (OSError, ConnectionError, TimeoutError)) or type(e).__module__.startswith(
        ("requests", "urllib3", "sqlalchemy"))


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _check_key(value: str, what: str) -> str:
    if not value or any(c in value for c in "'\"\\`\n"):
        raise FgpoError(f"{what} {value!r} must be non-empty and contain no quotes or backslashes")
    return value


class MlflowCalls:
    """A client of one tracking URI whose calls retry transient failures (no run is created)."""

    def __init__(self, config: "TrackingConfig | None" = None, *, tracking_uri: str | None = None):
        from mlflow import MlflowClient

        self.config = config or TrackingConfig()
        self.uri = tracking_uri or self.config.tracking_uri or default_tracking_uri()
        self.client = MlflowClient(self.uri)

    # -- calling MLflow ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _http_settings(self) -> Iterator[None]:
        """Turn MLflow's own long HTTP retry loop down for the duration (ours retries instead)."""
        settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.config.http_timeout_s)}
        old = {k: os.environ.get(k) for k in settings}
        for k, v in settings.items():
            if old[k] is None:  # a user's explicit setting wins
                os.environ[k] = v
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)

    def call(self, what: str, fn: Callable, *args, missing_ok: bool = False, retries: int | None = None,
             **kwargs):
        """``fn(*args, **kwargs)`` with retries on transient failures; errors name the URI.

        ``missing_ok``: a "does not exist" answer returns None instead of raising. ``retries``
        overrides the configured count (0: a call that must not be blindly repeated).
        """
        from mlflow.exceptions import MlflowException

        attempts = (self.config.retries if retries is None else retries) + 1
        for attempt in range(1, attempts + 1):
            try:
                with self._http_settings():
                    return fn(*args, **kwargs)
            except FgpoError:
                raise
            except Exception as e:  # noqa: BLE001 - classified below, re-raised as FgpoError
                if missing_ok and isinstance(e, MlflowException) and e.error_code in _MISSING_CODES:
                    return None
                if not _is_transient(e):
                    raise FgpoError(f"MLflow at {self.uri} rejected {what}: {_short(e)}") from e
                if attempt == attempts:
                    raise TrackingUnavailable(f"MLflow tracking server {self.uri} is unreachable or failing "
                                    f"({what}; {attempts} attempt(s)): {_short(e)}") from e
                delay = self.config.backoff_s * 2 ** (attempt - 1)
                log.warning("MLflow %s failed (%s); retry %d/%d in %.1fs", what, _short(e),
                            attempt, attempts - 1, delay)
                time.sleep(delay)



class Tracker(MlflowCalls):
    """One pipeline run in MLflow: finds or creates its parent run and the nested runs under it."""

    def __init__(self, run_key: str, config: TrackingConfig | None = None, *,
                 tracking_uri: str | None = None, run_name: str | None = None,
                 tags: dict[str, Any] | None = None, params: dict[str, Any] | None = None):
        import mlflow

        super().__init__(config, tracking_uri=tracking_uri)
        self.run_key = _check_key(run_key, "run key")
        # log_model / register_model use the process-wide URI: point it here.
        mlflow.set_tracking_uri(self.uri)
        self.experiment_id = self._experiment()
        self.parent_run_id = self._parent(run_name or run_key, tags or {})
        if params:
            self._log_new_params(self.parent_run_id, params)

    # -- runs ----------------------------------------------------------------------------------

    def _experiment(self) -> str:
        """The experiment's id, created when missing; always a classic (model training) one."""
        name = self.config.experiment_name
        exp = self.call(f"get experiment {name!r}", self.client.get_experiment_by_name, name)
        if exp is not None:
            if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
                self.call("tag experiment", self.client.set_experiment_tag, exp.experiment_id,
                          EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        location = self.config.artifact_location
        if location is None and self.uri.startswith("sqlite:///"):
            # Else MLflow puts artifacts in ./mlruns of whatever folder we happen to run in.
            location = (Path(self.uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
        try:
            return self.call(f"create experiment {name!r}", self.client.create_experiment, name,
                             artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except FgpoError:  # created meanwhile by another process
            exp = self.call(f"get experiment {name!r}", self.client.get_experiment_by_name, name)
            if exp is None:
                raise
            return exp.experiment_id

    def _log_new_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Params not yet on the run (MLflow params are write-once: a retried step, or a later
        step that knows the same value, logs nothing twice); None values are skipped."""
        run = self.call("get run", self.client.get_run, run_id)
        have = run.data.params
        new = {k: v for k, v in params.items() if v is not None and k not in have}
        if new:
            self.log_params(run_id, new)

    def _search(self, what: str, filters: dict[str, str]) -> list:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in filters.items())
        return self.call(what, self.client.search_runs, [self.experiment_id], query,
                         order_by=["attributes.start_time ASC"], max_results=50)

    def _find_or_create(self, what: str, filters: dict[str, str], tags: dict[str, Any],
                        run_name: str) -> str:
        found = self._search(f"find {what}", filters)
        if found:
            return found[0].info.run_id
        run = self.call(f"create {what}", self.client.create_run, self.experiment_id,
                        tags={**{k: str(v) for k, v in tags.items()}, **filters}, run_name=run_name)
        # Two processes racing on the same key: the oldest run wins, the other is removed.
        found = self._search(f"find {what}", filters)
        if found and found[0].info.run_id != run.info.run_id:
            self.call(f"delete duplicate {what}", self.client.delete_run, run.info.run_id)
            return found[0].info.run_id
        return run.info.run_id

    def _parent(self, run_name: str, tags: dict[str, Any]) -> str:
        return self._find_or_create(f"pipeline run {self.run_key!r}",
                                    {RUN_KEY_TAG: self.run_key, KIND_TAG: "pipeline"}, tags, run_name)

    def child_run(self, key: str, *, parent_id: str | None = None, tags: dict[str, Any] | None = None) -> str:
        """The nested run ``key`` under ``parent_id`` (default: the pipeline run), found or created."""
        _check_key(key, "child run key")
        parent_id = parent_id or self.parent_run_id
        filters = {RUN_KEY_TAG: self.run_key, CHILD_KEY_TAG: key, PARENT_TAG: parent_id}
        return self._find_or_create(f"run {key!r} of {self.run_key!r}", filters, tags or {}, key)

    @contextlib.contextmanager
    def stage(self, stage: str, *, parent_id: str | None = None,
              system_metrics: bool | None = None) -> Iterator["StageRun"]:
        """A nested run for a stage, resumed when it exists: FINISHED on success, FAILED on error
        (the pipeline run takes the same status), system metrics meanwhile."""
        run_id = self.child_run(stage, parent_id=parent_id, tags={"fgpo.stage": stage.split("/")[0]})
        for rid in (run_id, self.parent_run_id):
            self.call(f"start run {stage!r}", self.client.update_run, rid, status="RUNNING")
        monitor = None
        if self.config.system_metrics if system_metrics is None else system_metrics:
            monitor = self._start_system_metrics(run_id)
        status = "FAILED"
        try:
            yield StageRun(self, run_id, stage)
            status = "FINISHED"
        finally:
            if monitor is not None:
                with contextlib.suppress(Exception):
                    monitor.finish()
                    # MLflow's monitor publishes only after a full sampling interval: a stage
                    # shorter than that would carry no system metrics. Log one closing sample.
                    monitor.collect_metrics()
                    closing = {f"system/{k}": v for k, v in monitor.aggregate_metrics().items()}
                    self.log_metrics(run_id, closing, step=monitor._logging_step)
            try:
                for rid in (run_id, self.parent_run_id):
                    self.call(f"end run {stage!r}", self.client.set_terminated, rid, status=status)
            except FgpoError as e:
                if status == "FINISHED":
                    raise
                log.warning("%s", e)  # do not mask the stage's own error

    def _start_system_metrics(self, run_id: str):
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
            monitor = SystemMetricsMonitor(run_id, sampling_interval=self.config.system_metrics_interval_s,
                                           resume_logging=True, tracking_uri=self.uri)
            monitor.start()
            return monitor
        except Exception as e:  # noqa: BLE001 - metrics are best effort (e.g. psutil missing)
            log.warning("system metrics off for run %s: %s", run_id, _short(e))
            return None

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the pipeline (parent) run ended: FINISHED, FAILED or KILLED."""
        self.call("end pipeline run", self.client.set_terminated, self.parent_run_id, status=status)

    # -- logging -------------------------------------------------------------------------------

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param
        items = [Param(k, str(v)) for k, v in params.items()]
        for s in range(0, len(items), 100):
            self.call("log params", self.client.log_batch, run_id, params=items[s:s + 100])

    def log_config(self, run_id: str, stage: str, config: Any) -> None:
        """Every field of a stage config as params ``<stage>.<field>``."""
        self.log_params(run_id, flatten(config, metric_key(stage)))

    def log_metrics(self, run_id: str, metrics: dict[str, Any], prefix: str | None = None,
                    step: int | None = None) -> None:
        """Numeric values of a (nested) dict as ``prefix.key[.sub]`` metrics; others skipped."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        flat = _numeric(metrics, prefix or "")
        items = [Metric(k, v, now, step or 0) for k, v in flat.items()]
        for s in range(0, len(items), 1000):
            self.call("log metrics", self.client.log_batch, run_id, metrics=items[s:s + 1000])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag
        items = [RunTag(k, str(v)[:8000]) for k, v in tags.items()]
        self.call("set tags", self.client.log_batch, run_id, tags=items)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a folder's contents, under ``artifact_path`` of the run."""
        path = Path(path)
        if not path.exists():
            raise FgpoError(f"artifact to log not found: {path}")
        if path.is_dir():
            self.call(f"upload {path.name}/", self.client.log_artifacts, run_id, str(path),
                      artifact_path or path.name)
        else:
            self.call(f"upload {path.name}", self.client.log_artifact, run_id, str(path), artifact_path)

    def log_dict(self, run_id: str, data: dict, artifact_file: str) -> None:
        self.call(f"upload {artifact_file}", self.client.log_dict, run_id, data, artifact_file)

    def log_pair_dataset(self, run_id: str, pair_dir: str | Path, context: str = "training",
                         name: str | None = None) -> str:
        """A contract pair directory as a run input (mlflow.data), its fingerprint as digest."""
        import mlflow
        from mlflow.entities import DatasetInput, InputTag

        from fgpo_tasks import contract

        pair_dir = Path(pair_dir)
        df = contract.read_pairs(pair_dir)
        manifest = contract.read_manifest(pair_dir)
        fingerprint = contract.data_fingerprint(pair_dir, df)
        flat = df.copy()
        for col in ("prompt_messages", "ratings_chosen", "ratings_rejected"):
            # mlflow.data infers a schema per column: nested values go in as JSON text
            flat[col] = [None if v is None else jsonio.dumps(v, sort_keys=True, default=str) for v in flat[col]]
        with warnings.catch_warnings():
            # "source can be interpreted in multiple ways" (MLflow registers '' and 'file' alike)
            # and schema hints about integer columns: noise for a dataset we only record.
            warnings.simplefilter("ignore", UserWarning)
            ds = mlflow.data.from_pandas(flat, source=str(pair_dir.resolve()),
                                         name=name or f"{manifest.get('stage', 'pairs')}:{pair_dir.name}",
                                         digest=fingerprint[:36])  # MLflow's digest column: 36 chars
            entity = ds._to_mlflow_entity()
        self.call(f"log dataset {pair_dir}", self.client.log_inputs, run_id,
                  [DatasetInput(entity, [InputTag("mlflow.data.context", context)])])
        return fingerprint

    def metrics_callback(self, run_id: str, prefix: str = "dpo") -> "MetricsCallback":
        return MetricsCallback(self, run_id, prefix)

    def record_registration(self, run_dir: str | Path, model_dir: str | Path, result: dict) -> None:
        """On the pipeline run: the data params, the registered version as params and tags, and a
        note linking the version's page in the MLflow UI (relative link: works behind any host)."""
        params = {**run_data_params(run_dir, model_dir)}
        version = result.get("version")
        name = result.get("model_name")
        if version:
            params["registered_version"] = f"{name}/{version}"
        self._log_new_params(self.parent_run_id, params)
        if version:
            verdict = "champion" if result.get("promoted") else "challenger"
            note = (f"Registered as [{name} version {version}](#/models/{name}/versions/{version}) "
                    f"({verdict}).\n\nGate: {result.get('reason', '')}")
            self.set_tags(self.parent_run_id, {"fgpo.model_version": f"{name}/{version}",
                                               "fgpo.registered_as": verdict, "mlflow.note.content": note})



def _numeric(values: Any, prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(values, dict):
        for k, v in values.items():
            out.update(_numeric(v, metric_key(prefix, k) if prefix else metric_key(k)))
    elif isinstance(values, bool):
        out[prefix] = float(values)
    elif isinstance(values, (int, float)) or type(values).__module__ == "numpy":
        try:
            out[prefix] = float(values)
        except (TypeError, ValueError):
            pass
    return out


@dataclass
class StageRun:
    """A stage's nested run: log into it without repeating the run id."""

    tracker: Tracker
    run_id: str
    stage: str

    def log_config(self, config: Any) -> None:
        self.tracker.log_config(self.run_id, self.stage.split("/")[0], config)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None, *, prefix: str | None = None) -> None:
        self.tracker.log_metrics(self.run_id, metrics, prefix or self.stage.split("/")[0], step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.tracker.log_artifact(self.run_id, path, artifact_path)

    def log_dataset(self, pair_dir: str | Path, context: str = "training", name: str | None = None) -> str:
        return self.tracker.log_pair_dataset(self.run_id, pair_dir, context, name)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.tracker.set_tags(self.run_id, tags)

    def metrics_callback(self, prefix: str | None = None) -> "MetricsCallback":
        return self.tracker.metrics_callback(self.run_id, prefix or self.stage.split("/")[0])


class MetricsCallback:
    """Per-step metrics (e.g. DPO curves) into a run: ``cb(step, {"loss": ...})``.

    Also accepts ``cb({"loss": ...}, step)`` and ``cb(step=..., metrics=...)``. A tracking failure
    never stops training: points are kept and sent with the next call (or ``flush()``), and the
    failure is logged once.
    """

    def __init__(self, tracker: Tracker, run_id: str, prefix: str = "dpo", max_pending: int = 100_000):
        self.tracker, self.run_id, self.prefix, self.max_pending = tracker, run_id, prefix, max_pending
        self._pending: list = []
        self._warned = False

    def __call__(self, step=None, metrics=None, **kw) -> None:
        from mlflow.entities import Metric
        if isinstance(step, dict):
            step, metrics = metrics, step
        metrics = {**(metrics or {}), **{k: v for k, v in kw.items() if k not in ("step", "metrics")}}
        step = int(kw.get("step", step) or 0)
        now = int(time.time() * 1000)
        self._pending += [Metric(k, v, now, step) for k, v in _numeric(metrics, self.prefix).items()]
        self._pending = self._pending[-self.max_pending:]
        self.flush(raise_errors=False)

    def flush(self, raise_errors: bool = True) -> None:
        if not self._pending:
            return
        try:
            for s in range(0, len(self._pending), 1000):
                self.tracker.client.log_batch(self.run_id, metrics=self._pending[s:s + 1000])
            self._pending = []
        except Exception as e:  # noqa: BLE001 - training goes on; the points wait
            if raise_errors:
                raise FgpoError(f"MLflow tracking server {self.tracker.uri} is unreachable or failing "
                                f"(log step metrics): {_short(e)}") from e
            if not self._warned:
                log.warning("MLflow step metrics not logged yet (%s); will retry", _short(e))
                self._warned = True


# ---------------------------------------------------------------------------------------------
# Stage helpers

def log_stage(tracker: Tracker, stage: str, *, config: Any = None, metrics: dict | None = None,
              artifacts: list[str | Path] | tuple = (), datasets: list[tuple[str | Path, str]] | tuple = (),
              tags: dict | None = None) -> str:
    """Log a finished stage in one call: config as params, metrics, artifacts, dataset inputs."""
    with tracker.stage(stage, system_metrics=False) as run:
        if config is not None:
            run.log_config(config)
        if metrics:
            run.log_metrics(metrics)
        for path in artifacts:
            run.log_artifact(path)
        for pair_dir, context in datasets:
            run.log_dataset(pair_dir, context)
        if tags:
            run.set_tags(tags)
    return run.run_id


def evaluation_metrics(results: dict) -> dict[str, float]:
    """The stable headline metrics of an evaluation: eval.<aspect>.<figure>, eval.overall.<figure>."""
    out: dict[str, float] = {}
    for aspect, f in results["aspects"].items():
        for name in ("win_rate", "lc_win_rate", "candidate_mean_reward", "baseline_mean_reward",
                     "reward_delta"):
            out[metric_key("eval", aspect, name)] = float(f[name])
        out[metric_key("eval", aspect, "win_rate_ci_low")] = float(f["win_rate_ci"][0])
        out[metric_key("eval", aspect, "win_rate_ci_high")] = float(f["win_rate_ci"][1])
    for name, value in results["overall"].items():
        out[metric_key("eval", "overall", name)] = float(value)
    out["eval.n_prompts"] = float(results["prompts"]["n_prompts"])
    return out


def log_evaluation(tracker: Tracker, eval_dir: str | Path) -> str:
    """An evaluation folder into MLflow: the stage run (params, metrics, table, plots,
    generations), one nested run per aspect's reward model, and headline metrics on the parent."""
    from fgpo_tasks.evaluate import model_label, read_results

    eval_dir = Path(eval_dir)
    results = read_results(eval_dir)
    metrics = evaluation_metrics(results)
    with tracker.stage("evaluate") as run:
        run.log_config({k: v for k, v in results["config"].items()})
        tracker.log_metrics(run.run_id, metrics)
        run.set_tags({"fgpo.candidate_fingerprint": results["candidate"]["fingerprint"],
                      "fgpo.baseline_fingerprint": results["baseline"]["fingerprint"],
                      "fgpo.baseline_path": results["baseline"]["path"]})
        for name in ("results.json", "results.md", "results.csv", "generations.jsonl", "manifest.json"):
            if (eval_dir / name).is_file():
                run.log_artifact(eval_dir / name, "evaluation")
        if (eval_dir / "plots").is_dir():
            run.log_artifact(eval_dir / "plots", "evaluation/plots")
        for aspect, f in results["aspects"].items():
            for spec, m in f["models"].items():
                key = f"evaluate/{metric_key(aspect)}/{model_label(spec)}"
                child = tracker.child_run(key, parent_id=run.run_id,
                                          tags={"fgpo.stage": "evaluate", "fgpo.aspect": aspect})
                tracker.log_params(child, {"reward_model.spec": spec, "reward_model.aspect": aspect,
                                           "reward_model.role": "evaluation"})
                tracker.log_metrics(child, {k: v for k, v in m.items() if k != "win_rate_ci"},
                                    prefix="eval")
                tracker.log_metrics(child, {"win_rate_ci_low": m["win_rate_ci"][0],
                                            "win_rate_ci_high": m["win_rate_ci"][1]}, prefix="eval")
                tracker.call("end run", tracker.client.set_terminated, child, status="FINISHED")
    tracker.log_metrics(tracker.parent_run_id, metrics)
    return run.run_id


# ---------------------------------------------------------------------------------------------
# The pipeline (parent) run as MLflow's compare view shows it: a readable name, the headline
# knobs as params, the registered version linked.

def _field_default(cls, name: str):
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def pipeline_run_name(cfg: Any, when: str | None = None) -> str:
    """'<profile> <strategy> budget <b> <YYYY-MM-DD HH:MM>' (UTC): what a user reads in the list."""
    stamp = when or time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    return f"{cfg.profile} {cfg.strategy} budget {cfg.budget:g} {stamp}"


def pipeline_run_params(cfg: Any) -> dict[str, Any]:
    """The headline knobs of a pipeline config (fgpo_tasks.pipeline.PipelineConfig), resolved the
    way the stages resolve them (override, else the profile's section, else the stage default)."""
    from fgpo_tasks.dpo.config import DPOConfig
    from fgpo_tasks.reward_models import RewardModelConfig

    dpo, rm = cfg.stages.get("dpo", {}), cfg.stages.get("reward_models", {})

    def pick(override, section: dict, key: str, cls):
        if override is not None:
            return override
        return section.get(key, _field_default(cls, key))

    return {"profile": cfg.profile, "strategy": cfg.strategy, "budget": cfg.budget,
            "proxy_backbone": pick(cfg.reward_backbone, rm, "backbone", RewardModelConfig),
            "policy": pick(cfg.policy_model, dpo, "model", DPOConfig),
            "beta": pick(cfg.beta, dpo, "beta", DPOConfig),
            "epochs": pick(cfg.epochs, dpo, "epochs", DPOConfig),
            "dpo_loss": dpo.get("loss_type", _field_default(DPOConfig, "loss_type")),
            "aspects": ",".join(cfg.aspects) or "all", "model_name": cfg.model_name,
            "gate.min_win_rate": cfg.min_win_rate, "gate.max_aspect_regression": cfg.max_aspect_regression,
            "gate.min_prompts": getattr(cfg, "min_prompts", None)}


def _step_json(run_dir: Path, step: str) -> dict:
    """A run's record of one step (``<run_dir>/<step>.json``, fgpo_tasks.stages): its result."""
    f = run_dir / f"{step}.json"
    return (json.loads(f.read_text()).get("result") or {}) if f.is_file() else {}


def _manifest_of(data_dir: str | None) -> dict:
    f = Path(data_dir) / "manifest.json" if data_dir else None
    return json.loads(f.read_text()) if f is not None and f.is_file() else {}


def run_data_params(run_dir: str | Path, model_dir: str | Path) -> dict[str, Any]:
    """What the run trained on, from its committed steps: the validated data's fingerprint,
    pairs in (validated) and selected, the DPO data's fingerprint."""
    run_dir = Path(run_dir)
    validated = _step_json(run_dir, "validate")
    selected = _step_json(run_dir, "select")
    manifest = _manifest_of(validated.get("data"))
    info_file = Path(model_dir) / "fgpo_model.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    pairs_in = (manifest.get("row_counts") or {}).get("total")
    return {"data_fingerprint": manifest.get("fingerprint"), "pairs_in": pairs_in,
            "pairs_selected": selected.get("selected"), "dpo_data_fingerprint": info.get("data_fingerprint")}
