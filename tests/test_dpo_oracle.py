"""Our DPO numbers against TRL's DPOTrainer (the oracle) on the same model, batch and beta, fp32."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from fgpo_tasks import models, synthetic
from fgpo_tasks.contract import frame
from fgpo_tasks.dpo import DPOConfig
from fgpo_tasks.dpo.data import collate, tokenize_pairs
from fgpo_tasks.dpo.losses import SequenceLogps
from fgpo_tasks.dpo.train import forward_loss

trl = pytest.importorskip("trl")

METRICS = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def setup():
    tokenizer = models.load_tokenizer("tiny-llama")
    ref = models.load_causal_lm("tiny-llama")
    policy = copy.deepcopy(ref)
    torch.manual_seed(0)  # here, not earlier: building tiny-llama into an empty cache draws from the RNG
    with torch.no_grad():  # a policy that differs from the reference, so rewards are not all zero
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=4, seed=1))
    rows[0]["prompt_messages"] = [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": rows[0]["prompt"]}]
    return tokenizer, ref, policy, frame(pd.DataFrame(rows))


def _conversation(row):
    msgs = row["prompt_messages"] if isinstance(row["prompt_messages"], list) else None
    return msgs or [{"role": "user", "content": row["prompt"]}]


def trl_numbers(setup, loss_type: str, beta: float, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig, DPOTrainer

    tokenizer, ref, policy, df = setup
    ds = Dataset.from_list([{"prompt": _conversation(r),
                             "chosen": [{"role": "assistant", "content": r["chosen"]}],
                             "rejected": [{"role": "assistant", "content": r["rejected"]}]}
                            for r in df.to_dict(orient="records")])
    args = TRLConfig(output_dir=str(tmp_path), loss_type=[loss_type], beta=beta, per_device_train_batch_size=4,
                     bf16=False, gradient_checkpointing=False, report_to=[], use_cpu=True, max_length=None)
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=args, train_dataset=ds,
                         processing_class=tokenizer)
    examples = [trainer.train_dataset[i] for i in range(4)]
    inputs = trainer.data_collator(examples)
    trainer.model.train()  # TRL files metrics under "train" only in train mode
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, inputs)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return float(loss), metrics, examples


def our_numbers(setup, loss_type: str, beta: float):
    tokenizer, ref, policy, df = setup
    tokens = tokenize_pairs(df, tokenizer, max_length=10_000, max_prompt_length=5_000)
    idx = list(range(4))
    batch = collate(tokens, idx, tokenizer.pad_token_id)
    with torch.no_grad():
        ref_logps = SequenceLogps(ref)(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        batch["ref_chosen"], batch["ref_rejected"] = ref_logps.chunk(2)
        loss, stats = forward_loss(SequenceLogps(policy), batch, DPOConfig(loss_type=loss_type, beta=beta), None)
    n = stats[0]
    names = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
             "logps/chosen", "logps/rejected"]
    return float(loss), {name: float(stats[i + 1] / n) for i, name in enumerate(names)}, tokens


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("sigmoid", 0.5), ("ipo", 0.1)])
def test_loss_and_rewards_equal_trl(setup, loss_type, beta, tmp_path):
    trl_loss, trl_metrics, examples = trl_numbers(setup, loss_type, beta, tmp_path)
    loss, metrics, tokens = our_numbers(setup, loss_type, beta)
    # the same tokens: chat template, generation prompt, prompt masked where TRL masks it
    for i, ex in enumerate(examples):
        assert (tokens.prompt[i], tokens.chosen[i], tokens.rejected[i]) == \
            (ex["prompt_ids"], ex["chosen_ids"], ex["rejected_ids"])
    assert loss == pytest.approx(trl_loss, abs=1e-5)
    assert metrics["loss"] == pytest.approx(trl_loss, abs=1e-5)
    # Rewards are beta * (a difference of two summed log-probs of ~100 tokens, |logp| ~ 10^2-10^3).
    # A fp32 sum is only resolved to its ulp (6e-5 at 700), and TRL sums in another order, so a
    # reward can differ by beta * a few ulps: 1e-5, or 4 such ulps when the sums are that coarse.
    ulp = float(np.spacing(np.float32(max(abs(trl_metrics["logps/chosen"]), abs(trl_metrics["logps/rejected"])))))
    reward_tol = max(1e-5, beta * 4 * ulp)
    for name in METRICS:
        tol = dict(rel=1e-5) if name.startswith("logps") else dict(abs=reward_tol)
        assert metrics[name] == pytest.approx(trl_metrics[name], **tol), name
    assert abs(trl_metrics["rewards/margins"]) > 1e-3  # not a trivially zero comparison
