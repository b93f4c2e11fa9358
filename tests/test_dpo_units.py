"""DPO building blocks: config checks, truncation, batch order, log-probs and losses against naive forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fgpo_tasks.config import load_config
from fgpo_tasks.dpo import DPOConfig
from fgpo_tasks.dpo.data import PairTokens, collate, micro_batches, step_order, truncate
from fgpo_tasks.dpo.losses import preference_loss, sft_loss, token_logps
from fgpo_tasks.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("values,field", [
    ({"loss_type": "kto"}, "loss_type"),
    ({"beta": 0.0}, "beta"),
    ({"loss_type": "cdpo", "label_smoothing": 0.5}, "label_smoothing"),
    ({"label_smoothing": 0.1}, "label_smoothing"),  # only cdpo reads it
    ({"max_prompt_length": 1024, "max_length": 1024}, "max_prompt_length"),
    ({"warmup_ratio": 1.5}, "warmup_ratio"),
    ({"loss_type": "dfpo"}, "scores_dir"),
    ({"scheduler": "step"}, "scheduler"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
])
def test_bad_config_names_the_field(values, field):
    with pytest.raises(ConfigError, match=field):
        DPOConfig(**values)


def test_shipped_configs_load():
    for path in sorted((REPO / "configs" / "dpo").glob("*.yaml")):
        load_config(DPOConfig, path)


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    found = {p.stem: load_config_from_file(str(p)) for p in (REPO / "configs" / "accelerate").glob("*.yaml")}
    kinds = {name: str(cfg.distributed_type) for name, cfg in found.items()}
    assert {"NO", "MULTI_GPU", "DEEPSPEED", "FSDP"} <= {k.split(".")[-1] for k in kinds.values()}, kinds


def test_truncation_keeps_the_response():
    p, c, r = list(range(100)), list(range(100, 130)), list(range(200, 260))
    tp, tc, tr = truncate(p, c, r, max_length=80, max_prompt_length=20)
    assert tp == p[-20:]  # the prompt's end stays: the question sits there
    assert tc == c and tr == r[:60]  # responses keep their start; the longer one fills max_length
    assert len(tp) + len(tr) == 80
    assert truncate(p[:10], c, r, 80, 20) == (p[:10], c, r)  # fits: untouched


def _lengths(n, seed=0):
    return np.random.default_rng(seed).integers(5, 500, size=n)


def test_step_order_is_a_function_of_seed_and_epoch():
    lengths = _lengths(103)
    a = step_order(lengths, 8, seed=1, epoch=0)
    assert np.array_equal(a, step_order(lengths, 8, seed=1, epoch=0))
    assert not np.array_equal(a, step_order(lengths, 8, seed=1, epoch=1))
    assert a.shape == (13, 8) and set(a.ravel()) == set(range(103))  # every pair, last step filled up


def test_length_grouping_cuts_padding():
    lengths = _lengths(800)

    def padding(order):
        return sum(len(s) * lengths[s].max() - lengths[s].sum() for s in order) / lengths.sum()

    grouped = padding(step_order(lengths, 8, 0, 0, group_by_length=True))
    plain = padding(step_order(lengths, 8, 0, 0, group_by_length=False))
    assert grouped < 0.05 < plain


def test_micro_batches_split_a_step_across_processes_and_accumulation():
    lengths = _lengths(16)
    step = np.arange(16)
    parts = [micro_batches(step, lengths, 2, 2, rank) for rank in range(2)]
    assert all(len(p) == 4 for p in parts)  # 16 pairs = 2 per batch x 2 processes x 4 accumulation
    assert sorted(np.concatenate([b for p in parts for b in p]).tolist()) == list(range(16))


def test_collate_masks_the_prompt_and_padding():
    tokens = PairTokens(pair_id=["a", "b"], prompt=[[5, 6], [7]], chosen=[[8, 9], [10]], rejected=[[11], [12, 13, 14]])
    b = collate(tokens, [0, 1], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 8, 9], [7, 10, 0, 0], [5, 6, 11, 0], [7, 12, 13, 14]]
    assert b["response_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 1]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize("fused", [True, False])
def test_token_logps_and_its_gradients_equal_naive_log_softmax(fused):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).double()
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    labels, weights = torch.randint(0, 50, (37,)), torch.randn(37, dtype=torch.float64)
    naive = torch.log_softmax(head(hidden), -1).gather(-1, labels[:, None])[:, 0]
    grads_naive = torch.autograd.grad((naive * weights).sum(), [hidden, head.weight])
    ours = token_logps(hidden, head, labels, chunk=8, fused=fused)
    grads = torch.autograd.grad((ours * weights).sum(), [hidden, head.weight])
    assert torch.allclose(ours.double(), naive, atol=1e-6)
    for g, gn in zip(grads, grads_naive):
        assert torch.allclose(g, gn, atol=1e-6)


def _logps(seed=0, b=6):
    g = torch.Generator().manual_seed(seed)
    return [-50 * torch.rand(b, generator=g, dtype=torch.float64) for _ in range(4)]


def test_losses_follow_their_formulas():
    c, r, rc, rr = _logps()
    d = (c - rc) - (r - rr)
    beta = 0.2
    assert torch.allclose(preference_loss("sigmoid", c, r, rc, rr, beta), -F.logsigmoid(beta * d))
    eps = 0.1
    cdpo = preference_loss("cdpo", c, r, rc, rr, beta, label_smoothing=eps)
    assert torch.allclose(cdpo, -(1 - eps) * F.logsigmoid(beta * d) - eps * F.logsigmoid(-beta * d))
    assert torch.allclose(preference_loss("cdpo", c, r, rc, rr, beta), preference_loss("sigmoid", c, r, rc, rr, beta))
    nc, nr = torch.full((6,), 10.0, dtype=torch.float64), torch.full((6,), 20.0, dtype=torch.float64)
    ipo = preference_loss("ipo", c, r, rc, rr, beta, chosen_tokens=nc, rejected_tokens=nr)
    assert torch.allclose(ipo, ((c - rc) / 10 - (r - rr) / 20 - 1 / (2 * beta)) ** 2)
    pd = torch.linspace(-3, 3, 6, dtype=torch.float64)
    dfpo = preference_loss("dfpo", c, r, rc, rr, beta, pd=pd, num_aspects=5)
    assert torch.allclose(dfpo, -F.logsigmoid(5 * beta * d + pd))
    # K = 1 and PD = 0 is DPO; a conflicting pair (PD > 0) costs less at the same margin
    zero = torch.zeros(6, dtype=torch.float64)
    assert torch.allclose(preference_loss("dfpo", c, r, rc, rr, beta, pd=zero, num_aspects=1),
                          preference_loss("sigmoid", c, r, rc, rr, beta))
    assert torch.allclose(sft_loss(c, nc), -c / 10)
    with pytest.raises(ValueError, match="Unknown loss_type: 'nope'"):
        preference_loss("nope", c, r, rc, rr, beta)
