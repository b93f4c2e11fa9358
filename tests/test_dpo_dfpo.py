"""DFPO against a direct implementation of METHOD.md's loss, on PD the score stage wrote.

    L_DFPO = - E_z log sigmoid( K * M_theta(z) + PD(z) )
    M_theta(z) = beta * [ log pi(y_w|x)/pi_ref(y_w|x) - log pi(y_l|x)/pi_ref(y_l|x) ]
    PD(z)      = - sum_{k' != k} [ r_k'(x, y_w) - r_k'(x, y_l) ]

The oracle below reads the rows' ratings (PD from ratings: r_k' is the rating of aspect k'), sums
response log-probs from a plain full-vocabulary log_softmax, and evaluates the formula per pair
with Python floats; the library goes through `fgpo score --from-ratings`'s table and manifest,
load_pd, collate, SequenceLogps and preference_loss.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from fgpo_tasks import models, synthetic
from fgpo_tasks.contract import frame, read_pairs, write_pairs
from fgpo_tasks.dpo import DPOConfig
from fgpo_tasks.dpo.data import collate, tokenize_pairs
from fgpo_tasks.dpo.losses import SequenceLogps
from fgpo_tasks.dpo.train import forward_loss, load_pd
from fgpo_tasks.scoring import ScoreConfig, run_score

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
BETA = 0.3
CREATED = "2026-01-01T00:00:00+00:00"


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A pool of 12 pairs scored from ratings, and a training subset holding ONE aspect's pairs."""
    root = tmp_path_factory.mktemp("dfpo")
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=12, seed=3))
    write_pairs(pd.DataFrame(rows), root / "pool", stage="test", config={}, created_at=CREATED)
    run_score(root / "pool", root / "scores", ScoreConfig(from_ratings=True, pool_ratings=False), CREATED)
    pool = read_pairs(root / "pool")
    aspect = pool["aspect"].value_counts().index[0]
    subset = pool[pool["aspect"] == aspect].reset_index(drop=True)
    write_pairs(subset, root / "subset", stage="test", config={}, created_at=CREATED)
    return root, rows, read_pairs(root / "subset")


def oracle_pd(row: dict) -> float:
    """PD(z) = - sum over the other aspects of (rating of y_w - rating of y_l)."""
    k = row["aspect"]
    return -sum(row["ratings_chosen"][a] - row["ratings_rejected"][a]
                for a in row["ratings_chosen"] if a != k)


def naive_logp(lm, prompt: list[int], response: list[int]) -> float:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=ids).logits[0].double(), dim=-1)
    return sum(float(logp[len(prompt) + i - 1, t]) for i, t in enumerate(response))


def test_raw_pd_and_k_from_the_manifest(scored):
    root, rows, subset = scored
    by_id = {r["pair_id"]: r for r in rows}
    values, k = load_pd(str(root / "scores"), subset, "raw")
    assert k == len(rows[0]["ratings_chosen"]) == 4  # the reward models (aspects), not the subset's 1 aspect
    assert subset["aspect"].nunique() == 1
    expected = [oracle_pd(by_id[p]) for p in subset["pair_id"]]
    assert values.tolist() == pytest.approx(expected, abs=1e-5)
    scaled, _ = load_pd(str(root / "scores"), subset, "scaled")
    assert np.all(np.abs(scaled) <= k - 1 + 1e-6)  # clipped margins: |PD| <= K - 1
    assert not np.allclose(values, scaled)  # the raw differences are not the selection PD


@pytest.mark.parametrize("mode", ["raw", "scaled"])
def test_loss_equals_the_formula(scored, mode):
    root, rows, subset = scored
    by_id = {r["pair_id"]: r for r in rows}
    tokenizer = models.load_tokenizer("tiny-llama")
    ref = models.load_causal_lm("tiny-llama")
    policy = copy.deepcopy(ref)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    df = frame(subset)
    tokens = tokenize_pairs(df, tokenizer, max_length=10_000, max_prompt_length=5_000)
    pd_values, k = load_pd(str(root / "scores"), df, mode)
    scores = pd.read_parquet(root / "scores" / "scores.parquet").set_index("pair_id")

    # the oracle, pair by pair
    losses = []
    for i, pid in enumerate(tokens.pair_id):
        pd_z = oracle_pd(by_id[pid]) if mode == "raw" else float(scores.loc[pid, "pd"])
        m = BETA * ((naive_logp(policy, tokens.prompt[i], tokens.chosen[i])
                     - naive_logp(ref, tokens.prompt[i], tokens.chosen[i]))
                    - (naive_logp(policy, tokens.prompt[i], tokens.rejected[i])
                       - naive_logp(ref, tokens.prompt[i], tokens.rejected[i])))
        x = k * m + pd_z
        losses.append(math.log1p(math.exp(-x)))  # -log sigmoid(x)
    oracle = sum(losses) / len(losses)

    idx = list(range(len(tokens)))
    batch = collate(tokens, idx, tokenizer.pad_token_id, pd_values=pd_values)
    with torch.no_grad():
        ref_logps = SequenceLogps(ref)(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        batch["ref_chosen"], batch["ref_rejected"] = ref_logps.chunk(2)
        cfg = DPOConfig(loss_type="dfpo", beta=BETA, scores_dir=str(root / "scores"), dfpo_pd=mode)
        loss, _ = forward_loss(SequenceLogps(policy), batch, cfg, k)
    assert float(loss) == pytest.approx(oracle, abs=1e-4)
    assert abs(oracle - math.log(2)) > 1e-2  # PD and margins move it away from the untrained log 2


def test_train_records_k_and_mode(scored, tmp_path):
    from fgpo_tasks.dpo import run_train_dpo

    root, _, _ = scored
    cfg = DPOConfig(model="tiny-llama", max_length=96, max_prompt_length=40, batch_size=2, max_steps=1,
                    logging_steps=1, checkpoint_every=0, loss_type="dfpo", scores_dir=str(root / "scores"),
                    ref_cache_dir=str(tmp_path / "cache"))
    result = run_train_dpo(root / "subset", tmp_path / "m", cfg, CREATED)
    card = json.loads((tmp_path / "m" / "fgpo_model.json").read_text())
    assert card["num_aspects"] == 4 and card["config"]["dfpo_pd"] == "raw" and np.isfinite(result["loss"])
