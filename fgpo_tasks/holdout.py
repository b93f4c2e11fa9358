"""The evaluation split: held-out prompts and evaluation reward models that selection never saw.

Judging a policy with the proxies that selected its data rewards the selector's own biases, and
evaluating on prompts the policy trained on measures memory. So on real data (where no exact
scorer exists) the validated pairs are split by a hash of their PROMPT, before any model sees them:

- ``fraction`` of the prompts leave the pool; of those, ``prompt_fraction`` are evaluation
  prompts (``eval_prompts``) and the rest train the evaluation reward models (``eval_rm``);
- the remaining pairs (``pool``) train the proxies and feed selection and DPO.

A prompt therefore lives in exactly one part. The coin is ``sha256("eval-split", seed, prompt
key)``, so the split does not depend on row order, on the other rows, or on when a batch landed:
a prompt that was held out stays held out on every retrain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

from fgpo_tasks.config import check, to_dict
from fgpo_tasks.provenance import sha256_hex

if TYPE_CHECKING:
    import pandas as pd

PARTS = ("pool", "eval_rm", "eval_prompts")


@dataclass
class HoldoutConfig:
    fraction: float = field(default=0.3, metadata={
        "help": "fraction of the prompts that leave the pool (evaluation RMs + evaluation prompts)"})
    prompt_fraction: float = field(default=0.3, metadata={
        "help": "of the held-out prompts, this fraction are evaluation prompts; the rest train "
                "the evaluation reward models"})
    seed: int = field(default=0, metadata={"help": "seed of the prompt hash"})

    def __post_init__(self):
        check(0.0 < self.fraction < 1.0, f"holdout fraction must be in (0, 1), got {self.fraction}")
        check(0.0 < self.prompt_fraction < 1.0,
              f"holdout prompt_fraction must be in (0, 1), got {self.prompt_fraction}")


def prompt_part(prompt_key: str, seed: int) -> float:
    """A number in [0, 1) fixed by a prompt and a seed: the evaluation split's coin."""
    return int(sha256_hex("eval-split", str(seed), prompt_key)[:12], 16) / 16 ** 12


def split_for_evaluation(df: pd.DataFrame, fraction: float, prompt_fraction: float, seed: int):
    """(pool, eval-RM training, eval-prompt) frames: disjoint by prompt."""
    import numpy as np

    from fgpo_tasks import contract

    u = np.array([prompt_part(contract.prompt_key(p, list(m) if m is not None and len(m) else None), seed)
                  for p, m in zip(df["prompt"], df["prompt_messages"])])
    held, to_prompts = u < fraction, u < fraction * prompt_fraction
    return df[~held], df[held & ~to_prompts], df[to_prompts]


def write_split(data_dir: str | Path, out_dir: str | Path, config: HoldoutConfig,
                created_at: str) -> dict[str, str | int]:
    """Split a pair directory into ``out_dir/{pool,eval_rm,eval_prompts}`` (each a pair directory
    whose manifest names the input and the split); returns their paths and sizes."""
    from fgpo_tasks import contract

    df = contract.read_pairs(data_dir)
    inputs = [{"path": str(data_dir), "fingerprint": contract.data_fingerprint(data_dir, df)}]
    parts = dict(zip(PARTS, split_for_evaluation(df, config.fraction, config.prompt_fraction, config.seed)))
    out: dict[str, str | int] = {}
    for name, part in parts.items():
        path = Path(out_dir) / name
        contract.write_pairs(part, path, stage="holdout", created_at=created_at, inputs=inputs,
                             config={"holdout": to_dict(config), "part": name})
        out[name], out[f"n_{name}"] = str(path), int(len(part))
    return out


def cap_pairs(df: pd.DataFrame, max_pairs: int | None, seed: int) -> pd.DataFrame:
    """At most max_pairs pairs, each aspect keeping its share; by pair-id hash (deterministic)."""
    if max_pairs is None or len(df) <= max_pairs:
        return df
    order = sorted(range(len(df)), key=lambda i: sha256_hex("cap", str(seed), df["pair_id"].iloc[i]))
    ranked = df.iloc[order].copy()
    ranked["_rank"] = ranked.groupby("aspect").cumcount() / ranked.groupby("aspect")["pair_id"].transform("size")
    return ranked.sort_values(["_rank", "pair_id"]).head(max_pairs).drop(columns="_rank").sort_values("pair_id")
