"""Registering a trained policy in the MLflow model registry, behind a promotion gate.

Every candidate becomes a model version with the alias ``challenger``. The alias ``champion``
moves to it only when the gate passes (``gate_decision``), on evidence:

- the lower bound of the confidence interval of the overall win rate (the per-prompt preference
  averaged over aspects, percentile bootstrap over prompts with the evaluation's own settings) is
  strictly above ``min_win_rate`` (and above 0.5 whatever ``min_win_rate`` says): a tie (every preference 0.5) never promotes, and neither does a
  policy whose answers are the baseline's (unchanged weights, or a learning rate too small to
  change a greedy decode);
- the evaluation used at least ``min_prompts`` prompts;
- no aspect's win rate falls below ``0.5 - max_aspect_regression``;
- the candidate's weights differ from the baseline's;
- the evaluation was run against the current champion (compared by weight fingerprint); with no
  champion yet, against whatever baseline the evaluation used (the reference model).

The champion moves atomically. The champion is re-read, the gate decided and the alias moved
while holding the promotion lock of the registered model (``promotion_lock``): a registered model
named ``<name>.promotion-lock``, created to take the lock and deleted to release it. Creating a
registered model whose name exists fails on the server's unique constraint (SQLite and PostgreSQL
alike, through the REST API or a local store), so at most one process holds the lock: two
concurrent registrations can never both promote, and the second one finds the first one's
version as champion, which its evaluation did not face, and stays challenger saying so. A lock
older than ``lock_stale_s`` (its holder died inside a seconds-long critical section) is broken
with a warning; that break is the one moment two processes could disagree, which is why the
stale limit is minutes.

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

import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fgpo_tasks import jsonio
from fgpo_tasks.config import check, to_dict
from fgpo_tasks.errors import FgpoError
from fgpo_tasks.provenance import code_version
from fgpo_tasks.tracking import (RUN_KEY_TAG, MlflowCalls, Tracker, TrackingConfig, TrackingUnavailable,
                                 _check_key, metric_key)

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
DONE_TAG = "fgpo.gate.passed"  # written last: its presence marks a complete registration
REASON_TAG = "fgpo.gate.reason"
MODEL_FP_TAG = "fgpo.model_fingerprint"
LOGGED_MODEL_TAG = "fgpo.logged_model_uri"
LOCK_SUFFIX = ".promotion-lock"  # registered model <name>.promotion-lock: exists while held
LOCK_OWNER_TAG, LOCK_SINCE_TAG = "fgpo.lock.owner", "fgpo.lock.since"


@dataclass
class GateConfig:
    min_win_rate: float = field(default=0.5, metadata={
        "help": "promote only when the lower bound of the confidence interval of the candidate's "
                "overall win rate (mean over aspects) over the champion is above this"})
    max_aspect_regression: float = field(default=0.05, metadata={
        "help": "promote only when no aspect's win rate is below 0.5 minus this"})
    metric: Literal["win_rate", "lc_win_rate"] = field(default="win_rate", metadata={
        "help": "which win rate the gate reads: raw or length-controlled"})
    require_champion_baseline: bool = field(default=True, metadata={
        "help": "fail the gate when the evaluation's baseline is not the current champion"})
    min_prompts: int = field(default=32, metadata={
        "help": "promote only when the evaluation used at least this many prompts"})

    def __post_init__(self):
        check(0.0 <= self.min_win_rate <= 1.0, f"min_win_rate must be in [0, 1], got {self.min_win_rate}")
        check(self.min_prompts >= 1, f"min_prompts must be >= 1, got {self.min_prompts}")
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
    min_prompts: int = field(default=32, metadata={"help": GateConfig.__dataclass_fields__[
        "min_prompts"].metadata["help"]})
    lock_timeout_s: int = field(default=120, metadata={
        "help": "seconds to wait for the promotion lock held by another registration"})
    lock_stale_s: int = field(default=600, metadata={
        "help": "a promotion lock older than this is taken to be left by a dead process and broken"})
    pip_requirements: list[str] | None = field(default=None, metadata={
        "help": "requirements recorded with the model; default: this mlflow, torch and transformers"})
    await_registration_s: int = field(default=300, metadata={
        "help": "seconds to wait for a new model version to become READY"})

    def __post_init__(self):
        _check_key(self.model_name, "model_name")
        check(self.await_registration_s >= 1, f"await_registration_s must be >= 1, got {self.await_registration_s}")

    def gate(self) -> GateConfig:
        return GateConfig(self.min_win_rate, self.max_aspect_regression, self.gate_metric,
                          self.require_champion_baseline, self.min_prompts)


def overall_interval(results: dict, eval_dir: str | Path | None) -> list[float] | None:
    """The confidence interval of the overall win rate: each prompt's preference averaged over
    the aspects (as ``overall.win_rate`` averages the aspects' win rates), bootstrapped over
    prompts with the evaluation's own resamples, level and seed. Read from ``overall.win_rate_ci``
    when the results carry it, else computed from ``generations.jsonl`` beside results.json;
    None when neither is there."""
    import numpy as np

    from fgpo_tasks.evaluate import bootstrap_ci

    if results["overall"].get("win_rate_ci") is not None:
        return [float(x) for x in results["overall"]["win_rate_ci"]]
    if eval_dir is None:
        return None
    path = Path(eval_dir)
    path = (path if path.is_dir() else path.parent) / "generations.jsonl"
    if not path.is_file():
        return None
    aspects = list(results["aspects"])
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return None
    prefs = np.array([np.mean([float(r["preference"][a]) for a in aspects]) for r in rows])
    cfg = results.get("config", {})
    lo, hi = bootstrap_ci(prefs, int(cfg.get("bootstrap_samples", 1000)), float(cfg.get("ci_level", 0.95)),
                          int(cfg.get("bootstrap_seed", 0)))
    return [lo, hi]


def gate_decision(results: dict, gate: GateConfig, champion: dict | None) -> tuple[bool, str]:
    """(passed, reason) for evaluation ``results`` (results.json, with ``overall.win_rate_ci``:
    see ``overall_interval``) against ``champion``.

    ``champion``: None when there is none, else {"version", "fingerprint"}.
    """
    m = gate.metric
    base, cand = results["baseline"], results.get("candidate", {})
    if champion is not None and gate.require_champion_baseline and champion.get("fingerprint") != base["fingerprint"]:
        seen = f"({champion['fingerprint'][:12]})" if champion.get("fingerprint") else "(no weight fingerprint)"
        return False, (f"evaluated against baseline {base['path']} ({base['fingerprint'][:12]}), but the "
                       f"current champion is version {champion['version']} {seen}: the champion changed "
                       "since the evaluation or was never its baseline; evaluate against the champion")
    against = (f"champion version {champion['version']}" if champion is not None
               else f"baseline {base['path']} (no champion yet)")
    if cand.get("fingerprint") and cand["fingerprint"] == base["fingerprint"]:
        return False, f"gate failed against {against}: the candidate has the baseline's weights (unchanged policy)"
    overall = float(results["overall"][m])
    ci = results["overall"].get("win_rate_ci")
    n_prompts = int(results.get("prompts", {}).get("n_prompts", 0))
    floor = 0.5 - gate.max_aspect_regression
    # A candidate must beat what it replaces: a bar below 0.5 would let a tie through.
    bar = max(gate.min_win_rate, 0.5)
    bar_text = f"min_win_rate {gate.min_win_rate:.3f}" + (" (0.5 at least: a tie never promotes)"
                                                          if gate.min_win_rate < 0.5 else "")
    failures = []
    if ci is None:
        failures.append("no confidence interval of the overall win rate in the evaluation results")
    elif not float(ci[0]) > bar:
        failures.append(f"overall win_rate CI low {float(ci[0]):.3f} (interval [{float(ci[0]):.3f}, "
                        f"{float(ci[1]):.3f}]) is not above {bar_text}")
    if m != "win_rate" and not overall > bar:
        failures.append(f"overall {m} {overall:.3f} is not above {bar_text}")
    if n_prompts < gate.min_prompts:
        failures.append(f"{n_prompts} evaluation prompts < min_prompts {gate.min_prompts}")
    for aspect, f in results["aspects"].items():
        if float(f[m]) < floor:
            failures.append(f"aspect {aspect!r} {m} {float(f[m]):.3f} < {floor:.3f} "
                            f"(0.5 - max_aspect_regression {gate.max_aspect_regression})")
    if failures:
        return False, f"gate failed against {against}: " + "; ".join(failures)
    return True, (f"gate passed against {against}: overall {m} {overall:.3f}, CI low {float(ci[0]):.3f} > "
                  f"{bar:.3f} on {n_prompts} prompts, no aspect below {floor:.3f}")


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


def _champion(tracker: MlflowCalls, name: str) -> dict | None:
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


@contextlib.contextmanager
def promotion_lock(tracker: Tracker, name: str, owner: str, *, timeout_s: float = 120,
                   stale_s: float = 600, poll_s: float = 0.5):
    """Hold the promotion lock of registered model ``name`` for the duration (see the module doc).

    Taken by creating the registered model ``<name>.promotion-lock`` (tags: a unique owner token,
    the time it was taken); released by deleting it. Waits up to ``timeout_s`` for another holder,
    then raises TrackingUnavailable (a retry later will find it free); breaks a lock held longer
    than ``stale_s``."""
    from mlflow.exceptions import MlflowException

    client, lock = tracker.client, name + LOCK_SUFFIX
    token = f"{owner}:{uuid.uuid4().hex}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with tracker._http_settings():
                client.create_registered_model(
                    lock, tags={LOCK_OWNER_TAG: token, LOCK_SINCE_TAG: f"{time.time():.3f}"},
                    description=f"promotion lock of {name!r} (fgpo); deleted when released")
            break
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                tracker.call(f"take the promotion lock {lock!r}", _raise, e, retries=0)
        except Exception as e:  # noqa: BLE001 - classified (transient or not) by Tracker.call
            tracker.call(f"take the promotion lock {lock!r}", _raise, e, retries=0)
        held = tracker.call(f"read the promotion lock {lock!r}", client.get_registered_model, lock,
                            missing_ok=True)
        if held is None:
            continue  # released meanwhile: try again at once
        holder, since = held.tags.get(LOCK_OWNER_TAG, "?"), float(held.tags.get(LOCK_SINCE_TAG) or 0)
        if holder == token:
            break  # our create went through, only its answer was lost
        if time.time() - since > stale_s:
            log.warning("breaking the promotion lock of %r held by %s for %.0fs (> lock_stale_s %s)",
                        name, holder, time.time() - since, stale_s)
            tracker.call(f"break the promotion lock {lock!r}", client.delete_registered_model, lock,
                         missing_ok=True)
            continue
        if time.monotonic() > deadline:
            raise TrackingUnavailable(f"MLflow at {tracker.uri}: the promotion lock of {name!r} is held by "
                                      f"{holder} (for {time.time() - since:.0f}s); retry the registration later")
        time.sleep(poll_s)
    try:
        yield token
    finally:
        held = tracker.call(f"read the promotion lock {lock!r}", client.get_registered_model, lock,
                            missing_ok=True)
        if held is not None and held.tags.get(LOCK_OWNER_TAG) == token:
            tracker.call(f"release the promotion lock {lock!r}", client.delete_registered_model, lock,
                         missing_ok=True)
        else:
            log.warning("the promotion lock of %r was no longer ours at release (broken as stale?)", name)


def _raise(e: BaseException):
    raise e


def registry_state(tracker: MlflowCalls, name: str, version: str) -> dict[str, Any]:
    """Version ``version`` of ``name`` as the registry has it now: its aliases, whether it is the
    champion (``promoted``), the champion's version, the verdict recorded by its gate."""
    mv = tracker.call(f"get version {version} of {name!r}", tracker.client.get_model_version, name, version)
    champion = _champion(tracker, name)
    aliases = sorted(mv.aliases or [])
    passed = mv.tags.get(DONE_TAG)
    now = ("now champion" if CHAMPION in aliases else
           f"champion now: version {champion['version']}" if champion else "no champion now")
    return {"model_name": name, "version": str(mv.version), "aliases": aliases,
            "promoted": CHAMPION in aliases, "champion_version": champion and champion["version"],
            "gate_passed": None if passed is None else passed == "true",
            "reason": f"version {mv.version} registered earlier ({now}); its gate then: {mv.tags.get(REASON_TAG, '')}",
            "run_key": mv.tags.get(RUN_KEY_TAG), "mlflow_run_id": mv.run_id}


def _is_policy_dir(path: str) -> bool:
    """A folder the evaluator can load: full weights or a LoRA adapter on a base it can find."""
    from fgpo_tasks.errors import FgpoError
    from fgpo_tasks.models import check_policy_dir
    try:
        check_policy_dir(path)
        return True
    except FgpoError:
        return False


def champion_model_dir(tracking_uri: str | None, name: str,
                       tracking: TrackingConfig | None = None) -> str | None:
    """The local folder of ``name``'s champion (tag ``fgpo.model_dir``) when it still exists.

    No registered model or no champion yet: None. MLflow unreachable: TrackingUnavailable, so
    the step fails and is retried; never a silent fallback to the reference model."""
    calls = MlflowCalls(tracking, tracking_uri=tracking_uri)
    mv = calls.call(f"get alias {CHAMPION!r} of {name!r}", calls.client.get_model_version_by_alias,
                    name, CHAMPION, missing_ok=True)
    if mv is None:
        return None
    path = mv.tags.get("fgpo.model_dir")
    if path and _is_policy_dir(path):
        return path
    log.warning("champion v%s of %r has no local folder (%s): the evaluation runs against the reference "
                "model, and the gate will refuse to promote on it", mv.version, name, path)
    return None


def registered_for_key(tracking_uri: str | None, name: str, data_key: str,
                       tracking: TrackingConfig | None = None) -> dict | None:
    """The complete registration of an earlier run with the same data key, as the registry has it
    now (``registry_state``), or None. MLflow failing raises (TrackingUnavailable / FgpoError)."""
    calls = MlflowCalls(tracking, tracking_uri=tracking_uri)
    exists = calls.call(f"get registered model {name!r}", calls.client.get_registered_model, name,
                        missing_ok=True)
    if exists is None:
        return None
    found = calls.call(f"search versions of {name!r}", calls.client.search_model_versions,
                       f"name = '{name}' and tags.`fgpo.data_key` = '{data_key}'")
    done = sorted((v for v in found or [] if v.tags.get(DONE_TAG) is not None), key=lambda v: int(v.version))
    if not done:
        return None
    state = registry_state(calls, name, str(done[0].version))
    return {**state, "created": False,
            "reason": f"already registered for data key {data_key} by run {state['run_key']}: {state['reason']}"}


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
    eval_dir = None if isinstance(eval_results, dict) else Path(eval_results)
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
            state = registry_state(tracker, model_name, str(found[0].version))
            log.info("run %r already registered as version %s of %r: %s", run_key, state["version"],
                     model_name, state["reason"])
            return {**state, "created": False, "run_id": tracker.parent_run_id, "tracking_uri": tracker.uri}
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

        results = {**results, "overall": {**results["overall"],
                                          "win_rate_ci": overall_interval(results, eval_dir)}}
        # Decide and move under the lock, on the champion as it is now (not as it was when the
        # evaluation started): a concurrent registration that promoted meanwhile is seen here.
        with promotion_lock(tracker, model_name, run_key, timeout_s=config.lock_timeout_s,
                            stale_s=config.lock_stale_s):
            current = _champion(tracker, model_name)
            if current is not None and current["version"] == version:
                # An earlier attempt moved the champion here, then failed before finishing.
                promoted, reason = True, f"version {version} is already the champion (an earlier attempt promoted it)"
            else:
                promoted, reason = gate_decision(results, gate, current)
            tracker.call(f"set alias {CHALLENGER}", client.set_registered_model_alias, model_name, CHALLENGER,
                         version)
            if promoted:
                tracker.call(f"set alias {CHAMPION}", client.set_registered_model_alias, model_name, CHAMPION,
                             version)
        gate_record = {"model_name": model_name, "version": version, "run_key": run_key,
                       "promoted": promoted, "reason": reason, "gate": to_dict(gate),
                       "previous_champion": current, "metric": gate.metric,
                       "overall": results["overall"][gate.metric],
                       "overall_win_rate_ci": results["overall"]["win_rate_ci"],
                       "n_prompts": results.get("prompts", {}).get("n_prompts"),
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
            "gate_passed": promoted, "reason": reason, "aliases": [CHALLENGER] + ([CHAMPION] if promoted else []),
            "champion_version": version if promoted else current and current["version"],
            "previous_champion": current and current["version"], "run_id": tracker.parent_run_id,
            "tracking_uri": tracker.uri}
