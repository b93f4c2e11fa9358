"""The selection experiment: several arms (selection strategy x DPO loss) side by side.

Every arm trains DPO from the same starting policy on a pool built with the same data, budget
and seed, and is evaluated against that starting policy with the same evaluation reward models on
the same held-out prompts. The runner knows nothing about which arm should win: it runs them
all the same way and reports mean and spread over seeds.

Units of work (each a transaction: it commits ``step.json`` last and, once committed, is never
redone, so a crashed or retried run resumes):

=================  =========================================================================
``prepare``        the starting policy (built once for an alias) and, when it was fine-tuned on
                   toy-world data, those pairs (their prompts are never evaluation prompts)
``prepare_pool``   per (pool, seed): ingest + validate (+ the evaluation split for real data), the
                   proxy reward models (one per aspect, plus the unified one when a ``raf`` arm
                   exists) and PD scoring, each timed: computed ONCE and shared by every arm
``prepare_eval``   the held-out prompts (none in any pool or in the policy's SFT data) and, with
                   ``eval_split``, the evaluation reward models trained on that split
``run_arm``        per (pool, seed, arm): select, DPO, evaluate; one MLflow run per arm
``report``         results.json / results.md / results.csv / results.png over every arm
=================  =========================================================================

Cost accounting per arm: selection (the reward models and scoring the arm's strategy needs, plus
the selection itself; ``pd_ratings`` and ``all`` need no model) and training (DPO wall time),
with GPU seconds when those stages ran on a GPU. ``cost_vs_all`` divides by the ``all`` arm's cost
on the same pool and seed.

Evaluation split (real data, ``eval_split``): pairs are assigned by a hash of their PROMPT, so a
prompt's pairs all land in one part: ``fraction`` of the prompts leave the pool; of those,
``prompt_fraction`` become the evaluation prompts and the rest train the evaluation reward
models (one per aspect). Proxies, DPO and evaluation models never see each other's prompts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgpo_tasks.config import check, from_dict, read_yaml, to_dict
from fgpo_tasks.errors import ConfigError, FgpoError
from fgpo_tasks.holdout import prompt_part, split_for_evaluation  # noqa: F401 (re-exported)
from fgpo_tasks.provenance import sha256_hex, stable_json
from fgpo_tasks.storage import commit_step, safe_name, step_result

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
STRATEGIES = ("pd", "pd_ratings", "pd_high", "pd_mid", "random", "all", "raf", "ova", "avg")
LOSS_TYPES = ("sigmoid", "ipo", "cdpo", "dfpo")
STAGE_SECTIONS = ("ingest", "validate", "reward_models", "score", "select", "dpo", "evaluate",
                  "eval_reward_models")
ROLE_TAG = "fgpo.role"
# What each strategy needs computed before it can select ('aspects': the per-aspect proxies).
NEEDS = {"pd": {"aspects", "score"}, "pd_high": {"aspects", "score"}, "pd_mid": {"aspects", "score"},
         "raf": {"unified"}, "pd_ratings": set(), "random": set(), "all": set(), "ova": set(), "avg": set()}


@dataclass
class ArmSpec:
    name: str = field(default="", metadata={"help": "the arm's name in tables and MLflow"})
    strategy: str = field(default="pd", metadata={"help": f"selection strategy, one of {list(STRATEGIES)}"})
    loss_type: str = field(default="sigmoid", metadata={
        "help": f"DPO loss, one of {list(LOSS_TYPES)}; dfpo reads the pool's PD scores"})
    budget: float | None = field(default=None, metadata={"help": "fraction kept; default: the experiment's"})
    dpo: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "DPOConfig fields this arm changes on top of stages.dpo (e.g. max_steps for a "
                "steps-matched comparison); {} = the shared DPO config"})

    def __post_init__(self):
        check(bool(self.name), "every arm needs a name")
        blocked = sorted(set(self.dpo) & {"model", "ref_model", "loss_type", "scores_dir", "seed"})
        check(not blocked, f"arm {self.name!r}: dpo may not set {blocked} (the runner sets them)")
        check(self.strategy in STRATEGIES, f"arm {self.name!r}: strategy must be one of {list(STRATEGIES)}, "
                                           f"got {self.strategy!r}")
        check(self.loss_type in LOSS_TYPES, f"arm {self.name!r}: loss_type must be one of {list(LOSS_TYPES)}, "
                                            f"got {self.loss_type!r}")
        check(self.budget is None or 0 < self.budget <= 1, f"arm {self.name!r}: budget must be in (0, 1], "
                                                           f"got {self.budget}")

    @property
    def needs(self) -> set[str]:
        return NEEDS[self.strategy] | ({"aspects", "score"} if self.loss_type == "dfpo" else set())


@dataclass
class PoolSpec:
    name: str = field(default="", metadata={"help": "the pool's name in tables"})
    source: list[str] = field(default_factory=lambda: ["toy-world"], metadata={
        "help": "ingest sources (relative paths: to the repository)"})
    format: list[str] = field(default_factory=lambda: ["synthetic"], metadata={"help": "ingest formats"})
    ingest: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "IngestConfig fields on top of stages.ingest (e.g. synthetic: {conflict_rate: 0.1})"})
    seed_data: bool = field(default=True, metadata={
        "help": "synthetic sources: each seed draws its own pool (synthetic.seed = the seed)"})
    max_pairs: int | None = field(default=None, metadata={
        "help": "keep at most this many pool pairs (by pair-id hash, every aspect alike); null = all"})
    proxy_max_pairs: int | None = field(default=None, metadata={
        "help": "train the proxy reward models on up to this many pairs of the pool BEFORE the "
                "max_pairs cap (a superset of the DPO pool, same hash order); null = on the DPO pool"})

    def __post_init__(self):
        check(bool(self.name), "every pool needs a name")
        check(self.max_pairs is None or self.max_pairs >= 1, f"pool {self.name!r}: max_pairs must be >= 1")
        check(self.proxy_max_pairs is None or self.max_pairs is None or self.proxy_max_pairs >= self.max_pairs,
              f"pool {self.name!r}: proxy_max_pairs ({self.proxy_max_pairs}) must be >= max_pairs ({self.max_pairs})")


@dataclass
class ExperimentConfig:
    name: str = field(default="experiment", metadata={"help": "experiment name (folder, MLflow run keys)"})
    description: str = field(default="", metadata={"help": "one paragraph for the report"})
    pools: list[dict] = field(default_factory=lambda: [{"name": "toy-world"}], metadata={
        "help": "the pools (PoolSpec fields): each arm runs on each pool"})
    arms: list[dict] = field(default_factory=lambda: [{"name": "all", "strategy": "all"},
                                                      {"name": "random", "strategy": "random"},
                                                      {"name": "pd", "strategy": "pd"}], metadata={
        "help": "the arms (ArmSpec fields)"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={
        "help": "seeds: each changes the synthetic pool, proxy training, random selection and DPO"})
    budget: float = field(default=0.3, metadata={"help": "fraction of a pool the subset arms keep"})
    starting_policy: str = field(default="tiny-llama-toy", metadata={
        "help": "model spec every arm starts from, and the baseline of every evaluation"})
    exclude_policy_data: bool = field(default=True, metadata={
        "help": "never evaluate on prompts of the starting policy's own fine-tuning data"})
    eval_split: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "real data: {fraction, prompt_fraction, seed}: the prompts held out of the pool for "
                "evaluation reward models and evaluation prompts (see the module doc); {} = none"})
    stages: dict[str, dict] = field(default_factory=dict, metadata={
        "help": f"per-stage config sections: {list(STAGE_SECTIONS)}"})
    experiment_name: str = field(default="fgpo-experiments", metadata={"help": "MLflow experiment"})
    tracking_uri: str | None = field(default=None, metadata={
        "help": "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in the work folder)"})
    out_dir: str | None = field(default=None, metadata={
        "help": "where the experiment writes (default: <work>/experiments/<run key>)"})
    threads: int | None = field(default=None, metadata={
        "help": "torch intra-op threads (null: torch's default); 1 is faster on a shared CPU"})
    keep_models: bool = field(default=True, metadata={
        "help": "keep each arm's trained weights; false: delete them once evaluated (the model card "
                "and the evaluation stay)"})

    def __post_init__(self):
        self.pool_specs = [from_dict(PoolSpec, p, where="pools") for p in self.pools]
        self.arm_specs = [from_dict(ArmSpec, a, where="arms") for a in self.arms]
        for kind, names in (("pool", [p.name for p in self.pool_specs]), ("arm", [a.name for a in self.arm_specs])):
            check(len(set(names)) == len(names), f"{kind} names must be unique, got {names}")
        check(bool(self.pool_specs) and bool(self.arm_specs), "give at least one pool and one arm")
        check(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), f"seeds must be distinct, got {self.seeds}")
        check(0 < self.budget <= 1, f"budget must be in (0, 1], got {self.budget}")
        unknown = sorted(set(self.stages) - set(STAGE_SECTIONS))
        check(not unknown, f"unknown stage section(s) {unknown}; known: {list(STAGE_SECTIONS)}")
        if self.eval_split:
            extra = sorted(set(self.eval_split) - {"fraction", "prompt_fraction", "seed"})
            check(not extra, f"eval_split: unknown keys {extra}; known: fraction, prompt_fraction, seed")
            f, pf = self.eval_split.get("fraction", 0.3), self.eval_split.get("prompt_fraction", 0.3)
            check(0 < f < 1 and 0 < pf < 1, f"eval_split fractions must be in (0, 1), got {self.eval_split}")
        check(self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads}")

    @property
    def needs(self) -> set[str]:
        return set().union(*(a.needs for a in self.arm_specs))


def load_experiment(path: str | Path, **overrides) -> ExperimentConfig:
    """The config in ``path`` (a relative path that does not exist here is read from the
    repository), with the non-null ``overrides`` on top."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (REPO / path).exists():
        path = REPO / path
    data = read_yaml(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(ExperimentConfig, data, where=str(path))


# ---------------------------------------------------------------------------------------------
# Layout and transactions

def out_root(cfg: ExperimentConfig, key: str) -> Path:
    from fgpo_tasks.env import work_dir
    return Path(cfg.out_dir) if cfg.out_dir else work_dir() / "experiments" / safe_name(key)


_done, _commit = step_result, commit_step  # storage.py: a step is done when its step.json exists


def _require(step: Path, what: str) -> dict:
    done = _done(step)
    if done is None:
        raise FgpoError(f"{what} has not run yet ({step / 'step.json'} missing)")
    return done


def _stage(cfg: ExperimentConfig, section: str, cls, **overrides):
    values = dict(cfg.stages.get(section) or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, values, where=f"experiment {cfg.name!r} [{section}]")


def _threads(cfg: ExperimentConfig) -> None:
    if cfg.threads:
        import torch
        torch.set_num_threads(cfg.threads)


def _device_kind() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def pool_units(cfg: ExperimentConfig) -> list[dict]:
    return [{"pool": p.name, "seed": s} for p in cfg.pool_specs for s in cfg.seeds]


def arm_units(cfg: ExperimentConfig) -> list[dict]:
    return [{"pool": p.name, "seed": s, "arm": a.name} for p in cfg.pool_specs for s in cfg.seeds
            for a in cfg.arm_specs]


def _pool(cfg: ExperimentConfig, name: str) -> PoolSpec:
    for p in cfg.pool_specs:
        if p.name == name:
            return p
    raise ConfigError(f"unknown pool {name!r}; pools: {[p.name for p in cfg.pool_specs]}")


def _arm(cfg: ExperimentConfig, name: str) -> ArmSpec:
    for a in cfg.arm_specs:
        if a.name == name:
            return a
    raise ConfigError(f"unknown arm {name!r}; arms: {[a.name for a in cfg.arm_specs]}")


def _resolve_source(s: str) -> str:
    p = Path(s)
    return str(REPO / p) if not p.is_absolute() and (REPO / p).exists() else s


# ---------------------------------------------------------------------------------------------
# prepare: the starting policy

# Fields that may change between runs of one key: they do not change what a finished unit holds.
_FREE_FIELDS = ("seeds", "description", "tracking_uri", "out_dir", "threads", "keep_models")


def _identity(cfg: ExperimentConfig) -> dict:
    return {k: v for k, v in to_dict(cfg).items() if k not in _FREE_FIELDS}


def _mlflow_key(cfg: ExperimentConfig, key: str, *parts: str) -> str:
    """The MLflow run key of a unit: the run key plus the config's hash, so a run key reused with
    another config (after its folder was deleted) makes new MLflow runs instead of clashing with
    the old runs' params."""
    return ":".join([key, sha256_hex(stable_json(_identity(cfg)))[:8], *parts])


def check_same_config(cfg: ExperimentConfig, key: str) -> None:
    """Record the config of a run key on its first run; refuse a later run with another config,
    whose finished units would otherwise be reused as if they had been made with it."""
    root = out_root(cfg, key)
    mine = _identity(cfg)
    path = root / "experiment.json"
    if path.is_file():
        before = json.loads(path.read_text())
        if before != json.loads(stable_json(mine)):
            changed = sorted(k for k in set(before) | set(mine) if before.get(k) != json.loads(stable_json(mine)).get(k))
            raise ConfigError(f"run key {key!r} ({root}) was run with another config (changed: {changed}); "
                              "give a new --run-key, or delete that folder to start over")
        return
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(stable_json(mine))
    tmp.rename(path)


def prepare(cfg: ExperimentConfig, key: str, created_at: str) -> dict:
    """The starting policy's folder (built once for an alias) and its SFT data as a pair dir."""
    from fgpo_tasks import contract, models

    check_same_config(cfg, key)
    step = out_root(cfg, key) / "prepare"
    if done := _done(step):
        return done
    _threads(cfg)
    t0 = time.perf_counter()
    policy = models.pretrained_path(cfg.starting_policy)
    policy_data = None
    card_path = Path(policy) / "fgpo_model.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if cfg.exclude_policy_data and card.get("synthetic"):
        from fgpo_tasks.synthetic import SyntheticConfig, generate
        rows = generate(from_dict(SyntheticConfig, card["synthetic"]))
        policy_data = str(step / "policy_data")
        contract.write_pairs(rows, policy_data, stage="ingest", config={"synthetic": card["synthetic"]},
                             created_at=created_at)
    elif cfg.exclude_policy_data and card.get("data_dir"):
        policy_data = card["data_dir"]
    return _commit(step, {"policy": policy, "policy_data": policy_data,
                          "seconds": round(time.perf_counter() - t0, 2)})


# ---------------------------------------------------------------------------------------------
# prepare_pool: data, proxy reward models and PD scores, once per (pool, seed)

def _ingest_config(cfg: ExperimentConfig, pool: PoolSpec, seed: int):
    from fgpo_tasks.ingest import IngestConfig

    values = dict(cfg.stages.get("ingest") or {})
    values.update(pool.ingest)
    if "synthetic" in pool.format and pool.seed_data:
        values["synthetic"] = {**values.get("synthetic", {}), **pool.ingest.get("synthetic", {}), "seed": seed}
    return from_dict(IngestConfig, values, where=f"pool {pool.name!r} [ingest]")


def _cap(df, max_pairs: int | None, seed: int):
    """At most max_pairs pairs, each aspect keeping its share; by pair-id hash (deterministic)."""
    if max_pairs is None or len(df) <= max_pairs:
        return df
    order = sorted(range(len(df)), key=lambda i: sha256_hex("cap", str(seed), df["pair_id"].iloc[i]))
    ranked = df.iloc[order].copy()
    ranked["_rank"] = ranked.groupby("aspect").cumcount() / ranked.groupby("aspect")["pair_id"].transform("size")
    return ranked.sort_values(["_rank", "pair_id"]).head(max_pairs).drop(columns="_rank").sort_values("pair_id")


def prepare_data(cfg: ExperimentConfig, key: str, pool_name: str, seed: int, created_at: str) -> dict:
    """Ingest + validate (+ evaluation split, + cap) a pool; shared by every seed that draws the
    same data (a real pool is built once, a synthetic pool once per seed)."""
    from fgpo_tasks import contract
    from fgpo_tasks.ingest import run_ingest
    from fgpo_tasks.validate import ValidateConfig, run_validate

    pool = _pool(cfg, pool_name)
    ingest_cfg = _ingest_config(cfg, pool, seed)
    identity = {"source": pool.source, "format": pool.format, "ingest": to_dict(ingest_cfg),
                "validate": cfg.stages.get("validate") or {}, "eval_split": cfg.eval_split,
                "max_pairs": pool.max_pairs, "proxy_max_pairs": pool.proxy_max_pairs,
                "cap_seed": seed if pool.seed_data else 0}
    step = out_root(cfg, key) / "data" / pool.name / sha256_hex(stable_json(identity))[:12]
    if done := _done(step):
        return done
    t0 = time.perf_counter()
    run_ingest([_resolve_source(s) for s in pool.source], pool.format, step / "ingest", ingest_cfg, created_at)
    config = _stage(cfg, "validate", ValidateConfig)
    run_validate(step / "ingest", step / "validated", config, created_at)
    df = contract.read_pairs(step / "validated")
    inputs = [{"path": str(step / "validated"), "fingerprint": contract.content_fingerprint(df)}]
    result = {"identity": identity, "validated": str(step / "validated")}
    if cfg.eval_split:
        f, pf = cfg.eval_split.get("fraction", 0.3), cfg.eval_split.get("prompt_fraction", 0.3)
        s = cfg.eval_split.get("seed", 0)
        train, rm_part, prompt_part_df = split_for_evaluation(df, f, pf, s)
        for name, part in (("eval_rm", rm_part), ("eval_prompts", prompt_part_df)):
            contract.write_pairs(part, step / name, stage="split", created_at=created_at, inputs=inputs,
                                 config={"eval_split": cfg.eval_split, "part": name})
            result[name] = str(step / name)
        df = train
    cap_seed = seed if pool.seed_data else 0
    if pool.proxy_max_pairs is not None:
        proxy_df = _cap(df, pool.proxy_max_pairs, cap_seed)
        contract.write_pairs(proxy_df, step / "proxy_pool", stage="split", created_at=created_at, inputs=inputs,
                             config={"eval_split": cfg.eval_split, "part": "proxy_pool",
                                     "max_pairs": pool.proxy_max_pairs})
        result["proxy_pool"] = str(step / "proxy_pool")
        result["n_proxy_pairs"] = int(len(proxy_df))
    df = _cap(df, pool.max_pairs, cap_seed)
    contract.write_pairs(df, step / "pool", stage="split", created_at=created_at, inputs=inputs,
                         config={"eval_split": cfg.eval_split, "part": "pool", "max_pairs": pool.max_pairs})
    result.update(pool=str(step / "pool"), n_pairs=int(len(df)), aspects=sorted(df["aspect"].unique()),
                  seconds=round(time.perf_counter() - t0, 2))
    return _commit(step, result)


def prepare_pool(cfg: ExperimentConfig, key: str, pool_name: str, seed: int, created_at: str) -> dict:
    """The pool's data, proxy reward models and PD scores for one seed, each timed."""
    from fgpo_tasks.reward_models import UNIFIED, RewardModelConfig, run_reward_model, summarize_reward_models
    from fgpo_tasks.scoring import ScoreConfig, run_score

    step = out_root(cfg, key) / "pools" / pool_name / f"seed{seed}"
    if done := _done(step):
        return done
    _threads(cfg)
    data = prepare_data(cfg, key, pool_name, seed, created_at)
    needs = cfg.needs
    result = {"pool": pool_name, "seed": seed, "data": data["pool"], "proxy_data": data.get("proxy_pool"),
              "n_pairs": data["n_pairs"],
              "aspects": data["aspects"], "device": _device_kind(), "rm_seconds": {}, "proxy_accuracy": {}}
    rm_dir = step / "reward_models"
    rm_config = _stage(cfg, "reward_models", RewardModelConfig, seed=seed)
    to_train = (data["aspects"] if needs & {"aspects", "score"} else []) + ([UNIFIED] if "unified" in needs else [])
    proxy_data = data.get("proxy_pool", data["pool"])
    if to_train and rm_config.mode == "frozen":
        # Frozen proxies share one embedding pass over the pool: timed on its own (every strategy
        # that uses a proxy pays it), in a cache of this (pool, seed) so no pool rides on another's.
        import pandas as pd

        from fgpo_tasks import contract
        from fgpo_tasks.reward_models import get_embedder

        rm_config.cache_dir = rm_config.cache_dir or str(step / "embeddings")
        t0 = time.perf_counter()
        emb = get_embedder(rm_config.backbone, rm_config.max_length, rm_config.max_prompt_length,
                           rm_config.pooling, rm_config.embed_batch_size, rm_config.device)
        df = pd.concat([contract.read_pairs(d) for d in {data["pool"], proxy_data}]).drop_duplicates("pair_id")
        prompts = df["prompt"].tolist()
        emb.embed(prompts + prompts, df["chosen"].tolist() + df["rejected"].tolist(), rm_config.cache_dir)
        result["embed_seconds"] = round(time.perf_counter() - t0, 2)
    for aspect in to_train:
        t0 = time.perf_counter()
        metrics = run_reward_model(proxy_data, aspect, rm_dir, rm_config, created_at)
        result["rm_seconds"][aspect] = round(time.perf_counter() - t0, 2)
        result["proxy_accuracy"][aspect] = metrics.get("heldout_accuracy")
    if to_train:
        summarize_reward_models(rm_dir, created_at, rm_config)
        result["reward_models"] = str(rm_dir)
    # Scoring always runs when ratings can give PD too (pd_ratings arms, and the true conflict
    # fraction of every arm's selection on synthetic data); without models it scores from ratings.
    t0 = time.perf_counter()
    score_cfg = _stage(cfg, "score", ScoreConfig)
    with_models = bool(set(data["aspects"]) & set(to_train))
    if not with_models:
        score_cfg.from_ratings = True
    try:
        metrics = run_score(data["pool"], step / "scores", score_cfg, created_at,
                            reward_models_dir=rm_dir if with_models else None)
        result["scores"] = str(step / "scores")
        result["ratings_pd"] = metrics.get("n_with_ratings_pd", 0) > 0
        result["n_ratings_pd"] = int(metrics.get("n_with_ratings_pd", 0))
        result["spearman_pd_vs_ratings"] = metrics.get("spearman_pd_vs_ratings")
    except FgpoError as e:
        if with_models:
            raise
        log.info("pool %s has no ratings of other aspects: no PD from ratings (%s)", pool_name, e)
    result["score_seconds"] = round(time.perf_counter() - t0, 2)
    _log_shared(cfg, key, result)
    return _commit(step, result)


# ---------------------------------------------------------------------------------------------
# prepare_eval: held-out prompts and evaluation reward models, once per experiment

def _eval_config(cfg: ExperimentConfig, eval_models: dict | None, proxy_models: list[str]):
    from fgpo_tasks.evaluate import EvalConfig
    return _stage(cfg, "evaluate", EvalConfig, eval_models=eval_models, proxy_models=proxy_models)


def _proxy_specs(pool_results: list[dict]) -> list[str]:
    out = []
    for r in pool_results:
        if r.get("reward_models"):
            out += [f"fgpo:{p}" for p in sorted(Path(r["reward_models"]).iterdir()) if p.is_dir()
                    and not p.name.startswith(".")]
    return out


def prepare_eval(cfg: ExperimentConfig, key: str, created_at: str) -> dict:
    """Held-out prompts (prompts.jsonl, the same for every arm) and evaluation reward models."""
    from fgpo_tasks import contract
    from fgpo_tasks.evaluate import load_prompts

    root = out_root(cfg, key)
    step = root / "evaluation"
    if done := _done(step):
        return done
    _threads(cfg)
    prep = _require(root / "prepare", "prepare")
    pools = [_require(root / "pools" / u["pool"] / f"seed{u['seed']}", f"pool {u}") for u in pool_units(cfg)]
    t0 = time.perf_counter()
    eval_models = None
    result: dict[str, Any] = {"eval_rm_seconds": {}}
    if cfg.eval_split:
        from fgpo_tasks.reward_models import RewardModelConfig, run_reward_model

        data = [prepare_data(cfg, key, p.name, cfg.seeds[0], created_at) for p in cfg.pool_specs]
        # every pool's evaluation part, the same prompts whatever the seed (a real pool is seed-free)
        rm_cfg = _stage(cfg, "eval_reward_models", RewardModelConfig)
        eval_models = {}
        for pool, d in zip(cfg.pool_specs, data):
            for aspect in sorted(contract.read_pairs(d["eval_rm"])["aspect"].unique()):
                t = time.perf_counter()
                m = run_reward_model(d["eval_rm"], aspect, step / "eval_reward_models" / pool.name, rm_cfg, created_at)
                result["eval_rm_seconds"][f"{pool.name}/{aspect}"] = round(time.perf_counter() - t, 2)
                result.setdefault("eval_rm_accuracy", {})[f"{pool.name}/{aspect}"] = m.get("heldout_accuracy")
                eval_models.setdefault(aspect, []).append(f"fgpo:{step / 'eval_reward_models' / pool.name / aspect}")
        prompt_dirs = [d["eval_prompts"] for d in data]  # the first pool's are the evaluation prompts
    config = _eval_config(cfg, eval_models, _proxy_specs(pools))
    # What the policy and the proxies trained on, named exactly: following the manifests' lineage
    # would reach the whole validated data, evaluation split included.
    config.follow_lineage = False
    config.exclude_pairs = ([p["data"] for p in pools] + [p["proxy_data"] for p in pools if p.get("proxy_data")]
                            + ([prep["policy_data"]] if prep.get("policy_data") else []))
    if cfg.eval_split:
        config.prompt_source, config.prompt_path = "pairs", prompt_dirs[0]
    prompts, record = load_prompts(config)
    step.mkdir(parents=True, exist_ok=True)
    with open(step / "prompts.jsonl", "w", encoding="utf-8") as fh:
        for p in prompts:
            fh.write(json.dumps(p, ensure_ascii=False) + "\n")
    result.update(prompts=str(step / "prompts.jsonl"), n_prompts=len(prompts), eval_models=config.eval_models,
                  prompt_record={k: v for k, v in record.items() if k != "training_pools"},
                  seconds=round(time.perf_counter() - t0, 2))
    return _commit(step, result)


# ---------------------------------------------------------------------------------------------
# run_arm: select, DPO, evaluate, one MLflow run

def _selection_cost(arm: ArmSpec, pool: dict) -> float:
    needs = arm.needs
    rm = pool.get("rm_seconds", {})
    s = pool.get("embed_seconds", 0.0) if needs & {"aspects", "unified"} else 0.0
    if "aspects" in needs:
        s += sum(v for a, v in rm.items() if a != "__all__")
    if "unified" in needs:
        s += rm.get("__all__", 0.0)
    if "score" in needs:
        s += pool.get("score_seconds", 0.0)
    return s


CONFLICT_COVERAGE = 0.5  # report the true-conflict share only where this much of a selection has ratings PD


def _true_conflict(selected_dir: str, scores_dir: str | None) -> dict:
    """Mean PD from ratings of the selected pairs and the share with PD > 0 (synthetic: the truth),
    when at least CONFLICT_COVERAGE of the selected pairs carry PD from ratings (HelpSteer2: few
    pairs do, and a share over 2 of 200 pairs would read as a finding)."""
    import numpy as np

    from fgpo_tasks import contract
    from fgpo_tasks.scoring import read_scores

    if not scores_dir:
        return {}
    scores, _ = read_scores(scores_dir)
    if "pd_ratings" not in scores or not np.isfinite(scores["pd_ratings"].to_numpy(dtype=float)).any():
        return {}
    ids = set(contract.read_pairs(selected_dir)["pair_id"])
    v = scores.loc[scores["pair_id"].isin(ids), "pd_ratings"].to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    out = {"selected_with_ratings_pd": int(len(v))}
    if len(v) and len(v) >= CONFLICT_COVERAGE * len(ids):
        out.update(selected_pd_ratings_mean=float(v.mean()), selected_conflict_fraction=float((v > 0).mean()))
    return out


def run_arm(cfg: ExperimentConfig, key: str, pool_name: str, seed: int, arm_name: str, created_at: str) -> dict:
    """One arm on one pool and seed: select, train DPO from the starting policy, evaluate against it."""
    from fgpo_tasks.dpo import DPOConfig, run_train_dpo
    from fgpo_tasks.evaluate import run_evaluate
    from fgpo_tasks.selection import SelectConfig, run_select
    from fgpo_tasks.tracking import log_evaluation

    root = out_root(cfg, key)
    step = root / "arms" / pool_name / f"seed{seed}" / arm_name
    if done := _done(step):
        return done
    _threads(cfg)
    arm = _arm(cfg, arm_name)
    prep = _require(root / "prepare", "prepare")
    pool = _require(root / "pools" / pool_name / f"seed{seed}", f"pool {pool_name} seed {seed}")
    ev = _require(root / "evaluation", "prepare_eval")
    result: dict[str, Any] = {"pool": pool_name, "seed": seed, "arm": arm.name, "strategy": arm.strategy,
                              "loss_type": arm.loss_type, "budget": arm.budget or cfg.budget,
                              "device": _device_kind(), "n_pool": pool["n_pairs"]}
    if arm.strategy == "pd_ratings":
        from fgpo_tasks.selection import n_keep

        have, need = pool.get("n_ratings_pd", 0 if not pool.get("ratings_pd") else pool["n_pairs"]), \
            n_keep(arm.budget or cfg.budget, pool["n_pairs"])
        if have < need:  # the rest of the subset would be filled by the tie-break, not by PD
            result["skipped"] = (f"only {have} of {pool['n_pairs']} pairs carry other aspects' ratings "
                                 f"(PD from ratings), fewer than the {need} the budget keeps")
            log.warning("arm %s on %s: %s", arm.name, pool_name, result["skipped"])
            return _commit(step, result)
    needs_pd = "score" in arm.needs or arm.strategy == "pd_ratings"
    scores_dir = pool.get("scores")
    if needs_pd and not scores_dir:
        raise FgpoError(f"arm {arm.name!r} needs PD scores and pool {pool_name!r} has none")

    tracker = _tracker(cfg, key, pool_name, seed, arm)
    try:
        t0 = time.perf_counter()
        select_cfg = _stage(cfg, "select", SelectConfig, strategy=arm.strategy, budget=arm.budget or cfg.budget,
                            seed=seed, unified_model=str(Path(pool["reward_models"]) / "__all__")
                            if arm.strategy == "raf" else None)
        sel = run_select(scores_dir, pool["data"], step / "selected", select_cfg, created_at)
        select_seconds = time.perf_counter() - t0
        result.update(n_selected=sel["n_selected"], **_true_conflict(str(step / "selected"), scores_dir))

        dpo_cfg = _stage(cfg, "dpo", DPOConfig, **arm.dpo, model=cfg.starting_policy, seed=seed,
                         loss_type=arm.loss_type, scores_dir=scores_dir if arm.loss_type == "dfpo" else None)
        t0 = time.perf_counter()
        with tracker.stage("train_dpo", system_metrics=False) as run:
            run.log_config(dpo_cfg)
            callback = run.metrics_callback("dpo")
            trained = run_train_dpo(step / "selected", step / "model", dpo_cfg, created_at, metrics_callback=callback)
            callback.flush(raise_errors=False)
        train_seconds = time.perf_counter() - t0

        eval_cfg = _eval_config(cfg, ev["eval_models"], _proxy_specs([pool]))
        prompts = [json.loads(line) for line in Path(ev["prompts"]).read_text().splitlines() if line.strip()]
        t0 = time.perf_counter()
        run_evaluate(step / "model", prep["policy"], step / "evaluation", eval_cfg, created_at, prompts=prompts)
        eval_seconds = time.perf_counter() - t0
        log_evaluation(tracker, step / "evaluation")
        if not cfg.keep_models:
            for f in (step / "model").glob("*.safetensors"):
                f.unlink()

        sel_cost = _selection_cost(arm, pool) + select_seconds
        # wall seconds on result["device"]; training_cuda_s: the GPU stream's seconds (CUDA events), else None
        result["cost"] = {"selection_s": round(sel_cost, 2), "training_s": round(train_seconds, 2),
                          "total_s": round(sel_cost + train_seconds, 2), "clock": "wall",
                          "device": trained.get("device", result["device"]),
                          "training_cuda_s": trained.get("train_cuda_s"),
                          "evaluation_s": round(eval_seconds, 2)}
        result["dpo_steps"] = trained.get("steps")
        result["evaluation"] = _eval_summary(step / "evaluation")
        tracker.log_metrics(tracker.parent_run_id, {"cost": result["cost"], "selection": {
            k: result[k] for k in ("n_selected", "selected_conflict_fraction", "selected_pd_ratings_mean")
            if k in result}})
        tracker.finish("FINISHED")
    except BaseException:
        tracker.finish("FAILED")
        raise
    result["mlflow_run_id"] = tracker.parent_run_id
    return _commit(step, result)


def _eval_summary(eval_dir: Path) -> dict:
    from fgpo_tasks.evaluate import read_results

    r = read_results(eval_dir)
    return {"overall": {k: r["overall"][k] for k in ("win_rate", "lc_win_rate", "reward_delta",
                                                      "candidate_mean_length", "baseline_mean_length")},
            "aspects": {a: {k: f[k] for k in ("win_rate", "lc_win_rate", "reward_delta", "candidate_mean_reward",
                                               "baseline_mean_reward")} for a, f in r["aspects"].items()},
            "n_prompts": r["prompts"]["n_prompts"]}


def _tracking_uri(cfg: ExperimentConfig) -> str:
    from fgpo_tasks.tracking import default_tracking_uri
    return cfg.tracking_uri or default_tracking_uri()


def _tracker(cfg: ExperimentConfig, key: str, pool: str, seed: int, arm: ArmSpec):
    from fgpo_tasks.tracking import Tracker, TrackingConfig

    tags = {ROLE_TAG: "arm", "fgpo.experiment": key, "fgpo.pool": pool, "fgpo.seed": seed, "fgpo.arm": arm.name,
            "fgpo.strategy": arm.strategy, "fgpo.loss_type": arm.loss_type, "fgpo.budget": arm.budget or cfg.budget,
            "fgpo.starting_policy": cfg.starting_policy}
    tracker = Tracker(_mlflow_key(cfg, key, pool, f"s{seed}", arm.name),
                      TrackingConfig(tracking_uri=_tracking_uri(cfg), experiment_name=cfg.experiment_name,
                                     system_metrics=False),
                      run_name=f"{pool}/seed{seed}/{arm.name}", tags=tags)
    tracker.set_tags(tracker.parent_run_id, tags)  # also on a run resumed after a crash
    tracker.log_params(tracker.parent_run_id, {"arm.strategy": arm.strategy, "arm.loss_type": arm.loss_type,
                                               "arm.budget": arm.budget or cfg.budget, "pool": pool, "seed": seed})
    return tracker


def _log_shared(cfg: ExperimentConfig, key: str, pool: dict) -> None:
    """The shared work of a (pool, seed) as its own MLflow run (role 'shared'), for its costs."""
    from fgpo_tasks.tracking import Tracker, TrackingConfig

    tags = {ROLE_TAG: "shared", "fgpo.experiment": key, "fgpo.pool": pool["pool"], "fgpo.seed": pool["seed"]}
    tracker = Tracker(_mlflow_key(cfg, key, pool["pool"], f"s{pool['seed']}", "shared"),
                      TrackingConfig(tracking_uri=_tracking_uri(cfg), experiment_name=cfg.experiment_name,
                                     system_metrics=False),
                      run_name=f"{pool['pool']}/seed{pool['seed']}/shared", tags=tags)
    tracker.log_metrics(tracker.parent_run_id, {
        "rm_seconds": pool["rm_seconds"], "score_seconds": pool.get("score_seconds", 0.0),
        "embed_seconds": pool.get("embed_seconds", 0.0),
        "proxy_accuracy": {a: v for a, v in pool["proxy_accuracy"].items() if v is not None},
        "spearman_pd_vs_ratings": pool.get("spearman_pd_vs_ratings"), "n_pairs": pool["n_pairs"]})
    tracker.finish("FINISHED")


def _log_report(cfg: ExperimentConfig, key: str, root: Path) -> None:
    """The table and plot as artifacts of one MLflow run (role 'report') beside the arms' runs."""
    from fgpo_tasks.tracking import Tracker, TrackingConfig

    try:
        tracker = Tracker(_mlflow_key(cfg, key, "report"), TrackingConfig(tracking_uri=_tracking_uri(cfg),
                                                          experiment_name=cfg.experiment_name, system_metrics=False),
                          run_name=f"{key}/report", tags={ROLE_TAG: "report", "fgpo.experiment": key})
        for name in ("results.md", "results.csv", "results.png", "results.json"):
            tracker.log_artifact(tracker.parent_run_id, root / name, "report")
        tracker.finish("FINISHED")
    except FgpoError as e:  # the files on disk are the result; MLflow only mirrors them
        log.warning("report not logged to MLflow: %s", e)


# ---------------------------------------------------------------------------------------------
# report: the results table, markdown and plot

def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    import numpy as np
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return float("nan"), None
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def aggregate(cfg: ExperimentConfig, arm_results: list[dict]) -> list[dict]:
    """One row per (pool, arm): mean and sample sd over seeds of every figure."""
    rows = []
    all_cost = {(r["pool"], r["seed"]): r["cost"]["total_s"] for r in arm_results
                if r.get("strategy") == "all" and r.get("loss_type") == "sigmoid" and "cost" in r}
    for pool in cfg.pool_specs:
        for arm in cfg.arm_specs:
            runs = [r for r in arm_results if r["pool"] == pool.name and r["arm"] == arm.name]
            done = [r for r in runs if "evaluation" in r]
            row: dict[str, Any] = {"pool": pool.name, "arm": arm.name, "strategy": arm.strategy,
                                   "loss_type": arm.loss_type, "seeds": len(done)}
            if not done:
                row["skipped"] = next((r.get("skipped") for r in runs if r.get("skipped")), "not run")
                rows.append(row)
                continue
            fig = {"win_rate": [r["evaluation"]["overall"]["win_rate"] for r in done],
                   "lc_win_rate": [r["evaluation"]["overall"]["lc_win_rate"] for r in done],
                   "reward_delta": [r["evaluation"]["overall"]["reward_delta"] for r in done],
                   "n_selected": [r["n_selected"] for r in done],
                   "selected_conflict_fraction": [r.get("selected_conflict_fraction") for r in done],
                   "selection_s": [r["cost"]["selection_s"] for r in done],
                   "training_s": [r["cost"]["training_s"] for r in done],
                   "total_s": [r["cost"]["total_s"] for r in done],
                   "cost_vs_all": [r["cost"]["total_s"] / all_cost[(r["pool"], r["seed"])]
                                   if all_cost.get((r["pool"], r["seed"])) else None for r in done]}
            for aspect in done[0]["evaluation"]["aspects"]:
                for name in ("reward_delta", "win_rate", "lc_win_rate"):
                    fig[f"{aspect}.{name}"] = [r["evaluation"]["aspects"][aspect][name] for r in done]
            row.update({k: _mean_sd(v) for k, v in fig.items()})
            row["aspects"] = list(done[0]["evaluation"]["aspects"])
            rows.append(row)
    return rows


def _fmt(ms, digits: int = 3) -> str:
    mean, sd = ms
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def markdown(cfg: ExperimentConfig, rows: list[dict], meta: dict) -> str:
    lines = [f"### {cfg.name}: {len(cfg.arm_specs)} arms x {len(cfg.pool_specs)} pools x {len(cfg.seeds)} seeds", ""]
    if cfg.description:
        lines += [cfg.description.strip(), ""]
    lines += [f"Starting policy `{cfg.starting_policy}`; budget {cfg.budget}; {meta.get('n_prompts')} held-out "
              f"prompts; evaluation models: {meta.get('eval_models_text')}. Figures: mean ± sample sd over seeds "
              f"{cfg.seeds}. Win rates are against the starting policy (ties 0.5); LC = length-controlled; "
              "Δ = mean reward of the arm's policy minus the starting policy's (Δ mean: averaged over the aspects, "
              "the objective DFPO's derivation starts from); true conflict = share of the arm's training pairs "
              "whose PD from the ratings is > 0; cost = wall seconds of "
              "selection (reward models + scoring the arm needs + selection) and DPO training.", ""]
    for pool in cfg.pool_specs:
        prow = [r for r in rows if r["pool"] == pool.name]
        aspects = next((r["aspects"] for r in prow if "aspects" in r), [])
        facts = meta.get("pools", {}).get(pool.name)
        if facts:
            acc = ", ".join(f"{a} {_fmt(v, 2)}" for a, v in facts["proxy_accuracy"].items())
            lines += [f"Pool {pool.name}: {facts['n_pairs']} pairs; proxy held-out accuracy {acc or 'n/a'}; "
                      f"Spearman(PD, PD from ratings) {_fmt(facts['spearman'], 2)}.", ""]
        headers = (["arm", "pairs", "true conflict", "LC win rate", "win rate", "Δ mean"] + [f"Δ {a}" for a in aspects]
                   + ["selection s", "training s", "cost vs all"])
        lines += [f"**pool {pool.name}**", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for r in prow:
            if "skipped" in r:
                lines.append(f"| {r['arm']} | " + " | ".join(["—"] * (len(headers) - 2)) + f" | skipped: {r['skipped']} |")
                continue
            cells = [r["arm"], _fmt(r["n_selected"], 0), _fmt(r["selected_conflict_fraction"], 2),
                     _fmt(r["lc_win_rate"]), _fmt(r["win_rate"]), _fmt(r["reward_delta"])]
            cells += [_fmt(r[f"{a}.reward_delta"]) for a in aspects]
            cells += [_fmt(r["selection_s"], 1), _fmt(r["training_s"], 1), _fmt(r["cost_vs_all"], 2)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(cfg: ExperimentConfig, rows: list[dict], path: Path) -> None:
    """Per pool: per-aspect reward change and LC win rate against the starting policy, per arm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pools = cfg.pool_specs
    fig, axes = plt.subplots(len(pools), 2, figsize=(13, 3.6 * len(pools)), squeeze=False)
    for i, pool in enumerate(pools):
        prow = [r for r in rows if r["pool"] == pool.name and "skipped" not in r]
        if not prow:
            continue
        aspects, arms = prow[0]["aspects"], [r["arm"] for r in prow]
        ax = axes[i][0]
        width = 0.8 / len(arms)
        for j, r in enumerate(prow):
            means = [r[f"{a}.reward_delta"][0] for a in aspects]
            sds = [r[f"{a}.reward_delta"][1] or 0.0 for a in aspects]
            ax.bar(np.arange(len(aspects)) + j * width - 0.4 + width / 2, means, width, yerr=sds, capsize=2,
                   label=r["arm"])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(aspects)), aspects)
        ax.set_ylabel("reward − starting policy")
        ax.set_title(f"{pool.name}: per-aspect reward change")
        ax.legend(fontsize=7, ncol=2)
        ax = axes[i][1]
        means = [r["lc_win_rate"][0] for r in prow]
        sds = [r["lc_win_rate"][1] or 0.0 for r in prow]
        ax.bar(arms, means, yerr=sds, capsize=3, color=[f"C{j}" for j in range(len(arms))])
        ax.axhline(0.5, color="black", lw=0.8, ls="--")
        # zoomed on 0.5 (no change): arms a few points apart would look alike on [0, 1]
        reach = max([abs(m - 0.5) + sd for m, sd in zip(means, sds) if math.isfinite(m)] + [0.02])
        ax.set_ylim(0.5 - 1.3 * reach, 0.5 + 1.3 * reach)
        ax.set_ylabel("LC win rate vs starting policy")
        ax.set_title(f"{pool.name}: length-controlled win rate (mean of aspects)")
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(cfg: ExperimentConfig, key: str, created_at: str) -> dict:
    """Collect every arm's result into results.json / .md / .csv and results.png (always redone)."""
    import csv

    root = out_root(cfg, key)
    if not root.is_dir():
        raise FgpoError(f"nothing to report: {root} does not exist (run the experiment first; --run-key "
                        "names the run, default: the config's name)")
    ev = _done(root / "evaluation") or {}
    pools = [d for u in pool_units(cfg) if (d := _done(root / "pools" / u["pool"] / f"seed{u['seed']}"))]
    scores = {(d["pool"], d["seed"]): d.get("scores") for d in pools}
    results = []
    for u in arm_units(cfg):
        arm_dir = root / "arms" / u["pool"] / f"seed{u['seed']}" / u["arm"]
        done = _done(arm_dir)
        if done is None:
            log.warning("arm %s on %s seed %s has not run: left out of the report", u["arm"], u["pool"], u["seed"])
            continue
        if (arm_dir / "selected").is_dir():  # the conflict facts by the current rule, from the files
            for k in ("selected_pd_ratings_mean", "selected_conflict_fraction", "selected_with_ratings_pd"):
                done.pop(k, None)
            done.update(_true_conflict(str(arm_dir / "selected"), scores.get((u["pool"], u["seed"]))))
        results.append(done)
    rows = aggregate(cfg, results)
    models = ev.get("eval_models") or {}
    meta = {"n_prompts": ev.get("n_prompts"),
            "eval_models_text": ", ".join(f"{a}: {' '.join(Path(m.split(':', 1)[-1]).name if m.startswith('fgpo:') else m for m in ms)}"
                                          for a, ms in models.items())}
    meta["pools"] = {}
    for spec in cfg.pool_specs:
        mine = [d for d in pools if d["pool"] == spec.name]
        if mine:
            aspects = sorted({a for d in mine for a in d.get("proxy_accuracy", {})})
            meta["pools"][spec.name] = {
                "n_pairs": mine[0]["n_pairs"],
                "proxy_accuracy": {a: _mean_sd([d["proxy_accuracy"].get(a) for d in mine]) for a in aspects},
                "spearman": _mean_sd([d.get("spearman_pd_vs_ratings") for d in mine])}
    text = markdown(cfg, rows, meta)
    (root / "results.md").write_text(text)
    (root / "results.json").write_text(json.dumps({"name": cfg.name, "key": key, "created_at": created_at,
                                                   "config": {k: v for k, v in to_dict(cfg).items()},
                                                   "rows": rows, "arms": results, "pools": pools,
                                                   "evaluation": ev}, indent=2, default=str) + "\n")
    with open(root / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, tuple)})
        w.writerow(["pool", "arm", "strategy", "loss_type", "seeds"] + [f"{k}.{s}" for k in keys for s in ("mean", "sd")])
        for r in rows:
            w.writerow([r["pool"], r["arm"], r["strategy"], r["loss_type"], r["seeds"]]
                       + [x for k in keys for x in (r.get(k) or (None, None))])
    plot(cfg, rows, root / "results.png")
    _log_report(cfg, key, root)
    return {"out_dir": str(root), "results_md": str(root / "results.md"), "plot": str(root / "results.png"),
            "arms_run": len(results), "arms_planned": len(arm_units(cfg)),
            "table": {f"{r['pool']}/{r['arm']}": (r["lc_win_rate"][0] if "lc_win_rate" in r else None) for r in rows}}


def run_experiment(cfg: ExperimentConfig, key: str, created_at: str) -> dict:
    """Every unit in order, in this process: what the fgpo_experiment DAG does, for the CLI and tests."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    prepare(cfg, key, created_at)
    for u in tqdm(pool_units(cfg), desc="pools"):
        prepare_pool(cfg, key, u["pool"], u["seed"], created_at)
    prepare_eval(cfg, key, created_at)
    for u in tqdm(arm_units(cfg), desc="arms"):
        log.info("arm %s on pool %s, seed %s", u["arm"], u["pool"], u["seed"])
        run_arm(cfg, key, u["pool"], u["seed"], u["arm"], created_at)
    out = report(cfg, key, created_at)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
