"""fgpo select: keep a budget of pairs by PD (or a baseline strategy) in the data contract."""

from __future__ import annotations

from fgpo_tasks.choices import STRATEGIES

HELP = "select the training subset by PD or a baseline strategy"


def add_arguments(p) -> None:
    p.add_argument("--scores", required=True, help="folder written by `fgpo score`")
    p.add_argument("--data", required=True, help="the pair directory that was scored")
    p.add_argument("--strategy", choices=STRATEGIES, default=None, help="selection strategy (default pd)")
    p.add_argument("--budget", type=float, default=None, help="fraction of pairs kept (default 0.3)")
    p.add_argument("--out", required=True, help="output pair directory")
    p.add_argument("--config", default=None, help="YAML with SelectConfig fields (configs/select.yaml)")
    p.add_argument("--seed", type=int, default=None, help="seed of the random strategy")
    p.add_argument("--unified-model", default=None,
                   help="raf: unified reward model folder (default <reward-models>/__all__)")
    p.add_argument("--overall-aspect", default=None, help="ova: the rating used as overall preference")


def main(args) -> dict:
    from fgpo_tasks.config import load_config
    from fgpo_tasks.provenance import run_timestamp
    from fgpo_tasks.selection import SelectConfig, run_select

    config = load_config(SelectConfig, args.config, strategy=args.strategy, budget=args.budget,
                         seed=args.seed, unified_model=args.unified_model,
                         overall_aspect=args.overall_aspect)
    return run_select(args.scores, args.data, args.out, config, run_timestamp(args.created_at))
