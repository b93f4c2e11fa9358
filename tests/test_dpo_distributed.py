"""Several processes: `fgpo train-dpo` with an accelerate config of 2 processes relaunches itself
through `accelerate launch` (DDP over gloo on CPUs) and ends where one process with the same
step size ends."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from fgpo_tasks import cli, synthetic
from fgpo_tasks.contract import write_pairs

ACCELERATE_CPU_DDP = {
    "compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU", "num_processes": 2,
    "num_machines": 1, "machine_rank": 0, "gpu_ids": "all", "mixed_precision": "no", "use_cpu": True,
    "rdzv_backend": "static", "same_network": True, "main_training_function": "main",
}


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_step(tmp_path, created_at, monkeypatch, capfd):
    from safetensors.torch import load_file

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # torchrun's children join a gloo group on CPUs
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=16, seed=2))
    write_pairs(pd.DataFrame(rows), tmp_path / "pairs", stage="test", config={}, created_at=created_at)
    (tmp_path / "acc.yaml").write_text(yaml.safe_dump(ACCELERATE_CPU_DDP))
    base = dict(model="tiny-llama", max_length=96, max_prompt_length=40, lr=2e-3, beta=0.5, logging_steps=1,
                checkpoint_every=2, max_steps=4, warmup_ratio=0.0, ref_cache_dir=str(tmp_path / "cache"))
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({**base, "batch_size": 4}))
    (tmp_path / "two.yaml").write_text(yaml.safe_dump({**base, "batch_size": 2,
                                                        "accelerate_config": str(tmp_path / "acc.yaml")}))

    def run(name):
        return cli.main(["--created-at", created_at, "train-dpo", "--data", str(tmp_path / "pairs"),
                         "--config", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / name)])

    assert run("one") == 0
    capfd.readouterr()
    assert run("two") == 0
    printed = json.loads(capfd.readouterr().out)  # the launched main process prints the result
    assert printed["step_pairs"] == 4 and printed["steps"] == 4
    card = json.loads((tmp_path / "two" / "fgpo_model.json").read_text())
    assert card["num_processes"] == 2
    one, two = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-4), k
    losses = [[json.loads(line)["loss"] for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
              for n in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


@pytest.mark.slow
def test_two_process_lora_adapter_is_usable_and_equals_one_process(tmp_path, created_at, monkeypatch, capfd):
    """LoRA saved as the adapter alone by 2 gloo processes: it loads on its base (models.load_policy,
    what evaluate and register use), evaluate generates from it, and it is the 1-process adapter."""
    from fgpo_tasks import models
    from fgpo_tasks.evaluate import EvalConfig, generate_responses, load_prompts

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=8, seed=4))
    write_pairs(pd.DataFrame(rows), tmp_path / "pairs", stage="test", config={}, created_at=created_at)
    (tmp_path / "acc.yaml").write_text(yaml.safe_dump(ACCELERATE_CPU_DDP))
    base = dict(model="tiny-llama", max_length=96, max_prompt_length=40, lr=1e-2, beta=0.5, logging_steps=1,
                checkpoint_every=0, max_steps=2, warmup_ratio=0.0, ref_cache_dir=str(tmp_path / "cache"),
                lora_r=4, lora_alpha=8.0, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"],
                lora_merge=False)
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({**base, "batch_size": 4}))
    (tmp_path / "two.yaml").write_text(yaml.safe_dump({**base, "batch_size": 2,
                                                        "accelerate_config": str(tmp_path / "acc.yaml")}))
    for name in ("one", "two"):
        assert cli.main(["--created-at", created_at, "train-dpo", "--data", str(tmp_path / "pairs"),
                         "--config", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / name)]) == 0
        capfd.readouterr()
    assert models.check_policy_dir(tmp_path / "two") == "adapter"
    ids = torch.tensor([[1, 50, 60, 70, 80, 2]])
    with torch.no_grad():
        one, two = (models.load_policy(tmp_path / n)(input_ids=ids).logits for n in ("one", "two"))
        plain = models.load_causal_lm("tiny-llama")(input_ids=ids).logits
    assert torch.allclose(one, two, atol=1e-4) and not torch.allclose(two, plain, atol=1e-4)
    cfg = EvalConfig(n_prompts=2, max_new_tokens=6, batch_size=2, generation_cache=False)
    prompts, _ = load_prompts(cfg)
    assert len(generate_responses(tmp_path / "two", prompts, cfg)) == 2
