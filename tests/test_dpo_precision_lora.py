"""What the GPU paths need, exercised on the CPU: dtype settings (bf16 runs here too), SDPA
attention, and LoRA outputs saved as an adapter alone that every consumer loads (evaluate,
register's loader, merging after a sharded gather)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fgpo_tasks import models, synthetic
from fgpo_tasks.contract import write_pairs
from fgpo_tasks.dpo import DPOConfig, run_train_dpo
from fgpo_tasks.dpo.train import MODEL_CARD, precision_key, save_model
from fgpo_tasks.errors import ConfigError, FgpoError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
FAST = dict(model="tiny-llama", max_length=96, max_prompt_length=40, lr=1e-2, beta=0.5, warmup_ratio=0.0,
            batch_size=4, logging_steps=1, checkpoint_every=0, max_steps=3)
LORA = dict(lora_r=4, lora_alpha=8.0, lora_dropout=0.0, lora_target_modules=("q_proj", "v_proj"))


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("prec") / "pairs"
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=12, seed=5))
    write_pairs(pd.DataFrame(rows), out, stage="test", config={}, created_at="2026-01-01T00:00:00+00:00")
    return out


@pytest.fixture(scope="module")
def lora_runs(pairs_dir, tmp_path_factory):
    """The same LoRA run saved merged and as the adapter alone."""
    root = tmp_path_factory.mktemp("lora")
    created = "2026-01-01T00:00:00+00:00"
    run_train_dpo(pairs_dir, root / "merged", DPOConfig(**FAST, **LORA, ref_cache_dir=str(root / "c")), created)
    run_train_dpo(pairs_dir, root / "adapter", DPOConfig(**FAST, **LORA, lora_merge=False,
                                                         ref_cache_dir=str(root / "c")), created)
    return root


def test_dtype_names_resolve_and_bad_ones_name_the_field():
    assert models.resolve_dtype("auto") == torch.float32  # no GPU here: auto is fp32
    assert models.dtype_name("bf16") == "bf16" and models.resolve_dtype("fp16") == torch.float16
    assert models.attention("bf16") == "sdpa"  # FlashAttention 2 needs a GPU and flash_attn
    with pytest.raises(ConfigError, match="dtype"):
        models.resolve_dtype("int8")
    with pytest.raises(ConfigError, match="dtype"):
        DPOConfig(dtype="fp16")  # fp16 weights are not trained (no loss scaling)
    with pytest.raises(ConfigError, match="ref_dtype"):
        DPOConfig(ref_dtype="fp8")
    assert precision_key("fp32", False) == "fp32" and precision_key("fp32", True) == "bf16"  # old keys kept
    assert precision_key("bf16", False) == "bf16-weights"


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_loaders_load_in_the_dtype_with_sdpa(dtype):
    lm = models.load_causal_lm("tiny-llama", dtype)
    assert {p.dtype for p in lm.parameters()} == {models.resolve_dtype(dtype)}
    assert lm.config._attn_implementation == "sdpa"
    rm = models.load_sequence_classifier("tiny-bert", dtype=dtype)
    assert {p.dtype for p in rm.parameters()} == {models.resolve_dtype(dtype)}
    ids = torch.tensor([[1, 40, 41, 42, 2]])
    with torch.no_grad():
        out = lm(input_ids=ids).logits.float()
        ref = models.load_causal_lm("tiny-llama")(input_ids=ids).logits
    assert torch.allclose(out, ref, atol=0.05 if dtype != "fp32" else 1e-6)


def test_bf16_weights_train_on_cpu_and_are_recorded(pairs_dir, tmp_path, created_at):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    result = run_train_dpo(pairs_dir, tmp_path / "m", DPOConfig(**FAST, dtype="bf16", ref_dtype="fp32",
                                                                ref_cache_dir=str(tmp_path / "c")), created_at)
    AcceleratorState._reset_state(True)
    card = json.loads((tmp_path / "m" / MODEL_CARD).read_text())
    assert (card["dtype"], card["ref_dtype"], card["attention"]) == ("bf16", "fp32", "sdpa")
    assert np.isfinite(result["loss"]) and result["rewards/margins"] != 0.0
    # seconds named for what they are: wall seconds on this device; no GPU, so no CUDA-event seconds
    assert result["device"] == "cpu" and result["train_cuda_s"] is None and result["ref_cuda_s"] is None
    assert result["train_seconds"] > 0 and "train_seconds" not in card  # the card is hashed: no timings
    saved = models.load_policy(tmp_path / "m", "bf16")
    assert next(saved.parameters()).dtype == torch.bfloat16


def test_adapter_folder_loads_as_the_merged_model(lora_runs):
    root = lora_runs
    assert models.check_policy_dir(root / "adapter") == "adapter"
    assert models.check_policy_dir(root / "merged") == "full"
    assert not (root / "adapter" / "config.json").exists()
    merged, adapter = models.load_policy(root / "merged"), models.load_policy(root / "adapter")
    ids = torch.tensor([[1, 50, 60, 70, 80, 2]])
    with torch.no_grad():
        a, b = merged(input_ids=ids).logits, adapter(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, models.load_causal_lm("tiny-llama")(input_ids=ids).logits, atol=1e-4)
    assert models.load_causal_lm(str(root / "adapter")) is not None  # the spec loader accepts it too
    with pytest.raises(FgpoError, match="not a model folder"):
        models.check_policy_dir(root)


def test_evaluate_generates_from_an_adapter_folder(lora_runs):
    from fgpo_tasks.evaluate import EvalConfig, generate_responses, load_prompts

    cfg = EvalConfig(n_prompts=3, max_new_tokens=8, batch_size=3, generation_cache=False)
    prompts, _ = load_prompts(cfg)
    assert (generate_responses(lora_runs / "adapter", prompts, cfg)
            == generate_responses(lora_runs / "merged", prompts, cfg))


def test_sharded_lora_is_merged_after_the_gather(pairs_dir, lora_runs, tmp_path):
    """Under FSDP / ZeRO-3 the trainer merges on the main process from the gathered adapter: with
    an accelerator that reports FSDP, save_model writes full weights equal to the in-place merge."""
    from accelerate.utils import DistributedType
    from peft import PeftModel

    base = models.load_causal_lm("tiny-llama")
    lm = PeftModel.from_pretrained(base, str(lora_runs / "adapter"), is_trainable=True)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

    class FSDPAccelerator:
        distributed_type = DistributedType.FSDP
        is_main_process = True

        def get_state_dict(self, model):
            return model.state_dict()

        def unwrap_model(self, model):
            return model

    out = tmp_path / "out"
    out.mkdir()
    saved = save_model(FSDPAccelerator(), Wrapped(), models.load_tokenizer("tiny-llama"), out,
                       DPOConfig(**FAST, **LORA, dtype="fp32"))
    assert saved["format"] == "merged" and saved["merged_after_gather"]
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    from safetensors.torch import load_file
    ours, merged = load_file(str(out / "model.safetensors")), load_file(str(lora_runs / "merged" / "model.safetensors"))
    assert ours.keys() == merged.keys()
    for k in ours:
        assert torch.allclose(ours[k], merged[k], atol=1e-6), k
