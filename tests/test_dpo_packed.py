"""Padding-free (packed) DPO batches: one row, positions restarting per sequence; transformers
keeps attention inside each sequence (a block-diagonal causal mask with SDPA here, FlashAttention
2's varlen kernel on a GPU). Log-probs, gradients and a short training run equal the padded ones."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fgpo_tasks import models, synthetic
from fgpo_tasks.contract import frame, write_pairs
from fgpo_tasks.dpo import DPOConfig, run_train_dpo
from fgpo_tasks.dpo.data import collate, collate_packed, tokenize_pairs
from fgpo_tasks.dpo.losses import SequenceLogps

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tokens():
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=5, seed=7))
    return tokenize_pairs(frame(pd.DataFrame(rows)), models.load_tokenizer("tiny-llama"), 10_000, 5_000)


def test_packed_batch_has_no_padding_and_restarts_positions(tokens):
    idx = [0, 1, 2]
    b = collate_packed(tokens, idx, 0)
    lengths = [len(tokens.prompt[i]) + len(tokens.chosen[i]) for i in idx] + \
              [len(tokens.prompt[i]) + len(tokens.rejected[i]) for i in idx]
    assert b["input_ids"].shape == (1, sum(lengths))
    starts = np.cumsum([0] + lengths[:-1])
    assert (b["position_ids"][0, starts] == 0).all() and int(b["position_ids"].max()) == max(lengths) - 1
    assert b["response_tokens"].tolist() == [len(tokens.chosen[i]) for i in idx] + [len(tokens.rejected[i]) for i in idx]
    assert int(b["response_mask"].sum()) == int(b["response_tokens"].sum())


@pytest.mark.parametrize("fused", [True, False])
def test_packed_logps_and_gradients_equal_padded(tokens, fused):
    lm = models.load_causal_lm("tiny-llama")
    assert lm.config._attn_implementation == "sdpa"
    model = SequenceLogps(lm, chunk=64, fused=fused)
    idx = [0, 1, 2, 3]
    padded, packed = collate(tokens, idx, 0), collate_packed(tokens, idx, 0)
    a = model(padded["input_ids"], padded["attention_mask"], padded["response_mask"])
    ga = torch.autograd.grad(a.sum(), list(lm.parameters()))
    b = model(packed["input_ids"], None, packed["response_mask"], position_ids=packed["position_ids"],
              seq_index=packed["seq_index"])
    gb = torch.autograd.grad(b.sum(), list(lm.parameters()))
    assert b.shape == a.shape == (8,)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-5)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-4 * max(1.0, float(x.abs().max())))
    # without the restarting positions the sequences would see each other: a different answer
    leaky = model(packed["input_ids"], None, packed["response_mask"], seq_index=packed["seq_index"])
    assert not torch.allclose(a, leaky, atol=1e-2)


def test_packed_training_equals_padded(tmp_path, created_at):
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=8, seed=8))
    write_pairs(pd.DataFrame(rows), tmp_path / "pairs", stage="test", config={}, created_at=created_at)
    base = dict(model="tiny-llama", max_length=96, max_prompt_length=40, lr=2e-3, beta=0.5, warmup_ratio=0.0,
                batch_size=4, logging_steps=1, checkpoint_every=0, max_steps=3, ref_cache_dir=str(tmp_path / "c"))
    losses = {}
    for packed in (False, True):
        run_train_dpo(tmp_path / "pairs", tmp_path / f"m{packed}", DPOConfig(**base, packed=packed), created_at)
        losses[packed] = [json.loads(line)["loss"]
                          for line in (tmp_path / f"m{packed}" / "metrics.jsonl").read_text().splitlines()]
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
    assert losses[True][-1] < losses[True][0]
