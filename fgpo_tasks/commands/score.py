"""fgpo score: PD of every pair, from cross-extrapolated reward-model margins or from ratings.

Data-parallel: ``accelerate launch --num_processes N -m fgpo_tasks.cli score ...`` splits the
pairs into shards over the N processes (``shard_size``, default an equal share each) and the main
process writes the same scores one process would (``scoring.run_score_distributed``).
"""

from __future__ import annotations

import os

HELP = "score preference divergence (PD) per pair from reward models or ratings"


def add_arguments(p) -> None:
    p.add_argument("--data", required=True, help="pair directory (the data contract)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--reward-models", default=None, help="folder written by `fgpo reward-models`")
    src.add_argument("--from-ratings", action="store_true", default=None,
                     help="PD from the other aspects' ratings (no reward model)")
    p.add_argument("--out", required=True, help="output folder (scores.parquet, manifest, reports)")
    p.add_argument("--config", default=None, help="YAML with ScoreConfig fields (configs/score.yaml)")
    p.add_argument("--gamma", type=float, default=None, help="override: quantile level gamma")
    p.add_argument("--no-cache", dest="use_cache", action="store_false", default=None,
                   help="score every pair again, ignoring the score cache")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any config field, value read as YAML")


def parse_sets(items: list[str]) -> dict:
    """--set FIELD=VALUE pairs as a dict; values parsed as YAML (numbers, inf, lists, null)."""
    import yaml

    from fgpo_tasks.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        parsed = yaml.safe_load(value) if value.strip() else None
        out[key.strip()] = value.strip() if isinstance(parsed, bool) and key.strip() == "tau" else parsed
    return out


def main(args) -> dict:
    from fgpo_tasks.config import load_config
    from fgpo_tasks.provenance import run_timestamp
    from fgpo_tasks.scoring import ScoreConfig, run_score

    overrides = parse_sets(args.set)
    flags = dict(gamma=args.gamma, from_ratings=args.from_ratings, use_cache=args.use_cache)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    config = load_config(ScoreConfig, args.config, **overrides)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under `accelerate launch --num_processes N`
        from fgpo_tasks.scoring import run_score_distributed

        return run_score_distributed(args.data, args.out, config, run_timestamp(args.created_at),
                                     reward_models_dir=args.reward_models)
    return run_score(args.data, args.out, config, run_timestamp(args.created_at),
                     reward_models_dir=args.reward_models)
