"""Proxy reward models: the length-balanced sampler, training on synthetic truth, debiasing, saving."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fgpo_tasks import contract, synthetic
from fgpo_tasks.config import load_config
from fgpo_tasks.errors import ConfigError, InputError
from fgpo_tasks.reward_models import (RewardModelConfig, balanced_fraction, length_balanced_indices,
                                      length_sorted_batches, load_scorer, padding_fraction,
                                      run_reward_model, run_reward_models, split_aspect)


@pytest.mark.parametrize("f_plus", [0.9, 0.7, 0.5, 0.2])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 5.0, math.inf, None])
def test_length_balanced_sampler_hits_target_proportion(f_plus, tau):
    n = 1000
    longer = np.zeros(n, dtype=bool)
    longer[: int(f_plus * n)] = True
    rng = np.random.default_rng(0)
    idx = length_balanced_indices(longer, tau, rng)
    assert len(idx) == n
    if tau is None:
        assert sorted(idx.tolist()) == list(range(n))  # off: every pair once
        return
    f_minus = 1 - f_plus
    target = math.exp(f_plus / tau) / (math.exp(f_plus / tau) + math.exp(f_minus / tau)) \
        if math.isfinite(tau) else 0.5
    assert longer[idx].sum() == round(target * n)
    # minority items are reused evenly (whole copies first), never skipped
    counts = np.bincount(idx, minlength=n)
    for side in (longer, ~longer):
        c = counts[side]
        assert c.max() - c.min() <= 1


def test_balanced_fraction_moves_toward_half_as_tau_grows():
    values = [balanced_fraction(0.8, t) for t in (0.1, 0.5, 1.0, 10.0, math.inf)]
    assert values[0] > 0.99 and values[-1] == 0.5
    assert all(a > b for a, b in zip(values, values[1:]))
    assert balanced_fraction(0.8, None) == 0.8


def test_config_tau_spellings_and_checks(tmp_path):
    f = tmp_path / "rm.yaml"
    f.write_text("tau: inf\nrho: 1\n")
    assert load_config(RewardModelConfig, f).tau == math.inf
    f.write_text("tau: off\n")
    assert load_config(RewardModelConfig, f).tau is None
    f.write_text("tau: .inf\n")
    assert load_config(RewardModelConfig, f).tau == math.inf
    with pytest.raises(ConfigError, match="tau must be > 0.*got -1.0"):
        RewardModelConfig(tau=-1.0)
    with pytest.raises(ConfigError, match="p_r must be in \\(0, 1\\], got 0"):
        RewardModelConfig(p_r=0)
    with pytest.raises(ConfigError, match="mode"):
        load_config(RewardModelConfig, None, mode="shared")
    assert RewardModelConfig(mode="finetune").lr == 2e-5


def test_split_is_deterministic_disjoint_and_respects_p_r():
    ids = [f"id{i:03d}" for i in range(100)]
    tr, ho = split_aspect(ids, 0.2, 0.5, seed=1)
    assert len(ho) == 20 and len(tr) == 40 and not set(tr) & set(ho)
    tr2, ho2 = split_aspect(list(reversed(ids)), 0.2, 0.5, seed=1)
    # the same ids whatever the input order
    assert sorted(ids[i] for i in tr) == sorted(list(reversed(ids))[i] for i in tr2)


def test_length_sorted_batches_pad_less():
    lengths = np.random.default_rng(0).integers(10, 500, size=256)
    naive = [np.arange(i, i + 16) for i in range(0, 256, 16)]
    sorted_b = length_sorted_batches(lengths, 16)
    assert sorted(np.concatenate(sorted_b).tolist()) == list(range(256))
    assert padding_fraction(lengths, sorted_b) < padding_fraction(lengths, naive) / 5


# ---------------------------------------------------------------------------------------------
# Training on the toy world (tiny-bert, frozen mode: seconds)

@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=400, aspects=("politeness", "detail"),
                                                        seed=1, conflict_rate=0.2))
    contract.write_pairs(pd.DataFrame(rows), root / "data", stage="test", config={}, created_at="t")
    return root


def test_frozen_model_beats_chance_on_synthetic_aspect(toy, created_at):
    cfg = RewardModelConfig(backbone="tiny-bert", max_length=128, cache_dir=str(toy / "emb"))
    m = run_reward_model(toy / "data", "detail", toy / "rm", cfg, created_at)
    n = int((contract.read_pairs(toy / "data")["aspect"] == "detail").sum())
    assert m["n_heldout"] == round(0.2 * n) and m["n_train"] == n - m["n_heldout"]
    # truth: the number of detail sentences; chance is 0.5
    assert m["heldout_accuracy"] >= 0.8
    d = toy / "rm" / "detail"
    for name in ("reward_model.json", "training_ids.json", "head.safetensors", "loss_curve.png",
                 "length_bias.png", "manifest.json", "metrics.json"):
        assert (d / name).is_file(), name
    rec = json.loads((d / "reward_model.json").read_text())
    assert rec["config"]["backbone"] == "tiny-bert" and rec["training_data_fingerprint"]
    assert rec["loss_curve"]["debiased"][-1]["train_loss"] < rec["loss_curve"]["debiased"][0]["train_loss"]
    assert len(json.loads((d / "training_ids.json").read_text())) == m["n_train"]

    # the saved model scores like the trained one: its held-out accuracy is reproduced
    df = contract.read_pairs(toy / "data")
    held = df[df["pair_id"].isin(set(json.loads((d / "heldout_ids.json").read_text())))]
    score = load_scorer(d, progress=False)
    margin = score(held["prompt"].tolist(), held["chosen"].tolist()) - \
        score(held["prompt"].tolist(), held["rejected"].tolist())
    # (a tie counts one half: at 128 byte tokens a few pairs truncate to the same text)
    assert np.mean((margin > 0) + 0.5 * (margin == 0)) == pytest.approx(m["heldout_accuracy"])
    # same recipe, same data: same fingerprint (the score cache relies on it)
    m2 = run_reward_model(toy / "data", "detail", toy / "rm2", cfg, created_at)
    assert m2["fingerprint"] == m["fingerprint"]


def test_embedding_cache_embeds_each_text_once(toy, created_at):
    from fgpo_tasks.reward_models import EmbeddingCache, get_embedder

    # the same cache as the test above (if it ran): whatever is cached already is not embedded again
    cfg = RewardModelConfig(backbone="tiny-bert", max_length=128, cache_dir=str(toy / "emb"),
                            epochs=2, compare_undebiased=False)
    run_reward_models(toy / "data", toy / "rm-once", cfg, created_at)
    emb = get_embedder("tiny-bert", 128, cfg.max_prompt_length, "auto", cfg.embed_batch_size)
    cache = EmbeddingCache(toy / "emb", emb.key)
    cache.refresh()
    rows = sum(len(np.load(f, mmap_mode="r")) for f in cache.dir.glob("*/shard-*.npy") if ".keys" not in f.name)
    df = contract.read_pairs(toy / "data")
    texts = set(zip(df["prompt"], df["chosen"])) | set(zip(df["prompt"], df["rejected"]))
    assert len(cache) == len(texts) == rows  # both aspects' runs: each text embedded once


@pytest.mark.parametrize("head_hidden, ensemble, min_drop", [
    (0, 1, 0.1),    # a linear head
    (128, 5, 0.05),  # the default: an ensemble of 5 MLP heads (measured 0.53 -> 0.44)
])
def test_debiasing_lowers_length_correlation(tmp_path, created_at, head_hidden, ensemble, min_drop):
    """Politeness pairs where a neutral filler lengthens the chosen response 85% of the time."""
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=800, aspects=("politeness", "detail"), seed=1))
    rng = np.random.default_rng(0)
    filler = " Here is some more text about it."
    out = []
    for r in rows:
        if r["aspect"] != "politeness":
            continue
        c, j = r["chosen"], r["rejected"]
        k = int(rng.integers(2, 5))
        if rng.random() < 0.85:
            c += filler * k
        else:
            j += filler * k
        out.append(contract.make_pair(prompt=r["prompt"], chosen=c, rejected=j, aspect="politeness",
                                      source="test", batch_id="b"))
    contract.write_pairs(pd.DataFrame(out), tmp_path / "data", stage="test", config={}, created_at="t")
    cfg = RewardModelConfig(backbone="tiny-bert", max_length=256, rho=1.0, tau=math.inf,
                            head_hidden=head_hidden, ensemble=ensemble, cache_dir=str(tmp_path / "emb"))
    m = run_reward_model(tmp_path / "data", "politeness", tmp_path / "rm", cfg, created_at)
    assert m["train_chosen_longer_fraction"] > 0.8
    assert m["length_corr_undebiased"] > 0.5
    assert m["length_corr"] < m["length_corr_undebiased"] - min_drop
    assert m["heldout_accuracy"] >= m["heldout_accuracy_undebiased"] - 0.05


def test_finetune_mode_trains_the_backbone(toy, created_at):
    import torch
    from fgpo_tasks.models import load_sequence_classifier

    cfg = RewardModelConfig(backbone="tiny-bert", mode="finetune", lr=1e-3, epochs=1, batch_size=16,
                            p_r=0.3, heldout_fraction=0.1,
                            max_length=96, max_prompt_length=32,
                            compare_undebiased=False)
    m = run_reward_model(toy / "data", "politeness", toy / "rm-ft", cfg, created_at)
    d = toy / "rm-ft" / "politeness"
    assert (d / "model" / "config.json").is_file()
    before = load_sequence_classifier("tiny-bert").state_dict()
    from transformers import AutoModelForSequenceClassification
    after = AutoModelForSequenceClassification.from_pretrained(d / "model").state_dict()
    moved = [k for k in before if "embeddings" in k and not torch.equal(before[k], after[k])]
    assert moved, "fine-tuning left the backbone unchanged"
    score = load_scorer(d, progress=False)
    v = score(["What is 2 plus 3?"] * 2, ["The answer is 5.", "Thank you for asking! The answer is 5."])
    assert v.shape == (2,) and np.isfinite(v).all()
    assert m["heldout_accuracy"] is not None


def test_unknown_aspect_is_a_readable_error(toy, created_at, tmp_path):
    with pytest.raises(InputError, match="no pairs labelled on aspect 'nope'.*'detail', 'politeness'"):
        run_reward_model(toy / "data", "nope", tmp_path, RewardModelConfig(backbone="tiny-bert"), created_at)
    r = subprocess.run([sys.executable, "-m", "fgpo_tasks.cli", "reward-models", "--data", str(toy / "data"),
                        "--out", str(tmp_path / "o"), "--aspect", "nope", "--backbone", "tiny-bert"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("fgpo reward-models: error:")
    assert "aspects ['nope'] have no pairs" in r.stderr


@pytest.mark.slow
def test_minilm_learns_correctness_that_tiny_bert_cannot(tmp_path, created_at):
    """The real offline backbone: correctness (is the stated answer right) needs semantics."""
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=400, aspects=("correctness", "detail"), seed=2))
    contract.write_pairs(pd.DataFrame(rows), tmp_path / "data", stage="test", config={}, created_at="t")
    cfg = RewardModelConfig(backbone="minilm-l6", max_length=128, max_prompt_length=32,
                            cache_dir=str(tmp_path / "emb"), compare_undebiased=False)
    m = run_reward_model(tmp_path / "data", "correctness", tmp_path / "rm", cfg, created_at)
    assert m["heldout_accuracy"] >= 0.65
