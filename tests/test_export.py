"""fgpo export: a pair directory out as a TRL preference dataset that datasets and TRL read as is."""

from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest

from fgpo_tasks import cli, contract, jsonio

trl = pytest.importorskip("trl")
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def pool(tmp_path, n: int = 6):
    rows = []
    for i in range(n):
        prompt = f"What is {i} + {i}?" if i % 2 else [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Name {i} colours."}]
        rows.append(contract.make_pair(
            prompt=prompt, chosen=f"Answer {i}, clearly.", rejected=f"No idea {i}.",
            aspect=["helpfulness", "coherence"][i % 2], source="test:x.jsonl", batch_id="b",
            ratings_chosen={"helpfulness": 4.0, "coherence": 3.0} if i != 3 else None,
            ratings_rejected={"helpfulness": 1.0, "coherence": 2.0} if i != 3 else None, source_line=i + 1))
    contract.write_pairs(pd.DataFrame(rows), tmp_path / "sel", stage="select", config={},
                         created_at="2026-01-01T00:00:00+00:00")
    return rows


def _cli(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return jsonio.loads_strict(out)


@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
def test_export_loads_with_datasets_and_trains_with_trl_dpo(tmp_path, capsys, monkeypatch, conversational):
    import datasets
    from trl import DPOConfig as TRLConfig, DPOTrainer

    from fgpo_tasks import models

    rows = pool(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative --data / --out
    res = _cli(["export", "--data", "sel", "--format", "trl", "--out", "trl_out"]
               + (["--conversational"] if conversational else []), capsys)
    assert res["rows"] == len(rows)
    for line in (tmp_path / "trl_out" / "train.jsonl").read_text().splitlines():
        jsonio.loads_strict(line)

    ds = datasets.load_dataset(str(tmp_path / "trl_out"), split="train")
    assert len(ds) == len(rows)
    by_id = {r["pair_id"]: r for r in rows}
    for ex in ds:
        src = by_id[ex["pair_id"]]
        if conversational:
            want = src["prompt_messages"] or [{"role": "user", "content": src["prompt"]}]
            assert ex["prompt"] == want
            assert ex["chosen"] == [{"role": "assistant", "content": src["chosen"]}]
            assert ex["rejected"] == [{"role": "assistant", "content": src["rejected"]}]
        else:
            assert (ex["prompt"], ex["chosen"], ex["rejected"]) == (src["prompt"], src["chosen"], src["rejected"])
        rc = src["ratings_chosen"]
        assert ex["score_chosen"] == (rc[src["aspect"]] if rc else None)
    assert ds.features["prompt"].__class__.__name__ == ("List" if conversational else "Value")

    tokenizer = models.load_tokenizer("tiny-llama")
    policy = models.load_causal_lm("tiny-llama")
    args = TRLConfig(output_dir=str(tmp_path / "trl_run"), per_device_train_batch_size=2, max_steps=2,
                     learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                     bf16=False, gradient_checkpointing=False, max_length=128)
    trainer = DPOTrainer(model=policy, ref_model=copy.deepcopy(policy), args=args, train_dataset=ds,
                         processing_class=tokenizer)
    out = trainer.train()
    assert trainer.state.global_step == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert math.isfinite(out.training_loss)


def test_export_only_core_columns_and_errors(tmp_path, capsys, created_at):
    pool(tmp_path)
    res = _cli(["export", "--data", str(tmp_path / "sel"), "--out", str(tmp_path / "o"), "--no-extra-columns"],
               capsys)
    first = json.loads((tmp_path / "o" / "train.jsonl").read_text().splitlines()[0])
    assert sorted(first) == ["chosen", "prompt", "rejected"] and res["rows"] == 6
    record = jsonio.loads_strict((tmp_path / "o" / "fgpo_export.json").read_text())
    assert record["input"]["stage"] == "select" and record["rows"] == 6
    # not a pair directory: one line, exit 2
    code = cli.main(["export", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err and len(err.strip().splitlines()) == 1


def test_two_exports_to_folders_of_one_name_load_their_own_rows(tmp_path, capsys):
    """datasets caches a folder with a card's `configs` block by its name alone; the export writes
    no such card, so each folder loads its own rows."""
    import datasets

    pool(tmp_path)
    _cli(["export", "--data", str(tmp_path / "sel"), "--out", str(tmp_path / "a" / "out")], capsys)
    _cli(["export", "--data", str(tmp_path / "sel"), "--out", str(tmp_path / "b" / "out"), "--conversational"],
         capsys)
    a = datasets.load_dataset(str(tmp_path / "a" / "out"), split="train")
    b = datasets.load_dataset(str(tmp_path / "b" / "out"), split="train")
    assert isinstance(a[0]["prompt"], str) and isinstance(b[0]["prompt"], list)
