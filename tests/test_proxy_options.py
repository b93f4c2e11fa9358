"""Proxy reward-model options on tiny models built from config: pooling, the layer choice (and the
one-pass multi-recipe cache fill), MLP heads, seed ensembles, the weights' dtype."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fgpo_tasks import contract, synthetic
from fgpo_tasks.errors import ConfigError, FgpoError
from fgpo_tasks.reward_models import (RewardModelConfig, get_embedder, load_scorer, pool,
                                      run_reward_model, transformer_blocks, weights_dtype)

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["What is 2 plus 3?", "Say hi", "Name a colour."]
RESPONSES = ["The answer is 5, since two and three make five.", "hi", "Blue."]


def test_pool_picks_the_right_token():
    import torch

    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # right padding: 3 and 2 real tokens
    assert pool(hidden, mask, "last").tolist() == [hidden[0, 2].tolist(), hidden[1, 1].tolist()]
    assert pool(hidden, mask, "cls").tolist() == [hidden[0, 0].tolist(), hidden[1, 0].tolist()]
    assert pool(hidden, mask, "mean").tolist() == [hidden[0, :3].mean(0).tolist(), hidden[1, :2].mean(0).tolist()]
    with pytest.raises(FgpoError, match="pooling must be"):
        pool(hidden, mask, "max")


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-bert"])
def test_layer_features_are_that_blocks_output_and_deeper_blocks_do_not_run(spec):
    import torch

    from fgpo_tasks.reward_models import encode_texts
    from fgpo_tasks.reward_models.embeddings import _collate

    emb = get_embedder(spec, 64, 24, "mean", 8, "cpu", layer=1)
    blocks, _ = transformer_blocks(emb.model)
    assert len(blocks) == 2 == emb.n_blocks
    # by hand: block 1's output on one text, mean over its tokens
    seen = {}
    h = blocks[0].register_forward_hook(lambda m, i, o: seen.__setitem__("b1", o[0] if isinstance(o, tuple) else o))
    calls = []
    h2 = blocks[1].register_forward_hook(lambda m, i, o: calls.append(1))
    enc = _collate(emb.tokenizer, encode_texts(emb.tokenizer, PROMPTS[:1], RESPONSES[:1], 64, 24), "cpu")
    with torch.inference_mode():
        final = emb.model(**enc).last_hidden_state
    h.remove()
    want = seen["b1"][0].mean(0).numpy()
    calls.clear()
    got = emb.embed_uncached(PROMPTS, RESPONSES, progress=False)
    h2.remove()
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)
    assert calls == []  # block 2 never ran: layer 1 is all the recipe needs
    assert not np.allclose(got[0], final[0].mean(0).numpy(), atol=1e-3)  # not the final state
    with pytest.raises(FgpoError, match=r"layer must be in \[1, 2\]"):
        emb.recipe_key(3, "mean")


def test_one_pass_fills_every_recipe_like_separate_embedders(tmp_path):
    recipes = [(None, "last"), (1, "mean"), (2, "last")]
    base = get_embedder("tiny-llama", 64, 24, "last", 8, "cpu")
    keys = base.fill_cache(PROMPTS, RESPONSES, tmp_path, recipes, progress=False)
    assert len(set(keys.values())) == 3  # a cache folder per recipe
    for layer, pooling in recipes:
        alone = get_embedder("tiny-llama", 64, 24, pooling, 8, "cpu", layer=layer)
        assert alone.key == keys[(layer, pooling)]
        np.testing.assert_allclose(alone.embed(PROMPTS, RESPONSES, tmp_path, progress=False),
                                   alone.embed_uncached(PROMPTS, RESPONSES, progress=False), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("proxy-options")
    # 800 pairs: ~80 held-out detail pairs, so the ensemble-vs-single comparison below (0.05) is not
    # decided by two or three pairs (with 400, the ensemble lost by 0.075-0.1 on 1 of 6 seeds)
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=800, aspects=("politeness", "detail"),
                                                        seed=1, conflict_rate=0.2))
    contract.write_pairs(pd.DataFrame(rows), root / "data", stage="test", config={}, created_at="t")
    return root


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_decoder_block_features_learn_a_toy_preference(toy, created_at, pooling):
    """A tiny decoder's block-1 features with a linear head rank the toy world's detail aspect
    (truth: the number of detail sentences; chance 0.5); the saved model scores like the trained one."""
    cfg = RewardModelConfig(backbone="tiny-llama", layer=1, pooling=pooling, max_length=192,
                            head_hidden=0, ensemble=1,
                            max_prompt_length=32, cache_dir=str(toy / "emb"), compare_undebiased=False)
    m = run_reward_model(toy / "data", "detail", toy / f"rm-{pooling}", cfg, created_at)
    assert m["heldout_accuracy"] >= 0.75
    d = toy / f"rm-{pooling}" / "detail"
    df = contract.read_pairs(toy / "data")
    held = df[df["pair_id"].isin(set(json.loads((d / "heldout_ids.json").read_text())))]
    score = load_scorer(d, progress=False)
    assert score.embedder.layer == 1 and score.embedder.pooling == pooling
    margin = score(held["prompt"].tolist(), held["chosen"].tolist()) - \
        score(held["prompt"].tolist(), held["rejected"].tolist())
    assert np.mean((margin > 0) + 0.5 * (margin == 0)) == pytest.approx(m["heldout_accuracy"])


def test_mlp_head_learns_what_a_linear_head_cannot():
    """Reward -|x0| (the response closest to 0 on one feature wins): not linear in the features."""
    from fgpo_tasks.reward_models import _head_margin, _train_head

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 1200, 8)).astype(np.float32)
    chosen_is_a = np.abs(a[:, 0]) < np.abs(b[:, 0])
    ew = np.where(chosen_is_a[:, None], a, b)
    el = np.where(chosen_is_a[:, None], b, a)
    tr, ho = slice(0, 1000), slice(1000, None)
    zeros, longer = np.zeros(1000), np.ones(1000, dtype=bool)
    acc = {}
    for hidden in (0, 32):
        cfg = RewardModelConfig(head_hidden=hidden, epochs=60, lr=3e-3, device="cpu", compare_undebiased=False)
        head, _ = _train_head(ew[tr], el[tr], zeros, longer, cfg, 0.0, None)
        acc[hidden] = float(np.mean(_head_margin(head, ew[ho], el[ho]) > 0))
    assert acc[0] < 0.65 and acc[32] > 0.9, acc


def test_ensemble_reward_is_the_mean_of_its_members(toy, created_at):
    import torch
    from safetensors.torch import load_file

    from fgpo_tasks.reward_models import _make_head

    cfg = RewardModelConfig(backbone="tiny-bert", max_length=128, ensemble=3, head_hidden=0, epochs=5,
                            cache_dir=str(toy / "emb-bert"), compare_undebiased=False)
    m = run_reward_model(toy / "data", "detail", toy / "rm-ens", cfg, created_at)
    d = toy / "rm-ens" / "detail"
    rec = json.loads((d / "reward_model.json").read_text())
    assert rec["head"]["members"] == 3
    state = load_file(str(d / "head.safetensors"))
    members = []
    for k in range(3):
        h = _make_head(rec["head"]["in_dim"], 0)
        h.load_state_dict({n[len(f"members.{k}."):]: v for n, v in state.items() if n.startswith(f"members.{k}.")})
        members.append(h.eval())
    w = [h.net.weight.detach() for h in members]
    assert not torch.allclose(w[0], w[1])  # different seeds, different heads
    score = load_scorer(d, progress=False)
    e = torch.as_tensor(score.embedder.embed(toy_texts(toy)[0], toy_texts(toy)[1], progress=False))
    with torch.inference_mode():
        want = torch.stack([h(e) for h in members]).mean(0).numpy()
    np.testing.assert_allclose(score(*toy_texts(toy)), want, rtol=1e-5, atol=1e-6)
    # the first member alone is the ensemble=1 model of the same seed
    single = run_reward_model(toy / "data", "detail", toy / "rm-one",
                              RewardModelConfig(backbone="tiny-bert", max_length=128, epochs=5,
                                                ensemble=1, head_hidden=0,
                                                cache_dir=str(toy / "emb-bert"), compare_undebiased=False),
                              created_at)
    one = load_file(str(toy / "rm-one" / "detail" / "head.safetensors"))
    assert torch.allclose(one["net.weight"], state["members.0.net.weight"])
    assert m["heldout_accuracy"] >= single["heldout_accuracy"] - 0.05


def toy_texts(toy):
    df = contract.read_pairs(toy / "data").head(20)
    return df["prompt"].tolist(), df["chosen"].tolist()


def test_dtype_setting(tmp_path):
    import torch

    assert weights_dtype("auto", "cpu") == "fp32"
    assert weights_dtype("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="dtype must be one of"):
        RewardModelConfig(dtype="int8")
    with pytest.raises(ConfigError, match="ensemble must be >= 1"):
        RewardModelConfig(ensemble=0)
    with pytest.raises(ConfigError, match="layer must be an integer >= 1"):
        RewardModelConfig(layer=0)
    fp32 = get_embedder("tiny-llama", 64, 24, "mean", 8, "cpu")
    bf16 = get_embedder("tiny-llama", 64, 24, "mean", 8, "cpu", dtype="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert next(fp32.model.parameters()).dtype == torch.float32
    assert bf16.key != fp32.key  # bf16 features never mix with fp32 ones in the cache
    a = fp32.embed_uncached(PROMPTS, RESPONSES, progress=False)
    b = bf16.embed_uncached(PROMPTS, RESPONSES, progress=False)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99  # the same features, rounded


def test_finetune_loads_the_backbone_in_the_configured_dtype(toy, created_at):
    cfg = RewardModelConfig(backbone="tiny-bert", mode="finetune", dtype="bf16", lr=1e-3, epochs=1,
                            batch_size=16, p_r=0.2, heldout_fraction=0.1, max_length=64,
                            max_prompt_length=16, compare_undebiased=False)
    run_reward_model(toy / "data", "politeness", toy / "rm-ft16", cfg, created_at)
    saved = json.loads((toy / "rm-ft16" / "politeness" / "model" / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "bfloat16"
    v = load_scorer(toy / "rm-ft16" / "politeness", progress=False)(PROMPTS, RESPONSES)
    assert v.shape == (3,) and np.isfinite(v).all()


def test_cli_default_is_the_documented_cpu_default():
    """`fgpo reward-models` without --config trains what configs/reward_models/frozen-minilm.yaml
    says: MiniLM block 4, 128-unit MLP heads, 5-seed ensembles; `layer: auto` leaves other
    backbones and fine-tuning on the final hidden state."""
    from pathlib import Path

    from fgpo_tasks.config import load_config, to_dict

    default = load_config(RewardModelConfig, None)
    assert (default.backbone, default.layer, default.head_hidden, default.ensemble) == ("minilm-l6", 4, 128, 5)
    yaml_file = Path(__file__).resolve().parent.parent / "configs" / "reward_models" / "frozen-minilm.yaml"
    assert to_dict(load_config(RewardModelConfig, yaml_file)) == to_dict(default)
    assert RewardModelConfig(backbone="tiny-bert").layer is None
    assert RewardModelConfig(mode="finetune").layer is None


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("spec", ["tiny-bert", "tiny-llama"])
def test_finetune_top_layers_trains_only_the_top_blocks_and_the_head(toy, spec):
    """finetune_layers=1: the embeddings and block 1 keep their loaded weights; block 2 and the
    head move; the trained classifier ranks the toy world's politeness pairs."""
    from fgpo_tasks.models import load_sequence_classifier
    from fgpo_tasks.reward_models.training import _pair_margin_classifier, _train_classifier, pairwise_accuracy

    cfg = RewardModelConfig(backbone=spec, mode="finetune", finetune_layers=1, lr=3e-3, epochs=2,
                            batch_size=16, max_length=64, max_prompt_length=16, compare_undebiased=False)
    df = contract.read_pairs(toy / "data")
    rows = df[df["aspect"] == "politeness"].sort_values("pair_id").reset_index(drop=True)
    train, held = rows.iloc[:200].reset_index(drop=True), rows.iloc[200:].reset_index(drop=True)
    dlen = np.zeros(len(train))
    before = _state(load_sequence_classifier(spec))
    model, tok, curve = _train_classifier(train, dlen, dlen >= 0, cfg, 0.0, None)
    after = _state(model)
    blocks, path = transformer_blocks(model.base_model)
    prefix = model.base_model_prefix + "." + path
    moved = {k for k in before if not np.allclose(before[k].float().numpy(), after[k].float().numpy())}
    assert moved, "nothing trained"
    assert all(f"{prefix}.1." in k or not k.startswith(model.base_model_prefix + ".")
               or "norm" in k.lower() or "pooler" in k for k in moved), sorted(moved)
    assert any(f"{prefix}.1." in k for k in moved) and any(not k.startswith(model.base_model_prefix + ".") for k in moved)
    assert not any(f"{prefix}.0." in k or "embed" in k for k in moved)
    assert pairwise_accuracy(_pair_margin_classifier(model, tok, held, cfg)) > 0.6


def test_finetune_lora_merges_into_a_plain_classifier(toy, created_at):
    """lora_r=4: peft adapters train, the saved model is a plain sequence classifier (no peft
    needed to load it) whose weights differ from the backbone's, and it ranks the toy pairs."""
    from fgpo_tasks.models import load_sequence_classifier

    cfg = RewardModelConfig(backbone="tiny-bert", mode="finetune", lora_r=4, lr=3e-3, epochs=2,
                            batch_size=16, heldout_fraction=0.3, max_length=64, max_prompt_length=16,
                            compare_undebiased=False)
    m = run_reward_model(toy / "data", "politeness", toy / "rm-lora", cfg, created_at)
    saved = toy / "rm-lora" / "politeness" / "model"
    assert not (saved / "adapter_config.json").exists()
    loaded = load_sequence_classifier(str(saved))
    assert type(loaded).__name__.endswith("ForSequenceClassification")
    base, tuned = _state(load_sequence_classifier("tiny-bert")), _state(loaded)
    q = next(k for k in base if k.endswith("attention.self.query.weight"))
    k_ = next(k for k in base if k.endswith("attention.self.key.weight"))
    assert not np.allclose(base[q].numpy(), tuned[q].numpy())   # LoRA target: merged delta
    np.testing.assert_allclose(base[k_].numpy(), tuned[k_].numpy())  # not a target: untouched
    assert m["heldout_accuracy"] > 0.6
    v = load_scorer(toy / "rm-lora" / "politeness", progress=False)(PROMPTS, RESPONSES)
    assert v.shape == (3,) and np.isfinite(v).all()


def test_finetune_options_are_checked():
    with pytest.raises(ConfigError, match="apply to mode 'finetune' only"):
        RewardModelConfig(finetune_layers=2)
    with pytest.raises(ConfigError, match="choose one of finetune_layers and lora_r"):
        RewardModelConfig(mode="finetune", finetune_layers=2, lora_r=4)
    with pytest.raises(ConfigError, match="lora_r must be >= 0"):
        RewardModelConfig(mode="finetune", lora_r=-1)
