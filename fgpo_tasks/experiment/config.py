"""The experiment's config: arms, pools, seeds, stage sections; and the run key's layout."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgpo_tasks.choices import LOSS_TYPES, STRATEGIES
from fgpo_tasks.config import check, from_dict, read_yaml, to_dict
from fgpo_tasks.errors import ConfigError, FgpoError
from fgpo_tasks.provenance import sha256_hex, stable_json
from fgpo_tasks.storage import commit_step, safe_name, step_result

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent.parent
STAGE_SECTIONS = ("ingest", "validate", "reward_models", "score", "select", "dpo", "evaluate",
                  "eval_reward_models")
ROLE_TAG = "fgpo.role"
# What each strategy needs computed before it can select ('aspects': the per-aspect proxies).
NEEDS = {"pd": {"aspects", "score"}, "pd_high": {"aspects", "score"}, "pd_mid": {"aspects", "score"},
         "random_length": {"aspects", "score"},
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
    storage_root: str | None = field(default=None, metadata={
        "help": "the stage store the arms' stages live in (default: <work>/storage, the pipeline's): "
                "an experiment shares every stage output with pipeline runs and other experiments"})
    implicit_reward: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "the implicit-reward accuracy outcome (ImplicitRewardConfig fields, "
                "fgpo_tasks.experiment.outcome): every arm's policy scored on prompt-disjoint held-out "
                "pairs labelled by the mean of all aspect ratings; {} = off"})
    keep_models: bool = field(default=True, metadata={
        "help": "keep each arm's trained weights; false: delete the weights this run trained once "
                "evaluated (the model card and the evaluation stay; the train_dpo stage record goes with "
                "them, so a later run that needs the stage trains it again; weights another run made stay)"})

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
        from fgpo_tasks.experiment.outcome import ImplicitRewardConfig
        self.implicit_reward_config = (from_dict(ImplicitRewardConfig, self.implicit_reward, where="implicit_reward")
                                       if self.implicit_reward else None)
        check(self.implicit_reward_config is None or bool(self.implicit_reward_config.source) or bool(self.eval_split),
              "implicit_reward: give a source of rated held-out pairs, or an eval_split whose held-out prompts "
              "give them")

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
    """The run key's folder: its unit records (which stage outputs each unit used), the held-out
    prompts and the report. Stage outputs live in the store (``store``)."""
    from fgpo_tasks.env import work_dir
    return Path(cfg.out_dir).absolute() if cfg.out_dir else work_dir() / "experiments" / safe_name(key)


def store(cfg: ExperimentConfig):
    from fgpo_tasks.env import work_dir
    from fgpo_tasks.stages import Store
    return Store(Path(cfg.storage_root).absolute() if cfg.storage_root else work_dir() / "storage")


_done, _commit = step_result, commit_step  # a unit's record: which stage outputs it used, and its figures


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



# Fields that may change between runs of one key: they do not change what a finished unit holds.
_FREE_FIELDS = ("seeds", "description", "tracking_uri", "out_dir", "threads", "keep_models", "storage_root")


def _identity(cfg: ExperimentConfig) -> dict:
    # an unset outcome leaves the identity (and so the MLflow run keys) of earlier configs as it was
    return {k: v for k, v in to_dict(cfg).items() if k not in _FREE_FIELDS and not (k == "implicit_reward" and not v)}


def _mlflow_key(cfg: ExperimentConfig, key: str, *parts: str) -> str:
    """The MLflow run key of a unit: the run key plus the config's hash, so a run key reused with
    another config (after its folder was deleted) makes new MLflow runs instead of clashing with
    the old runs' params."""
    return ":".join([key, sha256_hex(stable_json(_identity(cfg)))[:8], *parts])
