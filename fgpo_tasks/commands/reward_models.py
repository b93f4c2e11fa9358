"""fgpo reward-models: train one proxy reward model per aspect (and optionally a unified one)."""

from __future__ import annotations

HELP = "train the per-aspect proxy reward models (Bradley-Terry, length-debiased)"


def add_arguments(p) -> None:
    p.add_argument("--data", required=True, help="pair directory (the data contract)")
    p.add_argument("--out", required=True, help="output folder: one sub-folder per aspect")
    p.add_argument("--config", default=None, help="YAML with RewardModelConfig fields "
                   "(e.g. configs/reward_models/frozen-minilm.yaml)")
    p.add_argument("--aspect", action="append", default=None,
                   help="train only this aspect (repeatable); default every aspect in the data")
    p.add_argument("--unified", action="store_true", default=None,
                   help="also train one unified model on the whole pool into OUT/__all__ (for raf)")
    p.add_argument("--backbone", default=None, help="override: model spec of the backbone")
    p.add_argument("--mode", choices=["frozen", "finetune"], default=None, help="override: mode")
    p.add_argument("--cache-dir", default=None, help="override: embedding cache root")
    p.add_argument("--seed", type=int, default=None, help="override: seed")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any config field, value read as YAML (e.g. --set rho=0 --set tau=inf)")


def main(args) -> dict:
    from fgpo_tasks.config import load_config
    from fgpo_tasks.provenance import run_timestamp
    from fgpo_tasks.reward_models import RewardModelConfig, run_reward_models

    from fgpo_tasks.commands.score import parse_sets

    overrides = parse_sets(args.set)
    flags = dict(backbone=args.backbone, mode=args.mode, cache_dir=args.cache_dir, seed=args.seed,
                 train_unified=args.unified)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    config = load_config(RewardModelConfig, args.config, **overrides)
    return run_reward_models(args.data, args.out, config, run_timestamp(args.created_at),
                             aspects=args.aspect)
