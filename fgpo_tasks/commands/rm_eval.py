"""fgpo rm-eval: each proxy reward model's accuracy on the pairs of its own aspect."""

from __future__ import annotations

HELP = "evaluate the proxy reward models on their own aspect's pairs (margins, accuracy + CI, length correlation)"


def add_arguments(p) -> None:
    p.add_argument("--reward-models", required=True, help="folder written by `fgpo reward-models`")
    p.add_argument("--data", required=True, help="pair directory (the data contract)")
    p.add_argument("--out", required=True, help="output folder (margins.parquet, rm_eval.json, margins.png)")
    p.add_argument("--config", default=None, help="YAML with RmEvalConfig fields")
    p.add_argument("--include-training", dest="exclude_training", action="store_false", default=None,
                   help="also evaluate the pairs each proxy trained on")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any config field, value read as YAML")


def main(args) -> dict:
    from fgpo_tasks.commands.score import parse_sets
    from fgpo_tasks.config import load_config
    from fgpo_tasks.provenance import run_timestamp
    from fgpo_tasks.rm_eval import RmEvalConfig, run_rm_eval

    overrides = parse_sets(args.set)
    if args.exclude_training is not None:
        overrides["exclude_training"] = args.exclude_training
    config = load_config(RmEvalConfig, args.config, **overrides)
    return run_rm_eval(args.reward_models, args.data, args.out, config, run_timestamp(args.created_at))
