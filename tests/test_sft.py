"""SFT: the loss falls, only response tokens count, the tiny-llama-toy spec is built once."""

from __future__ import annotations

import json
import re

import pytest

from fgpo_tasks import models, sft
from fgpo_tasks.errors import ConfigError
from fgpo_tasks.provenance import file_fingerprint
from fgpo_tasks.sft import SFTConfig, collate, run_sft, sft_examples

# 40 steps: the loss ends near 0.45-0.5 of its first value for toy-world pools of seeds 0-7 alike
# (after 25 steps it ends near 0.6, so the bar below was a coin toss on the pool)
SMALL = dict(model="tiny-llama", tiny_dims={"hidden": 32, "layers": 1, "heads": 2}, bpe_vocab=300,
             synthetic={"n_pairs": 60, "seed": 7}, max_steps=40, lr=1e-2, batch_size=8, logging_steps=5)


def test_loss_falls_and_the_folder_describes_itself(tmp_path, created_at):
    out = tmp_path / "policy"
    result = run_sft(out, SFTConfig(**SMALL), created_at)
    assert result["final_loss"] < 0.6 * result["first_loss"], result["curve"]
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    card = json.loads((out / "fgpo_model.json").read_text())
    assert card["stage"] == "sft" and card["config"]["max_steps"] == 40
    assert card["synthetic"]["seed"] == 7 and len(card["data_fingerprint"]) == 64 and card["code_version"]
    # what the evaluation stage loads: the tokenizer renders the chat template it was trained with
    tok = models.load_tokenizer(str(out))
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True) == "<|user|>hi<|end|><|assistant|>"


def test_prompt_and_padding_are_masked():
    examples = [([5, 6, 7], [8, 9]), ([5], [10, 11, 12])]
    batch = collate(examples, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 10, 11, 12, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 8, 9], [-100, 10, 11, 12, -100]]


def test_examples_take_both_responses_once(tmp_path):
    from fgpo_tasks.dpo.data import PairTokens

    tokens = PairTokens(pair_id=["a", "b"], prompt=[[1], [1]], chosen=[[2], [3]], rejected=[[3], [2]])
    assert sft_examples(tokens, "both") == [([1], [2]), ([1], [3])]  # repeats across pairs dropped
    assert sft_examples(tokens, "chosen") == [([1], [2]), ([1], [3])]
    tokens.chosen[1] = [2]
    assert sft_examples(tokens, "chosen") == [([1], [2])]


def test_response_only_loss_ignores_the_prompt():
    """Changing the prompt's labels cannot change the loss: only response positions carry labels."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    logits = torch.randn(1, 5, 20)
    batch = collate([([3, 4, 5], [6, 7])], pad_id=0)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    naive = -(torch.log_softmax(logits[0, 2], -1)[6] + torch.log_softmax(logits[0, 3], -1)[7]) / 2
    assert torch.allclose(loss, naive)


def test_config_checks_name_the_bad_value():
    with pytest.raises(ConfigError, match="responses"):
        SFTConfig(responses="rejected")
    with pytest.raises(ConfigError, match="tiny_dims only applies"):
        SFTConfig(model="minilm-l6", tiny_dims={"hidden": 32})
    with pytest.raises(ConfigError, match="bpe_vocab"):
        SFTConfig(bpe_vocab=512)


def test_toy_alias_is_built_once_and_cached(tmp_path, monkeypatch):
    calls = []
    real = sft.run_sft
    monkeypatch.setattr(sft, "run_sft", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(sft, "TOY_POLICY", SFTConfig(**{**SMALL, "max_steps": 4}))
    monkeypatch.setenv("FGPO_MODEL_CACHE", str(tmp_path / "cache"))
    first = models.pretrained_path("tiny-llama-toy")
    assert models.pretrained_path("tiny-llama-toy") == first and len(calls) == 1
    assert json.loads((tmp_path / "cache" / first.split("/")[-1] / "fgpo_model.json").read_text())["stage"] == "sft"
    # deterministic: a fresh cache rebuilds the same weights
    monkeypatch.setenv("FGPO_MODEL_CACHE", str(tmp_path / "cache2"))
    second = models.pretrained_path("tiny-llama-toy")
    assert len(calls) == 2
    assert file_fingerprint(f"{first}/model.safetensors") == file_fingerprint(f"{second}/model.safetensors")
    # a changed recipe is another folder, never the stale one
    monkeypatch.setattr(sft, "TOY_POLICY", SFTConfig(**{**SMALL, "max_steps": 5}))
    assert models.pretrained_path("tiny-llama-toy") != second


def test_cli_trains_from_a_config(tmp_path):
    import yaml

    from fgpo_tasks.cli import main

    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL, "max_steps": 3}))
    assert main(["--created-at", "2026-01-01T00:00:00+00:00", "sft", "--config", str(cfg),
                 "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "fgpo_model.json").is_file()
    assert main(["sft", "--config", str(cfg), "--out", str(tmp_path / "m2"), "--model", "minilm-l6"]) == 2


@pytest.mark.slow
def test_the_toy_policy_answers_like_the_toy_world(tmp_path, monkeypatch):
    """The real recipe (~30 s): greedy answers have the toy world's form."""
    from fgpo_tasks.evaluate import EvalConfig, generate_responses, load_prompts
    from fgpo_tasks.synthetic import POLITE, DETAIL

    monkeypatch.setenv("FGPO_MODEL_CACHE", str(tmp_path / "cache"))
    config = EvalConfig(n_prompts=16, max_new_tokens=80, batch_size=16)
    prompts, _ = load_prompts(config)
    answers = generate_responses(models.pretrained_path("tiny-llama-toy"), prompts, config)
    assert all(re.search(r"The answer is [A-Za-z0-9]+\.", a) for a in answers), answers
    assert all(any(s in a for s in POLITE + DETAIL) for a in answers), answers
