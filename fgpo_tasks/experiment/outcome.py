"""The implicit-reward outcome: how often a trained policy ranks held-out pairs as the mean of
all aspect ratings does, with a bootstrap CI by prompt.

DPO's policy defines a reward, r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)) (Rafailov et al. 2023,
Eq. 5). On a held-out pair (x, y_w, y_l) the policy is right when r(x, y_w) - r(x, y_l) > 0.
Unlike win rates over a few dozen generated answers judged by small reward models, this needs no
sampling and no judge: its only noise is which held-out pairs were drawn, and a policy that has
not moved (pi = pi_ref) scores 0 (every margin is 0, none is > 0).

- **Held-out pairs.** Pairs of responses to the same prompt whose every aspect is rated (the
  HelpSteer v1 sample rates all five), labelled by the MEAN of the aspect ratings (the reward
  DFPO's derivation maximises): chosen = the response with the higher mean; equal means are
  dropped; a response pair listed under several aspects counts once. No held-out prompt is a
  prompt of the training pool (``disjoint_from`` drops any, and the caller records how many).
- **CI.** Pairs of one prompt share it, so they are not independent: the bootstrap resamples
  PROMPTS with replacement and takes the share of correct pairs over the resampled prompts' pairs.

Pure functions (``mean_rating_pairs``, ``implicit_margins``, ``implicit_accuracy``,
``bootstrap_by_prompt``, ``summarize``) and one scorer (``sequence_logps``: the DPO code's summed
response log-probs, ``fgpo_tasks.dpo.losses.SequenceLogps`` batched by ``dpo.refcache.compute``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fgpo_tasks.config import check
from fgpo_tasks.provenance import sha256_hex

log = logging.getLogger(__name__)

HELDOUT_FILE = "heldout_pairs.parquet"
MARGINS_FILE = "implicit_reward.parquet"


@dataclass
class ImplicitRewardConfig:
    source: list[str] = field(default_factory=list, metadata={
        "help": "rated sources of the held-out pairs (ingested with `format`); [] = the prompts the "
                "experiment's eval_split holds out of every pool (its eval_rm and eval_prompts parts)"})
    format: list[str] = field(default_factory=lambda: ["rated-responses"], metadata={
        "help": "ingest format(s) of `source`"})
    ingest: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "IngestConfig fields for `source` (e.g. {min_margin: 1})"})
    aspects: list[str] | None = field(default=None, metadata={
        "help": "the aspects whose ratings are averaged; default: every aspect rated anywhere in "
                "the held-out data (a pair missing one is dropped)"})
    max_pairs: int | None = field(default=300, metadata={
        "help": "keep at most this many held-out pairs (by a hash of pair id and seed); null = all"})
    seed: int = field(default=0, metadata={"help": "seed of the cap and of the bootstrap"})
    bootstrap_samples: int = field(default=2000, metadata={"help": "bootstrap resamples of the prompts"})
    confidence: float = field(default=0.95, metadata={"help": "level of the bootstrap CI"})
    batch_size: int = field(default=16, metadata={"help": "pairs per log-prob forward", "inert": True})

    def __post_init__(self):
        check(self.max_pairs is None or self.max_pairs >= 1, f"implicit_reward.max_pairs must be >= 1, "
                                                             f"got {self.max_pairs}")
        check(self.bootstrap_samples >= 1, f"implicit_reward.bootstrap_samples must be >= 1, "
                                           f"got {self.bootstrap_samples}")
        check(0 < self.confidence < 1, f"implicit_reward.confidence must be in (0, 1), got {self.confidence}")
        check(self.batch_size >= 1, f"implicit_reward.batch_size must be >= 1, got {self.batch_size}")
        check(not self.source or len(self.format) in (1, len(self.source)),
              f"implicit_reward.format: give one format or one per source, got {self.format}")


# ---------------------------------------------------------------------------------------------
# Held-out pairs labelled by the mean rating

def _rating(ratings: Any, aspect: str) -> float | None:
    if not isinstance(ratings, dict):
        return None
    v = ratings.get(aspect)
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def rated_aspects(df) -> list[str]:
    """Every aspect with a rating on some response of ``df`` (sorted)."""
    found: set[str] = set()
    for col in ("ratings_chosen", "ratings_rejected"):
        for r in df[col] if col in df.columns else []:
            if isinstance(r, dict):
                found |= {k for k, v in r.items() if v is not None}
    return sorted(found)


def mean_rating_pairs(df, aspects: Sequence[str] | None = None):
    """(pairs, counts): one pair per distinct (prompt, two responses) of the contract pairs ``df``,
    chosen = the response whose ratings of ``aspects`` (default: every rated aspect) have the
    higher mean. Pairs with equal means, or a response missing one of the aspects, are dropped.

    Columns: pair_id (of the prompt and the two texts, whatever the input's orientation),
    prompt, prompt_messages, chosen, rejected, prompt_key, mean_chosen, mean_rejected."""
    import pandas as pd

    from fgpo_tasks.contract import prompt_key

    aspects = list(aspects) if aspects else rated_aspects(df)
    if not aspects:
        raise ValueError("no aspect ratings in the held-out data: the mean rating needs ratings_chosen / "
                         "ratings_rejected with every aspect")
    rows, seen = [], set()
    counts = {"pairs_in": int(len(df)), "duplicates": 0, "missing_ratings": 0, "ties": 0}
    for rec in df.to_dict(orient="records"):
        messages = rec.get("prompt_messages")
        messages = list(messages) if messages is not None and len(messages) else None
        key = prompt_key(rec["prompt"], messages)
        a, b = sorted([(rec["chosen"], rec.get("ratings_chosen")), (rec["rejected"], rec.get("ratings_rejected"))],
                      key=lambda t: t[0])
        ident = (key, a[0], b[0])
        if ident in seen:
            counts["duplicates"] += 1
            continue
        seen.add(ident)
        ra, rb = [_rating(a[1], k) for k in aspects], [_rating(b[1], k) for k in aspects]
        if any(v is None for v in ra + rb):
            counts["missing_ratings"] += 1
            continue
        ma, mb = float(np.mean(ra)), float(np.mean(rb))
        if ma == mb:
            counts["ties"] += 1
            continue
        (win, mw), (lose, ml) = ((a[0], ma), (b[0], mb)) if ma > mb else ((b[0], mb), (a[0], ma))
        rows.append({"pair_id": sha256_hex("mean-rating", key, a[0], b[0])[:32], "prompt": rec["prompt"],
                     "prompt_messages": messages, "chosen": win, "rejected": lose, "prompt_key": key,
                     "mean_chosen": mw, "mean_rejected": ml})
    counts["pairs"] = len(rows)
    counts["aspects"] = aspects
    cols = ["pair_id", "prompt", "prompt_messages", "chosen", "rejected", "prompt_key", "mean_chosen", "mean_rejected"]
    return pd.DataFrame(rows, columns=cols), counts


def prompt_keys(df) -> set[str]:
    from fgpo_tasks.contract import prompt_key

    msgs = df["prompt_messages"] if "prompt_messages" in df.columns else [None] * len(df)
    return {prompt_key(p, list(m) if m is not None and len(m) else None) for p, m in zip(df["prompt"], msgs)}


def disjoint_from(heldout, training_prompts: set[str]):
    """(held-out pairs whose prompt is in no training pool, number dropped)."""
    keep = ~heldout["prompt_key"].isin(training_prompts)
    return heldout[keep].reset_index(drop=True), int((~keep).sum())


def cap(heldout, max_pairs: int | None, seed: int):
    """At most ``max_pairs`` pairs, by a hash of (seed, pair id): the same pairs for every arm."""
    if max_pairs is None or len(heldout) <= max_pairs:
        return heldout.sort_values("pair_id").reset_index(drop=True)
    order = heldout["pair_id"].map(lambda p: sha256_hex("implicit-reward-cap", str(seed), p))
    return heldout.assign(_h=order).sort_values("_h").head(max_pairs).drop(columns="_h") \
        .sort_values("pair_id").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# The outcome and its CI

def implicit_margins(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> np.ndarray:
    """beta * log(pi/pi_ref)(chosen) - beta * log(pi/pi_ref)(rejected), per pair, from summed
    response log-probs of the policy and the reference."""
    pc, pr, rc, rr = (np.asarray(x, dtype=np.float64) for x in (policy_chosen, policy_rejected, ref_chosen,
                                                                ref_rejected))
    if not (pc.shape == pr.shape == rc.shape == rr.shape):
        raise ValueError(f"log-prob arrays differ in shape: {pc.shape}, {pr.shape}, {rc.shape}, {rr.shape}")
    return beta * ((pc - rc) - (pr - rr))


def implicit_accuracy(margins) -> float:
    """Share of pairs with margin > 0 (a zero margin, the unmoved policy's, is not a success)."""
    m = np.asarray(margins, dtype=np.float64)
    if m.size == 0:
        return float("nan")
    return float((m > 0).mean())


def _prompt_resamples(prompts: Sequence[str], n_samples: int, seed: int):
    """(group of each pair, (n_samples, n_prompts) counts of each prompt in each resample)."""
    _, group = np.unique(np.asarray(prompts, dtype=object).astype(str), return_inverse=True)
    n_groups = int(group.max()) + 1
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_samples).astype(np.float64)
    return group, draws


def _resampled_shares(correct, group, draws) -> np.ndarray:
    """(n_samples,) mean over the rows of ``correct`` (k, n_pairs) of each resample's share."""
    n_groups = draws.shape[1]
    hits = np.stack([np.bincount(group, weights=row, minlength=n_groups) for row in correct])  # (k, G)
    sizes = np.bincount(group, minlength=n_groups).astype(np.float64)  # (G,)
    return (draws @ hits.T).mean(axis=1) / (draws @ sizes)


def _rows(correct, n_prompts: int) -> np.ndarray:
    c = np.atleast_2d(np.asarray(correct, dtype=np.float64))
    if c.shape[1] != n_prompts:
        raise ValueError(f"{c.shape[1]} pairs but {n_prompts} prompt keys")
    return c


def bootstrap_by_prompt(correct, prompts: Sequence[str], n_samples: int = 2000, seed: int = 0,
                        confidence: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the share of correct pairs, resampling PROMPTS with replacement (a
    resampled prompt brings all its pairs). ``correct``: (n_pairs,) or (k, n_pairs), e.g. k seeds
    scored on the same pairs: then the statistic is the mean share over the k rows, and every row
    sees the same resampled prompts."""
    c = _rows(correct, len(prompts))
    if c.shape[1] == 0:
        return float("nan"), float("nan")
    group, draws = _prompt_resamples(prompts, n_samples, seed)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(_resampled_shares(c, group, draws), [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_difference_by_prompt(correct_a, correct_b, prompts: Sequence[str], n_samples: int = 2000,
                                   seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """(difference, CI low, CI high) of the share of correct pairs of A minus B, both scored on
    the same pairs (rows: seeds), PAIRED: each resample of the prompts is applied to both, so
    what the two share (which pairs are easy) cancels."""
    a, b = _rows(correct_a, len(prompts)), _rows(correct_b, len(prompts))
    if a.shape[1] == 0:
        return float("nan"), float("nan"), float("nan")
    group, draws = _prompt_resamples(prompts, n_samples, seed)
    diff = _resampled_shares(a, group, draws) - _resampled_shares(b, group, draws)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diff, [alpha, 1 - alpha])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def summarize(margins, prompts: Sequence[str], config: ImplicitRewardConfig) -> dict:
    """Accuracy, its CI by prompt, and the counts behind them."""
    m = np.asarray(margins, dtype=np.float64)
    lo, hi = bootstrap_by_prompt(m > 0, prompts, config.bootstrap_samples, config.seed, config.confidence)
    return {"accuracy": implicit_accuracy(m), "ci_low": lo, "ci_high": hi, "confidence": config.confidence,
            "n_pairs": int(m.size), "n_prompts": int(len(set(prompts))), "n_zero_margin": int((m == 0).sum()),
            "mean_margin": float(m.mean()) if m.size else float("nan")}


# ---------------------------------------------------------------------------------------------
# The scorer

def sequence_logps(model: str, tokenizer_spec: str, pairs, max_length: int, max_prompt_length: int,
                   batch_size: int = 16, logps_chunk: int = 4096):
    """(chosen, rejected) summed response log-probs of every pair under ``model`` (a spec or a
    policy folder), tokenised as DPO tokenises its training pairs, with ``tokenizer_spec``'s
    tokenizer (the starting policy's: a policy and its reference must score the same tokens)."""
    import torch
    from accelerate import Accelerator

    from fgpo_tasks import models
    from fgpo_tasks.dpo import data, refcache
    from fgpo_tasks.dpo.losses import SequenceLogps

    tokenizer = models.load_tokenizer(tokenizer_spec)
    tokens = data.tokenize_pairs(pairs, tokenizer, max_length, max_prompt_length)
    accelerator = Accelerator()
    lm = models.load_causal_lm(model, "fp32").to(accelerator.device)
    with torch.no_grad():
        out = refcache.compute(SequenceLogps(lm, logps_chunk), tokens, accelerator, batch_size,
                               tokenizer.pad_token_id, show_progress=False)
    del lm
    return out


def reference_logps(spec: str, pairs, max_length: int, max_prompt_length: int, batch_size: int = 16,
                    logps_chunk: int = 4096, cache_dir: str | Path | None = None):
    """``sequence_logps`` of the reference ``spec``, through the DPO reference log-prob cache
    (keyed by the reference's weights and the pairs' tokens): once for every arm that shares it."""
    from fgpo_tasks import models
    from fgpo_tasks.dpo import data, refcache

    cache = Path(cache_dir) if cache_dir else refcache.default_dir()
    tokens = data.tokenize_pairs(pairs, models.load_tokenizer(spec), max_length, max_prompt_length)
    path = cache / f"{refcache.cache_key(refcache.model_fingerprint(spec, cache), tokens, 'fp32')}.arrow"
    got = refcache.load(path, tokens)
    if got is None:
        got = sequence_logps(spec, spec, pairs, max_length, max_prompt_length, batch_size, logps_chunk)
        refcache.save(path, tokens, *got)
    return got
