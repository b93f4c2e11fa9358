"""The pipeline's steps as plain functions: what each Airflow task (and `fgpo pipeline`) calls.

Every step takes plain values (the run's params dict, the run key, the run's timestamp and the
URIs its upstream steps returned) and returns a small dict of URIs and headline figures. A step
runs its stage through the stage layer (``fgpo_tasks.stages``, bodies in ``fgpo_tasks.workflow``):
the output lives under ``<storage_root>/stages/<stage>/<key>/``, keyed by the stage's inputs,
config and code, and the run key only records which stage output it used
(``<storage_root>/runs/<run_key>/<step>.json``). So:

- a retried or cleared task never recomputes a finished stage and never sees half a result;
- a rerun of a run key with nothing changed computes nothing (and logs nothing new to MLflow);
- a changed parameter under an existing run key is never answered with the old output: that
  stage and every stage after it get new keys and are computed (the run record then points at
  the new outputs; the MLflow stage run of the new output is named ``<stage>@<key prefix>``);
- two run keys on the same data and settings share every stage output.

Configuration: ``params`` pick a profile (``configs/pipeline/<profile>.yaml``: top-level
fields of ``PipelineConfig`` plus one section per stage with that stage's config fields) and
override the headline knobs a user sets in the Airflow trigger form.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgpo_tasks.choices import ON_WEAK, STRATEGIES
from fgpo_tasks.config import check, from_dict, read_yaml
from fgpo_tasks.errors import ConfigError
from fgpo_tasks.storage import commit_step, safe_name, step_result

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PROFILES_DIR = Path(os.environ.get("FGPO_PROFILES_DIR", REPO / "configs" / "pipeline"))
STAGES = ("ingest", "validate", "reward_models", "score", "select", "dpo", "evaluate", "eval_reward_models")


@dataclass
class PipelineConfig:
    profile: str = field(default="demo", metadata={"help": "configs/pipeline/<profile>.yaml"})
    source: list[str] = field(default_factory=list, metadata={
        "help": "data sources: files, folders, globs or hub ids (relative paths: to the repo)"})
    format: list[str] = field(default_factory=lambda: ["synthetic"], metadata={
        "help": "one ingest format per source, or one for all"})
    aspects: list[str] = field(default_factory=list, metadata={
        "help": "aspects to keep (empty: every aspect in the data)"})
    strategy: str = field(default="pd", metadata={"help": f"selection strategy: {STRATEGIES}"})
    budget: float = field(default=0.3, metadata={"help": "fraction of pairs kept by selection"})
    on_weak_proxies: str | None = field(default=None, metadata={
        "help": "what select does when no proxy beats chance (selection_confidence 'none'): warn, "
                "fallback_ratings or fail (overrides the profile's select.on_weak_proxies)"})
    reward_backbone: str | None = field(default=None, metadata={
        "help": "proxy reward-model backbone spec (overrides the profile's reward_models.backbone)"})
    policy_model: str | None = field(default=None, metadata={
        "help": "policy model spec (overrides the profile's dpo.model)"})
    beta: float | None = field(default=None, metadata={"help": "DPO beta (overrides dpo.beta)"})
    epochs: int | None = field(default=None, metadata={"help": "DPO epochs (overrides dpo.epochs)"})
    min_win_rate: float = field(default=0.5, metadata={
        "help": "promotion gate: minimum mean win rate of the candidate over the champion"})
    max_aspect_regression: float = field(default=0.05, metadata={
        "help": "promotion gate: no aspect's win rate may fall below 0.5 minus this"})
    min_prompts: int = field(default=32, metadata={
        "help": "promotion gate: the evaluation must have used at least this many prompts"})
    tracking_uri: str | None = field(default=None, metadata={
        "help": "MLflow tracking URI (default: sqlite under the work folder)"})
    experiment_name: str = field(default="fgpo", metadata={"help": "MLflow experiment"})
    model_name: str = field(default="fgpo-policy", metadata={"help": "registered model name"})
    storage_root: str | None = field(default=None, metadata={
        "help": "where runs write their artifacts (default: <work folder>/storage)"})
    holdout: dict | None = field(default=None, metadata={
        "help": "evaluation split for data without an exact scorer (fgpo_tasks.holdout): "
                "{fraction, prompt_fraction, seed}; held-out prompts train evaluation reward models "
                "(section eval_reward_models) and are the evaluation prompts; null = no split"})
    stages: dict[str, dict] = field(default_factory=dict, metadata={
        "help": f"per-stage config sections: {list(STAGES)}"})

    def __post_init__(self):
        check(self.strategy in STRATEGIES, f"strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        check(0.0 < self.budget <= 1.0, f"budget must be in (0, 1], got {self.budget}")
        check(self.on_weak_proxies in (None, *ON_WEAK),
              f"on_weak_proxies must be one of {list(ON_WEAK)} or null, got {self.on_weak_proxies!r}")
        check(len(self.format) in (1, len(self.source)) or not self.source,
              f"give one format for all sources or one per source; got {len(self.format)} formats "
              f"for {len(self.source)} sources")
        unknown = sorted(set(self.stages) - set(STAGES))
        check(not unknown, f"unknown stage section(s) {unknown}; known: {list(STAGES)}")
        if self.holdout is not None:
            from fgpo_tasks.holdout import HoldoutConfig
            check(isinstance(self.holdout, dict), f"holdout must be a mapping or null, got {self.holdout!r}")
            from_dict(HoldoutConfig, self.holdout, where=f"profile {self.profile!r} [holdout]")


def pipeline_config(params: dict[str, Any]) -> PipelineConfig:
    """The profile's YAML, then the non-null ``params`` on top."""
    params = {k: v for k, v in (params or {}).items() if v is not None and v != [] and v != ""}
    profile = params.get("profile", "demo")
    path = PROFILES_DIR / f"{profile}.yaml"
    data = read_yaml(path) if path.is_file() else {}
    if not path.is_file() and profile != "demo":
        raise ConfigError(f"unknown profile {profile!r}: no {path}")
    stages = {k: data.pop(k) or {} for k in list(data) if k in STAGES}
    data.update(params)
    for key in ("source", "format", "aspects"):
        if isinstance(data.get(key), str):
            data[key] = [data[key]]
    data["stages"] = {**stages, **data.get("stages", {})}
    return from_dict(PipelineConfig, data, where=str(path))


def storage_root(cfg: PipelineConfig) -> Path:
    from fgpo_tasks.env import work_dir
    return Path(cfg.storage_root).absolute() if cfg.storage_root else work_dir() / "storage"


def tracking_uri(cfg: PipelineConfig) -> str:
    from fgpo_tasks.env import work_dir
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work_dir() / 'mlflow.db'}"


def run_dir(cfg: PipelineConfig, run_key: str) -> str:
    return str(storage_root(cfg) / "runs" / safe_name(run_key))


def _stage_config(cfg: PipelineConfig, stage: str, cls, **overrides):
    values = dict(cfg.stages.get(stage, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, values, where=f"profile {cfg.profile!r} [{stage}]")


_done, _commit = step_result, commit_step  # register: a side effect, recorded once per candidate


def _resolve_source(s: str) -> str:
    p = Path(s)
    return str(REPO / p) if not p.is_absolute() and (REPO / p).exists() else s


# ---------------------------------------------------------------------------------------------
# MLflow: every step logs into the pipeline run (parent) keyed by the run key.

def _tracker(cfg: PipelineConfig, run_key: str):
    from fgpo_tasks.tracking import Tracker, TrackingConfig, pipeline_run_name, pipeline_run_params
    return Tracker(run_key, TrackingConfig(tracking_uri=tracking_uri(cfg), experiment_name=cfg.experiment_name),
                   tags={"fgpo.profile": cfg.profile, "fgpo.strategy": cfg.strategy, "fgpo.budget": cfg.budget},
                   run_name=pipeline_run_name(cfg), params=pipeline_run_params(cfg))


def _log(cfg, run_key, stage, *, config=None, metrics=None, artifacts=(), datasets=(), tags=None) -> str:
    from fgpo_tasks.tracking import log_stage
    numeric = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return log_stage(_tracker(cfg, run_key), stage, config=config, metrics=numeric,
                     artifacts=[a for a in artifacts if Path(a).exists()], datasets=datasets, tags=tags)


def _step_dir(cfg: PipelineConfig, run_key: str, *parts: str) -> Path:
    return Path(run_dir(cfg, run_key)).joinpath(*parts)


def _manifest(path: Path) -> dict:
    f = path / "manifest.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _store(cfg: PipelineConfig):
    from fgpo_tasks.stages import Store
    return Store(storage_root(cfg))


def _use(cfg: PipelineConfig, run_key: str, step: str, runs: list, result: dict, log_fn) -> dict:
    """Record that ``run_key``'s ``step`` used the stage outputs ``runs``; return its result.

    A step this run key already recorded with the same stage keys returns that record (nothing
    is logged again); otherwise ``log_fn(child_name, computed)`` logs the step into the run's
    MLflow run and returns the stage run id. Under a run key whose step pointed at another output
    (a parameter changed), the MLflow stage run is ``<step>@<key prefix>``: MLflow keeps the old
    stage run's params, the new one gets its own."""
    store = _store(cfg)
    keys = {r.stage: r.key for r in runs}
    before = store.run_record(run_key, step)
    if before is not None and before["stages"] == keys:
        return before["result"]
    name = step.replace(":", "/")
    if before is not None:
        name = f"{name}@{runs[-1].key[:8]}"
    computed = any(r.computed for r in runs)
    run_id = log_fn(name, computed)
    result = {**result, "stage_key": runs[-1].key, "mlflow_run_id": run_id}
    return store.record_run(run_key, step, keys, result)


def _stage_tags(runs: list) -> dict:
    return {"fgpo.stage_key": runs[-1].key, "fgpo.reused": str(not any(r.computed for r in runs)).lower()}


# ---------------------------------------------------------------------------------------------
# The steps, in pipeline order.

def step_ingest(params: dict, run_key: str, created_at: str) -> dict:
    """Read the configured sources into the data contract."""
    from fgpo_tasks import workflow
    from fgpo_tasks.ingest import IngestConfig

    cfg = pipeline_config(params)
    config = _stage_config(cfg, "ingest", IngestConfig)
    sources = [_resolve_source(s) for s in cfg.source] or ["toy-world"]
    run = workflow.ingest(_store(cfg), sources, cfg.format, config, created_at)
    res = run.result
    counts = {k: res[k] for k in ("rows_in", "accepted", "quarantined") if k in res}
    data = Path(res["data"])
    return _use(cfg, run_key, "ingest", [run], {"data": res["data"], **counts},
                lambda name, computed: _log(cfg, run_key, name, config=config, metrics=counts, tags=_stage_tags([run]),
                                            artifacts=[data / "manifest.json", data / "quarantine.parquet"]))


def step_validate(params: dict, run_key: str, created_at: str, data: str) -> dict:
    """Great Expectations suite; returns the clean pairs and the aspects to train reward models on.

    With a ``holdout`` split, ``data`` is the pool that the split leaves, and ``eval_rm`` /
    ``eval_prompts`` are the pair directories of the evaluation reward models and prompts."""
    from fgpo_tasks import workflow
    from fgpo_tasks.holdout import HoldoutConfig
    from fgpo_tasks.validate import ValidateConfig

    cfg = pipeline_config(params)
    config = _stage_config(cfg, "validate", ValidateConfig, aspects=cfg.aspects or None)
    holdout = from_dict(HoldoutConfig, cfg.holdout) if cfg.holdout is not None else None
    run = workflow.validate(_store(cfg), data, config, holdout, created_at)
    res = run.result
    counts = {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    validated = Path(res["validated"])
    # RAF needs one unified reward model over the whole pool, trained beside the per-aspect ones.
    reward_models = res["aspects"] + (["__all__"] if cfg.strategy == "raf" else [])
    result = {"data": res["data"], "aspects": res["aspects"], "reward_models": reward_models,
              **{k: res[k] for k in ("eval_rm", "eval_prompts") if k in res}, **counts}
    datasets = [(res["data"], "training")] + ([(res["eval_prompts"], "evaluation")] if "eval_prompts" in res else [])
    return _use(cfg, run_key, "validate", [run], result,
                lambda name, computed: _log(cfg, run_key, name, config=config, metrics=counts, tags=_stage_tags([run]),
                                            artifacts=[validated / "validation_result.json",
                                                       validated / "quarantine.parquet", validated / "data_docs"],
                                            datasets=datasets))


def step_reward_model(params: dict, run_key: str, created_at: str, data: str, aspect: str) -> dict:
    """The proxy reward model of ONE aspect (the DAG maps this over the aspects): trained, or
    reused while the aspect's data grew by less than ``refresh_fraction`` since it was trained
    (``reused`` and ``reason`` say which and why)."""
    from fgpo_tasks import workflow
    from fgpo_tasks.reward_models import RewardModelConfig

    cfg = pipeline_config(params)
    config = _stage_config(cfg, "reward_models", RewardModelConfig, backbone=cfg.reward_backbone)
    run = workflow.reward_model(_store(cfg), data, aspect, config, created_at)
    res = run.result
    model = Path(res["model"])
    result = {"aspect": aspect, "model": res["model"], "accuracy": res.get("accuracy"),
              "reused": res["reused"], "reason": res["reason"], "n_pairs": res["n_pairs_now"],
              "n_trained_on": res["n_pairs"]}
    metrics = {**res.get("metrics", {}), "reused": float(res["reused"])}
    return _use(cfg, run_key, f"reward_model:{aspect}", [run], result,
                lambda name, computed: _log(cfg, run_key, name, config=config, metrics=metrics,
                                            tags={**_stage_tags([run]), "fgpo.reason": res["reason"]},
                                            artifacts=[p for p in model.glob("*.png")] + [p for p in model.glob("*.json")]
                                            if computed else []))


def step_score(params: dict, run_key: str, created_at: str, data: str, reward_models: list[dict]) -> dict:
    """PD of every pair, cross-extrapolated from the other aspects' reward models; pairs that a
    proxy scored before come from the score cache (manifest: ``scored`` / ``from_cache`` per aspect)."""
    from fgpo_tasks import workflow
    from fgpo_tasks.scoring import ScoreConfig

    cfg = pipeline_config(params)
    config = _stage_config(cfg, "score", ScoreConfig)
    run = workflow.score(_store(cfg), data, _score_models(reward_models), config, created_at)
    res = run.result
    out = Path(res["scores"])
    result = {"scores": res["scores"], "scored": res.get("scored", {}), "from_cache": res.get("from_cache", {}),
              "selection_confidence": res.get("selection_confidence"),
              **{k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    return _use(cfg, run_key, "score", [run], result,
                lambda name, computed: _log(cfg, run_key, name, config=config, metrics=res,
                                            tags={**_stage_tags([run]),
                                                  "selection_confidence": str(res.get("selection_confidence"))},
                                            artifacts=[out / "manifest.json", out / "selection_confidence.json",
                                                       out / "reports"]))


def _score_models(reward_models: list[dict]) -> list[str]:
    from fgpo_tasks.reward_models import UNIFIED
    return [m["model"] for m in reward_models if m.get("aspect") != UNIFIED]


def step_score_plan(params: dict, data: str, reward_models: list[dict]) -> list[dict]:
    """The (shard, proxy) units of the score stage, ``{"model", "shard"}`` each (what the DAG maps
    ``score_shard`` over): ``score.shard_size`` pairs per shard (null: one shard) times the
    proxies; none when PD comes from ratings."""
    from fgpo_tasks.scoring import ScoreConfig, n_pairs, shard_plan

    cfg = pipeline_config(params)
    config = _stage_config(cfg, "score", ScoreConfig)
    if config.from_ratings:
        return []
    return shard_plan(n_pairs(data), _score_models(reward_models), config.shard_size)


def step_score_shard(params: dict, run_key: str, created_at: str, data: str, reward_models: list[dict],
                     model: str, shard: int) -> dict:
    """One (shard, proxy) unit of the score stage: its raw margins, into the stage's folder; the
    ``score`` step then reduces them (quantiles, PD, the table) into the same output as unsharded."""
    from fgpo_tasks import workflow
    from fgpo_tasks.scoring import ScoreConfig

    cfg = pipeline_config(params)
    config = _stage_config(cfg, "score", ScoreConfig)
    res = workflow.score_shard(_store(cfg), data, _score_models(reward_models), config, model, shard)
    return {k: v for k, v in res.items() if k != "path"}


def step_select(params: dict, run_key: str, created_at: str, data: str, scores: str) -> dict:
    """Keep the budget's fraction of pairs by the configured strategy."""
    from fgpo_tasks import workflow
    from fgpo_tasks.selection import SelectConfig

    cfg = pipeline_config(params)
    unified = None
    if cfg.strategy == "raf":
        unified = _unified_model(cfg, run_key)
    config = _stage_config(cfg, "select", SelectConfig, strategy=cfg.strategy, budget=cfg.budget,
                           unified_model=unified, on_weak_proxies=cfg.on_weak_proxies)
    run = workflow.select(_store(cfg), scores, data, config, created_at)
    res = run.result
    out = Path(res["data"])
    # the verdict is in every run: the step result, the select stage run and the pipeline run
    verdict = res.get("selection_confidence") or res["metrics"].get("selection_confidence") or "unknown"
    action = res.get("confidence_action") or res["metrics"].get("confidence_action")
    result = {"data": str(out), "selected": res["selected"], "selection_confidence": verdict,
              "confidence_action": action, "strategy": res.get("strategy") or config.strategy,
              "requested_strategy": res.get("requested_strategy") or config.strategy,
              **{k: v for k, v in res["metrics"].items() if k.startswith("confidence.")}}
    tags = {"selection_confidence": verdict, "fgpo.confidence_action": str(action),
            "fgpo.selected_strategy": result["strategy"]}

    def log_fn(name, computed):
        run_id = _log(cfg, run_key, name, config=config, metrics=res["metrics"],
                      tags={**_stage_tags([run]), **tags}, artifacts=[out / "manifest.json", out / "reports"],
                      datasets=[(out, "training")])
        tracker = _tracker(cfg, run_key)
        tracker.set_tags(tracker.parent_run_id, tags)
        tracker.log_metrics(tracker.parent_run_id, {k: v for k, v in result.items() if k.startswith("confidence.")})
        return run_id

    return _use(cfg, run_key, "select", [run], result, log_fn)


def _unified_model(cfg: PipelineConfig, run_key: str) -> str | None:
    """The RAF baseline's unified reward model this run trained (its reward_model:__all__ step)."""
    rec = _store(cfg).run_record(run_key, "reward_model:__all__")
    return rec["result"]["model"] if rec else None


def step_train_dpo(params: dict, run_key: str, created_at: str, data: str, scores: str) -> dict:
    """DPO on the selected pairs; per-step curves go to MLflow as they happen."""
    import contextlib

    from fgpo_tasks import workflow
    from fgpo_tasks.dpo.config import DPOConfig

    cfg = pipeline_config(params)
    overrides = {"model": cfg.policy_model, "beta": cfg.beta, "epochs": cfg.epochs}
    if cfg.stages.get("dpo", {}).get("loss_type") == "dfpo":
        overrides["scores_dir"] = scores
    config = _stage_config(cfg, "dpo", DPOConfig, **overrides)
    store = _store(cfg)
    before = store.run_record(run_key, "train_dpo")
    name = "train_dpo"
    ran: dict[str, Any] = {}

    @contextlib.contextmanager
    def tracked():
        # the MLflow stage run around the training, only when it trains (curves as they happen)
        with _tracker(cfg, run_key).stage(child) as run:
            run.log_config(config)
            ran["run_id"] = run.run_id
            yield run.metrics_callback("dpo")

    from fgpo_tasks.stages import stage_key
    key = stage_key("train_dpo", *workflow.dpo_spec(data, config))[0]
    child = name if before is None or before["stages"].get("train_dpo") == key else f"{name}@{key[:8]}"
    run = workflow.train_dpo(store, data, config, created_at, on_compute=tracked)

    def log_fn(stage_name, computed):
        if "run_id" in ran:
            with _tracker(cfg, run_key).stage(child) as r:
                r.log_metrics({k: v for k, v in run.result["metrics"].items() if isinstance(v, (int, float))
                               and not isinstance(v, bool)}, prefix="dpo.final")
                r.set_tags(_stage_tags([run]))
            return ran["run_id"]
        return _log(cfg, run_key, stage_name, config=config, metrics=run.result["metrics"], tags=_stage_tags([run]))

    return _use(cfg, run_key, "train_dpo", [run], {"model": run.result["model"]}, log_fn)


def _champion_dir(cfg: PipelineConfig) -> str | None:
    """The local folder of the current champion, when the registry knows one that still exists.

    No registered model or no champion yet: None. MLflow failing: the step fails (retryable), it
    never silently evaluates against the reference model instead."""
    from fgpo_tasks.registry import champion_model_dir
    return champion_model_dir(tracking_uri(cfg), cfg.model_name)


def step_evaluate(params: dict, run_key: str, created_at: str, model: str, validated: dict | None = None,
                  reward_models: list[dict] | None = None) -> dict:
    """Candidate against the champion (else the reference policy), scored by evaluation RMs.

    With a ``holdout`` split (``validated`` carries ``eval_rm`` / ``eval_prompts``), evaluation
    reward models are trained on the held-out pairs, the prompts come from the held-out prompt
    part, and the proxies (``reward_models``) are named so that none is used as a judge. The
    baseline is fixed at a run's first evaluation of a candidate: a rerun of the run key compares
    against the same baseline even after that run made the candidate the champion."""
    from fgpo_tasks import workflow
    from fgpo_tasks.dpo.config import DPOConfig
    from fgpo_tasks.evaluate import EvalConfig
    from fgpo_tasks.models import pretrained_path
    from fgpo_tasks.tracking import log_evaluation

    cfg = pipeline_config(params)
    store = _store(cfg)
    runs, overrides = [], {}
    if validated and validated.get("eval_rm"):
        rm_config = workflow.eval_reward_model_config(cfg.stages, f"profile {cfg.profile!r}")
        judges, rm_runs = workflow.eval_reward_models(store, validated["eval_rm"], rm_config, created_at)
        runs += list(rm_runs.values())
        overrides = {
            "eval_models": judges, "prompt_source": "pairs", "prompt_path": validated["eval_prompts"],
            # the split's parts share the validated data as lineage: name the training pool instead
            "follow_lineage": False, "exclude_pairs": [validated["data"]],
            "proxy_models": [f"fgpo:{m['model']}" for m in reward_models or []]}
    if validated and validated.get("aspects"):  # judge the data's aspects, no others
        from fgpo_tasks.judging import judged_models
        overrides["eval_models"] = judged_models(
            overrides.get("eval_models") or cfg.stages.get("evaluate", {}).get("eval_models"),
            validated["aspects"], where=f"profile {cfg.profile!r} [evaluate]")
    config = _stage_config(cfg, "evaluate", EvalConfig, **overrides)
    before = store.run_record(run_key, "evaluate")
    if before is not None and before["result"].get("model") == model:
        baseline = before["result"]["baseline"]
    else:
        dpo = _stage_config(cfg, "dpo", DPOConfig, model=cfg.policy_model)
        baseline = _champion_dir(cfg) or pretrained_path(dpo.ref_model or dpo.model)
    run = workflow.evaluate(store, model, baseline, config, created_at)
    runs.append(run)
    res = run.result
    result = {"results": res["results"], "baseline": baseline, "model": model,
              **{k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    return _use(cfg, run_key, "evaluate", runs, result,
                lambda name, computed: log_evaluation(_tracker(cfg, run_key), res["results"]))


def data_key(cfg: PipelineConfig, data_fingerprint: str) -> str:
    """What makes two pipeline runs the same: the training data, every setting, the code."""
    from fgpo_tasks.provenance import code_version, sha256_hex, stable_json

    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("storage_root", "tracking_uri")}
    return sha256_hex(data_fingerprint, stable_json(settings), code_version())[:24]


def _registered_for(cfg: PipelineConfig, key: str) -> dict | None:
    """The complete registration of an earlier run with the same data key, as the registry has it
    now (None when there is none; MLflow failing fails the step)."""
    from fgpo_tasks.registry import registered_for_key
    return registered_for_key(tracking_uri(cfg), cfg.model_name, key)


def _register_key(model: str, evaluation: dict) -> str:
    """A run's registration is of one candidate and its evaluation: a changed parameter under the
    run key (another model) registers the new candidate instead of answering with the old one."""
    from fgpo_tasks.provenance import sha256_hex
    return sha256_hex(str(model), str(evaluation.get("results")))[:16]


def step_register(params: dict, run_key: str, created_at: str, model: str, evaluation: dict) -> dict:
    """Register the candidate; challenger always, champion when the promotion gate passes.

    A run on the same data with the same settings and code as an earlier registered one (same
    data key) registers nothing new and returns that version."""
    from fgpo_tasks.evaluate import read_model_info
    from fgpo_tasks.registry import GateConfig, register_candidate

    cfg = pipeline_config(params)
    step = _step_dir(cfg, run_key, "register", _register_key(model, evaluation))
    if done := _done(step):
        return done
    key = data_key(cfg, read_model_info(model).get("data_fingerprint", ""))
    if existing := _registered_for(cfg, key):
        log.info("%s", existing["reason"])
        _tracker(cfg, run_key).record_registration(run_dir(cfg, run_key), model, existing)
        return _commit(step, {**existing, "data_key": key, "tracking_uri": tracking_uri(cfg)})
    gate = GateConfig(min_win_rate=cfg.min_win_rate, max_aspect_regression=cfg.max_aspect_regression,
                      min_prompts=cfg.min_prompts)
    result = register_candidate(model, Path(evaluation["results"]), tracking_uri=tracking_uri(cfg),
                                model_name=cfg.model_name, run_key=run_key, gate=gate,
                                tags={"strategy": cfg.strategy, "budget": cfg.budget, "model_dir": model,
                                      "profile": cfg.profile, "data_key": key})
    _tracker(cfg, run_key).record_registration(run_dir(cfg, run_key), model, result)
    return _commit(step, {**result, "mlflow_run_id": result.get("run_id"), "data_key": key,
                          "tracking_uri": tracking_uri(cfg)})


def run_pipeline(params: dict, run_key: str, created_at: str) -> dict:
    """Every step in order, in this process: what the DAG does, for the CLI and tests."""
    ingested = step_ingest(params, run_key, created_at)
    valid = step_validate(params, run_key, created_at, ingested["data"])
    models = [step_reward_model(params, run_key, created_at, valid["data"], a) for a in valid["reward_models"]]
    scores = step_score(params, run_key, created_at, valid["data"], models)
    selected = step_select(params, run_key, created_at, valid["data"], scores["scores"])
    trained = step_train_dpo(params, run_key, created_at, selected["data"], scores["scores"])
    evaluation = step_evaluate(params, run_key, created_at, trained["model"], valid, models)
    registered = step_register(params, run_key, created_at, trained["model"], evaluation)
    return {"run_key": run_key, "run_dir": run_dir(pipeline_config(params), run_key), "ingest": ingested,
            "validate": valid, "reward_models": models, "score": scores, "select": selected,
            "train_dpo": trained, "evaluate": evaluation, "register": registered}
