"""The DPO token store: the same tokens as tokenize_pairs, built once, shared by processes, with
the reference log-probs as columns a rerun or a resumed run reads back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from fgpo_tasks import models, synthetic
from fgpo_tasks.contract import frame, make_pair, read_pairs, write_pairs
from fgpo_tasks.dpo import DPOConfig, data, refcache, run_train_dpo, tokenstore

REPO = Path(__file__).resolve().parent.parent
FAST = dict(model="tiny-llama", max_length=96, max_prompt_length=40, lr=2e-3, beta=0.5, warmup_ratio=0.0,
            batch_size=4, logging_steps=1)
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    """Synthetic pairs plus conversations (prompt_messages) and pairs too long for max_length."""
    out = tmp_path_factory.mktemp("store") / "pairs"
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=30, seed=1))
    rows += [make_pair(prompt=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q{i}?"}],
                       chosen=f"answer {i} " * (1 + i), rejected="no", aspect="helpfulness", source="t", batch_id="b")
             for i in range(6)]
    rows += [make_pair(prompt="long question " * 20, chosen="a long answer " * 30, rejected="short",
                       aspect="helpfulness", source="t", batch_id="b")]
    write_pairs(frame(pd.DataFrame(rows)), out, stage="test", config={}, created_at="2026-01-01T00:00:00+00:00")
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer("tiny-llama")


def _plain(tok):
    """The tokenizer without its chat template: the plain-text path (EOS appended)."""
    from copy import deepcopy
    tok = deepcopy(tok)
    tok.chat_template = None
    return tok


@pytest.mark.parametrize("template", [True, False])
def test_store_holds_exactly_the_tokens_of_tokenize_pairs(pairs_dir, tokenizer, tmp_path, template):
    tok = tokenizer if template else _plain(tokenizer)
    store = tokenstore.prepare(pairs_dir, tok, 96, 40, tmp_path, batch_rows=8)  # several record batches
    expected = data.tokenize_pairs(read_pairs(pairs_dir), tok, 96, 40)
    assert store.built and len(store.table["prompt"].chunks) == 5  # 37 pairs in batches of 8
    assert len(store) == len(expected) == 37
    assert list(store.pair_id) == expected.pair_id
    for name in ("prompt", "chosen", "rejected"):
        assert [getattr(store, name)[i] for i in range(len(store))] == getattr(expected, name), name
    assert store.n_truncated == expected.n_truncated >= 1
    assert store.lengths().tolist() == expected.lengths().tolist()
    assert store.fingerprint() == expected.fingerprint()
    assert any(store.prompt[i] != expected.prompt[0] for i in range(len(store)))  # not one row repeated
    # rows are views of the memory-mapped Arrow buffers, not copies
    values = store.table["prompt"].chunks[1].values
    first = store.prompt.ids(8)  # the first row of the second record batch
    assert first.__array_interface__["data"][0] == values.buffers()[1].address + 4 * values.offset


def test_fingerprint_ignores_row_order_and_sees_a_changed_token(tokenizer, pairs_dir):
    tokens = data.tokenize_pairs(read_pairs(pairs_dir), tokenizer, 96, 40)
    n = len(tokens)
    rev = data.PairTokens(tokens.pair_id[::-1], tokens.prompt[::-1], tokens.chosen[::-1], tokens.rejected[::-1])
    assert rev.fingerprint() == tokens.fingerprint()
    changed = data.PairTokens(list(tokens.pair_id), list(tokens.prompt), list(tokens.chosen), list(tokens.rejected))
    changed.rejected[n // 2] = changed.rejected[n // 2] + [7]
    assert changed.fingerprint() != tokens.fingerprint()


def test_second_prepare_reuses_the_store_and_other_settings_build_another(pairs_dir, tokenizer, tmp_path, monkeypatch):
    first = tokenstore.prepare(pairs_dir, tokenizer, 96, 40, tmp_path)
    stamp = (first.path / tokenstore.META_FILE).stat().st_mtime_ns

    def no_tokenising(*args, **kwargs):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(tokenstore, "tokenize_rows", no_tokenising)
    again = tokenstore.prepare(pairs_dir, models.load_tokenizer("tiny-llama"), 96, 40, tmp_path)
    assert not again.built and again.path == first.path
    assert (again.path / tokenstore.META_FILE).stat().st_mtime_ns == stamp
    assert again.fingerprint() == first.fingerprint()
    with pytest.raises(AssertionError, match="tokenised again"):  # another max_length: another key
        tokenstore.prepare(pairs_dir, tokenizer, 80, 40, tmp_path)
    with pytest.raises(AssertionError, match="tokenised again"):  # another tokenizer: another key
        tokenstore.prepare(pairs_dir, _plain(tokenizer), 96, 40, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [first.path.name]


def test_collate_from_the_store_equals_collate_from_memory(pairs_dir, tokenizer, tmp_path):
    store = tokenstore.prepare(pairs_dir, tokenizer, 96, 40, tmp_path, batch_rows=5)
    tokens = data.tokenize_pairs(read_pairs(pairs_dir), tokenizer, 96, 40)
    ref = (np.arange(len(store), dtype=np.float32), -np.arange(len(store), dtype=np.float32))
    lengths = store.lengths()
    order = data.step_order(lengths, 8, seed=0, epoch=0)
    assert np.array_equal(order, data.step_order(tokens.lengths(), 8, seed=0, epoch=0))
    for step in order:
        for idx in data.micro_batches(step, lengths, 4, 1, 0):
            for collate in (data.collate, data.collate_packed):
                a = collate(store, idx, tokenizer.pad_token_id, ref)
                b = collate(tokens, idx, tokenizer.pad_token_id, ref)
                assert a.keys() == b.keys()
                for k in a:
                    assert torch.equal(a[k], b[k]), k


def test_reference_columns_round_trip_and_follow_the_pairs(pairs_dir, tokenizer, tmp_path):
    store = tokenstore.prepare(pairs_dir, tokenizer, 96, 40, tmp_path)
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(-50, 5, len(store)), rng.normal(-60, 5, len(store))
    path = store.ref_file("k1")
    assert refcache.load(path, store) is None
    refcache.save(path, store, chosen, rejected)
    back = refcache.load(path, store)
    assert back[0].dtype == np.float32 and np.array_equal(back[0], chosen.astype(np.float32))
    assert np.array_equal(back[1], rejected.astype(np.float32))
    # the same pairs held in another order (in memory, reversed) get their own values
    tokens = store.to_pair_tokens()
    rev = data.PairTokens(tokens.pair_id[::-1], tokens.prompt[::-1], tokens.chosen[::-1], tokens.rejected[::-1])
    c, r = refcache.load(path, rev)
    assert np.array_equal(c, chosen.astype(np.float32)[::-1]) and np.array_equal(r, rejected.astype(np.float32)[::-1])
    # a file that lacks a pair is no hit
    fewer = data.PairTokens(tokens.pair_id[1:], tokens.prompt[1:], tokens.chosen[1:], tokens.rejected[1:])
    refcache.save(tmp_path / "fewer.arrow", fewer, chosen[1:], rejected[1:])
    assert refcache.load(tmp_path / "fewer.arrow", store) is None
    # a cache of the earlier format (.npz) still loads
    np.savez(tmp_path / "old.npz", pair_id=np.array(tokens.pair_id[::-1]), ref_chosen=chosen[::-1].astype(np.float32),
             ref_rejected=rejected[::-1].astype(np.float32))
    assert np.array_equal(refcache.load(tmp_path / "old.npz", store)[0], chosen.astype(np.float32))


def test_training_writes_the_reference_columns_into_the_store_and_a_resumed_run_reads_them(
        pairs_dir, tmp_path, created_at, monkeypatch):
    cfg = DPOConfig(**FAST, max_steps=4, checkpoint_every=2, token_store_dir=str(tmp_path / "stores"))

    class Stop(Exception):
        pass

    def stop_at_3(step, metrics):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):  # killed after the step-2 checkpoint
        run_train_dpo(pairs_dir, tmp_path / "model", cfg, created_at, metrics_callback=stop_at_3)
    (store_dir,) = [p for p in (tmp_path / "stores").iterdir() if not p.name.startswith(".")]
    (ref_file,) = (store_dir / tokenstore.REF_DIR).glob("*.arrow")
    store = tokenstore.TokenStore(store_dir)
    chosen, rejected = refcache.load(ref_file, store)
    assert len(chosen) == len(store) == 37 and np.all(chosen < 0) and np.all(rejected < 0)

    def no_reference(*args, **kwargs):
        raise AssertionError("reference log-probs recomputed despite the store's columns")

    monkeypatch.setattr(refcache, "compute", no_reference)
    monkeypatch.setattr(tokenstore, "tokenize_rows", no_reference)
    result = run_train_dpo(pairs_dir, tmp_path / "model", cfg, created_at)
    assert result["resumed_from_step"] == 2 and result["ref_cache"] == "hit" and result["steps"] == 4
    card = json.loads((tmp_path / "model" / "fgpo_model.json").read_text())
    assert card["tokens_fingerprint"] == store.fingerprint() and ref_file.stem == card["ref_logps_key"]


SCRIPT = """
import json, sys
from accelerate import Accelerator
from fgpo_tasks import models
from fgpo_tasks.dpo import tokenstore

calls = []
real = tokenstore.tokenize_rows
def counted(rows, *args, **kwargs):
    calls.append(len(rows))
    return real(rows, *args, **kwargs)
tokenstore.tokenize_rows = counted
acc = Accelerator()
store = tokenstore.prepare(sys.argv[1], models.load_tokenizer("tiny-llama"), 96, 40, sys.argv[2], acc, batch_rows=10)
out = {"rank": acc.process_index, "tokenised_rows": sum(calls), "built": store.built, "path": str(store.path),
       "fingerprint": store.fingerprint(), "rows": [store.chosen[i] for i in range(len(store))]}
with open(f"{sys.argv[3]}/rank{acc.process_index}.json", "w") as f:
    json.dump(out, f)
"""


@pytest.mark.slow
def test_under_two_processes_only_rank_0_tokenises_and_both_read_the_same_store(pairs_dir, tmp_path):
    from tests.test_dpo_distributed import ACCELERATE_CPU_DDP

    (tmp_path / "acc.yaml").write_text(yaml.safe_dump(ACCELERATE_CPU_DDP))
    (tmp_path / "script.py").write_text(SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "acc.yaml"),
                    str(tmp_path / "script.py"), str(pairs_dir), str(tmp_path / "stores"), str(tmp_path)],
                   cwd=REPO, env=env, check=True, timeout=300, capture_output=True)
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (zero["rank"], one["rank"]) == (0, 1)
    assert zero["built"] and zero["tokenised_rows"] == 37
    assert not one["built"] and one["tokenised_rows"] == 0
    assert zero["path"] == one["path"] and zero["fingerprint"] == one["fingerprint"]
    expected = data.tokenize_pairs(read_pairs(pairs_dir), models.load_tokenizer("tiny-llama"), 96, 40)
    assert zero["rows"] == one["rows"] == expected.chosen
