"""The pipeline's steps as plain functions: what each Airflow task (and `fgpo pipeline`) calls.

Every step takes plain values (the run's params dict, the run key, the run's timestamp and the
URIs its upstream steps returned) and returns a small dict of URIs and headline figures. Steps
are transactions: a step writes under ``<storage_root>/runs/<run_key>/<step>``, commits a
``step.json`` last, and a step whose ``step.json`` exists returns it without redoing the work, so
a retried or cleared task never recomputes a finished stage and never sees half a result.

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

from fgpo_tasks.config import check, from_dict, read_yaml
from fgpo_tasks.errors import ConfigError
from fgpo_tasks.storage import commit_step, safe_name, step_result

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PROFILES_DIR = Path(os.environ.get("FGPO_PROFILES_DIR", REPO / "configs" / "pipeline"))
STAGES = ("ingest", "validate", "reward_models", "score", "select", "dpo", "evaluate", "eval_reward_models")
STRATEGIES = ("pd", "pd_ratings", "pd_high", "pd_mid", "random", "all", "raf", "ova", "avg")


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
    return Path(cfg.storage_root) if cfg.storage_root else work_dir() / "storage"


def tracking_uri(cfg: PipelineConfig) -> str:
    from fgpo_tasks.env import work_dir
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work_dir() / 'mlflow.db'}"


def run_dir(cfg: PipelineConfig, run_key: str) -> str:
    return str(storage_root(cfg) / "runs" / safe_name(run_key))


def _stage_config(cfg: PipelineConfig, stage: str, cls, **overrides):
    values = dict(cfg.stages.get(stage, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, values, where=f"profile {cfg.profile!r} [{stage}]")


_done, _commit = step_result, commit_step  # storage.py: a step is done when its step.json exists


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


# ---------------------------------------------------------------------------------------------
# The steps, in pipeline order.

def step_ingest(params: dict, run_key: str, created_at: str) -> dict:
    """Read the configured sources into the data contract."""
    from fgpo_tasks.ingest import IngestConfig, run_ingest

    cfg = pipeline_config(params)
    step = _step_dir(cfg, run_key, "ingest")
    if done := _done(step):
        return done
    config = _stage_config(cfg, "ingest", IngestConfig)
    sources = [_resolve_source(s) for s in cfg.source] or ["toy-world"]
    metrics = run_ingest(sources, cfg.format, step / "data", config, created_at)
    counts = {k: metrics[k] for k in ("rows_in", "accepted", "quarantined") if k in metrics}
    run_id = _log(cfg, run_key, "ingest", config=config, metrics=counts,
                  artifacts=[step / "data" / "manifest.json", step / "data" / "quarantine.parquet"])
    return _commit(step, {"data": str(step / "data"), **counts, "mlflow_run_id": run_id})


def step_validate(params: dict, run_key: str, created_at: str, data: str) -> dict:
    """Great Expectations suite; returns the clean pairs and the aspects to train reward models on.

    With a ``holdout`` split, ``data`` is the pool that the split leaves, and ``eval_rm`` /
    ``eval_prompts`` are the pair directories of the evaluation reward models and prompts."""
    from fgpo_tasks.holdout import HoldoutConfig, write_split
    from fgpo_tasks.validate import ValidateConfig, run_validate

    cfg = pipeline_config(params)
    step = _step_dir(cfg, run_key, "validate")
    if done := _done(step):
        return done
    config = _stage_config(cfg, "validate", ValidateConfig, aspects=cfg.aspects or None)
    validated = step / "data"
    metrics = run_validate(data, validated, config, created_at)
    counts = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    out, split = validated, {}
    if cfg.holdout is not None:
        split = write_split(validated, step / "holdout", from_dict(HoldoutConfig, cfg.holdout), created_at)
        out = Path(split["pool"])
        counts.update({k: v for k, v in split.items() if k.startswith("n_")})
    aspects = sorted(_manifest(out)["row_counts"]["per_aspect"])
    run_id = _log(cfg, run_key, "validate", config=config, metrics=counts,
                  artifacts=[validated / "validation_result.json", validated / "quarantine.parquet",
                             validated / "data_docs"],
                  datasets=[(out, "training")] + ([(split["eval_prompts"], "evaluation")] if split else []))
    # RAF needs one unified reward model over the whole pool, trained beside the per-aspect ones.
    reward_models = aspects + (["__all__"] if cfg.strategy == "raf" else [])
    return _commit(step, {"data": str(out), "aspects": aspects, "reward_models": reward_models,
                          **{k: split[k] for k in ("eval_rm", "eval_prompts") if k in split},
                          **counts, "mlflow_run_id": run_id})


def step_reward_model(params: dict, run_key: str, created_at: str, data: str, aspect: str) -> dict:
    """Train the proxy reward model of ONE aspect (the DAG maps this over the aspects)."""
    from fgpo_tasks.reward_models import RewardModelConfig, run_reward_model

    cfg = pipeline_config(params)
    step = _step_dir(cfg, run_key, "reward_models", aspect)
    if done := _done(step / "step"):
        return done
    config = _stage_config(cfg, "reward_models", RewardModelConfig, backbone=cfg.reward_backbone)
    metrics = run_reward_model(data, aspect, step.parent, config, created_at)
    run_id = _log(cfg, run_key, f"reward_model/{aspect}", config=config, metrics=metrics,
                  artifacts=[p for p in step.glob("*.png")] + [p for p in step.glob("*.json")])
    return _commit(step / "step", {"aspect": aspect, "model": str(step),
                                   "accuracy": metrics.get("heldout_accuracy"), "mlflow_run_id": run_id})


def step_score(params: dict, run_key: str, created_at: str, data: str, reward_models: list[dict]) -> dict:
    """PD of every pair, cross-extrapolated from the other aspects' reward models (cached)."""
    from fgpo_tasks.scoring import ScoreConfig, run_score

    cfg = pipeline_config(params)
    step = _step_dir(cfg, run_key, "score")
    if done := _done(step):
        return done
    config = _stage_config(cfg, "score", ScoreConfig)
    models_dir = Path(reward_models[0]["model"]).parent if reward_models else None
    out = step / "scores"
    metrics = run_score(data, out, config, created_at, reward_models_dir=models_dir)
    run_id = _log(cfg, run_key, "score", config=config, metrics=metrics,
                  artifacts=[out / "manifest.json", out / "reports"])
    return _commit(step, {"scores": str(out), "mlflow_run_id": run_id,
                          **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})


def step_select(params: dict, run_key: str, created_at: str, data: str, scores: str) -> dict:
    """Keep the budget's fraction of pairs by the configured strategy."""
    from fgpo_tasks.selection import SelectConfig, run_select

    cfg = pipeline_config(params)
    step = _step_dir(cfg, run_key, "select")
    if done := _done(step):
        return done
    config = _stage_config(cfg, "select", SelectConfig, strategy=cfg.strategy, budget=cfg.budget)
    out = step / "data"
    metrics = run_select(scores, data, out, config, created_at)
    run_id = _log(cfg, run_key, "select", config=config, metrics=metrics,
                  artifacts=[out / "manifest.json", out / "reports"], datasets=[(out, "training")])
    return _commit(step, {"data": str(out), "selected": _manifest(out).get("row_counts", {}).get("total"),
                          "mlflow_run_id": run_id})


def step_train_dpo(params: dict, run_key: str, created_at: str, data: str, scores: str) -> dict:
    """DPO on the selected pairs; per-step curves go to MLflow as they happen."""
    from fgpo_tasks.dpo import run_train_dpo
    from fgpo_tasks.dpo.config import DPOConfig

    cfg = pipeline_config(params)
    step = _step_dir(cfg, run_key, "train_dpo")
    if done := _done(step):
        return done
    overrides = {"model": cfg.policy_model, "beta": cfg.beta, "epochs": cfg.epochs}
    if cfg.stages.get("dpo", {}).get("loss_type") == "dfpo":
        overrides["scores_dir"] = scores
    config = _stage_config(cfg, "dpo", DPOConfig, **overrides)
    tracker = _tracker(cfg, run_key)
    with tracker.stage("train_dpo") as run:
        run.log_config(config)
        callback = run.metrics_callback("dpo")
        # checkpoints live beside the output, so a retried task resumes instead of restarting
        metrics = run_train_dpo(data, step / "model", config, created_at, metrics_callback=callback)
        callback.flush(raise_errors=False)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))
                         and not isinstance(v, bool)}, prefix="dpo.final")
    return _commit(step, {"model": str(step / "model"), "mlflow_run_id": run.run_id})


def _champion_dir(cfg: PipelineConfig) -> str | None:
    """The local folder of the current champion, when the registry knows one that still exists.

    No registered model or no champion yet: None. MLflow failing: the step fails (retryable), it
    never silently evaluates against the reference model instead."""
    from fgpo_tasks.registry import champion_model_dir
    return champion_model_dir(tracking_uri(cfg), cfg.model_name)


def _eval_reward_models(cfg: PipelineConfig, created_at: str, eval_rm: str, out: Path) -> dict[str, list[str]]:
    """One evaluation reward model per aspect on the held-out ``eval_rm`` pairs (section
    ``eval_reward_models`` over the proxies' ``reward_models`` section); a model already
    trained under ``out`` is reused, so a retried evaluate task does not retrain it."""
    from fgpo_tasks import contract
    from fgpo_tasks.reward_models import MODEL_FILE, RewardModelConfig, run_reward_model

    values = {**cfg.stages.get("reward_models", {}), **cfg.stages.get("eval_reward_models", {})}
    config = from_dict(RewardModelConfig, values, where=f"profile {cfg.profile!r} [eval_reward_models]")
    models = {}
    for aspect in sorted(contract.read_pairs(eval_rm)["aspect"].unique()):
        if not (out / aspect / MODEL_FILE).is_file():
            run_reward_model(eval_rm, aspect, out, config, created_at)
        models[aspect] = [f"fgpo:{out / aspect}"]
    return models


def step_evaluate(params: dict, run_key: str, created_at: str, model: str, validated: dict | None = None,
                  reward_models: list[dict] | None = None) -> dict:
    """Candidate against the champion (else the reference policy), scored by evaluation RMs.

    With a ``holdout`` split (``validated`` carries ``eval_rm`` / ``eval_prompts``), evaluation
    reward models are trained on the held-out pairs, the prompts come from the held-out prompt
    part, and the proxies (``reward_models``) are named so that none is used as a judge."""
    from fgpo_tasks.dpo.config import DPOConfig
    from fgpo_tasks.evaluate import EvalConfig, run_evaluate
    from fgpo_tasks.models import pretrained_path
    from fgpo_tasks.tracking import log_evaluation

    cfg = pipeline_config(params)
    step = _step_dir(cfg, run_key, "evaluate")
    if done := _done(step):
        return done
    overrides: dict[str, Any] = {}
    if validated and validated.get("eval_rm"):
        overrides = {
            "eval_models": _eval_reward_models(cfg, created_at, validated["eval_rm"], step / "eval_reward_models"),
            "prompt_source": "pairs", "prompt_path": validated["eval_prompts"],
            # the split's parts share the validated data as lineage: name the training pool instead
            "follow_lineage": False, "exclude_pairs": [validated["data"]],
            "proxy_models": [f"fgpo:{m['model']}" for m in reward_models or []]}
    if validated and validated.get("aspects"):  # judge the data's aspects, no others
        from fgpo_tasks.judging import judged_models
        overrides["eval_models"] = judged_models(
            overrides.get("eval_models") or cfg.stages.get("evaluate", {}).get("eval_models"),
            validated["aspects"], where=f"profile {cfg.profile!r} [evaluate]")
    config = _stage_config(cfg, "evaluate", EvalConfig, **overrides)
    dpo = _stage_config(cfg, "dpo", DPOConfig, model=cfg.policy_model)
    baseline = _champion_dir(cfg) or pretrained_path(dpo.ref_model or dpo.model)
    out = step / "results"
    figures = run_evaluate(model, baseline, out, config, created_at)
    run_id = log_evaluation(_tracker(cfg, run_key), out)
    return _commit(step, {"results": str(out), "baseline": baseline, "mlflow_run_id": run_id,
                          **{k: v for k, v in figures.items() if isinstance(v, (int, float))}})


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


def step_register(params: dict, run_key: str, created_at: str, model: str, evaluation: dict) -> dict:
    """Register the candidate; challenger always, champion when the promotion gate passes.

    A run on the same data with the same settings and code as an earlier registered one (same
    data key) registers nothing new and returns that version."""
    from fgpo_tasks.evaluate import read_model_info
    from fgpo_tasks.registry import GateConfig, register_candidate

    cfg = pipeline_config(params)
    step = _step_dir(cfg, run_key, "register")
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
