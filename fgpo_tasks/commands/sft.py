"""fgpo sft: supervised fine-tuning of a starting policy on a pair directory or toy-world pairs."""

from __future__ import annotations

HELP = "supervised fine-tuning (prompt masked, loss on responses): a starting policy for DPO"


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="output model folder (written atomically)")
    p.add_argument("--config", default=None, help="YAML with SFTConfig fields (configs/sft/)")
    p.add_argument("--data", default=None,
                   help="pair directory to train on; default: toy-world pairs from the config's 'synthetic'")
    p.add_argument("--model", default=None, help="starting model spec (overrides the config)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides the config)")
    p.add_argument("--seed", type=int, default=None, help="seed (overrides the config)")


def main(args) -> dict:
    from fgpo_tasks.config import load_config
    from fgpo_tasks.provenance import run_timestamp
    from fgpo_tasks.sft import SFTConfig, run_sft

    config = load_config(SFTConfig, args.config, model=args.model, max_steps=args.max_steps, seed=args.seed)
    result = run_sft(args.out, config, run_timestamp(args.created_at), data_dir=args.data)
    result.pop("curve")
    return result
