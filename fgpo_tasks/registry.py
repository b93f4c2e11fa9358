"""Registering a trained policy in the MLflow model registry, behind a promotion gate.

Every candidate becomes a model version with the alias ``challenger``. The alias ``champion``
moves to it only when the gate passes: the candidate's overall win rate over the current champion
is at least ``min_win_rate`` and no aspect's win rate falls below ``0.5 - max_aspect_regression``.
The evaluation must have been run against the current champion (compared by weight fingerprint);
with no champion yet, against whatever baseline the evaluation used (the reference model).

Idempotent and safe to retry: the version carries the tag ``fgpo.run_key``, so registering the
same pipeline run again finds it instead of creating another. Steps run in an order a crash can
interrupt anywhere: log the model (its URI is remembered on the register run), create the version
with every identifying tag at once, wait until it is READY, set ``challenger``, then
``champion`` if promoted, upload ``gate.json``, and last the tag ``fgpo.gate.passed``, which marks
the registration complete. A retry resumes from the first missing step; a complete registration
is returned as recorded, without touching aliases.

The policy is logged with MLflow's transformers flavor (a text-generation pipeline, loadable with
``mlflow.transformers.load_model('models:/<name>@champion')`` or as pyfunc) and explicit
``pip_requirements``: inferred requirements would add torchvision, which breaks beside this torch.
It is logged from an in-memory pipeline: logging a checkpoint folder path fails in MLflow 3.17's
flavor code with transformers 5.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fgpo_tasks import jsonio
from fgpo_tasks.config import check, to_dict
from fgpo_tasks.errors import FgpoError
from fgpo_tasks.provenance import code_version
from fgpo_tasks.tracking import RUN_KEY_TAG, Tracker, TrackingConfig, _check_key, metric_key

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
DONE_TAG = "fgpo.gate.passed"  # written last: its presence marks a complete registration
REASON_TAG = "fgpo.gate.reason"
MODEL_FP_TAG = "fgpo.model_fingerprint"
LOGGED_MODEL_TAG = "fgpo.logged_model_uri"


@dataclass
class GateConfig:
    min_win_rate: float = field(default=0.5, metadata={
        "help": "promote only when the candidate's overall win rate (mean over aspects) over the "
                "champion is at least this"})
    max_aspect_regression: float = field(default=0.05, metadata={
        "help": "promote only when no aspect's win rate is below 0.5 minus this"})
    metric: Literal["win_rate", "lc_win_rate"] = field(default="win_rate", metadata={
        "help": "which win rate the gate reads: raw or length-controlled"})
    require_champion_baseline: bool = field(default=True, metadata={
        "help": "fail the gate when the evaluation's baseline is not the current champion"})

    def __post_init__(self):
        check(0.0 <= self.min_win_rate <= 1.0, f"min_win_rate must be in [0, 1], got {self.min_win_rate}")
        check(0.0 <= self.max_aspect_regression <= 0.5,
              f"max_aspect_regression must be in [0, 0.5], got {self.max_aspect_regression}")


@dataclass
class RegisterConfig:
    """The `register` section of a config file: registry name, gate, model logging."""

    model_name: str = field(default="fgpo-policy", metadata={"help": "registered model name"})
    min_win_rate: float = field(default=0.5, metadata={"help": GateConfig.__dataclass_fields__[
        "min_win_rate"].metadata["help"]})
    max_aspect_regression: float = field(default=0.05, metadata={"help": GateConfig.__dataclass_fields__[
        "max_aspect_regression"].metadata["help"]})
    gate_metric: Literal["win_rate", "lc_win_rate"] = field(default="win_rate", metadata={
        "help": "which win rate the gate reads: raw or length-controlled"})
    require_champion_baseline: bool = field(default=True, metadata={
        "help": "fail the gate when the evaluation's baseline is not the current champion"})
    pip_requirements: list[str] | None = field(default=None, metadata={
        "help": "requirements recorded with the model; default: this mlflow, torch and transformers"})
    await_registration_s: int = field(default=300, metadata={
        "help": "seconds to wait for a new model version to become READY"})

    def __post_init__(self):
        _check_key(self.model_name, "model_name")
        check(self.await_registration_s >= 1, f"await_registration_s must be >= 1, got {self.await_registration_s}")

    def gate(self) -> GateConfig:
        return GateConfig(self.min_win_rate, self.max_aspect_regression, self.gate_metric,
                          self.require_champion_baseline)


def gate_decision(results: dict, gate: GateConfig, champion: dict | None) -> tuple[bool, str]:
    """(passed, reason) for evaluation ``results`` (results.json) against ``champion``.

    ``champion``: None when there is none, else {"version", "fingerprint"}.
    """
    m = gate.metric
    base = results["baseline"]
    if champion is not None and gate.require_champion_baseline and \
            champion.get("fingerprint") and champion["fingerprint"] != base["fingerprint"]:
        return False, (f"evaluated against baseline {base['path']} ({base['fingerprint'][:12]}), but the "
                       f"current champion is version {champion['version']} "
                       f"({champion['fingerprint'][:12]}): evaluate against the champion")
    overall = float(results["overall"][m])
    floor = 0.5 - gate.max_aspect_regression
    failures = []
    if overall < gate.min_win_rate:
        failures.append(f"overall {m} {overall:.3f} < min_win_rate {gate.min_win_rate:.3f}")
    for aspect, f in results["aspects"].items():
        if float(f[m]) < floor:
            failures.append(f"aspect {aspect!r} {m} {float(f[m]):.3f} < {floor:.3f} "
                            f"(0.5 - max_aspect_regression {gate.max_aspect_regression})")
    against = (f"champion version {champion['version']}" if champion is not None
               else f"baseline {base['path']} (no champion yet)")
    if failures:
        return False, f"gate failed against {against}: " + "; ".join(failures)
    return True, (f"gate passed against {against}: overall {m} {overall:.3f} >= {gate.min_win_rate:.3f}, "
                  f"no aspect below {floor:.3f}")


def _pip_requirements() -> list[str]:
    import mlflow
    import torch
    import transformers
    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"transformers=={transformers.__version__}"]


def _log_policy(tracker: Tracker, run_id: str, model_dir: Path, config: RegisterConfig,
                info: dict) -> str:
    """Log the policy folder as an MLflow transformers model in ``run_id``; return its URI."""
    import mlflow
    from transformers import pipeline

    from mlflow.models import infer_signature

    from fgpo_tasks.models import load_policy  # full weights, or a LoRA adapter merged on its base
    pipe = pipeline("text-generation", model=load_policy(model_dir), tokenizer=str(model_dir), device="cpu")
    # Text in, text out; decoding settable per call: predict(..., params={"max_new_tokens": 64}).
    signature = infer_signature(["a prompt"], ["a response"], params={
        "max_new_tokens": 128, "do_sample": False, "temperature": 1.0, "top_p": 1.0})
    flavor_log = logging.getLogger("mlflow.transformers")
    level = flavor_log.level
    flavor_log.setLevel(logging.ERROR)  # model-card / license lookups on the hub: noise offline
    try:
        model_info = tracker.call(
            f"log model {model_dir}", mlflow.transformers.log_model, transformers_model=pipe,
            name="policy", task="text-generation", run_id=run_id,
            pip_requirements=config.pip_requirements or _pip_requirements(), signature=signature,
            model_config={"return_full_text": False},  # predict() answers; it does not echo the prompt
            metadata={"fgpo": json.loads(jsonio.dumps(info, default=str))})
    finally:
        flavor_log.setLevel(level)
    return model_info.model_uri


def _champion(tracker: Tracker, name: str) -> dict | None:
    mv = tracker.call(f"get alias {CHAMPION!r} of {name!r}", tracker.client.get_model_version_by_alias,
                      name, CHAMPION, missing_ok=True)
    if mv is None:
        return None
    return {"version": str(mv.version), "fingerprint": mv.tags.get(MODEL_FP_TAG), "run_key": mv.tags.get(RUN_KEY_TAG)}


def _await_ready(tracker: Tracker, name: str, version: str, timeout_s: int):
    deadline = time.monotonic() + timeout_s
    while True:
        mv = tracker.call(f"get version {version} of {name!r}", tracker.client.get_model_version, name, version)
        if mv.status == "READY":
            return mv
        if mv.status == "FAILED_REGISTRATION":
            tracker.call("delete failed version", tracker.client.delete_model_version, name, version)
            raise FgpoError(f"MLflow at {tracker.uri}: version {version} of {name!r} failed to register "
                            f"({mv.status_message}); deleted it, retry the registration")
        if time.monotonic() > deadline:
            raise FgpoError(f"MLflow at {tracker.uri}: version {version} of {name!r} not READY after "
                            f"{timeout_s}s (status {mv.status}); retry later")
        time.sleep(1.0)


def _create_version(tracker: Tracker, model_uri: str, name: str, run_key: str, tags: dict,
                    config: RegisterConfig):
    """Create the model version, READY; after a failed attempt, look for it before trying again
    (the server may have created it and only the answer got lost)."""
    import mlflow

    query = f"name = '{name}' and tags.`{RUN_KEY_TAG}` = '{run_key}'"
    attempts = tracker.config.retries + 1
    for attempt in range(1, attempts + 1):
        found = tracker.call(f"search versions of {name!r}", tracker.client.search_model_versions, query)
        if found:
            version = str(min(int(v.version) for v in found))
            return _await_ready(tracker, name, version, config.await_registration_s)
        try:
            mv = tracker.call(f"register {model_uri} as {name!r}", mlflow.register_model, model_uri, name,
                              await_registration_for=config.await_registration_s, tags=tags, retries=0)
            return _await_ready(tracker, name, str(mv.version), config.await_registration_s)
        except FgpoError:
            if attempt == attempts:
                raise
            time.sleep(tracker.config.backoff_s * 2 ** (attempt - 1))


def register_candidate(model_dir: str | Path, eval_results: dict | str | Path, *, tracking_uri: str | None,
                       model_name: str, run_key: str, gate: GateConfig | None = None,
                       tags: dict[str, Any] | None = None, config: RegisterConfig | None = None,
                       tracking: TrackingConfig | None = None) -> dict[str, Any]:
    """Register ``model_dir`` as a version of ``model_name`` for pipeline run ``run_key``.

    ``eval_results``: the evaluation's results.json (dict, file or folder) of this model against
    the current champion. ``tags``: data_fingerprint, strategy, budget (and anything else) recorded
    on the version as ``fgpo.<key>``. Returns {version, aliases, promoted, reason, created, ...}.
    """
    from fgpo_tasks.evaluate import model_fingerprint, read_model_info, read_results

    model_dir = Path(model_dir)
    from fgpo_tasks.models import check_policy_dir
    check_policy_dir(model_dir)  # a model folder: full weights or a LoRA adapter alone
    config = config or RegisterConfig(model_name=model_name)
    gate = gate or config.gate()
    _check_key(model_name, "model name")
    results = eval_results if isinstance(eval_results, dict) else read_results(eval_results)
    fingerprint = model_fingerprint(model_dir)
    if results["candidate"]["fingerprint"] != fingerprint:
        raise FgpoError(f"the evaluation results are for another model ({results['candidate']['path']}, "
                        f"{results['candidate']['fingerprint'][:12]}), not {model_dir} ({fingerprint[:12]})")
    info = read_model_info(model_dir)
    meta = {"data_fingerprint": info.get("data_fingerprint", "unknown"),
            "code_version": info.get("code_version") or code_version(),
            "strategy": "unknown", "budget": "unknown", **{k: v for k, v in (tags or {}).items() if v is not None}}
    version_tags = {**{f"fgpo.{k}": str(v) for k, v in meta.items()}, RUN_KEY_TAG: run_key,
                    MODEL_FP_TAG: fingerprint,
                    "fgpo.eval.baseline_fingerprint": results["baseline"]["fingerprint"],
                    **{metric_key("fgpo.eval", m): f"{results['overall'][m]:.4f}"
                       for m in ("win_rate", "lc_win_rate")}}

    tracker = Tracker(run_key, tracking, tracking_uri=tracking_uri)
    client = tracker.client
    found = tracker.call(f"search versions of {model_name!r}", client.search_model_versions,
                         f"name = '{model_name}' and tags.`{RUN_KEY_TAG}` = '{run_key}'")
    found = sorted(found or [], key=lambda v: int(v.version))
    with tracker.stage("register") as run:
        if found and found[0].tags.get(DONE_TAG) is not None:
            mv = tracker.call("get version", client.get_model_version, model_name, found[0].version)
            log.info("run %r already registered as version %s of %r", run_key, mv.version, model_name)
            return {"model_name": model_name, "version": str(mv.version), "created": False,
                    "promoted": mv.tags[DONE_TAG] == "true", "reason": mv.tags.get(REASON_TAG, ""),
                    "aliases": sorted(mv.aliases or []), "run_id": tracker.parent_run_id,
                    "tracking_uri": tracker.uri}
        created = False
        if found:
            mv = _await_ready(tracker, model_name, found[0].version, config.await_registration_s)
        else:
            run.log_config({"model_name": model_name, **to_dict(gate),  # the gate actually applied
                            "pip_requirements": config.pip_requirements,
                            "await_registration_s": config.await_registration_s})
            run.set_tags({k: v for k, v in version_tags.items()})
            stage_run = tracker.call("get register run", client.get_run, run.run_id)
            model_uri = stage_run.data.tags.get(LOGGED_MODEL_TAG)
            if model_uri is None:  # a retry reuses the model an earlier attempt logged
                model_uri = _log_policy(tracker, run.run_id, model_dir, config, info)
                run.set_tags({LOGGED_MODEL_TAG: model_uri})
            if (model_dir / "fgpo_model.json").is_file():
                run.log_artifact(model_dir / "fgpo_model.json", "policy_info")
            mv = _create_version(tracker, model_uri, model_name, run_key, version_tags, config)
            created = True
        version = str(mv.version)

        current = _champion(tracker, model_name)
        if current is not None and current["version"] == version:
            # An earlier attempt moved the champion here, then failed before finishing.
            promoted, reason = True, f"version {version} is already the champion (an earlier attempt promoted it)"
        else:
            promoted, reason = gate_decision(results, gate, current)
        tracker.call(f"set alias {CHALLENGER}", client.set_registered_model_alias, model_name, CHALLENGER, version)
        if promoted:
            tracker.call(f"set alias {CHAMPION}", client.set_registered_model_alias, model_name, CHAMPION, version)
        gate_record = {"model_name": model_name, "version": version, "run_key": run_key,
                       "promoted": promoted, "reason": reason, "gate": to_dict(gate),
                       "previous_champion": current, "metric": gate.metric,
                       "overall": results["overall"][gate.metric],
                       "aspects": {a: f[gate.metric] for a, f in results["aspects"].items()}}
        tracker.log_dict(run.run_id, gate_record, "gate.json")
        run.log_metrics({"promoted": promoted, "gate_value": results["overall"][gate.metric]})
        for run_id in (run.run_id, tracker.parent_run_id):
            tracker.set_tags(run_id, {REASON_TAG: reason, DONE_TAG: str(promoted).lower(),
                                      "fgpo.model_version": f"{model_name}/{version}"})
        tracker.call("tag version", client.set_model_version_tag, model_name, version, REASON_TAG, reason)
        tracker.call("tag version", client.set_model_version_tag, model_name, version, DONE_TAG,
                     str(promoted).lower())
    log.info("%s version %s: %s", model_name, version, reason)
    return {"model_name": model_name, "version": version, "created": created, "promoted": promoted,
            "reason": reason, "aliases": [CHALLENGER] + ([CHAMPION] if promoted else []),
            "previous_champion": current and current["version"], "run_id": tracker.parent_run_id,
            "tracking_uri": tracker.uri}
